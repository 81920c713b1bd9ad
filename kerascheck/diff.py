"""Run the engine and Keras on the same inputs and compare them (the `diff` command's core).

For every layer call two errors are measured:

- **carried**: the engine run end to end on its own values, compared with
  Keras' output for that call (what a user of the whole model sees);
- **own**: the engine's layer fed Keras' own inputs for that call (the layer's
  own error, nothing carried in from earlier layers).

A wrong layer makes every later layer's carried error large; its own error
points at it alone, so `first_divergence` is the first call whose own error is
out of tolerance. Every verdict also holds the model outputs' end-to-end error,
judged at the tolerance an outputs-only diff uses (`Comparison.end_to_end`), so a
layer-by-layer run never passes what an outputs-only run fails.

With `float64=True` the engine also runs each layer in float64 on Keras' inputs as
ground truth, and both float32 sides (Keras' output and the engine's own output)
are measured against it; for outputs only, the whole float64 run is the ground truth.

Inputs are processed in batches; statistics accumulate, so the numbers equal a
one-batch run. Layer by layer, Keras replays a batch call by call and the engine
computes each call (from its own values, and from Keras') as soon as Keras has:
every output is compared and dropped at once, and each side holds only the values
later calls still read (`_LayerWalk`). A batch is also capped so that both sides'
per-call outputs would fit a share of the memory limit (`fitting_batch`, measured
on one sample), a bound the walk stays under: peak memory is bounded by the limit
and flat in the number of samples.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .compare import CallStats, Comparison, LayerDiff, Tolerance, TolerancePolicy
from .engine import threads
from .engine.layers.recurrent import check_stateful_run, stateful_batch
from .engine.model import EngineModel
from .errors import KerascheckError
from .loading.spec import ModelSpec
from .oracle import GRAPH_CHECK_LIMIT, KerasRunner, choose_oracle  # noqa: F401  (re-exported)
from .progress import Phases


@dataclass
class DiffResult:
    model_path: str
    keras_version: str
    oracle: str
    oracle_reason: str
    oracle_version: str
    comparison: Comparison
    layer_wise: bool
    engine_seconds: float
    keras_seconds: float
    graph_check: float
    batch: int
    batches: int = 1
    float64: bool = False
    outputs: dict | None = None  # with collect=True: "keras/<call>", "numpy/<call>" arrays
    subject: str = "engine"  # what was compared with Keras
    stateful: list[str] = field(default_factory=list)  # stateful RNNs, reset before the run
    input_path: str | None = None  # the INPUT file, if any (for the commands the verdict suggests)
    # wall seconds per phase of the run (progress.Phases), and the run's wall time
    timings: dict = field(default_factory=dict)
    wall_seconds: float | None = None
    reference_label: str | None = None  # what the subject is compared with (default: oracle)

    @property
    def subject_label(self) -> str:
        """The compared side in one word: the engine, the user's arrays, or model A."""
        return "yours" if self.subject.startswith("your arrays") else self.subject

    @property
    def reference(self) -> str:
        return self.reference_label or self.oracle

    @property
    def status(self) -> str:
        return self.comparison.status


def diff_model(
    path: str,
    model: EngineModel,
    inputs: list[np.ndarray],
    layer_wise: bool = True,
    tolerance: Tolerance | TolerancePolicy | None = None,
    oracle: str | None = None,
    batch_size: int | None = None,
    float64: bool = False,
    progress: Callable[[int, int], None] | None = None,
    collect: bool = False,
    phases: Phases | None = None,
) -> DiffResult:
    policy = (
        tolerance
        if isinstance(tolerance, TolerancePolicy)
        else TolerancePolicy(tolerance or Tolerance())
    )
    phases = phases or Phases(show=False)
    spec = model.spec
    total = int(inputs[0].shape[0])
    step = batch_size or total or 1
    if layer_wise and stateful_batch(spec) is None:  # a stateful run is one batch
        with phases.timed("sizing batches"):
            step = min(step, fitting_batch(model, inputs, float64, collect))
    stateful = check_stateful_run(spec, total, step)
    flavor, why = choose_oracle(spec, oracle)
    with phases.showing(f"starting TensorFlow and loading the model in {flavor}"):
        runner = KerasRunner(path, spec, flavor)
    phases.add("TensorFlow start-up", runner.import_seconds)
    phases.add("Keras load", runner.load_seconds)
    reference = EngineModel(spec, dtype="float64") if float64 else None
    rows = _rows(spec, layer_wise)
    outputs = _output_rows(spec)
    carried = {name: CallStats() for name, _ in rows}
    ends = {name: CallStats() for name, _ in outputs} if layer_wise else None
    own = {name: CallStats() for name, _ in rows} if layer_wise else None
    truth = {name: (CallStats(), CallStats()) for name, _ in rows} if float64 else None
    starts = list(range(0, max(total, 1), step))
    graph_check = 0.0
    collected: dict[str, list] = {}
    for number, offset in enumerate(starts):
        batch = [np.asarray(a[offset : offset + step]) for a in inputs]
        if layer_wise:
            walk = _LayerWalk(
                model, reference, batch, offset, carried, own, truth, collected if collect else None
            )
            start = time.perf_counter()
            keras_outputs, _, check = runner.run_batch(batch, keep=False, each=walk.step)
            phases.add("engine", walk.engine)
            phases.add("Keras", time.perf_counter() - start - walk.engine - walk.own)
            start = time.perf_counter()
            ours_outputs = walk.finish()
        else:
            start = time.perf_counter()
            ours, ours_outputs, _ = _engine_batch(model, batch, layer_wise)
            phases.add("engine", time.perf_counter() - start)
            start = time.perf_counter()
            keras_outputs, _, check = runner.run_batch(batch, keep=False)
            phases.add("Keras", time.perf_counter() - start)
            start = time.perf_counter()
            theirs = dict(zip(spec.output_names, keras_outputs))
            for name, _ in rows:
                carried[name].update(ours[name], theirs[name], offset)
                if collect:
                    collected.setdefault(f"numpy/{name}", []).append(ours[name])
                    collected.setdefault(f"keras/{name}", []).append(theirs[name])
            if truth is not None:
                exact = _engine_batch(reference, batch, layer_wise)[0]
                for name, _ in rows:
                    truth[name][0].update(theirs[name], exact[name], offset)
                    truth[name][1].update(ours[name], exact[name], offset)
            del ours, theirs
        graph_check = max(graph_check, check)
        if ends is not None:
            for (name, _), value in zip(outputs, keras_outputs):
                ends[name].update(ours_outputs[name], value, offset)
        del ours_outputs, keras_outputs
        seconds = time.perf_counter() - start
        if layer_wise:
            phases.add("own errors", walk.own + seconds)
            del walk
        else:
            phases.add("compare", seconds)
        if progress is not None:
            progress(number + 1, len(starts))
    comparison = Comparison(tolerance=policy.default)
    for name, class_name in rows:
        row, tol = _finish(carried[name], policy, spec, name, class_name, not layer_wise)
        if own is not None:
            mine = own[name].finish(name, class_name, tol)
            row.own = own_error(mine, _compute_dtype_of(spec, name) or "float32")
            _judge_by_own_error(row, mine)
        if truth is not None:
            keras_err, engine_err = (s.finish(name, class_name, tol) for s in truth[name])
            row.float64 = {
                "keras_max_rel_diff": keras_err.max_rel_diff,
                "engine_max_rel_diff": engine_err.max_rel_diff,
            }
        comparison.layers.append(row)
    comparison.end_to_end = (
        [_finish(ends[n], policy, spec, n, c, whole_model=True)[0] for n, c in outputs]
        if ends is not None
        else list(comparison.layers)
    )
    comparison.mark_inherited()
    return DiffResult(
        model_path=path,
        keras_version=spec.keras_version,
        oracle=flavor,
        oracle_reason=why,
        oracle_version=runner.version,
        comparison=comparison,
        layer_wise=layer_wise,
        engine_seconds=phases.seconds.get("engine", 0.0),
        keras_seconds=runner.seconds,
        graph_check=graph_check,
        batch=total,
        batches=len(starts),
        float64=float64,
        outputs=_flatten_outputs(collected) if collect else None,
        stateful=stateful,
        timings=phases.seconds,
    )


# A layer whose dtype policy computes in float16 or bfloat16 (mixed precision) rounds
# its inputs, weights and output to that precision in Keras; the engine computes in
# float32, so the layer is judged at its compute precision: 2^-11 and 2^-8 per
# rounding, with room for about twenty of them. A model output (its end-to-end error)
# is judged at the lowest precision any layer of the model computes in.
LOW_PRECISION_RTOL = {"float16": 1e-2, "bfloat16": 8e-2}
# The own error (relative to the layer's largest output) that rounding alone explains,
# by compute precision. float32 arithmetic in another order differs by 1e-7 to 1e-6, so
# 1e-5 leaves a 10x margin; at float16/bfloat16 it is that precision's tolerance above.
# Drift (carried error out of tolerance, own errors within) is called float32 rounding
# only when every own error is at this level; otherwise it is only "within the
# tolerances in force".
ROUNDING_REL = {"float32": 1e-5, **LOW_PRECISION_RTOL}


def compute_dtype(config: dict) -> str | None:
    """'float16' or 'bfloat16' when the layer's dtype policy computes in it, else None."""
    policy = config.get("dtype")
    if isinstance(policy, dict):
        policy = (policy.get("config") or {}).get("name")
    if not isinstance(policy, str):
        return None
    for low in ("bfloat16", "float16"):
        if policy in (low, f"mixed_{low}"):
            return low
    return None


def _compute_dtype_of(spec: ModelSpec, name: str) -> str | None:
    layer = spec.layers.get(name.split("#")[0].split("[")[0])
    return compute_dtype(layer.config) if layer is not None else None


def _model_low_precision(spec: ModelSpec) -> str | None:
    """The lowest precision any layer of the model computes in, if below float32."""
    lows = {compute_dtype(layer.config) for layer in spec.layers.values()}
    return next((low for low in ("bfloat16", "float16") if low in lows), None)


def _finish(stats: CallStats, policy, spec, name: str, class_name: str, whole_model: bool):
    """(row, its tolerance): the user's for that layer, else the default raised to the
    precision the layer computes in (`whole_model`: for a model output, the lowest
    precision upstream, since its carried error holds every rounding)."""
    tol = policy.for_layer(name, class_name)
    low = None
    if tol == policy.default:
        low = _model_low_precision(spec) if whole_model else _compute_dtype_of(spec, name)
    if low is not None:
        tol = Tolerance(atol=tol.atol, rtol=max(tol.rtol, LOW_PRECISION_RTOL[low]))
    row = stats.finish(name, class_name, tol)
    if tol != policy.default:
        row.tolerance = {"atol": tol.atol, "rtol": tol.rtol}
        if low is not None and tol.rtol == LOW_PRECISION_RTOL[low]:
            where = "computes" if _compute_dtype_of(spec, name) == low else "the model computes"
            row.tolerance["why"] = f"{where} in {low}: mixed precision"
    return row, tol


def _flatten_outputs(collected: dict[str, list]) -> dict[str, np.ndarray]:
    """Concatenate batches; a call with several outputs gives `<key>:0`, `<key>:1`, ..."""
    arrays = {}
    for key, parts in collected.items():
        if isinstance(parts[0], (list, tuple)):
            for index, pieces in enumerate(zip(*parts)):
                arrays[f"{key}:{index}"] = np.concatenate(pieces)
        else:
            arrays[key] = np.concatenate(parts)
    return arrays


def own_error(mine: LayerDiff, compute_dtype: str = "float32") -> dict:
    """A row's `own` entry: the call's error fed the reference's inputs, and the level
    rounding at its compute precision explains."""
    return {
        "status": mine.status,
        "max_abs_diff": mine.max_abs_diff,
        "max_rel_diff": mine.max_rel_diff,
        "worst_index": mine.worst_index,
        "reason": mine.reason,
        "rounding_level": ROUNDING_REL[compute_dtype],
    }


def _judge_by_own_error(row, mine) -> None:
    """Layer by layer, a layer diverges when its *own* error is out of tolerance.

    A carried error out of tolerance with an own error within it is "drift": the
    network amplifies small differences (float32 rounding when the own errors are at
    `ROUNDING_REL`; deep, randomly initialised networks do so strongly), every layer
    still computes what Keras computes. A drifting row does not fail by itself; the
    model outputs' end-to-end error (`Comparison.end_to_end`) is judged as `diff`
    without --layer-wise judges it, and fails the run when out of tolerance.
    """
    if mine.status == "mismatch":
        row.status = "mismatch"
        row.reason = row.reason or mine.reason
    elif row.status == "mismatch":
        row.status = "drift"


def _rows(spec: ModelSpec, layer_wise: bool) -> list[tuple[str, str]]:
    if layer_wise:
        return [(call.name, spec.layers[call.layer].class_name) for call in spec.calls]
    return _output_rows(spec)


def _output_rows(spec: ModelSpec) -> list[tuple[str, str]]:
    """(output name, class name of the layer that computes it), in output order."""
    return [
        (name, getattr(spec.layers.get(ref.layer), "class_name", "InputLayer"))
        for name, ref in zip(spec.output_names, spec.outputs)
    ]


def _engine_batch(model: EngineModel, batch: list[np.ndarray], layer_wise: bool):
    """({row name: output}, {model output name: output}, masks) of one engine batch."""
    outputs, per_call = model.graph.run(_engine_arrays(model, batch), keep=layer_wise)
    named = dict(zip(model.spec.output_names, outputs))
    if layer_wise:
        return per_call, named, model.graph.masks
    return named, named, {}


def _engine_arrays(model: EngineModel, batch: list[np.ndarray]) -> list[np.ndarray]:
    return [np.asarray(a, dtype=model.context.dtype) if a.dtype.kind == "f" else a for a in batch]


class _LayerWalk:
    """One batch compared layer by layer while Keras replays it, call by call.

    For each call Keras computes (`step`), the engine computes the same call twice:
    from its own values (carried error) and from the values Keras gave the call's
    inputs (own error; with float64, the float64 engine does too). Each output is
    compared and dropped at once, and each side drops a value as soon as no later
    call reads it, so a batch holds only the values still to be read, never every
    call's output (for ResNet50 at 224x224 that is several hundred MB a sample less,
    and memory the next calls reuse instead of new memory to be handed over).
    """

    def __init__(self, model, reference, batch, offset, carried, own, truth, collected):
        self.model, self.reference, self.offset = model, reference, offset
        self.carried, self.own_stats, self.truth = carried, own, truth
        self.collected = collected  # None unless every output is collected
        self.walk = model.graph.steps(_engine_arrays(model, batch))
        self.engine = self.own = 0.0  # seconds in each

    def step(self, call, theirs, inputs: dict) -> None:
        start = time.perf_counter()
        _, ours = next(self.walk)  # the same call: both walk the spec's calls in order
        self.carried[call.name].update(ours, theirs, self.offset)
        if self.collected is not None:
            self.collected.setdefault(f"numpy/{call.name}", []).append(ours)
            self.collected.setdefault(f"keras/{call.name}", []).append(theirs)
        del ours
        middle = time.perf_counter()
        masks = self.model.graph.masks
        mine = self.model.graph.run_call(call, inputs, masks)[0]
        self.own_stats[call.name].update(mine, theirs, self.offset)
        if self.truth is not None:  # each layer in float64 on Keras' inputs: exact for it
            exact = self.reference.graph.run_call(call, _float64(inputs), masks)[0]
            self.truth[call.name][0].update(theirs, exact, self.offset)
            self.truth[call.name][1].update(mine, exact, self.offset)
        self.engine += middle - start
        self.own += time.perf_counter() - middle

    def finish(self) -> dict:
        """{model output name: the engine's output}, once Keras has replayed every call."""
        for _ in self.walk:  # nothing is left: Keras replayed every call
            raise KerascheckError("the Keras replay stopped before the engine's last call")
        return dict(zip(self.model.spec.output_names, self.model.graph.outputs))


# What one sample may cost in a layer-by-layer batch, bounded from above: every
# call's output held by the engine and by Keras and Keras' tensors before they
# become NumPy arrays (the walk holds only the values later calls read, far less);
# plus the largest working memory of one call (im2col windows and the like), once
# for each side.
COPIES_HELD = 3
WORKING_COPIES = 2
# The share of --max-memory all that may take; the rest is the two models' weights,
# TensorFlow itself and the inputs.
ACTIVATION_SHARE = 0.25


def fitting_batch(model: EngineModel, inputs, float64: bool = False, collect: bool = False) -> int:
    """The most samples per layer-wise batch whose per-call outputs fit the budget.

    Measured, not estimated: one sample is run through the engine under tracemalloc
    (NumPy reports its buffers to it), counting every call's output and the peak of
    the working memory on top. Raises when even one sample does not fit."""
    import tracemalloc

    from .limits import gib, max_memory

    if collect:
        return max(1, int(inputs[0].shape[0]))  # --save-outputs keeps every batch anyway
    one = [np.asarray(a[:1]) for a in inputs]
    arrays = [np.asarray(a, dtype=model.context.dtype) if a.dtype.kind == "f" else a for a in one]
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        with threads.serial():  # a peak that does not depend on the threads' timing
            per_call = model.graph.run(arrays, keep=True)[1]
        held = sum(_nbytes(value) for value in per_call.values())
        working = max(0, tracemalloc.get_traced_memory()[1] - base - held)
    finally:
        if started:
            tracemalloc.stop()
    per_sample = held * COPIES_HELD + working * WORKING_COPIES
    if float64:
        per_sample *= 2  # the float64 reference's outputs beside them
    budget = int(max_memory() * ACTIVATION_SHARE)
    if per_sample > budget:
        raise KerascheckError(
            f"a layer-by-layer diff needs {gib(per_sample)} per sample (every layer's "
            f"output from both sides), over {ACTIVATION_SHARE:.0%} of the memory limit "
            f"of {gib(max_memory())}; expected a model that fits (raise --max-memory, "
            "or compare outputs only without --layer-wise)"
        )
    return max(1, budget // max(per_sample, 1))


def _nbytes(value) -> int:
    if isinstance(value, (list, tuple)):
        return sum(_nbytes(v) for v in value)
    return int(getattr(value, "nbytes", 0))


def _float64(values):
    """Float arrays (in a dict or list, nested) as float64; other dtypes unchanged."""
    if isinstance(values, dict):
        return {name: _float64(value) for name, value in values.items()}
    if isinstance(values, (list, tuple)):
        return [_float64(v) for v in values]
    return values.astype(np.float64) if values.dtype.kind == "f" else values
