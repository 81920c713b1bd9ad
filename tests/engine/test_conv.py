"""Convolution layers against Keras 3 and Keras 2 (tf_keras).

Each grid cell is one layer configuration on a small input whose spatial
sizes mix odd and even lengths (so `same` padding with stride 2 exercises
both parities of the extra bottom/right pixel). Every cell runs in both
flavors unless a comment says why one flavor cannot build it.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import FLAVORS, assert_matches, build_model, keras_predict, make_input, save

import kerascheck

KERAS3 = ("keras",)
KERAS2 = ("tf_keras",)


def cells(*entries):
    """pytest params from (id, kwargs, input_shape[, flavors])."""
    return [
        pytest.param(kwargs, shape, *(rest or [FLAVORS]), id=name)
        for name, kwargs, shape, *rest in entries
    ]


# -- Conv1D / Conv2D / Conv3D -------------------------------------------------

CONV1D = cells(
    ("valid", dict(filters=4, kernel_size=3), (9, 3)),
    ("same-s2-odd", dict(filters=4, kernel_size=3, strides=2, padding="same"), (9, 3)),
    ("same-s2-even-k4", dict(filters=4, kernel_size=4, strides=2, padding="same"), (10, 3)),
    ("valid-s3", dict(filters=2, kernel_size=2, strides=3), (11, 3)),
    ("dilated-same", dict(filters=3, kernel_size=3, dilation_rate=2, padding="same"), (9, 2)),
    ("causal", dict(filters=3, kernel_size=3, padding="causal"), (8, 2)),
    ("causal-dilated", dict(filters=3, kernel_size=2, padding="causal", dilation_rate=3), (9, 2)),
    ("causal-s2", dict(filters=3, kernel_size=3, padding="causal", strides=2), (9, 2)),
    # at most half as many filters as input channels, stride 1: one matmul per tap
    (
        "few-filters-causal",
        dict(filters=2, kernel_size=3, padding="causal", dilation_rate=2),
        (9, 5),
    ),
    ("few-filters-valid", dict(filters=2, kernel_size=4, use_bias=False), (9, 4)),
    ("groups", dict(filters=6, kernel_size=3, groups=3, padding="same"), (8, 6)),
    ("nobias-selu", dict(filters=4, kernel_size=3, use_bias=False, activation="selu"), (8, 3)),
    (
        "cf-same-s2",
        dict(filters=4, kernel_size=4, strides=2, padding="same", data_format="channels_first"),
        (3, 9),
    ),
    (
        "cf-causal-groups",
        dict(
            filters=4,
            kernel_size=3,
            padding="causal",
            groups=2,
            dilation_rate=2,
            data_format="channels_first",
        ),
        (4, 9),
    ),
)


@pytest.mark.parametrize("kwargs, shape, flavors", CONV1D)
def test_conv1d(check_layer, kwargs, shape, flavors):
    check_layer(lambda k: k.layers.Conv1D(**kwargs), shape, flavors)


CONV2D = cells(
    ("valid", dict(filters=4, kernel_size=3), (7, 6, 3)),
    ("same-s2", dict(filters=4, kernel_size=3, strides=2, padding="same"), (7, 8, 3)),
    ("same-s2-k4", dict(filters=4, kernel_size=(4, 2), strides=2, padding="same"), (7, 8, 3)),
    ("valid-s21", dict(filters=3, kernel_size=(2, 3), strides=(2, 1)), (7, 8, 2)),
    ("dilated", dict(filters=3, kernel_size=3, dilation_rate=(2, 1), padding="same"), (7, 6, 2)),
    ("groups", dict(filters=4, kernel_size=3, groups=2, padding="same"), (6, 7, 4)),
    # at most half as many filters as input channels, stride 1: one matmul per tap
    ("few-filters-same", dict(filters=3, kernel_size=3, padding="same"), (7, 6, 6)),
    ("few-filters-valid-k23", dict(filters=2, kernel_size=(2, 3), use_bias=False), (7, 8, 5)),
    (
        "few-filters-dilated-relu",
        dict(filters=2, kernel_size=3, dilation_rate=(2, 1), padding="same", activation="relu"),
        (8, 7, 4),
    ),
    (
        "few-filters-cf",
        dict(filters=2, kernel_size=3, padding="same", data_format="channels_first"),
        (6, 7, 8),
    ),
    (
        "nobias-hard-sigmoid",
        dict(filters=4, kernel_size=2, use_bias=False, activation="hard_sigmoid"),
        (5, 6, 3),
    ),
    (
        "cf-same-s2",
        dict(filters=5, kernel_size=4, strides=2, padding="same", data_format="channels_first"),
        (3, 7, 8),
    ),
    (
        "cf-groups-dilated",
        dict(filters=6, kernel_size=3, groups=2, dilation_rate=2, data_format="channels_first"),
        (4, 7, 8),
    ),
)


@pytest.mark.parametrize("kwargs, shape, flavors", CONV2D)
def test_conv2d(check_layer, kwargs, shape, flavors):
    check_layer(lambda k: k.layers.Conv2D(**kwargs), shape, flavors)


CONV3D = cells(
    ("same-s2", dict(filters=3, kernel_size=3, strides=2, padding="same"), (5, 6, 5, 2)),
    ("valid-k2", dict(filters=3, kernel_size=(2, 3, 2)), (4, 5, 4, 2)),
    ("few-filters-same", dict(filters=2, kernel_size=3, padding="same"), (8, 8, 8, 4)),
    (
        "dilated-groups-relu",
        dict(filters=4, kernel_size=2, dilation_rate=2, groups=2, activation="relu"),
        (5, 6, 5, 4),
    ),
    (
        "cf-same-s2-nobias",
        dict(
            filters=3,
            kernel_size=2,
            strides=2,
            padding="same",
            use_bias=False,
            data_format="channels_first",
        ),
        (2, 5, 4, 5),
    ),
)


@pytest.mark.parametrize("kwargs, shape, flavors", CONV3D)
def test_conv3d(check_layer, kwargs, shape, flavors):
    check_layer(lambda k: k.layers.Conv3D(**kwargs), shape, flavors)


# -- Depthwise -----------------------------------------------------------------

DEPTHWISE1D = cells(
    ("valid", dict(kernel_size=3), (9, 3)),
    ("same-s2-dm2", dict(kernel_size=4, strides=2, padding="same", depth_multiplier=2), (9, 3)),
    (
        "dilated-dm3-tanh",
        dict(kernel_size=3, dilation_rate=2, depth_multiplier=3, activation="tanh"),
        (10, 2),
    ),
    (
        "cf-same-nobias",
        dict(
            kernel_size=3,
            padding="same",
            depth_multiplier=2,
            use_bias=False,
            data_format="channels_first",
        ),
        (3, 8),
    ),
    # Keras 3 decomposes stride 2 + dilation 2 (backend/tensorflow/nn.py); Keras 2 refuses it.
    (
        "s2-dilated",
        dict(kernel_size=3, strides=2, dilation_rate=2, padding="same", depth_multiplier=2),
        (11, 2),
        KERAS3,
    ),
)


@pytest.mark.parametrize("kwargs, shape, flavors", DEPTHWISE1D)
def test_depthwise_conv1d(check_layer, kwargs, shape, flavors):
    check_layer(lambda k: k.layers.DepthwiseConv1D(**kwargs), shape, flavors)


DEPTHWISE2D = cells(
    ("valid", dict(kernel_size=3), (6, 7, 3)),
    ("same-s2-dm2", dict(kernel_size=3, strides=2, padding="same", depth_multiplier=2), (7, 8, 3)),
    ("k4-same-dm3", dict(kernel_size=(4, 2), padding="same", depth_multiplier=3), (6, 5, 2)),
    ("dilated-relu6", dict(kernel_size=2, dilation_rate=2, activation="relu6"), (6, 7, 3)),
    (
        "cf-s2-dm2",
        dict(
            kernel_size=3,
            strides=2,
            padding="same",
            depth_multiplier=2,
            data_format="channels_first",
        ),
        (3, 7, 8),
    ),
    # Keras 3 only: Keras 2 refuses strides > 1 with dilation > 1.
    (
        "s2-dilated",
        dict(kernel_size=3, strides=2, dilation_rate=2, padding="same"),
        (9, 8, 2),
        KERAS3,
    ),
)


@pytest.mark.parametrize("kwargs, shape, flavors", DEPTHWISE2D)
def test_depthwise_conv2d(check_layer, kwargs, shape, flavors):
    check_layer(lambda k: k.layers.DepthwiseConv2D(**kwargs), shape, flavors)


# -- Separable -------------------------------------------------------------------

SEPARABLE1D = cells(
    ("valid", dict(filters=4, kernel_size=3), (9, 3)),
    (
        "same-s2-dm2",
        dict(filters=4, kernel_size=4, strides=2, padding="same", depth_multiplier=2),
        (9, 3),
    ),
    (
        "dilated-nobias-elu",
        dict(filters=3, kernel_size=3, dilation_rate=2, use_bias=False, activation="elu"),
        (10, 2),
    ),
    (
        "cf-same",
        dict(filters=4, kernel_size=3, padding="same", data_format="channels_first"),
        (3, 8),
    ),
    # Only Keras 2 accepts causal padding on SeparableConv1D (Keras 3's
    # standardize_padding allows valid/same only).
    (
        "causal-dilated",
        dict(filters=3, kernel_size=3, padding="causal", dilation_rate=2, depth_multiplier=2),
        (9, 2),
        KERAS2,
    ),
)


@pytest.mark.parametrize("kwargs, shape, flavors", SEPARABLE1D)
def test_separable_conv1d(check_layer, kwargs, shape, flavors):
    check_layer(lambda k: k.layers.SeparableConv1D(**kwargs), shape, flavors)


SEPARABLE2D = cells(
    ("valid", dict(filters=4, kernel_size=3), (6, 7, 3)),
    (
        "same-s2-dm2",
        dict(filters=5, kernel_size=3, strides=2, padding="same", depth_multiplier=2),
        (7, 8, 3),
    ),
    (
        "k4-dilated-swish",
        dict(
            filters=3, kernel_size=(2, 4), dilation_rate=(2, 1), padding="same", activation="swish"
        ),
        (6, 7, 2),
    ),
    (
        "cf-s2-nobias",
        dict(
            filters=4,
            kernel_size=3,
            strides=2,
            padding="same",
            use_bias=False,
            depth_multiplier=2,
            data_format="channels_first",
        ),
        (3, 7, 8),
    ),
    # Keras 3 only: Keras 2 refuses strides > 1 with dilation > 1.
    (
        "s2-dilated",
        dict(filters=3, kernel_size=3, strides=2, dilation_rate=2, padding="same"),
        (9, 8, 2),
        KERAS3,
    ),
)


@pytest.mark.parametrize("kwargs, shape, flavors", SEPARABLE2D)
def test_separable_conv2d(check_layer, kwargs, shape, flavors):
    check_layer(lambda k: k.layers.SeparableConv2D(**kwargs), shape, flavors)


# -- Transposed -------------------------------------------------------------------

TRANSPOSE1D = cells(
    ("valid", dict(filters=3, kernel_size=3), (7, 2)),
    ("valid-s2", dict(filters=3, kernel_size=3, strides=2), (7, 2)),
    ("valid-s3-k2", dict(filters=3, kernel_size=2, strides=3), (6, 2)),
    ("same-s2-k3", dict(filters=3, kernel_size=3, strides=2, padding="same"), (7, 2)),
    ("same-s2-k4", dict(filters=3, kernel_size=4, strides=2, padding="same"), (6, 2)),
    (
        "same-s3-k2-op2",
        dict(filters=3, kernel_size=2, strides=3, padding="same", output_padding=2),
        (5, 2),
    ),
    ("valid-s2-op1", dict(filters=3, kernel_size=3, strides=2, output_padding=1), (6, 2)),
    ("valid-op0", dict(filters=3, kernel_size=3, strides=2, output_padding=0), (6, 2)),
    (
        "same-op0-k3",
        dict(filters=3, kernel_size=3, strides=2, padding="same", output_padding=0),
        (7, 2),
    ),
    ("dilated-same", dict(filters=3, kernel_size=3, dilation_rate=2, padding="same"), (7, 2)),
    (
        "dilated-valid-nobias-gelu",
        dict(filters=3, kernel_size=2, dilation_rate=3, use_bias=False, activation="gelu"),
        (6, 2),
    ),
    (
        "cf-same-s2",
        dict(filters=3, kernel_size=4, strides=2, padding="same", data_format="channels_first"),
        (2, 7),
    ),
)


@pytest.mark.parametrize("kwargs, shape, flavors", TRANSPOSE1D)
def test_conv1d_transpose(check_layer, kwargs, shape, flavors):
    check_layer(lambda k: k.layers.Conv1DTranspose(**kwargs), shape, flavors)


TRANSPOSE2D = cells(
    ("valid-s2", dict(filters=3, kernel_size=3, strides=2), (5, 4, 2)),
    ("same-s2-k3", dict(filters=3, kernel_size=3, strides=2, padding="same"), (5, 4, 2)),
    ("same-s2-k4", dict(filters=3, kernel_size=(4, 2), strides=2, padding="same"), (5, 4, 2)),
    ("valid-k2-s3", dict(filters=3, kernel_size=2, strides=(3, 1)), (4, 5, 2)),
    (
        "same-op",
        dict(filters=3, kernel_size=3, strides=(2, 3), padding="same", output_padding=(1, 2)),
        (4, 5, 2),
    ),
    ("valid-op", dict(filters=3, kernel_size=(3, 2), strides=2, output_padding=(1, 0)), (4, 5, 2)),
    (
        "dilated-same-sigmoid",
        dict(filters=3, kernel_size=3, dilation_rate=2, padding="same", activation="sigmoid"),
        (5, 4, 2),
    ),
    ("dilated-k2-same", dict(filters=3, kernel_size=2, dilation_rate=3, padding="same"), (5, 4, 2)),
    (
        "dilated-valid-op",
        dict(filters=3, kernel_size=(3, 2), dilation_rate=2, output_padding=0),
        (5, 4, 2),
    ),
    # Keras 2 goes through `atrous_conv2d_transpose`, which needs equal rates.
    (
        "dilated-unequal",
        dict(filters=3, kernel_size=3, dilation_rate=(2, 1), padding="same"),
        (5, 4, 2),
        KERAS3,
    ),
    (
        "cf-same-s2",
        dict(filters=3, kernel_size=3, strides=2, padding="same", data_format="channels_first"),
        (2, 5, 4),
    ),
)


@pytest.mark.parametrize("kwargs, shape, flavors", TRANSPOSE2D)
def test_conv2d_transpose(check_layer, kwargs, shape, flavors):
    check_layer(lambda k: k.layers.Conv2DTranspose(**kwargs), shape, flavors)


TRANSPOSE3D = cells(
    ("same-s2", dict(filters=2, kernel_size=3, strides=2, padding="same"), (3, 4, 3, 2)),
    (
        "valid-k2-op",
        dict(filters=2, kernel_size=2, strides=(2, 3, 2), output_padding=(1, 2, 0)),
        (3, 3, 2, 2),
    ),
    (
        "cf-same-k4-nobias",
        dict(
            filters=2,
            kernel_size=(4, 3, 2),
            strides=2,
            padding="same",
            use_bias=False,
            data_format="channels_first",
        ),
        (2, 3, 4, 3),
    ),
    # Dilation: Keras 3 dilates, Keras 2 silently ignores dilation_rate here
    # (tf_keras conv3d_transpose.py never passes it on); both are checked.
    ("dilated", dict(filters=2, kernel_size=2, dilation_rate=2), (3, 4, 3, 2)),
)


@pytest.mark.parametrize("kwargs, shape, flavors", TRANSPOSE3D)
def test_conv3d_transpose(check_layer, kwargs, shape, flavors):
    check_layer(lambda k: k.layers.Conv3DTranspose(**kwargs), shape, flavors)


# -- a Keras 3 bias bug the engine does not copy -------------------------------------
# Keras 3's TensorFlow `add` (keras/src/backend/tensorflow/numpy.py) turns
# `x + reshape(bias, (1, F, 1, 1))` into `tf.nn.bias_add(..., "NHWC")` whenever
# the last axis happens to have length F, so a channels_first layer whose last
# output dimension equals its filter count adds the bias along width.
# The engine adds it along channels, as the layer's code means (and as
# tf_keras does), so kerascheck reports that layer as divergent.
COINCIDENT = (lambda k: k.layers.Conv2D(4, 3, data_format="channels_first"), (3, 7, 6))


def test_channels_first_bias_when_width_equals_filters_keras2(check_layer):
    check_layer(*COINCIDENT, flavors=KERAS2)


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="Keras 3 (TF backend) adds the bias along the last axis",
)
def test_channels_first_bias_when_width_equals_filters_keras3(check_layer):
    check_layer(*COINCIDENT, flavors=KERAS3)


# -- legacy .h5 files -------------------------------------------------------------

H5_CELLS = [
    pytest.param(
        lambda k: k.layers.Conv2D(4, 3, strides=2, padding="same", groups=2), (7, 6, 4), id="Conv2D"
    ),
    pytest.param(
        lambda k: k.layers.Conv1D(3, 2, padding="causal", dilation_rate=2, activation="relu"),
        (8, 2),
        id="Conv1D-causal",
    ),
    pytest.param(
        lambda k: k.layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2),
        (6, 5, 3),
        id="DepthwiseConv2D",
    ),
    pytest.param(
        lambda k: k.layers.SeparableConv2D(4, 3, depth_multiplier=2, padding="same"),
        (6, 5, 3),
        id="SeparableConv2D",
    ),
    pytest.param(
        lambda k: k.layers.Conv2DTranspose(3, 3, strides=2, padding="same", output_padding=1),
        (4, 5, 2),
        id="Conv2DTranspose",
    ),
]


@pytest.mark.parametrize("make, shape", H5_CELLS)
def test_h5(check_layer, make, shape):
    check_layer(make, shape, ext=".h5")


# -- vectorization ----------------------------------------------------------------

BATCH_CELLS = [
    pytest.param(
        lambda k: k.layers.Conv2D(4, 3, strides=2, padding="same", groups=2), (7, 6, 4), id="Conv2D"
    ),
    pytest.param(
        lambda k: k.layers.SeparableConv1D(4, 3, depth_multiplier=2, padding="same"),
        (9, 3),
        id="SeparableConv1D",
    ),
    pytest.param(
        lambda k: k.layers.Conv3DTranspose(
            2, 3, strides=2, padding="same", data_format="channels_first"
        ),
        (2, 3, 4, 3),
        id="Conv3DTranspose",
    ),
]


@pytest.mark.parametrize("make, shape", BATCH_CELLS)
def test_batch_of_eight_equals_eight_of_one(tmp_path, make, shape):
    """The batch axis is carried through every reshape: no item leaks into another."""
    model = build_model("keras", make, shape)
    x = make_input((8, *shape), seed=3)
    engine = kerascheck.load(save(model, str(tmp_path), "keras"))
    together = engine.predict(x)
    assert_matches(together, keras_predict(model, x), what="batch of 8")
    one_by_one = np.concatenate([engine.predict(x[i : i + 1]) for i in range(8)])
    np.testing.assert_allclose(together, one_by_one, rtol=1e-6, atol=1e-6)


def test_calls_leave_no_patch_matrix_for_the_garbage_collector(tmp_path):
    """A convolution's backward once held a `weights_only` closing over itself: a
    reference cycle that kept the forward's patch matrix until a collection ran."""
    import gc
    import tracemalloc

    from gradcheck import engine_grads

    model = build_model("keras", lambda k: k.layers.Conv2D(16, 3, padding="same"), (32, 32, 8))
    ours = kerascheck.load(save(model, str(tmp_path), "keras"))
    x, dy = make_input((4, 32, 32, 8)), make_input((4, 32, 32, 16), seed=1)
    ours.predict(x), engine_grads(ours, x, dy, training=True)  # warm-up
    gc.disable()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(3):
            ours.predict(x)
            engine_grads(ours, x, dy, training=True)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
        gc.enable()
    patches = 4 * 32 * 32 * 9 * 8 * 4  # bytes of one call's patch matrix
    assert grown < patches / 4, f"{grown} bytes left behind by 6 calls"


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(filters=4, kernel_size=3, strides=2, padding="same"),
        dict(filters=6, kernel_size=3, groups=2, use_bias=False),
        dict(filters=5, kernel_size=(2, 3), dilation_rate=2, padding="same", activation="relu"),
    ],
    ids=["same-s2-bias", "groups-nobias", "dilated-relu"],
)
@pytest.mark.parametrize("block", [1, 12_000, 25_000], ids=["rows", "samples", "two-samples"])
def test_conv2d_in_blocks_of_the_batch(check_layer, monkeypatch, kwargs, block):
    """A patch matrix larger than the block size is built and multiplied a block at a
    time: a row of one sample, or (about 10 KB a sample here) one or two samples."""
    from kerascheck.engine.layers import conv

    monkeypatch.setattr(conv, "PATCH_BLOCK_BYTES", block)
    x = make_input((3, 9, 8, 4))
    check_layer(lambda k: k.layers.Conv2D(**kwargs), (9, 8, 4), x=x)
