"""Activation layers: ReLU, LeakyReLU, PReLU, ELU, Softmax, and Keras 3's `Gelu` op node."""

from __future__ import annotations

import numpy as np

from .. import activations
from ..base import Layer


class ReLU(Layer):
    supports_masking = True

    def setup(self, config):
        self.max_value = config.get("max_value")
        self.negative_slope = float(config.get("negative_slope") or 0.0)
        self.threshold = float(config.get("threshold") or 0.0)

    def call(self, x):
        return activations.relu(x, self.negative_slope, self.max_value, self.threshold)


class LeakyReLU(Layer):
    """Slope from `negative_slope` (Keras 3) or `alpha` (Keras 2); layer default 0.3."""

    supports_masking = True

    def setup(self, config):
        slope = config.get("negative_slope", config.get("alpha"))
        self.slope = 0.3 if slope is None else float(slope)

    def call(self, x):
        return activations.leaky_relu(x, self.slope)


class PReLU(Layer):
    """Learned slope `alpha`, shared (size 1) along `shared_axes`."""

    supports_masking = True

    def setup(self, config):
        shared = config.get("shared_axes")
        if isinstance(shared, int):
            shared = [shared]
        self.shared_axes = tuple(shared or ())

    def weight_shapes(self, input_shape):
        shape = list(input_shape[1:])
        for axis in self.shared_axes:
            shape[axis - 1] = 1
        return [("alpha", tuple(shape))]

    def call(self, x):
        zero = np.asarray(0, dtype=x.dtype)
        return np.maximum(x, zero) - self.w["alpha"] * np.maximum(-x, zero)


class ELU(Layer):
    supports_masking = True

    def setup(self, config):
        self.alpha = float(config.get("alpha", 1.0))

    def call(self, x):
        return activations.elu(x, self.alpha)


class Softmax(Layer):
    """Softmax over one axis or several (a list of axes normalizes them jointly)."""

    supports_masking = True

    def setup(self, config):
        axis = config.get("axis", -1)
        self.axis = tuple(axis) if isinstance(axis, (list, tuple)) else int(axis)

    def call(self, x):
        return activations.softmax(x, axis=self.axis)


class Gelu(Layer):
    """A `keras.ops.gelu(x, approximate=...)` call in a Keras 3 functional model.

    Keras cannot serialize `approximate=True` as an `activation=` value, so
    saved models carry it only as this operation node (module `keras.src.ops.nn`).
    """

    def setup(self, config):
        self.approximate = bool(config.get("approximate", True))

    def call(self, x):
        return activations.gelu(x, approximate=self.approximate)


LAYERS = (ReLU, LeakyReLU, PReLU, ELU, Softmax, Gelu)
