"""TensorFlow and Keras ops applied to Keras tensors inside functional models.

tf_keras wraps a TensorFlow function called on a Keras tensor (`x + y`,
`tf.reshape(x, s)`, `x[:, 1:3]`) in a `TFOpLambda` or `SlicingOpLambda` layer
that stores only the function's canonical name (`config["function"]`, e.g.
"math.add") and its call arguments; loading it in Keras means looking that name
up in TensorFlow (tf_keras/src/layers/core/tf_op_layer.py). kerascheck never
looks anything up: `TF_FUNCTIONS` is the allow-list, one NumPy function per
name with TensorFlow's parameter names, broadcasting and axis conventions.
Anything else is refused by name when the file is read (loading/safety.py).

Keras 3 records the same calls as operation nodes (`keras.src.ops.numpy.Add`,
`GetItem`, `Reshape`, ...) whose parameters live in the config and whose
tensors and constants are positional arguments; `KERAS3_OPS` maps those class
names onto the same functions. The loader renames the op classes whose names
are also layer classes (`Add` -> `AddOp`, ...; loading/config.py).
"""

from __future__ import annotations

import numpy as np

from ...errors import UnsupportedLayerError
from .. import activations
from ..base import Layer

# -- helpers -------------------------------------------------------------------


def _array(value, like=None) -> np.ndarray:
    """A constant operand as an array of the tensor operand's dtype (TensorFlow converts
    Python numbers and lists to the other operand's dtype; a float constant with an integer
    tensor is a float32 computation in Keras 3, and no file TensorFlow can write)."""
    if isinstance(value, np.ndarray) or like is None:
        return np.asarray(value)
    dtype = like.dtype
    if dtype.kind in "iub" and np.asarray(value).dtype.kind == "f":
        dtype = np.dtype("float32")
    return np.asarray(value, dtype=dtype)


def _operands(x, y):
    """Both operands of a binary op, constants cast to the tensor operand's dtype."""
    if isinstance(x, np.ndarray) and not isinstance(y, np.ndarray):
        return x, _array(y, x)
    if isinstance(y, np.ndarray) and not isinstance(x, np.ndarray):
        return _array(x, y), y
    return np.asarray(x), np.asarray(y)


def _axes(axis):
    """TensorFlow takes an int, a list of ints or None for reduction axes."""
    if isinstance(axis, (list, tuple)):
        return tuple(int(a) for a in axis)
    return None if axis is None else int(axis)


def _binary(op):
    def binary(x, y, name=None):
        return op(*_operands(x, y))

    binary.__doc__ = f"`{op.__name__}` with NumPy broadcasting, as TensorFlow broadcasts."
    return binary


def _unary(op):
    def unary(x, name=None):
        return op(np.asarray(x))

    return unary


def _reduce(op):
    def reduce(input_tensor, axis=None, keepdims=False, name=None):
        """`axis=None` reduces every axis (the batch axis included), as TensorFlow does."""
        return np.asarray(op(input_tensor, axis=_axes(axis), keepdims=bool(keepdims)))

    return reduce


# -- the functions ---------------------------------------------------------------


def truediv(x, y, name=None):
    """TensorFlow divides integers in floating point: (u)int8/16 in float32, wider in
    float64 (tensorflow/python/ops/math_ops.py `_truediv_python3`)."""
    x, y = _operands(x, y)
    if x.dtype.kind in "iu":
        wide = x.dtype.itemsize > 2
        x, y = (v.astype("float64" if wide else "float32") for v in (x, y))
    return np.true_divide(x, y)


def floordiv(x, y, name=None):
    """TensorFlow floors the float quotient (Eigen `google_floor_div_real`), which can
    differ by one from NumPy's `floor_divide` (fmod-based) when `x / y` rounds up."""
    x, y = _operands(x, y)
    if x.dtype.kind == "f":
        return np.floor(np.true_divide(x, y))
    return np.floor_divide(x, y)


def reshape(tensor, shape, name=None):
    """`shape` includes the batch axis; one -1 is inferred."""
    return np.reshape(tensor, tuple(int(s) for s in shape))


def concat(values, axis, name="concat"):
    return np.concatenate([np.asarray(v) for v in values], axis=int(axis))


def stack(values, axis=0, name="stack"):
    return np.stack([np.asarray(v) for v in values], axis=int(axis))


def split(value, num_or_size_splits, axis=0, num=None, name="split"):
    """An int splits into that many equal parts; a list gives the sizes (one may be -1)."""
    axis = int(axis)
    if isinstance(num_or_size_splits, (list, tuple)):
        sizes = [int(s) for s in num_or_size_splits]
        if -1 in sizes:
            sizes[sizes.index(-1)] = value.shape[axis] - (sum(sizes) + 1)
        return np.split(value, np.cumsum(sizes)[:-1], axis=axis)
    return np.split(value, int(num_or_size_splits), axis=axis)


def numpy_split(x, indices_or_sections, axis=0):
    """Keras 3's `ops.split` follows NumPy: a list gives split *indices*, not sizes."""
    if isinstance(indices_or_sections, (list, tuple)):
        return np.split(x, [int(i) for i in indices_or_sections], axis=int(axis))
    return np.split(x, int(indices_or_sections), axis=int(axis))


def expand_dims(input, axis, name=None):  # noqa: A002 (TensorFlow's parameter name)
    return np.expand_dims(input, _axes(axis))


def squeeze(input, axis=None, name=None, squeeze_dims=None):  # noqa: A002
    """Without an axis every size-1 axis goes, the batch axis too when the batch is 1."""
    axis = squeeze_dims if axis is None else axis
    return np.squeeze(input, axis=_axes(axis))


def transpose(a, perm=None, conjugate=False, name="transpose"):
    """`perm=None` reverses all axes, the batch axis included."""
    return np.transpose(a, None if perm is None else tuple(int(p) for p in perm))


def swapaxes(x, axis1, axis2):
    return np.swapaxes(x, int(axis1), int(axis2))


def cast(x, dtype, name=None):
    """Float to integer truncates toward zero, as `tf.cast` does."""
    if not isinstance(dtype, str) or dtype not in _DTYPES:
        raise ValueError(f"expected a cast to one of {sorted(_DTYPES)}, found {dtype!r}")
    return np.asarray(x).astype(dtype)


_DTYPES = {
    "float16",
    "float32",
    "float64",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "bool",
}


def clip_by_value(t, clip_value_min, clip_value_max, name=None):
    """TensorFlow takes the minimum with the upper bound first, then the maximum."""
    t = np.asarray(t)
    return np.maximum(np.minimum(t, _array(clip_value_max, t)), _array(clip_value_min, t))


def matmul(
    a,
    b,
    transpose_a=False,
    transpose_b=False,
    adjoint_a=False,
    adjoint_b=False,
    a_is_sparse=False,
    b_is_sparse=False,
    output_type=None,
    grad_a=False,
    grad_b=False,
    name=None,
):
    """Batched matrix product of the last two axes; adjoint is transpose for real values
    and the `*_is_sparse`/`grad_*` flags are performance hints only."""
    if output_type is not None:
        raise ValueError(f"expected no output_type for matmul, found {output_type!r}")
    a, b = np.asarray(a), np.asarray(b)
    if transpose_a or adjoint_a:
        a = np.swapaxes(a, -1, -2)
    if transpose_b or adjoint_b:
        b = np.swapaxes(b, -1, -2)
    return np.matmul(a, b)


def getitem(tensor, slice_spec, var=None):
    """`tensor[slice_spec]`; TensorFlow reads a list spec as a tuple of per-axis indices
    (tensorflow/python/ops/array_ops.py `_slice_helper`), never as NumPy fancy indexing."""
    if isinstance(slice_spec, list):
        slice_spec = tuple(slice_spec)
    return np.asarray(tensor)[_index(slice_spec)]


def _index(spec):
    """Slices saved as `{"start", "stop", "step"}` dicts (tf_keras) become slices."""
    if isinstance(spec, tuple):
        return tuple(_index(s) for s in spec)
    if isinstance(spec, dict) and set(spec) == {"start", "stop", "step"}:
        return slice(spec["start"], spec["stop"], spec["step"])
    if isinstance(spec, np.ndarray) and spec.ndim == 0:
        return int(spec)
    return spec


def softmax(logits, axis=None, name=None):
    return activations.softmax(np.asarray(logits), axis=-1 if axis is None else int(axis))


def log_softmax(logits, axis=None, name=None):
    return activations.log_softmax(np.asarray(logits), axis=-1 if axis is None else int(axis))


def gelu(features, approximate=False, name=None):
    """`tf.nn.gelu` defaults to the exact (erf) form, unlike Keras 3's `ops.gelu`."""
    return activations.gelu(np.asarray(features), approximate=bool(approximate))


def silu(features, beta=1.0):
    x = np.asarray(features)
    return x * activations.sigmoid(_array(beta, x) * x)


def leaky_relu(features, alpha=0.2, name=None):
    return activations.leaky_relu(np.asarray(features), float(alpha))


def _variance(x, axis=None, keepdims=False):
    return np.var(x, axis=axis, keepdims=keepdims)


def _std(x, axis=None, keepdims=False):
    return np.std(x, axis=axis, keepdims=keepdims)


# Saved `function` name -> NumPy function with TensorFlow's signature. This is the
# allow-list loading/safety.py checks: adding a symbol is one line here.
TF_FUNCTIONS = {
    "__operators__.add": _binary(np.add),
    "math.add": _binary(np.add),
    "math.subtract": _binary(np.subtract),
    "math.multiply": _binary(np.multiply),
    "math.truediv": truediv,
    "math.divide": truediv,
    "math.floordiv": floordiv,
    "compat.v1.floor_div": floordiv,
    "math.maximum": _binary(np.maximum),
    "math.minimum": _binary(np.minimum),
    "math.pow": _binary(np.power),
    "math.negative": _unary(np.negative),
    "math.abs": _unary(np.abs),
    "math.sign": _unary(np.sign),
    "math.square": _unary(np.square),
    "math.sqrt": _unary(np.sqrt),
    "math.rsqrt": _unary(lambda x: 1 / np.sqrt(x)),
    "math.exp": _unary(np.exp),
    "math.log": _unary(np.log),
    "math.tanh": _unary(np.tanh),
    "math.sigmoid": _unary(activations.sigmoid),
    "math.log_sigmoid": _unary(activations.log_sigmoid),
    "math.softplus": _unary(activations.softplus),
    "math.erf": _unary(activations.erf),
    "math.reduce_mean": _reduce(np.mean),
    "math.reduce_sum": _reduce(np.sum),
    "math.reduce_max": _reduce(np.max),
    "math.reduce_min": _reduce(np.min),
    "math.reduce_prod": _reduce(np.prod),
    "math.reduce_variance": _reduce(_variance),
    "math.reduce_std": _reduce(_std),
    "nn.relu": _unary(activations.relu),
    "nn.relu6": _unary(activations.relu6),
    "nn.elu": _unary(activations.elu),
    "nn.leaky_relu": leaky_relu,
    "nn.softmax": softmax,
    "nn.log_softmax": log_softmax,
    "nn.gelu": gelu,
    "nn.silu": silu,
    "reshape": reshape,
    "concat": concat,
    "stack": stack,
    "split": split,
    "expand_dims": expand_dims,
    "squeeze": squeeze,
    "compat.v1.squeeze": squeeze,
    "transpose": transpose,
    "compat.v1.transpose": transpose,
    "cast": cast,
    "clip_by_value": clip_by_value,
    "linalg.matmul": matmul,
    "__operators__.getitem": getitem,
}


class TFOpLambda(Layer):
    """One allow-listed TensorFlow function, called with the arguments saved in the node.

    tf_keras names every argument after the first by TensorFlow's parameter name
    (`{"y": ..., "name": null}`), so the functions above keep those names; a call
    they cannot bind is an error naming the layer and the function.
    """

    def setup(self, config):
        self.symbol = config.get("function")
        self.function = TF_FUNCTIONS.get(self.symbol) if isinstance(self.symbol, str) else None
        if self.function is None:
            raise UnsupportedLayerError(
                f"layer '{self.name}' ({self.class_name}) calls tf.{self.symbol}, which "
                f"kerascheck does not implement; supported: {', '.join(sorted(TF_FUNCTIONS))}"
            )

    def call(self, inputs, *args, **kwargs):
        try:
            with np.errstate(all="ignore"):  # TensorFlow yields inf/nan silently, so do we
                return self.function(inputs, *args, **kwargs)
        except TypeError as exc:
            raise self.error(f"cannot call tf.{self.symbol} with the saved arguments: {exc}")

    def vjp(self, inputs, *args, training=False, noise=None, **kwargs):
        from .op_gradients import TF_SYMBOLS, op_vjp

        kind = TF_SYMBOLS.get(self.symbol)
        result = None if kind is None else op_vjp(self, kind, inputs, args, kwargs)
        if result is None:
            return super().vjp(inputs, *args)
        return result


class SlicingOpLambda(TFOpLambda):
    """tf_keras' layer for `tensor[...]` (`__operators__.getitem`)."""


# -- Keras 3 operation nodes ---------------------------------------------------------


class OpNode(Layer):
    """A Keras 3 operation: tensors and constants are call arguments, parameters come
    from the config under Keras' names (`PARAMS` maps them to the function's)."""

    function = None
    PARAMS: dict = {}

    def setup(self, config):
        self.params = {
            ours: config[theirs] for theirs, ours in self.PARAMS.items() if theirs in config
        }

    def call(self, inputs, *args):
        with np.errstate(all="ignore"):
            return type(self).function(inputs, *args, **self.params)

    def vjp(self, inputs, *args, training=False, noise=None):
        from .op_gradients import op_vjp

        result = op_vjp(self, type(self).__name__, inputs, args)
        if result is None:
            return super().vjp(inputs, *args)
        return result


def _op(name: str, function, **params) -> type[OpNode]:
    doc = f"Keras 3 `{name}` operation node."
    return type(
        name, (OpNode,), {"function": staticmethod(function), "PARAMS": params, "__doc__": doc}
    )


KERAS3_OPS = (
    _op("AddOp", _binary(np.add)),
    _op("SubtractOp", _binary(np.subtract)),
    _op("MultiplyOp", _binary(np.multiply)),
    _op("MaximumOp", _binary(np.maximum)),
    _op("MinimumOp", _binary(np.minimum)),
    _op("TrueDivide", truediv),
    _op("Divide", truediv),
    _op("Power", _binary(np.power)),
    _op("Negative", _unary(np.negative)),
    _op("Absolute", _unary(np.abs)),
    _op("Square", _unary(np.square)),
    _op("Sqrt", _unary(np.sqrt)),
    _op("Exp", _unary(np.exp)),
    _op("Log", _unary(np.log)),
    _op("Tanh", _unary(np.tanh)),
    _op("Sigmoid", _unary(activations.sigmoid)),
    _op("Relu", _unary(activations.relu)),
    _op("Silu", silu),
    _op("SoftmaxOp", softmax, axis="axis"),
    _op("Matmul", matmul),
    _op("GetItem", getitem),  # Keras 3 saves a tuple key as a list: read as a tuple
    _op("ReshapeOp", reshape, newshape="shape"),
    _op("ConcatenateOp", concat, axis="axis"),
    _op("Stack", stack, axis="axis"),
    _op("Split", numpy_split, indices_or_sections="indices_or_sections", axis="axis"),
    _op("ExpandDims", expand_dims, axis="axis"),
    _op("Squeeze", squeeze, axis="axis"),
    _op("Transpose", transpose, axes="perm"),
    _op("Swapaxes", swapaxes, axis1="axis1", axis2="axis2"),
    _op("Cast", cast, dtype="dtype"),
    _op("Clip", clip_by_value, x_min="clip_value_min", x_max="clip_value_max"),
    _op("Mean", _reduce(np.mean), axis="axis", keepdims="keepdims"),
    _op("Sum", _reduce(np.sum), axis="axis", keepdims="keepdims"),
    _op("Max", _reduce(np.max), axis="axis", keepdims="keepdims"),
    _op("Min", _reduce(np.min), axis="axis", keepdims="keepdims"),
    # The mask ops Keras 3 saves when a layer's call takes the mask of an Embedding or Masking.
    _op("NotEqual", _binary(np.not_equal)),
    _op("Any", _reduce(np.any), axis="axis", keepdims="keepdims"),
)

LAYERS = (TFOpLambda, SlicingOpLambda, *KERAS3_OPS)
