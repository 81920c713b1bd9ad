"""Layers that keras.applications architectures define for themselves.

They live in Keras' own modules (`keras.src.applications.*`), so saved models
of the zoo refer to them by class name; their arithmetic is read from those
modules.
"""

from __future__ import annotations

import numpy as np

from ..base import Layer


class CustomScaleLayer(Layer):
    """InceptionResNetV2's residual join: `inputs[0] + inputs[1] * scale`."""

    def setup(self, config):
        self.scale = float(config["scale"])

    def call(self, inputs):
        shortcut, residual = inputs
        return shortcut + residual * np.asarray(self.scale, dtype=residual.dtype)


class LayerScale(Layer):
    """ConvNeXt's learned per-channel scale `x * gamma`."""

    def setup(self, config):
        self.projection_dim = int(config["projection_dim"])

    def weight_shapes(self, input_shape):
        return [("gamma", (self.projection_dim,))]

    def call(self, x):
        return x * self.w["gamma"]


class StochasticDepth(Layer):
    """ConvNeXt's drop-path: the identity at inference."""

    def call(self, x):
        return x


LAYERS = (CustomScaleLayer, LayerScale, StochasticDepth)
