"""Activation layers: ReLU, LeakyReLU, PReLU, ELU, ThresholdedReLU, Softmax, and Keras 3's
`Gelu` op node.

Backward passes follow TensorFlow's choices at the kinks, which the layers'
Keras code decides by the ops it composes (both versions compose the same
ones): see `relu_slope`. ELU's derivative at 0 is `alpha` and PReLU's is 0.
"""

from __future__ import annotations

import numpy as np

from .. import activations, threads
from ..base import Layer
from .core import _sum_to_shape


def _scaled(y, slope):
    """(output, backward) of a layer whose input gradient is `slope * d_output`.

    `slope` may be a boolean mask (a 0/1 slope): multiplying by it gives the
    d_output's float dtype and is ~7x faster than building a float slope with
    `np.where` on scalars.
    """
    return y, lambda d_output: (_multiply(d_output, slope), {})


_multiply = threads.split_ufunc(np.multiply)


def relu_slope(x, negative_slope=0.0, max_value=None, threshold=0.0):
    """d relu(x) / dx for Keras' general relu, as TensorFlow differentiates Keras' ops.

    Keras (`activations.relu` in Keras 3, `backend.relu` in tf_keras) takes
    `leaky_relu` when only a slope is set (slope at 0 itself), `relu6` for
    `max_value=6` without threshold (0 at 0 and 6), and otherwise `where(x >
    threshold, x, 0)` (or `relu`), then `clip_by_value(., 0, max_value)`, which
    passes the gradient *at* the maximum too, minus `slope * relu(threshold - x)`.
    """
    if negative_slope != 0 and max_value is None and threshold == 0:
        return np.where(x > 0, np.ones((), x.dtype), np.asarray(negative_slope, x.dtype))
    if max_value is not None and float(max_value) == 6 and threshold == 0:
        passes = activations.inside(x, 0.0, 6.0)
    else:
        passes = x > np.asarray(threshold, x.dtype)
        if max_value is not None:
            passes &= x <= np.asarray(max_value, x.dtype)
    if negative_slope == 0:
        return passes  # a boolean 0/1 slope
    below = x < np.asarray(threshold, x.dtype)
    return passes.astype(x.dtype) + np.asarray(negative_slope, x.dtype) * below


class ReLU(Layer):
    supports_masking = True

    def setup(self, config):
        self.max_value = config.get("max_value")
        self.negative_slope = float(config.get("negative_slope") or 0.0)
        self.threshold = float(config.get("threshold") or 0.0)

    def call(self, x):
        return activations.relu(x, self.negative_slope, self.max_value, self.threshold)

    def writes_in_place(self) -> bool:
        """Whether `call_in_place` overwrites its input (`fusion`): a plain clip."""
        return self.negative_slope == 0 and self.threshold == 0

    def call_in_place(self, x):
        """`call(x)`, written over `x` where it can be."""
        if not self.writes_in_place() or x.dtype.kind != "f" or not x.flags.c_contiguous:
            return self.call(x)
        return activations.clip_in_place(x, 0.0, self.max_value)

    def vjp(self, x, training=False, noise=None):
        slope = relu_slope(x, self.negative_slope, self.max_value, self.threshold)
        return _scaled(self.call(x), slope)


class LeakyReLU(Layer):
    """Slope from `negative_slope` (Keras 3) or `alpha` (Keras 2); layer default 0.3."""

    supports_masking = True

    def setup(self, config):
        slope = config.get("negative_slope", config.get("alpha"))
        self.slope = 0.3 if slope is None else float(slope)

    def call(self, x):
        return activations.leaky_relu(x, self.slope)

    def vjp(self, x, training=False, noise=None):
        return _scaled(self.call(x), relu_slope(x, negative_slope=self.slope))


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

    def vjp(self, x, training=False, noise=None):
        alpha = self.w["alpha"]
        negative_part = np.maximum(-x, np.zeros((), x.dtype))
        # relu(x) - alpha * relu(-x): both relus pass nothing at 0.
        slope = (x > 0).astype(x.dtype) + alpha * (x < 0)

        def backward(d_output):
            d_alpha = _sum_to_shape(-d_output * negative_part, alpha.shape)
            return d_output * slope, {"alpha": d_alpha}

        return self.call(x), backward


class ELU(Layer):
    supports_masking = True

    def setup(self, config):
        self.alpha = float(config.get("alpha", 1.0))

    def call(self, x):
        return activations.elu(x, self.alpha)

    def vjp(self, x, training=False, noise=None):
        # Keras: `elu(x)` for alpha 1, else `where(x > 0, elu(x), alpha * elu(x))`; TF's
        # elu gradient is 1 at 0, so the slope at 0 is alpha.
        alpha = np.asarray(self.alpha, x.dtype)
        slope = np.where(x > 0, np.ones((), x.dtype), alpha * np.exp(np.minimum(x, 0)))
        return _scaled(self.call(x), slope)


class ThresholdedReLU(Layer):
    """`x * cast(x > theta, dtype)` (tf_keras, and Keras 3's `keras._legacy.layers`): the
    product's gradient, 1 strictly above theta and 0 at it (the comparison has none)."""

    supports_masking = True

    def setup(self, config):
        self.theta = float(config.get("theta", 1.0))

    def vjp(self, x, training=False, noise=None):
        passes = (x > np.asarray(self.theta, x.dtype)).astype(x.dtype)
        return _scaled(x * passes, passes)

    def call(self, x):
        return self.vjp(x)[0]


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

    def vjp(self, x, training=False, noise=None, mask=None):
        keras_major = self.context.keras_major
        y, backward_x = masked_softmax_vjp(x, mask, self.axis, keras_major, self.robust_masking)

        def backward(d_output):
            return backward_x(d_output), {}

        joint = isinstance(self.axis, tuple) and len(self.axis) > 1
        if not joint and not (mask is not None and keras_major >= 3):
            # Keras marks this output with the softmax's input (`_keras_logits`) for any
            # single axis, and `fit`'s cross-entropy then takes those logits over the
            # *last* axis, whatever the layer's axis. A joint softmax is computed as
            # `exp(x - logsumexp)` and Keras 3 zeroes masked outputs after the softmax:
            # both lose the mark.
            backward.pre_activation = lambda d_logits: (backward_x.from_logits(d_logits), {})
            backward.activation = activations.softmax
            backward.logits = backward_x.logits
        return y, backward


def masked_softmax(x, mask, axis, keras_major: int, robust_masking: bool = False):
    """Keras' Softmax layer with a mask (1/True keeps), broadcast against `x`.

    Keras 3 replaces masked inputs by -1e9 (-3e4 in float16; a non-boolean mask
    keeps entries > 0.5) and then zeroes the masked outputs, so a fully masked
    slice is all zeros (keras/src/layers/activations/softmax.py). tf_keras adds
    `(1 - mask) * -1e9` (float16: its min / 2) and does not zero, so a fully
    masked slice stays a softmax of the shifted inputs; with `robust_masking`
    it replaces instead of adding (tf_keras/src/layers/activation/softmax.py).
    """
    return masked_softmax_vjp(x, mask, axis, keras_major, robust_masking)[0]


def masked_softmax_vjp(x, mask, axis, keras_major: int, robust_masking: bool = False):
    """`masked_softmax` and its backward `d_output -> d_x`, which also carries the
    softmax's input (`logits`) and the step from its gradient to d_x (`from_logits`).

    Inputs Keras *replaces* get no gradient; where tf_keras *adds* the large
    negative, every input keeps its softmax gradient (nearly zero when masked,
    except in a fully masked slice, which stays a plain softmax). Keras 3's
    zeroing of masked outputs stops their upstream gradient.
    """
    keep = None
    if mask is None:
        z = x
    else:
        mask = np.asarray(mask)
        negative = np.asarray(_large_negative(x.dtype, keras_major), dtype=x.dtype)
        if keras_major >= 3 or robust_masking:
            keep = mask if mask.dtype == bool else mask > 0.5
            z = np.where(keep, x, negative)
        else:
            z = x + (np.asarray(1, dtype=x.dtype) - mask.astype(x.dtype)) * negative
    s = activations.softmax(z, axis=axis)
    zero = np.zeros((), s.dtype)
    zeroed = keep is not None and keras_major >= 3

    def from_logits(d_z):
        """d_x from the gradient with respect to the softmax's input `z`."""
        return d_z if keep is None else np.where(keep, d_z, zero)

    def backward(d_output):
        d_s = np.where(keep, d_output, zero) if zeroed else d_output
        return from_logits(activations._softmax_backward(z, s, d_s, axis=axis))

    backward.logits, backward.from_logits = z, from_logits
    return (np.where(keep, s, zero) if zeroed else s), backward


def _large_negative(dtype, keras_major):
    """What masked logits become: -1e9, or in float16 -3e4 (Keras 3) or half its minimum."""
    if dtype != np.float16:
        return -1e9
    return -3e4 if keras_major >= 3 else np.finfo(np.float16).min / 2


class Gelu(Layer):
    """A `keras.ops.gelu(x, approximate=...)` call in a Keras 3 functional model.

    Keras cannot serialize `approximate=True` as an `activation=` value, so
    saved models carry it only as this operation node (module `keras.src.ops.nn`).
    """

    def setup(self, config):
        self.approximate = bool(config.get("approximate", True))

    def call(self, x):
        return activations.gelu(x, approximate=self.approximate)

    def vjp(self, x, training=False, noise=None):
        y = self.call(x)
        return y, lambda d: (activations._gelu_backward(x, y, d, self.approximate), {})


LAYERS = (ReLU, LeakyReLU, PReLU, ELU, ThresholdedReLU, Softmax, Gelu)
