"""Layers and ops found in other projects' test models (coremltools, tf2onnx, hls4ml),
against the Keras that saved them. See /work/realworld2 for the sweep that found them.

- tf_keras' LocallyConnected1D/2D (Keras 3 has no such class): the three weight
  layouts (`implementation` 1, 2, 3), valid and same padding (tf_keras centres a
  same window on `p * stride`), strides, channels-first (whose bias is *reshaped*
  to `(filters, *out)`), forward within float32 noise (rtol 1e-5 of the largest
  output) and backward per tensor (rtol 1e-4 of each gradient's norm).
- TFOpLambda functions tf2onnx's keras tests call on Keras tensors (argmax, bias_add,
  floormod, gather, l2_normalize, pad, reverse, tile, one_hot, depth_to_space) and
  the Keras 3 operation nodes of the same models (Take, Normalize, OneHot,
  DepthToSpace): exact moves, 1e-6 for arithmetic.

Inputs are make_input's: normal * 3 with spikes at +-8, so negative throughout.
"""

from __future__ import annotations

import numpy as np
import pytest
from gradcheck import check_layer_grad
from helpers import assert_matches, keras_module, keras_predict, make_input, save

import kerascheck

RTOL = 1e-5

# (class, input shape, kwargs)
LOCALLY_CONNECTED = {
    "1d-valid-impl1": ("LocallyConnected1D", (7, 3), dict(kernel_size=2, implementation=1)),
    "1d-valid-stride-impl2": (
        "LocallyConnected1D",
        (8, 3),
        dict(kernel_size=3, strides=2, implementation=2),
    ),
    "1d-same-stride-impl3": (
        "LocallyConnected1D",
        (7, 2),
        dict(kernel_size=2, strides=3, padding="same", implementation=3),
    ),
    "1d-same-cf-impl2": (
        "LocallyConnected1D",
        (3, 6),
        dict(kernel_size=3, padding="same", data_format="channels_first", implementation=2),
    ),
    "2d-valid-stride-impl1": (
        "LocallyConnected2D",
        (7, 5, 2),
        dict(kernel_size=(3, 2), strides=(2, 3), implementation=1, activation="tanh"),
    ),
    "2d-same-impl2": (
        "LocallyConnected2D",
        (5, 4, 2),
        dict(kernel_size=(3, 2), padding="same", implementation=2),
    ),
    "2d-same-stride-impl3": (
        "LocallyConnected2D",
        (7, 5, 2),
        dict(kernel_size=(2, 3), strides=(2, 3), padding="same", implementation=3),
    ),
    "2d-cf-impl1-nobias": (
        "LocallyConnected2D",
        (2, 5, 4),
        dict(kernel_size=2, data_format="channels_first", use_bias=False, implementation=1),
    ),
    "2d-cf-same-impl3": (
        "LocallyConnected2D",
        (2, 5, 4),
        dict(kernel_size=(3, 3), padding="same", data_format="channels_first", implementation=3),
    ),
}


def _lc(name):
    cls, shape, kwargs = LOCALLY_CONNECTED[name]
    return (lambda k: getattr(k.layers, cls)(4, **kwargs)), shape


@pytest.mark.parametrize("case", sorted(LOCALLY_CONNECTED))
def test_locally_connected_matches_tf_keras(check_layer, case):
    make, shape = _lc(case)
    check_layer(make, shape, flavors=("tf_keras",), ext=".h5", rtol=RTOL)


@pytest.mark.parametrize("case", ["1d-same-stride-impl3", "2d-valid-stride-impl1", "2d-same-impl2"])
def test_locally_connected_backward_matches_tf_keras(tmp_path, case):
    make, shape = _lc(case)
    check_layer_grad(tmp_path, make, shape, flavors=("tf_keras",), ext=".h5", rtol=1e-4)


def test_locally_connected_channels_first_bias_is_reshaped_not_transposed(tmp_path):
    """tf_keras adds a `(out_h, out_w, filters)` bias to NCHW output by reshaping it."""
    import tf_keras as k

    inp = k.Input((2, 4, 3))
    layer = k.layers.LocallyConnected2D(3, 2, data_format="channels_first", implementation=2)
    model = k.Model(inp, layer(inp))
    kernel, bias = layer.get_weights()
    layer.set_weights(
        [np.zeros_like(kernel), np.arange(bias.size, dtype="float32").reshape(bias.shape)]
    )
    path = save(model, str(tmp_path), "tf_keras", ".h5")
    x = make_input((2, 2, 4, 3))
    ours = kerascheck.load(path).predict(x)
    np.testing.assert_array_equal(ours, keras_predict(model, x))
    np.testing.assert_array_equal(ours[0], np.arange(bias.size).reshape(3, 3, 2))


# --- TensorFlow functions (tf_keras TFOpLambda) and Keras 3 operation nodes -----------

SHAPE = (3, 4, 5)


def _tf():
    import tensorflow as tf

    return tf


TF_CASES = {
    "argmax-argmin": lambda tf, x: [
        tf.cast(tf.math.argmax(x, axis=2), tf.float32),
        tf.math.argmin(x, axis=-1, output_type=tf.int32),
        tf.math.argmax(x),  # axis 0: across the batch
    ],
    "bias_add": lambda tf, x: [
        tf.nn.bias_add(x, tf.constant([100.0, -100.0, 1.0, 2.0, 3.0])),
        tf.nn.bias_add(x, tf.constant([1.0, -2.0, 3.0]), data_format="NCHW"),
    ],
    "floormod": lambda tf, x: [tf.math.floormod(x, 0.7), tf.math.floormod(x, -1.3)],
    "gather": lambda tf, x: [tf.gather(x, [1, 1, 0], axis=1), tf.gather(x, [4, 2], axis=-1)],
    "l2_normalize": lambda tf, x: [
        tf.math.l2_normalize(x, axis=-1),
        tf.math.l2_normalize(x, axis=[1, 2], epsilon=1e-3),
    ],
    "pad": lambda tf, x: [
        tf.pad(x, [[0, 0], [1, 2], [0, 0], [2, 1]], constant_values=-1.5),
        tf.pad(x, [[0, 0], [1, 1], [2, 0], [0, 0]], mode="REFLECT"),
        tf.pad(x, [[0, 0], [0, 2], [1, 1], [0, 0]], mode="symmetric"),
    ],
    "reverse-tile": lambda tf, x: [tf.reverse(x, axis=[1, -1]), tf.tile(x, [1, 2, 1, 3])],
    "one_hot": lambda tf, x: [
        tf.one_hot(tf.math.argmax(x, axis=-1), 5),
        tf.one_hot(tf.cast(x, tf.int32), 3, on_value=2.0, off_value=-1.0, axis=1),
    ],
    "depth_to_space": lambda tf, x: tf.nn.depth_to_space(tf.tile(x, [1, 1, 1, 4]), 2),
}


def check_tf_ops(tmp_path, flavor, build, ext):
    k = keras_module(flavor)
    ops = _tf() if flavor == "tf_keras" else k.ops
    x = k.Input(SHAPE, name="x")
    model = k.Model(x, build(ops, x))
    data = make_input((2, *SHAPE), seed=3)
    expected = keras_predict(model, data)
    path = save(model, str(tmp_path), flavor, ext)
    ours = kerascheck.load(path).predict(data)
    assert_matches(ours, expected, what=f"{flavor} {ext}")
    for a, b in zip(*(v if isinstance(v, list) else [v] for v in (ours, expected))):
        assert a.dtype == b.dtype, f"{flavor} {ext}: dtype {a.dtype} != Keras {b.dtype}"


@pytest.mark.parametrize("case", sorted(TF_CASES))
def test_tf_keras_tf_functions(tmp_path, case):
    check_tf_ops(tmp_path, "tf_keras", TF_CASES[case], ".h5")


KERAS3_CASES = {
    "take": lambda ops, x: [ops.take(x, [1, 1, 0], axis=1), ops.take(x, [-1, 2], axis=-1)],
    "normalize": lambda ops, x: [
        ops.normalize(x, axis=-1),
        ops.normalize(x, axis=1, order=1, epsilon=1e-3),
    ],
    "one_hot": lambda ops, x: [
        ops.one_hot(ops.argmax(x, axis=-1), 5),
        ops.one_hot(ops.cast(x, "int32"), 3, axis=1),
    ],
    "depth_to_space": lambda ops, x: [
        ops.depth_to_space(ops.tile(x, (1, 1, 1, 4)), 2),
        ops.depth_to_space(ops.tile(x, (1, 4, 1, 1)), 2, data_format="channels_first"),
    ],
}


@pytest.mark.parametrize("case", sorted(KERAS3_CASES))
def test_keras3_operation_nodes(tmp_path, case):
    check_tf_ops(tmp_path, "keras", KERAS3_CASES[case], ".keras")


def test_tf_function_moves_backward(tmp_path):
    def make(k):
        tf = _tf()
        return lambda t: tf.tile(
            tf.reverse(
                tf.pad(tf.gather(t, [2, 0, 2], axis=1), [[0, 0], [1, 0], [0, 2], [0, 0]]), [2]
            ),
            [1, 1, 2, 1],
        )

    check_layer_grad(tmp_path, make, SHAPE, flavors=("tf_keras",), ext=".h5", rtol=1e-5)


def test_keras3_take_depth_to_space_backward(tmp_path):
    make = lambda k: lambda t: k.ops.depth_to_space(k.ops.take(t, [3, 1, 0, 2], axis=-1), 2)  # noqa: E731
    check_layer_grad(tmp_path, make, SHAPE, flavors=("keras",), rtol=1e-5)


def test_tf_bias_add_l2_normalize_backward(tmp_path):
    def make(k):
        tf = _tf()
        return lambda t: [
            tf.math.l2_normalize(
                tf.nn.bias_add(t, tf.constant([1.0, -2.0, 0.5, 0.0, 3.0])), axis=-1
            ),
            tf.math.l2_normalize(t, axis=[1, 2], epsilon=1e-3),
            tf.nn.bias_add(t, tf.constant([1.0, -2.0, 3.0]), data_format="NCHW"),
        ]

    check_layer_grad(tmp_path, make, SHAPE, flavors=("tf_keras",), ext=".h5", rtol=1e-4)


def test_keras3_normalize_backward(tmp_path):
    def make(k):
        return lambda t: [
            k.ops.normalize(t, axis=-1),
            k.ops.normalize(t, axis=1, order=1, epsilon=1e-3),
            k.ops.normalize(t, axis=-1, order=3),
            k.ops.normalize(t, axis=(1, 2)),
        ]

    check_layer_grad(tmp_path, make, SHAPE, flavors=("keras",), rtol=1e-4)
