"""Every entry of `activations.DERIVATIVES` against Keras' own gradient and finite differences.

For each activation name kerascheck knows, the engine's backward is compared
element by element with `tf.GradientTape` over `keras.activations.get(name)`
(Keras 3), and over tf_keras' where tf_keras has the name; `hard_sigmoid`
differs between the two and each flavor gets its own NumPy function. The
inputs run from -8 to 8 in quarter steps, so they hit every kink exactly (0,
+-0.5, +-1, +-2.5, +-3, 6), where TensorFlow's choice is the reference; float64
central differences then check the formulas on random inputs away from those
kinks, with the full gradient of `sum(f(x) * dy)` for every element at once.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
from gradcheck import FD_RTOL
from helpers import keras_module

from kerascheck.engine import activations

NAMES = sorted([*activations.COMMON, "hard_sigmoid"])
KINKS = np.array([0.0, 0.5, 1.0, 2.5, 3.0, 6.0])
SHAPE = (4, 20)  # softmax, log_softmax and glu act on the last axis (glu halves it)


@functools.cache
def flavors_knowing(name):
    """Keras 3 always; tf_keras where `activations.get(name)` resolves."""
    try:
        keras_module("tf_keras").activations.get(name)
    except (ValueError, TypeError):
        return ("keras",)
    return ("keras", "tf_keras")


CELLS = [(name, flavor) for name in NAMES for flavor in flavors_knowing(name)]


def engine_function(name, flavor):
    return activations.resolve(name, 3 if flavor == "keras" else 2)


def test_grid_covers_every_derivative():
    """A DERIVATIVES entry no Keras name resolves to would go untested."""
    tested = {engine_function(name, flavor) for name, flavor in CELLS}
    assert tested == set(activations.DERIVATIVES)
    assert ("hard_sigmoid", "tf_keras") in CELLS  # Keras 2's own hard_sigmoid


def kink_grid():
    """-8..8 in exact quarter steps (every kink on it), then random values past them."""
    steps = np.arange(-8.0, 8.25, 0.25)
    rest = 3.0 * np.random.default_rng(0).standard_normal(np.prod(SHAPE) - steps.size)
    return np.concatenate([steps, rest]).reshape(SHAPE).astype("float32")


def upstream(shape, seed=1):
    return np.random.default_rng(seed).standard_normal(shape)


@pytest.mark.parametrize("name,flavor", CELLS)
def test_matches_keras_tape(name, flavor):
    import tensorflow as tf

    fn = engine_function(name, flavor)
    x = kink_grid()
    y = fn(x)
    dy = upstream(y.shape).astype("float32")
    keras_fn = keras_module(flavor).activations.get(name)
    t = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(t)
        out = keras_fn(t)
    theirs = tape.gradient(out, t, output_gradients=tf.constant(dy)).numpy()
    ours = activations.backward(fn, x, y, dy)
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6, err_msg=f"{flavor} {name}")


def away_from_kinks(seed=2):
    """Random inputs in [-8.5, 8.5] at least 0.05 from every kink (and its negative)."""
    x = np.random.default_rng(seed).uniform(-8.5, 8.5, SHAPE)
    near = (np.abs(np.abs(x)[..., None] - KINKS) < 0.05).any(axis=-1)
    return np.where(near, x + 0.1, x)


@pytest.mark.parametrize("name,flavor", CELLS)
def test_matches_finite_differences(name, flavor):
    fn = engine_function(name, flavor)
    x = away_from_kinks()
    dy = upstream(fn(x).shape)
    ours = activations.backward(fn, x, fn(x), dy)
    assert ours.dtype == np.float64
    # One perturbed copy of x per element, stacked on a new leading axis; differences are
    # taken before summing so untouched elements cancel exactly.
    h = 1e-6
    steps = h * np.eye(x.size).reshape(x.size, *x.shape)
    change = (fn(x[None] + steps) - fn(x[None] - steps)) * dy
    numeric = change.reshape(x.size, -1).sum(axis=1).reshape(x.shape) / (2 * h)
    np.testing.assert_allclose(ours, numeric, rtol=FD_RTOL, atol=1e-8, err_msg=name)


@pytest.mark.parametrize(
    "name,x,expected",
    [
        ("relu", 0.0, 0.0),
        ("leaky_relu", 0.0, 0.2),
        ("elu", 0.0, 1.0),
        ("selu", 0.0, activations.SELU_SCALE),
        ("celu", 0.0, 2.0),
        ("relu6", 6.0, 0.0),
        ("hard_tanh", 1.0, 1.0),
        ("hard_tanh", -1.0, 1.0),
        ("hard_sigmoid", 3.0, 0.0),
        ("hard_silu", -3.0, 0.0),
        ("sparse_plus", 1.0, 1.0),
        ("sparse_sigmoid", -1.0, 0.0),
        ("soft_shrink", 0.5, 0.0),
    ],
)
def test_kink_values(name, x, expected):
    """The kink values TensorFlow picks, spelled out (the tape grid above finds them)."""
    fn = activations.resolve(name, 3)
    x = np.array([x], dtype="float32")
    slope = activations.backward(fn, x, fn(x), np.ones_like(x))
    np.testing.assert_allclose(slope, [expected], rtol=1e-6)


def test_keras2_hard_sigmoid_passes_at_its_bounds():
    """tf_keras clips `0.2 x + 0.5` with clip_by_value: slope 0.2 at x = +-2.5 too."""
    x = np.array([-2.5, 2.5, -2.51, 2.51], dtype="float32")
    fn = activations.hard_sigmoid_keras2
    slope = activations.backward(fn, x, fn(x), np.ones_like(x))
    np.testing.assert_allclose(slope, [0.2, 0.2, 0.0, 0.0], rtol=1e-6)
