"""Inference-only rewrites `predict` runs instead of some calls, with the same result.

Two rewrites: an inference BatchNormalization folded into the layer before it,
and an activation computed over its input's memory when nothing else reads it.

An inference-mode BatchNormalization right after a convolution or Dense that
has no activation is an affine map per output channel,
`(z - mean) * s + beta` with `s = gamma / sqrt(variance + epsilon)`. It is
folded into the layer before it: kernel' = kernel * s along the output
channels, bias' = (bias - mean) * s + beta, computed once in float64. The
BatchNormalization call then just passes the folded layer's output on, which
saves one pass over (and one allocation of) every such activation.

Float32 rounding differs from computing the two calls one after the other by
a few ulps of the output, as Keras' own kernels differ from each other (Keras
3 distributes the same formula as `z * s + (beta - mean * s)`). Only `predict`
(`Graph.run(keep=False)`) folds: `run`, `diff --layer-wise` and the backward
need the convolution's own output and compute both calls as written.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np

from ..loading.spec import ModelSpec
from . import activations
from .base import Layer
from .layers.normalization import positive

# The weight whose last axis (depthwise: last two, flattened) is the output channel.
FOLDABLE = {
    "Conv1D": "kernel",
    "Conv2D": "kernel",
    "Conv3D": "kernel",
    "Dense": "kernel",
    "SeparableConv1D": "pointwise_kernel",
    "SeparableConv2D": "pointwise_kernel",
    "DepthwiseConv1D": "depthwise_kernel",
    "DepthwiseConv2D": "depthwise_kernel",
}


@dataclass
class Fold:
    """One layer call followed only by one inference BatchNormalization call."""

    layer: Layer
    norm: Layer
    names: tuple[str, str]  # the two calls' names
    folded: dict = field(default_factory=dict)  # output rank -> folded layer, or None

    def layer_for(self, rank: int) -> Layer | None:
        """The folded layer for an output of this rank, or None when the two do not fold
        (the normalized axis is not the channel axis, or a layer is not built yet)."""
        if rank not in self.folded:
            if not (self.layer.built and self.norm.built):
                return None
            self.folded[rank] = _folded(self.layer, self.norm, rank)
        return self.folded[rank]


def folds(spec: ModelSpec, layers: dict[str, Layer]) -> dict[int, tuple[Fold, int]]:
    """{position of a foldable call: (its Fold, position of the BatchNormalization call)}."""
    return {
        position: (Fold(layer, norm, (source.name, reader.name)), reader_position)
        for position, source, layer, reader_position, reader, norm in _sole_readers(spec, layers)
        if _foldable(layer) and _plain_norm(norm) and _single_input(reader)
    }


# Layers whose `call` always returns a new array of their own (or a view of one):
# an activation that is the only reader of their output may overwrite it.
# A merge of one input returns that input itself: merges need two or more.
MERGES = {"Add", "Subtract", "Multiply", "Average"}
FRESH = {*FOLDABLE, "BatchNormalization", *MERGES}


def in_place(spec: ModelSpec, layers: dict[str, Layer]) -> dict[int, tuple[str, int]]:
    """{position of an activation call: the key of the value it may overwrite}.

    The activation (a layer whose `writes_in_place()`) must be the only reader of a
    value a FRESH layer computed, which is not a model output: nothing else holds
    that memory, and overwriting it saves an allocation and a write pass.
    """
    return {
        reader_position: (source.layer, source.index)
        for _, source, producer, reader_position, reader, activation in _sole_readers(spec, layers)
        if producer.class_name in FRESH
        and type(producer).__name__ == producer.class_name
        and (producer.class_name not in MERGES or len(source.refs) >= 2)
        and hasattr(activation, "call_in_place")
        and activation.writes_in_place()
        and _single_input(reader)
    }


def _sole_readers(spec: ModelSpec, layers: dict[str, Layer]):
    """(position, call, layer, reader position, reader call, reader layer) for every
    call whose output exactly one later call reads and that is not a model output."""
    readers: dict[tuple[str, int], set[int]] = {}
    for position, call in enumerate(spec.calls):
        for ref in call.refs:
            readers.setdefault((ref.layer, ref.call), set()).add(position)
    outputs = {(ref.layer, ref.call) for ref in spec.outputs}
    for position, call in enumerate(spec.calls):
        key = (call.layer, call.index)
        if key in outputs or len(readers.get(key, ())) != 1:
            continue
        (reader_position,) = readers[key]
        reader = spec.calls[reader_position]
        layer, reader_layer = layers.get(call.layer), layers.get(reader.layer)
        if layer is not None and reader_layer is not None:
            yield position, call, layer, reader_position, reader, reader_layer


def _single_input(call) -> bool:
    """A call of one tensor and nothing else (no arguments, keywords or constants)."""
    return (
        call.first is None
        and not call.as_list
        and not call.args
        and not call.kwargs
        and len(call.inputs) == 1
        and call.inputs[0].tensor == 0
    )


def _foldable(layer: Layer) -> bool:
    return (
        layer.class_name in FOLDABLE
        and type(layer).__name__ == layer.class_name
        and layer.activation is activations.linear
        and getattr(layer, "data_format", "channels_last") in ("channels_last", "channels_first")
    )


def _plain_norm(norm: Layer) -> bool:
    return (
        norm.class_name == "BatchNormalization"
        and not norm.renorm
        and norm.virtual_batch_size is None
        and len(norm.axes) == 1
    )


def _folded(layer: Layer, norm: Layer, rank: int) -> Layer | None:
    channel_axis = 1 if getattr(layer, "data_format", None) == "channels_first" else rank - 1
    if positive(norm.axes, rank) != [channel_axis]:
        return None
    name = FOLDABLE[layer.class_name]
    kernel = layer.w[name]
    filters = kernel.shape[-1] * (kernel.shape[-2] if name == "depthwise_kernel" else 1)
    w = {key: np.asarray(value, np.float64).reshape(-1) for key, value in norm.w.items()}
    if any(value.shape != (filters,) for value in w.values()):
        return None
    scale = w.get("gamma", 1.0) / np.sqrt(w["moving_variance"] + norm.epsilon)
    bias = np.asarray(layer.w["bias"], np.float64) if layer.use_bias else 0.0
    offset = (bias - w["moving_mean"]) * scale + w.get("beta", 0.0)
    folded = copy.copy(layer)
    folded.w = dict(layer.w)
    folded.w[name] = (
        kernel * scale.reshape(kernel.shape[-2:] if name == "depthwise_kernel" else -1)
    ).astype(kernel.dtype)
    folded.w["bias"] = offset.astype(kernel.dtype)
    folded.use_bias = True
    return folded
