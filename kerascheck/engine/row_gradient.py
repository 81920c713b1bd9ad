"""The gradient of a table read by index (an Embedding's), with its rows per occurrence.

TensorFlow differentiates a lookup into `tf.IndexedSlices`: one row per index
read, repeated indices not added up. Keras 3 applies such a gradient as it is,
so an elementwise function of the gradient inside an optimizer (Adam's and
RMSprop's `g * g`, Adamax's `|g|`, Adadelta's `g * rms / rms`), and the norms
of clipping, act on each occurrence and the results are added into the table:
a row read twice gets g1² + g2², not (g1 + g2)². tf_keras clips the rows as
read and then adds them up (`_deduplicate_sparse_grad`), and so does Keras 3's
global-norm clipping (`v * scale` makes them dense).

`RowGradient` is the dense gradient everywhere else (comparisons, reports,
sums with a regularizer's gradient all see the dense sum); an optimizer with
Keras 3's semantics computes with it through NumPy as usual and gets Keras'
answer: see `UNARY` and `SCALING` below.
"""

from __future__ import annotations

import numpy as np

# Keras 3's elementwise ops keep tf.IndexedSlices sparse: unary ones act on each row
# read, multiply and divide by a number or a dense tensor act on each row with the
# dense tensor's row gathered; every other op (add, subtract, maximum, ...) densifies.
UNARY = {np.square, np.absolute, np.sqrt, np.sign, np.negative, np.exp, np.log}
SCALING = {np.multiply, np.true_divide}


class RowGradient(np.ndarray):
    indices: np.ndarray | None = None
    rows: np.ndarray | None = None

    @classmethod
    def of(cls, indices: np.ndarray, rows: np.ndarray, shape: tuple) -> RowGradient:
        dense = np.zeros(shape, dtype=rows.dtype)
        np.add.at(dense, indices, rows)
        gradient = dense.view(cls)
        gradient.indices, gradient.rows = indices, rows
        return gradient

    def __array_finalize__(self, obj):
        self.indices = getattr(obj, "indices", None)
        self.rows = getattr(obj, "rows", None)

    def astype_rows(self, dtype) -> RowGradient:
        return RowGradient.of(self.indices, self.rows.astype(dtype), self.shape)

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        if method == "__call__" and not kwargs and self.rows is not None:
            rows = self._rows_of(ufunc, inputs)
            if rows is not None:
                return RowGradient.of(self.indices, rows.astype(self.dtype), self.shape)
        plain = [np.asarray(x) if isinstance(x, RowGradient) else x for x in inputs]
        if "out" in kwargs:
            kwargs["out"] = tuple(
                np.asarray(x) if isinstance(x, RowGradient) else x for x in kwargs["out"]
            )
        return getattr(ufunc, method)(*plain, **kwargs)

    def _rows_of(self, ufunc, inputs) -> np.ndarray | None:
        """The per-row result of `ufunc(*inputs)`, or None where Keras densifies."""
        if len(inputs) == 1 and ufunc in UNARY:
            return ufunc(self.rows)
        if len(inputs) != 2 or ufunc not in SCALING:
            return None
        if inputs[0] is self and inputs[1] is self:  # g * g
            return ufunc(self.rows, self.rows)
        if inputs[0] is not self and ufunc is np.true_divide:
            return None
        other = inputs[1] if inputs[0] is self else inputs[0]
        if isinstance(other, RowGradient):
            return None
        if np.ndim(other) == 0:
            gathered = np.asarray(other)
        elif np.shape(other) == self.shape:
            gathered = np.asarray(other)[self.indices]
        else:
            return None
        return ufunc(self.rows, gathered) if inputs[0] is self else ufunc(gathered, self.rows)
