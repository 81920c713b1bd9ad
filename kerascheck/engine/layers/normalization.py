"""Normalization layers: Batch, Layer, Group, Unit and RMS normalization.

All affine normalizations share one formula,
`(x - mean) * (gamma / sqrt(var + eps)) + beta`. TensorFlow's
`tf.nn.batch_normalization` (Keras 3, non-fused tf_keras) distributes it as
`x * inv + (beta - mean * inv)`, the fused kernels (tf_keras 4D/5D
BatchNormalization, trailing-axes LayerNormalization) subtract the mean first.
Both agree with Keras to 1-4 float32 ulps on ordinary inputs (neither order
wins everywhere; the fused NCHW kernel is matched exactly); subtracting first
is the one that stays accurate when |mean| >> std, so it is the one we use.

Parameters are broadcast the way Keras does it: by *reshaping* (not
transposing) the stored weight into a shape with 1s outside the normalized
axes. For axes given out of order (tf_keras keeps the config's order, Keras 3
sorts the raw values, so `[-1, 1]` stays `[-1, 1]`) that reinterprets the
weight's memory; reproducing it keeps us equal to what Keras computes.

Backward (`vjp`): with `xhat = (x - mean) / sqrt(var + eps)` and statistics
taken from `x` itself (BatchNormalization in training, Layer and Group
normalization) the input gradient goes through the statistics,
`dx = (dxhat - share * (sum(dxhat) + xhat * sum(dxhat * xhat))) / sqrt(var + eps)`,
`share` being d mean / dx (1/n, or mask / count for a masked mean); with
moving statistics (inference) they are constants: `dx = dxhat / sqrt(var + eps)`.
Parameter gradients are summed in the parameter's broadcast shape and
reshaped back, the inverse of the forward's reshape.
"""

from __future__ import annotations

import numpy as np

from .. import threads
from ..activations import _c
from ..base import Layer, frozen
from .core import _sum_to_shape


def axis_list(axis) -> list[int]:
    """Keras accepts an int or a list of ints for `axis`; Keras 2 configs store a list."""
    if isinstance(axis, (list, tuple)):
        return [int(a) for a in axis]
    return [int(axis)]


def positive(axes, ndim: int) -> list[int]:
    """Negative axes counted from the end, order kept (Keras' `validate_axis`)."""
    return [a % ndim for a in axes]


def broadcast_param(param, axes, ndim):
    """`param` reshaped to rank `ndim`, sizes at `axes` in order, 1 elsewhere (as Keras)."""
    if param is None or param.ndim == ndim:
        return param
    shape = [1] * ndim
    for axis, size in zip(axes, param.shape):
        shape[axis] = size
    return param.reshape(shape)


def reshaped(weights: dict, name: str, shape):
    """The named weight reshaped to `shape`, or None when the config leaves it out."""
    value = weights.get(name)
    return None if value is None else value.reshape(shape)


def moments(x, axes):
    """Mean and (biased, two-pass) variance over `axes`, kept as size-1 dims (tf.nn.moments)."""
    mean = np.mean(x, axis=tuple(axes), keepdims=True)
    variance = np.mean(np.square(x - mean), axis=tuple(axes), keepdims=True)
    return mean, variance


def normalize(x, mean, variance, epsilon, gamma=None, beta=None):
    """`(x - mean) / sqrt(variance + epsilon) * gamma + beta`, centering first (see above)."""
    inv = _c(x, 1.0) / np.sqrt(variance + _c(x, epsilon))
    if gamma is not None:
        inv = inv * gamma
    shape = np.broadcast_shapes(x.shape, mean.shape, inv.shape)
    y = np.empty(shape, np.result_type(x, mean, inv, *([] if beta is None else [beta])))
    threads.elementwise(_affine, y, x, mean, inv, beta)
    return y.astype(x.dtype, copy=False)


def _affine(x, mean, scale, offset, out):
    """`out = (x - mean) * scale + offset` (no offset when None), in place in `out`."""
    np.subtract(x, mean, out=out)
    out *= scale
    if offset is not None:
        out += offset


def normalize_vjp(x, mean, variance, epsilon, gamma=None, beta=None, share=None):
    """`normalize(...)` and its backward `dy -> (dx, d_gamma, d_beta)`.

    With `share` (d mean / d x), `mean` and `variance` are `x`'s own biased
    moments over the axes where they have size 1, and the input gradient flows
    through them; without, they are constants. Parameter gradients come in the
    parameters' broadcast shapes (None for an absent parameter).
    """
    y = normalize(x, mean, variance, epsilon, gamma, beta)

    def backward(dy):
        inv = _c(x, 1.0) / np.sqrt(variance + _c(x, epsilon))
        xhat = (x - mean) * inv
        d_gamma = None if gamma is None else _sum_to_shape(dy * xhat, gamma.shape)
        d_beta = None if beta is None else _sum_to_shape(dy, beta.shape)
        d_xhat = dy if gamma is None else dy * gamma
        if share is None:
            dx = d_xhat * inv
        else:
            d_mean = _sum_to_shape(d_xhat, mean.shape)
            d_spread = _sum_to_shape(d_xhat * xhat, mean.shape)
            dx = (d_xhat - share * (d_mean + xhat * d_spread)) * inv
        return dx.astype(x.dtype, copy=False), d_gamma, d_beta

    return y, backward


def batch_normalize_vjp(x, axes, epsilon, gamma=None, beta=None):
    """Training-mode normalization over `axes` with the batch's own moments, fused.

    The values of `moments` then `normalize_vjp(..., share=1/n)`, up to the
    order of float32 sums, in fewer passes over `x`: the centered `x - mean` is
    computed once, for the variance, the output and the backward; per-channel
    sums of products are `einsum` contractions (no product array); and the
    backward is one affine map per element, `dx = a*dy + b*(x - mean) + c`,
    whose per-channel `a, b, c` come from two sums. Returns
    `(y, backward, mean, variance)`; `backward(dy)` gives `(dx, d_gamma, d_beta)`
    in the parameters' broadcast shapes (None where absent).
    """
    axes = tuple(axes)
    shape = tuple(1 if i in axes else n for i, n in enumerate(x.shape))
    # One block of the batch per thread (threads.py); the blocks' partial sums add up.
    parts = threads.blocks(x.shape[0], x.size) if 0 in axes else [slice(None)]
    count = _c(x, x.size // int(np.prod(shape)))
    total = threads.block_sum(lambda part: _channel_sum(x[part], axes, shape), parts)
    mean = (total / count).astype(x.dtype, copy=False)
    centered = np.empty_like(x)

    def center(part):
        block = np.subtract(x[part], mean, out=centered[part])
        return _channel_dot(block, block, axes, shape)

    variance = threads.block_sum(center, parts) / count
    inv = _c(x, 1.0) / np.sqrt(variance + _c(x, epsilon))
    scale = inv if gamma is None else inv * gamma
    y = np.empty_like(x)

    def scale_shift(part):
        block = np.multiply(centered[part], scale, out=y[part])
        if beta is not None:
            block += beta

    threads.over_blocks(scale_shift, parts)

    def backward(dy):
        def sums(part):
            return (
                _channel_sum(dy[part], axes, shape),
                _channel_dot(dy[part], centered[part], axes, shape),
            )

        sum_dy, sum_dy_centered = threads.block_sum(sums, parts)
        # dx = scale * (dy - mean(dy) - xhat * mean(dy * xhat)), xhat = centered * inv,
        # in four in-place passes over each block
        along_centered = inv * inv * (sum_dy_centered / count)
        mean_dy = sum_dy / count
        dx = np.empty_like(x)

        def combine(part):
            block = np.multiply(centered[part], along_centered, out=dx[part])
            block += mean_dy
            np.subtract(dy[part], block, out=block)
            block *= scale

        threads.over_blocks(combine, parts)
        d_gamma = None if gamma is None else sum_dy_centered * inv
        d_beta = None if beta is None else sum_dy
        return dx, d_gamma, d_beta

    return y, backward, mean, variance


def _channel_sum(a, axes, shape):
    """sum(a) over `axes`, kept as size-1 dims (`shape`); einsum's is faster than np.sum's."""
    letters, kept = _letters(a.ndim, axes)
    return np.einsum(f"{letters}->{kept}", a).reshape(shape)


def _channel_dot(a, b, axes, shape):
    """sum(a * b) over `axes`, kept as size-1 dims (`shape`), without the product array."""
    letters, kept = _letters(a.ndim, axes)
    return np.einsum(f"{letters},{letters}->{kept}", a, b).reshape(shape)


def _letters(ndim, axes):
    """einsum subscripts of an array of rank `ndim`, and of those not summed over `axes`."""
    letters = "abcdefghijklmnopqrstuvwxyz"[:ndim]
    return letters, "".join(letter for i, letter in enumerate(letters) if i not in axes)


def inverse_root_backward(dz, x, u, inv, axes, reduce=np.mean):
    """dL/dx of `z = x * inv`, `inv = 1 / sqrt(reduce(u**2) + eps)` over `axes`, from dL/dz.

    `u` is `x` (RMSNormalization; UnitNormalization with `reduce=np.sum`) or
    `x - mean(x)` (LayerNormalization's rms_scaling, a variance): either way
    d reduce(u**2) / dx is 2u (over n for a mean), since centered values sum to 0.
    """
    return inv * (dz - u * (inv * inv) * reduce(dz * x, axis=tuple(axes), keepdims=True))


def named_grads(layer: Layer, **grads) -> dict:
    """Broadcast-shape parameter gradients, reshaped like the stored weights (None dropped)."""
    return {name: g.reshape(layer.w[name].shape) for name, g in grads.items() if g is not None}


def compose_renorm(r, d, gamma, beta):
    """Batch renormalization's `(xhat * r + d) * gamma + beta` as one scale and offset."""
    scale = r if gamma is None else r * gamma
    offset = d if gamma is None else d * gamma
    return scale, (offset if beta is None else offset + beta)


class BatchNormalization(Layer):
    """Batch normalization: moving statistics at inference, the batch's own in training.

    tf_keras allows several axes (parameters then have the full input rank,
    with 1s elsewhere) and `virtual_batch_size` (one more 1 after the batch
    axis). `renorm` adds three statistics used only in training, stored after
    the moving variance.
    """

    supports_masking = True

    def setup(self, config):
        self.axes = axis_list(config.get("axis", -1))
        self.epsilon = float(config.get("epsilon", 1e-3))
        self.center = bool(config.get("center", True))
        self.scale = bool(config.get("scale", True))
        self.renorm = bool(config.get("renorm", False))
        self.renorm_clipping = dict(config.get("renorm_clipping") or {})
        self.virtual_batch_size = config.get("virtual_batch_size")
        if self.virtual_batch_size is not None:
            # tf_keras' build shifts its axes by one for the virtual-batch dimension and
            # saves them shifted (so tf_keras cannot reload such a file itself).
            self.axes = [a - 1 if a > 0 else a for a in self.axes]

    def weight_shapes(self, input_shape):
        ndim = len(input_shape)
        axes = positive(self.axes, ndim)
        if len(axes) == 1 and self.virtual_batch_size is None:
            shape = (input_shape[axes[0]],)
        else:
            shape = [input_shape[i] if i in axes else 1 for i in range(ndim)]
            if self.virtual_batch_size is not None:
                shape.insert(1, 1)
            shape = tuple(shape)
        names = ["gamma"] * self.scale + ["beta"] * self.center
        names += ["moving_mean", "moving_variance"]
        names += ["moving_stddev", "renorm_mean", "renorm_stddev"] * self.renorm
        return [(name, shape) for name in names]

    def call(self, x, mask=None):
        # A mask changes only the training-mode batch statistics (`vjp`).
        mean, variance, gamma, beta = self.params(
            x.shape, "moving_mean", "moving_variance", "gamma", "beta"
        )
        return normalize(x, mean, variance, self.epsilon, gamma, beta)

    def params(self, shape, *names):
        """The named weights with 1s outside the normalized axes, for an input of `shape`."""
        axes = positive(self.axes, len(shape))
        broadcast = [shape[i] if i in axes else 1 for i in range(len(shape))]
        return [reshaped(self.w, name, broadcast) for name in names]

    def vjp(self, x, training=False, noise=None, mask=None):
        # Keras 3 (`training and self.trainable`) and tf_keras (`_get_training_value`)
        # both normalize a layer saved with `trainable: false` with its moving statistics.
        if training and not frozen(self):
            return self.training_vjp(x, mask)
        mean, variance, gamma, beta = self.params(
            x.shape, "moving_mean", "moving_variance", "gamma", "beta"
        )
        y, backward = normalize_vjp(x, mean, variance, self.epsilon, gamma, beta)

        def inference_backward(d_output):
            dx, d_gamma, d_beta = backward(d_output)
            return dx, named_grads(self, gamma=d_gamma, beta=d_beta)

        inference_backward.batch_mean = inference_backward.batch_variance = None
        return y, inference_backward

    def training_vjp(self, x, mask):
        """Normalize with the batch's mean and biased variance, and differentiate through them.

        The backward carries `batch_mean` and `batch_variance`, shaped like the
        moving statistics, for the moving-average update (tf_keras averages a
        ghost-batched layer's statistics over its virtual batches).
        """
        work, reduce = self.virtual_batches(x)
        gamma, beta = self.work_params(x.shape, "gamma", "beta")
        if self.plain_batch_statistics(x, mask, gamma, beta):
            y, fused, mean, variance = batch_normalize_vjp(x, reduce, self.epsilon, gamma, beta)

            def fused_backward(d_output):
                dx, d_gamma, d_beta = fused(d_output)
                return dx, named_grads(self, gamma=d_gamma, beta=d_beta)

            fused_backward.batch_mean = mean.reshape(self.w["moving_mean"].shape)
            fused_backward.batch_variance = variance.reshape(self.w["moving_mean"].shape)
            return y, fused_backward
        mean, variance, share = self.batch_moments(work, reduce, mask)
        batch_mean, batch_variance = mean, variance
        if self.virtual_batch_size is not None:
            batch_mean, batch_variance = (
                np.mean(m, axis=1, keepdims=True) for m in (mean, variance)
            )
        scale, offset, r, d = gamma, beta, None, None
        if self.renorm:
            r, d = self.renorm_correction(x.shape, batch_mean, batch_variance)
            scale, offset = compose_renorm(r, d, gamma, beta)
        y, backward = normalize_vjp(work, mean, variance, self.epsilon, scale, offset, share)

        def training_backward(d_output):
            dx, d_scale, d_offset = backward(d_output.reshape(work.shape))
            if self.renorm:  # r and d are stop_gradient constants in both Keras versions
                d_scale = None if gamma is None else r * d_scale + d * d_offset
                d_offset = None if beta is None else d_offset
            return dx.reshape(x.shape), named_grads(self, gamma=d_scale, beta=d_offset)

        statistics_shape = self.w["moving_mean"].shape
        training_backward.batch_mean = batch_mean.reshape(statistics_shape)
        training_backward.batch_variance = batch_variance.reshape(statistics_shape)
        return y.reshape(x.shape), training_backward

    def plain_batch_statistics(self, x, mask, gamma, beta):
        """Whether `batch_normalize_vjp` applies: unmasked (or fused in tf_keras, which
        ignores the mask) plain batch statistics, with everything in x's float dtype."""
        return (
            (mask is None or self.fused_in_tf_keras(x.ndim))
            and not self.renorm
            and self.virtual_batch_size is None
            and x.dtype.kind == "f"
            and all(p is None or p.dtype == x.dtype for p in (gamma, beta))
        )

    def virtual_batches(self, x):
        """`x` as the statistics see it, and the axes they reduce.

        tf_keras' ghost batches view `x` as `(virtual_batch_size, -1, ...)` and
        reduce axis 0 but not axis 1, so virtual batch j holds the samples
        `j, j + B/v, j + 2B/v, ...` (a reshape, not consecutive slices).
        """
        ndim = x.ndim
        reduce = [i for i in range(ndim) if i not in positive(self.axes, ndim)]
        if self.virtual_batch_size is None:
            return x, reduce
        size = int(self.virtual_batch_size)
        if x.shape[0] % size:
            raise self.error(f"batch size {x.shape[0]} is not a multiple of {size}")
        return x.reshape(size, -1, *x.shape[1:]), [0] + [a + 1 for a in reduce if a > 0]

    def work_params(self, shape, *names):
        """`params` for the array `virtual_batches` returns (a 1 inserted after the batch)."""
        values = self.params(shape, *names)
        if self.virtual_batch_size is None:
            return values
        return [None if v is None else np.expand_dims(v, 1) for v in values]

    def batch_moments(self, x, reduce, mask):
        """Batch mean and biased variance (dims kept) and d mean / d x.

        With a mask, Keras 3 divides the masked sums by `count + 1e-7`
        (`keras.config.epsilon()`), tf_keras uses `tf.nn.weighted_moments`
        (`div_no_nan` by the count); tf_keras' fused 4D/5D kernel ignores the mask.
        """
        if mask is None or self.fused_in_tf_keras(x.ndim):
            mean, variance = moments(x, reduce)
            return mean, variance, _c(x, mean.size / x.size)
        if self.virtual_batch_size is not None:
            raise self.error("a mask with `virtual_batch_size` is not supported")
        keep = np.broadcast_to(np.expand_dims(np.asarray(mask, dtype=bool), -1), x.shape)
        count = np.sum(keep, axis=tuple(reduce), keepdims=True, dtype=x.dtype)
        if self.context.keras_major >= 3:
            count = count + _c(x, 1e-7)
        zero = np.zeros((), dtype=x.dtype)

        def masked_mean(values):
            total = np.sum(np.where(keep, values, zero), axis=tuple(reduce), keepdims=True)
            return np.divide(total, count, out=np.zeros_like(total), where=count > 0)

        mean = masked_mean(x)
        variance = masked_mean(np.square(x - mean))
        share = np.divide(keep, count, out=np.zeros(x.shape, x.dtype), where=count > 0)
        return mean, variance, share

    def fused_in_tf_keras(self, ndim):
        """tf_keras' fused kernel: 4D/5D input, one channel axis first or last, no renorm."""
        axes = positive(self.axes, ndim)
        return (
            self.context.keras_major < 3
            and ndim in (4, 5)
            and len(axes) == 1
            and axes[0] in (1, ndim - 1)
            and not self.renorm
            and self.virtual_batch_size is None
        )

    def renorm_correction(self, shape, mean, variance):
        """Batch renormalization's `r` and `d`, clipped as `renorm_clipping` says (both Keras)."""
        renorm_mean, renorm_stddev = self.work_params(shape, "renorm_mean", "renorm_stddev")
        # Both Keras floor the renorm stddev at sqrt(epsilon) ("avoid divide by zero").
        renorm_stddev = np.maximum(renorm_stddev, np.sqrt(_c(mean, self.epsilon)))
        r = np.sqrt(variance + _c(mean, self.epsilon)) / renorm_stddev
        d = (mean - renorm_mean) / renorm_stddev
        clip = self.renorm_clipping
        if clip.get("rmin") is not None:
            r = np.maximum(r, _c(r, clip["rmin"]))
        if clip.get("rmax") is not None:
            r = np.minimum(r, _c(r, clip["rmax"]))
        if clip.get("dmax") is not None:
            d = np.clip(d, _c(d, -clip["dmax"]), _c(d, clip["dmax"]))
        return r, d


class LayerNormalization(Layer):
    """Per-example normalization over `axis` (one or several axes, nothing else).

    Keras 3's deprecated `rms_scaling=True` divides by the standard deviation
    *without* subtracting the mean and has no beta (keras/src/ops/nn.py,
    `_layer_normalization`).
    """

    supports_masking = True

    def setup(self, config):
        axes = axis_list(config.get("axis", -1))
        # Keras 3 sorts the raw values (negatives first); tf_keras keeps the given order.
        self.axes = sorted(axes) if self.context.keras_major >= 3 else axes
        self.epsilon = float(config.get("epsilon", 1e-3))
        self.rms_scaling = bool(config.get("rms_scaling", False))
        self.scale = bool(config.get("scale", True)) or self.rms_scaling
        self.center = bool(config.get("center", True)) and not self.rms_scaling

    def weight_shapes(self, input_shape):
        axes = positive(self.axes, len(input_shape))
        shape = tuple(input_shape[a] for a in axes)
        names = ["gamma"] * self.scale + ["beta"] * self.center
        return [(name, shape) for name in names]

    def params(self, x):
        axes = positive(self.axes, x.ndim)
        gamma = broadcast_param(self.w.get("gamma"), axes, x.ndim)
        beta = broadcast_param(self.w.get("beta"), axes, x.ndim)
        return axes, gamma, beta

    def call(self, x):
        axes, gamma, beta = self.params(x)
        mean, variance = moments(x, axes)
        if self.rms_scaling:
            y = x * (_c(x, 1.0) / np.sqrt(variance + _c(x, self.epsilon)))
            return y if gamma is None else y * gamma
        return normalize(x, mean, variance, self.epsilon, gamma, beta)

    def vjp(self, x, training=False, noise=None):
        if self.rms_scaling:
            return self.rms_scaling_vjp(x)
        axes, gamma, beta = self.params(x)
        mean, variance = moments(x, axes)
        share = _c(x, mean.size / x.size)
        y, backward = normalize_vjp(x, mean, variance, self.epsilon, gamma, beta, share)

        def layer_norm_backward(d_output):
            dx, d_gamma, d_beta = backward(d_output)
            return dx, named_grads(self, gamma=d_gamma, beta=d_beta)

        return y, layer_norm_backward

    def rms_scaling_vjp(self, x):
        """`x / sqrt(var + eps) * gamma`: the variance's gradient, no mean subtracted from x."""
        axes, gamma, _ = self.params(x)
        mean, variance = moments(x, axes)
        inv = _c(x, 1.0) / np.sqrt(variance + _c(x, self.epsilon))

        def backward(dy):
            dz = dy if gamma is None else dy * gamma
            dx = inverse_root_backward(dz, x, x - mean, inv, axes)
            d_gamma = None if gamma is None else _sum_to_shape(dy * x * inv, gamma.shape)
            return dx.astype(x.dtype, copy=False), named_grads(self, gamma=d_gamma)

        return self.call(x), backward


class GroupNormalization(Layer):
    """Channels along `axis` split into `groups` contiguous groups, each normalized per example."""

    supports_masking = True

    def setup(self, config):
        self.groups = int(config.get("groups", 32))
        self.axis = int(config.get("axis", -1))
        self.epsilon = float(config.get("epsilon", 1e-3))
        self.center = bool(config.get("center", True))
        self.scale = bool(config.get("scale", True))

    def group_split(self, channels: int) -> tuple[int, int]:
        """(groups, channels per group); `groups=-1` means one channel per group."""
        groups = channels if self.groups == -1 else self.groups
        if groups <= 0 or channels % groups:
            raise self.error(f"{channels} channels do not split into {groups} groups")
        return groups, channels // groups

    def weight_shapes(self, input_shape):
        channels = input_shape[self.axis]
        self.group_split(channels)
        names = ["gamma"] * self.scale + ["beta"] * self.center
        return [(name, (channels,)) for name in names]

    def call(self, x):
        return self.vjp(x)[0]

    def vjp(self, x, training=False, noise=None):
        axis = self.axis % x.ndim
        split = self.group_split(x.shape[axis])
        grouped = x.reshape(x.shape[:axis] + split + x.shape[axis + 1 :])
        reduce = [i for i in range(1, grouped.ndim) if i != axis]
        mean, variance = moments(grouped, reduce)
        shape = [1] * grouped.ndim
        shape[axis : axis + 2] = split
        gamma, beta = reshaped(self.w, "gamma", shape), reshaped(self.w, "beta", shape)
        share = _c(x, mean.size / x.size)
        y, backward = normalize_vjp(grouped, mean, variance, self.epsilon, gamma, beta, share)

        def group_norm_backward(d_output):
            dx, d_gamma, d_beta = backward(d_output.reshape(grouped.shape))
            return dx.reshape(x.shape), named_grads(self, gamma=d_gamma, beta=d_beta)

        return y.reshape(x.shape), group_norm_backward


class UnitNormalization(Layer):
    """`x / ||x||_2` over `axis`; the two Keras versions guard tiny norms differently.

    Keras 3 caps the inverse norm at 1e12 (`ops.normalize`, epsilon 1e-12);
    tf_keras floors the *squared* norm at 1e-12 (`tf.linalg.l2_normalize`),
    i.e. caps the inverse norm at 1e6.
    """

    supports_masking = True

    def setup(self, config):
        self.axes = axis_list(config.get("axis", -1))

    def inverse_norm(self, x):
        """`1 / ||x||` with each Keras' guard, and where the guard did not bite."""
        square_sum = np.sum(np.square(x), axis=tuple(self.axes), keepdims=True)
        if self.context.keras_major >= 3:
            with np.errstate(divide="ignore"):
                raw = _c(x, 1.0) / np.sqrt(square_sum)
            # tf.minimum's gradient goes to its first argument on ties.
            return np.minimum(raw, _c(x, 1e12)), raw <= _c(x, 1e12)
        floored = np.maximum(square_sum, _c(x, 1e-12))
        return _c(x, 1.0) / np.sqrt(floored), square_sum >= _c(x, 1e-12)

    def call(self, x):
        return x * self.inverse_norm(x)[0]

    def vjp(self, x, training=False, noise=None):
        inv, through_norm = self.inverse_norm(x)

        def backward(dy):
            # A guarded norm is a constant: only its unguarded vectors see d||x||/dx.
            dx = np.where(
                through_norm, inverse_root_backward(dy, x, x, inv, self.axes, np.sum), dy * inv
            )
            return dx.astype(x.dtype, copy=False), {}

        return x * inv, backward


class RMSNormalization(Layer):
    """Keras 3: `x / sqrt(mean(x**2) + eps) * scale` over `axis`.

    The scale is multiplied with plain (trailing-axes) broadcasting, not
    reshaped onto `axis` (keras/src/ops/nn.py, `_rms_normalization`).
    """

    def setup(self, config):
        self.axes = sorted(axis_list(config.get("axis", -1)))
        self.epsilon = float(config.get("epsilon", 1e-6))

    def weight_shapes(self, input_shape):
        axes = positive(self.axes, len(input_shape))
        return [("scale", tuple(input_shape[a] for a in axes))]

    def inverse_rms(self, x):
        mean_square = np.mean(np.square(x), axis=tuple(self.axes), keepdims=True)
        return _c(x, 1.0) / np.sqrt(mean_square + _c(x, self.epsilon))

    def call(self, x):
        return x * self.inverse_rms(x) * self.w["scale"]

    def vjp(self, x, training=False, noise=None):
        scale = self.w["scale"]
        inv = self.inverse_rms(x)

        def backward(dy):
            dx = inverse_root_backward(dy * scale, x, x, inv, self.axes)
            d_scale = _sum_to_shape(dy * x * inv, scale.shape)
            return dx.astype(x.dtype, copy=False), {"scale": d_scale}

        return x * inv * scale, backward


LAYERS = (
    BatchNormalization,
    LayerNormalization,
    GroupNormalization,
    UnitNormalization,
    RMSNormalization,
)
