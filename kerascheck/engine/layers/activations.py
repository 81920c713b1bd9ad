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
    """Softmax over one axis or several (a list of axes normalizes them jointly).

    A `mask` (Keras passes the input's, or attention layers pass theirs) keeps
    masked positions out of the normalization, the way the file's Keras does:
    see `masked_softmax`.
    """

    supports_masking = True

    def setup(self, config):
        axis = config.get("axis", -1)
        self.axis = tuple(axis) if isinstance(axis, (list, tuple)) else int(axis)
        self.robust_masking = bool(config.get("robust_masking", False))

    def call(self, x, mask=None):
        return masked_softmax(x, mask, self.axis, self.context.keras_major, self.robust_masking)


def masked_softmax(x, mask, axis, keras_major: int, robust_masking: bool = False):
    """Keras' Softmax layer with a mask (1/True keeps), broadcast against `x`.

    Keras 3 replaces masked inputs by -1e9 (-3e4 in float16; a non-boolean mask
    keeps entries > 0.5) and then zeroes the masked outputs, so a fully masked
    slice is all zeros (keras/src/layers/activations/softmax.py). tf_keras adds
    `(1 - mask) * -1e9` (float16: its min / 2) and does not zero, so a fully
    masked slice stays a softmax of the shifted inputs; with `robust_masking`
    it replaces instead of adding (tf_keras/src/layers/activation/softmax.py).
    """
    if mask is None:
        return activations.softmax(x, axis=axis)
    mask = np.asarray(mask)
    if keras_major >= 3:
        negative = np.asarray(-3e4 if x.dtype == np.float16 else -1e9, dtype=x.dtype)
        keep = mask if mask.dtype == bool else mask > 0.5
        out = activations.softmax(np.where(keep, x, negative), axis=axis)
        return np.where(keep, out, np.zeros((), out.dtype))
    negative = np.asarray(
        np.finfo(np.float16).min / 2 if x.dtype == np.float16 else -1e9, dtype=x.dtype
    )
    if robust_masking:
        keep = mask if mask.dtype == bool else mask > 0.5
        return activations.softmax(np.where(keep, x, negative), axis=axis)
    adder = (np.asarray(1, dtype=x.dtype) - mask.astype(x.dtype)) * negative
    return activations.softmax(x + adder, axis=axis)


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
