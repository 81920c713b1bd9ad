"""Activation functions by their Keras names, in NumPy.

Each takes and returns an array of the same dtype; constants are cast to the
input's dtype so float32 stays float32. Where Keras 2 and Keras 3 disagree
(hard_sigmoid), `resolve` picks by the file's Keras major version.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import KerascheckError
from . import threads


def _c(x: np.ndarray, value: float):
    return np.asarray(value, dtype=x.dtype)


def linear(x):
    return x


def relu(x, negative_slope=0.0, max_value=None, threshold=0.0):
    """Keras' general relu: zero below `threshold`, clipped at `max_value`, leaky below."""
    if threshold != 0:
        y = np.where(x > _c(x, threshold), x, _c(x, 0.0))
        if max_value is not None:
            y = np.minimum(y, _c(x, max_value))
    else:
        # np.clip is `minimum(maximum(x, 0), max_value)` in one pass, ~2x faster than
        # np.maximum alone (whose NaN handling is slower); NaNs propagate either way.
        top = np.inf if max_value is None else max_value
        y = threads.elementwise(np.clip, np.empty_like(x), x, _c(x, 0.0), _c(x, top))
    if negative_slope != 0:
        y = y - _c(x, negative_slope) * np.maximum(_c(x, threshold) - x, _c(x, 0.0))
    return y.astype(x.dtype, copy=False)


def relu6(x):
    return threads.elementwise(np.clip, np.empty_like(x), x, _c(x, 0.0), _c(x, 6.0))


def sigmoid(x):
    """`1 / (1 + exp(-x))` in four in-place passes; below about -88 (float32) `exp`
    overflows to inf and the result is its exact limit 0. float16, whose `exp`
    overflows already at -11 where sigmoid is still 1.7e-5, takes `exp(-|x|)` (as do
    scalars)."""
    x = np.asarray(x)
    if x.dtype not in (np.float32, np.float64) or x.ndim == 0:
        e = np.exp(-np.abs(x))
        one = _c(x, 1.0)
        return np.where(x >= 0, one / (one + e), e / (one + e))
    y = np.negative(x)
    with np.errstate(over="ignore"):
        np.exp(y, out=y)
    y += _c(x, 1.0)
    return np.reciprocal(y, out=y)


def hard_sigmoid_keras3(x):
    return np.clip(x / _c(x, 6.0) + _c(x, 0.5), _c(x, 0.0), _c(x, 1.0))


def hard_sigmoid_keras2(x):
    return np.clip(_c(x, 0.2) * x + _c(x, 0.5), _c(x, 0.0), _c(x, 1.0))


def hard_silu(x):
    return x * relu6(x + _c(x, 3.0)) / _c(x, 6.0)


def tanh(x):
    return np.tanh(x)


def softmax(x, axis=-1):
    shifted = x - np.max(x, axis=axis, keepdims=True)
    e = np.exp(shifted)
    return e / np.sum(e, axis=axis, keepdims=True)


def log_softmax(x, axis=-1):
    shifted = x - np.max(x, axis=axis, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))


def softplus(x):
    return np.logaddexp(_c(x, 0.0), x)


def softsign(x):
    return x / (_c(x, 1.0) + np.abs(x))


def elu(x, alpha=1.0):
    return np.where(x > 0, x, _c(x, alpha) * np.expm1(np.minimum(x, _c(x, 0.0))))


SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946


def selu(x):
    return _c(x, SELU_SCALE) * elu(x, SELU_ALPHA)


def erf(x):
    """Error function, vectorized (W. J. Cody's rational approximations, ~1e-15)."""
    x64 = np.asarray(x, dtype=np.float64)
    a = np.abs(x64)
    out = np.empty_like(x64)
    small = a < 0.5
    if np.any(small):
        t = x64[small] ** 2
        num = ((0.185777706184603153 * t + 3.16112374387056560) * t + 113.864154151050156) * t
        num = (num + 377.485237685302021) * t + 3209.37758913846947
        den = ((t + 23.6012909523441209) * t + 244.024637934444173) * t
        den = (den + 1282.61652607737228) * t + 2844.23683343917062
        out[small] = x64[small] * num / den
    big = ~small
    if np.any(big):
        out[big] = np.sign(x64[big]) * (1.0 - _erfc_positive(a[big]))
    return out.astype(np.asarray(x).dtype, copy=False)


def _erfc_positive(a):
    """erfc for a >= 0.5 (Cody's two ranges)."""
    result = np.empty_like(a)
    mid = a <= 4.0
    p = [
        5.64188496988670089e-1,
        8.88314979438837594,
        6.61191906371416295e1,
        2.98635138197400131e2,
        8.81952221241769090e2,
        1.71204761263407058e3,
        2.05107837782607147e3,
        1.23033935479799725e3,
        2.15311535474403846e-8,
    ]
    q = [
        1.57449261107098347e1,
        1.17693950891312499e2,
        5.37181101862009858e2,
        1.62138957456669019e3,
        3.29079923573345963e3,
        4.36261909014324716e3,
        3.43936767414372164e3,
        1.23033935480374942e3,
    ]
    if np.any(mid):
        y = a[mid]
        num = p[8] * y
        den = y
        for i in range(7):
            num = (num + p[i]) * y
            den = (den + q[i]) * y
        value = (num + p[7]) / (den + q[7])
        result[mid] = np.exp(-y * y) * value
    tail = ~mid
    if np.any(tail):
        r = [
            3.05326634961232344e-1,
            3.60344899949804439e-1,
            1.25781726111229246e-1,
            1.60837851487422766e-2,
            6.58749161529837803e-4,
            1.63153871373020978e-2,
        ]
        s = [
            2.56852019228982242,
            1.87295284992346725,
            5.27905102951428412e-1,
            6.05183413124413191e-2,
            2.33520497626869185e-3,
        ]
        y = a[tail]
        z = 1.0 / (y * y)
        num = r[5] * z
        den = z
        for i in range(4):
            num = (num + r[i]) * z
            den = (den + s[i]) * z
        value = z * (num + r[4]) / (den + s[4])
        value = (1.0 / math.sqrt(math.pi) - value) / y
        result[tail] = np.exp(-y * y) * value
    return result


def gelu(x, approximate=False):
    if approximate:
        inner = _c(x, math.sqrt(2 / math.pi)) * (x + _c(x, 0.044715) * x**3)
        return _c(x, 0.5) * x * (_c(x, 1.0) + np.tanh(inner))
    return _c(x, 0.5) * x * (_c(x, 1.0) + erf(x / _c(x, math.sqrt(2.0))))


def swish(x):
    y = sigmoid(x)
    y *= x
    return y


def mish(x):
    return x * np.tanh(softplus(x))


def exponential(x):
    return np.exp(x)


def leaky_relu(x, negative_slope=0.2):
    return np.where(x >= 0, x, _c(x, negative_slope) * x)


def log_sigmoid(x):
    return -softplus(-x)


def hard_tanh(x):
    return np.clip(x, _c(x, -1.0), _c(x, 1.0))


def celu(x, alpha=1.0):
    return np.maximum(x, _c(x, 0.0)) + _c(x, alpha) * np.expm1(
        np.minimum(x, _c(x, 0.0)) / _c(x, alpha)
    )


def tanh_shrink(x):
    return x - np.tanh(x)


def squareplus(x, b=4.0):
    return (x + np.sqrt(x * x + _c(x, b))) / _c(x, 2.0)


def soft_shrink(x, threshold=0.5):
    t = _c(x, threshold)
    return np.where(x > t, x - t, np.where(x < -t, x + t, _c(x, 0.0)))


def hard_shrink(x, threshold=0.5):
    return np.where(np.abs(x) > _c(x, threshold), x, _c(x, 0.0))


def sparse_plus(x):
    one = _c(x, 1.0)
    return np.where(x <= -one, _c(x, 0.0), np.where(x >= one, x, (x + one) ** 2 / _c(x, 4.0)))


def sparse_sigmoid(x):
    """Keras 3: 0 below -1, 1 above 1, linear (x + 1) / 2 between."""
    return np.clip((x + _c(x, 1.0)) * _c(x, 0.5), _c(x, 0.0), _c(x, 1.0))


def glu(x, axis=-1):
    """Gated linear unit: the first half of `axis` gated by the sigmoid of the second half."""
    a, b = np.split(x, 2, axis=axis)
    return a * sigmoid(b)


COMMON = {
    "linear": linear,
    "relu": relu,
    "relu6": relu6,
    "sigmoid": sigmoid,
    "hard_silu": hard_silu,
    "hard_swish": hard_silu,
    "tanh": tanh,
    "softmax": softmax,
    "log_softmax": log_softmax,
    "softplus": softplus,
    "softsign": softsign,
    "elu": elu,
    "selu": selu,
    "gelu": gelu,
    "swish": swish,
    "silu": swish,
    "mish": mish,
    "exponential": exponential,
    "leaky_relu": leaky_relu,
    "log_sigmoid": log_sigmoid,
    "hard_tanh": hard_tanh,
    "celu": celu,
    "tanh_shrink": tanh_shrink,
    "squareplus": squareplus,
    "soft_shrink": soft_shrink,
    "hard_shrink": hard_shrink,
    "sparse_plus": sparse_plus,
    "sparse_sigmoid": sparse_sigmoid,
    "glu": glu,
}


def activation_name(value) -> str:
    """The Keras name of an activation as stored in a config (string or dict)."""
    if value is None:
        return "linear"
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        config = value.get("config")
        if isinstance(config, str):
            return config
        if isinstance(config, dict) and "name" in config:
            return config["name"]
        registered = value.get("registered_name") or value.get("class_name")
        if isinstance(registered, str):
            return registered
    raise KerascheckError(f"expected an activation name, found {value!r}")


def resolve(value, keras_major: int = 3):
    """Return the NumPy function for an activation config value."""
    name = activation_name(value)
    if name == "hard_sigmoid":
        return hard_sigmoid_keras2 if keras_major < 3 else hard_sigmoid_keras3
    try:
        return COMMON[name]
    except KeyError:
        known = ", ".join(sorted([*COMMON, "hard_sigmoid"]))
        raise KerascheckError(f"unknown activation '{name}'; supported: {known}") from None


# -- derivatives ---------------------------------------------------------------
# Each entry maps an activation to `d_input(x, y, dy)`: the gradient with respect
# to the pre-activation `x`, given the output `y` and the upstream gradient `dy`.
# At the kinks TensorFlow's choices hold, decided by the ops Keras composes:
# relu'(0) = 0, leaky_relu'(0) = slope, elu'(0) = selu'(0)/scale = 1; relu6 (and
# Keras 3's hard_sigmoid, built on it) passes the gradient strictly inside its
# range, but `clip_by_value` (hard_tanh, Keras 2's hard_sigmoid) also at the
# bounds; celu's `maximum(x, 0)` and `minimum(x, 0)` both pass it at 0, so
# celu'(0) = 2. Conditions are taken on the clipped op's own argument, as
# computed in the input's dtype.


def inside(x, low, high):
    """True strictly inside (low, high): relu6-style clipping. A boolean mask, which
    NumPy multiplies into a float array without a float copy of its own."""

    def within(x, low, high, out):
        np.greater(x, low, out=out)
        np.logical_and(out, np.less(x, high), out=out)

    return threads.elementwise(within, np.empty(np.shape(x), bool), x, _c(x, low), _c(x, high))


def _within(x, low, high):
    """True on [low, high]: `tf.clip_by_value`, whose gradient also passes at the bounds."""
    mask = np.greater_equal(x, _c(x, low))
    return np.logical_and(mask, np.less_equal(x, _c(x, high)), out=mask)


def _softmax_backward(x, y, dy, axis=-1):
    return y * (dy - np.sum(dy * y, axis=axis, keepdims=True))


def _log_softmax_backward(x, y, dy, axis=-1):
    return dy - np.exp(y) * np.sum(dy, axis=axis, keepdims=True)


def _gelu_backward(x, y, dy, approximate=False):
    if approximate:
        c = _c(x, math.sqrt(2 / math.pi))
        t = np.tanh(c * (x + _c(x, 0.044715) * x**3))
        inner = c * (_c(x, 1.0) + _c(x, 3 * 0.044715) * x * x)
        grad = _c(x, 0.5) * (_c(x, 1.0) + t) + _c(x, 0.5) * x * (_c(x, 1.0) - t * t) * inner
        return dy * grad
    pdf = np.exp(-_c(x, 0.5) * x * x) / _c(x, math.sqrt(2 * math.pi))
    cdf = _c(x, 0.5) * (_c(x, 1.0) + erf(x / _c(x, math.sqrt(2.0))))
    return dy * (cdf + x * pdf)


def _glu_backward(x, y, dy, axis=-1):
    a, b = np.split(x, 2, axis=axis)
    s = sigmoid(b)
    return np.concatenate([dy * s, dy * a * s * (_c(x, 1.0) - s)], axis=axis)


def _mish_backward(x, y, dy):
    t = np.tanh(softplus(x))
    return dy * (t + x * (_c(x, 1.0) - t * t) * sigmoid(x))


def _hard_sigmoid_keras3_backward(x, y, dy):
    # relu6(x + 3) / 6
    return dy * inside(x + _c(x, 3.0), 0.0, 6.0) / _c(x, 6.0)


def _hard_silu_backward(x, y, dy):
    # x * hard_sigmoid(x)
    slope = inside(x + _c(x, 3.0), 0.0, 6.0) / _c(x, 6.0)
    return dy * (hard_sigmoid_keras3(x) + x * slope)


def _celu_backward(x, y, dy):
    # maximum(x, 0) + expm1(minimum(x, 0)): TF's maximum/minimum pass ties to x.
    zero = _c(x, 0.0)
    return dy * ((x >= zero) + np.exp(np.minimum(x, zero)) * (x <= zero))


DERIVATIVES = {
    linear: lambda x, y, dy: dy,
    relu: lambda x, y, dy: dy * (x > 0),
    relu6: lambda x, y, dy: dy * inside(x, 0.0, 6.0),
    sigmoid: lambda x, y, dy: dy * y * (_c(x, 1.0) - y),
    hard_sigmoid_keras3: _hard_sigmoid_keras3_backward,
    # clip_by_value(0.2 x + 0.5, 0, 1)
    hard_sigmoid_keras2: lambda x, y, dy: (
        dy * _c(x, 0.2) * _within(_c(x, 0.2) * x + _c(x, 0.5), 0.0, 1.0)
    ),
    hard_silu: _hard_silu_backward,
    tanh: lambda x, y, dy: dy * (_c(x, 1.0) - y * y),
    softmax: _softmax_backward,
    log_softmax: _log_softmax_backward,
    softplus: lambda x, y, dy: dy * sigmoid(x),
    softsign: lambda x, y, dy: dy / (_c(x, 1.0) + np.abs(x)) ** 2,
    elu: lambda x, y, dy: np.where(x > 0, dy, dy * (y + _c(x, 1.0))),
    # TF's SeluGrad takes the negative branch only where the output is < 0.
    selu: lambda x, y, dy: (
        dy
        * _c(x, SELU_SCALE)
        * np.where(x < 0, _c(x, SELU_ALPHA) * np.exp(np.minimum(x, _c(x, 0.0))), _c(x, 1.0))
    ),
    gelu: _gelu_backward,
    swish: lambda x, y, dy: dy * (sigmoid(x) * (_c(x, 1.0) + x * (_c(x, 1.0) - sigmoid(x)))),
    mish: _mish_backward,
    exponential: lambda x, y, dy: dy * y,
    leaky_relu: lambda x, y, dy: np.where(x > 0, dy, dy * _c(x, 0.2)),
    log_sigmoid: lambda x, y, dy: dy * sigmoid(-x),
    hard_tanh: lambda x, y, dy: dy * _within(x, -1.0, 1.0),
    celu: _celu_backward,
    tanh_shrink: lambda x, y, dy: dy * np.tanh(x) ** 2,
    squareplus: lambda x, y, dy: dy * (_c(x, 1.0) + x / np.sqrt(x * x + _c(x, 4.0))) / _c(x, 2.0),
    soft_shrink: lambda x, y, dy: dy * (np.abs(x) > _c(x, 0.5)),
    hard_shrink: lambda x, y, dy: dy * (np.abs(x) > _c(x, 0.5)),
    sparse_plus: lambda x, y, dy: (
        dy
        * np.where(x <= -1, _c(x, 0.0), np.where(x >= 1, _c(x, 1.0), (x + _c(x, 1.0)) / _c(x, 2.0)))
    ),
    sparse_sigmoid: lambda x, y, dy: dy * _c(x, 0.5) * inside(x, -1.0, 1.0),
    glu: _glu_backward,
}


ALONG_AXIS = (softmax, log_softmax, glu)  # the rest are elementwise
ONE_PASS = (linear, relu, relu6)  # split over the threads by themselves


def apply(fn, x):
    """`fn(x)`; an elementwise activation of several steps piece by piece over the threads."""
    return fn(x) if fn in ALONG_AXIS or fn in ONE_PASS else threads.chunked(fn, x)


def apply_in_place(fn, x):
    """`apply(fn, x)`, written over `x` itself when `fn` is elementwise and `x` is a
    C-contiguous float array (a new array otherwise). For an `x` nothing else reads."""
    if fn is linear:
        return x
    if fn in ALONG_AXIS or x.dtype.kind != "f" or not x.flags.c_contiguous:
        return apply(fn, x)
    if fn is relu or fn is relu6:
        return clip_in_place(x, 0.0, 6.0 if fn is relu6 else None)
    return threads.chunked(fn, x, out=x)


def clip_in_place(x, low, high=None):
    """x clipped to [low, high] (high None: no upper bound) in place, as `relu` clips."""
    top = np.inf if high is None else high
    return threads.elementwise(np.clip, x, x, _c(x, low), _c(x, top))


def backward(fn, x, y, dy):
    """Gradient with respect to the input of activation `fn`, at input `x` and output `y`."""
    try:
        derivative = DERIVATIVES[fn]
    except KeyError:
        raise KerascheckError(f"no derivative for activation '{fn.__name__}'") from None
    if fn in ALONG_AXIS:
        return derivative(x, y, dy).astype(x.dtype, copy=False)
    return threads.chunked(derivative, x, y, dy).astype(x.dtype, copy=False)
