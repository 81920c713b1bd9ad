"""Check a user's own gradients (`grad --against MINE.npz`) and name their likely mistake.

The arrays are keyed `loss`, `d/<call>` (dL/d that call's output) and
`grad/<layer>/<weight>`, in Keras' layout or converted from channels-first /
PyTorch's. Each supplied tensor is compared with the reference (Keras' tape, or
the engine with `--reference numpy`) under the gradient tolerance and is a row
of its call, in backward order; the first failing one is the first divergence,
since everything after it in backward order may only inherit its error.

A failing tensor gets a hint. The step that computes it is the backward of the
call(s) that *read* it for a `d/<call>` (a conv's input gradient is the
previous call's `d/`), or of its layer for a weight. That step is recomputed
from the reference's own forward values and upstream gradient with each known
mistake (grad_hints.py); the mistake whose result matches the user's array is
named. When the user's upstream tensor is itself wrong and this step's correct
backward of it reproduces their array, the hint says the error is inherited.
Last, constant factors (the batch size, ½, the output's last axis, a sign, the
learning rate) are recognised on any tensor, the loss included.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

import numpy as np

from . import grad_hints
from .engine.model import EngineModel
from .errors import KerascheckError
from .grad import CallRow, GradReference, GradTolerance, TensorRow, TensorStats
from .grad_hints import CORRECT, HINTS, Backward, Step

LAYOUTS = ("channels_last", "channels_first", "torch")
LIST_ALL_KEYS = 12  # above this many valid keys, the error lists them in brace form


@dataclass
class Supplied:
    """One of the user's arrays, in Keras' layout, with what it is the gradient of."""

    key: str
    kind: str  # "loss", "d" or "grad"
    name: str  # the call (d), the layer (grad), "loss"
    tensor: str  # "loss", "d_output" or the weight name
    value: np.ndarray


def against_rows(
    mine: dict, ref: GradReference, model: EngineModel, layout: str, tolerance: GradTolerance
) -> list[CallRow]:
    """One row per call with supplied tensors, in backward order, after a `loss` row."""
    if layout not in LAYOUTS:
        raise KerascheckError(
            f"--against-layout: expected one of {list(LAYOUTS)}, found {layout!r}"
        )
    supplied = read_supplied(mine, ref, model, layout)
    explainer = Explainer(ref, model, tolerance, supplied, layout)
    rows = []
    if "loss" in supplied:
        row = CallRow("loss", "loss")
        row.tensors.append(explainer.judge(supplied["loss"], np.asarray(ref.loss, np.float64)))
        rows.append(row)
    last_call = {call.layer: call.name for call in model.spec.calls}
    for call in reversed(model.spec.calls):
        layer = model.graph.layers[call.layer]
        row = CallRow(call.name, layer.class_name)
        given = supplied.get(f"d/{call.name}")
        if given is not None:
            row.tensors.append(explainer.judge(given, explainer.expected_d(call.name)))
        if last_call[call.layer] == call.name:
            for name in layer.w:
                given = supplied.get(f"grad/{call.layer}/{name}")
                if given is not None:
                    row.tensors.append(explainer.judge(given, ref.weights[call.layer][name]))
        if row.tensors:
            rows.append(row)
    return rows


# -- keys, layouts and shapes -------------------------------------------------------


def valid_keys(ref: GradReference, model: EngineModel) -> dict[str, tuple[str, str, str]]:
    """{key: (kind, call or layer, tensor)} of every gradient the reference can judge."""
    keys = {"loss": ("loss", "loss", "loss")}
    for call in model.spec.calls:
        if not isinstance(ref.outputs.get(call.name), (list, tuple)):
            keys[f"d/{call.name}"] = ("d", call.name, "d_output")
    for layer_name, layer in model.graph.layers.items():
        grads = ref.weights.get(layer_name, {})
        for name in layer.w:
            if name in grads:
                keys[f"grad/{layer_name}/{name}"] = ("grad", layer_name, name)
    return keys


def read_supplied(mine: dict, ref: GradReference, model: EngineModel, layout: str) -> dict:
    """{key: Supplied}, converted to Keras' layout and shape-checked; bad keys fail in one line."""
    keys = valid_keys(ref, model)
    unknown = [key for key in mine if key not in keys]
    if unknown:
        raise KerascheckError(_unknown_keys_message(unknown, keys, model))
    supplied = {}
    for key, raw in mine.items():
        kind, name, tensor = keys[key]
        value = _as_float(key, raw)
        if kind == "loss":
            if value.size != 1:
                raise KerascheckError(
                    f"--against: 'loss' must be a scalar, found an array of shape {value.shape}"
                )
            value = value.reshape(())
        else:
            expected = _expected_shape(kind, name, tensor, ref)
            layer = model.graph.layers[name if kind == "grad" else _layer_of(model, name)]
            value = _to_keras_layout(value, kind, layer, tensor, expected, layout)
            if value.shape != expected:
                raise KerascheckError(
                    _shape_message(key, np.shape(raw), expected, kind, layer, tensor, layout)
                )
        supplied[key] = Supplied(key, kind, name, tensor, value)
    return supplied


def _as_float(key, raw) -> np.ndarray:
    try:
        return np.asarray(raw, np.float64)
    except (TypeError, ValueError):
        raise KerascheckError(
            f"--against: '{key}' must hold numbers, found {np.asarray(raw).dtype}"
        ) from None


def _layer_of(model, call_name):
    return next(c.layer for c in model.spec.calls if c.name == call_name)


def _expected_shape(kind, name, tensor, ref) -> tuple:
    if kind == "d":
        return tuple(np.shape(ref.outputs[name]))
    return tuple(np.shape(ref.weights[name][tensor]))


def _to_keras_layout(value, kind, layer, tensor, expected, layout) -> np.ndarray:
    """The user's array in Keras' layout. One sample may come without its batch axis."""
    if kind == "d":
        if value.ndim == len(expected) - 1 and expected and expected[0] == 1:
            value = value[None]
        if layout != "channels_last" and value.ndim >= 3:
            value = np.moveaxis(value, 1, -1)
        return value
    if layout == "torch":
        return _from_torch_weight(value, layer, tensor, expected)
    return value


def _from_torch_weight(value, layer, tensor, expected) -> np.ndarray:
    """PyTorch's weight layouts to Keras': transposes, never reshapes of the values' order.

    Conv (out, in, *k) -> (*k, in, out); depthwise (in * mult, 1, *k) -> (*k, in,
    mult); Linear (out, in) -> (in, out).
    """
    if layer.class_name == "Dense" and tensor == "kernel" and value.ndim == 2:
        return value.T
    is_conv = "Conv" in layer.class_name and tensor.endswith("kernel") and value.ndim >= 3
    if not is_conv:
        return value
    moved = np.transpose(value, (*range(2, value.ndim), 1, 0))
    if tensor == "depthwise_kernel" and moved.shape[-2] == 1 and moved.size == np.prod(expected):
        return moved.reshape(expected)
    return moved


def _user_shape(expected, kind, layer, tensor, layout) -> tuple:
    """The shape the user's array must have in their layout."""
    expected = tuple(expected)
    if kind == "d":
        if layout != "channels_last" and len(expected) >= 3:
            return (expected[0], expected[-1], *expected[1:-1])
        return expected
    if layout != "torch":
        return expected
    if layer.class_name == "Dense" and tensor == "kernel" and len(expected) == 2:
        return expected[::-1]
    if "Conv" in layer.class_name and tensor.endswith("kernel") and len(expected) >= 3:
        if tensor == "depthwise_kernel":
            return (expected[-2] * expected[-1], 1, *expected[:-2])
        return (expected[-1], expected[-2], *expected[:-2])
    return expected


def _shape_message(key, found, expected, kind, layer, tensor, layout) -> str:
    want = _user_shape(expected, kind, layer, tensor, layout)
    where = "" if want == expected else f" in --against-layout {layout} (Keras' {expected})"
    message = f"--against: '{key}' has shape {tuple(found)}, expected {want}{where}"
    tip = _layout_tip(tuple(found), expected, kind, layer, tensor, layout)
    return message + (f"; {tip}" if tip else "")


def _layout_tip(found, expected, kind, layer, tensor, layout) -> str | None:
    """Which --against-layout the found shape looks like, when it is another one's."""
    for other in LAYOUTS:
        if other != layout and found == _user_shape(expected, kind, layer, tensor, other):
            if found != _user_shape(expected, kind, layer, tensor, layout):
                return f"it looks like {_LAYOUT_NAMES[other]}: pass --against-layout {other}"
    if kind == "grad" and len(found) == 2 and found == tuple(expected)[::-1]:
        return "it looks transposed (Keras keeps a Dense kernel as (in, out))"
    if kind == "d" and len(found) == len(expected) - 1:
        return f"the batch axis is missing (the batch has {expected[0]} samples)"
    return None


_LAYOUT_NAMES = {
    "channels_last": "Keras' channels-last layout",
    "channels_first": "channels-first (N, C, ...)",
    "torch": "PyTorch's layout",
}


def _unknown_keys_message(unknown, keys, model) -> str:
    """One line: the unknown keys (with close matches) and every valid key, compactly."""
    named = []
    for key in unknown:
        close = difflib.get_close_matches(key, list(keys), n=1)
        named.append(f"'{key}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
    return (
        f"--against: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(named)}; "
        f"valid keys: {describe_keys(keys)}"
    )


def describe_keys(keys: dict) -> str:
    """All valid keys, in brace form (`d/{conv2d,dense}`) when there are many."""
    if len(keys) <= LIST_ALL_KEYS:
        return ", ".join(keys)
    calls = [name for kind, name, _ in keys.values() if kind == "d"]
    by_layer: dict[str, list[str]] = {}
    for kind, layer, tensor in keys.values():
        if kind == "grad":
            by_layer.setdefault(layer, []).append(tensor)
    groups: dict[tuple, list[str]] = {}
    for layer, tensors in by_layer.items():
        groups.setdefault(tuple(tensors), []).append(layer)
    parts = ["loss", f"d/{_braced(calls)}"]
    parts += [f"grad/{_braced(layers)}/{_braced(list(t))}" for t, layers in groups.items()]
    return ", ".join(parts)


def _braced(names: list[str], most: int = 24) -> str:
    if len(names) == 1:
        return names[0]
    if len(names) > most:
        names = [*names[: most - 4], f"... {len(names) - most + 1} more ...", *names[-3:]]
    return "{" + ",".join(names) + "}"


# -- judging and explaining ---------------------------------------------------------


class Explainer:
    """Judges supplied tensors and names the mistake behind a failing one.

    Each call's backward variants are computed once, only when a tensor they
    explain fails.
    """

    def __init__(self, ref, model, tolerance, supplied, layout):
        self.ref, self.model, self.tolerance = ref, model, tolerance
        self.supplied, self.layout = supplied, layout
        self.calls = {call.name: call for call in model.spec.calls}
        self.readers = _readers(model.spec)
        self.output_calls = {_output_call(ref_) for ref_ in model.spec.outputs}
        self._variants: dict[str, dict] = {}

    # the reference side ------------------------------------------------------------
    def expected_d(self, call_name):
        """dL/d a call's output; zeros where it does not reach the loss, None when Keras
        took the loss from this output's logits and so never computed it."""
        grad = self.ref.d_outputs.get(call_name)
        if grad is not None:
            return grad
        if call_name in self.output_calls:
            return None
        return np.zeros(np.shape(self.ref.outputs[call_name]))

    def judge(self, given: Supplied, expected) -> TensorRow:
        if expected is None:
            shape = list(given.value.shape)
            return TensorRow(
                given.tensor, shape, 0.0, judged="carried", hint=HINTS["logits output"]
            )
        expected = np.asarray(expected, np.float64)
        stats = TensorStats.of(given.value, expected, self.tolerance)
        row = TensorRow(
            given.tensor,
            list(expected.shape),
            float(np.linalg.norm(expected)),
            carried=stats,
            judged="carried",
        )
        if not stats.ok:
            try:
                row.hint = self.explain(given, expected)
            except Exception:  # a hint is best effort: the verdict stands without one
                row.hint = None
        return row

    def step(self, call_name, dy=None, use_reference=True) -> Step | None:
        """The reference's view of one call's backward (upstream `dy` if given)."""
        call = self.calls[call_name]
        layer = self.model.graph.layers[call.layer]
        inputs = [_wide(v) for v in self.ref.inputs[call_name]]
        x = inputs if call.as_list else inputs[0]
        y = _wide(self.ref.outputs[call_name])
        upstream = self.expected_d(call_name) if use_reference else dy
        step = Step(layer, x, y, None if upstream is None else _wide(upstream))
        if step.dy is None and call_name in self.output_calls and use_reference:
            step.dz = grad_hints.logits_gradient(step, self.ref.weights.get(call.layer, {}))
        step.flattened = self._flattened_source(call)
        return step

    def variants(self, call_name) -> dict[str, Backward]:
        if call_name not in self._variants:
            self._variants[call_name] = grad_hints.backward_variants(self.step(call_name))
        return self._variants[call_name]

    def _flattened_source(self, call):
        """Channels-last shape a Flatten made this call's input from, if one did."""
        if len(call.inputs) != 1:
            return None
        source = call.inputs[0]
        producer = next(
            (c for c in self.model.spec.calls if (c.layer, c.index) == (source.layer, source.call)),
            None,
        )
        if producer is None or self.model.graph.layers[producer.layer].class_name != "Flatten":
            return None
        shape = np.shape(self.ref.inputs[producer.name][0])
        return tuple(shape[1:]) if len(shape) >= 3 else None

    # explaining --------------------------------------------------------------------
    def explain(self, given: Supplied, expected: np.ndarray) -> str | None:
        user = given.value
        if given.kind != "loss":
            inherited = self._inherited(given, expected)
            if inherited:
                return inherited
        candidates = self._candidates(given, expected) if given.kind != "loss" else []
        label = self._best(user, expected, candidates)
        if label:
            return HINTS[label]
        if given.kind != "loss" and not np.any(user) and np.any(expected):
            return HINTS["zeros"]
        return self._scale(user, expected)

    def _candidates(self, given, expected) -> list[tuple[str, np.ndarray]]:
        if given.kind == "d":
            found = self._d_candidates(given.name, expected)
        else:
            found = self._weight_candidates(given.name, given.tensor, expected)
        found += _generic_candidates(given, expected, self.layout)
        return found

    def _d_candidates(self, call_name, expected):
        """Alternatives for d/<call>: each reader's backward with a mistake, and the loss's."""
        found = []
        for reader, position in self.readers.get(call_name, []):
            variants = self.variants(reader)
            correct = variants.get(CORRECT)
            for label, variant in variants.items():
                if label == CORRECT or variant.d_input is None:
                    continue
                delta = _at(variant.d_input, position) - _at(correct.d_input, position)
                found.append((label, expected + delta))
        if call_name in self.output_calls:
            found += list(grad_hints.loss_gradient_variants(expected).items())
        return found

    def _weight_candidates(self, layer_name, tensor, expected):
        """Alternatives for grad/<layer>/<weight>: the same mistake in each of its calls."""
        deltas: dict[str, np.ndarray] = {}
        for call in self.model.spec.calls:
            if call.layer != layer_name:
                continue
            variants = self.variants(call.name)
            correct = variants.get(CORRECT)
            for label, variant in variants.items():
                if label != CORRECT and tensor in variant.weights:
                    delta = variant.weights[tensor] - correct.weights[tensor]
                    deltas[label] = deltas.get(label, 0) + delta
        return [(label, expected + delta) for label, delta in deltas.items()]

    def weight_alternatives(self, layer_name, tensor, expected) -> list[tuple[str, np.ndarray]]:
        """(hint, gradient) for each named mistake a weight's gradient can have."""
        given = Supplied(f"grad/{layer_name}/{tensor}", "grad", layer_name, tensor, expected)
        found = self._weight_candidates(layer_name, tensor, expected)
        found += _generic_candidates(given, expected, self.layout)
        return [(HINTS[label], value) for label, value in found]

    def _inherited(self, given, expected) -> str | None:
        """'Follows from your d/<upstream>' when this step's correct backward of the user's
        own (failing) upstream gradient reproduces their array."""
        sources, delta = [], 0.0
        if given.kind == "d":
            pairs = self.readers.get(given.name, [])
        else:
            pairs = [(c.name, None) for c in self.model.spec.calls if c.layer == given.name]
        for call_name, position in pairs:
            upstream = self.supplied.get(f"d/{call_name}")
            reference = self.expected_d(call_name)
            if upstream is None or reference is None:
                continue
            if TensorStats.of(upstream.value, reference, self.tolerance).ok:
                continue
            own = grad_hints.backward_variants(
                self.step(call_name, upstream.value, use_reference=False), mistakes=False
            ).get(CORRECT)
            correct = self.variants(call_name).get(CORRECT)
            if own is None or correct is None:
                return None
            if given.kind == "d":
                delta = delta + _at(own.d_input, position) - _at(correct.d_input, position)
            elif given.tensor in own.weights:
                delta = delta + own.weights[given.tensor] - correct.weights[given.tensor]
            sources.append(upstream.key)
        if not sources:
            return None
        if not TensorStats.of(given.value, expected + delta, self.tolerance).ok:
            return None
        return (
            f"follows from your {', '.join(sources)}: this step's backward is right given it; "
            "the error comes from there"
        )

    def _best(self, user, expected, candidates) -> str | None:
        """The label whose alternative matches the user's array best, within tolerance;
        alternatives that equal the reference are no mistake here and are skipped."""
        best = None
        for label, value in candidates:
            value = np.asarray(value, np.float64)
            if value.shape != user.shape or TensorStats.of(value, expected, self.tolerance).ok:
                continue
            stats = TensorStats.of(user, value, self.tolerance)
            if stats.ok and (best is None or stats.rel_error < best[0]):
                best = (stats.rel_error, label)
        return best[1] if best else None

    def _scale(self, user, expected) -> str | None:
        """A constant factor between the user's array and the reference, named if known."""
        scale = float(np.sum(expected * expected))
        if scale == 0:
            return None
        alpha = float(np.sum(user * expected)) / scale
        if not TensorStats.of(user, alpha * expected, self.tolerance).ok:
            return None
        return grad_hints.name_factor(alpha, self.factors())

    def factors(self, learning_rate: bool = True) -> dict[str, float]:
        batch = int(np.shape(self.ref.inputs[self.model.spec.calls[0].name][0])[0])
        output = self.ref.outputs[next(iter(self.output_calls))]
        depth = int(np.shape(output)[-1]) if np.ndim(output) >= 2 else 1
        rate = _learning_rate(self.model.spec) if learning_rate else None
        return grad_hints.scale_factors(batch, depth, rate)


def _generic_candidates(given, expected, layout) -> list[tuple[str, np.ndarray]]:
    """Layout mix-ups any tensor can have: transposed, reshaped kernels, channels first."""
    found = []
    if expected.ndim == 2 and expected.shape[0] == expected.shape[1]:
        found.append(("transposed", expected.T))
    if given.kind == "grad" and given.tensor.endswith("kernel") and expected.ndim >= 3:
        torch_order = np.transpose(
            expected, (expected.ndim - 1, expected.ndim - 2, *range(expected.ndim - 2))
        )
        if layout == "torch":  # their (out, in, *k) is Keras' kernel reshaped
            reshaped = expected.reshape(torch_order.shape)
            found.append(
                ("kernel reshaped", np.transpose(reshaped, (*range(2, expected.ndim), 1, 0)))
            )
        else:  # their (*k, in, out) is PyTorch's kernel reshaped
            found.append(("kernel reshaped", torch_order.reshape(expected.shape)))
    if given.kind == "d" and layout == "channels_last" and expected.ndim >= 3:
        moved = np.moveaxis(expected, -1, 1)
        if moved.shape == expected.shape:
            found.append(("channels first", moved))
    return found


def _readers(spec) -> dict[str, list[tuple[str, int]]]:
    """{call: [(call reading its output, input position)]}."""
    producers = {(c.layer, c.index): c.name for c in spec.calls}
    readers: dict[str, list[tuple[str, int]]] = {}
    for call in spec.calls:
        for position, ref in enumerate(call.inputs):
            source = producers.get((ref.layer, ref.call))
            if source is not None and ref.tensor == 0:
                readers.setdefault(source, []).append((call.name, position))
    return readers


def _output_call(ref) -> str:
    return ref.layer if ref.call == 0 else f"{ref.layer}#{ref.call}"


def _learning_rate(spec) -> float | None:
    optimizer = (spec.training or {}).get("optimizer")
    config = optimizer.get("config", {}) if isinstance(optimizer, dict) else {}
    rate = config.get("learning_rate") if isinstance(config, dict) else None
    return float(rate) if isinstance(rate, (int, float)) and not isinstance(rate, bool) else None


def _wide(value):
    if isinstance(value, (list, tuple)):
        return [_wide(v) for v in value]
    array = np.asarray(value)
    return array.astype(np.float64) if array.dtype.kind == "f" else array


def _at(values, position):
    return values[position] if isinstance(values, (list, tuple)) else values
