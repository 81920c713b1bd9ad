"""`kerascheck diff A B`: two model files of one architecture, compared layer by layer.

For the engineer who re-saves a model, migrates it (Keras 2 `.h5` to Keras 3
`.keras`) or updates its weights. Both files run in the NumPy engine (no
TensorFlow) on the same inputs, and their layer calls are matched by name:

- **carried**: A's call output against B's, each model run end to end;
- **own**: A's layer fed B's values of its inputs, against B's output, so the
  first layer that computes something different is singled out (as `diff
  --layer-wise` does with Keras; the first divergence is the first own mismatch);
- the model outputs, matched by position, judged end to end;
- every weight present in both files (max abs/rel difference), the layers only in
  A or only in B, and the layers of one name whose class or config differs.

B plays the reference: relative errors are relative to B's values.
"""

from __future__ import annotations

import json
import os
import time
import zipfile
from dataclasses import dataclass, field

import numpy as np

from .compare import CallStats, Comparison, LayerDiff, TolerancePolicy
from .diff import DiffResult, own_error
from .engine.model import EngineModel
from .errors import KerascheckError
from .inputs import check_inputs, describe_inputs
from .loading import HDF5_MAGIC, ZIP_MAGIC, read_model

# Config keys that do not change what a layer computes at inference.
IGNORED_CONFIG = ("name", "trainable", "build_config", "compile_config")
IGNORED_SUFFIXES = ("_initializer", "_regularizer", "_constraint")


def is_model_file(path) -> bool:
    """A Keras model file by content: an HDF5 file, or a zip holding `config.json`
    (an `.npz` is a zip too, of `.npy` members)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        return False
    with open(path, "rb") as handle:
        head = handle.read(8)
    if head == HDF5_MAGIC:
        return True
    if not head.startswith(ZIP_MAGIC):
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            return "config.json" in archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return False


@dataclass
class ModelsDiff:
    result: DiffResult  # the layer table: subject A, reference B
    path_b: str
    keras_version_b: str
    weights: list[dict] = field(default_factory=list)
    only_in_a: list[str] = field(default_factory=list)
    only_in_b: list[str] = field(default_factory=list)
    changed: list[dict] = field(default_factory=list)

    @property
    def status(self) -> str:
        return self.result.status


def load_pair(path_a: str, path_b: str) -> tuple[EngineModel, EngineModel]:
    """Both models, or one line saying how B's inputs differ from A's."""
    a, b = EngineModel(read_model(path_a)), EngineModel(read_model(path_b))
    same = len(a.spec.inputs) == len(b.spec.inputs) and all(
        tuple(x.shape) == tuple(y.shape) and x.dtype == y.dtype
        for x, y in zip(a.spec.inputs, b.spec.inputs)
    )
    if not same:
        raise KerascheckError(
            f"{path_b}: expected the inputs of {path_a} ({describe_inputs(a.spec)}), "
            f"found {describe_inputs(b.spec)}"
        )
    return a, b


def diff_models(
    path_a: str,
    a: EngineModel,
    path_b: str,
    b: EngineModel,
    inputs: list[np.ndarray],
    policy: TolerancePolicy,
    batch_size: int | None = None,
) -> ModelsDiff:
    """Run both models on `inputs` (in A's input order) and compare them."""
    inputs = check_inputs(b.spec, inputs)  # B reads them too (same shapes: load_pair)
    calls_a = [call.name for call in a.spec.calls]
    calls_b = {call.name for call in b.spec.calls}
    shared = [name for name in calls_a if name in calls_b]
    carried = {name: CallStats() for name in shared}
    own = {name: CallStats() for name in shared}
    ends = [CallStats() for _ in a.spec.outputs]
    total = int(inputs[0].shape[0])
    step = batch_size or total or 1
    start = time.perf_counter()
    for offset in range(0, max(total, 1), step):
        batch = [x[offset : offset + step] for x in inputs]
        outputs_a, values_a = a.graph.run(batch, keep=True)
        masks_a = a.graph.masks
        outputs_b, values_b = b.graph.run(batch, keep=True)
        for name in shared:
            carried[name].update(values_a[name], values_b[name], offset)
        for stats, out_a, out_b in zip(ends, outputs_a, outputs_b):
            stats.update(out_a, out_b, offset)
        fed = {(i.name, 0): x for i, x in zip(a.spec.inputs, batch)}
        for call in a.spec.calls:  # B's values where B has the call, A's own elsewhere
            fed[(call.layer, call.index)] = values_b.get(call.name, values_a[call.name])
        for call in a.spec.calls:
            if call.name in own:
                _own_update(a, call, fed, masks_a, own[call.name], values_b[call.name], offset)
    seconds = time.perf_counter() - start
    comparison = Comparison(tolerance=policy.default)
    for call in a.spec.calls:
        class_name = a.spec.layers[call.layer].class_name
        if call.name in own:
            row = _judged(call.name, class_name, carried[call.name], own[call.name], policy)
        else:
            row = _skipped(a, call.name, class_name, "only in A", total)
        comparison.layers.append(row)
    for call in b.spec.calls:
        if call.name not in own:
            class_name = b.spec.layers[call.layer].class_name
            comparison.layers.append(_skipped(b, call.name, class_name, "only in B", total))
    comparison.end_to_end = _end_to_end(a, b, ends, policy)
    comparison.mark_inherited()
    result = DiffResult(
        model_path=path_a,
        keras_version=a.spec.keras_version,
        oracle="B",
        oracle_reason=f"B is {path_b}, run in the NumPy engine like A",
        oracle_version=f"({path_b})",
        comparison=comparison,
        layer_wise=True,
        engine_seconds=seconds,
        keras_seconds=0.0,
        graph_check=0.0,
        batch=total,
        batches=len(range(0, max(total, 1), step)),
        subject="A",
        timings={"engine, A and B": seconds},
    )
    only_a = _layer_names(a.spec) - _layer_names(b.spec)
    only_b = _layer_names(b.spec) - _layer_names(a.spec)
    return ModelsDiff(
        result=result,
        path_b=path_b,
        keras_version_b=b.spec.keras_version,
        weights=compare_weights(a, b, policy),
        only_in_a=[n for n in a.spec.layers if n in only_a],
        only_in_b=[n for n in b.spec.layers if n in only_b],
        changed=changed_layers(a.spec, b.spec),
    )


def _own_update(a, call, fed, masks, stats: CallStats, theirs, offset: int) -> None:
    """A's layer on B's inputs; when it cannot take them (B's shapes differ), that is
    the row's own error."""
    try:
        mine = a.graph.run_call(call, fed, masks)[0]
    except KerascheckError as exc:
        stats.count_error = f"A's layer cannot take B's inputs ({exc})"
        return
    stats.update(mine, theirs, offset)


def _judged(name, class_name, carried: CallStats, own: CallStats, policy) -> LayerDiff:
    """A call diverges when its own error (A's layer on B's inputs) is out of tolerance;
    a carried error with the own error within it is drift, as in `diff --layer-wise`."""
    tolerance = policy.for_layer(name, class_name)
    row = carried.finish(name, class_name, tolerance)
    mine = own.finish(name, class_name, tolerance)
    row.own = own_error(mine)
    for diff in (row, mine):
        if diff.reason and diff.reason.startswith("engine output shape"):
            diff.reason = diff.reason.replace("engine output shape", "output shape in A")
            diff.reason = diff.reason.replace("!= Keras", "!= in B")
    if mine.status == "mismatch":
        row.status = "mismatch"
        row.reason = row.reason or mine.reason
    elif row.status == "mismatch":
        row.status = "drift"
    return row


def _skipped(model, name: str, class_name: str, reason: str, batch: int) -> LayerDiff:
    """A call of one file only: not compared, shown with its output shape."""
    shapes = model.output_shapes.get(name, ())
    several = bool(shapes) and isinstance(shapes[0], tuple)
    shape = [[batch, *s[1:]] for s in shapes] if several else [batch, *shapes[1:]]
    return LayerDiff(name, class_name, shape, "skipped", reason=reason)


def _end_to_end(a, b, ends: list[CallStats], policy) -> list[LayerDiff]:
    """The model outputs by position; a count that differs is a mismatch of its own."""
    rows = []
    for ref_a, ref_b, stats in zip(a.spec.outputs, b.spec.outputs, ends):
        name = ref_a.layer if ref_a.layer == ref_b.layer else f"{ref_a.layer} / {ref_b.layer}"
        class_name = a.spec.layers[ref_a.layer].class_name
        rows.append(stats.finish(name, class_name, policy.for_layer(ref_a.layer, class_name)))
    if len(a.spec.outputs) != len(b.spec.outputs):
        found = f"A has {len(a.spec.outputs)} outputs, B {len(b.spec.outputs)}"
        rows.append(LayerDiff("outputs", "Model", [], "mismatch", reason=found))
    return rows


def _layer_names(spec) -> set[str]:
    return {name for name, layer in spec.layers.items() if layer.class_name != "InputLayer"}


def compare_weights(a: EngineModel, b: EngineModel, policy: TolerancePolicy) -> list[dict]:
    """Every weight of a layer present in both files, by the engine's weight names.

    `status`: "identical" (bit for bit), "close" (within the layer's tolerance,
    relative to B's largest |weight|), "differs", or "shape" when the shapes differ."""
    rows = []
    for name, layer_a in a.graph.layers.items():
        layer_b = b.graph.layers.get(name)
        if layer_b is None:
            continue
        weights_a, weights_b = _named_weights(a, name), _named_weights(b, name)
        for weight, value_a in weights_a.items():
            if weight not in weights_b:
                continue
            value_b = weights_b[weight]
            row = {
                "layer": name,
                "weight": weight,
                "shape_a": list(value_a.shape),
                "shape_b": list(value_b.shape),
            }
            if value_a.shape != value_b.shape:
                rows.append({**row, "status": "shape"})
                continue
            diff = np.abs(value_a.astype(np.float64) - value_b.astype(np.float64))
            max_abs = float(diff.max()) if diff.size else 0.0
            scale = float(np.max(np.abs(value_b))) if value_b.size else 0.0
            tolerance = policy.for_layer(name, layer_a.class_name)
            if max_abs == 0:
                status = "identical"
            else:
                status = "close" if tolerance.allows(max_abs, scale) else "differs"
            max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
            rows.append({**row, "status": status, "max_abs_diff": max_abs, "max_rel_diff": max_rel})
    return rows


def _named_weights(model: EngineModel, name: str) -> dict[str, np.ndarray]:
    """The file's weights of a layer (not cast), under the engine's names for them."""
    layer = model.graph.layers[name]
    raw = model.spec.layers[name].weights
    names = list(getattr(layer, "w", {}) or {})
    if len(names) != len(raw):
        names = [f"weight_{i}" for i in range(len(raw))]
    return {n: np.asarray(w) for n, w in zip(names, raw)}


def changed_layers(spec_a, spec_b) -> list[dict]:
    """Layers of one name whose class, or config keys that matter at inference, differ."""
    found = []
    for name in spec_a.layers:
        layer_a, layer_b = spec_a.layers[name], spec_b.layers.get(name)
        if layer_b is None or layer_a.class_name == "InputLayer":
            continue
        if layer_a.class_name != layer_b.class_name:
            found.append({"name": name, "class_name": [layer_a.class_name, layer_b.class_name]})
            continue
        keys = sorted(set(layer_a.config) | set(layer_b.config))
        config = {
            key: [layer_a.config.get(key), layer_b.config.get(key)]
            for key in keys
            if not _ignored(key)
            and _canonical(layer_a.config.get(key)) != _canonical(layer_b.config.get(key))
        }
        if config:
            found.append({"name": name, "class_name": layer_a.class_name, "config": config})
    return found


def _ignored(key: str) -> bool:
    return key in IGNORED_CONFIG or key.endswith(IGNORED_SUFFIXES)


def _canonical(value) -> str:
    """Tuples and lists alike, dict keys in order: Keras 2 and 3 write the same value so."""
    return json.dumps(value, sort_keys=True, default=str)


def models_report(diff: ModelsDiff) -> dict:
    """The `diff --json` report (schema 1) with the model-to-model fields added."""
    from .report.json_report import diff_report

    report = diff_report(diff.result)
    report["models"] = {
        "a": {"path": diff.result.model_path, "keras_version": diff.result.keras_version},
        "b": {"path": diff.path_b, "keras_version": diff.keras_version_b},
    }
    report["weights"] = diff.weights
    report["only_in_a"] = diff.only_in_a
    report["only_in_b"] = diff.only_in_b
    report["changed_layers"] = diff.changed
    return report


def models_view(diff: ModelsDiff, width=None, height=None, only_failures=None):
    """The layer table (`diff_table`), then the weights that differ and the structure."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    from .report.names import cell, display
    from .report.tables import diff_table

    parts = [
        Text(
            f"A: {display(diff.result.model_path, None)} (Keras "
            f"{display(diff.result.keras_version)})   B: {display(diff.path_b, None)} "
            f"(Keras {display(diff.keras_version_b)})",
            style="bold",
        ),
        diff_table(diff.result, width=width, height=height, only_failures=only_failures),
    ]
    changed = [w for w in diff.weights if w["status"] != "identical"]
    if changed:
        table = Table(title="weights that differ (relative to B)", title_justify="left")
        for column in ("layer", "weight", "shape", "max abs", "max rel", "status"):
            table.add_column(column, justify="right" if column.startswith("max") else "left")
        for w in changed:
            shape = (
                str(tuple(w["shape_a"]))
                if w["shape_a"] == w["shape_b"]
                else f"A {tuple(w['shape_a'])}, B {tuple(w['shape_b'])}"
            )
            table.add_row(
                cell(w["layer"]),
                cell(w["weight"]),
                shape,
                _num(w.get("max_abs_diff")),
                _num(w.get("max_rel_diff")),
                w["status"],
            )
        parts.append(table)
    same = len(diff.weights) - len(changed)
    parts.append(Text(f"weights: {same} of {len(diff.weights)} shared weights identical"))
    for label, names in (("only in A", diff.only_in_a), ("only in B", diff.only_in_b)):
        if names:
            parts.append(Text(f"layers {label}: {', '.join(display(n) for n in names)}"))
    for layer in diff.changed:
        if "config" in layer:
            what = "; ".join(
                f"{display(key)} {display(va, 60)} in A, {display(vb, 60)} in B"
                for key, (va, vb) in layer["config"].items()
            )
        else:
            what = f"class {layer['class_name'][0]} in A, {layer['class_name'][1]} in B"
        parts.append(Text(f"layer '{display(layer['name'])}' differs: {what}"))
    return Group(*parts)


def _num(value) -> str:
    if value is None:
        return "-"
    return f"{value:.2e}" if value else "0"
