"""Merge layers: element-wise combinations, Concatenate and Dot of a list of inputs.

Keras' merge base class (`keras/src/layers/merging/base_merge.py`, and the same
in tf_keras) broadcasts inputs of different ranks by inserting axes right
after the batch axis, not in front as NumPy would: `(b, 4)` with `(b, 3, 4)`
becomes `(b, 1, 4)` first. Element-wise layers fold their inputs left to
right, as Keras does, so float32 rounding follows the same order.
"""

from __future__ import annotations

from functools import reduce

import numpy as np

from ..base import Layer


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
        inputs = as_list(inputs)
        if self.arity is not None and len(inputs) != self.arity:
            raise self.error(f"expected exactly {self.arity} inputs, received {len(inputs)}")
        return self.finish(reduce(self.combine, align_ranks(inputs)), len(inputs))

    def combine(self, a, b):
        raise NotImplementedError

    def compute_mask(self, inputs, mask):
        """A step is kept only where every masked input keeps it (Keras' base_merge)."""
        masks = [m for m in as_list(mask)] if mask is not None else []
        masks = [m for m in masks if m is not None]
        return np.logical_and.reduce(masks) if masks else None

    def finish(self, total, count):
        return total


class Add(ElementwiseMerge):
    combine = staticmethod(np.add)


class Subtract(ElementwiseMerge):
    arity = 2
    combine = staticmethod(np.subtract)


class Multiply(ElementwiseMerge):
    combine = staticmethod(np.multiply)


class Maximum(ElementwiseMerge):
    combine = staticmethod(np.maximum)


class Minimum(ElementwiseMerge):
    combine = staticmethod(np.minimum)


class Average(ElementwiseMerge):
    """The sum, then one division by the count (not a running mean)."""

    combine = staticmethod(np.add)

    def finish(self, total, count):
        return total / np.asarray(count, dtype=total.dtype)


class Concatenate(Layer):
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
        inputs = as_list(inputs)
        if len(inputs) != 2:
            raise self.error(f"expected exactly 2 inputs, received {len(inputs)}")
        x, y = inputs
        ax, ay = self.axes[0] % x.ndim, self.axes[1] % y.ndim
        if 0 in (ax, ay):
            raise self.error(f"cannot take the dot product over the batch axis (axes {self.axes})")
        if self.normalize:
            x, y = self.l2_normalize(x, ax), self.l2_normalize(y, ay)
        out = batch_dot(x, y, ax, ay)
        return out[:, None] if out.ndim == 1 else out

    def compute_mask(self, inputs, mask):
        return None

    def l2_normalize(self, x, axis):
        square_sum = np.sum(np.square(x), axis=axis, keepdims=True)
        if self.context.keras_major >= 3:
            with np.errstate(divide="ignore"):
                inverse = np.minimum(1.0 / np.sqrt(square_sum), np.asarray(1e7, dtype=x.dtype))
        else:
            inverse = 1.0 / np.sqrt(np.maximum(square_sum, np.asarray(1e-12, dtype=x.dtype)))
        return x * inverse


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


LAYERS = (Add, Subtract, Multiply, Average, Maximum, Minimum, Concatenate, Dot)
