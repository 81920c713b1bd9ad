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
"""

from __future__ import annotations

import numpy as np

from ..activations import _c
from ..base import Layer


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
    y = (x - mean) * inv
    if beta is not None:
        y = y + beta
    return y.astype(x.dtype, copy=False)


class BatchNormalization(Layer):
    """Inference-mode batch normalization with the stored moving statistics.

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

    def call(self, x):
        axes = positive(self.axes, x.ndim)
        shape = [x.shape[i] if i in axes else 1 for i in range(x.ndim)]
        mean, variance, gamma, beta = (
            reshaped(self.w, name, shape)
            for name in ("moving_mean", "moving_variance", "gamma", "beta")
        )
        return normalize(x, mean, variance, self.epsilon, gamma, beta)


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

    def call(self, x):
        axes = positive(self.axes, x.ndim)
        gamma = broadcast_param(self.w.get("gamma"), axes, x.ndim)
        beta = broadcast_param(self.w.get("beta"), axes, x.ndim)
        mean, variance = moments(x, axes)
        if self.rms_scaling:
            y = x * (_c(x, 1.0) / np.sqrt(variance + _c(x, self.epsilon)))
            return y if gamma is None else y * gamma
        return normalize(x, mean, variance, self.epsilon, gamma, beta)


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
        axis = self.axis % x.ndim
        split = self.group_split(x.shape[axis])
        grouped = x.reshape(x.shape[:axis] + split + x.shape[axis + 1 :])
        reduce = [i for i in range(1, grouped.ndim) if i != axis]
        mean, variance = moments(grouped, reduce)
        shape = [1] * grouped.ndim
        shape[axis : axis + 2] = split
        gamma, beta = reshaped(self.w, "gamma", shape), reshaped(self.w, "beta", shape)
        y = normalize(grouped, mean, variance, self.epsilon, gamma, beta)
        return y.reshape(x.shape)


class UnitNormalization(Layer):
    """`x / ||x||_2` over `axis`; the two Keras versions guard tiny norms differently.

    Keras 3 caps the inverse norm at 1e12 (`ops.normalize`, epsilon 1e-12);
    tf_keras floors the *squared* norm at 1e-12 (`tf.linalg.l2_normalize`),
    i.e. caps the inverse norm at 1e6.
    """

    supports_masking = True

    def setup(self, config):
        self.axes = axis_list(config.get("axis", -1))

    def call(self, x):
        square_sum = np.sum(np.square(x), axis=tuple(self.axes), keepdims=True)
        if self.context.keras_major >= 3:
            with np.errstate(divide="ignore"):
                inv_norm = np.minimum(_c(x, 1.0) / np.sqrt(square_sum), _c(x, 1e12))
        else:
            inv_norm = _c(x, 1.0) / np.sqrt(np.maximum(square_sum, _c(x, 1e-12)))
        return x * inv_norm


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

    def call(self, x):
        mean_square = np.mean(np.square(x), axis=tuple(self.axes), keepdims=True)
        inv_rms = _c(x, 1.0) / np.sqrt(mean_square + _c(x, self.epsilon))
        return x * inv_rms * self.w["scale"]


LAYERS = (
    BatchNormalization,
    LayerNormalization,
    GroupNormalization,
    UnitNormalization,
    RMSNormalization,
)
