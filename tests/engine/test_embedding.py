"""Embedding, Masking and CategoryEncoding against Keras 3 and tf_keras, the masks they
start carried to a downstream GlobalAveragePooling1D, and `kerascheck diff` on an
Embedding model fed seeded random indices."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner
from helpers import keras_module, keras_predict, make_input, randomize_weights, save

import kerascheck
from kerascheck.cli import main
from kerascheck.errors import KerascheckError

EXTS = (".keras", ".h5")


def tokens(shape, high, seed=0):
    """Indices in [0, high) with padding: zeros at the end of every sample, one inside."""
    x = np.random.default_rng(seed).integers(1, high, size=shape).astype("int32")
    if x.ndim >= 2:
        x[:, -2:] = 0
        x[0, 1] = 0
    return x


def mask_pool(make_source):
    """source -> Dense -> GlobalAveragePooling1D: the pooling only sees the mask if
    Dense carried it."""
    return lambda k: (
        lambda x: k.layers.GlobalAveragePooling1D()(
            k.layers.Dense(3, activation="tanh", name="steps")(make_source(k)(x))
        )
    )


# --- Embedding ------------------------------------------------------------------


@pytest.mark.parametrize("ext", EXTS)
@pytest.mark.parametrize("shape", [(), (5,), (3, 4)])
def test_embedding_any_rank(check_layer, ext, shape):
    """Rank-1, rank-2 and rank-3 integer inputs each gather rows of the table."""
    out = check_layer(lambda k: k.layers.Embedding(7, 4), shape, ext=ext, dtype="int32", integers=7)
    assert out.shape == (2, *shape, 4) and out.dtype == np.float32


@pytest.mark.parametrize("ext", EXTS)
def test_embedding_mask_zero_reaches_pooling(check_layer, ext, tmp_path):
    """The mask skips padded steps in the mean; the embedding values are not masked."""
    x = tokens((3, 6), 9)
    make = mask_pool(lambda k: k.layers.Embedding(9, 4, mask_zero=True))
    out = check_layer(make, (6,), ext=ext, dtype="int32", x=x)
    path = save(_model("keras", make, (6,), "int32"), str(tmp_path), "keras", ext)
    steps = kerascheck.load(path).run(x)["steps"]
    assert not np.allclose(out, steps.mean(axis=1), atol=1e-3), "the mask had no effect"
    assert np.all(steps[x == 0] != 0), "padded steps keep their (Dense of) embedding"


@pytest.mark.parametrize("ext", EXTS)
def test_embedding_mask_zero_alone(check_layer, ext):
    x = tokens((2, 5), 6)
    out = check_layer(
        lambda k: k.layers.Embedding(6, 3, mask_zero=True), (5,), ext=ext, dtype="int32", x=x
    )
    assert np.all(out[x == 0] == out[x == 0][0]) and np.any(out[x == 0] != 0)


@pytest.mark.parametrize("ext", EXTS)
def test_embedding_float_inputs_truncate(check_layer, ext):
    """Keras casts float indices to int32: 1.7 -> 1, -0.4 -> 0."""
    x = np.array([[0.0, 1.7, 3.2, -0.4, 4.99], [2.0, 2.5, 0.9, 1.0, 3.0]], dtype="float32")
    check_layer(lambda k: k.layers.Embedding(5, 3), (5,), ext=ext, x=x)


def test_embedding_negative_indices_wrap_in_keras3(check_layer):
    """Keras 3's `take` wraps -input_dim <= i < 0 (keras/src/backend/tensorflow/numpy.py)."""
    x = np.array([[-1, -5, 0, 4], [2, -2, 3, -3]], dtype="int32")
    check_layer(lambda k: k.layers.Embedding(5, 3), (4,), flavors=("keras",), dtype="int32", x=x)


@pytest.mark.parametrize(
    "flavor, bad", [("keras", 5), ("keras", -6), ("tf_keras", 5), ("tf_keras", -1)]
)
def test_embedding_out_of_range_is_a_clear_error(tmp_path, flavor, bad):
    """TensorFlow raises on CPU for these indices; so does kerascheck, by layer name."""
    model = _model(flavor, lambda k: k.layers.Embedding(5, 3), (3,), "int32")
    x = np.array([[1, bad, 2]], dtype="int32")
    with pytest.raises(tf.errors.InvalidArgumentError):
        keras_predict(model, x)
    loaded = kerascheck.load(save(model, str(tmp_path), flavor))
    with pytest.raises(KerascheckError, match=r"layer 'embedding.*expected indices in"):
        loaded.predict(x)


@pytest.mark.parametrize("ext", EXTS)
def test_embedding_lora_keras3(check_layer, ext):
    """.keras stores the table with the LoRA delta merged; .h5 stores A, B and the table."""
    check_layer(
        lambda k: k.layers.Embedding(6, 4, lora_rank=2, lora_alpha=3),
        (5,),
        flavors=("keras",),
        ext=ext,
        dtype="int32",
        integers=6,
    )


def test_embedding_quantized_is_refused(tmp_path):
    model = _model("keras", lambda k: k.layers.Embedding(6, 4), (5,), "int32")
    model.quantize("int8")
    path = save(model, str(tmp_path), "keras")
    with pytest.raises(KerascheckError, match="quantized"):
        kerascheck.load(path)


# --- Masking --------------------------------------------------------------------


def masked_steps(shape, value, seed=0):
    """Inputs with whole time steps equal to `value` and steps only partly equal to it."""
    x = make_input(shape, seed=seed)
    x[:, -1] = value
    x[0, 1] = value
    x[1, 0, :2] = value  # not masked: other features differ
    return x


@pytest.mark.parametrize("ext", EXTS)
@pytest.mark.parametrize("value", [0.0, -1.5])
def test_masking_zeroes_and_masks_steps(check_layer, ext, value):
    x = masked_steps((2, 5, 3), value)
    out = check_layer(lambda k: k.layers.Masking(mask_value=value), (5, 3), ext=ext, x=x)
    assert np.all(out[:, -1] == 0) and np.all(out[1, 0] == x[1, 0])
    check_layer(mask_pool(lambda k: k.layers.Masking(mask_value=value)), (5, 3), ext=ext, x=x)


def test_masking_rank4(check_layer):
    """Any rank: the mask is `any(x != mask_value)` over the last axis only."""
    x = masked_steps((2, 3, 4, 2), 0.0)
    check_layer(lambda k: k.layers.Masking(), (3, 4, 2), x=x)


# --- CategoryEncoding -----------------------------------------------------------

KERAS3_SHAPES = [(1,), (4,), (2, 5)]


@pytest.mark.parametrize("ext", EXTS)
@pytest.mark.parametrize("mode", ["one_hot", "multi_hot", "count"])
@pytest.mark.parametrize("shape", KERAS3_SHAPES)
def test_category_encoding_keras3(check_layer, ext, mode, shape):
    """Rank 3 multi_hot/count reduce axis 1 in Keras 3 (not the last axis)."""
    out = check_layer(
        lambda k: k.layers.CategoryEncoding(6, output_mode=mode),
        shape,
        flavors=("keras",),
        ext=ext,
        dtype="int32",
        integers=6,
    )
    assert out.dtype == np.float32


@pytest.mark.parametrize("ext", EXTS)
@pytest.mark.parametrize("mode, shape", [("one_hot", (1,)), ("multi_hot", (4,)), ("count", (4,))])
def test_category_encoding_tf_keras(check_layer, ext, mode, shape):
    check_layer(
        lambda k: k.layers.CategoryEncoding(6, output_mode=mode),
        shape,
        flavors=("tf_keras",),
        ext=ext,
        dtype="int32",
        integers=6,
    )


@pytest.mark.parametrize("mode", ["one_hot", "multi_hot", "count"])
def test_category_encoding_keras3_out_of_range(check_layer, mode):
    """Keras 3: one_hot gives zeros for any out-of-range token; bincount drops tokens
    >= num_tokens (negative ones fail there, so one_hot only)."""
    x = np.array([[0, 6, 2, 9], [5, 5, 1, 7]], dtype="int32")
    if mode == "one_hot":
        x[1, 2] = -1
    check_layer(
        lambda k: k.layers.CategoryEncoding(6, output_mode=mode),
        (4,),
        flavors=("keras",),
        dtype="int32",
        x=x,
    )


def test_category_encoding_count_weights_keras3(tmp_path):
    keras = keras_module("keras")
    tokens_in = keras.Input((4,), dtype="int32")
    weights_in = keras.Input((4,), dtype="float32")
    layer = keras.layers.CategoryEncoding(5, output_mode="count")
    model = keras.Model([tokens_in, weights_in], layer(tokens_in, count_weights=weights_in))
    x = [np.array([[0, 1, 1, 4], [3, 3, 3, 2]], dtype="int32"), make_input((2, 4))]
    expected = keras_predict(model, x)
    for ext in EXTS:
        got = kerascheck.load(save(model, str(tmp_path), "keras", ext)).predict(x)
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


def test_category_encoding_tf_keras_rejects_out_of_range(tmp_path):
    model = _model("tf_keras", lambda k: k.layers.CategoryEncoding(4), (3,), "int32")
    loaded = kerascheck.load(save(model, str(tmp_path), "tf_keras", ".h5"))
    for bad in (4, -1):
        with pytest.raises(KerascheckError, match="expected tokens in"):
            loaded.predict(np.array([[0, bad, 1]], dtype="int32"))


# --- the command line on an Embedding model -------------------------------------


@pytest.mark.parametrize("flavor, ext", [("keras", ".keras"), ("tf_keras", ".h5")])
def test_cli_diff_embedding_random_indices(tmp_path, flavor, ext):
    """Without an INPUT file, random indices stay below input_dim (3, so zeros are common
    and the mask matters); the layer-wise diff matches."""
    make = mask_pool(lambda k: k.layers.Embedding(3, 4, mask_zero=True))
    path = save(_model(flavor, make, (8,), "int32"), str(tmp_path), flavor, ext)
    result = CliRunner().invoke(main, ["diff", "--layer-wise", "--batch", "4", path])
    assert result.exit_code == 0, result.output
    assert "MATCH" in result.output and "embedding" in result.output


def _model(flavor, make_layer, shape, dtype):
    keras = keras_module(flavor)
    x = keras.Input(shape, dtype=dtype)
    model = keras.Model(x, make_layer(keras)(x))
    randomize_weights(model)
    return model
