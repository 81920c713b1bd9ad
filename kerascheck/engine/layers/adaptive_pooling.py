"""Keras 3's adaptive pooling: AdaptiveAverage/MaxPooling{1,2,3}D.

Output bin `i` of an axis of length `L` pooled to `n` bins covers the cells
`[floor(i L / n), ceil((i + 1) L / n))` (clamped to the axis), PyTorch's rule,
computed in float32 as Keras does. Keras' TensorFlow backend
(`_adaptive_*_pool*d` in keras/src/backend/tensorflow/nn.py) gets there by
pooling one axis at a time with stride-1 windows of the two sizes a bin can
have and gathering each bin's window, so bins may overlap and, when `n > L`,
repeat a cell. The engine pools one axis at a time too:

- average: one matrix product per axis with the `(n, L)` averaging matrix
  (each row 1/size on its bin); the backward is the product with its transpose;
- max: the bins' cells gathered into a `(..., n, width, ...)` view, padded
  with -inf beyond each bin's size. Backward, per axis as in TensorFlow's
  tape: 1D and 2D pools run `MaxPoolGrad`, whose whole gradient goes to the
  *first* maximum of a window; 3D pools run `MaxPool3DGrad`, which gives it
  to *every* maximum (see pooling.py). One `bincount` adds the shares of
  overlapping bins.
"""

from __future__ import annotations

import numpy as np

from .. import windows
from ..base import Layer, as_tuple, data_format
from .pooling import check_rank


def bins(length: int, count: int):
    """(starts, sizes) of the `count` bins of an axis of `length`, as Keras computes them."""
    f32 = np.float32
    starts = np.floor(np.arange(count, dtype=f32) * f32(length) / f32(count)).astype(np.int64)
    ends = np.ceil(np.arange(1, count + 1, dtype=f32) * f32(length) / f32(count)).astype(np.int64)
    starts = np.minimum(starts, length - 1)
    return starts, np.minimum(ends, length) - starts


def _window_cells(length: int, count: int):
    """(cell index `(count, width)`, valid flags `(count, width)`) of every bin."""
    starts, sizes = bins(length, count)
    steps = np.arange(int(sizes.max()))
    valid = steps < sizes[:, None]
    return np.minimum(starts[:, None] + steps, length - 1), valid


def averaging_matrix(length: int, count: int, dtype) -> np.ndarray:
    """`(count, length)`: row `i` averages bin `i`."""
    index, valid = _window_cells(length, count)
    matrix = np.zeros((count, length))
    rows = np.broadcast_to(np.arange(count)[:, None], index.shape)
    matrix[rows[valid], index[valid]] = 1.0
    return (matrix / matrix.sum(axis=1, keepdims=True)).astype(dtype)


def _along(x, matrix, axis):
    """`matrix` (out, in) applied to `axis` of `x`."""
    return np.moveaxis(np.tensordot(x, matrix, axes=([axis], [1])), -1, axis)


class _AdaptivePooling(Layer):
    rank = 0

    def setup(self, config):
        self.output_size = as_tuple(config["output_size"], self.rank)
        self.data_format = data_format(config)
        if len(self.output_size) != self.rank or min(self.output_size) < 1:
            raise self.error(
                f"output_size must be {self.rank} positive integers, found {self.output_size}"
            )

    def call(self, x):
        return self.vjp(x)[0]

    def vjp(self, x, training=False, noise=None):
        check_rank(self, x, self.rank)
        h = windows.to_channels_last(x, self.data_format)
        steps = []
        for axis, count in enumerate(self.output_size, start=1):
            h, back = self.pool_axis(h, axis, count)
            steps.append(back)

        def backward(d_output):
            d = windows.to_channels_last(d_output, self.data_format)
            for back in reversed(steps):
                d = back(d)
            return windows.from_channels_last(d.astype(x.dtype, copy=False), self.data_format), {}

        return windows.from_channels_last(h, self.data_format), backward

    def pool_axis(self, x, axis, count):
        """(`x` pooled to `count` bins along `axis`, backward of that step)."""
        raise NotImplementedError


class _AdaptiveAveragePooling(_AdaptivePooling):
    def pool_axis(self, x, axis, count):
        matrix = averaging_matrix(x.shape[axis], count, x.dtype)
        return _along(x, matrix, axis), lambda dy: _along(dy, matrix.T, axis)


class _AdaptiveMaxPooling(_AdaptivePooling):
    every_maximum = False  # MaxPool3DGrad's tie rule

    def pool_axis(self, x, axis, count):
        length = x.shape[axis]
        index, valid = _window_cells(length, count)
        valid = valid.reshape(valid.shape + (1,) * (x.ndim - axis - 1))
        taken = np.where(valid, np.take(x, index, axis=axis), -np.inf).astype(x.dtype)
        y = np.max(taken, axis=axis + 1)
        if self.every_maximum:
            winners = taken == np.expand_dims(y, axis + 1)
        else:
            first = np.expand_dims(np.argmax(taken, axis=axis + 1), axis + 1)
            steps = np.arange(index.shape[1]).reshape((-1,) + (1,) * (x.ndim - axis - 1))
            winners = steps == first

        def backward(dy):
            shares = winners * np.expand_dims(dy, axis + 1)
            return _scatter(shares, index, axis, length)

        return y, backward


def _scatter(shares, index, axis, length):
    """Add `shares` `(..., count, width, ...)` into `length` cells along `axis` by `index`."""
    moved = np.moveaxis(shares, (axis, axis + 1), (-2, -1))
    lead = moved.shape[:-2]
    rows = int(np.prod(lead))
    flat = (np.arange(rows)[:, None] * length + index.ravel()).ravel()
    total = np.bincount(flat, moved.reshape(rows, -1).ravel(), minlength=rows * length)
    return np.moveaxis(total.reshape(*lead, length), -1, axis).astype(shares.dtype)


class AdaptiveAveragePooling1D(_AdaptiveAveragePooling):
    rank = 1


class AdaptiveAveragePooling2D(_AdaptiveAveragePooling):
    rank = 2


class AdaptiveAveragePooling3D(_AdaptiveAveragePooling):
    rank = 3


class AdaptiveMaxPooling1D(_AdaptiveMaxPooling):
    rank = 1


class AdaptiveMaxPooling2D(_AdaptiveMaxPooling):
    rank = 2


class AdaptiveMaxPooling3D(_AdaptiveMaxPooling):
    rank = 3
    every_maximum = True


LAYERS = (
    AdaptiveAveragePooling1D,
    AdaptiveAveragePooling2D,
    AdaptiveAveragePooling3D,
    AdaptiveMaxPooling1D,
    AdaptiveMaxPooling2D,
    AdaptiveMaxPooling3D,
)
