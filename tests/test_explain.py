"""`kerascheck explain`: the spelled-out arithmetic rebuilds the engine's value exactly.

The engine's values are checked against Keras elsewhere; here each explanation's
own terms (taps, bias, activation) must add up to the value it explains, at
border elements (zero padding) and interior ones.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import keras_module, make_input, randomize_weights

import kerascheck
from kerascheck.cli import main
from kerascheck.explain import explain

SAMPLES = os.path.join(os.path.dirname(__file__), "..", "sample_models")


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    k = keras_module("keras")
    layers = k.layers
    inputs = k.Input((9, 8, 4))
    x = layers.Conv2D(6, 3, strides=2, padding="same", activation="elu", name="strided")(inputs)
    x = layers.Conv2D(6, 2, dilation_rate=2, padding="same", groups=2, name="grouped")(x)
    y = layers.Permute((3, 1, 2))(x)
    y = layers.Conv2D(5, 3, data_format="channels_first", use_bias=False, name="first")(y)
    y = layers.Flatten(data_format="channels_first", name="flat")(y)
    outputs = layers.Dense(4, activation="softmax", name="head")(y)
    model = k.Model(inputs, outputs)
    randomize_weights(model)
    path = str(tmp_path_factory.mktemp("explain") / "model.keras")
    model.save(path)
    return path


@pytest.mark.parametrize(
    "layer, index",
    [
        ("strided", (0, 0, 0, 0)),  # corner: reads zero padding
        ("strided", (1, 4, 3, 5)),  # bottom-right: the extra padding row/column
        ("strided", (0, 2, 1, 2)),
        ("grouped", (1, 0, 3, 4)),  # second group of input channels
        ("first", (0, 4, 0, 1)),  # channels-first coordinates (n, c, h, w)
        ("flat", (1, 7)),
        ("head", (0, 2)),  # softmax over the whole row
    ],
)
def test_explanation_rebuilds_the_value(model_path, layer, index):
    model = kerascheck.load(model_path)
    result = explain(model, [make_input((2, 9, 8, 4))], layer, index)
    assert result.recomputed == pytest.approx(result.value, rel=1e-5, abs=1e-6)
    assert result.lines


def test_corner_counts_padded_taps(model_path):
    model = kerascheck.load(model_path)
    result = explain(model, [make_input((2, 9, 8, 4))], "strided", (0, 0, 0, 0))
    # 'same', stride 2, kernel 3: 9 rows pad (5-1)*2+3-9 = 2 -> (1, 1); 8 columns pad
    # (4-1)*2+3-8 = 1 -> (0, 1), the odd one after. At (0, 0) only the top row of
    # taps (3 of 9) reads padding.
    assert "[(1, 1), (0, 1)]" in result.lines[0]
    assert any("3 taps fall on zero padding" in line for line in result.lines)


def test_cli_explain_and_errors():
    model = os.path.join(SAMPLES, "seed000_regressor.keras")
    data = os.path.join(SAMPLES, "seed000_regressor.input.npy")
    runner = CliRunner()
    result = runner.invoke(
        main, ["explain", model, data, "--layer", "conv2d", "--index", "0,0,0,3"]
    )
    assert result.exit_code == 0, result.output
    assert "bias[3]" in result.stdout and "zero padding" in result.stdout
    value = kerascheck.load(model).run(np.load(data))["conv2d"][0, 0, 0, 3]
    assert f"engine value {value:.7g}" in result.stdout
    bad = runner.invoke(main, ["explain", model, data, "--layer", "conv2d", "--index", "0,99,0,0"])
    assert bad.exit_code == 2 and "--index" in bad.stderr
    bad = runner.invoke(main, ["explain", model, data, "--layer", "nope", "--index", "0"])
    assert bad.exit_code == 2 and "'conv2d_1'" in bad.stderr


def test_cli_explain_runs_in_batches_of_batch_size(monkeypatch):
    """--batch-size bounds each engine run: three samples in batches of one, the same value."""
    model = os.path.join(SAMPLES, "seed000_regressor.keras")
    data = os.path.join(SAMPLES, "seed000_regressor.input.npy")
    sizes = []
    run = kerascheck.engine.graph.Graph.run

    def counting(self, inputs, *args, **kwargs):
        sizes.append(len(inputs[0]))
        return run(self, inputs, *args, **kwargs)

    monkeypatch.setattr(kerascheck.engine.graph.Graph, "run", counting)
    args = ["explain", model, data, "--layer", "conv2d", "--index", "2,0,0,3"]
    runner = CliRunner()
    whole = runner.invoke(main, args)
    sizes.clear()
    batched = runner.invoke(main, [*args, "--batch-size", "1"])
    assert whole.exit_code == 0 and batched.exit_code == 0, batched.output
    assert sizes and max(sizes) == 1  # the probe at load is an empty batch
    assert batched.stdout.splitlines()[-1] == whole.stdout.splitlines()[-1]
