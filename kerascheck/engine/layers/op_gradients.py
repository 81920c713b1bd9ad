"""Backward of the operation nodes: Keras 3's (`x + 3.0`, `keras.ops.exp(x)`, `x[:, 1:]`)
and tf_keras' TFOpLambda calls (`TF_SYMBOLS` maps a TensorFlow name onto the Keras 3
node kind with the same derivative).

The call is bound to its forward function's signature (tf_ops.py), so every entry
sees the operands and parameters under the function's own names, whichever Keras
saved the node:

- `UNARY[kind](x, y, dy, **params)`: elementwise functions, reductions (`axis`,
  `keepdims` among the params), softmax and the like, anything with one operand;
- `BINARY[kind](a, b, y, dy, **params)`: two operands, each gradient summed back
  to its operand's shape (broadcasting);
- `NARY[kind](operands, y, dy, **params)`: a list of operands (where, clip,
  einsum), a list of gradients back;
- `MOVES`: operations that only copy elements, through the shared gather backward;
- `NO_GRADIENT`: outputs TensorFlow gives no gradient (comparisons, argmax, and
  `round`/`floor`/`ceil`, whose registered gradient is None).

A constant operand (`2.0 - x`) gets no gradient. At kinks TensorFlow's choices hold
(see engine/activations.py): maximum/minimum and clip pass ties to `x`.
"""

from __future__ import annotations

import inspect
import math

import numpy as np

from .. import activations as act
from ..gather import gather_vjp
from .core import _sum_to_shape
from .tf_ops import tf_cumsum

# -- helpers ------------------------------------------------------------------------


def _c(x, value):
    return np.asarray(value, dtype=np.asarray(x).dtype)


def _norm_axes(axis, ndim):
    if axis is None:
        return tuple(range(ndim))
    axes = axis if isinstance(axis, (list, tuple)) else (axis,)
    return tuple(sorted(int(a) % ndim for a in axes))


def _kept(dy, x, axis, keepdims):
    """`dy` of a reduction with the reduced axes put back (size 1), to broadcast on `x`."""
    return dy if keepdims else np.expand_dims(dy, _norm_axes(axis, x.ndim))


def _reduce_grad(spread):
    """A reduction's gradient from `spread(x, y_kept, dy_kept, axes)`."""

    def grad(x, y, dy, axis=None, keepdims=False, **_):
        axes = _norm_axes(axis, x.ndim)
        return spread(x, _kept(y, x, axis, keepdims), _kept(dy, x, axis, keepdims), axes)

    return grad


def _count(x, axes):
    return _c(x, math.prod(x.shape[a] for a in axes))


def _extreme(x, y, dy, axes):
    """reduce_max/min's gradient: split equally among the tied extremes."""
    hits = (x == y).astype(x.dtype)
    return hits * dy / np.sum(hits, axis=axes, keepdims=True)


def _extreme_with_initial(op):
    def grad(x, y, dy, axis=None, keepdims=False, initial=None, **_):
        if initial is None:
            return _reduce_grad(_extreme)(x, y, dy, axis, keepdims)
        # maximum(reduce_max(x), initial): the reduction gets the gradient where it wins
        reduced = op(x, axis=_norm_axes(axis, x.ndim), keepdims=keepdims)
        wins = reduced >= initial if op is np.max else reduced <= initial
        return _reduce_grad(_extreme)(x, reduced, dy * wins, axis, keepdims)

    return grad


def _prod(x, y, dy, axes):
    """Product of the other cells of each reduction (exclusive cumulative products, as
    TensorFlow's Prod gradient computes it, so zeros are fine)."""
    rest = [a for a in range(x.ndim) if a not in axes]
    moved = np.transpose(x, rest + list(axes))
    flat = moved.reshape(*moved.shape[: len(rest)], -1)
    ones = np.ones_like(flat[..., :1])
    left = np.cumprod(np.concatenate([ones, flat[..., :-1]], -1), -1)
    right = np.cumprod(np.concatenate([ones, flat[..., :0:-1]], -1), -1)[..., ::-1]
    others = np.transpose((left * right).reshape(moved.shape), np.argsort(rest + list(axes)))
    return others * dy


def _variance(x, y, dy, axes):
    mean = np.mean(x, axis=axes, keepdims=True)
    return dy * _c(x, 2) * (x - mean) / _count(x, axes)


def _softmax(keras):
    def grad(x, y, dy, axis=-1, **_):
        axis = tuple(range(x.ndim)) if (axis is None and keras) else (-1 if axis is None else axis)
        return act._softmax_backward(x, y, dy, axis=axis)

    return grad


def _log_softmax(keras):
    def grad(x, y, dy, axis=-1, **_):
        axis = tuple(range(x.ndim)) if (axis is None and keras) else (-1 if axis is None else axis)
        return act._log_softmax_backward(x, y, dy, axis=axis)

    return grad


def _norm(x, y, dy, ord=None, axis=None, keepdims=False):  # noqa: A002
    y, dy = _kept(y, x, axis, keepdims), _kept(dy, x, axis, keepdims)
    if ord in (None, 2, "fro"):
        return dy * x / y
    if ord == 1:
        return dy * np.sign(x)
    raise NotImplementedError(f"a norm with ord={ord!r}")


def _l2_normalize(x, y, dy, axis=None, epsilon=1e-12, dim=None):
    """`x * rsqrt(max(sum(x**2), eps))`: TensorFlow's Maximum passes a tie to the sum."""
    axes = _norm_axes(dim if axis is None else axis, x.ndim)
    square_sum = np.sum(x * x, axis=axes, keepdims=True)
    live = square_sum >= _c(x, epsilon)
    inv = 1 / np.sqrt(np.maximum(square_sum, _c(x, epsilon)))
    inner = np.sum(dy * x, axis=axes, keepdims=True)
    return dy * inv - np.where(live, x * inner * inv**3, 0)


def _normalize(x, y, dy, axis=-1, order=2, epsilon=None):
    """Keras 3 `normalize`: order 2 is `x * min(rsqrt(s), 1/eps)` (a tie goes to rsqrt),
    other orders `x / max(norm, eps)` (a tie goes to the norm)."""
    axes = _norm_axes(axis, x.ndim)
    eps = _c(x, 1e-7 if epsilon is None else epsilon)
    inner = np.sum(dy * x, axis=axes, keepdims=True)
    order = int(order)
    if order == 2:
        square_sum = np.sum(x * x, axis=axes, keepdims=True)
        rsqrt = 1 / np.sqrt(square_sum)
        live = rsqrt <= 1 / eps
        scale = np.minimum(rsqrt, 1 / eps)
        return dy * scale - np.where(live, x * inner * rsqrt**3, 0)
    if len(axes) != 1:
        raise NotImplementedError(f"normalize of order {order} over the matrix axes {axes}")
    norm = np.sum(np.abs(x) ** order, axis=axes, keepdims=True) ** (1 / order)
    live = norm >= eps
    denom = np.maximum(norm, eps)
    d_norm = np.sign(x) * np.abs(x) ** (order - 1) / norm ** (order - 1)
    return dy / denom - np.where(live, inner / (denom * denom) * d_norm, 0)


def _bias_add(a, b, y, dy, data_format=None):
    """`tf.nn.bias_add`: the bias' gradient sums every axis but its own (1 for `NC...`)."""
    if isinstance(data_format, str) and data_format.startswith("NC"):
        return dy, dy.sum(axis=(0, *range(2, dy.ndim)))
    return dy, dy


def _cumulative(step):
    def grad(x, y, dy, axis=None, dtype=None):
        flat = axis is None
        xs, ys, dys = (np.ravel(v) if flat else v for v in (x, y, dy))
        g = step(xs, ys, dys, 0 if flat else int(axis))
        return g.reshape(x.shape) if flat else g

    return grad


def _reverse_cumsum(v, axis):
    return np.flip(np.cumsum(np.flip(v, axis), axis), axis)


def _top_k(x, y, dy, k=1, sorted=True, **_):  # noqa: A002
    """The values' gradient back to the entries they were taken from (indices: none)."""
    d_values = dy[0] if isinstance(dy, (list, tuple)) else dy
    grad = np.zeros_like(x)
    if d_values is not None:
        np.put_along_axis(grad, y[1].astype(np.intp), d_values, axis=-1)
    return grad


def _unstack(x, y, dy, axis=0, **_):
    pieces = [np.zeros_like(part) if d is None else d for d, part in zip(dy, y)]
    return np.stack(pieces, axis=int(axis))


def _image_resize(x, y, dy, size=None, method="bilinear", **_):
    from .preprocessing import resize_images_transpose

    batch, d = (x, dy) if x.ndim == 4 else (x[None], dy[None])
    d = resize_images_transpose(np.asarray(d), batch.shape[1:3], str(method).lower())
    return d if x.ndim == 4 else d[0]


def _logsumexp(x, y, dy, axis=None, keepdims=False):
    return _kept(dy, x, axis, keepdims) * np.exp(x - _kept(y, x, axis, keepdims))


def _cast(x, y, dy, dtype=None, **_):
    """TensorFlow's Cast gradient: between floating types only."""
    if x.dtype.kind == "f" and y.dtype.kind == "f":
        return dy.astype(x.dtype)
    return None


def _elu(x, y, dy, alpha=1.0, **_):
    # where(x > 0, elu(x), alpha * elu(x)); EluGrad is 1 at 0, so alpha there
    return dy * np.where(x > 0, _c(x, 1), _c(x, alpha) * np.exp(np.minimum(x, _c(x, 0))))


def _celu(x, y, dy, alpha=1.0):
    zero = _c(x, 0)
    return dy * ((x >= zero) + np.exp(np.minimum(x, zero) / _c(x, alpha)) * (x <= zero))


def _silu(x, y, dy, beta=1.0):
    s = act.sigmoid(_c(x, beta) * x)
    return dy * s * (_c(x, 1) + _c(x, beta) * x * (_c(x, 1) - s))


def _matmul(a, b, y, dy, transpose_a=False, transpose_b=False, adjoint_a=False, **p):
    """Gradients of `op(a) @ op(b)`, op a transpose where flagged."""
    ta, tb = transpose_a or adjoint_a, transpose_b or p.get("adjoint_b") or False
    a2, b2 = (np.swapaxes(v, -1, -2) if t else v for v, t in ((a, ta), (b, tb)))
    da, db = dy @ np.swapaxes(b2, -1, -2), np.swapaxes(a2, -1, -2) @ dy
    return (np.swapaxes(da, -1, -2) if ta else da), (np.swapaxes(db, -1, -2) if tb else db)


def _power(a, b, y, dy):
    """TensorFlow's Pow gradient; the exponent's is 0 where the base is not positive."""
    db = dy * y * np.log(np.where(a > 0, a, _c(a, 1)))
    return dy * b * np.power(a, b - _c(b, 1)), db


def _where(operands, y, dy):
    condition, a, b = operands
    zero = np.zeros((), dy.dtype)
    keep = np.asarray(condition, dtype=bool)
    return [None, np.where(keep, dy, zero), np.where(keep, zero, dy)]


def _clip(operands, y, dy):
    """`clip_by_value`: the bounds included pass to `t`; outside, to the bound."""
    t, low, high = (np.asarray(v) for v in operands)
    below, above = t < low, t > high
    zero = np.zeros((), dy.dtype)
    return [
        np.where(below | above, zero, dy),
        np.where(below, dy, zero),
        np.where(above & ~below, dy, zero),
    ]


def _einsum(operands, y, dy, subscripts):
    """Each operand's gradient is an einsum of the output gradient with the others."""
    specs, out = _einsum_specs(subscripts, [np.ndim(o) for o in operands])
    grads = []
    for i, x in enumerate(operands):
        if len(set(specs[i])) != len(specs[i]):
            raise NotImplementedError(f"einsum '{subscripts}' (it takes a diagonal)")
        others = [s for j, s in enumerate(specs) if j != i]
        rest = [o for j, o in enumerate(operands) if j != i]
        kept = "".join(c for c in specs[i] if c in out or any(c in s for s in others))
        g = np.einsum(",".join([out, *others]) + "->" + kept, dy, *rest)
        summed = [k for k, c in enumerate(specs[i]) if c not in kept]  # only in operand i
        grads.append(np.broadcast_to(np.expand_dims(g, summed), np.shape(x)) if summed else g)
    return grads


def _einsum_specs(subscripts, ndims):
    """Explicit letters per operand and for the output (`...` spelled out)."""
    left, _, right = subscripts.replace(" ", "").partition("->")
    specs = left.split(",")
    spare = (c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ" if c not in subscripts)
    widest = max(n - len(s.replace("...", "")) for s, n in zip(specs, ndims))
    dots = "".join(next(spare) for _ in range(max(widest, 0)))
    specs = [
        s.replace("...", dots[len(dots) - (n - len(s.replace("...", ""))) :])
        for s, n in zip(specs, ndims)
    ]
    if "->" not in subscripts:  # implicit output: letters seen once, sorted, `...` first
        letters = "".join(specs)
        right = ("..." if dots else "") + "".join(
            sorted(c for c in set(letters) if letters.count(c) == 1 and c not in dots)
        )
    return specs, right.replace("...", dots)


def _zero(x, y, dy, **_):
    return np.zeros_like(dy)


# -- the tables -----------------------------------------------------------------------

BINARY = {
    "AddOp": lambda a, b, y, dy: (dy, dy),
    "SubtractOp": lambda a, b, y, dy: (dy, -dy),
    "MultiplyOp": lambda a, b, y, dy: (dy * b, dy * a),
    "TrueDivide": lambda a, b, y, dy: (dy / b, -dy * a / (b * b)),
    "Divide": lambda a, b, y, dy: (dy / b, -dy * a / (b * b)),
    # TensorFlow's Maximum/Minimum gradient: ties go to the first operand.
    "MaximumOp": lambda a, b, y, dy: (dy * (a >= b), dy * (a < b)),
    "MinimumOp": lambda a, b, y, dy: (dy * (a <= b), dy * (a > b)),
    "Power": _power,
    "Matmul": _matmul,
    # FloorMod: x - floor(x / y) * y
    "Mod": lambda a, b, y, dy: (dy, -dy * np.floor(a / b)),
    "Logaddexp": lambda a, b, y, dy: (dy * np.exp(a - y), dy * np.exp(b - y)),
    "tf.bias_add": _bias_add,
}

UNARY = {
    "tf.l2_normalize": _l2_normalize,
    "Normalize": _normalize,
    "Negative": lambda x, y, dy: -dy,
    "Absolute": lambda x, y, dy: dy * np.sign(x),
    "Abs": lambda x, y, dy: dy * np.sign(x),
    "Sign": _zero,
    "Square": lambda x, y, dy: dy * _c(x, 2) * x,
    "Sqrt": lambda x, y, dy: dy / (_c(x, 2) * y),
    "Rsqrt": lambda x, y, dy: dy * _c(x, -0.5) * y**3,
    "Reciprocal": lambda x, y, dy: -dy * y * y,
    "Exp": lambda x, y, dy: dy * y,
    "Exp2": lambda x, y, dy: dy * y * _c(x, math.log(2)),
    "Expm1": lambda x, y, dy: dy * (y + _c(x, 1)),
    "Log": lambda x, y, dy: dy / x,
    "Log1p": lambda x, y, dy: dy / (x + _c(x, 1)),
    "Log2": lambda x, y, dy: dy / (x * _c(x, math.log(2))),
    "Log10": lambda x, y, dy: dy / (x * _c(x, math.log(10))),
    "Sin": lambda x, y, dy: dy * np.cos(x),
    "Cos": lambda x, y, dy: -dy * np.sin(x),
    "Tan": lambda x, y, dy: dy * (_c(x, 1) + y * y),
    "Sinh": lambda x, y, dy: dy * np.cosh(x),
    "Cosh": lambda x, y, dy: dy * np.sinh(x),
    "Arctan": lambda x, y, dy: dy / (_c(x, 1) + x * x),
    "Arcsinh": lambda x, y, dy: dy / np.sqrt(x * x + _c(x, 1)),
    "Arcsin": lambda x, y, dy: dy / np.sqrt(_c(x, 1) - x * x),
    "Arccos": lambda x, y, dy: -dy / np.sqrt(_c(x, 1) - x * x),
    "Arctanh": lambda x, y, dy: dy / (_c(x, 1) - x * x),
    "Erf": lambda x, y, dy: dy * _c(x, 2 / math.sqrt(math.pi)) * np.exp(-x * x),
    "Tanh": lambda x, y, dy: dy * (_c(x, 1) - y * y),
    "Sigmoid": lambda x, y, dy: dy * y * (_c(x, 1) - y),
    "Relu": lambda x, y, dy: dy * (x > 0),
    "Relu6": lambda x, y, dy: dy * ((x > 0) & (x < 6)),
    "Softplus": lambda x, y, dy: dy * act.sigmoid(x),
    "Softsign": act.DERIVATIVES[act.softsign],
    "LogSigmoid": lambda x, y, dy: dy * act.sigmoid(-x),
    "HardSigmoid": act.DERIVATIVES[act.hard_sigmoid_keras3],
    "HardSilu": act.DERIVATIVES[act.hard_silu],
    "Selu": act.DERIVATIVES[act.selu],
    "TanhShrink": act.DERIVATIVES[act.tanh_shrink],
    "HardTanh": act.DERIVATIVES[act.hard_tanh],
    # where(x <= -1, 0, where(x < 1, (x + 1)^2 / 4, x))
    "SparsePlus": lambda x, y, dy: (
        dy * np.where(x <= -1, _c(x, 0), np.where(x < 1, (x + _c(x, 1)) / _c(x, 2), _c(x, 1)))
    ),
    "SparseSigmoid": lambda x, y, dy: dy * _c(x, 0.5) * ((x > -1) & (x < 1)),
    "LeakyRelu": lambda x, y, dy, alpha=0.2: dy * np.where(x > 0, _c(x, 1), _c(x, alpha)),
    "Elu": _elu,
    "Celu": _celu,
    "Silu": _silu,
    "Squareplus": lambda x, y, dy, b=4.0: (
        dy * (_c(x, 1) + x / np.sqrt(x * x + _c(x, b))) / _c(x, 2)
    ),
    "SoftShrink": lambda x, y, dy, threshold=0.5: dy * (np.abs(x) > _c(x, threshold)),
    "HardShrink": lambda x, y, dy, threshold=0.5: dy * (np.abs(x) > _c(x, threshold)),
    "Threshold": lambda x, y, dy, threshold, default_value: dy * (x > _c(x, threshold)),
    "Glu": lambda x, y, dy, axis=-1: act._glu_backward(x, y, dy, axis=axis),
    "Gelu": lambda x, y, dy, approximate=False: act._gelu_backward(x, y, dy, approximate),
    "SoftmaxOp": _softmax(keras=True),
    "LogSoftmax": _log_softmax(keras=True),
    "tf.softmax": _softmax(keras=False),
    "tf.log_softmax": _log_softmax(keras=False),
    "Cast": _cast,
    # a list of outputs: their gradients (zeros for unused parts) side by side
    "Split": lambda x, y, dy, axis=0, **_: np.concatenate(dy, axis=int(axis)),
    # reductions
    "Sum": _reduce_grad(lambda x, y, dy, axes: np.broadcast_to(dy, x.shape)),
    "Mean": _reduce_grad(lambda x, y, dy, axes: np.broadcast_to(dy / _count(x, axes), x.shape)),
    "Max": _extreme_with_initial(np.max),
    "Min": _extreme_with_initial(np.min),
    "Amax": _reduce_grad(_extreme),
    "Amin": _reduce_grad(_extreme),
    "Prod": _reduce_grad(_prod),
    "Var": _reduce_grad(_variance),
    "Std": _reduce_grad(lambda x, y, dy, axes: _variance(x, y, dy / (_c(x, 2) * y), axes)),
    "Logsumexp": _logsumexp,
    "Norm": _norm,
    "Cumsum": _cumulative(lambda x, y, dy, axis: _reverse_cumsum(dy, axis)),
    "Cumprod": _cumulative(lambda x, y, dy, axis: _reverse_cumsum(y * dy, axis) / x),
    "tf.cumsum": lambda x, y, dy, axis=0, exclusive=False, reverse=False: tf_cumsum(
        dy, axis, exclusive, not reverse
    ),
    "TopK": _top_k,
    "Unstack": _unstack,
    "tf.image_resize": _image_resize,
}

NARY = {"Where": _where, "Clip": _clip, "Einsum": _einsum}

# Outputs without a gradient: comparisons, logic, indices, and rounding (TensorFlow
# registers None for Round, Floor, Ceil and FloorDiv; Keras' trunc is built on them).
NO_GRADIENT = {
    "NotEqual", "Equal", "Greater", "GreaterEqual", "Less", "LessEqual", "Any", "All",
    "LogicalAnd", "LogicalOr", "LogicalNot", "LogicalXor", "Isnan", "Isfinite", "Isinf",
    "Argmax", "Argmin", "Round", "Floor", "Ceil", "Trunc", "FloorDivide", "OneHot",
}  # fmt: skip
BOOLEAN = NO_GRADIENT  # the name the mask ops were first listed under

MOVES = {
    "ReshapeOp", "Transpose", "Swapaxes", "GetItem", "ExpandDims", "Squeeze",
    "ConcatenateOp", "Stack", "Tile", "Repeat", "Flip", "Roll", "Moveaxis", "BroadcastTo",
    "Ravel", "Pad", "Take", "DepthToSpace",
}  # fmt: skip


NO_GRADIENT_SYMBOLS = (
    "math.greater", "math.greater_equal", "math.less", "math.less_equal", "math.equal",
    "math.not_equal", "math.logical_and", "math.logical_or", "math.logical_not",
    "math.floor", "math.ceil", "math.round", "math.floordiv", "compat.v1.floor_div",
)  # fmt: skip

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
    "math.pow": "Power",
    "math.negative": "Negative",
    "math.abs": "Absolute",
    "math.sign": "Sign",
    "math.square": "Square",
    "math.sqrt": "Sqrt",
    "math.rsqrt": "Rsqrt",
    "math.reciprocal": "Reciprocal",
    "math.exp": "Exp",
    "math.expm1": "Expm1",
    "math.log": "Log",
    "math.log1p": "Log1p",
    "math.sin": "Sin",
    "math.cos": "Cos",
    "math.erf": "Erf",
    "math.tanh": "Tanh",
    "math.sigmoid": "Sigmoid",
    "math.log_sigmoid": "LogSigmoid",
    "math.softplus": "Softplus",
    "math.reduce_sum": "Sum",
    "math.reduce_mean": "Mean",
    "math.reduce_max": "Amax",
    "math.reduce_min": "Amin",
    "math.reduce_prod": "Prod",
    "math.reduce_variance": "Var",
    "math.reduce_std": "Std",
    "math.reduce_logsumexp": "Logsumexp",
    "nn.relu": "Relu",
    "nn.relu6": "Relu6",
    "nn.elu": "Elu",
    "nn.selu": "Selu",
    "nn.softsign": "Softsign",
    "nn.leaky_relu": "LeakyRelu",
    "nn.gelu": "Gelu",
    "nn.silu": "Silu",
    "nn.softmax": "tf.softmax",
    "nn.log_softmax": "tf.log_softmax",
    "cast": "Cast",
    "clip_by_value": "Clip",
    "where": "Where",
    "linalg.matmul": "Matmul",
    "reshape": "ReshapeOp",
    "concat": "ConcatenateOp",
    "stack": "Stack",
    "expand_dims": "ExpandDims",
    "squeeze": "Squeeze",
    "compat.v1.squeeze": "Squeeze",
    "transpose": "Transpose",
    "compat.v1.transpose": "Transpose",
    "__operators__.getitem": "GetItem",
    "split": "Split",
    "tile": "Tile",
    "reverse": "Flip",
    "pad": "Pad",
    "compat.v1.pad": "Pad",
    "gather": "Take",
    "compat.v1.gather": "Take",
    "math.floormod": "Mod",
    "math.mod": "Mod",
    "math.argmax": "Argmax",
    "nn.bias_add": "tf.bias_add",
    "math.l2_normalize": "tf.l2_normalize",
    "math.argmin": "Argmin",
    "one_hot": "OneHot",
    "nn.depth_to_space": "DepthToSpace",
    "math.cumsum": "tf.cumsum",
    "cumsum": "tf.cumsum",
    "math.top_k": "TopK",
    "nn.top_k": "TopK",
    "unstack": "Unstack",
    "image.resize": "tf.image_resize",
    **dict.fromkeys(NO_GRADIENT_SYMBOLS, "Greater"),  # any kind without a gradient
}


def has_backward(kind: str) -> bool:
    return kind in NO_GRADIENT or kind in MOVES or kind in UNARY or kind in BINARY or kind in NARY


# -- the vjp --------------------------------------------------------------------------


def op_vjp(node, kind, inputs, args, kwargs=None):
    """(output, backward) of one operation of `kind`, or None when it has no backward.

    Gradients of operands passed after the first go back the way they came: by
    position (`{"args": [...]}`) or by keyword (`{"kwargs": {...}}`, tf_keras).
    """
    kwargs = kwargs or {}
    if kind in NO_GRADIENT:
        return node.call(inputs, *args, **kwargs), lambda dy: (None, {})
    if kind in MOVES:
        # Pad's fill must be a zero for the gather map; the output keeps the real fill.
        moved = {**kwargs, "constant_values": None} if kind == "Pad" else kwargs
        output, backward = gather_vjp(node, lambda v: node.call(v, *args, **moved), inputs)
        return (node.call(inputs, *args, **kwargs) if moved is not kwargs else output), backward
    if not has_backward(kind):
        return None
    output = node.call(inputs, *args, **kwargs)
    operands, routes, params = _bind(node, inputs, args, kwargs, _arity(kind, args, kwargs))
    dtype = np.asarray(output[0] if isinstance(output, list) else output).dtype
    values = [_as_operand(v, dtype) for v in operands]

    def backward(dy):
        try:
            with np.errstate(all="ignore"):
                grads = _gradients(kind, values, output, dy, params)
        except NotImplementedError as exc:
            raise node.error(f"kerascheck has no backward for {exc}") from None
        d_input, extra = None, {"args": [None] * len(args), "kwargs": {}}
        for value, grad, route in zip(operands, grads, routes):
            if grad is None or not isinstance(value, np.ndarray) or value.dtype.kind != "f":
                continue
            grad = _sum_to_shape(np.asarray(grad), value.shape).astype(value.dtype, copy=False)
            if route == 0:
                d_input = grad
            elif isinstance(route, int):
                extra["args"][route - 1] = grad
            else:
                extra["kwargs"][route] = grad
        return d_input, {}, extra

    return output, backward


def _arity(kind, args, kwargs):
    if kind in UNARY:
        return 1
    if kind in BINARY:
        return 2
    return 1 + len(args) + len(kwargs) if kind == "Einsum" else 3


def _gradients(kind, values, y, dy, params):
    if kind in UNARY:
        return [UNARY[kind](values[0], y, dy, **params)]  # None: no gradient (Cast to int)
    if kind in BINARY:
        return list(BINARY[kind](values[0], values[1], y, dy, **params))
    return NARY[kind](values, y, dy, **params)


def _as_operand(value, dtype):
    """Tensors as they are; constants (`2.0`, lists) in the output's dtype when it is float."""
    if isinstance(value, np.ndarray):
        return value
    return np.asarray(value, dtype=dtype if dtype.kind == "f" else None)


def _bind(node, inputs, args, kwargs, arity):
    """(the first `arity` operands, where each came from, the remaining parameters)."""
    params = getattr(node, "params", {})
    signature = inspect.signature(node.function)
    bound = signature.bind(inputs, *args, **kwargs, **params)
    bound.apply_defaults()
    positional = len(args) + 1
    operands, routes, rest = [], [], {}
    for name, value in bound.arguments.items():
        kind = signature.parameters[name].kind
        if kind == inspect.Parameter.VAR_POSITIONAL:
            for item in value:
                routes.append(len(operands))
                operands.append(item)
        elif kind == inspect.Parameter.VAR_KEYWORD:
            rest.update(value)
        elif len(operands) < arity:
            routes.append(len(operands) if len(operands) < positional else name)
            operands.append(value)
        elif name != "name":
            rest[name] = value
    return operands, routes, rest
