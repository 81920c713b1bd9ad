"""Make the small models and inputs shipped in sample_models/ (run: `make samples`).

Each model mirrors a question kerascheck exists to answer:

- seed000_regressor: the regressor CNN of a user matching Keras by hand
  (one-hot 27x3x6 input, two `same` convolutions, 3x3 max pooling, flatten,
  dense layers, dropout); saved by Keras 3 as .keras and by Keras 2 as .h5.
- seed004_cnn: the small MNIST-shaped CNN with 4x4 kernels and 2x2 pooling.
- seed001_channels_first: a channels-first Conv2D model, the layout that made
  a hand computation disagree with Keras.

Weights, biases included, are drawn from a seeded generator so every value
matters; inputs mix negatives and values past activation clamp points.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def randomize(model, seed: int) -> None:
    rng = np.random.default_rng(seed)
    weights = []
    for value in model.get_weights():
        scale = 1.0 / np.sqrt(max(1, int(np.prod(value.shape[:-1]))))
        weights.append((scale * rng.standard_normal(value.shape)).astype(value.dtype))
    model.set_weights(weights)


def regressor(k, m: int = 6):
    layers = k.layers
    return k.Sequential(
        [
            k.Input((27, 3, m)),
            layers.Conv2D(10, (3, 3), padding="same", activation="relu", name="conv2d"),
            layers.Conv2D(20, (3, 3), padding="same", activation="relu", name="conv2d_1"),
            layers.MaxPooling2D((3, 3), name="max_pooling2d"),
            layers.Flatten(name="flatten"),
            layers.Dense(20, activation="relu", name="dense"),
            layers.Dropout(0.2, name="dropout"),
            layers.Dense(10, activation="relu", name="dense_1"),
            layers.Dense(1, name="dense_2"),
        ],
        name="sequential",
    )


def small_cnn(k):
    layers = k.layers
    return k.Sequential(
        [
            k.Input((28, 28, 1)),
            layers.Conv2D(10, (4, 4), activation="relu"),
            layers.MaxPooling2D(pool_size=(2, 2), strides=(2, 2)),
            layers.Conv2D(20, (4, 4), activation="relu"),
            layers.MaxPooling2D(pool_size=(2, 2), strides=(2, 2)),
            layers.Flatten(),
            layers.Dense(128, activation="relu"),
            layers.Dense(10, activation="softmax"),
        ],
        name="seed004_cnn",
    )


def channels_first(k):
    layers = k.layers
    inputs = k.Input((1, 10, 10), name="image")
    x = layers.Conv2D(
        32, (3, 3), activation="relu", data_format="channels_first", name="block1_conv1"
    )(inputs)
    x = layers.MaxPooling2D(2, data_format="channels_first")(x)
    x = layers.Flatten(data_format="channels_first")(x)
    outputs = layers.Dense(3, activation="softmax")(x)
    return k.Model(inputs, outputs, name="seed001_channels_first")


def fingerprint(path: str) -> str:
    """What a model file means (architecture, weights, compile settings), not its bytes:
    Keras stamps the save time into every file it writes."""
    from kerascheck.loading import read_model

    spec = read_model(path)
    digest = hashlib.sha256()
    layers = [(layer.class_name, layer.config) for layer in spec.layers.values()]
    training = {key: value for key, value in (spec.training or {}).items() if key != "where"}
    meaning = [spec.name, spec.class_name, layers, training, spec.inputs, spec.outputs]
    digest.update(json.dumps(meaning, sort_keys=True, default=repr).encode())
    for layer in spec.layers.values():
        for value in layer.weights:
            digest.update(value.tobytes())
    return digest.hexdigest()


def save_if_changed(model, path: str) -> bool:
    """Save `model` to `path` unless the file there already holds the same model, so
    `make samples` leaves the tree clean when nothing changed."""
    suffix = os.path.splitext(path)[1]
    with tempfile.TemporaryDirectory() as tmp:
        fresh = os.path.join(tmp, "model" + suffix)
        model.save(fresh)
        if os.path.exists(path) and fingerprint(path) == fingerprint(fresh):
            return False
        os.replace(fresh, path)
    return True


def save_array_if_changed(path: str, value: np.ndarray) -> None:
    if os.path.exists(path):
        old = np.load(path)
        if old.dtype == value.dtype and np.array_equal(old, value):
            return
    np.save(path, value)


def one_hot_input(rng, batch: int = 4, m: int = 6) -> np.ndarray:
    categories = rng.integers(0, m, size=(batch, 27, 3))
    return np.eye(m, dtype="float32")[categories]


def main() -> None:
    import keras
    import tf_keras

    rng = np.random.default_rng(0)
    x_regressor = one_hot_input(rng)
    x_cnn = (2.0 * rng.standard_normal((4, 28, 28, 1))).astype("float32")
    x_first = (2.0 * rng.standard_normal((4, 1, 10, 10))).astype("float32")

    y_regressor = rng.standard_normal((4, 1)).astype("float32")
    y_cnn = np.eye(10, dtype="float32")[rng.integers(0, 10, size=4)]
    y_first = np.eye(3, dtype="float32")[rng.integers(0, 3, size=4)]
    samples = [
        ("seed000_regressor.keras", regressor(keras), x_regressor, y_regressor, keras),
        ("seed000_regressor_keras2.h5", regressor(tf_keras), x_regressor, y_regressor, tf_keras),
        ("seed004_cnn.keras", small_cnn(keras), x_cnn, y_cnn, keras),
        ("seed001_channels_first.keras", channels_first(keras), x_first, y_first, keras),
    ]
    for seed, (name, model, x, y, k) in enumerate(samples):
        randomize(model, seed)
        # Compiled as the learners compile them, so `grad` finds the loss in the file.
        loss = "mse" if y.shape[-1] == 1 else "categorical_crossentropy"
        model.compile(optimizer=k.optimizers.SGD(0.01), loss=loss)
        path = os.path.join(HERE, name)
        changed = save_if_changed(model, path)
        stem = os.path.join(HERE, name.rsplit(".", 1)[0])
        save_array_if_changed(stem + ".input.npy", x)
        save_array_if_changed(stem + ".target.npy", y)
        state = "wrote" if changed else "unchanged:"
        print(f"{state} {path}, its input {x.shape} and target {y.shape}")


if __name__ == "__main__":
    main()
