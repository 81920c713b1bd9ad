"""Engine regularization penalties against Keras layers' own `losses`, both flavors.

Each case builds a layer with regularizers in Keras, re-draws its weights at random
(with an exact zero, where L1's gradient is 0), calls it once, and compares under
`tf.GradientTape`: the sum of `layer.losses` with the engine's weight penalty plus its
activity penalty, the gradient w.r.t. each trainable weight, and w.r.t. the layer's
output (activity regularizers). The engine reads the regularizers from the layer's
`get_config()`, the dialect each flavor writes into a file.

Tolerance: per tensor, `||engine - keras|| <= 1e-5 * ||keras|| + 1e-9 * sqrt(n)`.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from helpers import FLAVORS, keras_module

from kerascheck.engine.regularizers import (
    activity_penalty_and_grad,
    get_regularizer,
    penalty_and_grads,
)
from kerascheck.errors import KerascheckError

RTOL = 1e-5
MAJOR = {"keras": 3, "tf_keras": 2}


def assert_close(ours, theirs, what):
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    assert ours.shape == theirs.shape, f"{what}: shape {ours.shape} != {theirs.shape}"
    err = np.linalg.norm(ours - theirs)
    bound = RTOL * np.linalg.norm(theirs) + 1e-9 * np.sqrt(max(theirs.size, 1))
    assert err <= bound, f"{what}: |diff| {err:.3g} > {bound:.3g}"


def engine_name(layer, variable) -> str:
    """The engine's weight name: the last path component, prefixed by the Bidirectional
    direction or the MultiHeadAttention projection it belongs to (engine/layers/)."""
    parts = (getattr(variable, "path", None) or variable.name).split(":")[0].split("/")[1:]
    kind = type(layer).__name__
    if kind == "Bidirectional":
        return ("forward/" if parts[0].startswith("forward") else "backward/") + parts[-1]
    if kind == "MultiHeadAttention":
        return f"{parts[-2]}/{parts[-1]}"
    if kind.startswith("DepthwiseConv") and parts[-1] == "kernel":
        return "depthwise_kernel"  # Keras 3's name; the engine keeps tf_keras'
    return parts[-1]


def randomize(layer, seed=0):
    rng = np.random.default_rng(seed)
    for variable in layer.trainable_weights:
        value = (0.5 * rng.standard_normal(variable.shape)).astype("float32")
        value.reshape(-1)[0] = 0.0
        variable.assign(value)


def r(k, name, **kwargs):
    return getattr(k.regularizers, name)(**kwargs)


# (id, layer factory, input shape or "int" for indices)
LAYERS = [
    (
        "dense",
        lambda k: k.layers.Dense(
            3,
            kernel_regularizer=r(k, "L2", l2=0.01),
            bias_regularizer=r(k, "L1", l1=0.02),
            activity_regularizer=r(k, "L1L2", l1=0.01, l2=0.03),
        ),
        (4, 5),
    ),
    (
        "conv2d",
        lambda k: k.layers.Conv2D(
            2, 3, kernel_regularizer=r(k, "L1L2", l1=0.01, l2=0.02), bias_regularizer="l2"
        ),
        (2, 6, 6, 3),
    ),
    (
        "conv1d_activity",
        lambda k: k.layers.Conv1D(2, 2, activity_regularizer=r(k, "L2", l2=0.5)),
        (3, 5, 2),
    ),
    (
        "depthwise",
        lambda k: k.layers.DepthwiseConv2D(
            3, depthwise_regularizer=r(k, "L2", l2=0.05), bias_regularizer=r(k, "L1", l1=0.1)
        ),
        (2, 5, 5, 2),
    ),
    (
        "separable",
        lambda k: k.layers.SeparableConv2D(
            4,
            3,
            depthwise_regularizer=r(k, "L1", l1=0.01),
            pointwise_regularizer=r(k, "L2", l2=0.02),
            bias_regularizer=r(k, "L2", l2=0.3),
        ),
        (2, 6, 6, 2),
    ),
    (
        "lstm",
        lambda k: k.layers.LSTM(
            3,
            kernel_regularizer=r(k, "L2", l2=0.01),
            recurrent_regularizer=r(k, "L1", l1=0.02),
            bias_regularizer=r(k, "L2", l2=0.03),
        ),
        (2, 4, 3),
    ),
    (
        "embedding",
        lambda k: k.layers.Embedding(10, 4, embeddings_regularizer=r(k, "L2", l2=0.1)),
        "int",
    ),
    (
        "batchnorm",
        lambda k: k.layers.BatchNormalization(
            gamma_regularizer=r(k, "L2", l2=0.2), beta_regularizer=r(k, "L1", l1=0.1)
        ),
        (4, 3),
    ),
    (
        "layernorm",
        lambda k: k.layers.LayerNormalization(
            gamma_regularizer=r(k, "L1L2", l1=0.1, l2=0.1), beta_regularizer=r(k, "L2", l2=1.0)
        ),
        (4, 3),
    ),
    ("prelu", lambda k: k.layers.PReLU(alpha_regularizer=r(k, "L2", l2=0.5)), (4, 3)),
    (
        "orthogonal_rows",
        lambda k: k.layers.Dense(
            4, kernel_regularizer=r(k, "OrthogonalRegularizer", factor=0.1, mode="rows")
        ),
        (4, 5),
    ),
    (
        "orthogonal_columns",
        lambda k: k.layers.Dense(
            4, kernel_regularizer=r(k, "OrthogonalRegularizer", factor=0.3, mode="columns")
        ),
        (4, 5),
    ),
    (
        "bidirectional",
        lambda k: k.layers.Bidirectional(
            k.layers.LSTM(
                2,
                kernel_regularizer=r(k, "L2", l2=0.01),
                recurrent_regularizer=r(k, "L1", l1=0.02),
            ),
            backward_layer=k.layers.LSTM(
                2, go_backwards=True, kernel_regularizer=r(k, "L1", l1=0.5)
            ),
        ),
        (2, 4, 3),
    ),
    (
        "time_distributed",
        lambda k: k.layers.TimeDistributed(
            k.layers.Dense(2, kernel_regularizer=r(k, "L2", l2=0.1), bias_regularizer="l1")
        ),
        (2, 3, 4),
    ),
    (
        "multi_head_attention",
        lambda k: k.layers.MultiHeadAttention(
            2, 3, kernel_regularizer=r(k, "L2", l2=0.01), bias_regularizer=r(k, "L1", l1=0.02)
        ),
        (2, 4, 5),
    ),
    ("activity_regularization", lambda k: k.layers.ActivityRegularization(0.1, 0.2), (4, 5)),
]


def _input(shape):
    rng = np.random.default_rng(1)
    if shape == "int":
        return rng.integers(0, 10, size=(3, 5)).astype("int32")
    return (2.0 * rng.standard_normal(shape)).astype("float32")


@pytest.mark.parametrize("flavor", FLAVORS)
@pytest.mark.parametrize("make, shape", [c[1:] for c in LAYERS], ids=[c[0] for c in LAYERS])
def test_penalties_match_keras(flavor, make, shape):
    k = keras_module(flavor)
    layer = make(k)
    x = tf.constant(_input(shape))
    call = (lambda v: layer(v, v)) if type(layer).__name__ == "MultiHeadAttention" else layer
    call(x)  # build
    randomize(layer)
    y = call(x)
    total = float(tf.add_n(layer.losses))  # weights' penalties and this call's activity's
    with tf.GradientTape() as tape:
        # Weight penalties are computed when `losses` is read (both flavors); the activity
        # penalty was computed by the call above, outside the tape, so it adds no gradient.
        weight_total = tf.add_n(layer.losses)
    keras_grads = tape.gradient(weight_total, layer.trainable_weights)

    config = layer.get_config()
    weights = {engine_name(layer, v): v.numpy() for v in layer.weights}
    penalty, grads = penalty_and_grads(config, weights, MAJOR[flavor])
    activity, d_output = activity_penalty_and_grad(config, y.numpy(), int(y.shape[0]))
    assert_close(penalty + activity, total, f"{flavor} penalty")
    expected = {
        engine_name(layer, v): g
        for v, g in zip(layer.trainable_weights, keras_grads)
        if g is not None
    }
    assert set(grads) == set(expected), f"{flavor}: regularized weights"
    for name, grad in grads.items():
        assert grad.dtype == weights[name].dtype
        assert_close(grad, expected[name], f"{flavor} d{name}")
    if layer.activity_regularizer is None:
        assert d_output is None
    else:
        assert_close(d_output, keras_activity_grad(layer, y), f"{flavor} d_output")


def keras_activity_grad(layer, output):
    """d(activity penalty)/d output as Keras' layer call computes it: its regularizer on
    the output, divided by the batch size (the division is checked by the value above)."""
    output = tf.constant(output)
    with tf.GradientTape() as tape:
        tape.watch(output)
        penalty = layer.activity_regularizer(output) / float(output.shape[0])
    return tape.gradient(penalty, output).numpy()


@pytest.mark.parametrize("flavor", FLAVORS)
def test_frozen_layer(flavor):
    """Keras 3 regularizes trainable weights only; tf_keras keeps a frozen layer's penalty
    in the loss (with nothing to train)."""
    k = keras_module(flavor)
    layer = k.layers.Dense(3, kernel_regularizer=r(k, "L2", l2=0.1))
    layer(tf.zeros((1, 4)))
    randomize(layer)
    layer.trainable = False
    expected = float(tf.add_n(layer.losses)) if layer.losses else 0.0
    weights = {engine_name(layer, v): v.numpy() for v in layer.weights}
    penalty, grads = penalty_and_grads(layer.get_config(), weights, MAJOR[flavor])
    assert grads == {}
    assert_close(penalty, expected, flavor)
    assert (expected == 0.0) == (flavor == "keras")


def test_activity_penalty_of_several_outputs():
    """An LSTM returning its states gets each output regularized, each divided by the batch."""
    k = keras_module("keras")
    layer = k.layers.LSTM(2, return_state=True, activity_regularizer=r(k, "L2", l2=0.3))
    outputs = layer(tf.constant(_input((3, 4, 2))))
    values = [o.numpy() for o in outputs]
    penalty, grads = activity_penalty_and_grad(layer.get_config(), values, 3)
    assert_close(penalty, float(tf.add_n(layer.losses)), "penalty")
    for ours, value in zip(grads, values):
        assert_close(ours, keras_activity_grad(layer, value), "d_output")


WEIGHT = np.random.default_rng(2).standard_normal((5, 3)).astype("float32")


@pytest.mark.parametrize(
    "flavor, identifier",
    [
        ("tf_keras", {"class_name": "L1L2", "config": {"l1": 0.0, "l2": 0.01}}),  # Keras 2.2
        ("tf_keras", {"class_name": "L2", "config": {"l2": 0.02}}),
        ("tf_keras", {"class_name": "L1", "config": {"l": 0.03}}),
        ("tf_keras", "l1"),
        ("tf_keras", "l2"),
        ("tf_keras", "l1_l2"),
        ("keras", "l1l2"),
        ("keras", "L2"),
        ("keras", "orthogonal_regularizer"),
        ("keras", {"class_name": "L1", "config": {"l1": None}}),
        (
            "keras",
            {
                "module": "keras.regularizers",
                "class_name": "L1L2",
                "config": {"l1": 0.1, "l2": 0.2},
                "registered_name": None,
            },
        ),
    ],
)
def test_config_dialects(flavor, identifier):
    regularizer = keras_module(flavor).regularizers.get(identifier)
    x = tf.constant(WEIGHT)
    with tf.GradientTape() as tape:
        tape.watch(x)
        value = regularizer(x)
    penalty, grad = get_regularizer(identifier, MAJOR[flavor])(WEIGHT)
    assert_close(penalty, float(value), f"{identifier} value")
    expected = tape.gradient(value, x)  # None: a zero penalty does not depend on x
    expected = np.zeros_like(WEIGHT) if expected is None else expected.numpy()
    assert_close(grad, expected, f"{identifier} gradient")


@pytest.mark.parametrize(
    "identifier, match",
    [
        ({"module": "my_pkg", "class_name": "MyReg", "config": {}}, "from module 'my_pkg'"),
        ({"class_name": "MyReg", "config": {}}, "'MyReg'"),
        (
            {"module": "keras.regularizers", "class_name": "L2", "registered_name": "Custom>R"},
            "'Custom>R'",
        ),
        ("my_regularizer", "'my_regularizer'"),
    ],
)
def test_custom_regularizer_refused(identifier, match):
    config = {"name": "dense_7", "kernel_regularizer": identifier}
    with pytest.raises(KerascheckError, match=match) as info:
        penalty_and_grads(config, {"kernel": WEIGHT})
    message = str(info.value)
    assert "dense_7" in message and "kernel_regularizer" in message and "L1L2" in message


def test_no_regularizers_no_penalty():
    config = {"name": "dense", "kernel_regularizer": None, "activity_regularizer": None}
    assert penalty_and_grads(config, {"kernel": WEIGHT, "bias": WEIGHT[0]}) == (0.0, {})
    assert activity_penalty_and_grad(config, WEIGHT, 5) == (0.0, None)
