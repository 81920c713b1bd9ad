"""Padding arithmetic and strided window views shared by convolution and pooling.

Everything here works on channels-last arrays `(batch, *spatial, channels)`;
layers move a channels-first input's channel axis before and after.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from . import threads


def effective_size(kernel: int, dilation: int) -> int:
    return (kernel - 1) * dilation + 1


def output_length(size: int, kernel: int, stride: int, dilation: int, padding: str) -> int:
    """Keras' output length along one spatial axis."""
    k = effective_size(kernel, dilation)
    if padding == "valid":
        return max((size - k) // stride + 1, 0)
    return math.ceil(size / stride)  # same, causal


def padding_amounts(size: int, kernel: int, stride: int, dilation: int, padding: str):
    """(before, after) zero padding along one axis.

    `same` pads `max((ceil(n/s) - 1) * s + k_eff - n, 0)` in total with the odd
    pixel after (bottom/right), as TensorFlow does; `causal` pads only before.
    """
    k = effective_size(kernel, dilation)
    if padding == "valid":
        return 0, 0
    if padding == "causal":
        return k - 1, 0
    total = max((math.ceil(size / stride) - 1) * stride + k - size, 0)
    return total // 2, total - total // 2


def pad_spatial(x: np.ndarray, pads, value=0.0) -> np.ndarray:
    """Pad the spatial axes of a channels-last array; `pads` is one (before, after) per axis."""
    if not any(b or a for b, a in pads):
        return x
    sizes = x.shape[1:-1]
    shape = (x.shape[0], *(n + b + a for n, (b, a) in zip(sizes, pads)), x.shape[-1])
    # One copy into place and a fill of the borders only: np.pad's generic machinery
    # (and filling the whole array first) costs several times more.
    padded = np.empty(shape, dtype=x.dtype)
    threads.copy(padded[(slice(None), *(slice(b, b + n) for n, (b, _) in zip(sizes, pads)))], x)
    fill = np.asarray(value, x.dtype)
    for axis, (n, (b, a)) in enumerate(zip(sizes, pads), start=1):
        lead = (slice(None),) * axis
        padded[(*lead, slice(0, b))] = fill
        padded[(*lead, slice(b + n, b + n + a))] = fill
    return padded


def windows(x: np.ndarray, kernel, strides, dilation) -> np.ndarray:
    """A strided view `(batch, *out_spatial, channels, *kernel)` of an already-padded input.

    No data is copied here; the caller's `tensordot`/`max` does the one pass.
    """
    rank = len(kernel)
    spatial_axes = tuple(range(1, rank + 1))
    extent = tuple(effective_size(k, d) for k, d in zip(kernel, dilation))
    view = sliding_window_view(x, extent, axis=spatial_axes)
    taps = (slice(None),) * (rank + 2) + tuple(slice(None, None, d) for d in dilation)
    steps = (slice(None),) + tuple(slice(None, None, s) for s in strides)
    return view[taps][steps]


def to_channels_last(x: np.ndarray, data_format: str) -> np.ndarray:
    return np.moveaxis(x, 1, -1) if data_format == "channels_first" else x


def from_channels_last(x: np.ndarray, data_format: str) -> np.ndarray:
    return np.moveaxis(x, -1, 1) if data_format == "channels_first" else x


def tap_windows(x: np.ndarray, kernel, strides, dilation) -> np.ndarray:
    """Like `windows` but `(batch, *out_spatial, *kernel, channels)`: channels innermost.

    Copying this view (im2col) moves runs of contiguous channels instead of
    single elements, which is about ten times faster for typical conv sizes.
    """
    return np.moveaxis(windows(x, kernel, strides, dilation), len(kernel) + 1, -1)
