"""Attention layers: Attention, AdditiveAttention, MultiHeadAttention, GroupedQueryAttention.

Masks decide most of what can go wrong here, and Keras masks differently on
each path (sources in keras/src/layers/attention/ and tf_keras/src/layers/attention/):

- Attention/AdditiveAttention subtract 1e9 from masked scores (`scores - 1e9`,
  not a replacement), then zero the outputs of masked queries.
- MultiHeadAttention/GroupedQueryAttention merge every mask (query, value, key,
  `attention_mask`, causal, sliding window) into one (B, T, S) boolean mask.
  tf_keras feeds it to its Softmax layer, which *adds* `(1 - mask) * -1e9`.
  Keras 3 has two paths: with dropout > 0, `return_attention_scores`, or
  non-3D inputs it uses its Softmax layer (masked scores *replaced* by -1e9,
  masked weights then zeroed); otherwise `ops.dot_product_attention`, which
  replaces masked logits by -0.7 * 3.38953e38 and does not zero. A fully
  masked row (a masked query) so averages the values on one path and gives
  zeros on the other.
"""

from __future__ import annotations

import math
import string

import numpy as np

from ...loading.spec import LayerSpec
from .. import activations
from ..base import Layer
from .activations import masked_softmax, masked_softmax_vjp
from .core import EinsumDense
from .recurrent import NEEDS_MASKS

SCORE_MASK_OFFSET = 1e9  # Attention/AdditiveAttention (float32; 65504 for float16)
DOT_PRODUCT_NEGATIVE = -0.7 * 3.38953e38  # keras/src/backend/tensorflow/nn.py


def causal_mask(q_len: int, v_len: int) -> np.ndarray:
    """(1, Tq, Tv): query i sees keys j <= i (Keras' cumsum comparison / band_part)."""
    return np.tril(np.ones((1, q_len, v_len), dtype=bool))


def sliding_window_mask(q_len: int, v_len: int, window: int) -> np.ndarray:
    """(1, Tq, Tv): the symmetric band |i - j| < window of Keras 3's `sliding_window`."""
    distance = np.abs(np.arange(q_len)[:, None] - np.arange(v_len)[None, :])
    return (distance < window)[None]


def merge_masks(*masks):
    """Logical AND of the masks that are present (None when none is)."""
    present = [np.asarray(m, dtype=bool) for m in masks if m is not None]
    if not present:
        return None
    return np.logical_and.reduce(np.broadcast_arrays(*present)) if len(present) > 1 else present[0]


# --- Attention, AdditiveAttention ---------------------------------------------


class _AttentionDropout:
    """Training-mode dropout of the attention weights, replayed from Keras' own draw."""

    @property
    def dropout_rate(self) -> float:
        return float(self.config.get("dropout") or 0.0)

    @property
    def uses_noise(self) -> bool:
        return self.dropout_rate > 0

    def dropout_mask(self, training, noise):
        """The realized mask (0 or 1/(1-rate) per attention weight) Keras applied in its
        taped training pass; None when nothing is dropped."""
        if not training or not self.uses_noise:
            return None
        if noise is None:
            raise self.error(
                f"dropout={self.dropout_rate} on the attention weights in training mode "
                f"{NEEDS_MASKS}"
            )
        return np.asarray(noise)


class DenseAttention(_AttentionDropout, Layer):
    """Shared call of Keras' Luong and Bahdanau layers; subclasses compute the scores.

    Old tf_keras files may carry `causal: true` in the config (later a call
    kwarg, `use_causal_mask`); both are honoured.
    """

    supports_masking = True

    def setup(self, config):
        self.use_scale = bool(config.get("use_scale", self.default_use_scale))
        self.causal = bool(config.get("causal", False))

    default_use_scale = False

    def call(
        self,
        inputs,
        mask=None,
        training=None,
        return_attention_scores=False,
        use_causal_mask=False,
    ):
        """The forward of `vjp` (one implementation of the masking and the softmax)."""
        output, _ = self.vjp(
            inputs,
            mask,
            return_attention_scores=return_attention_scores,
            use_causal_mask=use_causal_mask,
        )
        return output

    def compute_mask(self, inputs, mask):
        """The query's mask carries on (Keras' `compute_mask` returns `mask[0]`)."""
        return mask[0] if mask else None

    def scores_vjp(self, query, key):
        """(scores, backward `d_scores -> (d_query, d_key, d_weights)`)."""
        raise NotImplementedError

    def vjp(
        self,
        inputs,
        mask=None,
        training=False,
        noise=None,
        return_attention_scores=False,
        use_causal_mask=False,
    ):
        """The first argument's list gets [d_query, d_value(, d_key)]; subtracting the
        offset from masked scores passes their gradient on unchanged."""
        if not isinstance(inputs, (list, tuple)) or len(inputs) not in (2, 3):
            raise self.error("expected a list [query, value] or [query, value, key]")
        drop = self.dropout_mask(training, noise)
        query, value = inputs[0], inputs[1]
        with_key = len(inputs) > 2
        key = inputs[2] if with_key else value
        query_mask = mask[0] if mask else None
        value_mask = mask[1] if mask else None
        scores, scores_backward = self.scores_vjp(query, key)
        scores_mask = merge_masks(
            None if value_mask is None else np.expand_dims(value_mask, -2),
            causal_mask(*scores.shape[-2:]) if self.causal or use_causal_mask else None,
        )
        if scores_mask is not None:
            offset = np.asarray(_score_offset(scores.dtype), dtype=scores.dtype)
            scores = np.where(scores_mask, scores, scores - offset)
        probabilities = activations.softmax(scores, axis=-1)
        # Keras drops the attention weights themselves and returns them dropped
        weights = probabilities if drop is None else probabilities * drop
        output = np.matmul(weights, value)
        keep = None
        if query_mask is not None:
            keep = np.expand_dims(query_mask, -1).astype(bool)
            output = np.where(keep, output, np.zeros((), output.dtype))

        def backward(d_output):
            d_weights = None
            if return_attention_scores:
                d_output, d_weights = d_output
            if keep is not None:
                d_output = np.where(keep, d_output, np.zeros((), d_output.dtype))
            d_w = np.matmul(d_output, np.swapaxes(value, -2, -1))
            if d_weights is not None:
                d_w = d_w + d_weights
            d_value = np.matmul(np.swapaxes(weights, -2, -1), d_output)
            if drop is not None:
                d_w = d_w * drop
            d_scores = activations._softmax_backward(scores, probabilities, d_w, axis=-1)
            d_query, d_key, d_params = scores_backward(d_scores)
            if with_key:
                return [d_query, d_value, d_key], d_params
            return [d_query, d_value + d_key], d_params

        return ([output, weights] if return_attention_scores else output), backward


def _score_offset(dtype) -> float:
    return 65504.0 if np.dtype(dtype) == np.float16 else SCORE_MASK_OFFSET


class Attention(DenseAttention):
    """Luong: `q . k` (times `scale`), or `concat_score_weight * sum(tanh(scale * (q + k)))`."""

    def setup(self, config):
        super().setup(config)
        self.score_mode = config.get("score_mode", "dot") or "dot"
        if self.score_mode not in ("dot", "concat"):
            raise self.error(f"expected score_mode 'dot' or 'concat', found {self.score_mode!r}")

    def weight_shapes(self, input_shape):
        shapes = [("scale", ())] if self.use_scale else []
        if self.score_mode == "concat":
            shapes.append(("concat_score_weight", ()))
        return shapes

    def scores_vjp(self, query, key):
        if self.score_mode == "dot":
            product = np.matmul(query, np.swapaxes(key, -2, -1))
            scale = self.w["scale"] if self.use_scale else None

            def backward(d_scores):
                d_product = d_scores if scale is None else d_scores * scale
                d_query = np.matmul(d_product, key)
                d_key = np.matmul(np.swapaxes(d_product, -2, -1), query)
                grads = {"scale": np.sum(d_scores * product)} if scale is not None else {}
                return d_query, d_key, grads

            return (product if scale is None else product * scale), backward
        summed = np.expand_dims(query, -2) + np.expand_dims(key, -3)
        scaled = self.w["scale"] * summed if self.use_scale else summed
        tanh = np.tanh(scaled)
        total = np.sum(tanh, axis=-1)
        weight = self.w["concat_score_weight"]

        def backward(d_scores):
            grads = {"concat_score_weight": np.sum(d_scores * total)}
            d_scaled = (weight * np.expand_dims(d_scores, -1)) * (1 - tanh * tanh)
            if self.use_scale:
                grads["scale"] = np.sum(d_scaled * summed)
                d_summed = self.w["scale"] * d_scaled
            else:
                d_summed = d_scaled
            return np.sum(d_summed, axis=-2), np.sum(d_summed, axis=-3), grads

        return weight * total, backward


class AdditiveAttention(DenseAttention):
    """Bahdanau: `sum(scale * tanh(q + k))` over features, `scale` of shape (dim,)."""

    default_use_scale = True

    def weight_shapes(self, input_shape):
        return [("scale", (input_shape[0][-1],))] if self.use_scale else []

    def scores_vjp(self, query, key):
        tanh = np.tanh(np.expand_dims(query, -2) + np.expand_dims(key, -3))
        scale = self.w["scale"] if self.use_scale else None

        def backward(d_scores):
            d_tanh = np.expand_dims(d_scores, -1)
            grads = {}
            if scale is not None:
                rows = (d_tanh * tanh).reshape(-1, tanh.shape[-1])
                grads["scale"] = rows.sum(axis=0)
                d_tanh = d_tanh * scale
            d_summed = d_tanh * (1 - tanh * tanh)
            return np.sum(d_summed, axis=-2), np.sum(d_summed, axis=-3), grads

        activated = tanh if scale is None else scale * tanh
        return np.sum(activated, axis=-1), backward


# --- MultiHeadAttention, GroupedQueryAttention --------------------------------


class ProjectedAttention(_AttentionDropout, Layer):
    """Shared machinery of the layers built from EinsumDense projections.

    The projections' shapes depend on value and key, which the graph's `build`
    does not see (it passes the first argument's shape), so the parts are made
    and their weights checked on the first `call`. Each part is a core
    EinsumDense (named `<layer>/query` etc. in errors); the file's flat weight
    list is dealt out to them in Keras' order.
    """

    supports_masking = True

    def setup(self, config):
        self.use_bias = bool(config.get("use_bias", True))
        self.use_gate = bool(config.get("use_gate", False))
        self.dropout = float(config.get("dropout") or 0.0)
        window = config.get("sliding_window")
        self.sliding_window = None if window is None else int(window)
        self.robust_masking = bool(config.get("softmax_robust_masking", False))
        self.parts: dict[str, EinsumDense] = {}

    def build(self, input_shape):
        """Deferred to the first `call` (`build_parts`), which sees value's and key's shapes."""
        self.built = True

    def call(
        self,
        query,
        value=None,
        key=None,
        query_mask=None,
        value_mask=None,
        key_mask=None,
        attention_mask=None,
        return_attention_scores=False,
        training=None,
        use_causal_mask=False,
    ):
        if value is None:
            raise self.error("expected a `value` tensor beside the query")
        key = value if key is None else key
        if not self.parts:
            self.build_parts(query.shape, value.shape, key.shape)
        mask = self.attention_mask(
            query, value, query_mask, value_mask, key_mask, attention_mask, use_causal_mask
        )
        q = self.parts["query"].call(query)
        k, v = self.heads(self.parts["key"].call(key), self.parts["value"].call(value))
        dot_path = self.dot_product_path(q, return_attention_scores)
        output, weights = (
            self.dot_product(q, k, v, mask) if dot_path else self.softmax_path(q, k, v, mask)
        )
        if self.use_gate:
            output = output * self.parts["gate"].call(query)
        output = self.parts["output"].call(output)
        return [output, weights] if return_attention_scores else output

    def vjp(
        self,
        query,
        value=None,
        key=None,
        query_mask=None,
        value_mask=None,
        key_mask=None,
        attention_mask=None,
        return_attention_scores=False,
        training=False,
        noise=None,
        use_causal_mask=False,
    ):
        """`call` with every projection's backward kept (each part's `vjp`).

        The query's gradient is the first item; value's and key's go back as the
        third (positional `args` and `kwargs` both filled, so either spelling of
        the call is routed). Masks are boolean and get no gradient.
        """
        if value is None:
            raise self.error("expected a `value` tensor beside the query")
        drop = self.dropout_mask(training, noise)
        with_key = key is not None
        key = value if key is None else key
        if not self.parts:
            self.build_parts(query.shape, value.shape, key.shape)
        mask = self.attention_mask(
            query, value, query_mask, value_mask, key_mask, attention_mask, use_causal_mask
        )
        q, back_q = self.parts["query"].vjp(query)
        k_proj, back_k = self.parts["key"].vjp(key)
        v_proj, back_v = self.parts["value"].vjp(value)
        k, v = self.heads(k_proj, v_proj)
        dot_path = self.dot_product_path(q, return_attention_scores)
        if dot_path:
            attended, weights, back_attention = self.dot_product_vjp(q, k, v, mask)
        else:
            attended, weights, back_attention = self.softmax_path_vjp(q, k, v, mask, drop)
        gated = attended
        if self.use_gate:
            gate, back_gate = self.parts["gate"].vjp(query)
            gated = attended * gate
        output, back_output = self.parts["output"].vjp(gated)

        def backward(d_output):
            d_weights = None
            if return_attention_scores:
                d_output, d_weights = d_output
            grads = {}

            def collect(part, part_grads):
                grads.update({f"{part}/{name}": g for name, g in part_grads.items()})

            d_gated, part_grads = back_output(d_output)
            collect("output", part_grads)
            d_query = None
            d_attended = d_gated
            if self.use_gate:
                d_attended = d_gated * gate
                d_query, part_grads = back_gate(d_gated * attended)
                collect("gate", part_grads)
            d_q, d_k, d_v = back_attention(d_attended, d_weights)
            d_k, d_v = self.heads_backward(d_k, d_v)
            d_from_q, part_grads = back_q(d_q)
            collect("query", part_grads)
            d_query = d_from_q if d_query is None else d_query + d_from_q
            d_key, part_grads = back_k(d_k)
            collect("key", part_grads)
            d_value, part_grads = back_v(d_v)
            collect("value", part_grads)
            grads = {name: grads[name] for name in self.w if name in grads}
            if not with_key:
                d_value, d_key = d_value + d_key, None
            extra = {"args": [d_value, d_key], "kwargs": {"value": d_value, "key": d_key}}
            return d_query, grads, extra

        return ([output, weights] if return_attention_scores else output), backward

    def heads_backward(self, d_key, d_value):
        return d_key, d_value

    def dot_product_vjp(self, q, k, v, mask):
        """`dot_product` and its backward `(d_output, None) -> (d_q, d_k, d_v)`; replaced
        (masked) logits get no gradient."""
        scale = np.asarray(self.inverse_sqrt, dtype=q.dtype)
        logits = np.einsum("BTNH,BSNH->BNTS", q, k, optimize=True) * scale
        keep = None
        if mask is not None:
            keep = self.expand_mask(mask, 4).astype(bool)
            logits = np.where(keep, logits, np.asarray(DOT_PRODUCT_NEGATIVE, dtype=logits.dtype))
        weights = activations.softmax(logits, axis=-1)
        output = np.einsum("BNTS,BSNH->BTNH", weights, v, optimize=True)

        def backward(d_output, d_weights=None):
            d_w = np.einsum("BTNH,BSNH->BNTS", d_output, v, optimize=True)
            d_v = np.einsum("BNTS,BTNH->BSNH", weights, d_output, optimize=True)
            d_logits = activations._softmax_backward(logits, weights, d_w, axis=-1)
            if keep is not None:
                d_logits = np.where(keep, d_logits, np.zeros((), d_logits.dtype))
            d_logits = d_logits * scale
            d_q = np.einsum("BNTS,BSNH->BTNH", d_logits, k, optimize=True)
            d_k = np.einsum("BNTS,BTNH->BSNH", d_logits, q, optimize=True)
            return d_q, d_k, d_v

        return output, None, backward

    def softmax_path_vjp(self, q, k, v, mask, drop=None):
        """`softmax_path` and its backward `(d_output, d_weights) -> (d_q, d_k, d_v)`.
        `drop`: the dropout mask Keras' `_dropout_layer` applied to the weights before
        combining them with the values (the returned scores are the undropped ones)."""
        scale = np.asarray(self.inverse_sqrt, dtype=q.dtype)
        q_scaled = q * scale
        scores = self.score(q_scaled, k)
        if mask is not None:
            mask = self.expand_mask(mask, scores.ndim)
        axes = tuple(range(scores.ndim - self.attention_rank, scores.ndim))
        weights, back_softmax = masked_softmax_vjp(
            scores, mask, axes, self.context.keras_major, self.robust_masking
        )
        dropped = weights if drop is None else weights * drop
        output = self.combine(dropped, v)
        score_specs, combine_specs = self.score_specs(), self.combine_specs()

        def backward(d_output, d_weights=None):
            d_w, d_v = _einsum_backward(combine_specs, dropped, v, d_output)
            if drop is not None:
                d_w = d_w * drop
            if d_weights is not None:
                d_w = d_w + d_weights
            d_scores = back_softmax(d_w)
            d_k, d_q_scaled = _einsum_backward(score_specs, k, q_scaled, d_scores)
            return d_q_scaled * scale, d_k, d_v

        return output, weights, backward

    # -- parts and weights ----------------------------------------------------
    def build_parts(self, query_shape, value_shape, key_shape):
        """Check the file's weights (base `build`), then give each EinsumDense its own."""
        shapes = (tuple(query_shape), tuple(value_shape), tuple(key_shape))
        Layer.build(self, shapes)
        for name, config, input_shape in self.part_specs(*shapes):
            names = [f"{name}/kernel"] + ([f"{name}/bias"] if self.use_bias else [])
            spec = LayerSpec(
                f"{self.name}/{name}", "EinsumDense", config, [self.w[n] for n in names]
            )
            part = EinsumDense(spec, self.context)
            part.build(input_shape)
            self.parts[name] = part
        self.set_attention_axes(len(query_shape) + 1)

    def weight_shapes(self, input_shape):
        """Keras' flat order: query, key, [gate,] value, output; kernel then bias each."""
        return [
            (f"{name}/{weight}", shape)
            for name, config, part_shape in self.part_specs(*input_shape)
            for weight, shape in EinsumDense(
                LayerSpec(name, "EinsumDense", config), self.context
            ).weight_shapes(part_shape)
        ]

    def part_specs(self, query_shape, value_shape, key_shape):
        """(name, EinsumDense config, input shape) of each projection, in weight order."""
        raise NotImplementedError

    def set_attention_axes(self, rank: int) -> None:
        """Attention over the sequence axis (rank-4 projections) unless a subclass says more."""

    def heads(self, key, value):
        return key, value

    # -- masks ------------------------------------------------------------------
    def attention_mask(self, query, value, query_mask, value_mask, key_mask, given, causal):
        """Keras' `_compute_attention_mask`: all masks ANDed into (B, T, S).

        tf_keras leaves a lone `attention_mask` as given (numbers, not booleans):
        its Softmax then computes `(1 - mask) * -1e9` from the raw values.
        """
        auto = merge_masks(
            None if query_mask is None else np.expand_dims(query_mask, -1),
            None if value_mask is None else np.expand_dims(value_mask, -2),
            None if key_mask is None else np.expand_dims(key_mask, -2),
            causal_mask(query.shape[1], value.shape[1]) if causal else None,
            None
            if self.sliding_window is None
            else sliding_window_mask(query.shape[1], value.shape[1], self.sliding_window),
        )
        if auto is None:
            return given if given is None or not self.casts_given_mask else given.astype(bool)
        return merge_masks(given, auto)

    @property
    def casts_given_mask(self) -> bool:
        """Keras 3 MultiHeadAttention casts a lone `attention_mask` to bool; tf_keras and
        GroupedQueryAttention pass it on as given."""
        return False

    def expand_mask(self, mask, rank: int):
        """Insert axes before the query attention axes until the mask has the scores' rank."""
        mask = np.asarray(mask)
        axis = -2 * self.attention_rank - 1
        while mask.ndim < rank:
            mask = np.expand_dims(mask, axis)
        return mask

    attention_rank = 1  # how many attention axes (softmax normalizes over that many)

    # -- the two Keras 3 paths ----------------------------------------------------
    def dot_product_path(self, q, return_attention_scores) -> bool:
        """Keras 3 uses `ops.dot_product_attention` for 4-D projections without dropout."""
        return (
            self.context.keras_major >= 3
            and not (self.dropout > 0 or return_attention_scores)
            and q.ndim == 4
        )

    def dot_product(self, q, k, v, mask):
        """The TensorFlow backend's `dot_product_attention`: masked logits replaced, no zeroing."""
        logits = np.einsum("BTNH,BSNH->BNTS", q, k, optimize=True)
        logits = logits * np.asarray(self.inverse_sqrt, dtype=logits.dtype)
        if mask is not None:
            keep = self.expand_mask(mask, 4).astype(bool)
            logits = np.where(keep, logits, np.asarray(DOT_PRODUCT_NEGATIVE, dtype=logits.dtype))
        weights = activations.softmax(logits, axis=-1)
        return np.einsum("BNTS,BSNH->BTNH", weights, v, optimize=True), None

    def softmax_path(self, q, k, v, mask):
        """Scale the query, score, masked Softmax layer, combine (both flavors)."""
        q = q * np.asarray(self.inverse_sqrt, dtype=q.dtype)
        scores = self.score(q, k)
        if mask is not None:
            mask = self.expand_mask(mask, scores.ndim)
        axes = tuple(range(scores.ndim - self.attention_rank, scores.ndim))
        weights = masked_softmax(scores, mask, axes, self.context.keras_major, self.robust_masking)
        return self.combine(weights, v), weights

    def score(self, q, k):
        raise NotImplementedError

    def combine(self, weights, v):
        raise NotImplementedError

    def score_specs(self):
        """Letter specs (key, query, scores) of `score`."""
        raise NotImplementedError

    def combine_specs(self):
        """Letter specs (weights, value, output) of `combine`."""
        raise NotImplementedError


class MultiHeadAttention(ProjectedAttention):
    """`num_heads` heads of scaled dot-product attention over `attention_axes`."""

    def setup(self, config):
        super().setup(config)
        self.num_heads = int(config["num_heads"])
        self.key_dim = int(config["key_dim"])
        self.value_dim = int(config.get("value_dim") or self.key_dim)
        shape = config.get("output_shape")
        self.output_shape = (shape,) if isinstance(shape, int) else tuple(shape or ())
        axes = config.get("attention_axes")
        self.given_axes = (
            (axes,) if isinstance(axes, int) else (None if axes is None else tuple(axes))
        )
        self.inverse_sqrt = 1.0 / math.sqrt(float(self.key_dim))

    @property
    def casts_given_mask(self) -> bool:
        return self.context.keras_major >= 3

    def part_specs(self, query_shape, value_shape, key_shape):
        """Keras' `build`: equations from `_build_proj_equation`, in weight order."""
        q_rank = len(query_shape)
        heads_k, heads_v = [self.num_heads, self.key_dim], [self.num_heads, self.value_dim]
        specs = [
            ("query", self.projection(q_rank, 1, heads_k), query_shape),
            ("key", self.projection(len(key_shape), 1, heads_k), key_shape),
        ]
        if self.use_gate:
            gate = self.projection(q_rank, 1, heads_v, activation="sigmoid")
            specs.append(("gate", gate, query_shape))
        specs.append(("value", self.projection(len(value_shape), 1, heads_v), value_shape))
        out_dims = list(self.output_shape or query_shape[-1:])
        projected = (*query_shape[:-1], self.num_heads, self.value_dim)
        specs.append(("output", self.projection(q_rank, 2, out_dims), projected))
        return specs

    def projection(self, rank, bound_dims, known_dims, activation=None):
        """An EinsumDense config for a projection of a rank-`rank` input."""
        equation, bias_axes, output_rank = proj_equation(rank - 1, bound_dims, len(known_dims))
        return {
            "equation": equation,
            "output_shape": [None] * (output_rank - 1 - len(known_dims)) + list(known_dims),
            "bias_axes": bias_axes if self.use_bias else None,
            "activation": activation,
        }

    def set_attention_axes(self, rank):
        """Default: every axis between batch and heads. Negative axes count from the end of
        the *input* in Keras 3 (`(rank - 1) + axis`) but of the *projection* in tf_keras."""
        if self.given_axes is None:
            axes = tuple(range(1, rank - 2))
        else:
            base = rank - 1 if self.context.keras_major >= 3 else rank
            axes = tuple(a if a >= 0 else base + a for a in self.given_axes)
        self.attention_axes = axes
        self.attention_rank = len(axes)
        self.dot_equation, self.combine_equation = attention_equations(rank, axes)

    def score(self, q, k):
        return np.einsum(self.dot_equation, k, q, optimize=True)

    def combine(self, weights, v):
        return np.einsum(self.combine_equation, weights, v, optimize=True)

    def score_specs(self):
        return _specs(self.dot_equation)

    def combine_specs(self):
        return _specs(self.combine_equation)


class GroupedQueryAttention(ProjectedAttention):
    """Keras 3: `num_key_value_heads` key/value heads, each shared by a group of query heads."""

    def setup(self, config):
        super().setup(config)
        self.head_dim = int(config["head_dim"])
        self.num_query_heads = int(config["num_query_heads"])
        self.num_key_value_heads = int(config["num_key_value_heads"])
        if self.num_query_heads % self.num_key_value_heads:
            raise self.error("expected num_query_heads divisible by num_key_value_heads")
        self.inverse_sqrt = 1.0 / math.sqrt(float(self.head_dim))

    def part_specs(self, query_shape, value_shape, key_shape):
        """The fixed equations of Keras' `GroupedQueryAttention.build`."""
        q_heads = (None, self.num_query_heads, self.head_dim)
        kv_heads = (None, self.num_key_value_heads, self.head_dim)

        def spec(equation, shape, bias, activation=None):
            bias_axes = bias if self.use_bias else None
            return {
                "equation": equation,
                "output_shape": list(shape),
                "bias_axes": bias_axes,
                "activation": activation,
            }

        specs = [
            ("query", spec("bqm,muh->bquh", q_heads, "uh"), query_shape),
            ("key", spec("bkm,mvh->bkvh", kv_heads, "vh"), key_shape),
        ]
        if self.use_gate:
            specs.append(("gate", spec("bqm,muh->bquh", q_heads, "uh", "sigmoid"), query_shape))
        specs.append(("value", spec("bkm,mvh->bkvh", kv_heads, "vh"), value_shape))
        projected = (query_shape[0], query_shape[1], self.num_query_heads, self.head_dim)
        output = spec("bquh,uhm->bqm", (None, query_shape[-1]), "m")
        specs.append(("output", output, projected))
        return specs

    def heads(self, key, value):
        repeats = self.num_query_heads // self.num_key_value_heads
        return np.repeat(key, repeats, axis=2), np.repeat(value, repeats, axis=2)

    def score(self, q, k):
        return np.einsum("bquh,bkuh->buqk", q, k, optimize=True)

    def combine(self, weights, v):
        return np.einsum("buqk,bkuh->bquh", weights, v, optimize=True)

    def heads_backward(self, d_key, d_value):
        """`np.repeat` along the heads: each key/value head sums its group's gradients."""
        repeats = self.num_query_heads // self.num_key_value_heads

        def summed(d):
            return d.reshape(*d.shape[:2], self.num_key_value_heads, repeats, -1).sum(axis=3)

        return summed(d_key), summed(d_value)

    def score_specs(self):
        """Operands in (key, query) order, as `softmax_path_vjp` passes them."""
        return ("bkuh", "bquh", "buqk")

    def combine_specs(self):
        return ("buqk", "bkuh", "bquh")


class GroupQueryAttention(GroupedQueryAttention):
    """Keras 3 exports the class as `keras.layers.GroupQueryAttention` and saves that name."""


def _specs(equation: str):
    """('a', 'b', 'out') letter specs of an explicit two-operand einsum equation."""
    left, out = equation.split("->")
    a, b = left.split(",")
    return a, b, out


def _einsum_backward(specs, a, b, d_out):
    """(dL/da, dL/db) of `einsum(a, b -> out)`; every letter of an operand appears in
    the other operand or the output."""
    sa, sb, so = specs
    d_a = np.einsum(f"{so},{sb}->{sa}", d_out, b, optimize=True)
    d_b = np.einsum(f"{so},{sa}->{sb}", d_out, a, optimize=True)
    return d_a, d_b


# --- Keras' equation builders (multi_head_attention.py), written anew -------------


def proj_equation(free_dims: int, bound_dims: int, output_dims: int):
    """`_build_proj_equation`: free axes kept, bound axes contracted, output axes added."""
    letters = string.ascii_lowercase
    free = letters[:free_dims]
    bound = letters[free_dims : free_dims + bound_dims]
    out = letters[free_dims + bound_dims : free_dims + bound_dims + output_dims]
    return f"{free}{bound},{bound}{out}->{free}{out}", out, len(free + out)


def attention_equations(rank: int, attn_axes: tuple):
    """`_build_attention_equation`: (key, query) -> scores and (scores, value) -> output.

    Scores are laid out (batch dims, heads, query attention axes, key attention axes).
    """
    letters = string.ascii_lowercase
    target = letters[:rank]
    batch_dims = [i for i in range(rank) if i not in attn_axes and i != rank - 1]
    source = list(target)
    extra = iter(letters[rank:])
    for i in range(rank):
        if i not in batch_dims and i != rank - 1:
            source[i] = next(extra)
    source = "".join(source)
    product = "".join(
        [target[i] for i in batch_dims]
        + [target[i] for i in attn_axes]
        + [source[i] for i in attn_axes]
    )
    return f"{source},{target}->{product}", f"{product},{source}->{target}"


LAYERS = (
    Attention,
    AdditiveAttention,
    MultiHeadAttention,
    GroupedQueryAttention,
    GroupQueryAttention,
)
