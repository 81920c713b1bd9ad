"""Convolution layers: Conv, DepthwiseConv, SeparableConv and ConvTranspose, 1D to 3D.

Every variant reduces to three shared operations on channels-last arrays:

- `correlate` (forward): pad, take the strided windows, copy them once into a
  patch matrix (im2col) and contract it with the kernel, one matmul per group;
- `correlate_kernel_grad`: the same patch matrix, transposed, times dL/dz;
- `correlate_input_grad`: the full correlation of dL/dz with the rotated
  kernel, computed literally at stride 1 or, where the zeros a stride inserts
  into dL/dz would waste work, as dL/dz times the kernel^T summed back into
  place (col2im).

Depthwise is the case with one input channel per group; it contracts nothing
but the taps, so it uses `einsum` on the window view instead of a matmul per
channel. Separable is depthwise followed by a 1x1 correlation. A transposed
convolution is a convolution's input gradient, so its forward is
`correlate_input_grad` and its backward is `correlate` and its kernel gradient.
Layers work channels-last internally and move the channel axis at the edges.
"""

from __future__ import annotations

import math

import numpy as np

from .. import activations, threads
from ..base import Layer, as_tuple, data_format, with_activation
from ..windows import (
    effective_size,
    from_channels_last,
    output_length,
    pad_spatial,
    padding_amounts,
    tap_windows,
    to_channels_last,
)

# -- the shared arithmetic ----------------------------------------------------
#
# Patches are laid out (positions, taps, channels), channels innermost, so a
# kernel (*k, in/groups, out) is already the matrix (taps * in/groups, out)
# after a reshape. With groups, each group's channels form their own patch
# matrix and kernel matrix, and one batched matmul does all groups.


def correlate(x, kernel, strides, dilation, padding, groups=1):
    """Keras' (cross-)correlation of a channels-last `x` with `kernel` (*k, in/groups, out).

    `padding` is a Keras padding name or explicit (before, after) pairs.
    Output channel `g * out/groups + f` sees only input channels of group `g`,
    which is Keras' grouped-convolution layout.
    """
    if _is_depthwise(kernel.shape, groups):
        return _depthwise(x, kernel, strides, dilation, padding)
    if _shifts_pay(x.shape, kernel.shape, strides, dilation, padding, groups):
        return _shifted(x, kernel, dilation, padding)
    matrices = _kernel_matrices(kernel, groups).astype(x.dtype, copy=False)
    return _by_patch_blocks(x, kernel.shape, matrices, strides, dilation, padding, groups)


# Forward im2col runs over blocks of the batch (or of one sample's output rows) whose
# patch matrix is about this large: it is then still in cache when the matmul reads
# it. On 2 cores a 3x3 conv 64->64 took 294 ms in blocks against 458 in one piece on
# (64, 96, 96), and 21 against 39 ms on (1, 224, 224); 128->128 on (64, 48, 48) 194
# against 279. Blocks of 8 and 32 MB did no better.
PATCH_BLOCK_BYTES = 16 * 2**20


def _by_patch_blocks(x, kernel_shape, matrices, strides, dilation, padding, groups, ones=False):
    """The patch matrix of `x` times `matrices` (`_kernel_matrices`, with a bias row when
    `ones`), as (*lead, out), computed block by block (each block's patches copied,
    multiplied and dropped before the next's)."""
    rank = len(kernel_shape) - 2
    view = _windows(x, kernel_shape[:rank], strides, dilation, padding)
    lead = view.shape[: rank + 1]
    filters = matrices.shape[0] * matrices.shape[2]
    per_row = matrices.shape[0] * matrices.shape[1] * x.itemsize * math.prod(lead[2:])
    parts = _blocks(lead[:2], max(1, PATCH_BLOCK_BYTES // max(per_row, 1)))
    matrix = None if ones else _input_matrix(x, view, groups)
    if matrix is not None or len(parts) == 1:
        patches = _block_patches(view, groups, ones) if matrix is None else matrix
        return _ungroup_product(np.matmul(patches, matrices), lead)
    out = np.empty((*lead, filters), np.result_type(x, matrices))
    for part in parts:  # blocks of samples or of rows, for the cache
        patches = _block_patches(view[part], groups, ones)
        if groups == 1:  # straight into place
            np.matmul(patches[0], matrices[0], out=out[part].reshape(-1, filters))
        else:
            out[part] = _ungroup_product(np.matmul(patches, matrices), out[part].shape[:-1])
    return out


def _blocks(sizes, rows: int) -> list[tuple[slice, slice]]:
    """(samples, rows) slices covering a (batch, rows) grid, each about `rows` rows:
    whole samples when one has fewer, else a run of one sample's rows."""
    batch, height = sizes
    if rows >= height:
        step = rows // max(height, 1)
        return [(slice(b, b + step), slice(None)) for b in range(0, max(batch, 1), step)]
    return [
        (slice(b, b + 1), slice(h, h + rows)) for b in range(batch) for h in range(0, height, rows)
    ]


def _shifts_pay(x_shape, kernel_shape, strides, dilation, padding, groups) -> bool:
    """Whether `_shifted` beats im2col: stride 1, one group, several taps and at most
    half as many filters as input channels (the patch matrix is then mostly copying:
    a 3x3 conv 128->32 on (16, 24, 24) takes 5.2 ms instead of 8.1), and the padded
    input not much larger than the output (the product runs over it all)."""
    rank = len(kernel_shape) - 2
    if groups != 1 or any(s != 1 for s in strides) or math.prod(kernel_shape[:rank]) == 1:
        return False
    if 2 * kernel_shape[-1] > kernel_shape[-2]:
        return False
    pads = resolve_padding(x_shape[1:-1], kernel_shape, strides, dilation, padding)
    padded = [n + b + a for n, (b, a) in zip(x_shape[1:-1], pads)]
    out = [p - effective_size(k, d) + 1 for p, k, d in zip(padded, kernel_shape, dilation)]
    return min(out) > 0 and math.prod(padded) <= 2 * math.prod(out)


def _shifted(x, kernel, dilation, padding, bias=None):
    """A stride-1 correlation as one matmul per tap on the padded input itself.

    Flattened (positions, channels), the padded input shifted by a tap is a
    contiguous run of its rows, so each tap is a plain matrix product with no
    copy; the products add up over a grid as large as the padded input, and the
    valid part of it (plus `bias`) is copied out once.
    """
    rank = kernel.ndim - 2
    pads = resolve_padding(x.shape[1:-1], kernel.shape, (1,) * rank, dilation, padding)
    padded = pad_spatial(x, pads)
    sizes = padded.shape[1:-1]
    out = [n - effective_size(k, d) + 1 for n, k, d in zip(sizes, kernel.shape, dilation)]
    rows = [math.prod(sizes[axis + 1 :]) for axis in range(rank)]  # flat step of each axis
    flat = padded.reshape(-1, padded.shape[-1])
    taps = list(np.ndindex(*kernel.shape[:rank]))
    offsets = [sum(t * d * r for t, d, r in zip(tap, dilation, rows)) for tap in taps]
    length = flat.shape[0] - max(offsets)
    weights = kernel.astype(x.dtype, copy=False)
    grid = np.empty((flat.shape[0], kernel.shape[-1]), x.dtype)
    np.matmul(flat[offsets[0] : offsets[0] + length], weights[taps[0]], out=grid[:length])
    for tap, offset in zip(taps[1:], offsets[1:]):
        grid[:length] += flat[offset : offset + length] @ weights[tap]
    valid = grid.reshape(x.shape[0], *sizes, -1)[(slice(None), *(slice(0, n) for n in out))]
    result = np.empty(valid.shape, x.dtype)
    if bias is None:
        return threads.copy(result, valid)
    return threads.elementwise(np.add, result, valid, bias.astype(x.dtype, copy=False))


# correlate_biased adds the bias inside the matmul from this many positions per kernel
# row on (measured on 2 cores: a 1x1 conv 64->256 on 9216 positions gains 15 %, one
# 256->64 on 576 loses 60 %).
AUGMENT_ROWS = 16


def correlate_biased(x, kernel, bias, strides, dilation, padding, groups=1):
    """`correlate(x, kernel, ...) + bias`, the bias added inside the matmul (forward only).

    The patch matrix gets a column of ones and the kernel matrix the bias as its
    last row: the copy im2col makes anyway writes the ones, and no pass over the
    output adds the bias afterwards (1.35 against 1.85 ms for a 1x1 conv 64->256
    on a (16, 24, 24) batch). Depthwise, which has no patch matrix, adds it after.
    """
    rank = kernel.ndim - 2
    positions = x.shape[0] * math.prod(
        output_length(n, k, s, d, padding) if isinstance(padding, str) else n
        for n, k, s, d in zip(x.shape[1:-1], kernel.shape[:rank], strides, dilation)
    )
    # The augmented kernel is a new (taps * in + 1, out) matrix each call: worth it only
    # for many positions per kernel row (at batch 1 a 3x3 512->512 conv took 2x as long).
    few = positions < AUGMENT_ROWS * math.prod(kernel.shape[:-1])
    if _shifts_pay(x.shape, kernel.shape, strides, dilation, padding, groups):
        return _shifted(x, kernel, dilation, padding, bias)
    if _is_depthwise(kernel.shape, groups) or few or not isinstance(padding, str):
        y = correlate(x, kernel, strides, dilation, padding, groups)
        return threads.elementwise(np.add, y, y, bias.astype(y.dtype, copy=False))
    matrices = _kernel_matrices(kernel, groups)
    rows = bias.reshape(groups, 1, kernel.shape[-1] // groups)
    augmented = np.concatenate([matrices, rows.astype(matrices.dtype)], axis=1)
    augmented = augmented.astype(x.dtype, copy=False)
    return _by_patch_blocks(
        x, kernel.shape, augmented, strides, dilation, padding, groups, ones=True
    )


def _patches_times_kernel(patches, lead, kernel, groups):
    y = np.matmul(patches, _kernel_matrices(kernel, groups).astype(patches.dtype, copy=False))
    return _ungroup_product(y, lead)


def _ungroup_product(y, lead):
    # (groups, N, out/groups) -> (*lead, out); sizes spelled out so an empty batch works
    return _ungroup(y).reshape(*lead, y.shape[0] * y.shape[2])


def correlate_kernel_grad(x, dz, kernel_shape, strides, dilation, padding, groups=1):
    """dL/d kernel of `correlate(x, kernel, ...)` given dL/dz: patches^T @ dz per group.

    That is, for every (input channel, filter) pair, the correlation of the
    padded input with dz, summed over the batch.
    """
    if _is_depthwise(kernel_shape, groups):
        return _depthwise_kernel_grad(x, dz, kernel_shape, strides, dilation, padding)
    patches, _ = _patches(x, kernel_shape, strides, dilation, padding, groups)
    return _patches_kernel_grad(patches, dz, kernel_shape, groups)


def _patches_kernel_grad(patches, dz, kernel_shape, groups):
    grads = np.matmul(patches.transpose(0, 2, 1), _group(dz, groups))  # (groups, taps*in/g, out/g)
    return grads.transpose(1, 0, 2).reshape(kernel_shape)  # undoes `_kernel_matrices`


def correlate_input_grad(dz, kernel, sizes, strides, dilation, before, groups=1):
    """dL/dx of `correlate(x, kernel, ...)` given dL/dz (TensorFlow's `conv_transpose`).

    `sizes` are x's spatial lengths and `before` the padding the forward put in
    front of each axis. The gradient is the full correlation of dz, with `s-1`
    zeros inserted between its values, with the kernel rotated 180 degrees and
    its input and output channels swapped, cropped by the forward's padding.
    Which way of computing that is fastest depends on the shapes (measured at
    batch 4 on 2 cores):

    - `_full_correlation` computes it literally: best at stride 1 when there
      are no more filters than input channels (1.6x faster than col2im for a
      3x3 conv 64->64, 40x for 7x7 64->3);
    - `_col2im` needs no inserted zeros, which would cost stride**rank times
      the work (and a 2.5 GB patch matrix for ResNet50's stride-2 7x7 conv at
      batch 4): 4x faster for 7x7 3->64 even at stride 1;
    - depthwise, memory-bound, has its own (`_depthwise_input_grad`).
    """
    if _is_depthwise(kernel.shape, groups):
        return _depthwise_input_grad(dz, kernel, sizes, strides, dilation, before, groups)
    if all(s == 1 for s in strides) and kernel.shape[-1] // groups <= kernel.shape[-2]:
        return _full_correlation(dz, kernel, sizes, dilation, before, groups)
    return _col2im(dz, kernel, sizes, strides, dilation, before, groups)


# The forward's patch matrix (or depthwise window view) is kept for the kernel gradient
# up to this size; beyond it the backward copies the windows again instead.
KEEP_PATCHES_BYTES = 512 * 2**20


def correlate_vjp(x, kernel, strides, dilation, padding, groups=1):
    """`correlate(x, kernel, ...)` and its backward, `dy -> (dx, d_kernel)`.

    The kernel gradient reuses the forward's im2col patches (depthwise: its padded
    window view) rather than padding and copying the windows a second time.
    """
    rank = kernel.ndim - 2
    if _is_depthwise(kernel.shape, groups):
        view = _windows(x, kernel.shape[:rank], strides, dilation, padding)
        y = _depthwise_on(view, kernel)

        def kernel_grad(dy):
            return _depthwise_kernel_grad_on(view, dy, kernel.shape)

    else:
        patches, lead = _patches(x, kernel.shape, strides, dilation, padding, groups)
        y = _patches_times_kernel(patches, lead, kernel, groups)
        kept = patches if patches.nbytes <= KEEP_PATCHES_BYTES else None
        del patches

        def kernel_grad(dy):
            if kept is None:
                return correlate_kernel_grad(
                    x, dy, kernel.shape, strides, dilation, padding, groups
                )
            return _patches_kernel_grad(kept, dy, kernel.shape, groups)

    def backward(dy, need_input=True):
        """(dx, d_kernel); dx is None when `need_input` is False (x is a model input)."""
        dx = None
        if need_input:
            sizes = x.shape[1:-1]
            pads = resolve_padding(sizes, kernel.shape, strides, dilation, padding)
            before = [b for b, _ in pads]
            dx = correlate_input_grad(dy, kernel, sizes, strides, dilation, before, groups)
        return dx, kernel_grad(dy)

    return y, backward


def resolve_padding(sizes, kernel, strides, dilation, padding):
    """Explicit (before, after) pairs for a Keras padding name (pairs pass through)."""
    if not isinstance(padding, str):
        return list(padding)
    return [
        padding_amounts(n, k, s, d, padding) for n, k, s, d in zip(sizes, kernel, strides, dilation)
    ]


# -- patch matrices ------------------------------------------------------------


def _windows(x, ksize, strides, dilation, padding):
    """The padded input's window view (B, *out, *k, C); no copy yet."""
    pads = resolve_padding(x.shape[1:-1], ksize, strides, dilation, padding)
    return tap_windows(pad_spatial(x, pads), ksize, strides, dilation)


def _patches(x, kernel_shape, strides, dilation, padding, groups, ones=False):
    """Each group's patch matrix (groups, positions, taps * in/groups), and the output's
    leading shape (B, *out). This is the one copy of the input im2col makes (none for an
    unpadded 1x1 stride-1 conv of one group, whose input is already the matrix). With
    `ones`, each row ends with an extra 1 (for `correlate_biased`)."""
    rank = len(kernel_shape) - 2
    view = _windows(x, kernel_shape[:rank], strides, dilation, padding)
    lead = view.shape[: rank + 1]
    matrix = None if ones else _input_matrix(x, view, groups)
    return (_block_patches(view, groups, ones) if matrix is None else matrix), lead


def _input_matrix(x, view, groups):
    """`x` itself as the patch matrix (1, positions, channels) when it is one: an
    unpadded 1x1 stride-1 conv of one group on a C-contiguous input. None otherwise."""
    rank = (view.ndim - 2) // 2
    one_tap = math.prod(view.shape[rank + 1 : -1]) == 1
    if groups == 1 and one_tap and view.shape[: rank + 1] == x.shape[:-1]:
        if x.flags.c_contiguous:
            return x.reshape(1, -1, x.shape[-1])
    return None


def _block_patches(view, groups, ones=False):
    """The patch matrices (groups, positions, taps * in/groups [+ 1]) of a window view
    (B, *out, *k, C) or a block of one: its one copy."""
    rank = (view.ndim - 2) // 2
    channels = view.shape[-1] // groups
    taps = math.prod(view.shape[rank + 1 : -1]) * channels
    split = view.reshape(*view.shape[:-1], groups, channels)  # channel g*in/g + c -> (g, c)
    moved = np.moveaxis(split, -2, 0)
    patches = np.empty((groups, math.prod(view.shape[: rank + 1]), taps + ones), moved.dtype)
    threads.copy(np.reshape(patches[..., :taps], moved.shape, copy=False), moved)
    if ones:
        patches[..., taps] = 1
    return patches


def _kernel_matrices(kernel, groups):
    """(*k, in/groups, out) -> (groups, taps * in/groups, out/groups), rows like `_patches`."""
    filters = kernel.shape[-1]
    return kernel.reshape(-1, groups, filters // groups).transpose(1, 0, 2)


def _group(z, groups):
    """(..., out) -> (groups, N, out/groups): channel g*out/groups + f into group g."""
    return z.reshape(-1, groups, z.shape[-1] // groups).transpose(1, 0, 2)


def _ungroup(y):
    """(groups, N, out/groups) -> (N, out): the inverse of `_group`."""
    return y.transpose(1, 0, 2).reshape(y.shape[1], y.shape[0] * y.shape[2])


# -- the input gradient's strategies ---------------------------------------------


def _full_correlation(dz, kernel, sizes, dilation, before, groups):
    """The stride-1 input gradient, literally: dz padded by `k_eff - 1 - before` in front
    and by what makes it `n + k_eff - 1` long behind, correlated with the rotated
    kernel. The forward's odd `same` pixel was behind, so that is where this drops it."""
    rank = kernel.ndim - 2
    pads = [
        (effective_size(k, d) - 1 - b, n + b - length)
        for n, length, k, d, b in zip(sizes, dz.shape[1:-1], kernel.shape, dilation, before)
    ]
    rotated = _swap_channels(kernel[(slice(None, None, -1),) * rank], groups)
    return correlate(pad_or_crop(dz, pads), rotated, (1,) * rank, dilation, "valid", groups)


def _swap_channels(kernel, groups):
    """(*k, in/g, g*out/g) -> (*k, out/g, g*in/g): each group's kernel with in and out swapped."""
    *k, per_group, filters = kernel.shape
    split = kernel.reshape(*k, per_group, groups, filters // groups)
    return np.swapaxes(split, -1, -3).reshape(*k, filters // groups, groups * per_group)


def _col2im(dz, kernel, sizes, strides, dilation, before, groups):
    """dz @ kernel^T is each window's share of dL/dx (tap by tap, channel by channel);
    `overlap_add` sums the windows back onto the padded input and crops the padding."""
    rank = kernel.ndim - 2
    ksize, per_group = kernel.shape[:rank], kernel.shape[-2]
    if groups == 1:
        # A 2-D product hands BLAS the transposed kernel as it is (no copy: copying a
        # 3x3 512->512 kernel transposed took 18 of a 24 ms call on (400, 512)).
        flat = kernel.reshape(-1, kernel.shape[-1]).astype(dz.dtype, copy=False)
        cols = np.matmul(dz.reshape(-1, dz.shape[-1]), flat.T)
    else:
        # Contiguous: numpy's stacked matmul skips BLAS for a transposed right operand
        # (10x slower).
        matrices = np.ascontiguousarray(_kernel_matrices(kernel, groups).transpose(0, 2, 1))
        cols = np.matmul(_group(dz, groups), matrices.astype(dz.dtype, copy=False))
    # (groups, N, *k, in/g) -> (N, *k, groups, in/g): channel g*in/g + c, as in x.
    cols = np.moveaxis(cols.reshape(groups, -1, *ksize, per_group), 0, -2)
    cols = cols.reshape(*dz.shape[:-1], *ksize, groups * per_group)
    return overlap_add(cols, sizes, strides, dilation, before)


def overlap_add(cols, sizes, strides, dilation, before):
    """col2im, the adjoint of taking windows: sum each window's values back into place.

    `cols` is (B, *out, *k, C): the value window `o` contributes at tap `t`,
    which sits at padded position `o*s + t*d`; the result is the (B, *sizes, C)
    input that begins `before` into the padded axis (the rest is padding,
    dropped). Positions no window reached stay zero.

    Windows overlap, so no single view can receive all taps: this adds one
    strided slice per block of taps (np.add.at would take one call, ~100x
    slower). Along an undilated strided axis, taps `q*s .. q*s + s-1` land on
    the `s` consecutive positions `(o+q)*s + r`, so with that axis split into
    (length/s, s) one add places a whole block: ResNet50's stride-2 7x7 conv
    takes 16 adds instead of 49, 2.3x faster. Elsewhere a block is one tap.
    """
    rank = len(sizes)
    channels = cols.shape[-1]
    out = cols.shape[1 : rank + 1]
    ksize = cols.shape[rank + 1 : 2 * rank + 1]
    if math.prod(ksize) == 1 and tuple(out) == tuple(sizes) and not any(before):
        return cols.reshape(*cols.shape[: rank + 1], channels)  # 1x1, stride 1: nothing overlaps
    return threads.over_batch(lambda c: _add_windows(c, sizes, strides, dilation, before), cols)


def _add_windows(cols, sizes, strides, dilation, before):
    """`overlap_add` where windows overlap or skip positions."""
    rank = len(sizes)
    batch, channels = cols.shape[0], cols.shape[-1]
    out = cols.shape[1 : rank + 1]
    ksize = cols.shape[rank + 1 : 2 * rank + 1]
    blocks = [s if d == 1 else 1 for s, d in zip(strides, dilation)]
    extents = [
        -(-max(n + b, (o - 1) * s + effective_size(k, d)) // blk) * blk  # a multiple of blk
        for n, b, o, s, k, d, blk in zip(sizes, before, out, strides, ksize, dilation, blocks)
    ]
    total = np.zeros((batch, *extents, channels), cols.dtype)
    # total as (B, e1/blk1, blk1, e2/blk2, ..., C), cols as (B, o1, k1, o2, k2, ..., C).
    into = total.reshape(
        batch, *(m for e, b in zip(extents, blocks) for m in (e // b, b)), channels
    )
    paired = (m for i in range(rank) for m in (1 + i, 1 + rank + i))
    source = cols.transpose(0, *paired, 2 * rank + 1)
    for block in np.ndindex(*(-(-k // b) for k, b in zip(ksize, blocks))):
        at, taps = [slice(None)], [slice(None)]
        for q, o, s, d, k, b in zip(block, out, strides, dilation, ksize, blocks):
            axis_at, axis_taps = _block_slices(q, o, s, d, k, b)
            at += axis_at
            taps += axis_taps
        into[tuple(at)] += source[tuple(taps)]
    return total[(slice(None), *(slice(b, b + n) for b, n in zip(before, sizes)))]


def _block_slices(q, out, stride, dilation, kernel, block):
    """`overlap_add`'s (destination, source) slices along one axis for tap block `q`.

    The destination axis is split into (length/block, block), the source's
    is (out, kernel taps); a block of one tap keeps a dummy length-1 axis.
    """
    if block == 1:  # tap q alone: window o lands at q*d + o*s
        first = q * dilation
        at = [slice(first, first + (out - 1) * stride + 1, stride), slice(None)]
        return at, [slice(None), slice(q, q + 1)]
    width = min(block, kernel - q * block)  # taps q*s + r, r < width, land at (o + q)*s + r
    at = [slice(q, q + out), slice(0, width)]
    return at, [slice(None), slice(q * block, q * block + width)]


# -- depthwise: one input channel per group --------------------------------------
#
# With one channel per group a matmul per group would be `in` tiny products
# over a transposed copy of the windows; einsum on the window view itself
# contracts just the taps, with no copy at all. The grouped kernel
# (*k, 1, in*multiplier) is Keras' depthwise kernel (*k, in, multiplier)
# reshaped: output channel c*multiplier + m.


def _is_depthwise(kernel_shape, groups):
    return groups > 1 and kernel_shape[-2] == 1


def _depthwise_kernel(kernel_shape, groups):
    """(*k, 1, in*multiplier) -> (*k, in, multiplier)."""
    return (*kernel_shape[:-2], groups, kernel_shape[-1] // groups)


def _subscripts(rank):
    """einsum letters: output positions and kernel taps."""
    return "xyz"[:rank], "ijk"[:rank]


def _depthwise(x, kernel, strides, dilation, padding):
    """y[o, c*M + m] = sum over taps t of x's window o at tap t, channel c, times K[t, c, m]."""
    rank = kernel.ndim - 2
    return _depthwise_on(_windows(x, kernel.shape[:rank], strides, dilation, padding), kernel)


def _depthwise_on(view, kernel):
    """`_depthwise` on the padded input's window view (B, *out, *k, C)."""
    rank = kernel.ndim - 2
    o, t = _subscripts(rank)
    kernel = kernel.reshape(_depthwise_kernel(kernel.shape, view.shape[-1]))
    y = _batch_einsum(f"b{o}{t}c,{t}cm->b{o}cm", view, kernel.astype(view.dtype, copy=False))
    return y.reshape(*y.shape[:-2], y.shape[-2] * y.shape[-1])


def _batch_einsum(spec, batched, other):
    """`np.einsum(spec, batched, other)` for a result with `batched`'s leading (batch)
    axis, the batch split over the threads."""
    inputs, result = spec.split("->")
    sizes = {}
    for letters, array in zip(inputs.split(","), (batched, other)):
        sizes.update(zip(letters, array.shape))
    y = np.empty([sizes[letter] for letter in result], np.result_type(batched, other))
    parts = threads.blocks(batched.shape[0], y.size)
    threads.over_blocks(lambda part: np.einsum(spec, batched[part], other, out=y[part]), parts)
    return y


def _depthwise_kernel_grad(x, dz, kernel_shape, strides, dilation, padding):
    """dK[t, c, m] = sum over batch and positions o of x's window o at tap t times dz[o, c, m]."""
    rank = len(kernel_shape) - 2
    view = _windows(x, kernel_shape[:rank], strides, dilation, padding)
    return _depthwise_kernel_grad_on(view, dz, kernel_shape)


def _depthwise_kernel_grad_on(view, dz, kernel_shape):
    """`_depthwise_kernel_grad` on the padded input's window view (B, *out, *k, C)."""
    rank = len(kernel_shape) - 2
    o, t = _subscripts(rank)
    split = _depthwise_kernel(kernel_shape, view.shape[-1])
    dz = dz.reshape(*dz.shape[:-1], *split[-2:])
    parts = threads.blocks(view.shape[0], dz.size)
    grad = threads.block_sum(
        lambda part: np.einsum(f"b{o}{t}c,b{o}cm->{t}cm", view[part], dz[part]), parts
    )
    return grad.reshape(kernel_shape)


def _depthwise_input_grad(dz, kernel, sizes, strides, dilation, before, groups):
    """The full correlation of dz with the flipped kernel, one stride phase at a time.

    Depthwise is memory-bound, so col2im's temporary (taps times dz's size)
    costs more than the work it saves, and so would inserting zeros into dz:
    instead, padded position `p = q*s + r` gets `sum_j dz[q - j] * K'[j, r]`,
    where K' is the dilated kernel padded to `J*s` taps and split as tap
    `j*s + r` (`_phase_kernel`). That is a stride-1 correlation of dz with one
    output per phase `r`, which einsum computes on dz's window view in one
    pass; interleaving the phases (a pixel shuffle) is a reshape. Measured:
    2x faster than zero insertion at stride 2, 6x faster than col2im at 1.
    """
    rank = kernel.ndim - 2
    split = _depthwise_kernel(kernel.shape, groups)
    phased = _phase_kernel(kernel.reshape(split), strides, dilation).astype(dz.dtype, copy=False)
    taps = phased.shape[0 : 2 * rank : 2]
    steps = [d if s == 1 else 1 for s, d in zip(strides, dilation)]  # the window's dilation
    rows = [-(-(b + n) // s) for b, n, s in zip(before, sizes, strides)]  # q's range per axis
    pads = [((j - 1) * w, q - o) for j, w, q, o in zip(taps, steps, rows, dz.shape[1:-1])]
    view = tap_windows(pad_or_crop(dz, pads), taps, (1,) * rank, steps)
    view = view.reshape(*view.shape[:-1], *split[-2:])  # channel c*multiplier + m -> (c, m)
    o, t = _subscripts(rank)
    r = "uvw"[:rank]
    kernel_axes = "".join(a + b for a, b in zip(t, r))
    out_axes = "".join(a + b for a, b in zip(o, r))  # (q1, r1, q2, r2): p = q*s + r in order
    y = _batch_einsum(f"b{o}{t}cm,{kernel_axes}cm->b{out_axes}c", view, phased)
    y = y.reshape(y.shape[0], *(q * s for q, s in zip(rows, strides)), y.shape[-1])
    return y[(slice(None), *(slice(b, b + n) for b, n in zip(before, sizes)))]


def _phase_kernel(kernel, strides, dilation):
    """(*k, C, M) -> (J1, s1, J2, s2, ..., C, M): [j, r] is the dilated kernel's tap at
    `j*s + r` (zeros between taps and up to `J*s`), flipped along j. Along a stride-1
    axis the window keeps the dilation, so that axis is just (k, 1), flipped."""
    for axis, (s, d) in enumerate(zip(strides, dilation)):
        at = 2 * axis  # the axes before this one are already split in two
        lead, k, rest = kernel.shape[:at], kernel.shape[at], kernel.shape[at + 1 :]
        if s == 1:
            kernel = kernel.reshape(*lead, k, 1, *rest)
        else:
            taps = -(-effective_size(k, d) // s)
            spread = np.zeros((*lead, taps * s, *rest), kernel.dtype)
            spread[(slice(None),) * at + (slice(None, (k - 1) * d + 1, d),)] = kernel
            kernel = spread.reshape(*lead, taps, s, *rest)
        kernel = np.flip(kernel, at)
    return kernel


# -- transposed convolution --------------------------------------------------------


def transposed_length(size, kernel, stride, dilation, padding, output_padding):
    """Output length of a transposed convolution (Keras `deconv_output_length`).

    Keras 2 (`tf_keras/src/utils/conv_utils.py`) and Keras 3
    (`keras/src/backend/common/backend_utils.py`, `_get_output_shape_given_tf_padding`)
    agree: without output_padding, `valid` gives `(n-1)*s + max(k_eff, s)` and
    `same` gives `n*s`; with it, `(n-1)*s + k_eff + op` resp. `(n-1)*s + k_eff%2 + op`.
    """
    k = effective_size(kernel, dilation)
    if padding == "valid":
        extra = max(k, stride) - k if output_padding is None else output_padding
        return (size - 1) * stride + k + extra
    if output_padding is None:
        return size * stride
    return (size - 1) * stride + k % 2 + output_padding


def transposed_padding(x, kernel, strides, dilation, padding, output_padding):
    """(output lengths, padding pairs) of the convolution a transposed conv is the adjoint of.

    That convolution maps the `n_out`-long output back to x's length, padding
    `before` by its own `same` rule in front; behind, whatever makes its last
    window end exactly at the padded axis' end (negative: the trailing outputs
    no input reached, e.g. from output_padding, are cropped).
    """
    outputs, pads = [], []
    for n, k, s, d, op in zip(x.shape[1:-1], kernel.shape, strides, dilation, output_padding):
        n_out = transposed_length(n, k, s, d, padding, op)
        before = padding_amounts(n_out, k, s, d, padding)[0]
        outputs.append(n_out)
        pads.append((before, (n - 1) * s + effective_size(k, d) - before - n_out))
    return outputs, pads


def transpose_correlate(x, kernel, strides, dilation, padding, output_padding):
    """Keras' transposed convolution of channels-last `x` with `kernel` (*k, out, in).

    It is the input gradient of the convolution with `kernel` read as
    (*k, in=out, out=in): output `p` receives `x[i] * kernel[t]` wherever
    `i*s + t*d == p + before`, `before` being that convolution's padding.
    """
    outputs, pads = transposed_padding(x, kernel, strides, dilation, padding, output_padding)
    before = [b for b, _ in pads]
    return correlate_input_grad(x, kernel, outputs, strides, dilation, before)


def pad_or_crop(x, pads):
    """Zero-pad the spatial axes of a channels-last array; negative amounts crop instead."""
    crop = tuple(slice(max(-b, 0), x.shape[i + 1] - max(-a, 0)) for i, (b, a) in enumerate(pads))
    x = x[(slice(None), *crop)]
    return pad_spatial(x, [(max(b, 0), max(a, 0)) for b, a in pads])


# -- the layer classes ---------------------------------------------------------


class _InputOptional:
    """`backward(dz, need_input=True)` with a `weights_only(dz)` variant. A function
    attribute closing over its own function would be a reference cycle, which only the
    garbage collector frees, and with it the forward's kept patch matrix."""

    def __init__(self, backward):
        self.backward = backward

    def __call__(self, dz, need_input=True):
        return self.backward(dz, need_input)

    def weights_only(self, dz):
        return self.backward(dz, need_input=False)


class _Convolution(Layer):
    """What every convolution layer reads from its config and does around the core.

    Each class defines only `convolve_vjp`: its bias-free, activation-free
    result on a channels-last input and that result's backward. Bias and
    activation come after, in the layer's own data format, as in Keras (a
    channels_first softmax runs along the last axis, the width).

    Keras 2 configs carry keys a class does not use (e.g. `groups` on
    DepthwiseConv2D); they are ignored.
    """

    rank = 2

    def setup(self, config):
        r = self.rank
        self.kernel_size = as_tuple(config["kernel_size"], r)
        self.strides = as_tuple(config.get("strides", 1), r)
        self.dilation = as_tuple(config.get("dilation_rate", 1), r)
        self.padding = str(config.get("padding", "valid")).lower()
        self.data_format = data_format(config)
        self.use_bias = bool(config.get("use_bias", True))
        self.activation = activations.resolve(config.get("activation"), self.context.keras_major)
        self.setup_more(config)

    def setup_more(self, config):
        """Options beyond the shared ones."""

    @property
    def window(self):
        """(strides, dilation, padding), the arguments every correlation takes."""
        return self.strides, self.dilation, self.padding

    def channels(self, input_shape):
        return input_shape[1] if self.data_format == "channels_first" else input_shape[-1]

    def call(self, x):
        return activations.apply(self.activation, self.biased(x))

    def biased(self, x):
        """The convolution plus bias in the layer's data format (forward only)."""
        return self.biased_vjp(x)[0]

    def vjp(self, x, training=False, noise=None):
        z, backward_z = self.biased_vjp(x)
        y, backward = with_activation(self.activation, z, backward_z)

        def weights_only(d_output):
            return backward_z.weights_only(activations.backward(self.activation, z, y, d_output))

        # The backprop walk calls `weights_only` where nothing needs dL/dx (a model input).
        backward.weights_only = weights_only
        return y, backward

    def biased_vjp(self, x):
        """The convolution plus bias in the layer's data format, and its backward
        (with a `weights_only` variant that skips the input gradient)."""
        y, backward_y = self.convolve_vjp(to_channels_last(x, self.data_format))
        if self.use_bias:  # in place: y is this call's own new array
            threads.elementwise(np.add, y, y, self.w["bias"].astype(y.dtype, copy=False))

        def backward(dz, need_input=True):
            dy = to_channels_last(dz, self.data_format)
            dx, grads = backward_y(dy, need_input)
            if self.use_bias:
                grads["bias"] = dy.sum(axis=tuple(range(dy.ndim - 1)))
            return (None if dx is None else from_channels_last(dx, self.data_format)), grads

        return from_channels_last(y, self.data_format), _InputOptional(backward)

    def convolve_vjp(self, x):
        """(bias-free result, backward) on a channels-last `x`;
        backward(dy, need_input=True) -> (dx, or None without need_input; grads)."""
        raise NotImplementedError


class _Conv(_Convolution):
    def setup_more(self, config):
        self.filters = int(config["filters"])
        self.groups = int(config.get("groups") or 1)

    def weight_shapes(self, input_shape):
        kernel = (*self.kernel_size, self.channels(input_shape) // self.groups, self.filters)
        return [("kernel", kernel)] + ([("bias", (self.filters,))] if self.use_bias else [])

    def biased(self, x):
        x = to_channels_last(x, self.data_format)
        if self.use_bias:
            y = correlate_biased(x, self.w["kernel"], self.w["bias"], *self.window, self.groups)
        else:
            y = correlate(x, self.w["kernel"], *self.window, self.groups)
        return from_channels_last(y, self.data_format)

    def convolve_vjp(self, x):
        y, backward = correlate_vjp(x, self.w["kernel"], *self.window, self.groups)

        def backward_named(dy, need_input=True):
            dx, d_kernel = backward(dy, need_input)
            return dx, {"kernel": d_kernel}

        return y, backward_named


class Conv1D(_Conv):
    rank = 1


class Conv2D(_Conv):
    rank = 2


class Conv3D(_Conv):
    rank = 3


class _DepthwiseConv(_Convolution):
    def setup_more(self, config):
        self.multiplier = int(config.get("depth_multiplier", 1))

    def weight_shapes(self, input_shape):
        channels = self.channels(input_shape)
        kernel = (*self.kernel_size, channels, self.multiplier)
        bias = [("bias", (channels * self.multiplier,))] if self.use_bias else []
        return [("depthwise_kernel", kernel), *bias]

    def convolve_vjp(self, x):
        """The grouped correlation with one group per input channel."""
        kernel = self.w["depthwise_kernel"]
        channels, multiplier = kernel.shape[-2:]
        grouped = kernel.reshape(*kernel.shape[:-2], 1, channels * multiplier)
        y, backward = correlate_vjp(x, grouped, *self.window, groups=channels)

        def backward_named(dy, need_input=True):
            dx, d_grouped = backward(dy, need_input)
            return dx, {"depthwise_kernel": d_grouped.reshape(kernel.shape)}

        return y, backward_named


class DepthwiseConv1D(_DepthwiseConv):
    rank = 1


class DepthwiseConv2D(_DepthwiseConv):
    rank = 2


class _SeparableConv(_DepthwiseConv):
    """Depthwise (with the layer's strides, padding, dilation), then a 1x1 conv, then bias."""

    def setup_more(self, config):
        super().setup_more(config)
        self.filters = int(config["filters"])

    def weight_shapes(self, input_shape):
        depth = self.channels(input_shape) * self.multiplier
        depthwise_kernel = super().weight_shapes(input_shape)[0]
        pointwise = ("pointwise_kernel", (*(1,) * self.rank, depth, self.filters))
        bias = [("bias", (self.filters,))] if self.use_bias else []
        return [depthwise_kernel, pointwise, *bias]

    def convolve_vjp(self, x):
        """Depthwise, then the pointwise 1x1 convolution."""
        y, depthwise_backward = super().convolve_vjp(x)
        unit = (1,) * self.rank
        z, pointwise_backward = correlate_vjp(y, self.w["pointwise_kernel"], unit, unit, "valid")

        def backward(dz, need_input=True):
            dy, d_pointwise = pointwise_backward(dz)
            dx, grads = depthwise_backward(dy, need_input)
            return dx, {**grads, "pointwise_kernel": d_pointwise}

        return z, backward


class SeparableConv1D(_SeparableConv):
    rank = 1


class SeparableConv2D(_SeparableConv):
    rank = 2


class _ConvTranspose(_Convolution):
    def setup_more(self, config):
        self.filters = int(config["filters"])
        output_padding = config.get("output_padding")
        self.output_padding = (
            (None,) * self.rank if output_padding is None else as_tuple(output_padding, self.rank)
        )

    def weight_shapes(self, input_shape):
        kernel = (*self.kernel_size, self.filters, self.channels(input_shape))
        return [("kernel", kernel)] + ([("bias", (self.filters,))] if self.use_bias else [])

    def convolve_vjp(self, x):
        """The adjoint of a convolution, so its backward is that convolution, forward.

        dx correlates the (padded) dy with the kernel at the layer's strides;
        the kernel gradient correlates the same padded dy with x.
        """
        kernel = self.w["kernel"]
        args = (self.strides, self.dilation, self.padding, self.output_padding)
        y = transpose_correlate(x, kernel, *args)

        def backward(dy, need_input=True):
            padded = pad_or_crop(dy, transposed_padding(x, kernel, *args)[1])
            conv = (self.strides, self.dilation, "valid")
            dx = correlate(padded, kernel, *conv) if need_input else None
            return dx, {"kernel": correlate_kernel_grad(padded, x, kernel.shape, *conv)}

        return y, backward


class Conv1DTranspose(_ConvTranspose):
    rank = 1


class Conv2DTranspose(_ConvTranspose):
    rank = 2


class Conv3DTranspose(_ConvTranspose):
    """Keras 2's Conv3DTranspose accepts `dilation_rate` but never uses it.

    tf_keras/src/layers/convolutional/conv3d_transpose.py passes no dilation to
    `deconv_output_length` or `tf.nn.conv3d_transpose` (and drops it from
    `get_config`), so a Keras 2 layer is undilated whatever its config says.
    """

    rank = 3

    def setup_more(self, config):
        super().setup_more(config)
        if self.context.keras_major < 3:
            self.dilation = (1,) * self.rank


LAYERS = (
    Conv1D,
    Conv2D,
    Conv3D,
    DepthwiseConv1D,
    DepthwiseConv2D,
    SeparableConv1D,
    SeparableConv2D,
    Conv1DTranspose,
    Conv2DTranspose,
    Conv3DTranspose,
)
