"""Pooling layers: windowed max/average pooling and global pooling, 1D to 3D.

Windowed pooling pads, takes one strided window view (windows.py) and reduces
the window axes in a single NumPy reduction (max pooling of few channels: one
`np.maximum` pass per window cell instead, see FEW_CHANNELS). Two details decide
agreement with TensorFlow (whose kernels both Keras 2 and Keras 3 call):

- max pooling pads with -inf, so a padded cell never wins;
- average pooling with `same` divides each window by the number of real
  (non-padded) cells it covers, not by the pool size, so border outputs are
  the mean of fewer values.

The backward sends each output's gradient to cells of its window, in a zero
gradient of the padded input that is cropped at the end, so overlapping
windows add up and padded cells drop out. Which cells, on ties, follows
TensorFlow's tape (measured, eager, TF 2.21 CPU):

- MaxPooling1D/2D (`MaxPoolGrad`): the whole gradient to the *first* maximum
  of the window in row-major order: one cell per output, added with one
  `np.bincount` over flat indices;
- MaxPooling3D (`MaxPool3DGrad`): the whole gradient to *every* maximum (a
  window of four equal cells sends four times its gradient). Inside a
  `tf.function` on oneDNN builds the 3D op is rewritten and takes the first
  maximum instead; kerascheck follows the eager tape its oracle records;
- average pooling: gradient / count to every real cell of the window;
- GlobalMaxPooling (`reduce_max`'s gradient): split *equally* among the maxima.

Where every cell of a window gets a share, one strided add per window cell
(`add_to_cells`) is cheaper than a bincount, whose index array would be
pool_size times the output.
"""

from __future__ import annotations

import numpy as np

from .. import threads, windows
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

    def vjp(self, x, training=False, noise=None):
        check_rank(self, x, self.rank)
        y, backward = self.pool_vjp(windows.to_channels_last(x, self.data_format))

        def backward_in_format(d_output):
            dy = windows.to_channels_last(d_output, self.data_format)
            return windows.from_channels_last(backward(dy), self.data_format), {}

        return windows.from_channels_last(y, self.data_format), backward_in_format

    def pads(self, spatial):
        """(before, after) padding of each spatial axis, TensorFlow's `same` rule."""
        return [
            windows.padding_amounts(n, k, s, 1, self.padding)
            for n, k, s in zip(spatial, self.pool_size, self.strides, strict=True)
        ]

    def window_view(self, x, fill):
        """Windows `(batch, *out_spatial, channels, *pool_size)` of `x` padded with `fill`."""
        padded = windows.pad_spatial(x, self.pads(x.shape[1:-1]), fill)
        return windows.windows(padded, self.pool_size, self.strides, (1,) * self.rank)

    def padded_shape(self, shape):
        pads = self.pads(shape[1:-1])
        return (shape[0], *(n + b + a for n, (b, a) in zip(shape[1:-1], pads)), shape[-1])

    def crop(self, shape, padded):
        """The real cells of a padded (channels-last) gradient, in the engine's dtype."""
        cells = tuple(slice(b, b + n) for n, (b, _) in zip(shape[1:-1], self.pads(shape[1:-1])))
        return padded[(slice(None), *cells)].astype(self.context.dtype, copy=False)

    def cell_index(self, shape):
        """Where the windows' cells are in the padded input, as flat indices.

        Returns `(starts, offsets)`: `starts[b, *o, c]` is the index of the
        window's first cell, `offsets[t]` how far its cell `t` (row-major) is
        from there. Both come from the forward's window view, taken over an
        array of element numbers.
        """
        padded_shape = self.padded_shape(shape)
        numbers = np.arange(int(np.prod(padded_shape))).reshape(padded_shape)
        view = windows.windows(numbers, self.pool_size, self.strides, (1,) * self.rank)
        starts = view[(Ellipsis, *(0,) * self.rank)]
        offsets = view[(0,) * (self.rank + 2)].ravel()  # window 0 starts at element 0
        return starts, offsets

    def add_to_cells(self, shape, shares):
        """dL/dx when every window cell gets a share, `(batch, *out, channels, *pool_size)`.

        One vectorized add per cell position `k` of the window: across all
        windows those cells are the strided slice `k :: stride`, distinct
        within one add, so overlapping windows sum up over the adds.
        """
        grad = np.zeros(self.padded_shape(shape), dtype=shares.dtype)
        out = shares.shape[1 : self.rank + 1]
        for cell in np.ndindex(*self.pool_size):
            grad[self.cell_slices(cell, out)] += shares[(Ellipsis, *cell)]
        return self.crop(shape, grad)

    def cell_slices(self, cell, out):
        """Where cell `cell` of every window lies in the padded input, as one strided
        slice per axis (`out` windows along each)."""
        rows = [slice(k, k + s * (n - 1) + 1, s) for k, s, n in zip(cell, self.strides, out)]
        return (slice(None), *rows)

    @property
    def window_axes(self):
        return tuple(range(-self.rank, 0))

    def pool(self, x):
        raise NotImplementedError

    def pool_vjp(self, x):
        """(pooled channels-last `x`, backward from a channels-last output gradient)."""
        raise NotImplementedError


# Below this many channels a max over the window view reduces runs so short that one
# np.maximum pass per window cell is faster (7x at 10 channels, 2x2 s2); at 64 and more
# the single reduction wins (1.7x at 3x3 s2), so it stays the rule there.
FEW_CHANNELS = 32


class _MaxPooling(_Pooling):
    def cells(self, x):
        """Each window cell's values across all windows (one strided slice of the padded
        input per cell, row-major), when `x` has few channels; None otherwise."""
        out = [
            windows.output_length(n, k, s, 1, self.padding)
            for n, k, s in zip(x.shape[1:-1], self.pool_size, self.strides)
        ]
        if x.shape[-1] >= FEW_CHANNELS or 0 in out:
            return None
        padded = windows.pad_spatial(x, self.pads(x.shape[1:-1]), -np.inf)
        return [padded[self.cell_slices(cell, out)] for cell in np.ndindex(*self.pool_size)]

    def pool(self, x):
        cells = self.cells(x)
        if cells is None:
            return np.max(self.window_view(x, -np.inf), axis=self.window_axes)
        return self.cells_max(cells)

    @staticmethod
    def cells_max(cells):
        y = cells[0].copy()
        for taps in cells[1:]:
            np.maximum(y, taps, out=y)
        return y

    def winners(self, x):
        """The pooled `x` and, for every window cell, whether it holds the window's maximum."""
        view = self.window_view(x, -np.inf)
        y = np.max(view, axis=self.window_axes)
        return y, view == np.expand_dims(y, self.window_axes)

    def pooled_and_first(self, x):
        """The pooled `x` and the row-major index of each window's first maximum."""
        return threads.over_batch(self.block_pooled_and_first, x)

    def block_pooled_and_first(self, x):
        cells = self.cells(x)
        if cells is None:
            y, winners = self.winners(x)
            return y, self.first_cell(winners)
        y = self.cells_max(cells)
        first = np.zeros(y.shape, dtype=np.min_scalar_type(len(cells)))
        for index in range(len(cells) - 1, -1, -1):  # the earliest maximum writes last
            np.copyto(first, index, where=cells[index] == y)
        return y, first

    def pool_vjp(self, x):
        # TensorFlow's MaxPoolGrad: the whole gradient goes to the first maximum
        # of each window in row-major order.
        y, first = self.pooled_and_first(x)
        shape = x.shape

        def backward(dy):
            if self.strides == self.pool_size:
                tiles = threads.over_batch(
                    lambda f, d: self.tiles_gradient(f, d, (len(d), *shape[1:])), first, dy
                )
                return self.crop(shape, tiles)
            # One bincount adds what overlapping windows send to a shared cell.
            starts, offsets = self.cell_index(shape)
            padded_shape = self.padded_shape(shape)
            flat = np.bincount(
                (starts + offsets[first]).ravel(), dy.ravel(), minlength=int(np.prod(padded_shape))
            )
            return self.crop(shape, flat.reshape(padded_shape))

        return y, backward

    def tiles_gradient(self, first, dy, shape):
        """The padded input's gradient when windows tile it (strides = pool size, the
        common 2x2 s2): each tile gets dy at its first maximum and zeros elsewhere, written
        in one pass through a reshape of the tiled region; nothing overlaps to add up."""
        r, size = self.rank, int(np.prod(self.pool_size))
        out = dy.shape[1 : r + 1]
        tiles = (first[..., None] == np.arange(size)) * dy[..., None]  # (B, *out, C, taps)
        tiles = tiles.reshape(*tiles.shape[:-1], *self.pool_size)
        order = [0, *(a for i in range(r) for a in (1 + i, r + 2 + i)), r + 1]
        grad = np.zeros(self.padded_shape(shape), dtype=dy.dtype)
        region = grad[(slice(None), *(slice(0, o * k) for o, k in zip(out, self.pool_size)))]
        region[...] = tiles.transpose(order).reshape(region.shape)
        return grad

    def first_cell(self, flags):
        """Row-major index of each window's first True cell (`argmax` of the flat window).

        Computed as `size - max(flags * (size, ..., 2, 1))` on the window view
        itself: NumPy reduces the small window axes of a strided view several
        times faster than it copies them into one axis for `argmax`. A window
        with no maximum (NaN) maps to cell 0 rather than out of range.
        """
        size = int(np.prod(self.pool_size))
        countdown = np.arange(size, 0, -1, dtype=np.min_scalar_type(size)).reshape(self.pool_size)
        return (size - np.max(flags * countdown, axis=self.window_axes)) % size


class _AveragePooling(_Pooling):
    def pool(self, x):
        sums = np.sum(self.window_view(x, 0.0), axis=self.window_axes)
        return sums / self.valid_counts(x.shape[1:-1], x.dtype)

    def pool_vjp(self, x):
        counts, shape = self.valid_counts(x.shape[1:-1], x.dtype), x.shape

        def backward(dy):
            # Every cell of a window gets the output's gradient over the count the
            # forward divided by; the padded cells' shares are cropped away.
            share = np.expand_dims(dy / counts, self.window_axes)
            return self.add_to_cells(shape, np.broadcast_to(share, (*dy.shape, *self.pool_size)))

        return self.pool(x), backward

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

    def vjp(self, x, training=False, noise=None):
        y = self.call(x)
        kept = y if self.keepdims else np.expand_dims(y, self.axes)

        def backward(d_output):
            dy = d_output if self.keepdims else np.expand_dims(d_output, self.axes)
            return self.spread(x, kept, dy).astype(x.dtype), {}

        return y, backward

    def spread(self, x, y, dy):
        """dL/dx from the output and its gradient, both with the pooled axes kept."""
        raise NotImplementedError


class _GlobalMaxPooling(_GlobalPooling):
    reduce = staticmethod(np.max)

    def spread(self, x, y, dy):
        # reduce_max's gradient splits equally among tied maxima (unlike MaxPooling).
        winners = x == y
        return winners * (dy / np.sum(winners, axis=self.axes, keepdims=True, dtype=x.dtype))


class _GlobalAveragePooling(_GlobalPooling):
    # GlobalAveragePooling1D below also takes a mask (a masked mean over steps).
    reduce = staticmethod(np.mean)

    def spread(self, x, y, dy):
        count = np.prod([x.shape[a] for a in self.axes])
        return np.broadcast_to(dy / np.asarray(count, x.dtype), x.shape)


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
    """On ties TensorFlow's eager `MaxPool3DGrad` gives every maximum the whole gradient."""

    rank = 3

    def pool_vjp(self, x):
        y, winners = self.winners(x)
        shape = x.shape

        def backward(dy):
            return self.add_to_cells(shape, winners * np.expand_dims(dy, self.window_axes))

        return y, backward


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
        keep = self.keep(mask)
        if self.context.keras_major >= 3:
            x = np.where(keep, x, np.zeros((), dtype=x.dtype))
        else:
            x = x * keep.astype(x.dtype)
        counts = np.sum(keep.astype(x.dtype), axis=self.axes, keepdims=self.keepdims)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.sum(x, axis=self.axes, keepdims=self.keepdims) / counts

    def vjp(self, x, training=False, noise=None, mask=None):
        if mask is None:
            return super().vjp(x)
        keep = self.keep(mask)
        counts = np.sum(keep.astype(x.dtype), axis=self.axes, keepdims=True)

        def backward(d_output):
            dy = d_output if self.keepdims else np.expand_dims(d_output, self.axes)
            # The same select/multiply as the forward: they differ for a fully
            # masked example, whose share is inf (0 from `where`, nan from `* 0`).
            with np.errstate(invalid="ignore", divide="ignore"):
                share = dy / counts
                if self.context.keras_major >= 3:
                    dx = np.where(keep, share, np.zeros((), dtype=x.dtype))
                else:
                    dx = share * keep.astype(x.dtype)
            return dx.astype(x.dtype), {}

        return self.call(x, mask), backward

    def keep(self, mask):
        """The (batch, steps) mask as booleans broadcastable against the input."""
        return np.expand_dims(np.asarray(mask, dtype=bool), 2 if self.axes == (1,) else 1)


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
