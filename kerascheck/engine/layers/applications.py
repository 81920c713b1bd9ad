"""Layers that keras.applications architectures define for themselves.

They live in Keras' own modules (`keras.src.applications.*`), so saved models
of the zoo refer to them by class name; their arithmetic is read from those
modules.
"""

from __future__ import annotations

import numpy as np

from ..base import Layer
from .core import RandomNoise


class CustomScaleLayer(Layer):
    """InceptionResNetV2's residual join: `inputs[0] + inputs[1] * scale`."""

    def setup(self, config):
        self.scale = float(config["scale"])

    def call(self, inputs):
        shortcut, residual = inputs
        return shortcut + residual * np.asarray(self.scale, dtype=residual.dtype)

    def vjp(self, inputs, training=False, noise=None):
        scale = np.asarray(self.scale, dtype=inputs[1].dtype)
        return self.call(inputs), lambda d: ([d, d * scale], {})


class LayerScale(Layer):
    """ConvNeXt's learned per-channel scale `x * gamma`."""

    def setup(self, config):
        self.projection_dim = int(config["projection_dim"])

    def weight_shapes(self, input_shape):
        return [("gamma", (self.projection_dim,))]

    def call(self, x):
        return x * self.w["gamma"]

    def vjp(self, x, training=False, noise=None):
        gamma = self.w["gamma"]

        def backward(d_output):
            d_gamma = (d_output * x).reshape(-1, gamma.shape[0]).sum(axis=0)
            return d_output * gamma, {"gamma": d_gamma}

        return self.call(x), backward


class StochasticDepth(RandomNoise):
    """ConvNeXt's drop-path: the identity at inference.

    In training Keras keeps each *sample* with probability `1 - drop_path_rate`
    (`floor(keep + uniform)`, shape `(batch, 1, ...)`) and scales it by
    `1 / keep`: a dropout mask shared over all of a sample's elements. Its
    backward is `RandomNoise`'s with the mask Keras realized (`noise`); the
    engine's own draw (`--reference numpy`) is per sample too.
    """

    supports_masking = False  # a plain Layer in Keras, which stops masks

    def setup(self, config):
        self.rate = float(config.get("drop_path_rate") or 0.0)

    def draw(self, x):
        keep = np.random.default_rng(0).random((x.shape[0],) + (1,) * (x.ndim - 1)) >= self.rate
        return (keep / (1.0 - self.rate) if self.rate < 1 else keep * 0.0), 0.0


LAYERS = (CustomScaleLayer, LayerScale, StochasticDepth)
