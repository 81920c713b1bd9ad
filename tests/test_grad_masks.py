"""`kerascheck grad` on what Keras' loss and tape do beyond plain layers: an output mask
weighting the loss, a Dropout inside a nested model in training mode, and an op
TensorFlow cannot differentiate.

- Masked outputs: Keras 3 (`reduce_weighted_values` / `apply_mask`) and tf_keras
  (`apply_mask` in the losses container, then `apply_valid_mask`) turn the output's
  mask into sample weights, rescaled by total / valid under `sum_over_batch_size`:
  the engine must do the same, and its backward must start from the masked gradient.
- Nested Dropout: the masks Keras drew inside the nested model are recorded and the
  engine replays them; a random layer whose draw cannot be recorded is refused.
- UpSampling2D(interpolation="area"): TensorFlow has no gradient for ResizeArea, so
  `grad` exits 2 with one line naming the layer; a tf_keras channels-first max pooling,
  whose gradient kernel TensorFlow's CPU build lacks, exits 2 naming the op.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import FLAVORS, keras_module, make_input, randomize_weights

import kerascheck
from kerascheck.cli import main
from kerascheck.engine.losses import get_loss
from kerascheck.errors import KerascheckError
from kerascheck.grad import grad_model
from kerascheck.oracle.gradients import KerasGradientRunner

B, T, F, V, C = 4, 5, 3, 7, 3


def _save(model, tmp_path, flavor, name):
    path = os.path.join(str(tmp_path), name + (".keras" if flavor == "keras" else ".h5"))
    model.save(path)
    return path


def masked_model(flavor, tmp_path, variant, loss):
    """Masking (or Embedding(mask_zero=True)) -> LSTM(return_sequences) -> Dense, whose
    output carries the mask; softmax output for the sparse cross-entropy (logits path)."""
    k = keras_module(flavor)
    if variant == "masking":
        head = [k.Input((T, F)), k.layers.Masking(0.0)]
    else:
        head = [k.Input((T,), dtype="int32"), k.layers.Embedding(V, 4, mask_zero=True)]
    units, activation = (2, None) if loss == "mse" else (C, "softmax")
    model = k.Sequential(
        [*head, k.layers.LSTM(4, return_sequences=True), k.layers.Dense(units, activation)]
    )
    randomize_weights(model, seed=1)
    model.compile(optimizer="sgd", loss=loss)
    return _save(model, tmp_path, flavor, f"{variant}_{loss}_{flavor}")


def masked_batch(variant, loss):
    rng = np.random.default_rng(2)
    if variant == "masking":
        x = make_input((B, T, F), seed=3)  # negatives and spikes at -8 included
        x[0, 3:] = 0.0  # padded tail
        x[1, 1] = 0.0  # a hole inside
        x[3, :2] = 0.0  # padded head
    else:
        x = rng.integers(1, V, size=(B, T)).astype("int32")
        x[0, 3:] = 0
        x[1, 1] = 0
        x[3, :2] = 0
    if loss == "mse":
        y = make_input((B, T, 2), seed=4)
    else:
        y = rng.integers(0, C, size=(B, T)).astype("int32")
    return x, y


def _check(result):
    assert abs(result.engine_loss - result.keras_loss) <= 1e-5 * abs(result.keras_loss), (
        result.engine_loss,
        result.keras_loss,
    )
    for row in result.rows:
        for tensor in row.tensors:
            for side in ("own", "carried"):
                stats = getattr(tensor, side)
                if stats is not None and tensor.keras_norm > 0:
                    assert stats.rel_error <= 1e-4, (row.name, tensor.tensor, side, stats)
    assert result.status == "match", result.first_divergence


@pytest.fixture
def runner_cache(monkeypatch):
    """One Keras model per file for the several `grad_model` calls of a test."""
    from kerascheck.oracle import gradients

    cache = {}

    def cached(path, spec, flavor, loss, *args, **kwargs):
        if path not in cache:
            cache[path] = KerasGradientRunner(path, spec, flavor, loss, *args, **kwargs)
        return cache[path]

    monkeypatch.setattr(gradients, "KerasGradientRunner", cached)
    return cache


CASES = [
    (flavor, variant, loss)
    for flavor in FLAVORS
    for variant in ("masking", "embedding")
    for loss in ("mse", "sparse_categorical_crossentropy")
]


@pytest.mark.parametrize("flavor, variant, loss", CASES)
def test_masked_output_loss_and_gradients_match_keras(
    flavor, variant, loss, tmp_path, runner_cache
):
    path = masked_model(flavor, tmp_path, variant, loss)
    x, y = masked_batch(variant, loss)
    model = kerascheck.load(path)
    rng = np.random.default_rng(5)
    # Keras 3 multiplies (batch,) weights into a (batch, steps) mask without expanding
    # them (and fails): temporal weights there; tf_keras expands (batch,) weights.
    weights = [None, rng.uniform(0.2, 2.0, size=(B, T)).astype("float32")]
    if flavor == "tf_keras":
        weights.append(rng.uniform(0.2, 2.0, size=(B,)).astype("float32"))
    for w in weights:
        result = grad_model(path, model, [x], [y], sample_weight=w)
        _check(result)
        if w is None:  # the mask matters: unmasked, the loss is another number
            (prediction,), _ = model.graph.run([x])
            unmasked, _ = get_loss(loss, model.spec.keras_major).value_and_grad(y, prediction)
            assert abs(unmasked - result.keras_loss) > 1e-3 * abs(result.keras_loss)
    mask = runner_cache[path].gradients([x], [y], None, True).output_masks[0]
    assert mask is not None and mask.shape == (B, T) and not mask.all()


def nested_model(flavor, tmp_path, inner_layer, name="m"):
    k = keras_module(flavor)
    inner = k.Sequential([k.Input((6,)), k.layers.Dense(8), inner_layer(k)], name="inner")
    inp = k.Input((6,))
    model = k.Model(inp, k.layers.Dense(2, name="head")(inner(inp)))
    randomize_weights(model, seed=6)
    model.compile(optimizer="sgd", loss="mse")
    return _save(model, tmp_path, flavor, f"{name}_{flavor}")


@pytest.mark.parametrize("flavor", FLAVORS)
def test_nested_dropout_masks_are_keras_own_in_training_mode(flavor, tmp_path):
    path = nested_model(flavor, tmp_path, lambda k: k.layers.Dropout(0.5, name="drop"))
    x, y = make_input((8, 6), seed=7), make_input((8, 2), seed=8)
    model = kerascheck.load(path)
    result = grad_model(path, model, [x], [y], mode="train")
    _check(result)
    runner = KerasGradientRunner(path, model.spec, flavor, "mse")
    scale, shift = runner.gradients([x], [y], None, True).noise["inner"]["drop"]
    assert np.shape(scale) == (8, 8) and set(np.unique(scale)) == {0.0, 2.0}
    assert np.all(np.asarray(shift) == 0)


@pytest.mark.parametrize("flavor, name", [("keras", "lstm"), ("tf_keras", "noise")])
def test_nested_random_layer_that_cannot_be_replayed_is_refused(flavor, name, tmp_path):
    """Keras 3: dropout inside a nested recurrent layer; tf_keras: GaussianNoise, whose
    stateful draw cannot be recorded inside a nested model."""
    if name == "lstm":
        k = keras_module(flavor)
        inner = k.Sequential(
            [k.Input((6, 2)), k.layers.LSTM(3, dropout=0.4, name="rnn")], name="inner"
        )
        inp = k.Input((6, 2))
        keras_model = k.Model(inp, k.layers.Dense(2)(inner(inp)))
        keras_model.compile(optimizer="sgd", loss="mse")
        path = _save(keras_model, tmp_path, flavor, "lstm")
        x, layer = make_input((3, 6, 2)), "'rnn' (LSTM)"
    else:
        noise = lambda k: k.layers.GaussianNoise(0.5, name="noise")  # noqa: E731
        path = nested_model(flavor, tmp_path, noise, name)
        x, layer = make_input((3, 6)), "'noise' (GaussianNoise)"
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", make_input((3, 2), seed=9))
    args = ["grad", path, str(tmp_path / "x.npy"), str(tmp_path / "y.npy")]
    out = CliRunner().invoke(main, args)
    assert out.exit_code == 2, out.output
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    assert layer in lines[0] and "nested model 'inner'" in lines[0]
    assert "--mode inference" in lines[0]
    assert CliRunner().invoke(main, [*args, "--mode", "inference"]).exit_code == 0


def _grad_error_line(path, tmp_path) -> str:
    """`kerascheck grad` of the model on tmp_path's x.npy and y.npy: exit 2, one line."""
    out = CliRunner().invoke(main, ["grad", path, str(tmp_path / "x.npy"), str(tmp_path / "y.npy")])
    assert out.exit_code == 2, out.output
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    return lines[0]


def test_resize_area_has_no_tensorflow_gradient_and_exits_2_naming_the_layer(tmp_path):
    k = keras_module("keras")
    model = k.Sequential(
        [k.Input((3, 4, 2)), k.layers.UpSampling2D((2, 3), interpolation="area", name="up")]
    )
    model.compile(optimizer="sgd", loss="mse")
    path = _save(model, tmp_path, "keras", "area")
    np.save(tmp_path / "x.npy", make_input((2, 3, 4, 2)))
    np.save(tmp_path / "y.npy", make_input((2, 6, 12, 2), seed=1))
    line = _grad_error_line(path, tmp_path)
    assert "TensorFlow has no gradient for ResizeArea" in line
    assert "layer 'up')" in line and "internal error" not in line
    with pytest.raises(KerascheckError, match="no gradient for ResizeArea"):
        grad_model(
            path, kerascheck.load(path), [make_input((2, 3, 4, 2))], [make_input((2, 6, 12, 2))]
        )


def test_a_tensorflow_kernel_failing_in_the_backward_is_one_line_exit_2(tmp_path):
    k = keras_module("tf_keras")
    model = k.Sequential(
        [k.Input((2, 4, 4)), k.layers.MaxPooling2D(data_format="channels_first", name="pool")]
    )
    model.compile(optimizer="sgd", loss="mse")
    path = _save(model, tmp_path, "tf_keras", "nchw_pool")
    np.save(tmp_path / "x.npy", make_input((2, 2, 4, 4)))
    np.save(tmp_path / "y.npy", make_input((2, 2, 2, 2), seed=1))
    line = _grad_error_line(path, tmp_path)
    assert "TensorFlow failed in MaxPoolGrad" in line and "NHWC" in line
    assert "internal error" not in line and "function_node" not in line


@pytest.mark.parametrize("flavor", FLAVORS)
def test_a_mask_from_the_outer_model_reaches_a_nested_models_layers(flavor, tmp_path):
    """Embedding(mask_zero) outside, LSTM inside a nested model: Keras passes the mask
    across the boundary, so the LSTM skips the padded steps in both passes."""
    k = keras_module(flavor)
    inner = k.Sequential([k.Input((T, 4)), k.layers.LSTM(3)], name="inner")
    tokens = k.Input((T,), dtype="int32")
    embedded = k.layers.Embedding(V, 4, mask_zero=True, name="embed")(tokens)
    model = k.Model(tokens, k.layers.Dense(2, name="head")(inner(embedded)))
    randomize_weights(model, seed=9)
    model.compile(optimizer="sgd", loss="mse")
    path = _save(model, tmp_path, flavor, f"outer_mask_{flavor}")
    x, _ = masked_batch("embedding", "mse")
    y = make_input((B, 2), seed=10)
    loaded = kerascheck.load(path)
    result = grad_model(path, loaded, [x], [y])
    _check(result)
    # Unmasked, the padded steps would change the LSTM's last state and its gradients.
    unmasked = loaded.graph.layers["inner"].graph.run([loaded.run(x)["embed"]])[0][0]
    assert not np.allclose(unmasked, loaded.run(x)["inner"], atol=1e-4)


@pytest.mark.parametrize("flavor", FLAVORS)
def test_dropout_in_a_model_nested_twice_and_called_twice_is_replayed_per_call(flavor, tmp_path):
    """outer -> middle (calls `block` twice) -> block (Dense, Dropout): each call of the
    block drew its own mask, and each is replayed where it was drawn."""
    k = keras_module(flavor)
    block = k.Sequential(
        [k.Input((6,)), k.layers.Dense(6), k.layers.Dropout(0.5, name="drop")], name="block"
    )
    inner_in = k.Input((6,))
    middle = k.Model(inner_in, block(block(inner_in)), name="middle")
    inp = k.Input((6,))
    model = k.Model(inp, k.layers.Dense(2, name="head")(middle(inp)))
    randomize_weights(model, seed=11)
    model.compile(optimizer="sgd", loss="mse")
    path = _save(model, tmp_path, flavor, f"twice_{flavor}")
    x, y = make_input((8, 6), seed=12), make_input((8, 2), seed=13)
    loaded = kerascheck.load(path)
    result = grad_model(path, loaded, [x], [y], mode="train")
    _check(result)
    runner = KerasGradientRunner(path, loaded.spec, flavor, "mse")
    noise = runner.gradients([x], [y], None, True).noise["middle"]
    first, second = noise["block"]["drop"][0], noise["block#1"]["drop"][0]
    assert np.shape(first) == np.shape(second) == (8, 6)
    assert not np.array_equal(first, second)  # two draws, not one replayed twice
