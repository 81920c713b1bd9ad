"""Core layers: Dense, EinsumDense, Embedding, masking, category encoding, shape plumbing,
and inference-time identities."""

from __future__ import annotations

import re

import numpy as np

from .. import activations
from ..base import Layer, data_format, with_activation
from ..gather import CopiesElements
from ..row_gradient import RowGradient


class Dense(Layer):
    """`activation(x @ kernel + bias)`, contracting the last axis only (any rank)."""

    supports_masking = True

    def setup(self, config):
        self.units = int(config["units"])
        self.use_bias = bool(config.get("use_bias", True))
        self.activation = activations.resolve(config.get("activation"), self.context.keras_major)

    def weight_shapes(self, input_shape):
        shapes = [("kernel", (input_shape[-1], self.units))]
        if self.use_bias:
            shapes.append(("bias", (self.units,)))
        return shapes

    def call(self, x):
        y = np.matmul(x, self.w["kernel"])
        if self.use_bias:
            y = y + self.w["bias"]
        return activations.apply(self.activation, y)

    def vjp(self, x, training=False, noise=None):
        kernel = self.w["kernel"]
        z = np.matmul(x, kernel)
        if self.use_bias:
            z = z + self.w["bias"]

        def backward(dz):
            rows = dz.reshape(-1, self.units)
            grads = {"kernel": x.reshape(-1, x.shape[-1]).T @ rows}
            if self.use_bias:
                grads["bias"] = rows.sum(axis=0)
            return np.matmul(dz, kernel.T), grads

        return with_activation(self.activation, z, backward)


class EinsumDense(Layer):
    """`activation(einsum(equation, x, kernel) + bias)`; shapes follow Keras' analysis."""

    def setup(self, config):
        self.equation = config["equation"]
        output_shape = config.get("output_shape")
        self.partial_output = (
            [output_shape] if isinstance(output_shape, int) else list(output_shape or [])
        )
        self.bias_axes = config.get("bias_axes")
        self.activation = activations.resolve(config.get("activation"), self.context.keras_major)

    def weight_shapes(self, input_shape):
        kernel, bias = einsum_weight_shapes(
            self.equation, self.bias_axes, tuple(input_shape), self.partial_output
        )
        shapes = [("kernel", kernel)]
        if bias is not None:
            shapes.append(("bias", bias))
        return shapes

    def call(self, x):
        y = np.einsum(self.equation, x, self.w["kernel"], optimize=True)
        if "bias" in self.w:
            y = y + self.w["bias"]
        return activations.apply(self.activation, y)

    def vjp(self, x, training=False, noise=None):
        kernel = self.w["kernel"]
        z = np.einsum(self.equation, x, kernel, optimize=True)
        if "bias" in self.w:
            z = z + self.w["bias"]
        in_spec, w_spec, out_spec = _einsum_specs(self.equation, x.ndim, z.ndim)

        def backward(dz):
            grads = {"kernel": np.einsum(f"{in_spec},{out_spec}->{w_spec}", x, dz, optimize=True)}
            if "bias" in self.w:
                grads["bias"] = _sum_to_shape(dz, self.w["bias"].shape)
            dx = np.einsum(f"{out_spec},{w_spec}->{in_spec}", dz, kernel, optimize=True)
            return dx, grads

        return with_activation(self.activation, z, backward)


def _einsum_specs(equation, in_rank, out_rank):
    """Explicit letters for an EinsumDense equation (its `...` spelled out)."""
    left, out_spec = equation.replace(" ", "").split("->")
    in_spec, w_spec = left.split(",")
    spare = iter("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
    dots = "".join(next(spare) for _ in range(in_rank - len(in_spec.replace("...", ""))))
    return in_spec.replace("...", dots), w_spec, out_spec.replace("...", dots)


def _sum_to_shape(gradient, shape):
    """Sum a gradient over the axes a broadcast weight of `shape` was expanded along."""
    lead = gradient.ndim - len(shape)
    total = gradient.sum(axis=tuple(range(lead))) if lead else gradient
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and total.shape[i] != 1)
    return total.sum(axis=axes, keepdims=True) if axes else total


# Keras' three equation forms (after `...` -> `0`); the flag says the ellipsis is on the left.
EINSUM_FORMS = (
    (re.compile(r"([a-zA-Z]+),([a-zA-Z]+)->([a-zA-Z]+)$"), False),
    (re.compile(r"0([a-zA-Z]+),([a-zA-Z]+)->0([a-zA-Z]+)$"), True),
    (re.compile(r"([a-zA-Z]{2,})0,([a-zA-Z]+)->([a-zA-Z]+)0$"), False),
)


def split_einsum(equation):
    """(input, kernel, output) letter specs and whether `...` leads the input spec."""
    plain = equation.replace("...", "0")
    for pattern, left in EINSUM_FORMS:
        match = pattern.match(plain)
        if match:
            return (*match.groups(), left)
    raise ValueError(f"unsupported EinsumDense equation '{equation}'")


def einsum_weight_shapes(equation, bias_axes, input_shape, partial_output):
    """Kernel and bias shapes implied by an EinsumDense equation (Keras' own rules)."""
    in_spec, w_spec, out_spec, left = split_einsum(equation)
    elided = len(input_shape) - len(in_spec)
    output = [input_shape[0], *partial_output]
    if elided > 0 and left:
        for i in range(1, elided):
            output.insert(1, input_shape[i])
    elif elided > 0:
        output.extend(input_shape[len(input_shape) - elided :])
    if left:
        in_map = {d: i + elided - len(input_shape) for i, d in enumerate(in_spec)}
        out_map = {d: i + elided for i, d in enumerate(out_spec)}
    else:
        in_map = {d: i for i, d in enumerate(in_spec)}
        out_map = {d: i for i, d in enumerate(out_spec)}
    kernel = tuple(input_shape[in_map[d]] if d in in_map else output[out_map[d]] for d in w_spec)
    if bias_axes is None:
        return kernel, None
    first = min(out_spec.find(c) for c in bias_axes)
    bias = [output[out_map[c]] if c in bias_axes else 1 for c in out_spec[first:]]
    if not left:
        bias.extend([1] * max(elided, 0))
    return kernel, tuple(bias)


class Activation(Layer):
    supports_masking = True

    def setup(self, config):
        self.fn = activations.resolve(config.get("activation"), self.context.keras_major)

    def call(self, x):
        return activations.apply(self.fn, x)

    def writes_in_place(self) -> bool:
        """Whether `call_in_place` overwrites its input (`fusion`): elementwise ones."""
        return self.fn not in activations.ALONG_AXIS

    def call_in_place(self, x):
        """`call(x)`, written over `x` where it can be."""
        return activations.apply_in_place(self.fn, x)

    def vjp(self, x, training=False, noise=None):
        return with_activation(self.fn, x, lambda dz: (dz, {}))


class Identity(Layer):
    """Layers that are the identity at inference time."""

    supports_masking = True

    def call(self, x):
        return x

    def vjp(self, x, training=False, noise=None):
        return x, lambda d: (d, {})


class RandomNoise(Identity):
    """Dropout and noise layers: the identity at inference; in training `x * scale + shift`.

    `noise` is the `(scale, shift)` pair Keras realized (the oracle reads it),
    so the engine applies exactly Keras' mask. Without it (`--reference numpy`)
    the engine draws its own, seeded, with `draw`.
    """

    uses_noise = True

    def setup(self, config):
        self.rate = float(config.get("rate", config.get("stddev", 0.0)) or 0.0)

    def vjp(self, x, training=False, noise=None):
        if not training:
            return super().vjp(x)
        scale, shift = noise if noise is not None else self.draw(x)
        scale = np.asarray(scale, x.dtype)
        return (x * scale + np.asarray(shift, x.dtype)).astype(x.dtype), lambda d: (d * scale, {})

    def draw(self, x):
        rng = np.random.default_rng(0)
        keep = rng.random(x.shape) >= self.rate
        return keep / (1.0 - self.rate) if self.rate < 1 else keep * 0.0, 0.0


class Dropout(RandomNoise):
    pass


class SpatialDropout1D(RandomNoise):
    pass


class SpatialDropout2D(RandomNoise):
    pass


class SpatialDropout3D(RandomNoise):
    pass


class GaussianNoise(RandomNoise):
    def draw(self, x):
        return 1.0, np.random.default_rng(0).normal(0.0, self.rate, x.shape)


class GaussianDropout(RandomNoise):
    def draw(self, x):
        stddev = np.sqrt(self.rate / (1.0 - self.rate))
        return np.random.default_rng(0).normal(1.0, stddev, x.shape), 0.0


class AlphaDropout(RandomNoise):
    pass


class ActivityRegularization(Identity):
    pass


class Flatten(CopiesElements, Layer):
    """Channels-first inputs are moved to channels-last first, as Keras does."""

    def setup(self, config):
        self.data_format = data_format(config)

    def call(self, x):
        if self.data_format == "channels_first" and x.ndim > 2:
            x = np.moveaxis(x, 1, -1)
        return x.reshape(x.shape[0], int(np.prod(x.shape[1:])))


class Reshape(CopiesElements, Layer):
    def setup(self, config):
        self.target_shape = tuple(int(d) for d in config["target_shape"])

    def call(self, x):
        return x.reshape(x.shape[0], *self.target_shape)


class Permute(CopiesElements, Layer):
    def setup(self, config):
        self.axes = (0, *(int(d) for d in config["dims"]))

    def call(self, x):
        return np.transpose(x, self.axes)


class RepeatVector(CopiesElements, Layer):
    def setup(self, config):
        self.n = int(config["n"])

    def call(self, x):
        return np.repeat(x[:, None, :], self.n, axis=1)


def config_array(value):
    """A number or list from a config; Keras 3 writes NumPy arrays as `__numpy__` dicts."""
    if isinstance(value, dict) and value.get("class_name") == "__numpy__":
        return value["config"]["value"]
    return value


class Rescaling(Layer):
    """`x * scale + offset`; a list scale or offset applies per channel (last axis)."""

    supports_masking = True

    def setup(self, config):
        self.scale = config_array(config.get("scale", 1.0))
        self.offset = config_array(config.get("offset", 0.0))

    def call(self, x):
        scale = np.asarray(self.scale, dtype=x.dtype)
        offset = np.asarray(self.offset, dtype=x.dtype)
        return x * scale + offset


class Embedding(Layer):
    """`embeddings[indices]` for integer indices of any rank; `mask_zero` masks index 0.

    Only the mask marks padding: the embedding of index 0 is returned as it is,
    and masked steps are skipped downstream (RNNs, pooling), not zeroed here.
    Keras casts non-integer inputs to int32 (truncation toward zero). An index
    outside the table is an error in TensorFlow on CPU, except that Keras 3's
    `ops.take` first wraps negative indices once (-1 is the last row; see
    keras/src/backend/tensorflow/numpy.py `take`), which `np.take` also does.
    """

    def setup(self, config):
        self.input_dim = int(config["input_dim"])
        self.output_dim = int(config["output_dim"])
        self.mask_zero = bool(config.get("mask_zero", False))
        self.supports_masking = self.mask_zero
        if config.get("sparse"):
            raise self.error("sparse=True gives a SparseTensor output; kerascheck computes dense")
        self.lora_rank = int(config.get("lora_rank") or 0)
        self.lora_alpha = config.get("lora_alpha") or self.lora_rank
        quantized = [w.dtype for w in self.raw_weights if np.asarray(w).dtype.kind in "iub"]
        if quantized or config.get("quantization_config"):
            raise self.error(
                "expected float embeddings, found a quantized Embedding (int8/int4 weights "
                f"{quantized or ''}); kerascheck does not support quantized layers"
            )

    def weight_shapes(self, input_shape):
        table = ("embeddings", (self.input_dim, self.output_dim))
        if self.lora_rank and len(self.raw_weights) == 3:
            # Legacy .h5 keeps Keras 3's trainable-first order: the LoRA factors, then
            # the frozen table; .keras stores the table with the LoRA delta merged in.
            return [
                ("lora_embeddings_a", (self.input_dim, self.lora_rank)),
                ("lora_embeddings_b", (self.lora_rank, self.output_dim)),
                table,
            ]
        return [table]

    def table(self):
        table = self.w["embeddings"]
        if "lora_embeddings_a" in self.w:
            delta = np.matmul(self.w["lora_embeddings_a"], self.w["lora_embeddings_b"])
            table = table + np.asarray(self.lora_alpha / self.lora_rank, table.dtype) * delta
        return table

    def call(self, x):
        indices = np.asarray(x)
        if indices.dtype.kind not in "iu":
            indices = indices.astype(np.int32)
        low = -self.input_dim if self.context.keras_major >= 3 else 0
        if indices.size and (indices.min() < low or indices.max() >= self.input_dim):
            bad = indices[(indices < low) | (indices >= self.input_dim)].flat[0]
            raise self.error(
                f"expected indices in [{low}, {self.input_dim}) (input_dim "
                f"{self.input_dim}), found {int(bad)}; TensorFlow raises on CPU for it too"
            )
        return np.take(self.table(), indices, axis=0)

    def compute_mask(self, inputs, mask):
        return np.not_equal(inputs, 0) if self.mask_zero else None

    def vjp(self, x, training=False, noise=None):
        """Indices get no gradient; the table's is dL/dy's rows added up by index
        (a `RowGradient`, which keeps the rows per occurrence for Keras 3's optimizers).

        `mask_zero` only marks padding for later layers, so row 0 gets its gradient
        like any other row. Negative indices (Keras 3) add to the row they wrap to.
        """
        if self.lora_rank:
            return Layer.vjp(self, x)  # Keras trains the LoRA factors: no backward yet
        y = self.call(x)
        indices = np.asarray(x)
        if indices.dtype.kind not in "iu":
            indices = indices.astype(np.int32)
        flat = np.where(indices < 0, indices + self.input_dim, indices).reshape(-1)

        def backward(d_output):
            rows = np.asarray(d_output).reshape(-1, self.output_dim)
            shape = (self.input_dim, self.output_dim)
            return None, {"embeddings": RowGradient.of(flat, rows, shape)}

        return y, backward


class Masking(Layer):
    """Zero the time steps whose features all equal `mask_value`, and mask them.

    Keras 3 selects (`where(keep, x, 0)`); Keras 2 multiplies by the 0/1 mask,
    which differs only for non-finite values (`inf * 0` is nan). See
    keras/src/layers/core/masking.py and tf_keras/src/layers/core/masking.py.
    """

    supports_masking = True

    def setup(self, config):
        self.mask_value = config_array(config.get("mask_value", 0.0))

    def keep(self, x, keepdims):
        value = np.asarray(self.mask_value, dtype=x.dtype)
        return np.any(np.not_equal(x, value), axis=-1, keepdims=keepdims)

    def call(self, x):
        keep = self.keep(x, keepdims=True)
        if self.context.keras_major >= 3:
            return np.where(keep, x, np.zeros((), dtype=x.dtype))
        return x * keep.astype(x.dtype)

    def compute_mask(self, inputs, mask):
        return self.keep(inputs, keepdims=False)

    def vjp(self, x, training=False, noise=None):
        keep = self.keep(x, keepdims=True)
        return self.call(x), lambda d: (np.where(keep, d, np.zeros((), d.dtype)), {})


class CategoryEncoding(Layer):
    """One-hot, multi-hot or count encoding of integer tokens into `num_tokens` slots.

    Keras 3 (keras/src/utils/numerical_utils.py `encode_categorical_inputs`)
    one-hot encodes any rank (a trailing axis of 1 is squeezed) and gives zeros
    for out-of-range tokens; multi_hot/count reduce axis 1 of the one-hot
    tensor (axis 0 for a rank-1 input, which sums over the batch), also for
    inputs of rank 3 and more, where Keras' `compute_output_shape` claims the
    last axis is reduced instead. For ranks <= 2 TensorFlow's bincount does the
    work: it drops tokens >= num_tokens but fails on negative ones. tf_keras
    allows output rank <= 2 only and fails on any out-of-range token.
    """

    def setup(self, config):
        self.num_tokens = int(config.get("num_tokens") or config.get("max_tokens"))
        mode = config.get("output_mode", "multi_hot")
        self.output_mode = "multi_hot" if mode == "binary" else mode
        if self.output_mode not in ("one_hot", "multi_hot", "count"):
            raise self.error(f"expected output_mode one_hot, multi_hot or count, found {mode!r}")
        if config.get("sparse"):
            raise self.error("sparse=True gives a SparseTensor output; kerascheck computes dense")

    def call(self, inputs, count_weights=None):
        x = np.asarray(inputs)
        x = x.astype(np.int64) if x.dtype.kind not in "iu" else x
        x = x[None] if x.ndim == 0 else x
        if count_weights is not None and self.output_mode != "count":
            raise self.error(
                f"count_weights is only used with output_mode 'count', not {self.output_mode!r}"
            )
        if self.context.keras_major < 3:
            self.check_keras2(x)
        elif self.output_mode != "one_hot" and x.ndim <= 2 and x.size and x.min() < 0:
            raise self.error(
                f"expected tokens >= 0, found {int(x.min())} (TensorFlow's bincount fails on it)"
            )
        if self.output_mode == "one_hot":
            return self.one_hot(x[..., 0] if x.ndim > 1 and x.shape[-1] == 1 else x)
        encoded = self.one_hot(x)
        if count_weights is not None:
            encoded = encoded * np.asarray(count_weights, dtype=encoded.dtype)[..., None]
        axis = 1 if x.ndim > 1 else 0
        if self.output_mode == "multi_hot":
            return np.max(encoded, axis=axis)
        return np.sum(encoded, axis=axis)

    def one_hot(self, x):
        """(..., num_tokens) rows of zeros with one 1; out-of-range tokens give all zeros."""
        return (x[..., None] == np.arange(self.num_tokens)).astype(self.context.dtype)

    def check_keras2(self, x):
        """tf_keras' limits: output rank <= 2, every token in [0, num_tokens)."""
        rank = x.ndim + (1 if self.output_mode == "one_hot" and x.shape[-1] != 1 else 0)
        if rank > 2:
            raise self.error(
                f"tf_keras supports output rank <= 2 only, found input shape "
                f"{x.shape} giving rank {rank}"
            )
        if x.size and (x.min() < 0 or x.max() >= self.num_tokens):
            raise self.error(
                f"expected tokens in [0, {self.num_tokens}), found values from "
                f"{int(x.min())} to {int(x.max())}"
            )


LAYERS = (
    Dense,
    EinsumDense,
    Activation,
    Identity,
    Dropout,
    SpatialDropout1D,
    SpatialDropout2D,
    SpatialDropout3D,
    GaussianNoise,
    GaussianDropout,
    AlphaDropout,
    ActivityRegularization,
    Flatten,
    Reshape,
    Permute,
    RepeatVector,
    Rescaling,
    Embedding,
    Masking,
    CategoryEncoding,
)
