"""Check a user's own per-layer outputs (`diff --against MINE.npz`) and explain mismatches.

People who recompute a model by hand make the same few mistakes: a channels-first
array where Keras is channels-last, a flatten in channel-major order, a kernel
flipped (convolution instead of Keras' correlation), a forgotten bias, an
activation left out. When a supplied array does not match, each of those
alternatives is computed from the reference's own inputs for that layer and
named when it matches.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .compare import Comparison, TolerancePolicy, compare_arrays
from .errors import KerascheckError
from .loading.spec import CallSpec, ModelSpec


def check_keys(mine: dict, spec: ModelSpec) -> dict[str, str]:
    """Map each supplied key to a call name; keys may be call names or layer names."""
    calls = {call.name: call for call in spec.calls}
    mapping = {}
    unknown = []
    for key in mine:
        if key in calls:
            mapping[key] = key
        elif key in spec.layers and key in {c.layer for c in spec.calls}:
            mapping[key] = key  # the first call of that layer
        else:
            unknown.append(key)
    if unknown:
        raise KerascheckError(
            f"--against: expected arrays keyed by layer name, found unknown keys {unknown}; "
            f"the model's layers are {[call.name for call in spec.calls]}"
        )
    return mapping


def to_channels_last(array: np.ndarray) -> np.ndarray:
    return np.moveaxis(array, 1, -1) if array.ndim >= 3 else array


def compare_against(
    mine: dict,
    reference: dict,
    spec: ModelSpec,
    policy: TolerancePolicy,
    layout: str = "channels_last",
    alternatives: Callable[[CallSpec], dict[str, np.ndarray]] | None = None,
) -> Comparison:
    """One row per layer call: the user's array against the reference, with hints."""
    mapping = check_keys(mine, spec)
    supplied = {call_name: key for key, call_name in mapping.items()}
    comparison = Comparison(tolerance=policy.default)
    for call in spec.calls:
        class_name = spec.layers[call.layer].class_name
        tolerance = policy.for_layer(call.name, class_name)
        if call.name not in supplied:
            row = compare_arrays(
                call.name, class_name, reference[call.name], reference[call.name], tolerance
            )
            row.status, row.reason = "skipped", "not supplied"
            comparison.layers.append(row)
            continue
        ours = np.asarray(mine[supplied[call.name]])
        if layout == "channels_first":
            ours = to_channels_last(ours)
        theirs = reference[call.name]
        if ours.shape != np.shape(theirs) and ours.ndim == np.ndim(theirs) - 1:
            ours = ours[None]  # one sample without its batch axis
        row = compare_arrays(call.name, class_name, ours, theirs, tolerance)
        if row.status == "mismatch":
            hint = explain(call, class_name, ours, theirs, tolerance, layout, alternatives)
            if hint:
                row.reason = hint
        comparison.layers.append(row)
    return comparison


def _close(a, b, tolerance) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or b.size == 0:
        return False
    scale = float(np.max(np.abs(b)))
    return bool(np.all(np.isfinite(a))) and tolerance.allows(float(np.max(np.abs(a - b))), scale)


def explain(call, class_name, ours, theirs, tolerance, layout, alternatives) -> str | None:
    """The first known mistake that turns the reference into the user's array, if any."""
    theirs = np.asarray(theirs)
    if layout != "channels_first" and ours.ndim >= 3 and ours.ndim == theirs.ndim:
        if _close(to_channels_last(ours), theirs, tolerance):
            return (
                "matches after moving the channel axis: your array is channels-first "
                "(N, C, ...) while this layer is channels-last; compare with "
                "--against-layout channels_first, or transpose with np.moveaxis(x, 1, -1)"
            )
    if class_name == "Flatten" and alternatives is not None:
        channel_major = alternatives(call).get("flatten channel-major")
        if channel_major is not None and _close(ours, channel_major, tolerance):
            return (
                "matches Keras' values flattened in channel-major order (all of channel 0, "
                "then channel 1, ...); Keras flattens channels-last maps row by row with the "
                "channels innermost: x.reshape(batch, -1) on (N, H, W, C)"
            )
    if alternatives is None:
        return None
    for label, value in alternatives(call).items():
        if label != "flatten channel-major" and _close(ours, value, tolerance):
            return HINTS[label]
    return None


HINTS = {
    "kernel flipped": (
        "matches only with the kernel flipped: Keras computes a cross-correlation "
        "(no kernel flip), not a mathematical convolution"
    ),
    "no bias": "matches only without the bias: add the layer's bias (one per output channel)",
    "no activation": (
        "matches the layer's values before its activation: apply the layer's activation"
    ),
}


def engine_alternatives(graph, values: dict, masks: dict) -> Callable[[CallSpec], dict]:
    """The reference layer recomputed with each common mistake, from its reference inputs."""

    def compute(call: CallSpec) -> dict[str, np.ndarray]:
        layer = graph.layers[call.layer]
        found = {}
        if layer.class_name == "Flatten":
            source = values.get((call.inputs[0].layer, call.inputs[0].call))
            if isinstance(source, np.ndarray) and source.ndim >= 3:
                channel_major = np.moveaxis(source, -1, 1)
                found["flatten channel-major"] = channel_major.reshape(source.shape[0], -1)
            return found
        original_w = dict(layer.w)
        original_activation = getattr(layer, "activation", None)
        try:
            if "kernel" in layer.w and layer.w["kernel"].ndim >= 3:
                spatial = tuple(range(layer.w["kernel"].ndim - 2))
                layer.w["kernel"] = np.flip(original_w["kernel"], axis=spatial)
                found["kernel flipped"] = graph.run_call(call, values, masks)[0]
                layer.w["kernel"] = original_w["kernel"]
            if "bias" in layer.w:
                layer.w["bias"] = np.zeros_like(original_w["bias"])
                found["no bias"] = graph.run_call(call, values, masks)[0]
                layer.w["bias"] = original_w["bias"]
            if callable(original_activation) and original_activation.__name__ != "linear":
                layer.activation = lambda x: x
                found["no activation"] = graph.run_call(call, values, masks)[0]
        finally:
            layer.w.update(original_w)
            if original_activation is not None:
                layer.activation = original_activation
        return found

    return compute
