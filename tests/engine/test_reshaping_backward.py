"""Padding, cropping and upsampling backward against Keras 3 and tf_keras tape gradients.

Padding, cropping and nearest upsampling copy elements (the shared `gather`
backward): padding's gradient drops the border, cropping's puts zeros where the
crop cut, upsampling's sums each block of copies. The other UpSampling2D
interpolations are linear maps; their backward is the transpose of the tap
matrix, checked against TensorFlow's resize gradients for every kernel either
Keras accepts. Each cell also runs float64 finite differences on the engine.
"""

from __future__ import annotations

import numpy as np
import pytest
from gradcheck import check_finite_differences, check_layer_grad, engine_grads, keras_grads
from helpers import build_model, make_input, save

import kerascheck
from kerascheck.engine.layers.reshaping import apply_taps_transpose, resampling_taps

CHANNELS = 2
FORMATS = ("channels_last", "channels_first")


def spatial_shape(size, fmt):
    return (CHANNELS, *size) if fmt == "channels_first" else (*size, CHANNELS)


def format_kwargs(rank, fmt, has_1d_format):
    """`data_format` where the layer takes one; (kwargs, flavors)."""
    if rank > 1:
        return {"data_format": fmt}, ("keras", "tf_keras")
    if fmt == "channels_last":
        return {}, ("keras", "tf_keras")
    if has_1d_format:  # ZeroPadding1D: only Keras 3 has `data_format`
        return {"data_format": fmt}, ("keras",)
    return None, ()  # Cropping1D and UpSampling1D have no data_format anywhere


# rank -> [(amount as Keras accepts it, odd/even spatial size)]
AMOUNTS = {
    1: [(2, (5,)), ((1, 3), (6,)), ((2, 0), (7,))],
    2: [(1, (5, 4)), ((2, 1), (6, 5)), (((1, 2), (0, 3)), (7, 6))],
    3: [(1, (3, 4, 3)), (((0, 1), (2, 1), (1, 0)), (4, 5, 3))],
}
CELLS = [(rank, i, fmt) for rank in AMOUNTS for i in range(len(AMOUNTS[rank])) for fmt in FORMATS]


@pytest.mark.parametrize("rank,case,fmt", CELLS)
def test_zero_padding(tmp_path, rank, case, fmt):
    padding, size = AMOUNTS[rank][case]
    kwargs, flavors = format_kwargs(rank, fmt, has_1d_format=True)
    layer = f"ZeroPadding{rank}D"
    worst = check_layer_grad(
        tmp_path,
        lambda k: getattr(k.layers, layer)(padding=padding, **kwargs),
        spatial_shape(size, fmt),
        flavors=flavors,
    )
    assert worst < 1e-6  # copies: the same float32 numbers, no arithmetic


@pytest.mark.parametrize("rank,case,fmt", [c for c in CELLS if c[0] > 1 or c[2] == FORMATS[0]])
def test_cropping(tmp_path, rank, case, fmt):
    cropping, size = AMOUNTS[rank][case]
    kwargs, flavors = format_kwargs(rank, fmt, has_1d_format=False)
    layer = f"Cropping{rank}D"
    worst = check_layer_grad(
        tmp_path,
        lambda k: getattr(k.layers, layer)(cropping=cropping, **kwargs),
        spatial_shape(size, fmt),
        flavors=flavors,
    )
    assert worst < 1e-6


@pytest.mark.parametrize("size", [2, 3])
def test_upsampling1d(tmp_path, size):
    worst = check_layer_grad(tmp_path, lambda k: k.layers.UpSampling1D(size=size), (4, CHANNELS))
    assert worst < 1e-6  # sums of `size` copies: exact in any order


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("size", [2, (1, 3, 2)])
def test_upsampling3d(tmp_path, size, fmt):
    check_layer_grad(
        tmp_path,
        lambda k: k.layers.UpSampling3D(size=size, data_format=fmt),
        spatial_shape((3, 2, 3), fmt),
    )


UPSAMPLE_2D = [
    ("nearest", (2, 2), (3, 4)),
    ("nearest", (3, 1), (4, 3)),
    ("bilinear", (2, 2), (3, 4)),
    ("bilinear", (3, 2), (4, 5)),
    ("bilinear", (1, 4), (5, 2)),
    ("bilinear", (5, 3), (2, 3)),
    ("bicubic", (2, 3), (5, 4)),
    ("lanczos3", (3, 2), (6, 5)),
    ("lanczos5", (2, 4), (6, 5)),
]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("interpolation,size,spatial", UPSAMPLE_2D)
def test_upsampling2d(tmp_path, interpolation, size, spatial, fmt):
    check_layer_grad(
        tmp_path,
        lambda k: k.layers.UpSampling2D(size=size, interpolation=interpolation, data_format=fmt),
        spatial_shape(spatial, fmt),
    )


@pytest.mark.parametrize("interpolation", ["gaussian", "mitchellcubic"])
def test_upsampling2d_tf_keras_only_kernels(tmp_path, interpolation):
    # Keras 3 accepts only nearest, bilinear, bicubic, area, lanczos3, lanczos5.
    check_layer_grad(
        tmp_path,
        lambda k: k.layers.UpSampling2D(size=(3, 2), interpolation=interpolation),
        (5, 4, CHANNELS),
        flavors=("tf_keras",),
    )


@pytest.mark.parametrize("flavor", ["keras", "tf_keras"])
def test_area_upsampling_has_no_tensorflow_gradient(tmp_path, flavor):
    """TensorFlow registers no gradient for ResizeArea, so Keras cannot train through
    `interpolation="area"`; with whole factors it is the nearest repeat, and the
    engine gives that copy's gradient (checked by finite differences and against
    the nearest layer's, which the tape checks above)."""
    x = make_input((2, 3, 4, CHANNELS))
    rng = np.random.default_rng(1)
    dy = rng.standard_normal((2, 6, 12, CHANNELS)).astype("float32")
    grads = {}
    for interpolation in ("area", "nearest"):
        model = build_model(
            flavor,
            lambda k, how=interpolation: k.layers.UpSampling2D((2, 3), interpolation=how),
            x.shape[1:],
        )
        (tmp_path / interpolation).mkdir()
        path = save(model, str(tmp_path / interpolation), flavor)
        if interpolation == "area":
            with pytest.raises(LookupError, match="ResizeArea"):
                keras_grads(model, x, dy, training=True)
            check_finite_differences(path, [x])
        grads[interpolation] = engine_grads(kerascheck.load(path), x, dy, True)[0][0]
    np.testing.assert_array_equal(grads["area"], grads["nearest"])
    assert np.abs(grads["area"]).max() > 0


def test_bilinear_transpose_keeps_the_total():
    """Bilinear weights of each output sum to 1, so the input gradient keeps dy's total
    per channel; a tap dropped at a clamped edge would lose some of it."""
    d_output = np.random.default_rng(0).standard_normal((2, 12, 10, 3))
    d = apply_taps_transpose(d_output, 2, *resampling_taps(5, 2, "bilinear"), 5)
    d = apply_taps_transpose(d, 1, *resampling_taps(4, 3, "bilinear"), 4)
    assert d.shape == (2, 4, 5, 3)
    np.testing.assert_allclose(d.sum(axis=(1, 2)), d_output.sum(axis=(1, 2)), rtol=1e-12)


@pytest.mark.parametrize(
    "make,shape",
    [
        (lambda k: k.layers.ZeroPadding2D(((1, 0), (2, 1))), (5, 4, 2)),
        (lambda k: k.layers.Cropping3D(((1, 0), (0, 2), (1, 1))), (4, 5, 3, 2)),
        (lambda k: k.layers.UpSampling2D((2, 3), interpolation="bilinear"), (3, 4, 2)),
    ],
)
def test_h5(tmp_path, make, shape):
    check_layer_grad(tmp_path, make, shape, ext=".h5")


def test_batch_of_one(tmp_path):
    x = make_input((1, 3, 4, 2), seed=5)
    check_layer_grad(
        tmp_path,
        lambda k: k.layers.UpSampling2D((3, 2), interpolation="bilinear"),
        x.shape[1:],
        x=x,
    )
