"""`diff --against`: a user's own per-layer arrays, with the mistakes of seeds/000-004 named.

The "user" arrays are made here from Keras itself with one deliberate mistake
each (channels-first layout, channel-major flatten, flipped kernel, missing
bias, one perturbed element), so each hint is checked against real Keras.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import keras_module

from kerascheck.cli import main

SAMPLES = os.path.join(os.path.dirname(__file__), "..", "sample_models")
MODEL = os.path.join(SAMPLES, "seed000_regressor.keras")
INPUT = os.path.join(SAMPLES, "seed000_regressor.input.npy")


@pytest.fixture(scope="module")
def keras_values():
    """Keras' own output of every layer of the seeds/000 regressor, and the model."""
    keras = keras_module("keras")
    model = keras.models.load_model(MODEL, compile=False)
    probe = keras.Model(model.inputs, [layer.output for layer in model.layers])
    outputs = probe(np.load(INPUT))
    return model, {layer.name: np.asarray(o) for layer, o in zip(model.layers, outputs)}


def run_against(tmp_path, arrays, *extra):
    mine = tmp_path / "mine.npz"
    np.savez(mine, **arrays)
    report = tmp_path / "report.json"
    result = CliRunner().invoke(
        main, ["diff", MODEL, INPUT, "--against", str(mine), "--json", str(report), *extra]
    )
    data = json.loads(report.read_text()) if report.exists() else None
    return result, data


def row(data, name):
    return next(r for r in data["layers"] if r["name"] == name)


def test_correct_arrays_match_and_missing_layers_are_not_compared(tmp_path, keras_values):
    _, values = keras_values
    result, data = run_against(tmp_path, {"conv2d": values["conv2d"], "dense": values["dense"]})
    assert result.exit_code == 0, result.output
    assert row(data, "conv2d")["status"] == "match"
    assert row(data, "flatten")["status"] == "skipped"
    assert row(data, "flatten")["reason"] == "not supplied"
    assert "your arrays" in result.stdout


def test_perturbed_element_is_pinned(tmp_path, keras_values):
    _, values = keras_values
    mine = values["conv2d_1"].copy()
    mine[1, 4, 2, 7] += 0.05 * np.abs(mine).max()
    result, data = run_against(tmp_path, {"conv2d": values["conv2d"], "conv2d_1": mine})
    assert result.exit_code == 1
    assert data["first_divergence"] == "conv2d_1"
    assert row(data, "conv2d_1")["worst_index"] == [1, 4, 2, 7]


def test_channels_first_array_is_recognised(tmp_path, keras_values):
    _, values = keras_values
    nchw = np.moveaxis(values["conv2d"], -1, 1)
    result, data = run_against(tmp_path, {"conv2d": nchw})
    assert result.exit_code == 1
    assert "--against-layout channels_first" in row(data, "conv2d")["reason"]
    result, data = run_against(tmp_path, {"conv2d": nchw}, "--against-layout", "channels_first")
    assert result.exit_code == 0 and row(data, "conv2d")["status"] == "match"


def test_channel_major_flatten_is_recognised(tmp_path, keras_values):
    """The seeds/000 mistake: flattening channel by channel instead of Keras' order."""
    _, values = keras_values
    pooled = values["max_pooling2d"]
    channel_major = np.moveaxis(pooled, -1, 1).reshape(pooled.shape[0], -1)
    result, data = run_against(tmp_path, {"flatten": channel_major})
    assert result.exit_code == 1
    assert "channel-major" in row(data, "flatten")["reason"]


def _conv_with(keras_values, kernel, bias):
    """Keras' own Conv2D on the model input with the given kernel and bias."""
    keras = keras_module("keras")
    model, _ = keras_values
    config = model.get_layer("conv2d").get_config()
    layer = keras.layers.Conv2D.from_config({**config, "name": "mistake"})
    layer.build((None, 27, 3, 6))
    layer.set_weights([kernel, bias])
    return np.asarray(layer(np.load(INPUT)))


def test_flipped_kernel_is_recognised(tmp_path, keras_values):
    model, _ = keras_values
    kernel, bias = model.get_layer("conv2d").get_weights()
    flipped = _conv_with(keras_values, kernel[::-1, ::-1], bias)
    result, data = run_against(tmp_path, {"conv2d": flipped})
    assert result.exit_code == 1
    assert "kernel flipped" in row(data, "conv2d")["reason"]


def test_missing_bias_is_recognised(tmp_path, keras_values):
    model, _ = keras_values
    kernel, bias = model.get_layer("conv2d").get_weights()
    no_bias = _conv_with(keras_values, kernel, np.zeros_like(bias))
    result, data = run_against(tmp_path, {"conv2d": no_bias})
    assert result.exit_code == 1
    assert "without the bias" in row(data, "conv2d")["reason"]


def test_unknown_keys_list_the_model_layers(tmp_path, keras_values):
    _, values = keras_values
    result, _ = run_against(tmp_path, {"conv": values["conv2d"]})
    assert result.exit_code == 2
    assert "unknown keys ['conv']" in result.stderr and "'conv2d_1'" in result.stderr


def test_reference_numpy_needs_no_keras(tmp_path, keras_values):
    _, values = keras_values
    result, data = run_against(tmp_path, {"dense_2": values["dense_2"]}, "--reference", "numpy")
    assert result.exit_code == 0, result.output
    assert data["oracle"]["name"] == "numpy"


def test_pytorch_kernel_reshaped_instead_of_transposed_is_recognised(tmp_path, keras_values):
    """An (out, in, h, w) kernel np.reshape'd to Keras' (h, w, in, out) order."""
    model, _ = keras_values
    kernel, bias = model.get_layer("conv2d").get_weights()
    torch_kernel = kernel.transpose(3, 2, 0, 1)  # what PyTorch would hold
    mine = _conv_with(keras_values, torch_kernel.reshape(kernel.shape), bias)
    result, data = run_against(tmp_path, {"conv2d": mine})
    assert result.exit_code == 1
    assert row(data, "conv2d")["reason"] == (
        "your kernel looks like an (out, in, h, w) array reshaped to (h, w, in, out); "
        "transpose it with .transpose(2, 3, 1, 0) instead"
    )


def test_keras_kernel_reshaped_to_pytorch_order_is_recognised(tmp_path, keras_values):
    """Seed 002: `our_conv_w = keras_conv_w.reshape(2, 1, 3, 3)`, then used as (out, in, h, w)."""
    model, _ = keras_values
    kernel, bias = model.get_layer("conv2d").get_weights()
    theirs = kernel.reshape(kernel.shape[3], kernel.shape[2], *kernel.shape[:2])
    mine = _conv_with(keras_values, theirs.transpose(2, 3, 1, 0), bias)  # what they compute
    result, data = run_against(tmp_path, {"conv2d": mine})
    assert result.exit_code == 1
    assert "reshaped to (out, in, h, w)" in row(data, "conv2d")["reason"]
    assert ".transpose(3, 2, 0, 1)" in row(data, "conv2d")["reason"]


def test_valid_padding_where_the_layer_has_same_is_recognised(tmp_path, keras_values):
    keras = keras_module("keras")
    model, values = keras_values
    config = {**model.get_layer("conv2d").get_config(), "name": "valid", "padding": "valid"}
    layer = keras.layers.Conv2D.from_config(config)
    layer.build((None, 27, 3, 6))
    layer.set_weights(model.get_layer("conv2d").get_weights())
    mine = np.asarray(layer(np.load(INPUT)))
    assert mine.shape[1:3] == (25, 1)
    np.testing.assert_allclose(mine, values["conv2d"][:, 1:-1, 1:-1], rtol=1e-5, atol=1e-5)
    result, data = run_against(tmp_path, {"conv2d": mine})
    assert result.exit_code == 1
    assert "matches padding='valid'" in row(data, "conv2d")["reason"]
    assert "has padding='same'" in row(data, "conv2d")["reason"]


def test_same_padding_where_the_layer_has_valid_is_recognised(tmp_path):
    keras = keras_module("keras")
    rng = np.random.default_rng(3)
    x = keras.Input((7, 6, 2))
    model = keras.Model(x, keras.layers.Conv2D(3, 3, padding="valid", name="conv")(x))
    model.set_weights([rng.standard_normal(w.shape).astype("float32") for w in model.weights])
    path = str(tmp_path / "valid.keras")
    model.save(path)
    inputs = rng.standard_normal((2, 7, 6, 2)).astype("float32")
    np.save(tmp_path / "x.npy", inputs)
    same = keras.layers.Conv2D(3, 3, padding="same")
    same.build((None, 7, 6, 2))
    same.set_weights(model.get_weights())
    np.savez(tmp_path / "mine.npz", conv=np.asarray(same(inputs)))
    report = tmp_path / "r.json"
    result = CliRunner().invoke(
        main,
        ["diff", path, str(tmp_path / "x.npy"), "--against", str(tmp_path / "mine.npz"),
         "--json", str(report)],
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    reason = row(json.loads(report.read_text()), "conv")["reason"]
    assert "matches padding='same'" in reason and "has padding='valid'" in reason


HINT_WORDS = ("reshaped", "padding=", "kernel flipped", "without the bias", "channel axis")


def test_no_hint_for_correct_or_merely_wrong_arrays(tmp_path, keras_values):
    """Every hint is earned: correct arrays get none, a perturbed one gets no mistake named."""
    _, values = keras_values
    result, data = run_against(tmp_path, dict(values))
    assert result.exit_code == 0, result.output
    assert all(not r.get("reason") for r in data["layers"])
    wrong = values["conv2d"].copy()
    wrong[0, 5, 1, 3] += 0.1 * np.abs(wrong).max()
    result, data = run_against(tmp_path, {"conv2d": wrong})
    assert result.exit_code == 1
    reason = row(data, "conv2d")["reason"] or ""
    assert not any(word in reason for word in HINT_WORDS), reason
