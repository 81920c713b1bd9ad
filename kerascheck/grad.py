"""Gradients checked: the engine's backward against Keras' tape (the `grad` command's core).

For every layer call, in backward order (from the loss to the inputs), three
kinds of tensor are compared with Keras:

- `d_output`: dL/d(the call's output). Carried only: the engine's chain end to
  end against Keras' tape.
- `d_input` (`d_input#1`, ... for several inputs): what this call's backward
  passes to each input. **Own**: the engine's backward of this call alone, fed
  Keras' forward inputs and Keras' dL/d(output); **carried**: the engine's
  chain. Keras' side is this call's own share (see oracle/gradients.py), so a
  tensor read by several calls still points at the right one.
- each trainable weight (`kernel`, `bias`, `gamma`, ...): own and carried as
  above, summed over a shared layer's calls, shown on its last call (the first
  row in backward order).

A tensor agrees when `||engine - keras|| <= rtol * ||keras|| + atol * sqrt(n)`:
relative per tensor, with a tiny absolute floor (defaults rtol 1e-3, atol
1e-9). Float32 tape gradients differ from float64 ones by up to ~5e-5
relative on small saturated nets, so 1e-3 separates noise from bugs; an
absolute 1e-5 would pass seed 002's completely wrong conv gradients of size
1e-5. `first_divergence` is the first (call, tensor) whose own error is out of
tolerance.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from .engine import backprop
from .engine.losses import get_loss
from .engine.model import EngineModel
from .errors import KerascheckError

DEFAULT_GRAD_RTOL = 1e-3
DEFAULT_GRAD_ATOL = 1e-9
# A gradient that is zero in exact arithmetic (a bias in front of a BatchNormalization
# in training mode) comes out as float32 cancellation noise on both sides, about 1e-7
# of the layer's other gradients. Within one call, a tensor is judged with an absolute
# floor of this fraction of the call's largest gradient norm, so noise against noise
# is not a mismatch while a real gradient of any size is still judged relatively.
CANCELLATION_FLOOR = 1e-6


@dataclass(frozen=True)
class GradTolerance:
    rtol: float = DEFAULT_GRAD_RTOL
    atol: float = DEFAULT_GRAD_ATOL

    def allows(self, diff_norm: float, ref_norm: float, size: int, floor: float = 0.0) -> bool:
        return diff_norm <= self.rtol * ref_norm + self.atol * math.sqrt(max(size, 1)) + floor


@dataclass(frozen=True)
class GradPolicy:
    """A default gradient tolerance plus overrides globbed on call name or class."""

    default: GradTolerance = field(default_factory=GradTolerance)
    overrides: tuple = ()  # ((pattern, GradTolerance), ...)

    def for_call(self, name: str, class_name: str) -> GradTolerance:
        import fnmatch

        for pattern, tolerance in self.overrides:
            if any(fnmatch.fnmatchcase(v, pattern) for v in (name, name.split("#")[0], class_name)):
                return tolerance
        return self.default


@dataclass
class TensorStats:
    """How one gradient tensor compares with its reference."""

    rel_error: float  # ||a - b|| / ||b||
    max_abs_diff: float
    norm_ratio: float  # ||a|| / ||b||
    cosine: float
    ok: bool

    @classmethod
    def of(cls, ours, theirs, tolerance: GradTolerance, floor: float = 0.0) -> TensorStats:
        a = np.asarray(ours, np.float64)
        b = np.asarray(theirs, np.float64)
        if a.shape != b.shape:
            raise KerascheckError(f"gradient shape {a.shape} does not match Keras' {b.shape}")
        finite = bool(np.all(np.isfinite(a))) and bool(np.all(np.isfinite(b)))
        diff = float(np.linalg.norm(a - b)) if finite else math.inf
        na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
        cosine = float(np.sum(a * b) / (na * nb)) if na > 0 and nb > 0 else float(na == nb)
        return cls(
            rel_error=diff / nb if nb > 0 else (0.0 if diff == 0 else math.inf),
            max_abs_diff=float(np.max(np.abs(a - b))) if a.size and finite else 0.0,
            norm_ratio=na / nb if nb > 0 else (1.0 if na == 0 else math.inf),
            cosine=cosine,
            ok=finite and tolerance.allows(diff, nb, a.size, floor),
        )

    def worse(self, other: TensorStats | None) -> TensorStats:
        if other is None:
            return self
        return self if (not self.ok, self.rel_error) >= (not other.ok, other.rel_error) else other


@dataclass
class TensorRow:
    tensor: str  # d_output, d_input, d_input#1, kernel, bias, ...
    shape: list
    keras_norm: float
    own: TensorStats | None = None
    carried: TensorStats | None = None
    hint: str | None = None
    float64: dict | None = None  # {"keras": rel error, "engine": rel error} vs float64 truth
    # "own": the engine's own backward decides, a carried-only error is drift; "carried": the
    # carried error is the verdict (a user's own arrays, `--against`), "skipped" without one
    judged: str = "own"

    @property
    def status(self) -> str:
        if self.judged == "carried":
            if self.carried is None:
                return "skipped"
            return "match" if self.carried.ok else "mismatch"
        if self.own is not None and not self.own.ok:
            return "mismatch"
        if self.carried is not None and not self.carried.ok:
            return "drift"
        return "match"

    def to_json(self) -> dict:
        out = {"tensor": self.tensor, "shape": self.shape, "status": self.status}
        out["keras_norm"] = self.keras_norm
        for key in ("own", "carried"):
            value = getattr(self, key)
            if value is not None:
                out[key] = asdict(value)
        if self.hint:
            out["hint"] = self.hint
        if self.float64 is not None:
            out["float64"] = self.float64
        return out


@dataclass
class CallRow:
    name: str
    class_name: str
    tensors: list[TensorRow] = field(default_factory=list)

    @property
    def status(self) -> str:
        statuses = {t.status for t in self.tensors}
        for status in ("mismatch", "drift"):
            if status in statuses:
                return status
        return "match"


@dataclass
class GradResult:
    model_path: str
    keras_version: str
    oracle: str
    oracle_reason: str
    oracle_version: str
    loss_name: str
    loss_from: str
    mode: str
    keras_loss: float
    engine_loss: float
    rows: list[CallRow]
    tolerance: GradTolerance
    batch: int
    engine_seconds: float = 0.0
    keras_seconds: float = 0.0
    logits_path: bool = False
    saved: dict | None = None  # arrays for --save-grads
    subject: str = "engine"  # what was compared: the engine, or the user's arrays

    @property
    def first_divergence(self) -> dict | None:
        for row in self.rows:
            for tensor in row.tensors:
                if tensor.status == "mismatch":
                    return {"call": row.name, "class_name": row.class_name, "tensor": tensor.tensor}
        return None

    @property
    def status(self) -> str:
        return "mismatch" if self.first_divergence else "match"


def resolve_loss(model: EngineModel, loss_option: str | None):
    """(loss, identifier for Keras, where it came from): `--loss` wins over the file."""
    training = model.spec.training
    if loss_option:
        identifier, where = loss_option, "--loss"
    elif training and training.get("loss") is not None:
        identifier = training["loss"]
        where = f"the file's {training.get('where', 'compile config')}"
    else:
        raise KerascheckError(
            "expected a loss: the model file was saved without a compiled loss; pass --loss "
            "NAME (e.g. --loss mse, --loss categorical_crossentropy)"
        )
    if isinstance(identifier, (list, dict)) and not _is_serialized_loss(identifier):
        raise KerascheckError(
            f"expected one loss for the model, found one per output ({identifier!r}); "
            "pass --loss NAME to use one loss for every output"
        )
    return get_loss(identifier, model.spec.keras_major), identifier, where


def _is_serialized_loss(value) -> bool:
    return isinstance(value, dict) and "class_name" in value


def check_targets(model: EngineModel, loss, targets: list[np.ndarray]) -> list[np.ndarray]:
    """Each target's shape against its model output's (sparse losses drop the class axis)."""
    sparse = "Sparse" in loss.name
    checked = []
    for ref, target in zip(model.spec.outputs, targets):
        name = ref.layer if ref.call == 0 else f"{ref.layer}#{ref.call}"
        shape = model.output_shapes[name]
        shape = shape[ref.tensor] if isinstance(shape, list) else shape
        expected = shape[:-1] if sparse else shape
        target = np.asarray(target)
        if not sparse and target.ndim == len(shape) - 1 and shape[-1] == 1:
            target = target[..., None]  # Keras expands (batch,) targets of a 1-unit output
        given = np.shape(target)
        squeezed = given[:-1] if sparse and len(given) == len(shape) and given[-1] == 1 else given
        if len(squeezed) != len(expected) or any(
            e is not None and i > 0 and e != g for i, (e, g) in enumerate(zip(expected, squeezed))
        ):
            want = "(" + ", ".join("batch" if i == 0 else str(d) for i, d in enumerate(expected))
            raise KerascheckError(
                f"expected TARGET for output '{ref.layer}' of shape {want}) to match the "
                f"model output{' without its class axis' if sparse else ''}, found {given}"
            )
        checked.append(target)
    return checked


def engine_loss(
    model, loss, tape_outputs, backwards, targets, sample_weight, logits_ok, masks=None
):
    """(loss value, [dL/d output], {call: dL/d logits}) on the engine's side; `masks`:
    the Keras mask each output carries (None where it has none), which Keras' loss
    turns into weights."""
    total, grads, pre = 0.0, [], {}
    masks = masks or [None] * len(model.spec.outputs)
    for ref, y_true, y_pred, mask in zip(model.spec.outputs, targets, tape_outputs, masks):
        name = ref.layer if ref.call == 0 else f"{ref.layer}#{ref.call}"
        logits = logits_ok.get(name)
        if logits is not None:
            value, d_logits = loss.value_and_grad(
                y_true, y_pred, sample_weight, logits=logits, mask=mask
            )
            pre[name] = d_logits
            grads.append(None)
        else:
            value, d_pred = loss.value_and_grad(y_true, y_pred, sample_weight, mask=mask)
            grads.append(d_pred)
        total += float(value)
    return total, grads, pre


def output_masks(model: EngineModel, tape: backprop.Tape) -> list:
    """The Keras mask of each model output in the engine's forward (None where none)."""
    from .engine.graph import _pick
    from .engine.layers.model import _starts_masks, propagate_masks

    if not _starts_masks(model.graph):
        return [None] * len(model.spec.outputs)
    masks = propagate_masks(model.graph, tape.values)
    return [_loss_mask(_pick(masks, ref)) for ref in model.spec.outputs]


def _loss_mask(mask):
    if mask is None or isinstance(mask, (list, tuple)):
        return None
    return np.asarray(mask, dtype=bool)


def logits_outputs(model: EngineModel, loss, backwards: dict) -> dict:
    """{output call: logits} where Keras' `fit` takes the loss from the logits: the output
    comes straight from the activation whose logits the loss accepts (Keras marks such
    tensors with `_keras_logits`); a Reshape after the softmax breaks the path."""
    from .engine import activations

    wanted = getattr(loss, "logits_activation", None)
    if wanted is None:  # Keras takes the logits even with from_logits=True (with a warning)
        return {}
    fn = {"softmax": activations.softmax, "sigmoid": activations.sigmoid}[wanted]
    found = {}
    for ref in model.spec.outputs:
        name = ref.layer if ref.call == 0 else f"{ref.layer}#{ref.call}"
        back = backwards.get(name)
        if getattr(back, "activation", None) is fn and hasattr(back, "logits"):
            found[name] = back.logits
    return found


@dataclass
class EngineGradients:
    """The engine's side of one batch: its training-mode forward, loss and backward."""

    tape: backprop.Tape
    logits: dict  # {output call: logits} where the loss was taken from them
    d_logits: dict  # {output call: dL/d logits} on that path
    value: float  # the loss, regularization included
    penalties: float  # the regularization part of `value`
    weight_penalty_grads: dict  # {layer: {weight: d penalty / dw}}
    gradients: backprop.Gradients | None  # None when not differentiated (`backward=False`)


def engine_gradients(
    model, loss, inputs, targets, sample_weight, training, noise, backward=True
) -> EngineGradients:
    """Forward, loss (from the logits where `fit` takes them), regularization, backward:
    the engine's chain end to end, shared by `grad` and `train-step`."""
    tape = backprop.forward(model.graph, inputs, training, noise)
    logits = logits_outputs(model, loss, tape.backwards)
    pure, d_outputs, d_pre = engine_loss(
        model,
        loss,
        tape.outputs,
        tape.backwards,
        targets,
        sample_weight,
        logits,
        output_masks(model, tape),
    )
    value, weight_grads = add_regularization(model, pure)
    value, activity = activity_regularization(model, tape, value)
    gradients = None
    if backward:
        gradients = backprop.backward(model.graph, tape, d_outputs, d_pre, activity)
        add_weight_grads(gradients.weights, weight_grads)
    return EngineGradients(tape, logits, d_pre, value, value - pure, weight_grads, gradients)


@dataclass
class GradReference:
    """One side's forward values and gradients, against which a user's arrays are judged
    (`--against`): Keras' tape, or the engine alone with `--reference numpy`."""

    name: str  # "keras" or "numpy"
    loss: float
    inputs: dict  # {call name: [the call's first-argument inputs]}
    outputs: dict  # {call name: the call's output}
    d_outputs: dict  # {call name: dL/d output}
    weights: dict  # {layer name: {weight name: dL/dw}}
    layer_weights: dict  # {layer name: {weight name: value}}


def grad_model(
    path: str,
    model: EngineModel,
    inputs: list[np.ndarray],
    targets: list[np.ndarray],
    loss_option: str | None = None,
    sample_weight=None,
    mode: str = "train",
    oracle: str | None = None,
    tolerance: GradTolerance | GradPolicy | None = None,
    save: bool = False,
    against: dict | None = None,
    against_layout: str = "channels_last",
    reference: str = "keras",
    float64: bool = False,
) -> GradResult:
    """Compare the engine's gradients with Keras' for one batch; with `against`, the
    user's arrays with Keras' (or, with `reference="numpy"`, the engine's)."""
    policy = (
        tolerance if isinstance(tolerance, GradPolicy) else GradPolicy(tolerance or GradTolerance())
    )
    tolerance = policy.default
    loss, identifier, loss_from = resolve_loss(model, loss_option)
    targets = check_targets(model, loss, targets)
    training = mode == "train"
    graph = model.graph
    keras, flavor, why, version = None, "numpy", "--reference numpy", "engine"
    if reference != "numpy":
        from .oracle import choose_oracle
        from .oracle.gradients import KerasGradientRunner

        flavor, why = choose_oracle(model.spec, oracle)
        if training:
            check_nested_noise(model.graph, flavor)
        runner = KerasGradientRunner(path, model.spec, flavor, identifier)
        version = runner.version
        noise_calls = [c.name for c in model.spec.calls if graph.layers[c.layer].uses_noise]
        keras = runner.gradients(inputs, targets, sample_weight, training, noise_calls)
    elif against is None:
        raise KerascheckError("--reference numpy checks your arrays: it needs --against")

    start = time.perf_counter()
    engine = engine_gradients(
        model, loss, inputs, targets, sample_weight, training, keras.noise if keras else None
    )
    tape, logits, value, carried = engine.tape, engine.logits, engine.value, engine.gradients
    reg_grads = engine.weight_penalty_grads
    engine_seconds = time.perf_counter() - start

    if against is not None:
        from .grad_against import against_rows

        ref = (
            _keras_reference(model, keras, inputs)
            if keras is not None
            else _engine_reference(model, tape, carried, value, inputs)
        )
        rows = against_rows(against, ref, model, against_layout, tolerance)
    else:
        fed = backprop.forward(graph, inputs, training, keras.noise, feed=keras.per_call)
        own_pre = {name: keras.d_logits.get(name) for name in logits if name in keras.d_logits}
        own = backprop.own_backward(graph, fed, keras.d_outputs, own_pre)
        add_weight_grads(own.weights, reg_grads)
        rows = _rows(model, keras, own, carried, policy)
        if float64:
            _add_float64_truth(rows, model, keras, inputs, training, logits, reg_grads, own)
        rows.insert(
            0,
            _loss_row(
                model,
                loss,
                keras,
                targets,
                sample_weight,
                value,
                engine.penalties,
                tolerance,
                logits,
            ),
        )
    result = GradResult(
        model_path=path,
        keras_version=model.spec.keras_version,
        oracle=flavor,
        oracle_reason=why,
        oracle_version=version,
        loss_name=loss.name,
        loss_from=loss_from,
        mode=mode,
        keras_loss=keras.loss if keras else value,
        engine_loss=value,
        rows=rows,
        tolerance=tolerance,
        batch=int(inputs[0].shape[0]),
        engine_seconds=engine_seconds,
        keras_seconds=keras.seconds if keras else 0.0,
        logits_path=bool(logits),
        subject="engine" if against is None else "your arrays",
    )
    if save:
        result.saved = _saved_arrays(model, keras, carried, value)
    return result


def check_nested_noise(graph, flavor: str, inside: str | None = None) -> None:
    """Refuse a random layer inside a nested model whose training-mode draw the oracle
    cannot record (see `oracle.gradients._nested_call`): never a silent random mask."""
    from .engine.layers.model import Functional
    from .oracle.gradients import NESTED_NOISE

    for name, layer in graph.layers.items():
        if isinstance(layer, Functional):
            check_nested_noise(layer.graph, flavor, name)
        elif inside is not None and layer.uses_noise:
            if layer.class_name not in NESTED_NOISE.get(flavor, ()):
                raise KerascheckError(
                    f"layer '{name}' ({layer.class_name}) inside nested model '{inside}' "
                    f"draws a random mask in training mode, which kerascheck cannot replay "
                    f"from {flavor}; use --mode inference"
                )


def _call_inputs(spec, per_call: dict, model_inputs: list) -> dict:
    values = {(i.name, 0): a for i, a in zip(spec.inputs, model_inputs)}
    for call in spec.calls:
        values[(call.layer, call.index)] = per_call[call.name]

    def pick(ref):
        value = values[(ref.layer, ref.call)]
        return value[ref.tensor] if isinstance(value, (list, tuple)) else value

    return {call.name: [pick(ref) for ref in call.inputs] for call in spec.calls}


def _layer_weights(model) -> dict:
    return {name: dict(layer.w) for name, layer in model.graph.layers.items()}


def _keras_reference(model, keras, inputs) -> GradReference:
    weights = {}
    for layer, grads in (keras.weights if keras is not None else {}).items():
        names = list(model.graph.layers[layer].w)
        weights[layer] = {names[i]: g for i, g in grads.items() if g is not None}
    return GradReference(
        name="keras",
        loss=keras.loss,
        inputs=_call_inputs(model.spec, keras.per_call, inputs),
        outputs=keras.per_call,
        d_outputs=keras.d_outputs,
        weights=weights,
        layer_weights=_layer_weights(model),
    )


def _engine_reference(model, tape, carried, value, inputs) -> GradReference:
    return GradReference(
        name="numpy",
        loss=value,
        inputs=_call_inputs(model.spec, tape.per_call, inputs),
        outputs=tape.per_call,
        d_outputs=carried.d_outputs,
        weights=carried.weights,
        layer_weights=_layer_weights(model),
    )


def activity_regularization(model, tape, value):
    """Activity penalties (divided by the batch size, as Keras does) and their gradients
    with respect to each regularized call's output."""
    from .engine.regularizers import activity_penalty_and_grad

    grads = {}
    for call in model.spec.calls:
        layer = model.graph.layers[call.layer]
        output = tape.per_call[call.name]
        batch = int(np.shape(output[0] if isinstance(output, list) else output)[0])
        penalty, grad = activity_penalty_and_grad(
            layer.config, output, batch, model.spec.keras_major
        )
        if grad is not None:
            value += penalty
            grads[call.name] = grad
    return value, grads


def add_regularization(model, value):
    from .engine.regularizers import penalty_and_grads

    grads = {}
    for name, layer in model.graph.layers.items():
        penalty, layer_grads = penalty_and_grads(layer.config, layer.w, model.spec.keras_major)
        value += penalty
        if layer_grads:
            grads[name] = layer_grads
    return value, grads


def add_weight_grads(weights, extra):
    for layer, grads in extra.items():
        into = weights.setdefault(layer, {})
        for name, grad in grads.items():
            into[name] = grad if name not in into else into[name] + grad


def _loss_row(model, loss, keras, targets, sample_weight, value, penalties, tolerance, logits):
    """The loss value and gradient computed from Keras' own predictions (own), and the
    engine's end to end (carried); `penalties` are the regularization terms."""
    row = CallRow("loss", loss.name)
    own_value = penalties
    gradients = []
    masks = keras.output_masks or [None] * len(model.spec.outputs)
    for ref, y_true, y_pred, mask in zip(model.spec.outputs, targets, keras.outputs, masks):
        name = ref.layer if ref.call == 0 else f"{ref.layer}#{ref.call}"
        mask = _loss_mask(mask)
        if name in logits and keras.logits.get(name) is not None:
            part, ours = loss.value_and_grad(
                y_true, y_pred, sample_weight, logits=keras.logits[name], mask=mask
            )
            theirs, label = keras.d_logits.get(name), "d_logits"
        else:
            part, ours = loss.value_and_grad(y_true, y_pred, sample_weight, mask=mask)
            theirs, label = keras.d_outputs.get(name), "d_prediction"
            if isinstance(theirs, (list, tuple)):  # one output of a call with several
                theirs = theirs[ref.tensor]
        own_value += float(part)
        if theirs is not None:
            suffix = "" if len(model.spec.outputs) == 1 else f"[{name}]"
            stats = TensorStats.of(ours, theirs, tolerance)
            gradients.append(
                TensorRow(label + suffix, list(np.shape(theirs)), _norm(theirs), stats)
            )
    keras_loss = np.asarray(keras.loss)
    row.tensors.append(
        TensorRow(
            "loss",
            [],
            abs(keras.loss),
            own=TensorStats.of(np.asarray(own_value), keras_loss, tolerance),
            carried=TensorStats.of(np.asarray(value), keras_loss, tolerance),
        )
    )
    row.tensors.extend(gradients)
    return row


def _rows(model, keras, own, carried, policy: GradPolicy) -> list[CallRow]:
    graph, spec = model.graph, model.spec
    last_call = {c.layer: c.name for c in spec.calls}
    constant = backprop.constant_calls(graph)  # preprocessing: no backward, no d_input row
    rows = []
    for call in reversed(spec.calls):
        layer = graph.layers[call.layer]
        tolerance = policy.for_call(call.name, layer.class_name)
        row = CallRow(call.name, layer.class_name)
        theirs = keras.d_outputs.get(call.name)
        if theirs is not None and not isinstance(theirs, list):
            ours = carried.d_outputs.get(call.name)
            row.tensors.append(
                TensorRow(
                    "d_output",
                    list(theirs.shape),
                    _norm(theirs),
                    carried=_stats(ours, theirs, tolerance),
                )
            )
        for i, theirs in enumerate(keras.d_inputs.get(call.name, [])):
            if theirs is None or call.name in constant:
                continue
            label = "d_input" if i == 0 else f"d_input#{i}"
            row.tensors.append(
                TensorRow(
                    label,
                    list(theirs.shape),
                    _norm(theirs),
                    own=_stats(_at(own.d_inputs.get(call.name), i), theirs, tolerance),
                    carried=_stats(_at(carried.d_inputs.get(call.name), i), theirs, tolerance),
                )
            )
        if last_call[call.layer] == call.name:
            names = list(layer.w)
            for index, theirs in keras.weights.get(call.layer, {}).items():
                if theirs is None:
                    continue
                name = names[index]
                row.tensors.append(
                    TensorRow(
                        name,
                        list(theirs.shape),
                        _norm(theirs),
                        own=_stats(own.weights.get(call.layer, {}).get(name), theirs, tolerance),
                        carried=_stats(
                            carried.weights.get(call.layer, {}).get(name), theirs, tolerance
                        ),
                    )
                )
        if row.tensors:
            _apply_floor(row, tolerance)
            rows.append(row)
    return rows


def _apply_floor(row: CallRow, tolerance: GradTolerance) -> None:
    """Re-judge the call's tensors with the cancellation floor (see CANCELLATION_FLOOR)."""
    floor = CANCELLATION_FLOOR * max((t.keras_norm for t in row.tensors), default=0.0)
    for tensor in row.tensors:
        for stats in (tensor.own, tensor.carried):
            if stats is not None and not stats.ok and math.isfinite(stats.rel_error):
                diff = stats.rel_error * tensor.keras_norm
                size = int(np.prod(tensor.shape)) if tensor.shape else 1
                stats.ok = tolerance.allows(diff, tensor.keras_norm, size, floor)


def _add_float64_truth(rows, model, keras, inputs, training, logits, reg_grads, own):
    """Each call's backward in float64, fed Keras' values: which float32 side is closer."""
    exact_model = EngineModel(model.spec, dtype="float64")

    def wide(value):
        if isinstance(value, list):
            return [wide(v) for v in value]
        return None if value is None else np.asarray(value, np.float64)

    per_call = {name: wide(v) for name, v in keras.per_call.items()}
    fed = backprop.forward(exact_model.graph, wide(inputs), training, keras.noise, feed=per_call)
    d_outputs = {name: wide(v) for name, v in keras.d_outputs.items()}
    pre = {name: wide(keras.d_logits.get(name)) for name in logits if name in keras.d_logits}
    exact = backprop.own_backward(exact_model.graph, fed, d_outputs, pre)
    add_weight_grads(exact.weights, reg_grads)
    for row in rows:
        for tensor in row.tensors:
            truth, mine, theirs = _float64_pair(row.name, tensor.tensor, exact, own, keras, model)
            if truth is None or mine is None or theirs is None:
                continue
            tensor.float64 = {
                "keras": _relative(theirs, truth),
                "engine": _relative(mine, truth),
            }


def _float64_pair(call_name, tensor, exact, own, keras, model):
    call = next(c for c in model.spec.calls if c.name == call_name)
    if tensor.startswith("d_input"):
        index = int(tensor.split("#")[1]) if "#" in tensor else 0
        theirs = keras.d_inputs.get(call_name, [])
        return (
            _at(exact.d_inputs.get(call_name), index),
            _at(own.d_inputs.get(call_name), index),
            theirs[index] if index < len(theirs) else None,
        )
    if tensor == "d_output":
        return None, None, None
    names = list(model.graph.layers[call.layer].w)
    index = names.index(tensor)
    return (
        exact.weights.get(call.layer, {}).get(tensor),
        own.weights.get(call.layer, {}).get(tensor),
        keras.weights.get(call.layer, {}).get(index),
    )


def _relative(value, truth) -> float:
    scale = _norm(truth)
    diff = float(np.linalg.norm(np.asarray(value, np.float64) - truth))
    return diff / scale if scale > 0 else diff


def _stats(ours, theirs, tolerance):
    if ours is None:  # the engine produced no gradient where Keras has one
        ours = np.zeros_like(theirs)
    return TensorStats.of(ours, theirs, tolerance)


def _at(values, index):
    if values is None or index >= len(values):
        return None
    return values[index]


def _norm(value) -> float:
    return float(np.linalg.norm(np.asarray(value, np.float64)))


def _saved_arrays(model, keras, carried, value) -> dict:
    arrays = {"numpy/loss": np.asarray(value)}
    sides = [("numpy", carried.d_outputs)]
    if keras is not None:
        arrays["keras/loss"] = np.asarray(keras.loss)
        sides.append(("keras", keras.d_outputs))
    for call in model.spec.calls:
        for side, source in sides:
            grad = source.get(call.name)
            if grad is not None and not isinstance(grad, list):
                arrays[f"{side}/d/{call.name}"] = grad
    for layer, grads in (keras.weights if keras is not None else {}).items():
        names = list(model.graph.layers[layer].w)
        for index, grad in grads.items():
            if grad is not None:
                arrays[f"keras/grad/{layer}/{names[index]}"] = grad
    for layer, grads in carried.weights.items():
        for name, grad in grads.items():
            arrays[f"numpy/grad/{layer}/{name}"] = grad
    return arrays


def merge_results(results: list[GradResult]) -> GradResult:
    """Batches checked one by one (`--batch-size`): each tensor keeps its worst statistics
    over the batches, the losses are averaged by batch size."""
    merged = results[0]
    sizes = [r.batch for r in results]
    total = sum(sizes)
    for other in results[1:]:
        for row, other_row in zip(merged.rows, other.rows):
            for tensor, theirs in zip(row.tensors, other_row.tensors):
                if tensor.own is not None and theirs.own is not None:
                    tensor.own = tensor.own.worse(theirs.own)
                if tensor.carried is not None and theirs.carried is not None:
                    tensor.carried = tensor.carried.worse(theirs.carried)
                tensor.hint = tensor.hint or theirs.hint
        merged.engine_seconds += other.engine_seconds
        merged.keras_seconds += other.keras_seconds
    merged.keras_loss = sum(r.keras_loss * n for r, n in zip(results, sizes)) / total
    merged.engine_loss = sum(r.engine_loss * n for r, n in zip(results, sizes)) / total
    merged.batch = total
    return merged
