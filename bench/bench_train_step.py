"""Engine training step vs Keras' `train_on_batch`, measured in the same run at batch 32.

For each model, compiled with Adam and MSE: the best-of-N wall time of one engine
step (training-mode forward, backward, NumPy Adam update) and of Keras'
`train_on_batch` on the same batch (after a warm-up call that traces it), and
their ratio.

    .venv/bin/python bench/bench_train_step.py [--repeat 3] [--quick]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np

import kerascheck
from kerascheck.grad import resolve_loss
from kerascheck.train_step import _assign, _current, _engine_gradients, trainable_keys

HERE = os.path.dirname(os.path.abspath(__file__))
SAMPLES = os.path.join(HERE, "..", "sample_models")


def models(workdir: str, quick: bool):
    import keras

    for stem, shape in (("seed000_regressor", (27, 3, 6)), ("seed004_cnn", (28, 28, 1))):
        model = keras.models.load_model(os.path.join(SAMPLES, f"{stem}.keras"), compile=False)
        yield stem, model, shape, "float32"
    text = keras.Sequential(
        [
            keras.Input((40,), dtype="int32"),
            keras.layers.Embedding(1000, 32),
            keras.layers.Bidirectional(keras.layers.LSTM(32)),
            keras.layers.Dense(4, activation="softmax"),
        ]
    )
    yield "text_classifier", text, (40,), "int32"
    apps = [("MobileNetV2", keras.applications.MobileNetV2, (96, 96, 3))]
    if not quick:
        apps.append(("ResNet50", keras.applications.ResNet50, (96, 96, 3)))
    for name, build, shape in apps:
        yield name, build(weights=None, input_shape=shape, classes=10), shape, "float32"


def best(fn, repeat):
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="skip ResNet50")
    args = parser.parse_args()

    print(f"{'model':<18} {'batch':>5} {'engine s':>9} {'keras s':>9} {'engine/keras':>13}")
    with tempfile.TemporaryDirectory() as workdir:
        for name, model, shape, dtype in models(workdir, args.quick):
            ours, theirs = measure(name, model, shape, dtype, workdir, args.repeat)
            print(f"{name:<18} {32:>5} {ours:>9.4f} {theirs:>9.4f} {ours / theirs:>12.2f}x")


def measure(name, model, shape, dtype, workdir, repeat):
    """(engine step seconds, Keras train_on_batch seconds) for one model at batch 32."""
    import keras

    from kerascheck.train_step import resolve_optimizer

    rng = np.random.default_rng(0)
    if dtype == "int32":
        x = rng.integers(1, 1000, size=(32, *shape)).astype("int32")
    else:
        x = rng.standard_normal((32, *shape)).astype("float32")
    y = rng.standard_normal((32, *model.output_shape[1:])).astype("float32")
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    path = os.path.join(workdir, f"{name}.keras")
    model.save(path)
    engine = kerascheck.load(path)
    loss = resolve_loss(engine, None)[0]
    _, optimizer, _, _ = resolve_optimizer(engine, None, {}, True)
    keys = trainable_keys(engine)
    state = {"value": optimizer.init_state(_current(engine, keys))}
    noise = {c.name: None for c in engine.spec.calls}  # training mode, the engine's own masks

    def engine_step():
        grads = _engine_gradients(engine, loss, [x], [y], None, noise).grads
        new, state["value"] = optimizer.step(_current(engine, keys), grads, state["value"])
        _assign(engine, new)

    return best(engine_step, repeat), best(lambda: model.train_on_batch(x, y), repeat)


if __name__ == "__main__":
    main()
