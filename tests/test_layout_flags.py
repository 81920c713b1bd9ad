"""`--input-layout` says what layout the user's array is in (seeds/001 and 002).

Each case runs a real Keras model: a channels-first one (its layers built with
`data_format="channels_first"`, so its Input is (C, H, W)) and a channels-last
one; the engine's predictions on the transposed array must equal Keras' own on
the array in the model's layout. Shapes are not square (C=3, H=6, W=5) so a
wrong transpose cannot hide.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import assert_matches, build_model, keras_predict, make_input, save

from kerascheck.cli import main

C, H, W = 3, 6, 5


def _layers(data_format):
    def make(k):
        def apply(x):
            y = k.layers.Conv2D(4, 3, padding="same", data_format=data_format, name="conv")(x)
            y = k.layers.Flatten(data_format=data_format)(y)
            return k.layers.Dense(2, name="dense")(y)

        return apply

    return make


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """{layout: (keras model, path)} for a channels-first and a channels-last model."""
    found = {}
    for fmt, shape in (("channels_first", (C, H, W)), ("channels_last", (H, W, C))):
        model = build_model("keras", _layers(fmt), shape)
        found[fmt] = (model, save(model, tmp_path_factory.mktemp(fmt), "keras"))
    return found


def predict(tmp_path, path, array, *flags):
    x, out = tmp_path / "x.npy", tmp_path / "out.npy"
    np.save(x, array)
    result = CliRunner().invoke(main, ["predict", path, str(x), "-o", str(out), *flags])
    return result, (np.load(out) if out.exists() else None)


NCHW = make_input((2, C, H, W), seed=1)


@pytest.mark.parametrize(
    "model_layout, given, flags, to_model",
    [
        ("channels_first", NCHW, ["--input-layout", "channels_first"], lambda x: x),
        ("channels_first", NCHW, [], lambda x: x),
        ("channels_first", np.moveaxis(NCHW, 1, -1), ["--input-layout", "channels_last"],
         lambda x: np.moveaxis(x, -1, 1)),
        ("channels_last", NCHW, ["--input-layout", "channels_first"],
         lambda x: np.moveaxis(x, 1, -1)),
        ("channels_last", np.moveaxis(NCHW, 1, -1), ["--input-layout", "channels_last"],
         lambda x: x),
    ],
    ids=["cf-model-nchw", "cf-model-nchw-no-flag", "cf-model-nhwc", "cl-model-nchw",
         "cl-model-nhwc"],
)  # fmt: skip
def test_batched_arrays_in_either_layout(tmp_path, models, model_layout, given, flags, to_model):
    model, path = models[model_layout]
    result, ours = predict(tmp_path, path, given, *flags)
    assert result.exit_code == 0, result.output
    assert_matches(ours, keras_predict(model, to_model(given)))


@pytest.mark.parametrize(
    "model_layout, flags, to_model",
    [
        ("channels_first", ["--input-layout", "channels_first"], lambda s: s),
        ("channels_first", [], lambda s: s),
        ("channels_last", ["--input-layout", "channels_first"], lambda s: np.moveaxis(s, 0, -1)),
    ],
    ids=["cf-model-flag", "cf-model-no-flag", "cl-model-flag"],
)
def test_one_chw_sample_without_batch_axis_gets_one(
    tmp_path, models, model_layout, flags, to_model
):
    model, path = models[model_layout]
    sample = NCHW[0]  # (C, H, W)
    result, ours = predict(tmp_path, path, sample, *flags)
    assert result.exit_code == 0, result.output
    assert ours.shape == (1, 2)
    assert_matches(ours, keras_predict(model, to_model(sample)[None]))


def test_one_hwc_sample_for_a_channels_last_model(tmp_path, models):
    model, path = models["channels_last"]
    sample = np.moveaxis(NCHW[1], 0, -1)  # (H, W, C)
    result, ours = predict(tmp_path, path, sample)
    assert result.exit_code == 0, result.output
    assert_matches(ours, keras_predict(model, sample[None]))


def _one_line_error(result):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize(
    "model_layout, given, suggested",
    [
        ("channels_last", NCHW, "channels_first"),
        ("channels_last", NCHW[0], "channels_first"),
        ("channels_first", np.moveaxis(NCHW, 1, -1), "channels_last"),
    ],
    ids=["nchw-for-nhwc", "chw-for-hwc", "nhwc-for-nchw"],
)
def test_shape_error_suggests_the_layout_flag(tmp_path, models, model_layout, given, suggested):
    _, path = models[model_layout]
    line = _one_line_error(predict(tmp_path, path, given)[0])
    assert f"found {given.shape}" in line  # the shape as the user gave it
    assert f"pass --input-layout {suggested}" in line


def test_error_shows_the_users_layout_and_shape(tmp_path, models):
    """Said channels_first, gave an array that is neither: expected (C, H, W), found as given."""
    _, path = models["channels_last"]
    wrong = np.zeros((2, C, H, W + 1), "float32")
    line = _one_line_error(predict(tmp_path, path, wrong, "--input-layout", "channels_first")[0])
    assert f"expected shape (batch, {C}, {H}, {W})" in line
    assert "given as channels_first" in line
    assert f"found {wrong.shape}" in line
    assert "pass --input-layout" not in line  # fits no layout: no suggestion


def test_channels_first_array_no_longer_mangled_on_a_channels_first_model(tmp_path, models):
    """The issue's failure: the flag transposed an array the model already read as is."""
    _, path = models["channels_first"]
    result, _ = predict(tmp_path, path, NCHW, "--input-layout", "channels_first")
    assert result.exit_code == 0, result.output
    assert "(2, 6, 5, 3)" not in result.output


def test_diff_with_keras_on_a_channels_first_model(tmp_path, models):
    """The inputs Keras gets are the transposed ones too: engine and Keras agree."""
    _, path = models["channels_first"]
    x = tmp_path / "x.npy"
    np.save(x, np.moveaxis(NCHW, 1, -1))
    result = CliRunner().invoke(main, ["diff", path, str(x), "--input-layout", "channels_last"])
    assert result.exit_code == 0, result.output


def _conv_output(model, x):
    import keras

    probe = keras.Model(model.inputs, model.get_layer("conv").output)
    return np.asarray(probe(x))


@pytest.mark.parametrize(
    "transform, flags, status",
    [
        (lambda y: y, [], "match"),
        (lambda y: y, ["--against-layout", "channels_first"], "match"),
        (lambda y: np.moveaxis(y, 1, -1), ["--against-layout", "channels_last"], "match"),
        (lambda y: np.moveaxis(y, 1, -1), [], "--against-layout channels_last"),
    ],
    ids=["nchw", "nchw-flag", "nhwc-flag", "nhwc-hint"],
)
def test_against_layout_on_a_channels_first_model(tmp_path, models, transform, flags, status):
    """--against-layout also says the user's layout: NCHW conv outputs of a channels-first
    model are compared as they are, NHWC ones are moved to it."""
    model, path = models["channels_first"]
    x, mine, report = tmp_path / "x.npy", tmp_path / "mine.npz", tmp_path / "r.json"
    np.save(x, NCHW)
    np.savez(mine, conv=transform(_conv_output(model, NCHW)))
    args = ["diff", path, str(x), "--against", str(mine), "--reference", "numpy"]
    result = CliRunner().invoke(main, [*args, "--json", str(report), *flags])
    conv = next(r for r in json.loads(report.read_text())["layers"] if r["name"] == "conv")
    if status == "match":
        assert result.exit_code == 0, result.output
        assert conv["status"] == "match"
    else:
        assert result.exit_code == 1, result.output
        assert status in conv["reason"]
