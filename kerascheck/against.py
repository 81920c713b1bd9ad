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
from .inputs import LAYOUTS, input_layout, other_layout, transposed
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


def output_layouts(spec: ModelSpec) -> dict[str, str]:
    """The layout of each call's output: its layer's `data_format`, else its input's."""
    layouts = {(i.name, 0): input_layout(spec, i.name) for i in spec.inputs}
    found = {}
    for call in spec.calls:
        own = spec.layers[call.layer].config.get("data_format")
        fed = [layouts[(r.layer, r.call)] for r in call.refs if (r.layer, r.call) in layouts]
        layout = own if own in LAYOUTS else (fed[0] if fed else "channels_last")
        layouts[(call.layer, call.index)] = found[call.name] = layout
    return found


def compare_against(
    mine: dict,
    reference: dict,
    spec: ModelSpec,
    policy: TolerancePolicy,
    layout: str | None = None,
    alternatives: Callable[[CallSpec], dict[str, np.ndarray]] | None = None,
) -> Comparison:
    """One row per layer call: the user's array against the reference, with hints.

    `layout` is the layout the user's arrays are in; each is transposed to its
    call's output layout (`output_layouts`), and taken as it is when None.
    """
    mapping = check_keys(mine, spec)
    layouts = output_layouts(spec)
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
        theirs = reference[call.name]
        if ours.ndim == np.ndim(theirs) - 1:
            ours = ours[None]  # one sample without its batch axis
        model = layouts[call.name]
        ours = transposed(ours, layout or model, model)
        row = compare_arrays(call.name, class_name, ours, theirs, tolerance)
        if row.status == "mismatch":
            hint = explain(call, class_name, ours, theirs, tolerance, layout, alternatives, model)
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


def explain(
    call, class_name, ours, theirs, tolerance, layout, alternatives, model="channels_last"
) -> str | None:
    """The first known mistake that turns the reference into the user's array, if any.

    `ours` is already in the layer's output layout `model`, moved there from the
    layout the user said (`layout`, None for the model's own)."""
    theirs = np.asarray(theirs)
    said = layout or model
    other = other_layout(said)
    if ours.ndim >= 3 and ours.ndim == theirs.ndim:
        given = transposed(ours, model, said)
        if _close(transposed(given, other, model), theirs, tolerance):
            move = "np.moveaxis(x, 1, -1)" if other == "channels_first" else "np.moveaxis(x, -1, 1)"
            return (
                f"matches after moving the channel axis: your array is {other} "
                f"{LAYOUT_SHAPES[other]} while it was compared as {said}; compare with "
                f"--against-layout {other}, or transpose with {move}"
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
            return HINTS[label].format(**_kernel_words(ours.ndim))
    return None


def _kernel_words(rank: int) -> dict[str, str]:
    """How a kernel of this rank (a ConvND output has the same rank) reads in Keras'
    (*spatial, in, out) and PyTorch's (out, in, *spatial) orders, and the transposes."""
    spatial = ("d", "h", "w")[max(0, 5 - rank) :]
    return {
        "keras": "(" + ", ".join([*spatial, "in", "out"]) + ")",
        "torch": "(" + ", ".join(["out", "in", *spatial]) + ")",
        "to_keras": str((*range(2, rank), 1, 0)),
        "to_torch": str((rank - 1, rank - 2, *range(rank - 2))),
    }


LAYOUT_SHAPES = {"channels_first": "(N, C, ...)", "channels_last": "(N, ..., C)"}

HINTS = {
    "kernel flipped": (
        "matches only with the kernel flipped: Keras computes a cross-correlation "
        "(no kernel flip), not a mathematical convolution"
    ),
    "kernel reshaped from torch": (
        "your kernel looks like an {torch} array reshaped to {keras}; transpose it with "
        ".transpose{to_keras} instead"
    ),
    "kernel reshaped to torch": (
        "your kernel looks like Keras' {keras} kernel reshaped to {torch}; transpose it "
        "with .transpose{to_torch} instead"
    ),
    "valid padding": (
        "matches padding='valid' (no zero border: each spatial size n becomes "
        "(n - k) // s + 1), but this layer has padding='same': pad the input with zeros so "
        "the output size is ceil(n / s) (total pad max((ceil(n/s) - 1)*s + k - n, 0), the "
        "extra one at the end)"
    ),
    "same padding": (
        "matches padding='same' (a zero border keeping each size at ceil(n / s)), but this "
        "layer has padding='valid': slide the window over the input without padding, each "
        "size n becomes (n - k) // s + 1"
    ),
    "no bias": "matches only without the bias: add the layer's bias (one per output channel)",
    "no activation": (
        "matches the layer's values before its activation: apply the layer's activation"
    ),
}


PADDINGS = ("valid", "same")


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

        def variant(label, weights=None, **attributes):
            """The call recomputed with some weights and attributes swapped in."""
            saved_w, saved = dict(layer.w), {name: getattr(layer, name) for name in attributes}
            try:
                layer.w.update(weights or {})
                for name, value in attributes.items():
                    setattr(layer, name, value)
                found[label] = graph.run_call(call, values, masks)[0]
            except KerascheckError:
                pass  # e.g. valid padding on an input smaller than the kernel
            finally:
                layer.w.update(saved_w)
                for name, value in saved.items():
                    setattr(layer, name, value)

        kernel = layer.w.get("kernel")
        if kernel is not None and kernel.ndim >= 3:
            n = kernel.ndim
            variant("kernel flipped", {"kernel": np.flip(kernel, axis=tuple(range(n - 2)))})
            torch = kernel.transpose(n - 1, n - 2, *range(n - 2))  # (out, in, *spatial)
            variant("kernel reshaped from torch", {"kernel": torch.reshape(kernel.shape)})
            from_torch = (*range(2, n), 1, 0)
            variant(
                "kernel reshaped to torch",
                {"kernel": kernel.reshape(torch.shape).transpose(from_torch)},
            )
        if "bias" in layer.w:
            variant("no bias", {"bias": np.zeros_like(layer.w["bias"])})
        activation = getattr(layer, "activation", None)
        if callable(activation) and activation.__name__ != "linear":
            variant("no activation", activation=lambda x: x)
        padding = getattr(layer, "padding", None)
        if padding in PADDINGS:
            other = PADDINGS[1 - PADDINGS.index(padding)]
            variant(f"{other} padding", padding=other)
        return found

    return compute
