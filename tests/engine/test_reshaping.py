"""Zero padding, cropping and upsampling layers against Keras 3 and tf_keras.

Padding and cropping are checked in every form Keras accepts (an int, one
amount per axis, per-side pairs, zeros on one side) on odd and even sizes.
These layers are pads, slices, repeats and `tf.image.resize`, all of which
tf_keras runs in channels_first on CPU, so both data formats are checked in
both flavors, except ZeroPadding1D's `data_format`, which only Keras 3 has.
"""

from __future__ import annotations

import pytest
from helpers import make_input

from kerascheck.engine.layers.reshaping import side_pairs

CHANNELS = 3
FORMATS = ("channels_last", "channels_first")
FLAVORS = ("keras", "tf_keras")


def spatial_shape(size, fmt):
    return (CHANNELS, *size) if fmt == "channels_first" else (*size, CHANNELS)


# rank -> {case: (argument, odd/even spatial size)}
SIDES = {
    1: {
        "int": (2, (5,)),
        "pair": ((1, 3), (6,)),
        "after_zero": ((2, 0), (7,)),
    },
    2: {
        "int": (1, (5, 4)),
        "per_axis": ((2, 1), (5, 4)),
        "per_side": (((1, 2), (0, 3)), (7, 6)),
        "after_zero": (((2, 0), (1, 0)), (5, 5)),
    },
    3: {
        "int": (1, (3, 4, 5)),
        "per_axis": ((1, 0, 2), (4, 3, 5)),
        "per_side": (((0, 1), (2, 1), (1, 0)), (4, 5, 3)),
    },
}
CELLS = [(rank, case) for rank in SIDES for case in SIDES[rank]]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("rank,case", CELLS)
def test_zero_padding(check_layer, rank, case, fmt):
    padding, size = SIDES[rank][case]
    kwargs = {"padding": padding}
    flavors = FLAVORS
    if rank > 1 or fmt == "channels_first":
        kwargs["data_format"] = fmt
    if rank == 1 and fmt == "channels_first":
        flavors = ("keras",)  # tf_keras' ZeroPadding1D has no data_format
    check_layer(
        lambda k: getattr(k.layers, f"ZeroPadding{rank}D")(**kwargs),
        spatial_shape(size, fmt),
        flavors=flavors,
    )


# Cropping1D has no data_format in either Keras: channels last only.
CROP_CELLS = [
    (rank, case, fmt) for rank, case in CELLS for fmt in FORMATS if rank > 1 or fmt in FORMATS[:1]
]


@pytest.mark.parametrize("rank,case,fmt", CROP_CELLS)
def test_cropping(check_layer, rank, case, fmt):
    cropping, size = SIDES[rank][case]
    kwargs = {"cropping": cropping}
    if rank > 1:
        kwargs["data_format"] = fmt
    check_layer(lambda k: getattr(k.layers, f"Cropping{rank}D")(**kwargs), spatial_shape(size, fmt))


@pytest.mark.parametrize("size", [2, 3])
def test_upsampling1d(check_layer, size):
    check_layer(lambda k: k.layers.UpSampling1D(size=size), (5, CHANNELS))


UPSAMPLE_2D = [
    ("nearest", (2, 2), (3, 4)),
    ("nearest", (3, 1), (4, 3)),
    ("bilinear", (2, 2), (3, 4)),
    ("bilinear", (3, 2), (4, 5)),
    ("bilinear", (1, 4), (5, 2)),
    ("bilinear", (5, 3), (2, 3)),
]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("interpolation,size,spatial", UPSAMPLE_2D)
def test_upsampling2d(check_layer, interpolation, size, spatial, fmt):
    check_layer(
        lambda k: k.layers.UpSampling2D(size=size, interpolation=interpolation, data_format=fmt),
        spatial_shape(spatial, fmt),
    )


@pytest.mark.parametrize("interpolation", ["bicubic", "area", "lanczos3", "lanczos5"])
@pytest.mark.parametrize("size", [(2, 3), (4, 5)])
def test_upsampling2d_other_kernels(check_layer, interpolation, size):
    check_layer(lambda k: k.layers.UpSampling2D(size=size, interpolation=interpolation), (6, 5, 2))


@pytest.mark.parametrize("interpolation", ["gaussian", "mitchellcubic"])
def test_upsampling2d_tf_keras_only_kernels(check_layer, interpolation):
    # Keras 3 accepts only nearest, bilinear, bicubic, area, lanczos3, lanczos5.
    check_layer(
        lambda k: k.layers.UpSampling2D(size=(3, 2), interpolation=interpolation),
        (5, 6, 2),
        flavors=("tf_keras",),
    )


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("size", [2, (1, 3, 2)])
def test_upsampling3d(check_layer, size, fmt):
    check_layer(
        lambda k: k.layers.UpSampling3D(size=size, data_format=fmt),
        spatial_shape((3, 2, 3), fmt),
    )


@pytest.mark.parametrize(
    "make,shape",
    [
        (lambda k: k.layers.ZeroPadding2D(((1, 0), (2, 1))), (5, 4, 2)),
        (lambda k: k.layers.Cropping3D(((1, 0), (0, 2), (1, 1))), (4, 5, 3, 2)),
        (lambda k: k.layers.UpSampling2D((2, 3), interpolation="bilinear"), (3, 4, 2)),
    ],
)
def test_h5(check_layer, make, shape):
    check_layer(make, shape, ext=".h5")


def test_side_pairs_forms():
    assert side_pairs(2, 1) == ((2, 2),)
    assert side_pairs([1, 3], 1) == ((1, 3),)
    assert side_pairs([1, 3], 2) == ((1, 1), (3, 3))
    assert side_pairs([[1, 2], 3, [0, 4]], 3) == ((1, 2), (3, 3), (0, 4))


def test_batch_of_one(check_layer):
    x = make_input((1, 3, 4, 2), seed=5)
    check_layer(lambda k: k.layers.UpSampling2D((3, 2), interpolation="bilinear"), x.shape[1:], x=x)
