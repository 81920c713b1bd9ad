"""Backward of the Keras 3 operation nodes (`x + 3.0`, `keras.ops.exp(x)`, `x[:, 1:]`).

Elementwise operations have their derivative here, one entry per node class
(`d_operands(a, b, y, dy)` for binary ones, `d_input(x, y, dy)` for unary
ones), and the gradient of a broadcast operand is summed back to its shape.
Operations that only move elements (reshape, transpose, slicing, expand,
squeeze, concatenation) use the engine's shared gather backward. A constant
operand (`2.0 - x`) gets no gradient.
"""

from __future__ import annotations

import numpy as np

from ..gather import gather_vjp
from .core import _sum_to_shape


def _safe(x):
    return np.asarray(x)


BINARY = {
    "AddOp": lambda a, b, y, dy: (dy, dy),
    "SubtractOp": lambda a, b, y, dy: (dy, -dy),
    "MultiplyOp": lambda a, b, y, dy: (dy * b, dy * a),
    "TrueDivide": lambda a, b, y, dy: (dy / b, -dy * a / (b * b)),
    "Divide": lambda a, b, y, dy: (dy / b, -dy * a / (b * b)),
    # TensorFlow's Maximum/Minimum gradient: ties go to the first operand.
    "MaximumOp": lambda a, b, y, dy: (dy * (a >= b), dy * (a < b)),
    "MinimumOp": lambda a, b, y, dy: (dy * (a <= b), dy * (a > b)),
}

UNARY = {
    "Negative": lambda x, y, dy: -dy,
    "Absolute": lambda x, y, dy: dy * np.sign(x),
    "Square": lambda x, y, dy: dy * 2 * x,
    "Sqrt": lambda x, y, dy: dy / (2 * y),
    "Exp": lambda x, y, dy: dy * y,
    "Log": lambda x, y, dy: dy / x,
    "Tanh": lambda x, y, dy: dy * (1 - y * y),
    "Sigmoid": lambda x, y, dy: dy * y * (1 - y),
    "Relu": lambda x, y, dy: dy * (x > 0),
}

MOVES = {
    "ReshapeOp",
    "Transpose",
    "Swapaxes",
    "GetItem",
    "ExpandDims",
    "Squeeze",
    "ConcatenateOp",
    "Stack",
}


def op_vjp(node, inputs, args):
    """(output, backward) of one operation node, or None when it has no backward."""
    kind = type(node).__name__
    if kind in MOVES:
        return gather_vjp(node, lambda values: node.call(values, *args), inputs)
    output = node.call(inputs, *args)
    dtype = np.asarray(output).dtype
    if kind in UNARY:
        x = np.asarray(inputs, dtype)

        def backward(dy):
            return UNARY[kind](x, output, dy).astype(dtype), {}

        return output, backward
    if kind in BINARY and len(args) == 1:
        a, b = np.asarray(inputs), np.asarray(args[0])

        def backward(dy):
            da, db = BINARY[kind](a.astype(dtype), b.astype(dtype), output, dy)
            da = _sum_to_shape(np.asarray(da, dtype), a.shape) if a.ndim else None
            db = _sum_to_shape(np.asarray(db, dtype), b.shape) if b.ndim else None
            return da, {}, {"args": [db]}

        return output, backward
    return None
