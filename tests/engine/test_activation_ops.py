"""Keras 3 operation nodes (`keras.ops.<fn>` and `keras.activations.<fn>` applied to a
symbolic tensor in a functional model), forward and backward, against Keras.

Each case is `Input -> Dense -> ops...`, saved to `.keras` and reloaded by kerascheck.
Dense weights are re-drawn, so its outputs reach well past clamp points (about +-10).
Forward: `assert_matches` (rtol 1e-4, atol 1e-5 times the output's magnitude) and the
dtype. Backward: for L = sum(y * dy), the gradients with respect to the input and the
Dense weights against TensorFlow's tape, per tensor `||e - k|| <= 1e-4 ||k||` (where
the tape gives None, the engine must give nothing or zeros), then the float64 engine
against central finite differences.
"""

from __future__ import annotations

import numpy as np
import pytest
from gradcheck import (
    check_finite_differences,
    check_layer_grad,
    engine_grads,
    keras_grads,
    relative_error,
)
from helpers import assert_matches, keras_module, keras_predict, make_input, randomize_weights

import kerascheck
from kerascheck.engine.registry import REGISTRY
from kerascheck.errors import UnsupportedLayerError

GRAD_RTOL = 1e-4


def _tf():
    import tensorflow as tf

    return tf


def pos(ops, h):
    return ops.abs(h) + 0.5


ACTIVATIONS = {
    "celu": lambda ops, act, h: [ops.celu(h, alpha=0.5), act.celu(h)],
    "elu": lambda ops, act, h: [act.elu(h, alpha=0.3), ops.elu(h)],
    "gelu": lambda ops, act, h: [ops.gelu(h, approximate=False), act.gelu(h, approximate=True)],
    "glu": lambda ops, act, h: [ops.glu(h), act.glu(h, axis=-1)],
    "hard_shrink": lambda ops, act, h: [ops.hard_shrink(h, threshold=1.5), act.hard_shrink(h)],
    "hard_sigmoid": lambda ops, act, h: [act.hard_sigmoid(h), ops.hard_sigmoid(h)],
    "hard_silu": lambda ops, act, h: ops.hard_silu(h),
    "hard_tanh": lambda ops, act, h: [ops.hard_tanh(h), act.hard_tanh(h)],
    "leaky_relu": lambda ops, act, h: [ops.leaky_relu(h, negative_slope=0.1), act.leaky_relu(h)],
    "log_sigmoid": lambda ops, act, h: [ops.log_sigmoid(h), act.log_sigmoid(h)],
    "log_softmax": lambda ops, act, h: [ops.log_softmax(h, axis=-1), act.log_softmax(h)],
    "relu": lambda ops, act, h: [ops.relu(h), ops.relu6(h), act.relu6(h)],
    "relu_general": lambda ops, act, h: act.relu(h, negative_slope=0.1, max_value=2.0),
    "selu": lambda ops, act, h: [ops.selu(h), act.selu(h)],
    "silu": lambda ops, act, h: [ops.silu(h), act.swish(h)],
    "soft_shrink": lambda ops, act, h: [ops.soft_shrink(h, threshold=0.7), act.soft_shrink(h)],
    "softmax": lambda ops, act, h: [ops.softmax(h, axis=-1), ops.softmax(h * 0.3, axis=None)],
    "softplus_softsign": lambda ops, act, h: [ops.softplus(h), ops.softsign(h), act.softsign(h)],
    "sparse": lambda ops, act, h: [ops.sparse_plus(h), ops.sparse_sigmoid(h)],
    "squareplus": lambda ops, act, h: [ops.squareplus(h, b=2.0), act.squareplus(h)],
    "tanh_shrink": lambda ops, act, h: [ops.tanh_shrink(h), act.tanh_shrink(h)],
    "threshold": lambda ops, act, h: ops.threshold(h, 0.3, -2.0),
    "exponential": lambda ops, act, h: act.exponential(h * 0.3),
}

NUMPY_OPS = {
    "reductions": lambda ops, act, h: [
        ops.sum(h, axis=1, keepdims=True) + ops.mean(h, axis=-1, keepdims=True),
        ops.max(h, axis=1),
        ops.min(h, axis=-1, keepdims=True),
        ops.max(h, axis=1, initial=2.0),
        ops.prod(h * 0.5, axis=1),
        ops.std(h, axis=1),
        ops.var(h, axis=-1, keepdims=True),
        ops.amax(h, axis=1) + ops.amin(h, axis=1),
        ops.logsumexp(h, axis=1),
    ],
    "reductions_3d": lambda ops, act, h: [
        ops.sum(ops.reshape(h, (-1, 2, 3)), axis=(1, 2)),
        ops.mean(ops.reshape(h, (-1, 2, 3)), axis=1),
        ops.prod(ops.reshape(h, (-1, 2, 3)) * 0.5, axis=(1, 2), keepdims=True),
        ops.norm(h, axis=-1),
        ops.norm(h, ord=1, axis=-1, keepdims=True),
        ops.norm(ops.reshape(h, (-1, 2, 3)), axis=(1, 2)),
    ],
    "matmul_einsum": lambda ops, act, h: [
        ops.matmul(ops.reshape(h, (-1, 2, 3)), ops.reshape(h, (-1, 3, 2))),
        ops.einsum("bi,bj->bij", h, h * 2.0),
        ops.einsum("bij,bjk->bk", ops.reshape(h, (-1, 2, 3)), ops.reshape(h, (-1, 3, 2))),
        ops.einsum("...i,...i->...", h, h),
    ],
    "clip_cast": lambda ops, act, h: [
        ops.clip(h, -1.0, 2.0),
        ops.cast(ops.cast(h, "float16"), "float32"),
        ops.cast(ops.cast(h, "float64"), "float32") * 2.0,
        h + ops.cast(ops.cast(h, "int32"), "float32"),
    ],
    "where_comparisons": lambda ops, act, h: [
        ops.where(h > 0, h, 0.5 * h),
        ops.where(ops.greater_equal(h, 1.0), ops.exp(h * 0.1), -h),
        h * ops.cast(ops.less(h, 0.5), "float32"),
        h * ops.cast(ops.logical_and(h < 2.0, ops.less_equal(h, 1.0)), "float32"),
        h * ops.cast(ops.logical_or(ops.equal(h, 0.0), ops.logical_not(h > 1.0)), "float32"),
        h * ops.cast(ops.logical_xor(h > 0.0, ops.isinf(h)), "float32"),
        h * ops.cast(ops.logical_not(ops.isnan(h)) & ops.isfinite(h), "float32"),
    ],
    "power_maximum": lambda ops, act, h: [
        ops.power(h, 3),
        ops.power(pos(ops, h), h * 0.2),
        ops.maximum(h, 0.5 * h),
        ops.minimum(h, -0.2),
    ],
    "rounding": lambda ops, act, h: [
        h + ops.round(h),
        h * 2.0 + ops.round(h, 1),
        ops.floor(h) + ops.ceil(h) + h,
        ops.sign(h) * 3.0 + h,
        ops.trunc(h) + h,
        h + ops.cast(ops.argmax(h, axis=1), "float32")[:, None],
        h + ops.cast(ops.argmin(h, axis=-1, keepdims=True), "float32"),
        ops.floor_divide(h, 2.0) + ops.mod(h, 1.5),
    ],
    "elementwise": lambda ops, act, h: [
        ops.abs(h),
        ops.absolute(h),
        ops.log1p(pos(ops, h)),
        ops.expm1(h * 0.3),
        ops.log2(pos(ops, h)) + ops.log10(pos(ops, h)),
        ops.exp2(h * 0.3),
        ops.sin(h) + ops.cos(h),
        ops.tan(h * 0.1),
        ops.sinh(h * 0.3) + ops.cosh(h * 0.3),
        ops.arctan(h) + ops.arcsinh(h),
        ops.arcsin(ops.tanh(h) * 0.9) + ops.arccos(ops.tanh(h) * 0.8),
        ops.arctanh(ops.tanh(h) * 0.9),
        ops.logaddexp(h, h * 0.5 - 1.0),
        ops.reciprocal(pos(ops, h)),
        ops.rsqrt(pos(ops, h)),
        ops.erf(h * 0.3),
        ops.sqrt(pos(ops, h)) + ops.square(h),
    ],
    "cumulative": lambda ops, act, h: [
        ops.cumsum(h, axis=1),
        ops.cumprod(h * 0.5, axis=-1),
        ops.cumsum(h),
    ],
    "moves": lambda ops, act, h: [
        ops.tile(h, (1, 2)),
        ops.repeat(h, 2, axis=1),
        ops.pad(h, [[0, 0], [1, 2]], constant_values=1.5),
        ops.pad(h, [[0, 0], [2, 1]], mode="reflect"),
        ops.flip(h, axis=1),
        ops.roll(h, 2, axis=1),
        ops.moveaxis(ops.reshape(h, (-1, 2, 3)), 1, 2),
        ops.broadcast_to(ops.reshape(h, (-1, 1, 6)), (3, 2, 6)),
    ],
}

CASES = {**ACTIVATIONS, **NUMPY_OPS}
# A float16 round trip is a staircase at the 1e-6 steps of finite differences.
NO_FINITE_DIFFERENCES = {"clip_cast"}


def check_op_model(tmp_path, build, finite_differences=True, flavor="keras"):
    """Keras 3 models are built with `keras.ops`, tf_keras ones with `tf` (TFOpLambda)."""
    k = keras_module(flavor)
    ops = _tf() if flavor == "tf_keras" else k.ops
    inputs = k.Input((4,))
    h = k.layers.Dense(6)(inputs)
    model = k.Model(inputs, build(ops, k.activations, h))
    randomize_weights(model, seed=2)
    path = str(tmp_path / ("ops.h5" if flavor == "tf_keras" else "ops.keras"))
    model.save(path)
    x = make_input((3, 4), seed=1) * 1.5
    ours = kerascheck.load(path)
    expected = keras_predict(model, x)
    got = ours.predict(x)
    assert_matches(got, expected)
    for a, b in zip(*(v if isinstance(v, list) else [v] for v in (got, expected))):
        assert a.dtype == b.dtype, f"dtype {a.dtype} != Keras {b.dtype}"

    outputs = expected if isinstance(expected, list) else [expected]
    rng = np.random.default_rng(7)
    dy = [rng.standard_normal(o.shape).astype(o.dtype) for o in outputs]
    dy_arg = dy if len(dy) > 1 else dy[0]
    k_inputs, k_weights = keras_grads(model, x, dy_arg, training=False)
    e_inputs, e_weights, _ = engine_grads(ours, x, dy_arg, training=False)
    pairs = [("input", e_inputs[0], k_inputs[0])]
    for layer, grads in k_weights.items():
        pairs += [(f"{layer}/{n}", e_weights.get(layer, {}).get(n), g) for n, g in grads.items()]
    for what, ours_g, keras_g in pairs:
        if keras_g is None:
            assert ours_g is None or not np.any(ours_g), f"{what}: Keras has no gradient"
            continue
        assert ours_g is not None, f"{what}: the engine gives no gradient"
        err = relative_error(ours_g, keras_g)
        assert err <= GRAD_RTOL, f"{what}: relative error {err:.2e} > {GRAD_RTOL}"
    if finite_differences:
        check_finite_differences(path, [x], training=False)
    return ours


@pytest.mark.parametrize("case", sorted(CASES))
def test_keras3_op_nodes_forward_and_backward(tmp_path, case):
    check_op_model(tmp_path, CASES[case], case not in NO_FINITE_DIFFERENCES)


def test_unknown_keras3_op_is_refused_by_name(tmp_path):
    import keras

    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.ops.sort(inputs, axis=-1))
    path = str(tmp_path / "sort.keras")
    model.save(path)
    with pytest.raises(UnsupportedLayerError, match="class 'Sort'"):
        kerascheck.load(path)


def test_every_registered_op_node_is_a_keras_operation():
    """Each op node class names a Keras 3 operation (after the loader's `Op` renaming)."""
    from keras.src.ops import core, linalg, math, nn, numpy

    from kerascheck.engine.layers.tf_ops import KERAS3_OPS

    names = {n for module in (core, linalg, math, nn, numpy) for n in vars(module)}
    for cls in KERAS3_OPS:
        name = cls.__name__
        assert name in names or name.removesuffix("Op") in names, name
        assert REGISTRY[name] is cls, f"{name} registered twice"


# tf_keras' own activations on a Keras tensor become TFOpLambda layers (elu with an alpha
# is `where(x > 0, elu(x), alpha * elu(x))`, relu with options a chain of ops).
TF_KERAS_CASES = {
    "elu": lambda tf, act, h: [act.elu(h), act.elu(h, alpha=0.5)],
    "exponential_sigmoid_tanh": lambda tf, act, h: [
        act.exponential(h * 0.3),
        act.sigmoid(h),
        act.tanh(h),
    ],
    "gelu": lambda tf, act, h: [act.gelu(h), act.gelu(h, approximate=True)],
    "hard_sigmoid": lambda tf, act, h: act.hard_sigmoid(h),
    "mish_swish": lambda tf, act, h: [act.mish(h), act.swish(h)],
    "relu": lambda tf, act, h: [
        act.relu(h),
        act.relu(h, alpha=0.1),
        act.relu(h, max_value=6.0),
        act.relu(h, threshold=1.0),
        act.relu(h, alpha=0.1, max_value=2.0, threshold=0.5),
    ],
    "selu_softsign": lambda tf, act, h: [act.selu(h), act.softsign(h), act.softplus(h)],
    "softmax": lambda tf, act, h: [act.softmax(h), act.softmax(tf.reshape(h, (-1, 2, 3)), 1)],
    "tf_math": lambda tf, act, h: [
        tf.where(tf.math.greater(h, 0.0), h, 0.5 * h),
        h * tf.cast(tf.math.less_equal(h, 1.0), "float32"),
        tf.math.log1p(tf.abs(h)) + tf.math.expm1(h * 0.2),
        tf.math.reciprocal(tf.abs(h) + 0.5) + tf.math.sin(h) * tf.math.cos(h),
        h + tf.math.floor(h) + tf.math.ceil(h) + tf.math.round(h) + tf.math.sign(h),
        tf.math.reduce_logsumexp(h, axis=1),
        tf.math.reduce_prod(h * 0.5, axis=-1) + tf.math.reduce_max(h, axis=1),
        tf.math.reduce_std(h, axis=1) + tf.math.reduce_variance(h, axis=-1),
        tf.clip_by_value(h, -1.0, 2.0) + tf.math.pow(h, 2.0),
        tf.linalg.matmul(tf.reshape(h, (-1, 2, 3)), tf.reshape(h, (-1, 2, 3)), transpose_b=True),
        h * tf.cast(tf.math.logical_and(h > -1.0, tf.math.not_equal(h, 0.0)), "float32"),
    ],
}

TF_KERAS_CASES["tf_math_rest"] = lambda tf, act, h: [
    tf.math.rsqrt(tf.abs(h) + 0.5) + tf.math.sqrt(tf.abs(h) + 0.5),
    tf.math.log_sigmoid(h) + tf.math.erf(h * 0.3),
    tf.reduce_mean(h, axis=1, keepdims=True) * tf.reduce_sum(h, 1, keepdims=True),
    tf.reduce_min(h, axis=-1) - tf.math.reduce_max(h),
    tf.nn.log_softmax(h, axis=1),
    h / (tf.abs(h) + 1.0) - tf.math.divide(h, 3.0) + tf.math.subtract(h, 1.0),
    tf.nn.silu(h, beta=0.5) + tf.nn.leaky_relu(h, alpha=0.3) + tf.nn.gelu(h),
]


@pytest.mark.parametrize("case", sorted(TF_KERAS_CASES))
def test_tf_keras_activation_op_lambdas_forward_and_backward(tmp_path, case):
    ours = check_op_model(tmp_path, TF_KERAS_CASES[case], flavor="tf_keras")
    classes = {layer.class_name for layer in ours.spec.layers.values()}
    assert "TFOpLambda" in classes


def thresholded_relu(k):
    """tf_keras' layer, or Keras 3's deprecated one (saved from `keras._legacy.layers`)."""
    if hasattr(k.layers, "ThresholdedReLU"):
        return k.layers.ThresholdedReLU(theta=0.7)
    from keras.src.legacy.layers import ThresholdedReLU

    return ThresholdedReLU(theta=0.7)


@pytest.mark.parametrize("flavor", ["keras", "tf_keras"])
def test_thresholded_relu_forward_and_backward(tmp_path, check_layer, flavor):
    """Inputs exactly at theta (float32 0.7) pass nothing, forward and backward."""
    x = make_input((3, 5), seed=3)
    x[:, 1] = np.float32(0.7)
    ext = ".h5" if flavor == "tf_keras" else ".keras"
    out = check_layer(thresholded_relu, (5,), flavors=(flavor,), x=x, ext=ext)
    assert np.all(out[:, 1] == 0) and np.any(out != 0)
    check_layer_grad(
        tmp_path, thresholded_relu, (5,), flavors=(flavor,), x=x, rtol=1e-6,
        finite_differences=False, ext=ext,
    )  # fmt: skip
    check_layer_grad(tmp_path, thresholded_relu, (5,), flavors=(flavor,), ext=ext)
