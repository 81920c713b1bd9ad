"""Convolution layers: Conv, DepthwiseConv, SeparableConv and ConvTranspose, 1D to 3D.

Every variant reduces to one core, `correlate`: pad, take a strided window
view (windows.py), and contract each group's windows with its kernel in one
batched matmul. Depthwise is the grouped case with one input channel per
group; separable is depthwise followed by a 1x1 matmul; transposed is a
stride-1 correlation of the zero-inserted input with the flipped kernel.
Layers work channels-last internally and move the channel axis at the edges.
"""

from __future__ import annotations

import math

import numpy as np

from .. import activations
from ..base import Layer, as_tuple, data_format
from ..windows import (
    effective_size,
    from_channels_last,
    pad_spatial,
    padding_amounts,
    to_channels_last,
    windows,
)

# -- the shared arithmetic ----------------------------------------------------


def correlate(x, kernel, strides, dilation, padding, groups=1):
    """Keras' (cross-)correlation of a channels-last `x` with `kernel` (*k, in/groups, out).

    `padding` is a Keras padding name or explicit (before, after) pairs.
    Output channel `g * out/groups + f` sees only input channels of group `g`,
    which is Keras' grouped-convolution layout (and, with one channel per
    group, the depthwise `c * depth_multiplier + m` order).
    """
    rank = kernel.ndim - 2
    ksize = kernel.shape[:rank]
    if isinstance(padding, str):
        padding = [
            padding_amounts(n, k, s, d, padding)
            for n, k, s, d in zip(x.shape[1:-1], ksize, strides, dilation)
        ]
    view = windows(pad_spatial(x, padding), ksize, strides, dilation)  # (B, *out, C, *k)
    lead = view.shape[: rank + 1]
    per_group, filters = kernel.shape[-2:]
    taps = per_group * math.prod(ksize)
    # (C, *k) is C-major, so channel g*per_group + c lands in row g of (groups, taps).
    patches = view.reshape(math.prod(lead), groups, taps).transpose(1, 0, 2)
    w = np.moveaxis(kernel, -2, 0).reshape(taps, groups, filters // groups).transpose(1, 0, 2)
    y = np.matmul(patches, w.astype(x.dtype, copy=False))  # (groups, N, filters/groups)
    return y.transpose(1, 0, 2).reshape(*lead, filters)


def depthwise(x, kernel, strides, dilation, padding):
    """Depthwise correlation; `kernel` is (*k, in, depth_multiplier), Keras' layout."""
    channels, multiplier = kernel.shape[-2:]
    grouped = kernel.reshape(*kernel.shape[:-2], 1, channels * multiplier)
    return correlate(x, grouped, strides, dilation, padding, groups=channels)


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


def transpose_correlate(x, kernel, strides, dilation, padding, output_padding):
    """TensorFlow's `conv_transpose` (the gradient of a convolution) on channels-last `x`.

    The output length `n_out` comes from Keras' formula; the forward
    convolution of `n_out` would pad `pad_before` (its `same` rule), so output
    `p` receives `x[i] * kernel[t]` wherever `i*s + t*d == p + pad_before`.
    Inserting `s-1` zeros between inputs and correlating with the flipped
    kernel computes exactly that sum at stride 1.
    """
    rank = kernel.ndim - 2
    ksize = kernel.shape[:rank]
    sizes = x.shape[1:-1]
    outputs = [
        transposed_length(n, k, s, d, padding, op)
        for n, k, s, d, op in zip(sizes, ksize, strides, dilation, output_padding)
    ]
    spread = np.zeros(
        (x.shape[0], *((n - 1) * s + 1 for n, s in zip(sizes, strides)), x.shape[-1]), x.dtype
    )
    spread[(slice(None), *(slice(None, None, s) for s in strides))] = x
    pads = []
    for n_out, length, k, s, d in zip(outputs, spread.shape[1:-1], ksize, strides, dilation):
        k_eff = effective_size(k, d)
        before = k_eff - 1 - padding_amounts(n_out, k, s, d, padding)[0]
        pads.append((before, n_out + k_eff - 1 - before - length))
    flipped = np.swapaxes(kernel[(slice(None, None, -1),) * rank], -1, -2)
    return correlate(pad_or_crop(spread, pads), flipped, (1,) * rank, dilation, "valid")


def pad_or_crop(x, pads):
    """Zero-pad the spatial axes of a channels-last array; negative amounts crop instead."""
    crop = tuple(slice(max(-b, 0), x.shape[i + 1] - max(-a, 0)) for i, (b, a) in enumerate(pads))
    x = x[(slice(None), *crop)]
    return pad_spatial(x, [(max(b, 0), max(a, 0)) for b, a in pads])


# -- the layer classes ---------------------------------------------------------


class _Convolution(Layer):
    """What every convolution layer reads from its config and does after the core.

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

    def channels(self, input_shape):
        return input_shape[1] if self.data_format == "channels_first" else input_shape[-1]

    def call(self, x):
        y = self.convolve(to_channels_last(x, self.data_format))
        if self.use_bias:
            y = y + self.w["bias"].astype(y.dtype, copy=False)
        return from_channels_last(self.activation(y), self.data_format)

    def convolve(self, x):
        """The bias-free, activation-free result on a channels-last input."""
        raise NotImplementedError


class _Conv(_Convolution):
    def setup_more(self, config):
        self.filters = int(config["filters"])
        self.groups = int(config.get("groups") or 1)

    def weight_shapes(self, input_shape):
        kernel = (*self.kernel_size, self.channels(input_shape) // self.groups, self.filters)
        return [("kernel", kernel)] + ([("bias", (self.filters,))] if self.use_bias else [])

    def convolve(self, x):
        return correlate(
            x, self.w["kernel"], self.strides, self.dilation, self.padding, self.groups
        )


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

    def convolve(self, x):
        kernel = self.w["depthwise_kernel"]
        return depthwise(x, kernel, self.strides, self.dilation, self.padding)


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

    def convolve(self, x):
        y = super().convolve(x)
        pointwise = self.w["pointwise_kernel"]
        return np.matmul(y, pointwise.reshape(pointwise.shape[-2:]).astype(y.dtype, copy=False))


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

    def convolve(self, x):
        return transpose_correlate(
            x, self.w["kernel"], self.strides, self.dilation, self.padding, self.output_padding
        )


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
