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

# Comparisons and boolean reductions (the mask ops Keras 3 saves): outputs without a gradient.
BOOLEAN = {"NotEqual", "Any"}

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


# tf_keras' TFOpLambda symbols with the same derivative as a Keras 3 node kind.
TF_SYMBOLS = {
    "__operators__.add": "AddOp",
    "math.add": "AddOp",
    "math.subtract": "SubtractOp",
    "math.multiply": "MultiplyOp",
    "math.truediv": "TrueDivide",
    "math.divide": "TrueDivide",
    "math.maximum": "MaximumOp",
    "math.minimum": "MinimumOp",
    "math.negative": "Negative",
    "math.abs": "Absolute",
    "math.square": "Square",
    "math.sqrt": "Sqrt",
    "math.exp": "Exp",
    "math.log": "Log",
    "math.tanh": "Tanh",
    "math.sigmoid": "Sigmoid",
    "nn.relu": "Relu",
    "reshape": "ReshapeOp",
    "concat": "ConcatenateOp",
    "stack": "Stack",
    "expand_dims": "ExpandDims",
    "squeeze": "Squeeze",
    "compat.v1.squeeze": "Squeeze",
    "transpose": "Transpose",
    "compat.v1.transpose": "Transpose",
    "__operators__.getitem": "GetItem",
}


def op_vjp(node, kind, inputs, args, kwargs=None):
    """(output, backward) of one operation of `kind`, or None when it has no backward.

    The second operand of a binary operation is `args[0]` (Keras 3) or the keyword `y`
    (tf_keras); its gradient goes back the same way.
    """
    kwargs = kwargs or {}
    if kind in BOOLEAN:  # a mask: no gradient flows through a comparison
        output = node.call(inputs, *args, **kwargs)
        return output, lambda dy: (None, {})
    if kind in MOVES:
        return gather_vjp(node, lambda values: node.call(values, *args, **kwargs), inputs)
    output = node.call(inputs, *args, **kwargs)
    dtype = np.asarray(output).dtype
    if kind in UNARY:
        x = np.asarray(inputs, dtype)

        def backward(dy):
            return UNARY[kind](x, output, dy).astype(dtype), {}

        return output, backward
    by_keyword = not args and "y" in kwargs
    if kind in BINARY and (len(args) == 1 or by_keyword):
        a = np.asarray(inputs)
        b = np.asarray(kwargs["y"] if by_keyword else args[0])

        def backward(dy):
            da, db = BINARY[kind](a.astype(dtype), b.astype(dtype), output, dy)
            da = _sum_to_shape(np.asarray(da, dtype), a.shape) if a.ndim else None
            db = _sum_to_shape(np.asarray(db, dtype), b.shape) if b.ndim else None
            return da, {}, ({"kwargs": {"y": db}} if by_keyword else {"args": [db]})

        return output, backward
    return None
