"""Activation functions and activation layers against Keras 3 and tf_keras.

Every name kerascheck knows is checked twice: as a Dense layer's `activation=`
string (the common case in saved models) and through the Activation layer,
applied straight to the fixture's inputs (normal * 3 with +-8 spikes: past
every clamp point: relu6, hard_sigmoid, hard_tanh, sparse_plus, shrinks).
tf_keras only knows some of the names; the others run in Keras 3 alone.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
from helpers import keras_module, make_input

from kerascheck.engine import activations

NAMES = sorted([*activations.COMMON, "hard_sigmoid"])
SHAPE = (4, 6)


@functools.cache
def flavors_knowing(name):
    """Keras 3 always; tf_keras where `activations.get(name)` resolves."""
    try:
        keras_module("tf_keras").activations.get(name)
    except (ValueError, TypeError):
        return ("keras",)
    return ("keras", "tf_keras")


def test_every_name_runs_in_keras3():
    """Guard against the grid silently shrinking: Keras 3 knows every engine name."""
    k = keras_module("keras")
    for name in NAMES:
        assert callable(k.activations.get(name)), name


@pytest.mark.parametrize("name", NAMES)
def test_dense_activation_string(check_layer, name):
    out = check_layer(
        lambda k: k.layers.Dense(6, activation=name), SHAPE, flavors=flavors_knowing(name)
    )
    assert out.dtype == np.float32


@pytest.mark.parametrize("name", NAMES)
def test_activation_layer(check_layer, name):
    check_layer(lambda k: k.layers.Activation(name), SHAPE, flavors=flavors_knowing(name))


@pytest.mark.parametrize("name", ["hard_sigmoid", "gelu", "softmax", "selu"])
def test_activation_layer_h5(check_layer, name):
    check_layer(lambda k: k.layers.Activation(name), SHAPE, ext=".h5")


def test_hard_sigmoid_differs_between_keras_versions(check_layer):
    """Keras 2: clip(0.2x + 0.5, 0, 1); Keras 3: clip(x/6 + 0.5, 0, 1). The file decides."""
    x = np.linspace(-4, 4, 2 * 9, dtype="float32").reshape(2, 9)
    make = lambda k: k.layers.Activation("hard_sigmoid")  # noqa: E731
    keras3 = check_layer(make, (9,), x=x, flavors=("keras",))
    keras2 = check_layer(make, (9,), x=x, flavors=("tf_keras",))
    np.testing.assert_allclose(keras3, np.clip(x / 6 + 0.5, 0, 1), atol=1e-6)
    np.testing.assert_allclose(keras2, np.clip(0.2 * x + 0.5, 0, 1), atol=1e-6)
    assert np.abs(keras3 - keras2).max() > 0.05  # 0.07 near x = +-2.5


def test_leaky_relu_activation_default_slope_is_0_2(check_layer):
    """The `leaky_relu` *function* defaults to 0.2; the LeakyReLU *layer* to 0.3 (below)."""
    out = check_layer(lambda k: k.layers.Activation("leaky_relu"), SHAPE)
    x = make_input((2, *SHAPE))
    np.testing.assert_allclose(out, np.where(x >= 0, x, 0.2 * x), rtol=1e-6)


# --- gelu: exact (erf) and approximate (tanh) --------------------------------


@pytest.mark.parametrize("approximate", [False, True])
@pytest.mark.parametrize("flavor", ["keras", "tf_keras"])
def test_gelu_function(flavor, approximate):
    """The NumPy function against each Keras' `activations.gelu` (no file involved)."""
    k = keras_module(flavor)
    x = make_input((3, 50))
    expected = np.asarray(k.activations.gelu(x, approximate=approximate))
    ours = activations.gelu(x, approximate=approximate)
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-6)


def test_gelu_approximate_differs_from_exact():
    x = np.linspace(-4, 4, 81, dtype="float32")
    gap = np.abs(activations.gelu(x, True) - activations.gelu(x, False)).max()
    assert gap > 1e-4


@pytest.mark.parametrize("approximate", [False, True])
def test_gelu_operation_node_keras3(check_layer, approximate):
    """Keras cannot serialize `approximate=True` as an activation (a partial fails);
    a saved model carries it only as a `keras.ops.gelu` node: class `Gelu`, module
    `keras.src.ops.nn`, config `{"approximate": ...}`. tf_keras writes a TFOpLambda
    (`nn.gelu`) instead, which kerascheck does not run, so this is Keras 3 only."""

    def make(k):
        return lambda x: k.ops.gelu(x, approximate=approximate)

    check_layer(make, SHAPE, flavors=("keras",))


# --- activation layers -----------------------------------------------------


@pytest.mark.parametrize("threshold", [0.0, 1.5])
@pytest.mark.parametrize("negative_slope", [0.0, 0.1])
@pytest.mark.parametrize("max_value", [None, 6.0, 2.5])
def test_relu_layer(check_layer, max_value, negative_slope, threshold):
    """max_value 6 takes Keras' relu6 shortcut; a threshold makes the leak start there."""
    check_layer(
        lambda k: k.layers.ReLU(
            max_value=max_value, negative_slope=negative_slope, threshold=threshold
        ),
        SHAPE,
    )


def test_relu_layer_h5(check_layer):
    check_layer(
        lambda k: k.layers.ReLU(max_value=2.5, negative_slope=0.1, threshold=1.5), SHAPE, ext=".h5"
    )


def test_leaky_relu_layer_default_slope_is_0_3(check_layer):
    """Both versions default to 0.3 (Keras 2 writes `alpha`, Keras 3 `negative_slope`)."""
    out = check_layer(lambda k: k.layers.LeakyReLU(), SHAPE)
    x = make_input((2, *SHAPE))
    np.testing.assert_allclose(out, np.where(x >= 0, x, 0.3 * x), rtol=1e-6)


@pytest.mark.parametrize("ext", [".keras", ".h5"])
@pytest.mark.parametrize("slope", [0.05, 1.5])
def test_leaky_relu_layer_slope_from_config(check_layer, slope, ext):
    check_layer(
        lambda k: k.layers.LeakyReLU(negative_slope=slope), SHAPE, ext=ext, flavors=("keras",)
    )
    check_layer(lambda k: k.layers.LeakyReLU(alpha=slope), SHAPE, ext=ext, flavors=("tf_keras",))


@pytest.mark.parametrize("shared_axes", [None, [1], [2], [1, 2], [1, 2, 3]])
def test_prelu_shared_axes(check_layer, shared_axes):
    """The fixture randomizes alpha (signs included), so each slope position is checked."""
    check_layer(lambda k: k.layers.PReLU(shared_axes=shared_axes), (4, 5, 3))


def test_prelu_h5(check_layer):
    check_layer(lambda k: k.layers.PReLU(shared_axes=[1]), (4, 5, 3), ext=".h5")


@pytest.mark.parametrize("alpha", [1.0, 0.5, 2.0])
def test_elu_layer(check_layer, alpha):
    check_layer(lambda k: k.layers.ELU(alpha=alpha), SHAPE)


@pytest.mark.parametrize("axis", [-1, 1, 2, 3, [1], [1, 2], [2, 3], [1, 3]])
def test_softmax_layer_axes(check_layer, axis):
    """A list of axes normalizes over all of them jointly (Keras: exp(x - logsumexp))."""
    out = check_layer(lambda k: k.layers.Softmax(axis=axis), (3, 4, 5))
    axes = tuple(axis) if isinstance(axis, list) else axis
    np.testing.assert_allclose(out.sum(axis=axes), 1.0, rtol=1e-5)


def test_softmax_layer_h5(check_layer):
    check_layer(lambda k: k.layers.Softmax(axis=[1, 2]), (3, 4, 5), ext=".h5")


@pytest.mark.parametrize(
    "make",
    [
        lambda k: k.layers.ReLU(max_value=6.0),
        lambda k: k.layers.Softmax(axis=1),
        lambda k: k.layers.Activation("hard_sigmoid"),
    ],
    ids=["relu6", "softmax", "hard_sigmoid"],
)
def test_activation_layers_batch_of_one(check_layer, make):
    check_layer(make, SHAPE, x=make_input((1, *SHAPE)))
