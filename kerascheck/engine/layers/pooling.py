"""Pooling layers: windowed max/average pooling and global pooling, 1D to 3D.

Windowed pooling pads, takes one strided window view (windows.py) and reduces
the window axes in a single NumPy reduction. Two details decide agreement with
TensorFlow (whose kernels both Keras 2 and Keras 3 call):

- max pooling pads with -inf, so a padded cell never wins;
- average pooling with `same` divides each window by the number of real
  (non-padded) cells it covers, not by the pool size, so border outputs are
  the mean of fewer values.
"""

from __future__ import annotations

import numpy as np

from .. import windows
from ..base import Layer, as_tuple, data_format


class _Pooling(Layer):
    """MaxPooling/AveragePooling{1,2,3}D: `pool_size`, `strides`, `padding`, `data_format`."""

    rank = 0

    def setup(self, config):
        # Keras 3 writes tuples; Keras 2 writes tuples too, but hand-written or
        # older configs may hold ints, and `strides=None` means "= pool_size".
        self.pool_size = as_tuple(config.get("pool_size", 2), self.rank)
        strides = config.get("strides")
        self.strides = self.pool_size if strides is None else as_tuple(strides, self.rank)
        # tf_keras lower-cases `padding` when the layer is made; accept any case
        # so a hand-edited config reads the same way.
        self.padding = str(config.get("padding") or "valid").lower()
        self.data_format = data_format(config)
        self._validate()

    def _validate(self):
        if self.padding not in ("valid", "same"):
            raise self.error(f"padding must be 'valid' or 'same', found '{self.padding}'")
        for name, value in (("pool_size", self.pool_size), ("strides", self.strides)):
            if len(value) != self.rank or min(value) < 1:
                raise self.error(f"{name} must be {self.rank} positive integers, found {value}")

    def call(self, x):
        check_rank(self, x, self.rank)
        x = windows.to_channels_last(x, self.data_format)
        return windows.from_channels_last(self.pool(x), self.data_format)

    def window_view(self, x, fill):
        """Windows `(batch, *out_spatial, channels, *pool_size)` of `x` padded with `fill`."""
        pads = [
            windows.padding_amounts(n, k, s, 1, self.padding)
            for n, k, s in zip(x.shape[1:-1], self.pool_size, self.strides, strict=True)
        ]
        padded = windows.pad_spatial(x, pads, fill)
        return windows.windows(padded, self.pool_size, self.strides, (1,) * self.rank)

    @property
    def window_axes(self):
        return tuple(range(-self.rank, 0))

    def pool(self, x):
        raise NotImplementedError


class _MaxPooling(_Pooling):
    def pool(self, x):
        return np.max(self.window_view(x, -np.inf), axis=self.window_axes)


class _AveragePooling(_Pooling):
    def pool(self, x):
        sums = np.sum(self.window_view(x, 0.0), axis=self.window_axes)
        return sums / self.valid_counts(x.shape[1:-1], x.dtype)

    def valid_counts(self, spatial, dtype):
        """Real cells per window, `(1, *out_spatial, 1)`: the same windows over a ones array.

        With `valid` padding every count is the pool size; with `same` the
        border windows count fewer cells, which is what TensorFlow divides by.
        """
        ones = np.ones((1, *spatial, 1), dtype=dtype)
        return np.sum(self.window_view(ones, 0.0), axis=self.window_axes)


class _GlobalPooling(Layer):
    """GlobalMax/AveragePooling{1,2,3}D: reduce every spatial axis, optionally keeping them."""

    rank = 0

    def setup(self, config):
        self.data_format = data_format(config)
        # Keras before 2.6 had no `keepdims`; its absence means False.
        self.keepdims = bool(config.get("keepdims", False))
        first = 2 if self.data_format == "channels_first" else 1
        self.axes = tuple(range(first, first + self.rank))

    def call(self, x):
        check_rank(self, x, self.rank)
        return self.reduce(x, axis=self.axes, keepdims=self.keepdims)


class _GlobalMaxPooling(_GlobalPooling):
    reduce = staticmethod(np.max)


class _GlobalAveragePooling(_GlobalPooling):
    # GlobalAveragePooling1D below also takes a mask (a masked mean over steps).
    reduce = staticmethod(np.mean)


def check_rank(layer: Layer, x: np.ndarray, rank: int) -> None:
    """Keras' InputSpec(ndim=rank + 2): fail by name rather than inside NumPy."""
    if x.ndim != rank + 2:
        raise layer.error(
            f"expects a {rank + 2}D input (batch, {rank} spatial axes, channels), "
            f"found shape {x.shape}"
        )


class MaxPooling1D(_MaxPooling):
    rank = 1


class MaxPooling2D(_MaxPooling):
    rank = 2


class MaxPooling3D(_MaxPooling):
    rank = 3


class AveragePooling1D(_AveragePooling):
    rank = 1


class AveragePooling2D(_AveragePooling):
    rank = 2


class AveragePooling3D(_AveragePooling):
    rank = 3


class GlobalMaxPooling1D(_GlobalMaxPooling):
    rank = 1


class GlobalMaxPooling2D(_GlobalMaxPooling):
    rank = 2


class GlobalMaxPooling3D(_GlobalMaxPooling):
    rank = 3


class GlobalAveragePooling1D(_GlobalAveragePooling):
    """With a mask, the mean over unmasked steps only (nan where every step is masked).

    Keras 3 selects the kept steps (`where`); tf_keras multiplies by the 0/1 mask
    (keras/src/layers/pooling/global_average_pooling1d.py and its tf_keras twin).
    """

    rank = 1

    def call(self, x, mask=None):
        if mask is None:
            return super().call(x)
        check_rank(self, x, self.rank)
        keep = np.expand_dims(np.asarray(mask, dtype=bool), 2 if self.axes == (1,) else 1)
        if self.context.keras_major >= 3:
            x = np.where(keep, x, np.zeros((), dtype=x.dtype))
        else:
            x = x * keep.astype(x.dtype)
        counts = np.sum(keep.astype(x.dtype), axis=self.axes, keepdims=self.keepdims)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.sum(x, axis=self.axes, keepdims=self.keepdims) / counts


class GlobalAveragePooling2D(_GlobalAveragePooling):
    rank = 2


class GlobalAveragePooling3D(_GlobalAveragePooling):
    rank = 3


LAYERS = (
    MaxPooling1D,
    MaxPooling2D,
    MaxPooling3D,
    AveragePooling1D,
    AveragePooling2D,
    AveragePooling3D,
    GlobalMaxPooling1D,
    GlobalMaxPooling2D,
    GlobalMaxPooling3D,
    GlobalAveragePooling1D,
    GlobalAveragePooling2D,
    GlobalAveragePooling3D,
)
