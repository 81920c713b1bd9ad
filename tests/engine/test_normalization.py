"""Normalization layers against Keras 3 and tf_keras.

The fixture randomizes every weight (gamma, beta and the moving mean included;
the moving variance stays in [0.5, 2]), so a dropped or swapped parameter shows.
Keras 3 BatchNormalization takes a single int axis; lists of axes and
`virtual_batch_size` exist in tf_keras only, so those cells run there alone.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import make_input

from kerascheck.engine.base import Context
from kerascheck.engine.layers import normalization
from kerascheck.errors import KerascheckError
from kerascheck.loading.spec import LayerSpec

IMAGE = (4, 5, 3)  # channels_last image; axis=1 reads it as channels-first
AFFINE = [(True, True), (True, False), (False, True), (False, False)]


def batch_norm(axis, center=True, scale=True, epsilon=1e-3, **extra):
    return lambda k: k.layers.BatchNormalization(
        axis=axis, center=center, scale=scale, epsilon=epsilon, **extra
    )


def layer_norm(axis, center=True, scale=True, epsilon=1e-3, **extra):
    return lambda k: k.layers.LayerNormalization(
        axis=axis, center=center, scale=scale, epsilon=epsilon, **extra
    )


# --- BatchNormalization ----------------------------------------------------


@pytest.mark.parametrize("center, scale", AFFINE)
@pytest.mark.parametrize(
    "shape, axis",
    [
        ((6,), -1),
        ((5, 4), 1),  # sequence input, normalizing over time steps
        (IMAGE, -1),  # tf_keras: fused NHWC kernel
        (IMAGE, 1),  # channels-first style; tf_keras: fused NCHW kernel
        (IMAGE, 2),
        ((3, 4, 2, 3), 1),  # rank 5, fused NCDHW in tf_keras
    ],
)
def test_batch_norm_axes_and_affine(check_layer, shape, axis, center, scale):
    out = check_layer(batch_norm(axis, center, scale), shape)
    assert out.dtype == np.float32


@pytest.mark.parametrize("epsilon", [1e-6, 0.5])
@pytest.mark.parametrize("shape, axis", [((6,), -1), (IMAGE, 1)])
def test_batch_norm_epsilon_from_config(check_layer, shape, axis, epsilon):
    """A large epsilon changes every output visibly; a tiny one goes below the fused-kernel
    minimum that older TensorFlow versions enforced."""
    check_layer(batch_norm(axis, epsilon=epsilon), shape)


@pytest.mark.parametrize(
    "axis, center, scale",
    [([1, 3], True, True), ([1, 2], False, True), ([3, 1], True, False), ([2], True, True)],
)
def test_batch_norm_axis_lists_tf_keras(check_layer, axis, center, scale):
    """Several axes: tf_keras keeps full-rank parameters with 1s elsewhere (Keras 3 cannot)."""
    check_layer(batch_norm(axis, center, scale), IMAGE, flavors=("tf_keras",))


def test_batch_norm_virtual_batch_size_tf_keras(check_layer):
    """`virtual_batch_size` adds a leading 1 to every parameter; inference ignores it."""
    check_layer(
        batch_norm(-1, virtual_batch_size=2),
        IMAGE,
        flavors=("tf_keras",),
        x=make_input((4, *IMAGE)),
    )


@pytest.mark.parametrize("shape, axis", [((6,), -1), (IMAGE, 1)])
def test_batch_norm_renorm_keeps_three_training_statistics(check_layer, shape, axis):
    check_layer(batch_norm(axis, renorm=True), shape)


@pytest.mark.parametrize(
    "shape, axis, center, scale",
    [(IMAGE, 1, True, True), ((6,), -1, False, True), (IMAGE, 3, True, False)],
)
def test_batch_norm_h5(check_layer, shape, axis, center, scale):
    check_layer(batch_norm(axis, center, scale), shape, ext=".h5")


def test_batch_norm_batch_of_one(check_layer):
    check_layer(batch_norm(1), IMAGE, x=make_input((1, *IMAGE)))


# --- LayerNormalization ----------------------------------------------------


@pytest.mark.parametrize("center, scale", AFFINE)
@pytest.mark.parametrize(
    "shape, axis",
    [
        ((6,), -1),
        ((5, 4), -1),
        ((5, 4), 1),  # over time steps, not features
        (IMAGE, -1),  # tf_keras: fused kernel (trailing axes)
        (IMAGE, 1),  # channels-first style
        (IMAGE, [1, 2, 3]),  # whole example
        (IMAGE, [1, 2]),  # not trailing: tf_keras takes the moments path
        (IMAGE, [2, 3]),
    ],
)
def test_layer_norm_axes_and_affine(check_layer, shape, axis, center, scale):
    out = check_layer(layer_norm(axis, center, scale), shape)
    assert out.dtype == np.float32


@pytest.mark.parametrize("epsilon", [1e-6, 0.5])
def test_layer_norm_epsilon_from_config(check_layer, epsilon):
    """1e-6 is below tf_keras' fused-kernel minimum (1.001e-5), so it takes the moments path."""
    check_layer(layer_norm(-1, epsilon=epsilon), (5, 4))


def test_layer_norm_unsorted_axes(check_layer):
    """Out-of-order axes: Keras reshapes (not transposes) the parameters onto the axes.

    tf_keras keeps `[3, 1]` as given (gamma is (C, H)); Keras 3 sorts the raw
    values, so `[-1, 1]` stays in that order. Both then reinterpret gamma's
    memory as (1, H, 1, C); kerascheck does the same.
    """
    check_layer(layer_norm([3, 1]), IMAGE, flavors=("tf_keras",))
    check_layer(layer_norm([-1, 1]), IMAGE, flavors=("keras",))


@pytest.mark.parametrize("scale", [True, False])
@pytest.mark.parametrize("shape, axis", [((5, 4), -1), (IMAGE, [1, 2])])
def test_layer_norm_rms_scaling_keras3(check_layer, shape, axis, scale):
    """Keras 3 only: divides by the standard deviation without centering, and has no beta."""
    check_layer(layer_norm(axis, scale=scale, rms_scaling=True), shape, flavors=("keras",))


@pytest.mark.parametrize("shape, axis", [((5, 4), -1), (IMAGE, [1, 2, 3]), (IMAGE, 1)])
def test_layer_norm_h5(check_layer, shape, axis):
    check_layer(layer_norm(axis), shape, ext=".h5")


# --- GroupNormalization ----------------------------------------------------


@pytest.mark.parametrize("center, scale", AFFINE)
@pytest.mark.parametrize(
    "shape, groups, axis",
    [
        ((4, 5, 6), 3, -1),
        ((4, 5, 6), 2, -1),
        ((4, 5, 6), 6, -1),  # one channel per group (instance norm)
        ((4, 5, 6), 1, -1),  # one group (layer norm over the example)
        ((6, 4, 5), 3, 1),  # channels-first
        ((7, 4), 2, -1),
        ((6, 7), 2, -2),  # negative axis that is not the last
    ],
)
def test_group_norm(check_layer, shape, groups, axis, center, scale):
    make = lambda k: k.layers.GroupNormalization(  # noqa: E731
        groups=groups, axis=axis, center=center, scale=scale
    )
    check_layer(make, shape)


@pytest.mark.parametrize("epsilon", [1e-6, 0.5])
def test_group_norm_epsilon_and_all_channels(check_layer, epsilon):
    """`groups=-1` means one group per channel."""
    check_layer(lambda k: k.layers.GroupNormalization(groups=-1, epsilon=epsilon), (4, 5, 6))


def test_group_norm_h5(check_layer):
    check_layer(lambda k: k.layers.GroupNormalization(groups=2, axis=1), (6, 4, 5), ext=".h5")


# --- UnitNormalization -----------------------------------------------------


@pytest.mark.parametrize(
    "shape, axis", [((6,), -1), ((5, 4), 1), (IMAGE, [1, 2]), (IMAGE, [1, 2, 3]), (IMAGE, 1)]
)
def test_unit_norm(check_layer, shape, axis):
    check_layer(lambda k: k.layers.UnitNormalization(axis=axis), shape)


def test_unit_norm_tiny_and_zero_vectors(check_layer):
    """Near-zero vectors: Keras 3 caps 1/||x|| at 1e12, tf_keras at 1e6 (it floors ||x||**2)."""
    x = make_input((4, 6))
    x[1] *= 1e-8  # ||x||**2 ~ 1e-14: below tf_keras' floor, not Keras 3's
    x[2] = 0.0
    x[3] *= 1e-3
    out = check_layer(lambda k: k.layers.UnitNormalization(), (6,), x=x, flavors=("keras",))
    assert np.isclose(np.linalg.norm(out[1]), 1.0, rtol=1e-4)
    out = check_layer(lambda k: k.layers.UnitNormalization(), (6,), x=x, flavors=("tf_keras",))
    assert np.linalg.norm(out[1]) < 0.5  # x * 1e6, not a unit vector
    assert (out[2] == 0).all()


def test_unit_norm_h5(check_layer):
    check_layer(lambda k: k.layers.UnitNormalization(axis=[1, 2]), IMAGE, ext=".h5")


# --- RMSNormalization (Keras 3 only) ---------------------------------------


@pytest.mark.parametrize(
    "shape, axis, epsilon",
    [((6,), -1, 1e-6), ((5, 4), -1, 0.5), (IMAGE, [2, 3], 1e-6), ((4, 4), 1, 1e-6)],
)
def test_rms_norm_keras3(check_layer, shape, axis, epsilon):
    """The last cell reproduces Keras' trailing-axis broadcast of `scale` for `axis=1`."""
    check_layer(
        lambda k: k.layers.RMSNormalization(axis=axis, epsilon=epsilon), shape, flavors=("keras",)
    )


# --- engine-side checks -----------------------------------------------------


def test_batch_norm_weight_list_shrinks_with_flags():
    """Missing gamma/beta change the expected weight list, and a mismatch fails by name."""
    config = {"axis": [3], "center": False, "scale": True}
    layer = normalization.BatchNormalization(
        LayerSpec(name="bn", class_name="BatchNormalization", config=config, weights=[]),
        Context(keras_major=2),
    )
    names = [name for name, _ in layer.weight_shapes((None, 4, 5, 3))]
    assert names == ["gamma", "moving_mean", "moving_variance"]
    with pytest.raises(KerascheckError, match=r"'bn' \(BatchNormalization\).*gamma\(3,\)"):
        layer.build((None, 4, 5, 3))


def test_group_norm_groups_must_divide_channels():
    spec = LayerSpec(name="gn", class_name="GroupNormalization", config={"groups": 4}, weights=[])
    layer = normalization.GroupNormalization(spec, Context())
    with pytest.raises(KerascheckError, match=r"'gn' \(GroupNormalization\).*6 channels"):
        layer.weight_shapes((None, 5, 6))
