"""`explain --grad`: one gradient element spelled out, rebuilt from its terms, and equal to
the element Keras' tape gives (so the arithmetic shown is the arithmetic Keras does)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from click.testing import CliRunner

import kerascheck
from kerascheck.cli import main
from kerascheck.explain_grad import explain_grad
from kerascheck.grad import grad_model

HERE = os.path.dirname(os.path.abspath(__file__))
STEM = os.path.join(HERE, "..", "sample_models", "seed004_cnn")


@pytest.fixture(scope="module")
def keras_grads():
    model = kerascheck.load(STEM + ".keras")
    x, y = np.load(STEM + ".input.npy"), np.load(STEM + ".target.npy")
    return grad_model(STEM + ".keras", model, [x], [y], save=True).saved


@pytest.mark.parametrize(
    "layer, index, key",
    [
        ("conv2d_1", "kernel:1,2,0,3", "keras/grad/conv2d_1/kernel"),
        ("conv2d_1", "bias:4", "keras/grad/conv2d_1/bias"),
        ("conv2d_1", "0,5,6,2", "keras/d/max_pooling2d"),
        ("dense", "kernel:7,11", "keras/grad/dense/kernel"),
        ("dense_1", "3,20", "keras/d/dense"),
        ("max_pooling2d", "1,6,7,3", "keras/d/conv2d"),
    ],
)
def test_each_element_is_rebuilt_from_its_terms_and_equals_keras(keras_grads, layer, index, key):
    model = kerascheck.load(STEM + ".keras")
    x, y = np.load(STEM + ".input.npy"), np.load(STEM + ".target.npy")
    result = explain_grad(model, [x], [y], layer, index)
    position = tuple(int(p) for p in index.split(":")[-1].split(","))
    scale = float(np.max(np.abs(keras_grads[key])))
    assert result.recomputed == pytest.approx(result.value, abs=1e-6 * scale)
    assert result.value == pytest.approx(float(keras_grads[key][position]), abs=1e-5 * scale)
    assert len(result.lines) >= 2


def test_cli_explain_grad_and_bad_index():
    args = ["explain", STEM + ".keras", STEM + ".input.npy", "--grad", STEM + ".target.npy"]
    out = CliRunner().invoke(main, [*args, "--layer", "conv2d", "--index", "kernel:0,0,0,1"])
    assert out.exit_code == 0, out.output
    assert "rotated" not in out.output and "x_padded" in out.output
    out = CliRunner().invoke(main, [*args, "--layer", "conv2d", "--index", "gamma:0"])
    assert out.exit_code == 2 and "kernel" in out.output
