"""Merge layers: element-wise combinations, Concatenate and Dot of a list of inputs.

Keras' merge base class (`keras/src/layers/merging/base_merge.py`, and the same
in tf_keras) broadcasts inputs of different ranks by inserting axes right
after the batch axis, not in front as NumPy would: `(b, 4)` with `(b, 3, 4)`
becomes `(b, 1, 4)` first. Element-wise layers fold their inputs left to
right, as Keras does, so float32 rounding follows the same order.

Backward: the fold is replayed in reverse, one `combine` at a time, and each
gradient is summed back over the axes its input was broadcast along (the
inserted axes included). Maximum and Minimum follow TensorFlow on ties: the
left operand of each step takes the whole gradient, so the earliest input wins.
"""

from __future__ import annotations

from functools import reduce
from itertools import accumulate

import numpy as np

from .. import threads
from ..base import Layer
from ..gather import CopiesElements
from .core import _sum_to_shape


def as_list(inputs) -> list:
    return list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]


def align_ranks(inputs: list) -> list:
    """Insert axes at position 1 until every input has the highest rank (Keras' rule)."""
    rank = max(x.ndim for x in inputs)
    return [x.reshape(x.shape[:1] + (1,) * (rank - x.ndim) + x.shape[1:]) for x in inputs]


class ElementwiseMerge(Layer):
    """Folds `combine` over the inputs after Keras' rank alignment."""

    supports_masking = True

    arity = None  # None: any number of inputs

    def call(self, inputs):
        inputs = self.checked(inputs)
        return self.finish(reduce(self.combine, align_ranks(inputs)), len(inputs))

    def vjp(self, inputs, training=False, noise=None):
        inputs = self.checked(inputs)
        aligned = align_ranks(inputs)
        partials = list(accumulate(aligned, self.combine))  # partials[i]: inputs 0..i folded
        count = len(inputs)

        def backward(d_output):
            d_partial = self.finish_backward(d_output, count)
            grads = [None] * count
            for i in range(count - 1, 0, -1):
                d_left, d_right = self.combine_backward(partials[i - 1], aligned[i], d_partial)
                grads[i] = _sum_to_shape(d_right, aligned[i].shape)
                d_partial = _sum_to_shape(d_left, partials[i - 1].shape)
            grads[0] = d_partial
            return [g.reshape(x.shape) for g, x in zip(grads, inputs)], {}

        return self.finish(partials[-1], count), backward

    def checked(self, inputs) -> list:
        inputs = as_list(inputs)
        if self.arity is not None and len(inputs) != self.arity:
            raise self.error(f"expected exactly {self.arity} inputs, received {len(inputs)}")
        return inputs

    def combine(self, a, b):
        raise NotImplementedError

    def combine_backward(self, a, b, d):
        """Gradients with respect to `a` and `b` of one `combine(a, b)` step, given `d`
        (broadcast shape; the caller sums them back to each operand's shape)."""
        raise NotImplementedError

    def compute_mask(self, inputs, mask):
        """A step is kept only where every masked input keeps it (Keras' base_merge)."""
        masks = [m for m in as_list(mask)] if mask is not None else []
        masks = [m for m in masks if m is not None]
        return np.logical_and.reduce(masks) if masks else None

    def finish(self, total, count):
        return total

    def finish_backward(self, d_output, count):
        return d_output


class Add(ElementwiseMerge):
    combine = staticmethod(threads.split_ufunc(np.add))

    def combine_backward(self, a, b, d):
        return d, d


class Subtract(ElementwiseMerge):
    arity = 2
    combine = staticmethod(threads.split_ufunc(np.subtract))

    def combine_backward(self, a, b, d):
        return d, -d


class Multiply(ElementwiseMerge):
    combine = staticmethod(threads.split_ufunc(np.multiply))

    def combine_backward(self, a, b, d):
        return d * b, d * a


def _select_backward(left_wins, d):
    """TensorFlow's Maximum/Minimum gradient: all to `a` where it wins or ties, else to `b`."""
    zero = np.zeros((), d.dtype)
    return np.where(left_wins, d, zero), np.where(left_wins, zero, d)


class Maximum(ElementwiseMerge):
    combine = staticmethod(threads.split_ufunc(np.maximum))

    def combine_backward(self, a, b, d):
        return _select_backward(a >= b, d)


class Minimum(ElementwiseMerge):
    combine = staticmethod(threads.split_ufunc(np.minimum))

    def combine_backward(self, a, b, d):
        return _select_backward(a <= b, d)


class Average(Add):
    """The sum, then one division by the count (not a running mean)."""

    def finish(self, total, count):
        return total / np.asarray(count, dtype=total.dtype)

    def finish_backward(self, d_output, count):
        return d_output / np.asarray(count, dtype=d_output.dtype)


class Concatenate(CopiesElements, Layer):
    supports_masking = True

    def setup(self, config):
        self.axis = int(config.get("axis", -1))

    def call(self, inputs):
        return np.concatenate(as_list(inputs), axis=self.axis)

    def compute_mask(self, inputs, mask):
        """Keras' rule: unmasked inputs count as all-kept, masks are broadcast to
        their input, concatenated along the axis, then reduced with `any` over the
        last axis."""
        masks = as_list(mask) if mask is not None else []
        if not any(m is not None for m in masks):
            return None
        full = []
        for x, m in zip(as_list(inputs), masks):
            if m is None:
                full.append(np.ones(x.shape, dtype=bool))
            elif m.ndim < x.ndim:
                full.append(np.broadcast_to(m[..., None], x.shape))
            else:
                full.append(m)
        return np.any(np.concatenate(full, axis=self.axis), axis=-1)


class Dot(Layer):
    """Keras' `batch_dot` of two inputs along one axis each, optionally cosine.

    The output is the first input's shape without its dot axis followed by the
    second's without its batch and dot axes; two rank-2 inputs give `(batch, 1)`.
    `normalize` L2-normalizes along each dot axis first, with a floor that
    differs by version: Keras 3 caps `1/norm` at `1/epsilon` (1e-7,
    `keras/src/ops/nn.py::_normalize`); tf_keras floors the squared norm at 1e-12
    (`tf.linalg.l2_normalize`), i.e. the norm at 1e-6.
    """

    supports_masking = True

    def setup(self, config):
        axes = config["axes"]
        self.axes = (int(axes), int(axes)) if isinstance(axes, (int, float)) else tuple(axes)
        self.normalize = bool(config.get("normalize", False))

    def call(self, inputs):
        return self.vjp(inputs)[0]

    def vjp(self, inputs, training=False, noise=None):
        inputs = as_list(inputs)
        if len(inputs) != 2:
            raise self.error(f"expected exactly 2 inputs, received {len(inputs)}")
        x, y = inputs
        ax, ay = self.axes[0] % x.ndim, self.axes[1] % y.ndim
        if 0 in (ax, ay):
            raise self.error(f"cannot take the dot product over the batch axis (axes {self.axes})")
        if self.normalize:
            (u, back_x), (v, back_y) = self.l2_normalize(x, ax), self.l2_normalize(y, ay)
        else:
            (u, back_x), (v, back_y) = (x, _identity), (y, _identity)
        out = batch_dot(u, v, ax, ay)

        def backward(d_output):
            du, dv = batch_dot_backward(u, v, ax, ay, d_output.reshape(out.shape))
            return [back_x(du), back_y(dv)], {}

        return (out[:, None] if out.ndim == 1 else out), backward

    def compute_mask(self, inputs, mask):
        return None

    def l2_normalize(self, x, axis):
        """`x * inverse` (the normalized x) and its backward.

        The inverse norm carries gradient only where it is not floored; at the
        floor it is a constant (TensorFlow's minimum/maximum pass the gradient
        to the first operand on ties, hence `<=` and `>=`).
        """
        square_sum = np.sum(np.square(x), axis=axis, keepdims=True)
        if self.context.keras_major >= 3:
            with np.errstate(divide="ignore"):
                raw = 1.0 / np.sqrt(square_sum)
            cap = np.asarray(1e7, dtype=x.dtype)
            inverse, active = np.minimum(raw, cap), raw <= cap
        else:
            floor = np.asarray(1e-12, dtype=x.dtype)
            inverse, active = 1.0 / np.sqrt(np.maximum(square_sum, floor)), square_sum >= floor

        def backward(du):
            # d(x * inv) = inv dx + x d(inv), d(inv) = -inv^3 sum(x dx) where inv follows x.
            along = np.sum(du * x, axis=axis, keepdims=True)
            return inverse * du - np.where(active, inverse**3, 0) * x * along

        return x * inverse, backward


def batch_dot(x: np.ndarray, y: np.ndarray, ax: int, ay: int) -> np.ndarray:
    """Contract `x[ax]` with `y[ay]` per batch item: one batched matmul.

    `x` becomes `(b, rest_x, n)` and `y` becomes `(b, n, rest_y)`; the result is
    reshaped to `(b, *x_rest_dims, *y_rest_dims)`.
    """
    x = np.moveaxis(x, ax, -1)
    y = np.moveaxis(y, ay, 1)
    x_rest, y_rest = x.shape[1:-1], y.shape[2:]
    batch, n = x.shape[0], x.shape[-1]
    out = np.matmul(x.reshape(batch, -1, n), y.reshape(batch, n, -1))
    return out.reshape(batch, *x_rest, *y_rest)


def batch_dot_backward(x, y, ax, ay, d_output):
    """Gradients of `batch_dot(x, y, ax, ay)` with respect to `x` and `y`: the same
    batched matmul views, each multiplied by `d_output` and moved back."""
    xm = np.moveaxis(x, ax, -1)
    ym = np.moveaxis(y, ay, 1)
    batch, n = xm.shape[0], xm.shape[-1]
    x_rows, y_cols = xm.reshape(batch, -1, n), ym.reshape(batch, n, -1)
    d = d_output.reshape(batch, x_rows.shape[1], y_cols.shape[2])
    dx = np.matmul(d, np.swapaxes(y_cols, 1, 2)).reshape(xm.shape)
    dy = np.matmul(np.swapaxes(x_rows, 1, 2), d).reshape(ym.shape)
    return np.moveaxis(dx, -1, ax), np.moveaxis(dy, 1, ay)


def _identity(d):
    return d


LAYERS = (Add, Subtract, Multiply, Average, Maximum, Minimum, Concatenate, Dot)
