"""Core layers: Dense, EinsumDense, shape plumbing, and inference-time identities."""

from __future__ import annotations

import re

import numpy as np

from .. import activations
from ..base import Layer, data_format


class Dense(Layer):
    """`activation(x @ kernel + bias)`, contracting the last axis only (any rank)."""

    supports_masking = True

    def setup(self, config):
        self.units = int(config["units"])
        self.use_bias = bool(config.get("use_bias", True))
        self.activation = activations.resolve(config.get("activation"), self.context.keras_major)

    def weight_shapes(self, input_shape):
        shapes = [("kernel", (input_shape[-1], self.units))]
        if self.use_bias:
            shapes.append(("bias", (self.units,)))
        return shapes

    def call(self, x):
        y = np.matmul(x, self.w["kernel"])
        if self.use_bias:
            y = y + self.w["bias"]
        return self.activation(y)


class EinsumDense(Layer):
    """`activation(einsum(equation, x, kernel) + bias)`; shapes follow Keras' analysis."""

    def setup(self, config):
        self.equation = config["equation"]
        output_shape = config.get("output_shape")
        self.partial_output = (
            [output_shape] if isinstance(output_shape, int) else list(output_shape or [])
        )
        self.bias_axes = config.get("bias_axes")
        self.activation = activations.resolve(config.get("activation"), self.context.keras_major)

    def weight_shapes(self, input_shape):
        kernel, bias = einsum_weight_shapes(
            self.equation, self.bias_axes, tuple(input_shape), self.partial_output
        )
        shapes = [("kernel", kernel)]
        if bias is not None:
            shapes.append(("bias", bias))
        return shapes

    def call(self, x):
        y = np.einsum(self.equation, x, self.w["kernel"], optimize=True)
        if "bias" in self.w:
            y = y + self.w["bias"]
        return self.activation(y)


# Keras' three equation forms (after `...` -> `0`); the flag says the ellipsis is on the left.
EINSUM_FORMS = (
    (re.compile(r"([a-zA-Z]+),([a-zA-Z]+)->([a-zA-Z]+)$"), False),
    (re.compile(r"0([a-zA-Z]+),([a-zA-Z]+)->0([a-zA-Z]+)$"), True),
    (re.compile(r"([a-zA-Z]{2,})0,([a-zA-Z]+)->([a-zA-Z]+)0$"), False),
)


def split_einsum(equation):
    """(input, kernel, output) letter specs and whether `...` leads the input spec."""
    plain = equation.replace("...", "0")
    for pattern, left in EINSUM_FORMS:
        match = pattern.match(plain)
        if match:
            return (*match.groups(), left)
    raise ValueError(f"unsupported EinsumDense equation '{equation}'")


def einsum_weight_shapes(equation, bias_axes, input_shape, partial_output):
    """Kernel and bias shapes implied by an EinsumDense equation (Keras' own rules)."""
    in_spec, w_spec, out_spec, left = split_einsum(equation)
    elided = len(input_shape) - len(in_spec)
    output = [input_shape[0], *partial_output]
    if elided > 0 and left:
        for i in range(1, elided):
            output.insert(1, input_shape[i])
    elif elided > 0:
        output.extend(input_shape[len(input_shape) - elided :])
    if left:
        in_map = {d: i + elided - len(input_shape) for i, d in enumerate(in_spec)}
        out_map = {d: i + elided for i, d in enumerate(out_spec)}
    else:
        in_map = {d: i for i, d in enumerate(in_spec)}
        out_map = {d: i for i, d in enumerate(out_spec)}
    kernel = tuple(input_shape[in_map[d]] if d in in_map else output[out_map[d]] for d in w_spec)
    if bias_axes is None:
        return kernel, None
    first = min(out_spec.find(c) for c in bias_axes)
    bias = [output[out_map[c]] if c in bias_axes else 1 for c in out_spec[first:]]
    if not left:
        bias.extend([1] * max(elided, 0))
    return kernel, tuple(bias)


class Activation(Layer):
    supports_masking = True

    def setup(self, config):
        self.fn = activations.resolve(config.get("activation"), self.context.keras_major)

    def call(self, x):
        return self.fn(x)


class Identity(Layer):
    """Layers that are the identity at inference time."""

    supports_masking = True

    def call(self, x):
        return x


class Dropout(Identity):
    pass


class SpatialDropout1D(Identity):
    pass


class SpatialDropout2D(Identity):
    pass


class SpatialDropout3D(Identity):
    pass


class GaussianNoise(Identity):
    pass


class GaussianDropout(Identity):
    pass


class AlphaDropout(Identity):
    pass


class ActivityRegularization(Identity):
    pass


class Flatten(Layer):
    """Channels-first inputs are moved to channels-last first, as Keras does."""

    def setup(self, config):
        self.data_format = data_format(config)

    def call(self, x):
        if self.data_format == "channels_first" and x.ndim > 2:
            x = np.moveaxis(x, 1, -1)
        return x.reshape(x.shape[0], int(np.prod(x.shape[1:])))


class Reshape(Layer):
    def setup(self, config):
        self.target_shape = tuple(int(d) for d in config["target_shape"])

    def call(self, x):
        return x.reshape(x.shape[0], *self.target_shape)


class Permute(Layer):
    def setup(self, config):
        self.axes = (0, *(int(d) for d in config["dims"]))

    def call(self, x):
        return np.transpose(x, self.axes)


class RepeatVector(Layer):
    def setup(self, config):
        self.n = int(config["n"])

    def call(self, x):
        return np.repeat(x[:, None, :], self.n, axis=1)


def config_array(value):
    """A number or list from a config; Keras 3 writes NumPy arrays as `__numpy__` dicts."""
    if isinstance(value, dict) and value.get("class_name") == "__numpy__":
        return value["config"]["value"]
    return value


class Rescaling(Layer):
    """`x * scale + offset`; a list scale or offset applies per channel (last axis)."""

    supports_masking = True

    def setup(self, config):
        self.scale = config_array(config.get("scale", 1.0))
        self.offset = config_array(config.get("offset", 0.0))

    def call(self, x):
        scale = np.asarray(self.scale, dtype=x.dtype)
        offset = np.asarray(self.offset, dtype=x.dtype)
        return x * scale + offset


LAYERS = (
    Dense,
    EinsumDense,
    Activation,
    Identity,
    Dropout,
    SpatialDropout1D,
    SpatialDropout2D,
    SpatialDropout3D,
    GaussianNoise,
    GaussianDropout,
    AlphaDropout,
    ActivityRegularization,
    Flatten,
    Reshape,
    Permute,
    RepeatVector,
    Rescaling,
)
