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
are also layer classes (`Add` -> `AddOp`, ...; loading/config.py). An
operation class not listed here is refused by name (engine/registry.py).

Every function keeps its operands first and its parameters under one name
each, so the backward (op_gradients.py) binds a call of either flavor to the
function's signature and finds operands and parameters by the same names.
Where Keras 3 and TensorFlow differ (softmax's `axis=None`, integer sums),
the Keras 3 node has its own function.
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
    """`op` on one tensor; parameters (`alpha`, `threshold`, ...) pass as keywords."""

    def unary(x, name=None, **params):
        return op(np.asarray(x), **params)

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


def _sum(x, axis=None, keepdims=False):
    x = _accumulating(x)
    return np.sum(x, axis=axis, keepdims=keepdims, dtype=x.dtype)


def _std(x, axis=None, keepdims=False):
    return np.std(x, axis=axis, keepdims=keepdims)


def _keras_axis(axis, x):
    """Keras 3 reads `axis=None` as every axis (TensorFlow's softmax reads it as -1)."""
    return tuple(range(np.ndim(x))) if axis is None else _axes(axis)


def keras_softmax(x, axis=-1):
    return activations.softmax(np.asarray(x), axis=_keras_axis(axis, x))


def keras_log_softmax(x, axis=-1):
    return activations.log_softmax(np.asarray(x), axis=_keras_axis(axis, x))


def elu(features, alpha=1.0, name=None):
    return activations.elu(np.asarray(features), float(alpha))


def threshold(x, threshold, default_value):
    """`where(x > threshold, x, default_value)`."""
    x = np.asarray(x)
    return np.where(x > _array(threshold, x), x, _array(default_value, x))


def where(condition, x=None, y=None, name=None):
    if x is None or y is None:
        raise ValueError("expected both branches of where, found a one-argument where")
    x, y = _operands(x, y)
    return np.where(np.asarray(condition, dtype=bool), x, y)


def reduce_extreme(op):
    def reduce(input_tensor, axis=None, keepdims=False, initial=None, name=None):
        """Keras 3's `initial` takes the maximum (minimum) with the reduction."""
        y = np.asarray(op(input_tensor, axis=_axes(axis), keepdims=bool(keepdims)))
        if initial is None:
            return y
        other = np.maximum if op is np.max else np.minimum
        return other(y, _array(initial, y))

    return reduce


def _arg(op):
    def arg(x, axis=None, keepdims=False):
        """Keras returns int32 indices; `axis=None` indexes the flattened tensor."""
        return np.asarray(op(x, axis=_axes(axis), keepdims=bool(keepdims))).astype("int32")

    return arg


def _accumulating(x, dtype=None):
    """`x` in the dtype Keras sums, multiplies and accumulates in: `dtype` when given,
    else the input's, with bool and 8/16-bit integers widened to 32 bits (TensorFlow then
    keeps that dtype, where NumPy would widen integers to 64 bits)."""
    x = np.asarray(x)
    if dtype is not None:
        return cast(x, dtype)
    if x.dtype == bool or (x.dtype.kind in "iu" and x.dtype.itemsize < 4):
        return x.astype("uint32" if x.dtype.kind == "u" else "int32")
    return x


def prod(x, axis=None, keepdims=False, dtype=None):
    """Keras 3.15's TensorFlow `prod` widens small types but ignores a given `dtype`."""
    x = _accumulating(x)
    return np.prod(x, axis=_axes(axis), keepdims=bool(keepdims), dtype=x.dtype)


def _cumulative(op):
    def cumulative(x, axis=None, dtype=None):
        """`axis=None` runs over the flattened tensor, the batch axis included."""
        x = _accumulating(x, dtype)
        x = np.ravel(x) if axis is None else x
        return op(x, axis=0 if axis is None else int(axis), dtype=x.dtype)

    return cumulative


def round_(x, decimals=0):
    """Half to even, as `tf.round`; with decimals, scaled by 10**decimals first."""
    x = np.asarray(x)
    if not decimals:
        return np.round(x)
    factor = _array(10.0**decimals, x)
    return np.round(x * factor) / factor


def trunc(x):
    return np.trunc(x) if np.asarray(x).dtype.kind == "f" else np.asarray(x)


def norm(x, ord=None, axis=None, keepdims=False):  # noqa: A002 (Keras' parameter name)
    return np.linalg.norm(x, ord=ord, axis=_axes(axis), keepdims=bool(keepdims))


def logsumexp(x, axis=None, keepdims=False, name=None):
    x = np.asarray(x)
    axes = _axes(axis)
    top = np.max(x, axis=axes, keepdims=True)
    y = np.log(np.sum(np.exp(x - top), axis=axes, keepdims=True)) + top
    return y if keepdims else np.squeeze(y, axis=axes)


def einsum(*operands, subscripts):
    return np.einsum(subscripts, *[np.asarray(o) for o in operands])


def tile(x, repeats):
    return np.tile(x, repeats)


def repeat(x, repeats, axis=None):
    return np.repeat(x, repeats, axis=axis)


def pad(x, pad_width, mode="constant", constant_values=None):
    if mode == "constant":
        fill = 0 if constant_values is None else constant_values
        return np.pad(x, pad_width, mode="constant", constant_values=fill)
    return np.pad(x, pad_width, mode=mode)


def flip(x, axis=None):
    return np.flip(x, axis=_axes(axis))


def roll(x, shift, axis=None):
    return np.roll(x, shift, axis=_axes(axis))


def moveaxis(x, source, destination):
    return np.moveaxis(x, source, destination)


def broadcast_to(x, shape):
    return np.broadcast_to(x, tuple(shape)).copy()


def ravel(x):
    return np.ravel(x)


def mod(x, y):
    return np.mod(*_operands(x, y))


def _logical(op):
    def logical(x, y=None, name=None):
        args = (x,) if y is None else _operands(x, y)
        return op(*(np.asarray(a, dtype=bool) for a in args))

    return logical


# -- tf_keras TFOpLambda functions and Keras 3 ops seen in converters' test models --------


def tf_arg(op):
    def arg(input, axis=None, output_type="int64", name=None, dimension=None):  # noqa: A002
        """`tf.math.argmax/argmin`: axis 0 when not given, int64 indices by default."""
        axis = dimension if axis is None else axis
        axis = 0 if axis is None else int(axis)
        return np.asarray(op(input, axis=axis)).astype(cast_dtype(output_type))

    return arg


def cast_dtype(dtype):
    """A saved dtype name, checked against the dtypes `cast` allows."""
    if not isinstance(dtype, str) or dtype not in _DTYPES:
        raise TypeError(f"expected a dtype among {sorted(_DTYPES)}, found {dtype!r}")
    return dtype


def bias_add(value, bias, data_format=None, name=None):
    """`tf.nn.bias_add`: the bias on the last axis, or on axis 1 for an `NC...` format."""
    value = np.asarray(value)
    bias = _array(bias, value)
    if isinstance(data_format, str) and data_format.startswith("NC"):
        return value + bias.reshape((-1,) + (1,) * (value.ndim - 2))
    return value + bias


def tf_tile(input, multiples, name=None):  # noqa: A002
    return np.tile(input, tuple(int(m) for m in multiples))


def floormod(x, y, name=None):
    """`tf.math.floormod`: the remainder takes the divisor's sign (NumPy's `mod`)."""
    return np.mod(*_operands(x, y))


def tf_gather(params, indices, validate_indices=None, name=None, axis=None, batch_dims=0):
    """`tf.gather` with constant indices (`batch_dims` 0); out-of-range indices are an error,
    as on TensorFlow's CPU kernel."""
    if batch_dims:
        raise TypeError(f"batch_dims={batch_dims} is not supported (only 0)")
    params = np.asarray(params)
    axis = 0 if axis is None else int(axis) % params.ndim
    indices = np.asarray(indices)
    if indices.dtype.kind not in "iu":
        raise TypeError(f"indices must be integers, found {indices.dtype}")
    size = params.shape[axis]
    if indices.size and (indices.min() < 0 or indices.max() >= size):
        raise TypeError(f"indices {indices.tolist()} not in [0, {size}) on axis {axis}")
    return np.take(params, indices, axis=axis)


def take(x, indices, axis=None):
    """Keras 3 `ops.take`: `axis=None` indexes the flattened tensor; negative indices wrap."""
    x = np.asarray(x)
    indices = np.asarray(indices)
    if axis is None:
        x, axis = np.ravel(x), 0
    size = x.shape[int(axis)]
    return tf_gather(x, np.where(indices < 0, indices + size, indices), axis=axis)


def l2_normalize(x, axis=None, epsilon=1e-12, name=None, dim=None):
    """`tf.math.l2_normalize`: `x * rsqrt(max(sum(x**2), epsilon))`; `axis=None` is every
    axis (the batch included)."""
    x = np.asarray(x)
    axis = dim if axis is None else axis
    square_sum = np.sum(np.square(x), axis=_axes(axis), keepdims=True)
    return x / np.sqrt(np.maximum(square_sum, _array(epsilon, x)))


def keras_normalize(x, axis=-1, order=2, epsilon=None):
    """Keras 3 `ops.normalize`: order 2 is `x * min(rsqrt(sum(x**2)), 1/epsilon)`, others
    `x / max(norm, epsilon)`; epsilon defaults to 1e-7."""
    x = np.asarray(x)
    eps = _array(1e-7 if epsilon is None else epsilon, x)
    if int(order) == 2:
        square_sum = np.sum(np.square(x), axis=_axes(axis), keepdims=True)
        return x * np.minimum(1 / np.sqrt(square_sum), 1 / eps)
    norm = np.linalg.norm(x, ord=int(order), axis=_axes(axis), keepdims=True)
    return x / np.maximum(norm, eps)


def tf_pad(tensor, paddings, mode="CONSTANT", name=None, constant_values=0):
    """`tf.pad`: CONSTANT, REFLECT or SYMMETRIC (any case)."""
    mode = str(mode).lower()
    if mode not in ("constant", "reflect", "symmetric"):
        raise TypeError(f"mode {mode!r} is not one of CONSTANT, REFLECT, SYMMETRIC")
    return pad(tensor, [tuple(int(v) for v in p) for p in paddings], mode, constant_values)


def tf_reverse(tensor, axis, name=None):
    return np.flip(tensor, axis=_axes(axis))


def one_hot(x, num_classes, axis=-1, dtype=None, sparse=False):
    """Keras 3 `ops.one_hot`: indices outside `[0, num_classes)` give an all-zero vector."""
    if sparse:
        raise TypeError("sparse one_hot is not supported")
    x = np.asarray(x)
    y = (x[..., None] == np.arange(int(num_classes))).astype(cast_dtype(dtype or "float32"))
    return np.moveaxis(y, -1, axis) if axis not in (-1, x.ndim) else y


def tf_one_hot(indices, depth, on_value=None, off_value=None, axis=None, dtype=None, name=None):
    """`tf.one_hot`: float32 unless `dtype`; indices outside `[0, depth)` get `off_value`."""
    dtype = cast_dtype(dtype) if dtype is not None else "float32"
    on = 1 if on_value is None else on_value
    off = 0 if off_value is None else off_value
    hot = one_hot(indices, depth, -1 if axis is None else int(axis), "bool")
    return np.where(hot, on, off).astype(dtype)


def tf_depth_to_space(input, block_size, data_format="NHWC", name=None):  # noqa: A002
    layout = "channels_first" if data_format == "NCHW" else "channels_last"
    return depth_to_space(input, block_size, layout)


def depth_to_space(x, block_size, data_format="channels_last"):
    """`tf.nn.depth_to_space` (DCR order): output `(h*b + i, w*b + j, c)` reads input channel
    `(i*b + j) * C_out + c` at `(h, w)`."""
    x = np.asarray(x)
    b = int(block_size)
    if data_format == "channels_first":
        x = np.moveaxis(x, 1, -1)
    n, h, w, c = x.shape
    if c % (b * b):
        raise TypeError(f"{c} channels are not divisible by block_size**2 = {b * b}")
    y = x.reshape(n, h, w, b, b, c // (b * b)).transpose(0, 1, 3, 2, 4, 5)
    y = y.reshape(n, h * b, w * b, c // (b * b))
    return np.moveaxis(y, -1, 1) if data_format == "channels_first" else y


def tf_cumsum(x, axis=0, exclusive=False, reverse=False, name=None):
    """`tf.math.cumsum`: `exclusive` leaves each element out of its own sum, `reverse`
    sums from the end."""
    x = _accumulating(x)
    axis = int(axis)
    if reverse:
        x = np.flip(x, axis)
    y = np.cumsum(x, axis=axis, dtype=x.dtype)
    if exclusive:
        y = np.concatenate(
            [np.zeros_like(np.take(y, [0], axis=axis)), np.delete(y, -1, axis=axis)], axis=axis
        )
    return np.flip(y, axis) if reverse else y


def top_k(x, k=1, sorted=True):  # noqa: A002 (Keras' parameter name)
    """(values, indices) of the `k` largest entries along the last axis, largest first;
    equal values keep their order (the lower index first), as TensorFlow's TopKV2."""
    x = np.asarray(x)
    k = int(k)
    if not 0 <= k <= x.shape[-1]:
        raise TypeError(f"k={k} is not between 0 and the last axis' size {x.shape[-1]}")
    keys = -x.astype(np.float64) if x.dtype.kind in "iub" else -x
    indices = np.argsort(keys, axis=-1, kind="stable")[..., :k]
    return [np.take_along_axis(x, indices, axis=-1), indices.astype(np.int32)]


def tf_top_k(input, k=1, sorted=True, index_type=None, name=None):  # noqa: A002
    if index_type not in (None, "int32"):
        values, indices = top_k(input, k)
        return [values, indices.astype(cast_dtype(index_type))]
    return top_k(input, k, sorted)


def unstack(x, num=None, axis=0):
    x = np.asarray(x)
    axis = int(axis)
    if num is not None and int(num) != x.shape[axis]:
        raise TypeError(f"num={num} does not match axis {axis} of size {x.shape[axis]}")
    return [np.take(x, i, axis=axis) for i in range(x.shape[axis])]


def tf_unstack(value, num=None, axis=0, name="unstack"):
    return unstack(value, num, axis)


RESIZE_METHODS = ("bilinear", "nearest", "bicubic", "area", "lanczos3", "lanczos5", "gaussian")


def tf_image_resize(
    images, size, method="bilinear", preserve_aspect_ratio=False, antialias=False, name=None
):
    """`tf.image.resize` of a channels-last image or batch of images, in float32."""
    from .preprocessing import resize_images

    method = str(method).lower()
    if method not in RESIZE_METHODS:
        raise TypeError(f"method '{method}' is not one of {RESIZE_METHODS}")
    if preserve_aspect_ratio or antialias:
        raise TypeError("preserve_aspect_ratio and antialias are not supported (expected False)")
    x = np.asarray(images)
    if x.ndim not in (3, 4):
        raise TypeError(f"expected an image or a batch of images (rank 3 or 4), found {x.shape}")
    batch = x if x.ndim == 4 else x[None]
    if method != "nearest" or batch.dtype.kind != "f":
        batch = batch.astype(np.float32)
    y = resize_images(batch, (int(size[0]), int(size[1])), method)
    return y if x.ndim == 4 else y[0]


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
    "math.reduce_sum": _reduce(_sum),
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
    # What tf_keras' own activations write when called on a Keras tensor (elu with an
    # alpha is `where(x > 0, elu(x), alpha * elu(x))`), and comparisons around them.
    "nn.selu": _unary(activations.selu),
    "nn.softsign": _unary(activations.softsign),
    "where": where,
    "math.greater": _binary(np.greater),
    "math.greater_equal": _binary(np.greater_equal),
    "math.less": _binary(np.less),
    "math.less_equal": _binary(np.less_equal),
    "math.equal": _binary(np.equal),
    "math.not_equal": _binary(np.not_equal),
    "math.logical_and": _logical(np.logical_and),
    "math.logical_or": _logical(np.logical_or),
    "math.logical_not": _logical(np.logical_not),
    "math.log1p": _unary(np.log1p),
    "math.expm1": _unary(np.expm1),
    "math.reciprocal": _unary(np.reciprocal),
    "math.floor": _unary(np.floor),
    "math.ceil": _unary(np.ceil),
    "math.round": _unary(np.round),
    "math.sin": _unary(np.sin),
    "math.cos": _unary(np.cos),
    "math.reduce_logsumexp": logsumexp,
    "math.argmax": tf_arg(np.argmax),
    "math.argmin": tf_arg(np.argmin),
    "nn.bias_add": bias_add,
    "tile": tf_tile,
    "math.floormod": floormod,
    "math.mod": floormod,
    "gather": tf_gather,
    "compat.v1.gather": tf_gather,
    "math.l2_normalize": l2_normalize,
    "pad": tf_pad,
    "compat.v1.pad": tf_pad,
    "reverse": tf_reverse,
    "one_hot": tf_one_hot,
    "nn.depth_to_space": tf_depth_to_space,
    "math.cumsum": tf_cumsum,
    "cumsum": tf_cumsum,
    "math.top_k": tf_top_k,
    "nn.top_k": tf_top_k,
    "unstack": tf_unstack,
    "image.resize": tf_image_resize,
    # tf_keras drops tf.einsum's operand tensors when saving: listed so that reading
    # the file names that cause (loading/config.py) rather than the allow-list.
    "einsum": lambda equation, **_: np.einsum(equation),
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
                "kerascheck does not implement; `kerascheck layers --family 'tf functions'` "
                "lists the supported ones"
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

    def call(self, inputs, *args, **kwargs):
        with np.errstate(all="ignore"):
            return type(self).function(inputs, *args, **kwargs, **self.params)

    def vjp(self, inputs, *args, training=False, noise=None, **kwargs):
        from .op_gradients import op_vjp

        result = op_vjp(self, type(self).__name__, inputs, args, kwargs)
        if result is None:
            return super().vjp(inputs, *args)
        return result


def _op(name: str, function, **params) -> type[OpNode]:
    doc = f"Keras 3 `{name}` operation node."
    return type(
        name, (OpNode,), {"function": staticmethod(function), "PARAMS": params, "__doc__": doc}
    )


_AXIS = {"axis": "axis", "keepdims": "keepdims"}

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
    _op("SoftmaxOp", keras_softmax, axis="axis"),
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
    _op("Sum", _reduce(_sum), axis="axis", keepdims="keepdims"),
    _op("Max", reduce_extreme(np.max), **_AXIS, initial="initial"),
    _op("Min", reduce_extreme(np.min), **_AXIS, initial="initial"),
    # The mask ops Keras 3 saves when a layer's call takes the mask of an Embedding or Masking.
    _op("NotEqual", _binary(np.not_equal)),
    _op("Any", _reduce(np.any), axis="axis", keepdims="keepdims"),
    # keras.ops.nn activations (and keras.activations.* on a tensor, which call them).
    _op("Relu6", _unary(activations.relu6)),
    _op("Softplus", _unary(activations.softplus)),
    _op("Softsign", _unary(activations.softsign)),
    _op("LogSigmoid", _unary(activations.log_sigmoid)),
    _op("HardSigmoid", _unary(activations.hard_sigmoid_keras3)),
    _op("HardSilu", _unary(activations.hard_silu)),
    _op("Selu", _unary(activations.selu)),
    _op("TanhShrink", _unary(activations.tanh_shrink)),
    _op("HardTanh", _unary(activations.hard_tanh)),
    _op("SparsePlus", _unary(activations.sparse_plus)),
    _op("SparseSigmoid", _unary(activations.sparse_sigmoid)),
    _op("LeakyRelu", leaky_relu, negative_slope="alpha"),
    _op("Elu", elu, alpha="alpha"),
    _op("Celu", _unary(activations.celu), alpha="alpha"),
    _op("Squareplus", _unary(activations.squareplus), b="b"),
    _op("SoftShrink", _unary(activations.soft_shrink), threshold="threshold"),
    _op("HardShrink", _unary(activations.hard_shrink), threshold="threshold"),
    _op("Threshold", threshold, threshold="threshold", default_value="default_value"),
    _op("Glu", _unary(activations.glu), axis="axis"),
    _op("LogSoftmax", keras_log_softmax, axis="axis"),
    # keras.ops numpy / math: elementwise
    _op("Abs", _unary(np.abs)),
    _op("Sign", _unary(np.sign)),
    _op("Floor", _unary(np.floor)),
    _op("Ceil", _unary(np.ceil)),
    _op("Round", round_, decimals="decimals"),
    _op("Trunc", trunc),
    _op("Log1p", _unary(np.log1p)),
    _op("Expm1", _unary(np.expm1)),
    _op("Log2", _unary(np.log2)),
    _op("Log10", _unary(np.log10)),
    _op("Exp2", _unary(np.exp2)),
    _op("Sin", _unary(np.sin)),
    _op("Cos", _unary(np.cos)),
    _op("Tan", _unary(np.tan)),
    _op("Sinh", _unary(np.sinh)),
    _op("Cosh", _unary(np.cosh)),
    _op("Arctan", _unary(np.arctan)),
    _op("Arcsinh", _unary(np.arcsinh)),
    _op("Arcsin", _unary(np.arcsin)),
    _op("Arccos", _unary(np.arccos)),
    _op("Arctanh", _unary(np.arctanh)),
    _op("Logaddexp", _binary(np.logaddexp)),
    _op("Reciprocal", _unary(np.reciprocal)),
    _op("Rsqrt", _unary(lambda x: 1 / np.sqrt(x))),
    _op("Erf", _unary(activations.erf)),
    _op("FloorDivide", floordiv),
    _op("Mod", mod),
    _op("Where", where),
    # comparisons and logic: boolean outputs
    _op("Equal", _binary(np.equal)),
    _op("Greater", _binary(np.greater)),
    _op("GreaterEqual", _binary(np.greater_equal)),
    _op("Less", _binary(np.less)),
    _op("LessEqual", _binary(np.less_equal)),
    _op("LogicalAnd", _logical(np.logical_and)),
    _op("LogicalOr", _logical(np.logical_or)),
    _op("LogicalNot", _logical(np.logical_not)),
    _op("LogicalXor", _logical(np.logical_xor)),
    _op("Isinf", _unary(np.isinf)),
    _op("Isnan", _unary(np.isnan)),
    _op("Isfinite", _unary(np.isfinite)),
    # reductions
    _op("Prod", prod, **_AXIS, dtype="dtype"),
    _op("Std", _reduce(_std), **_AXIS),
    _op("Var", _reduce(_variance), **_AXIS),
    _op("Amax", _reduce(np.max), **_AXIS),
    _op("Amin", _reduce(np.min), **_AXIS),
    _op("All", _reduce(np.all), **_AXIS),
    _op("Argmax", _arg(np.argmax), **_AXIS),
    _op("Argmin", _arg(np.argmin), **_AXIS),
    _op("Logsumexp", logsumexp, **_AXIS),
    _op("Norm", norm, ord="ord", **_AXIS),
    _op("Cumsum", _cumulative(np.cumsum), axis="axis", dtype="dtype"),
    _op("Cumprod", _cumulative(np.cumprod), axis="axis", dtype="dtype"),
    # products and moves
    _op("Einsum", einsum, subscripts="subscripts"),
    _op("Tile", tile, repeats="repeats"),
    _op("Repeat", repeat, repeats="repeats", axis="axis"),
    _op("Pad", pad, pad_width="pad_width", mode="mode"),
    _op("Flip", flip, axis="axis"),
    _op("Roll", roll, shift="shift", axis="axis"),
    _op("Moveaxis", moveaxis, source="source", destination="destination"),
    _op("BroadcastTo", broadcast_to, shape="shape"),
    _op("Ravel", ravel),
    _op("Take", take, axis="axis"),
    _op("Normalize", keras_normalize, axis="axis", order="order", epsilon="epsilon"),
    _op("OneHot", one_hot, num_classes="num_classes", axis="axis", dtype="dtype", sparse="sparse"),
    _op("DepthToSpace", depth_to_space, block_size="block_size", data_format="data_format"),
    _op("TopK", top_k, k="k", sorted="sorted"),
    _op("Unstack", unstack, num="num", axis="axis"),
)

# Allow-listed functions whose tf_keras nodes cannot be read (see "einsum"): no backward.
NEVER_RUN = ("einsum",)

LAYERS = (TFOpLambda, SlicingOpLambda, *KERAS3_OPS)
