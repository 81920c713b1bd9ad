"""tf_keras' LocallyConnected1D / LocallyConnected2D: convolutions with unshared weights.

Keras 3 dropped these classes, but Keras 2 files hold them, in three weight
layouts chosen by `implementation`:

1. `kernel (positions, prod(kernel_size) * channels_in, filters)`: one dense
   matrix per output position, fed the window flattened in the input's own
   layout ((k..., C) channels-last, (C, k...) channels-first). `valid` only.
2. the full dense matrix between the flattened input and output, masked to the
   connected pairs: `(*in_spatial, C_in, *out_spatial, filters)` channels-last,
   `(C_in, *in_spatial, filters, *out_spatial)` channels-first.
3. only the connected entries, a vector ordered by (output index, input index)
   of the flattened (data-format order) output and input, as
   `sorted(conv_kernel_idxs(...))` lists them.

Connectivity (tf_keras `conv_connected_inputs`): output position `p` on an axis
of length `n` reads cells `[c - k // 2, c - k // 2 + k)` clipped to the axis,
with `c = p * s + k // 2` for `valid` and `c = p * s` for `same` (not
TensorFlow's conv `same` split: the window is centred on `p * s`). Out-of-range
cells have no weight.

The engine brings every layout to implementation 1's `(positions, window,
filters)` once per input shape, gathers each position's window (out-of-range
cells read an appended zero) and contracts with one `einsum`. The bias,
`(*out_spatial, filters)`, is added as tf_keras' `bias_add` does: channels-first
*reshapes* it to `(filters, *out_spatial)` (no transpose).
"""

from __future__ import annotations

import numpy as np

from .. import activations
from ..base import Layer, as_tuple, data_format, with_activation


def _axis_cells(n: int, k: int, s: int, padding: str):
    """(out_length, cells `(out_length, k)` with -1 where a tap falls outside the axis)."""
    if padding == "valid":
        out = max((n - k) // s + 1, 0)
        start = np.arange(out) * s
    else:
        out = -(-n // s)
        start = np.arange(out) * s - k // 2
    cells = start[:, None] + np.arange(k)
    return out, np.where((cells >= 0) & (cells < n), cells, -1)


class _LocallyConnected(Layer):
    rank = 0

    def setup(self, config):
        self.filters = int(config["filters"])
        self.kernel_size = as_tuple(config["kernel_size"], self.rank)
        self.strides = as_tuple(config.get("strides", 1), self.rank)
        self.padding = str(config.get("padding", "valid")).lower()
        self.data_format = data_format(config)
        self.implementation = int(config.get("implementation", 1))
        self.use_bias = bool(config.get("use_bias", True))
        self.activation = activations.resolve(config.get("activation"), self.context.keras_major)
        if self.padding not in ("valid", "same"):
            raise self.error(f"padding must be 'valid' or 'same', found {self.padding!r}")
        if self.implementation not in (1, 2, 3):
            raise self.error(f"implementation must be 1, 2 or 3, found {self.implementation}")
        if self.implementation == 1 and self.padding != "valid":
            raise self.error("implementation 1 supports only padding='valid' (as in tf_keras)")
        self._geometry_cache = {}

    # -- geometry ----------------------------------------------------------
    def _split(self, input_shape):
        shape = tuple(int(d) for d in input_shape[1:])
        if len(shape) != self.rank + 1:
            raise self.error(
                f"expects inputs of rank {self.rank + 2} (batch, spatial x{self.rank}, channels), "
                f"found shape {tuple(input_shape)}"
            )
        if self.data_format == "channels_first":
            return shape[1:], shape[0]
        return shape[:-1], shape[-1]

    def geometry(self, input_shape):
        """(out_spatial, window input index `(P, F)` (-1: no cell), output index `(P, O)`)."""
        key = tuple(input_shape[1:])
        if key in self._geometry_cache:
            return self._geometry_cache[key]
        spatial, channels = self._split(input_shape)
        axes = [
            _axis_cells(n, k, s, self.padding)
            for n, k, s in zip(spatial, self.kernel_size, self.strides)
        ]
        out_spatial = tuple(out for out, _ in axes)
        if min(out_spatial, default=1) < 1:
            raise self.error(
                f"input spatial size {spatial} is too small for kernel {self.kernel_size}, "
                f"strides {self.strides}, padding {self.padding!r}"
            )
        rank = self.rank
        # cells[d] broadcast to (out_1..out_r, k_1..k_r): axis d's cell for each (position, tap).
        grids = []
        for d, (_, cells) in enumerate(axes):
            shape = [1] * (2 * rank)
            shape[d], shape[rank + d] = cells.shape
            grids.append(cells.reshape(shape))
        grids = np.broadcast_arrays(*grids)
        valid = np.all([g >= 0 for g in grids], axis=0)
        spatial_flat = np.ravel_multi_index([np.maximum(g, 0) for g in grids], spatial)
        positions = int(np.prod(out_spatial))
        taps = int(np.prod(self.kernel_size))
        spatial_flat = spatial_flat.reshape(positions, taps)
        valid = valid.reshape(positions, taps)
        c = np.arange(channels)
        size = int(np.prod(spatial)) * channels
        if self.data_format == "channels_first":  # window order (C, taps)
            index = c[None, :, None] * int(np.prod(spatial)) + spatial_flat[:, None, :]
            ok = np.broadcast_to(valid[:, None, :], index.shape)
        else:  # window order (taps, C)
            index = spatial_flat[:, :, None] * channels + c[None, None, :]
            ok = np.broadcast_to(valid[:, :, None], index.shape)
        index = np.where(ok, index, size).reshape(positions, -1)
        o = np.arange(self.filters)
        if self.data_format == "channels_first":
            out_index = o[None, :] * positions + np.arange(positions)[:, None]
        else:
            out_index = np.arange(positions)[:, None] * self.filters + o[None, :]
        geometry = (out_spatial, index, out_index, size)
        self._geometry_cache[key] = geometry
        return geometry

    def weight_shapes(self, input_shape):
        spatial, channels = self._split(input_shape)
        out_spatial, index, out_index, size = self.geometry(input_shape)
        positions = index.shape[0]
        if self.implementation == 1:
            kernel = (positions, index.shape[1], self.filters)
        elif self.implementation == 2:
            if self.data_format == "channels_first":
                kernel = (channels, *spatial, self.filters, *out_spatial)
            else:
                kernel = (*spatial, channels, *out_spatial, self.filters)
        else:
            kernel = (int(np.count_nonzero(index < size)) * self.filters,)
        shapes = [("kernel", kernel)]
        if self.use_bias:
            shapes.append(("bias", (*out_spatial, self.filters)))
        return shapes

    def _sparse_order(self, index, out_index, size):
        """(P, F, O) positions of implementation 3's kernel entries, in the file's order."""
        p, f = np.nonzero(index < size)
        p = np.repeat(p, self.filters)
        f = np.repeat(f, self.filters)
        o = np.tile(np.arange(self.filters), len(index[index < size]))
        order = np.lexsort((index[p, f], out_index[p, o]))
        return p[order], f[order], o[order]

    def window_kernel(self, input_shape):
        """The kernel as `(positions, window, filters)`, zero where a tap has no cell."""
        _, index, out_index, size = self.geometry(input_shape)
        kernel = self.w["kernel"]
        if self.implementation == 1:
            return kernel
        valid = index < size
        if self.implementation == 2:
            dense = kernel.reshape(size, -1)  # (in, out), both flattened in data-format order
            safe = np.where(valid, index, 0)
            full = dense[safe[:, :, None], out_index[:, None, :]]
            return np.where(valid[:, :, None], full, 0).astype(kernel.dtype)
        full = np.zeros((*index.shape, self.filters), dtype=kernel.dtype)
        p, f, o = self._sparse_order(index, out_index, size)
        full[p, f, o] = kernel
        return full

    def _kernel_grad(self, d_window, input_shape):
        """The gradient of `window_kernel` brought back to the file's kernel layout."""
        _, index, out_index, size = self.geometry(input_shape)
        if self.implementation == 1:
            return d_window
        valid = index < size
        if self.implementation == 2:
            grad = np.zeros((size, out_index.size), dtype=d_window.dtype)
            p, f = np.nonzero(valid)
            grad[index[p, f][:, None], out_index[p]] = d_window[p, f]
            return grad.reshape(self.w["kernel"].shape)
        p, f, o = self._sparse_order(index, out_index, size)
        return d_window[p, f, o]

    # -- computation -------------------------------------------------------
    def _bias(self, out_spatial):
        bias = self.w["bias"]
        if self.data_format == "channels_first":
            return bias.reshape(self.filters, *out_spatial)
        return bias

    def _to_output(self, y, out_spatial):
        """(B, P, O) -> the layer's output layout."""
        y = y.reshape(y.shape[0], *out_spatial, self.filters)
        if self.data_format == "channels_first":
            y = np.moveaxis(y, -1, 1)
        return y

    def _from_output(self, dy):
        if self.data_format == "channels_first":
            dy = np.moveaxis(dy, 1, -1)
        return dy.reshape(dy.shape[0], -1, self.filters)

    def call(self, x):
        return self.vjp(x)[0]

    def vjp(self, x, training=False, noise=None):
        out_spatial, index, _, size = self.geometry(x.shape)
        kernel = self.window_kernel(x.shape)
        flat = x.reshape(x.shape[0], -1)
        padded = np.concatenate([flat, np.zeros((x.shape[0], 1), dtype=x.dtype)], axis=1)
        patches = padded[:, index]  # (B, P, F)
        z = self._to_output(np.einsum("bpf,pfo->bpo", patches, kernel, optimize=True), out_spatial)
        if self.use_bias:
            z = z + self._bias(out_spatial)

        def backward(dz):
            rows = self._from_output(dz)  # (B, P, O)
            d_patches = np.einsum("bpo,pfo->bpf", rows, kernel, optimize=True)
            d_padded = np.bincount(
                np.broadcast_to(index, d_patches.shape).reshape(-1)
                + np.repeat(np.arange(x.shape[0]) * (size + 1), index.size),
                weights=d_patches.reshape(-1),
                minlength=x.shape[0] * (size + 1),
            ).reshape(x.shape[0], size + 1)
            dx = d_padded[:, :size].reshape(x.shape).astype(x.dtype)
            d_window = np.einsum("bpf,bpo->pfo", patches, rows, optimize=True)
            if self.implementation != 1:
                d_window = np.where((index < size)[:, :, None], d_window, 0)
            grads = {"kernel": self._kernel_grad(d_window, x.shape).astype(x.dtype)}
            if self.use_bias:
                db = dz.sum(axis=0)
                if self.data_format == "channels_first":
                    db = db.reshape(self.w["bias"].shape)
                grads["bias"] = db.astype(x.dtype)
            return dx, grads

        return with_activation(self.activation, z, backward)


class LocallyConnected1D(_LocallyConnected):
    rank = 1


class LocallyConnected2D(_LocallyConnected):
    rank = 2


LAYERS = [LocallyConnected1D, LocallyConnected2D]
