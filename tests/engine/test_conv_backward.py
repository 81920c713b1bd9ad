"""Convolution backward passes against Keras 3 and Keras 2 (tf_keras) tape gradients.

Each grid cell is one layer configuration; `check_layer_grad` compares the
engine's dL/dx and every weight gradient with both flavors' tapes (relative
error per tensor) and checks the float64 engine against finite differences.
Spatial sizes mix odd and even lengths so that stride-2 `same` padding hits
both parities of the extra bottom/right pixel, and strided `valid` cells leave
trailing input pixels no window reads (their gradient must be zero).

Channels-first shapes avoid an output whose last dimension equals `filters`:
Keras 3's TensorFlow backend then adds the bias along the last axis
(see test_conv.py), which is a Keras bug, not something to differentiate.
"""

from __future__ import annotations

import numpy as np
import pytest
from gradcheck import (
    GRAD_RTOL,
    check_finite_differences,
    check_layer_grad,
    engine_grads,
    keras_grads,
    relative_error,
)
from helpers import FLAVORS, build_model, make_input, save

import kerascheck
from kerascheck.engine import backprop
from kerascheck.engine.layers import conv

KERAS3 = ("keras",)
KERAS2 = ("tf_keras",)
CF = dict(data_format="channels_first")


def cells(*entries):
    """pytest params from (id, kwargs, input_shape[, flavors])."""
    return [
        pytest.param(kwargs, shape, *(rest or [FLAVORS]), id=name)
        for name, kwargs, shape, *rest in entries
    ]


def check(request, tmp_path, cls, kwargs, shape, flavors):
    make = lambda k: getattr(k.layers, cls)(**kwargs)  # noqa: E731
    worst = check_layer_grad(tmp_path, make, shape, flavors=flavors)
    print(f"{request.node.name}: worst relative error {worst:.2e}")  # seen with `pytest -s`
    assert worst <= GRAD_RTOL


def check_depthwise(request, tmp_path, cls, kwargs, shape, flavors):
    """`check`, except that Keras 3 weights are paired with the engine's by Keras' own name.

    Keras 3's DepthwiseConv names its kernel variable `kernel` where the file
    format, tf_keras and the engine say `depthwise_kernel`, so the name-based
    pairing of `check_layer_grad` (shared, tests/gradcheck.py) finds no engine
    gradient for it. This does the same comparison with the names mapped.
    """
    if "tf_keras" in flavors:
        check(request, tmp_path, cls, kwargs, shape, KERAS2)
    if "keras" not in flavors:
        return
    model = build_model("keras", lambda k: getattr(k.layers, cls)(**kwargs), shape)
    path = save(model, str(tmp_path), "keras")
    ours = kerascheck.load(path)
    x = make_input((3, *shape))
    y = backprop.forward(ours.graph, [x]).outputs[0]
    dy = np.random.default_rng(1).standard_normal(y.shape).astype("float32")
    (k_dx,), k_weights = keras_grads(model, x, dy, True)
    (e_dx,), e_weights, _ = engine_grads(ours, x, dy, True)
    (layer,) = k_weights
    names = {"kernel": "depthwise_kernel", "bias": "bias"}
    assert {names[n] for n in k_weights[layer]} == set(e_weights[layer])
    pairs = [("d_input", e_dx, k_dx)]
    pairs += [(n, e_weights[layer][names[n]], g) for n, g in k_weights[layer].items()]
    errors = {what: relative_error(a, b) for what, a, b in pairs}
    print(f"{request.node.name} (keras): worst relative error {max(errors.values()):.2e}")
    for what, err in errors.items():
        assert err <= GRAD_RTOL, f"keras: {what} relative error {err:.2e} > {GRAD_RTOL}"
    check_finite_differences(path, [x])


# -- Conv1D / Conv2D / Conv3D -------------------------------------------------------

CONV1D = cells(
    ("valid", dict(filters=4, kernel_size=3), (9, 3)),
    ("same-s2-odd", dict(filters=4, kernel_size=3, strides=2, padding="same"), (9, 3)),
    ("same-s2-even-k4", dict(filters=4, kernel_size=4, strides=2, padding="same"), (10, 3)),
    ("valid-s3-leftover", dict(filters=2, kernel_size=2, strides=3), (11, 3)),
    ("dilated-same", dict(filters=3, kernel_size=3, dilation_rate=2, padding="same"), (9, 2)),
    ("causal-dilated", dict(filters=3, kernel_size=2, padding="causal", dilation_rate=3), (9, 2)),
    ("causal-s2", dict(filters=3, kernel_size=3, padding="causal", strides=2), (9, 2)),
    ("groups-s2", dict(filters=6, kernel_size=3, groups=3, strides=2, padding="same"), (8, 6)),
    # Fewer filters than channels at stride 1: dL/dx takes the full-correlation path.
    (
        "fewer-filters-causal",
        dict(filters=2, kernel_size=3, padding="causal", dilation_rate=2),
        (9, 4),
    ),
    ("nobias-selu", dict(filters=4, kernel_size=3, use_bias=False, activation="selu"), (8, 3)),
    ("cf-same-s2", dict(filters=4, kernel_size=4, strides=2, padding="same", **CF), (3, 9)),
    (
        "cf-causal-groups",
        dict(filters=4, kernel_size=3, padding="causal", groups=2, dilation_rate=2, **CF),
        (4, 9),
    ),
)


@pytest.mark.parametrize("kwargs, shape, flavors", CONV1D)
def test_conv1d(request, tmp_path, kwargs, shape, flavors):
    check(request, tmp_path, "Conv1D", kwargs, shape, flavors)


CONV2D = cells(
    ("same-s2", dict(filters=4, kernel_size=3, strides=2, padding="same"), (7, 8, 3)),
    ("same-s2-k4", dict(filters=4, kernel_size=(4, 2), strides=2, padding="same"), (7, 8, 3)),
    ("valid-s21", dict(filters=3, kernel_size=(2, 3), strides=(2, 1)), (7, 8, 2)),
    ("dilated", dict(filters=3, kernel_size=3, dilation_rate=(2, 1), padding="same"), (7, 6, 2)),
    ("groups-s2", dict(filters=4, kernel_size=3, groups=2, strides=2), (7, 6, 4)),
    (
        "fewer-filters-same",
        dict(filters=3, kernel_size=3, padding="same", dilation_rate=(1, 2)),
        (7, 6, 5),
    ),
    ("1x1-s2", dict(filters=5, kernel_size=1, strides=2), (7, 6, 3)),
    ("nobias-tanh", dict(filters=4, kernel_size=2, use_bias=False, activation="tanh"), (5, 6, 3)),
    ("cf-same-s2", dict(filters=5, kernel_size=4, strides=2, padding="same", **CF), (3, 7, 8)),
    (
        "cf-groups-dilated",
        dict(filters=6, kernel_size=3, groups=2, dilation_rate=2, **CF),
        (4, 7, 8),
    ),
    # Keras applies a channels_first layer's activation along the last axis,
    # so this softmax normalizes over width, not over filters. No bias: a
    # per-filter bias is constant along width, so its gradient is exactly 0
    # and both tapes return rounding noise, which no relative check can compare.
    (
        "cf-softmax-nobias",
        dict(filters=3, kernel_size=2, activation="softmax", use_bias=False, **CF),
        (2, 5, 6),
    ),
)


@pytest.mark.parametrize("kwargs, shape, flavors", CONV2D)
def test_conv2d(request, tmp_path, kwargs, shape, flavors):
    check(request, tmp_path, "Conv2D", kwargs, shape, flavors)


CONV3D = cells(
    ("same-s2", dict(filters=3, kernel_size=3, strides=2, padding="same"), (5, 4, 5, 2)),
    (
        "dilated-groups-relu",
        dict(filters=4, kernel_size=2, dilation_rate=2, groups=2, activation="relu"),
        (5, 4, 5, 4),
    ),
    (
        "cf-same-s2-nobias",
        dict(filters=3, kernel_size=2, strides=2, padding="same", use_bias=False, **CF),
        (2, 5, 4, 5),
    ),
)


@pytest.mark.parametrize("kwargs, shape, flavors", CONV3D)
def test_conv3d(request, tmp_path, kwargs, shape, flavors):
    check(request, tmp_path, "Conv3D", kwargs, shape, flavors)


# -- Depthwise and separable ------------------------------------------------------------

DEPTHWISE1D = cells(
    ("same-s2-dm2", dict(kernel_size=4, strides=2, padding="same", depth_multiplier=2), (9, 3)),
    ("dilated-dm3-tanh", dict(kernel_size=3, dilation_rate=2, depth_multiplier=3), (10, 2)),
    (
        "cf-same-nobias",
        dict(kernel_size=3, padding="same", depth_multiplier=2, use_bias=False, **CF),
        (3, 8),
    ),
)


@pytest.mark.parametrize("kwargs, shape, flavors", DEPTHWISE1D)
def test_depthwise_conv1d(request, tmp_path, kwargs, shape, flavors):
    check_depthwise(request, tmp_path, "DepthwiseConv1D", kwargs, shape, flavors)


DEPTHWISE2D = cells(
    ("valid", dict(kernel_size=3), (6, 7, 3)),
    ("same-s2-dm2", dict(kernel_size=3, strides=2, padding="same", depth_multiplier=2), (7, 8, 3)),
    ("dilated-relu6", dict(kernel_size=2, dilation_rate=2, activation="relu6"), (6, 7, 3)),
    (
        "cf-s2-dm2",
        dict(kernel_size=3, strides=2, padding="same", depth_multiplier=2, **CF),
        (3, 7, 8),
    ),
    # Keras 2 refuses strides > 1 together with dilation > 1.
    (
        "s2-dilated",
        dict(kernel_size=3, strides=2, dilation_rate=2, padding="same"),
        (9, 8, 2),
        KERAS3,
    ),
)


@pytest.mark.parametrize("kwargs, shape, flavors", DEPTHWISE2D)
def test_depthwise_conv2d(request, tmp_path, kwargs, shape, flavors):
    check_depthwise(request, tmp_path, "DepthwiseConv2D", kwargs, shape, flavors)


SEPARABLE1D = cells(
    (
        "same-s2-dm2",
        dict(filters=4, kernel_size=4, strides=2, padding="same", depth_multiplier=2),
        (9, 3),
    ),
    ("cf-same-elu", dict(filters=4, kernel_size=3, padding="same", activation="elu", **CF), (3, 8)),
    # Only Keras 2 accepts causal padding on SeparableConv1D.
    (
        "causal-dilated-nobias",
        dict(filters=3, kernel_size=3, padding="causal", dilation_rate=2, use_bias=False),
        (9, 2),
        KERAS2,
    ),
)


@pytest.mark.parametrize("kwargs, shape, flavors", SEPARABLE1D)
def test_separable_conv1d(request, tmp_path, kwargs, shape, flavors):
    check(request, tmp_path, "SeparableConv1D", kwargs, shape, flavors)


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
            **CF,
        ),
        (3, 7, 8),
    ),
)


@pytest.mark.parametrize("kwargs, shape, flavors", SEPARABLE2D)
def test_separable_conv2d(request, tmp_path, kwargs, shape, flavors):
    check(request, tmp_path, "SeparableConv2D", kwargs, shape, flavors)


# -- Transposed -------------------------------------------------------------------------

TRANSPOSE1D = cells(
    ("valid-s2", dict(filters=3, kernel_size=3, strides=2), (7, 2)),
    ("valid-s3-k2", dict(filters=3, kernel_size=2, strides=3), (6, 2)),
    ("same-s2-k4", dict(filters=3, kernel_size=4, strides=2, padding="same"), (6, 2)),
    (
        "same-s3-k2-op2",
        dict(filters=3, kernel_size=2, strides=3, padding="same", output_padding=2),
        (5, 2),
    ),
    ("valid-s2-op1", dict(filters=3, kernel_size=3, strides=2, output_padding=1), (6, 2)),
    (
        "dilated-valid-nobias-gelu",
        dict(filters=3, kernel_size=2, dilation_rate=3, use_bias=False, activation="gelu"),
        (6, 2),
    ),
    ("cf-same-s2", dict(filters=3, kernel_size=4, strides=2, padding="same", **CF), (2, 7)),
)


@pytest.mark.parametrize("kwargs, shape, flavors", TRANSPOSE1D)
def test_conv1d_transpose(request, tmp_path, kwargs, shape, flavors):
    check(request, tmp_path, "Conv1DTranspose", kwargs, shape, flavors)


TRANSPOSE2D = cells(
    ("same-s2-k3", dict(filters=3, kernel_size=3, strides=2, padding="same"), (5, 4, 2)),
    ("same-s2-k4", dict(filters=3, kernel_size=(4, 2), strides=2, padding="same"), (5, 4, 2)),
    ("valid-k2-s3", dict(filters=3, kernel_size=2, strides=(3, 1)), (4, 5, 2)),
    ("s1-same-fewer-filters", dict(filters=2, kernel_size=3, padding="same"), (5, 4, 3)),
    (
        "same-op",
        dict(filters=3, kernel_size=3, strides=(2, 3), padding="same", output_padding=(1, 2)),
        (4, 5, 2),
    ),
    (
        "dilated-same-sigmoid",
        dict(filters=3, kernel_size=3, dilation_rate=2, padding="same", activation="sigmoid"),
        (5, 4, 2),
    ),
    # Keras 2 goes through `atrous_conv2d_transpose`, which needs equal rates.
    (
        "dilated-unequal-op",
        dict(filters=3, kernel_size=(3, 2), dilation_rate=(2, 1), output_padding=0),
        (5, 4, 2),
        KERAS3,
    ),
    ("cf-same-s2", dict(filters=3, kernel_size=3, strides=2, padding="same", **CF), (2, 5, 4)),
)


@pytest.mark.parametrize("kwargs, shape, flavors", TRANSPOSE2D)
def test_conv2d_transpose(request, tmp_path, kwargs, shape, flavors):
    check(request, tmp_path, "Conv2DTranspose", kwargs, shape, flavors)


TRANSPOSE3D = cells(
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
            **CF,
        ),
        (2, 3, 4, 3),
    ),
    # Keras 3 dilates; Keras 2 silently ignores dilation_rate here. Both are checked.
    ("dilated", dict(filters=2, kernel_size=2, dilation_rate=2), (3, 4, 3, 2)),
)


@pytest.mark.parametrize("kwargs, shape, flavors", TRANSPOSE3D)
def test_conv3d_transpose(request, tmp_path, kwargs, shape, flavors):
    check(request, tmp_path, "Conv3DTranspose", kwargs, shape, flavors)


# -- the logits path and the chain through several convolutions --------------------------


@pytest.mark.parametrize("flavor", FLAVORS)
def test_pre_activation_backward_is_in_the_layer_layout(tmp_path, flavor):
    """`backward.logits` is the channels_first pre-activation and `pre_activation` skips it."""
    make = lambda k: k.layers.Conv2D(3, 2, activation="sigmoid", **CF)  # noqa: E731
    model = build_model(flavor, make, (2, 5, 6))
    engine = kerascheck.load(save(model, str(tmp_path), flavor))
    x = make_input((2, 2, 5, 6))
    tape = backprop.forward(engine.graph, [x])
    (backward,) = tape.backwards.values()
    y = tape.outputs[0]
    assert backward.logits.shape == y.shape == (2, 3, 4, 5)
    np.testing.assert_allclose(1 / (1 + np.exp(-backward.logits)), y, rtol=1e-5, atol=1e-6)
    dy = np.random.default_rng(0).standard_normal(y.shape).astype("float32")
    dx_through, grads_through = backward(dy)
    dx_skip, grads_skip = backward.pre_activation(dy * y * (1 - y))
    np.testing.assert_allclose(dx_skip, dx_through, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grads_skip["kernel"], grads_through["kernel"], rtol=1e-5, atol=1e-5)
    assert not np.allclose(backward.pre_activation(dy)[0], dx_through)


def test_channels_first_softmax_runs_along_width(check_layer):
    """Forward: Keras applies the activation to the channels_first output's last axis."""
    y = check_layer(lambda k: k.layers.Conv1D(3, 2, activation="softmax", **CF), (2, 6))
    np.testing.assert_allclose(y.sum(axis=-1), 1.0, rtol=1e-5)


def test_stacked_convolutions(tmp_path):
    """A chain of different classes: each backward feeds the next one's upstream gradient.

    (No DepthwiseConv here: Keras 3 names its kernel differently, see `check_depthwise`.)
    """

    def make(k):
        def f(x):
            x = k.layers.Conv2D(4, 3, strides=2, padding="same", activation="relu")(x)
            x = k.layers.Conv2D(6, 3, padding="same", groups=2, dilation_rate=2)(x)
            x = k.layers.SeparableConv2D(3, 3, activation="tanh")(x)
            return k.layers.Conv2DTranspose(2, 3, strides=2, padding="same")(x)

        return f

    assert check_layer_grad(tmp_path, make, (9, 8, 3)) <= GRAD_RTOL


# -- the shared arithmetic, exactly: the backward is the forward's adjoint ------------------
# For a linear map A, <A x, dz> == <x, A^T dz> to rounding. In float64 this checks every
# input-gradient strategy (and the kernel gradient) on its own, including combinations no
# Keras layer accepts (stride and dilation together), on top of the Keras comparisons above.

ADJOINT = [
    # (spatial sizes, kernel size, strides, dilation, padding, channels, filters, groups)
    ((9,), (3,), (2,), (1,), "same", 3, 4, 1),
    ((10,), (4,), (3,), (1,), "valid", 2, 5, 1),
    ((11,), (3,), (2,), (2,), "causal", 4, 6, 2),
    ((8,), (2,), (1,), (3,), "causal", 6, 2, 2),
    ((7, 8), (3, 2), (2, 3), (1, 2), "same", 3, 5, 1),
    ((7, 6), (3, 3), (1, 1), (2, 1), "same", 5, 3, 1),
    ((6, 7), (4, 3), (3, 2), (1, 1), "valid", 4, 4, 2),
    ((7, 8), (3, 3), (2, 2), (2, 2), "same", 3, 6, 3),  # depthwise, multiplier 2
    ((6, 5), (2, 3), (1, 1), (1, 2), "valid", 4, 4, 4),  # depthwise, multiplier 1
    ((8, 7), (2, 3), (3, 2), (1, 1), "same", 2, 6, 2),  # depthwise, kernel < stride
    ((13,), (3,), (3,), (2,), "causal", 2, 2, 2),  # depthwise, stride and dilation
    ((5, 4, 5), (2, 2, 3), (2, 1, 1), (1, 2, 1), "same", 2, 4, 2),  # 3-D, one channel a group
    ((5, 4, 5), (2, 3, 2), (2, 1, 2), (1, 1, 1), "same", 2, 3, 1),
]


def input_gradients(dz, kernel, sizes, strides, dilation, before, groups):
    """dL/dx by the dispatcher and by every strategy that applies to the configuration."""
    args = (dz, kernel, sizes, strides, dilation, before, groups)
    found = {"dispatch": conv.correlate_input_grad(*args), "col2im": conv._col2im(*args)}
    if all(s == 1 for s in strides):
        found["full"] = conv._full_correlation(dz, kernel, sizes, dilation, before, groups)
    if conv._is_depthwise(kernel.shape, groups):
        found["depthwise"] = conv._depthwise_input_grad(*args)
    return found


@pytest.mark.parametrize(
    "sizes, ksize, strides, dilation, padding, channels, filters, groups", ADJOINT
)
def test_backward_is_the_adjoint(
    sizes, ksize, strides, dilation, padding, channels, filters, groups
):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, *sizes, channels))
    kernel = rng.standard_normal((*ksize, channels // groups, filters))
    z = conv.correlate(x, kernel, strides, dilation, padding, groups)
    dz = rng.standard_normal(z.shape)
    before = [b for b, _ in conv.resolve_padding(sizes, ksize, strides, dilation, padding)]
    forward = float(np.sum(z * dz))  # <A x, dz>, A linear in x and in the kernel
    for name, dx in input_gradients(dz, kernel, sizes, strides, dilation, before, groups).items():
        assert dx.shape == x.shape, name
        assert float(np.sum(x * dx)) == pytest.approx(forward, rel=1e-10), name
    dk = conv.correlate_kernel_grad(x, dz, kernel.shape, strides, dilation, padding, groups)
    assert dk.shape == kernel.shape
    assert float(np.sum(kernel * dk)) == pytest.approx(forward, rel=1e-10)
