"""`kerascheck train-step`: N steps of forward, backward and optimizer against Keras.

seeds/002 compares the weights after one `fit` step with SGD at learning rate 100;
both sides must reproduce the numbers Keras printed in the seed. A model saved
after `fit` (optimizer state in the file) must continue exactly as Keras would.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import FLAVORS, keras_module, make_input, randomize_weights

import kerascheck
from kerascheck.cli import main
from kerascheck.train_step import train_step_model


def seed002(flavor, tmp_path, example):
    """seeds/002's examples 2 and 3, built exactly as the seed builds them."""
    k = keras_module(flavor)
    np.random.seed(0)
    size = 7 if example == 2 else 8
    x = np.random.rand(1, size, size, 1).astype("float32")
    y = np.random.rand(1).astype("float32")
    if example == 2:
        weights = [np.random.rand(3, 3, 1, 2), np.random.rand(2), np.random.rand(3, 3, 2, 1)]
        weights += [np.random.rand(1), np.random.rand(9, 1), np.random.rand(1)]
        layers = [
            k.layers.Conv2D(2, 3, activation="sigmoid"),
            k.layers.Conv2D(1, 3, activation="sigmoid"),
            k.layers.Flatten(),
            k.layers.Dense(1, activation="sigmoid"),
        ]
    else:
        weights = [np.random.rand(3, 3, 1, 2), np.random.rand(2)]
        weights += [np.random.rand(18, 1), np.random.rand(1)]
        layers = [
            k.layers.Conv2D(2, 3, activation="sigmoid"),
            k.layers.MaxPooling2D(2),
            k.layers.Flatten(),
            k.layers.Dense(1, activation="sigmoid"),
        ]
    model = k.Sequential([k.Input((size, size, 1)), *layers])
    model.set_weights([w.astype("float32") for w in weights])
    model.compile(loss="MSE", optimizer=k.optimizers.SGD(learning_rate=100.0))
    ext = ".keras" if flavor == "keras" else ".h5"
    path = os.path.join(str(tmp_path), f"seed002_ex{example}{ext}")
    model.save(path)
    return path, x, y


@pytest.mark.parametrize("flavor", FLAVORS)
@pytest.mark.parametrize(
    "example, bias", [(2, [0.83742, 0.09441]), (3, [0.68129, 0.56232])], ids=["ex2", "ex3"]
)
def test_seed002_step_reproduces_the_printed_keras_weights(tmp_path, flavor, example, bias):
    path, x, y = seed002(flavor, tmp_path, example)
    model = kerascheck.load(path)
    result = train_step_model(path, model, [x], [y.reshape(1, 1)], save=True)
    assert result.status == "match", result.first_divergence
    first_conv = model.spec.calls[0].layer
    for side in ("keras", "numpy"):
        after = result.saved[f"{side}/new/{first_conv}/bias"]
        np.testing.assert_allclose(after, bias, atol=6e-6, err_msg=side)


def fitted(flavor, tmp_path, optimizer):
    """A model with BatchNormalization, trained two epochs and saved with its optimizer."""
    k = keras_module(flavor)
    inputs = k.Input((6,))
    h = k.layers.Dense(5, activation="tanh")(inputs)
    h = k.layers.BatchNormalization()(h)
    out = k.layers.Dense(3)(h)
    model = k.Model(inputs, out)
    randomize_weights(model)
    model.compile(optimizer=optimizer(k), loss="mse")
    x, y = make_input((8, 6), seed=1), make_input((8, 3), seed=2)
    model.fit(x, y, epochs=2, batch_size=4, verbose=0, shuffle=False)
    ext = ".keras" if flavor == "keras" else ".h5"
    path = os.path.join(str(tmp_path), f"fitted_{flavor}{ext}")
    model.save(path)
    return path, x, y


OPTIMIZERS = {
    "adam": lambda k: k.optimizers.Adam(0.01),
    "adam-amsgrad-clipnorm": lambda k: k.optimizers.Adam(0.01, amsgrad=True, clipnorm=0.5),
    "adamw": lambda k: k.optimizers.AdamW(0.01, weight_decay=0.05),
    "sgd-nesterov": lambda k: k.optimizers.SGD(0.05, momentum=0.9, nesterov=True),
    "sgd-momentum": lambda k: k.optimizers.SGD(0.05, momentum=0.9),
    "sgd-global-clipnorm": lambda k: k.optimizers.SGD(0.05, global_clipnorm=0.1),
    "rmsprop": lambda k: k.optimizers.RMSprop(0.01, momentum=0.5),
    "rmsprop-centered": lambda k: k.optimizers.RMSprop(0.01, centered=True),
    "adagrad": lambda k: k.optimizers.Adagrad(0.05),
    "adadelta": lambda k: k.optimizers.Adadelta(1.0),
    "adamax": lambda k: k.optimizers.Adamax(0.01),
    "nadam": lambda k: k.optimizers.Nadam(0.01),
    "ftrl": lambda k: k.optimizers.Ftrl(0.05),
    "lion": lambda k: k.optimizers.Lion(0.001),
}


@pytest.mark.parametrize("flavor", FLAVORS)
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_a_fitted_model_continues_from_its_saved_optimizer_state(tmp_path, flavor, name):
    path, x, y = fitted(flavor, tmp_path, OPTIMIZERS[name])
    model = kerascheck.load(path)
    assert model.spec.training["state"], "the file holds the optimizer state"
    result = train_step_model(path, model, [x], [y], steps=3, batch_size=4)
    assert result.state_from == "the file"
    assert result.status == "match", result.first_divergence
    keras_losses, engine_losses = result.losses["keras"], result.losses["engine"]
    np.testing.assert_allclose(engine_losses, keras_losses, rtol=1e-4)
    moving = [t for r in result.rows for t in r.tensors if t.tensor == "moving_mean"]
    assert moving and all(t.status == "match" for t in moving)


def test_fresh_optimizer_and_flags_override_the_file(tmp_path):
    path, x, y = fitted("keras", tmp_path, OPTIMIZERS["adam"])
    model = kerascheck.load(path)
    result = train_step_model(
        path, model, [x], [y], optimizer_name="SGD", overrides={"learning_rate": 0.1}
    )
    assert result.optimizer == "SGD" and result.optimizer_from == "--optimizer"
    assert result.state_from.startswith("zero") and result.status == "match"


def test_cli_train_step_exit_codes(tmp_path):
    path, x, y = fitted("keras", tmp_path, OPTIMIZERS["adam"])
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    args = ["train-step", path, str(tmp_path / "x.npy"), str(tmp_path / "y.npy")]
    out = CliRunner().invoke(main, [*args, "--steps", "2", "--json", str(tmp_path / "r.json")])
    assert out.exit_code == 0, out.output
    assert "state from the file" in out.output
    k = keras_module("keras")
    plain = k.Sequential([k.Input((6,)), k.layers.Dense(3)])
    plain.save(tmp_path / "plain.keras")
    args[1] = str(tmp_path / "plain.keras")
    out = CliRunner().invoke(main, [*args, "--loss", "mse"])
    assert out.exit_code == 2 and "--optimizer" in out.output


def _adam_textbook(w, g, m, v, t, lr, b1, b2, eps):
    """PyTorch's Adam, written out: bias-corrected moments, eps added to sqrt(v_hat)."""
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
    return w - lr * m_hat / (np.sqrt(v_hat) + eps)


@pytest.mark.parametrize("flavor", FLAVORS)
def test_against_names_the_textbook_adam_epsilon(tmp_path, flavor):
    """With gradients near 1e-6 (a bias before BatchNormalization is noise, so use a plain
    model) the textbook epsilon and Keras' epsilon-hat give visibly different steps."""
    k = keras_module(flavor)
    model = k.Sequential([k.Input((6,)), k.layers.Dense(3, name="out")])
    randomize_weights(model)
    model.compile(optimizer=k.optimizers.Adam(0.01, epsilon=1e-3), loss="mse")
    x, y = make_input((8, 6), seed=1), make_input((8, 3), seed=2)
    path = os.path.join(str(tmp_path), "adam" + (".keras" if flavor == "keras" else ".h5"))
    model.save(path)
    reference = train_step_model(path, kerascheck.load(path), [x], [y], save=True)
    from kerascheck.train_step import _engine_gradients

    fresh = kerascheck.load(path)  # the weights before the step, and their gradient
    weights = {name: fresh.graph.layers["out"].w[name].copy() for name in ("kernel", "bias")}
    grads = _engine_gradients(fresh, fresh_loss(fresh), [x], [y], None, {}).grads
    mine = {}
    for name, w in weights.items():
        g = grads[f"out/{name}"].astype(np.float64)
        mine[f"new/out/{name}"] = _adam_textbook(w, g, 0.0, 0.0, 1, 0.01, 0.9, 0.999, 1e-3)
    result = train_step_model(path, kerascheck.load(path), [x], [y], against=mine)
    assert result.first_divergence is not None
    hints = [t.hint for r in result.rows for t in r.tensors if t.status == "mismatch"]
    assert hints and all(h and "textbook epsilon" in h for h in hints), hints
    assert reference.status == "match"
    correct = {f"new/out/{n}": reference.saved[f"keras/new/out/{n}"] for n in weights}
    ok = train_step_model(path, kerascheck.load(path), [x], [y], against=correct)
    assert ok.status == "match"


def fresh_loss(model):
    from kerascheck.grad import resolve_loss

    return resolve_loss(model, None)[0]


def text_classifier(k):
    """Embedding -> Bidirectional(LSTM) -> Dense, with padding masks."""
    return k.Sequential(
        [
            k.Input((7,), dtype="int32"),
            k.layers.Embedding(30, 6, mask_zero=True),
            k.layers.Bidirectional(k.layers.LSTM(5)),
            k.layers.Dense(3, activation="softmax"),
        ]
    )


def transformer_block(k):
    """Self-attention with a residual and LayerNormalization, then a feed-forward part."""
    inputs = k.Input((5, 8))
    attended = k.layers.MultiHeadAttention(num_heads=2, key_dim=4)(inputs, inputs)
    x = k.layers.LayerNormalization()(k.layers.Add()([inputs, attended]))
    ff = k.layers.Dense(8)(k.layers.Dense(16, activation="gelu")(x))
    x = k.layers.LayerNormalization()(k.layers.Add()([x, ff]))
    pooled = k.layers.GlobalAveragePooling1D()(x)
    return k.Model(inputs, k.layers.Dense(3, activation="softmax")(pooled))


@pytest.mark.parametrize("flavor", FLAVORS)
@pytest.mark.parametrize("build", [text_classifier, transformer_block])
def test_one_adam_step_of_a_text_classifier_and_a_transformer_block(tmp_path, flavor, build):
    k = keras_module(flavor)
    model = build(k)
    randomize_weights(model)
    model.compile(optimizer=k.optimizers.Adam(0.01), loss="categorical_crossentropy")
    path = os.path.join(str(tmp_path), build.__name__ + (".keras" if flavor == "keras" else ".h5"))
    model.save(path)
    if build is text_classifier:
        x = np.random.default_rng(0).integers(1, 8, (4, 7)).astype("int32")  # repeated tokens
        x[:, 5:] = 0  # padding, masked
    else:
        x = make_input((4, 5, 8), seed=3)
    y = np.eye(3, dtype="float32")[[0, 1, 2, 0]]
    result = train_step_model(path, kerascheck.load(path), [x], [y], steps=2)
    assert result.status == "match", result.first_divergence
    updates = [t for r in result.rows for t in r.tensors if t.tensor.startswith("Δ")]
    assert len(updates) >= 6 and all(t.status != "mismatch" for t in updates)


def _keras_adam_step(w, g, lr, b1=0.9, b2=0.999, eps=1e-7):
    """Keras' first Adam step from zero state, written out (epsilon-hat form)."""
    m, v = (1 - b1) * g, (1 - b2) * g * g
    return w - lr * np.sqrt(1 - b2) / (1 - b1) * m / (np.sqrt(v) + eps)


MISTAKES = {
    # name: (optimizer, the user's step written by hand, words of the expected hint)
    "rmsprop-epsilon-outside": (
        lambda k: k.optimizers.RMSprop(0.01, epsilon=0.01),
        lambda w, g: w - 0.01 * g / (np.sqrt(0.1 * g * g) + 0.01),
        "epsilon outside the square root",
    ),
    "adamw-coupled-decay": (
        lambda k: k.optimizers.AdamW(0.01, weight_decay=0.5),
        lambda w, g: _keras_adam_step(w, g + 0.5 * w, 0.01),
        "weight decay coupled",
    ),
    "gradient-summed-over-batch": (
        lambda k: k.optimizers.SGD(0.01),
        lambda w, g: w - 0.01 * 8 * g,
        "summed over the batch",
    ),
    "gradient-halved": (
        lambda k: k.optimizers.Adagrad(0.05, initial_accumulator_value=1.0),
        lambda w, g: w - 0.05 * (0.5 * g) / np.sqrt(1.0 + 0.25 * g * g + 1e-7),
        "half Keras' value",
    ),
    "update-sign": (
        lambda k: k.optimizers.SGD(0.01),
        lambda w, g: w + 0.01 * g,
        "wrong sign",
    ),
    "adamw-decay-after-the-step": (
        lambda k: k.optimizers.AdamW(0.01, weight_decay=0.5),
        lambda w, g: (lambda new: new - 0.01 * 0.5 * new)(_keras_adam_step(w, g, 0.01)),
        "weight decay applied after the update",
    ),
    "clipnorm-taken-globally": (
        lambda k: k.optimizers.SGD(0.1, clipnorm=0.05),
        lambda w, g: w - 0.1 * g * 0.05 / max(GLOBAL_NORM[0], 0.05),
        "clipped by the global norm where Keras uses clipnorm",
    ),
    "global-clipnorm-taken-per-tensor": (
        lambda k: k.optimizers.SGD(0.1, global_clipnorm=0.05),
        lambda w, g: w - 0.1 * g * 0.05 / max(np.linalg.norm(g), 0.05),
        "clipped per tensor where Keras uses global_clipnorm",
    ),
    "nesterov-as-plain-momentum": (
        lambda k: k.optimizers.SGD(0.1, momentum=0.9, nesterov=True),
        lambda w, g: w - 0.1 * g,
        "Nesterov's step taken as plain momentum",
    ),
}
GLOBAL_NORM = [0.0]  # the global gradient norm of the case being run


@pytest.mark.parametrize("name", MISTAKES)
def test_against_names_optimizer_mistakes(tmp_path, name):
    build, step, words = MISTAKES[name]
    k = keras_module("keras")
    model = k.Sequential([k.Input((6,)), k.layers.Dense(3, name="out")])
    randomize_weights(model)
    model.compile(optimizer=build(k), loss="mse")
    x, y = make_input((8, 6), seed=1), make_input((8, 3), seed=2)
    path = os.path.join(str(tmp_path), f"{name}.keras")
    model.save(path)
    from kerascheck.train_step import _engine_gradients

    fresh = kerascheck.load(path)
    weights = {n: fresh.graph.layers["out"].w[n].astype(np.float64) for n in ("kernel", "bias")}
    grads = _engine_gradients(fresh, fresh_loss(fresh), [x], [y], None, {}).grads
    grads = {n: grads[f"out/{n}"].astype(np.float64) for n in weights}
    GLOBAL_NORM[0] = float(np.sqrt(sum(np.sum(g * g) for g in grads.values())))
    mine = {f"new/out/{n}": step(w, grads[n]) for n, w in weights.items()}
    result = train_step_model(path, kerascheck.load(path), [x], [y], against=mine)
    updates = [t for r in result.rows for t in r.tensors if t.tensor.startswith("Δ")]
    assert len(updates) == 2 and all(t.status == "mismatch" for t in updates)
    hints = [t.hint for t in updates]
    assert all(h and words in h for h in hints), hints


def _batch_moments(flavor, path, x):
    """The mean and biased variance of the BatchNormalization input, from Keras."""
    k = keras_module(flavor)
    model = k.models.load_model(path, compile=False)
    bn = next(layer for layer in model.layers if "batch_normalization" in layer.name)
    h = k.Model(model.inputs, bn.input).predict(x, verbose=0).astype(np.float64)
    return bn.name, bn.momentum, h.mean(axis=0), h.var(axis=0)


def _state(path, model):
    from kerascheck.train_step import file_state, resolve_optimizer, trainable_keys

    _, optimizer, _, _ = resolve_optimizer(model, None, {}, False)
    return file_state(model, optimizer, trainable_keys(model))


STATE_MISTAKES = {
    # name: (optimizer, the user's step from the file's slots, words of the expected hint)
    "adam-bias-correction-restarted": (
        OPTIMIZERS["adam"],
        lambda w, g, s: _adam_restarted(w, g, s["momentum"], s["velocity"]),
        "bias correction restarted",
    ),
    "sgd-velocity-sign": (
        OPTIMIZERS["sgd-momentum"],
        lambda w, g, s: w + (0.9 * -s["momentum"] - 0.05 * g),
        "velocity with the wrong sign",
    ),
    "sgd-pytorch-buffer": (
        OPTIMIZERS["sgd-momentum"],
        lambda w, g, s: w - 0.05 * (0.9 * s["momentum"] + g),
        "PyTorch's momentum buffer",
    ),
}


def _adam_restarted(w, g, m, v, lr=0.01, b1=0.9, b2=0.999, eps=1e-7):
    """Keras' Adam step from the file's m and v, but with the step count back at 1."""
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    return w - lr * np.sqrt(1 - b2) / (1 - b1) * m / (np.sqrt(v) + eps)


@pytest.mark.parametrize("flavor", FLAVORS)
@pytest.mark.parametrize("name", STATE_MISTAKES)
def test_against_names_mistakes_with_the_files_optimizer_state(tmp_path, flavor, name):
    build, step, words = STATE_MISTAKES[name]
    path, x, y = fitted(flavor, tmp_path, build)
    x, y = x[:4], y[:4]
    from kerascheck.train_step import _engine_gradients

    fresh = kerascheck.load(path)
    state = _state(path, fresh)
    grads = _engine_gradients(fresh, fresh_loss(fresh), [x], [y], None, {}).grads
    mine = {}
    for key, grad in grads.items():
        layer, weight = key.split("/")
        w = fresh.graph.layers[layer].w[weight].astype(np.float64)
        slots = {n: np.asarray(v, np.float64) for n, v in state["slots"][key].items()}
        mine[f"new/{key}"] = step(w, grad.astype(np.float64), slots)
    result = train_step_model(path, kerascheck.load(path), [x], [y], against=mine)
    assert result.state_from == "the file"
    updates = [t for r in result.rows for t in r.tensors if t.tensor.startswith("Δ")]
    assert updates and all(t.status == "mismatch" for t in updates)
    assert all(t.hint and words in t.hint for t in updates), [t.hint for t in updates]


@pytest.mark.parametrize("flavor", FLAVORS)
@pytest.mark.parametrize("mistake", ["pytorch-momentum", "unbiased-variance", "none"])
def test_against_judges_and_explains_the_moving_statistics(tmp_path, flavor, mistake):
    path, x, y = fitted(flavor, tmp_path, OPTIMIZERS["adam"])
    x, y = x[:4], y[:4]
    model = kerascheck.load(path)
    bn, momentum, mean, variance = _batch_moments(flavor, path, x)
    old = {w: model.graph.layers[bn].w[w].astype(np.float64) for w in MOVING}
    if mistake == "unbiased-variance":
        variance = variance * 4 / 3
    keep = 1 - momentum if mistake == "pytorch-momentum" else momentum
    mine = {
        f"new/{bn}/moving_mean": old["moving_mean"] * keep + mean * (1 - keep),
        f"new/{bn}/moving_variance": old["moving_variance"] * keep + variance * (1 - keep),
    }
    result = train_step_model(path, model, [x], [y], against=mine)
    tensors = {t.tensor: t for r in result.rows for t in r.tensors}
    if mistake == "none":
        assert result.status == "match", result.first_divergence
        return
    words = "PyTorch's BatchNorm momentum" if mistake == "pytorch-momentum" else "unbiased"
    wrong = ["Δmoving_variance"] + (["Δmoving_mean"] if mistake == "pytorch-momentum" else [])
    for name in wrong:
        assert tensors[name].status == "mismatch" and words in tensors[name].hint
    if mistake == "unbiased-variance":
        assert tensors["Δmoving_mean"].status == "match"


MOVING = ("moving_mean", "moving_variance")


LEGACY = {
    "adam": lambda k: k.optimizers.legacy.Adam(0.01),
    "sgd-momentum-decay": lambda k: k.optimizers.legacy.SGD(0.05, momentum=0.9, decay=0.01),
    "rmsprop": lambda k: k.optimizers.legacy.RMSprop(0.01),
    "adagrad": lambda k: k.optimizers.legacy.Adagrad(0.05),
    "nadam": lambda k: k.optimizers.legacy.Nadam(0.01),
}


@pytest.mark.parametrize("name", LEGACY)
def test_tf_keras_legacy_optimizers_continue_from_their_named_slots(tmp_path, name):
    """Legacy optimizers save `Adam/dense/kernel/m:0`-style weights in the .h5 file."""
    path, x, y = fitted("tf_keras", tmp_path, LEGACY[name])
    model = kerascheck.load(path)
    names = [n for n, _ in model.spec.training["state"][1:]]
    assert names and all("/" in n for n in names), names
    result = train_step_model(path, model, [x], [y], steps=3, batch_size=4)
    assert result.state_from == "the file" and result.status == "match", result.first_divergence
    slots = [t for r in result.rows for t in r.tensors if "/" in t.tensor]
    assert slots and all(t.status == "match" for t in slots)


def test_lamb_continues_from_its_saved_state(tmp_path):
    path, x, y = fitted("keras", tmp_path, lambda k: k.optimizers.Lamb(0.01))
    result = train_step_model(path, kerascheck.load(path), [x], [y], steps=3, batch_size=4)
    assert result.state_from == "the file" and result.status == "match", result.first_divergence


SPARSE_OPTIMIZERS = {
    "adam-clipnorm": lambda k: k.optimizers.Adam(0.01, clipnorm=0.1),
    "adam-global-clipnorm": lambda k: k.optimizers.Adam(0.01, global_clipnorm=0.05),
    "rmsprop-clipvalue": lambda k: k.optimizers.RMSprop(0.01, clipvalue=0.02),
    "rmsprop": lambda k: k.optimizers.RMSprop(0.01),
    "adamax": lambda k: k.optimizers.Adamax(0.01),
    "adagrad": lambda k: k.optimizers.Adagrad(0.05),
    "adadelta": lambda k: k.optimizers.Adadelta(1.0),
    "nadam-global-clipnorm": lambda k: k.optimizers.Nadam(0.01, global_clipnorm=0.05),
    "ftrl": lambda k: k.optimizers.Ftrl(0.05),
    "lion": lambda k: k.optimizers.Lion(0.001),
}


@pytest.mark.parametrize("flavor", FLAVORS)
@pytest.mark.parametrize("name", SPARSE_OPTIMIZERS)
def test_embedding_rows_read_several_times_update_as_keras_applies_them(tmp_path, flavor, name):
    """Keras 3 applies an Embedding's gradient as one slice per token read: a token read
    twice adds g1² + g2² to Adam's or RMSprop's velocity, not (g1 + g2)²."""
    k = keras_module(flavor)
    model = k.Sequential(
        [
            k.Input((7,), dtype="int32"),
            k.layers.Embedding(10, 4),
            k.layers.GlobalAveragePooling1D(),
            k.layers.Dense(3),
        ]
    )
    randomize_weights(model)
    model.compile(optimizer=SPARSE_OPTIMIZERS[name](k), loss="mse")
    path = os.path.join(str(tmp_path), name + (".keras" if flavor == "keras" else ".h5"))
    model.save(path)
    x = np.random.default_rng(0).integers(0, 10, (4, 7)).astype("int32")
    assert len(np.unique(x)) < x.size  # tokens repeat within the batch
    y = make_input((4, 3), seed=2)
    result = train_step_model(path, kerascheck.load(path), [x], [y], steps=3)
    assert result.status == "match", result.first_divergence
    table = next(r for r in result.rows if r.class_name == "Embedding")
    assert {t.tensor: t.status for t in table.tensors}["Δembeddings"] == "match"
