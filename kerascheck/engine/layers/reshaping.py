"""Reshaping layers: zero padding, cropping and upsampling in 1, 2 and 3 dimensions.

All of them work on a channels-last view of the input (windows.py moves a
channels-first channel axis), so the spatial axes are always 1..rank.
Resampling follows `tf.image.resize` with `antialias=False`, which both Keras 3
(`keras/src/backend/tensorflow/image.py::resize`) and tf_keras
(`tf_keras/src/backend.py::resize_images`) call for UpSampling2D.

Backward: padding, cropping and whole-factor nearest (or area) upsampling only
copy elements, so they share `CopiesElements`; the other interpolations are
linear maps, whose backward is their transpose (`apply_taps_transpose`).
"""

from __future__ import annotations

import math

import numpy as np

from ..base import Layer, as_tuple, data_format
from ..gather import CopiesElements
from ..windows import from_channels_last, pad_spatial, to_channels_last


def side_pairs(value, rank: int) -> tuple:
    """`(before, after)` per spatial axis from any form Keras accepts.

    An int is the same on every side; a flat pair is `(before, after)` for a
    1D layer but one symmetric amount per axis for 2D/3D; nested pairs are
    taken as written.
    """
    if isinstance(value, (int, float)):
        return ((int(value), int(value)),) * rank
    value = list(value)
    if rank == 1 and len(value) == 2 and all(isinstance(v, (int, float)) for v in value):
        return ((int(value[0]), int(value[1])),)
    if rank == 1 and len(value) == 1:
        value = value if isinstance(value[0], (list, tuple)) else [value[0]]
    return tuple(as_tuple(v, 2) for v in value)


class SpatialLayer(Layer):
    """Shared plumbing: the spatial rank and where the channel axis is."""

    rank = 0

    def setup(self, config):
        self.data_format = data_format(config)
        self.configure(config)

    def configure(self, config) -> None:
        """Read the family's own options."""

    def call(self, x):
        y = self.spatial(to_channels_last(x, self.data_format))
        return from_channels_last(y, self.data_format)

    def spatial(self, x):
        raise NotImplementedError


class ZeroPadding(CopiesElements, SpatialLayer):
    def configure(self, config):
        self.pads = side_pairs(config.get("padding", 1), self.rank)

    def spatial(self, x):
        return pad_spatial(x, self.pads)


class ZeroPadding1D(ZeroPadding):
    """Keras 3 has `data_format` here; tf_keras has none (channels last)."""

    rank = 1


class ZeroPadding2D(ZeroPadding):
    rank = 2


class ZeroPadding3D(ZeroPadding):
    rank = 3


class Cropping(CopiesElements, SpatialLayer):
    def configure(self, config):
        self.crops = side_pairs(config.get("cropping", 1), self.rank)

    def spatial(self, x):
        sizes = x.shape[1 : self.rank + 1]
        if any(b + a >= n for (b, a), n in zip(self.crops, sizes)):
            raise self.error(f"cropping {self.crops} leaves nothing of spatial size {tuple(sizes)}")
        window = tuple(slice(b, n - a) for (b, a), n in zip(self.crops, sizes))
        return x[(slice(None), *window)]


class Cropping1D(Cropping):
    """No `data_format` in either Keras: always (batch, steps, features)."""

    rank = 1


class Cropping2D(Cropping):
    rank = 2


class Cropping3D(Cropping):
    rank = 3


class UpSampling(CopiesElements, SpatialLayer):
    """Nearest-neighbour upsampling by whole factors is a repeat along each axis."""

    def configure(self, config):
        self.size = as_tuple(config.get("size", 2), self.rank)
        self.interpolation = str(config.get("interpolation") or "nearest").lower()

    def spatial(self, x):
        for axis, factor in enumerate(self.size, start=1):
            x = np.repeat(x, factor, axis=axis)
        return x


class UpSampling1D(UpSampling):
    rank = 1


class UpSampling3D(UpSampling):
    rank = 3


class UpSampling2D(UpSampling):
    """`interpolation` other than nearest resamples each axis with a separable kernel.

    With integer factors, TensorFlow's `area` resize covers each output pixel
    with a single input pixel, so it is the same repeat as `nearest`.
    """

    rank = 2

    def configure(self, config):
        super().configure(config)
        if self.interpolation not in ("nearest", "area", *KERNELS):
            raise self.error(
                f"interpolation '{self.interpolation}' is not supported; expected one of "
                f"nearest, area, {', '.join(KERNELS)}"
            )

    def spatial(self, x):
        if self.interpolation in ("nearest", "area"):
            return super().spatial(x)
        for axis, factor in enumerate(self.size, start=1):
            x = resample_axis(x, axis, factor, self.interpolation)
        return x

    def vjp(self, x, training=False, noise=None):
        if self.interpolation in ("nearest", "area"):
            return super().vjp(x)
        sizes = to_channels_last(x, self.data_format).shape[1:3]

        def backward(d_output):
            d = to_channels_last(d_output, self.data_format)
            # Each axis is its own linear map (separable kernels): transpose each in turn.
            for axis in (1, 2):
                size, factor = sizes[axis - 1], self.size[axis - 1]
                taps = resampling_taps(size, factor, self.interpolation)
                d = apply_taps_transpose(d, axis, *taps, size)
            return from_channels_last(d, self.data_format), {}

        return self.call(x), backward


def resample_axis(x: np.ndarray, axis: int, factor: int, method: str) -> np.ndarray:
    """Upsample one axis by `factor`: gather every output's taps at once, weight, sum."""
    return apply_taps(x, axis, *resampling_taps(x.shape[axis], factor, method))


def apply_taps(x: np.ndarray, axis: int, index: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Output `o` along `axis` is `sum_t weight[o, t] * x[index[o, t]]` (Resizing shares it)."""
    gathered = np.take(x, index, axis=axis)  # (..., out, taps, ...)
    trailing = (1,) * (x.ndim - axis - 1)
    weight = np.asarray(weight, dtype=x.dtype).reshape(weight.shape + trailing)
    return np.sum(gathered * weight, axis=axis + 1)


def apply_taps_transpose(d_output, axis, index, weight, size):
    """The backward of `apply_taps`: each output's gradient goes back to its taps, weighted.

    The taps form an (out, size) matrix; taps clamped onto the same edge pixel
    add up in it. Its transpose maps `d_output` back along `axis`.
    """
    matrix = np.zeros((index.shape[0], size))
    np.add.at(matrix, (np.arange(index.shape[0])[:, None], index), weight)
    d_input = np.tensordot(d_output, matrix.astype(d_output.dtype), axes=([axis], [0]))
    return np.moveaxis(d_input, -1, axis)


def resampling_taps(size: int, factor: int, method: str, out_size: int | None = None):
    """Input indices and weights `(size * factor, taps)` (or `(out_size, taps)`) for one axis.

    Output pixel `o` samples input position `(o + 0.5) / factor - 0.5` (half-pixel
    centers, computed in float32 as TensorFlow does). Taps outside the input get
    weight 0 and the rest are renormalized, which is TensorFlow's edge rule for
    scale_and_translate and for half-pixel bicubic, and equals clamping for
    bilinear. Bicubic reads its Keys weights from a 1024-entry table, so its
    position is snapped to 1/1024 of a pixel first (`resize_bicubic_op.cc`).
    """
    kernel, radius = KERNELS[method]
    out_size = size * factor if out_size is None else out_size
    out = np.arange(out_size, dtype=np.float32)
    position = (out + np.float32(0.5)) * np.float32(size / out_size) - np.float32(0.5)
    position = position.astype(np.float64)
    if method == "bicubic":
        position = np.rint(position * 1024.0) / 1024.0
    reach = math.ceil(radius)
    taps = np.floor(position)[:, None] + np.arange(1 - reach, reach + 1)
    weight = kernel(np.abs(taps - position[:, None]))
    weight = np.where((taps >= 0) & (taps < size), weight, 0.0)
    weight = weight / np.sum(weight, axis=1, keepdims=True)
    return np.clip(taps, 0, size - 1).astype(np.intp), weight


def _triangle(d):
    return np.maximum(1.0 - d, 0.0)


def _keys_cubic(d, a=-0.5):
    """TensorFlow's bicubic kernel (Keys, a = -0.5)."""
    near = ((a + 2.0) * d - (a + 3.0)) * d * d + 1.0
    far = ((a * d - 5.0 * a) * d + 8.0 * a) * d - 4.0 * a
    return np.where(d < 1.0, near, np.where(d < 2.0, far, 0.0))


def _lanczos(radius):
    def kernel(d):
        with np.errstate(invalid="ignore", divide="ignore"):
            value = np.sinc(d) * np.sinc(d / radius)
        return np.where(d <= 1e-3, 1.0, np.where(d > radius, 0.0, value))

    return kernel


def _gaussian(d, radius=1.5):
    sigma = radius / 3.0
    return np.where(d < radius, np.exp(-d * d / (2.0 * sigma * sigma)), 0.0)


def _mitchell_cubic(d):
    """Mitchell-Netravali with B = C = 1/3 (TensorFlow's `mitchellcubic`)."""
    near = ((7.0 / 6.0) * d - 2.0) * d * d + 8.0 / 9.0
    far = (((-7.0 / 18.0) * d + 2.0) * d - 10.0 / 3.0) * d + 16.0 / 9.0
    return np.where(d < 1.0, near, np.where(d < 2.0, far, 0.0))


# name: (kernel of the distance in input pixels, support radius)
KERNELS = {
    "bilinear": (_triangle, 1.0),
    "bicubic": (_keys_cubic, 2.0),
    "lanczos3": (_lanczos(3.0), 3.0),
    "lanczos5": (_lanczos(5.0), 5.0),
    "gaussian": (_gaussian, 1.5),
    "mitchellcubic": (_mitchell_cubic, 2.0),
}


LAYERS = (
    ZeroPadding1D,
    ZeroPadding2D,
    ZeroPadding3D,
    Cropping1D,
    Cropping2D,
    Cropping3D,
    UpSampling1D,
    UpSampling2D,
    UpSampling3D,
)
