"""Rich renderables for the terminal: diff table, model summary, predictions."""

from __future__ import annotations

import numpy as np
from rich.console import Group
from rich.table import Table
from rich.text import Text

from ..diff import DiffResult
from ..engine.layers.recurrent import stateful_layers
from .names import PATH_LIMIT, cell, display, message, path_cell


def _num(value) -> str:
    if value is None:
        return "-"
    return f"{value:.2e}" if value else "0"


def _shape(shape) -> str:
    if shape and isinstance(shape[0], (list, tuple)):
        return ", ".join(_shape(s) for s in shape)
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + ")"


STATUS_STYLE = {"match": "green", "mismatch": "red", "drift": "yellow", "skipped": "yellow"}


def _own_style(own: dict) -> str:
    return "red" if own.get("status") == "mismatch" else ""


def diff_table(result: DiffResult) -> Group:
    comparison = result.comparison
    title = (
        f"{display(result.model_path, None)}: {display(result.subject, None)} vs "
        f"{result.oracle} {result.oracle_version} "
        f"(saved by Keras {display(result.keras_version)}), batch {result.batch}"
    )
    table = Table(title=path_cell(title), title_justify="left")
    table.add_column("#", justify="right", style="dim")
    table.add_column("layer", no_wrap=True)
    table.add_column("class", no_wrap=True)
    table.add_column("output shape", no_wrap=True)
    has_own = any(r.own is not None for r in comparison.layers)
    if has_own:
        table.add_column("own rel", justify="right")
    table.add_column("carried abs", justify="right")
    table.add_column("carried rel", justify="right")
    if result.float64:
        table.add_column("keras/f64", justify="right", no_wrap=True)
        table.add_column("engine/f64", justify="right", no_wrap=True)
    table.add_column("status")
    has_notes = any(r.reason for r in comparison.layers)
    if has_notes:
        table.add_column("note", overflow="fold")
    first = comparison.first_divergence
    for index, row in enumerate(comparison.layers):
        style = "bold red reverse" if row.name == first else None
        cells = [str(index), cell(row.name), cell(row.class_name), _shape(row.output_shape)]
        if has_own:
            own = row.own or {}
            cells.append(Text(_num(own.get("max_rel_diff")), style=_own_style(own)))
        cells += [_num(row.max_abs_diff), _num(row.max_rel_diff)]
        if result.float64:
            exact = row.float64 or {}
            cells += [_num(exact.get("keras_max_rel_diff")), _num(exact.get("engine_max_rel_diff"))]
        cells.append(Text(row.status, style=STATUS_STYLE[row.status]))
        if has_notes:
            cells.append(cell(row.reason or "", PATH_LIMIT))
        table.add_row(*cells, style=style)
    lines = [table]
    verdict = Text()
    tol = comparison.tolerance
    own_tolerance = [r for r in comparison.layers if r.tolerance]
    if comparison.status == "match":
        verdict.append("MATCH", style="bold green")
        verdict.append(
            f": every compared output within atol={tol.atol:g} + rtol={tol.rtol:g} x max|keras|"
            + (" or its layer's own tolerance (below)" if own_tolerance else "")
        )
        drift = [r for r in comparison.layers if r.status == "drift"]
        if drift:
            worst = max(r.max_rel_diff or 0.0 for r in drift)
            verdict = Text.assemble(
                ("MATCH", "bold green"),
                f": every layer's own error within atol={tol.atol:g} + rtol={tol.rtol:g} x "
                f"max|keras|; ",
                (f"{len(drift)} layers drift", "yellow"),
                f" (carried error up to {worst:.2e} relative: float32 rounding amplified along "
                "the network, not a wrong layer; diff without --layer-wise judges the outputs)",
            )
    else:
        count = sum(r.status == "mismatch" for r in comparison.layers)
        verdict.append("MISMATCH", style="bold red")
        verdict.append(f": {count} of {len(comparison.layers)} outputs out of tolerance; ")
        verdict.append(f"first divergence at '{display(first)}'", style="bold")
        row = next(r for r in comparison.layers if r.name == first)
        if row.own is not None and row.own["status"] == "mismatch":
            verdict.append(" (its own error, fed Keras' inputs, is out of tolerance)")
        if row.reason:
            verdict.append(f" ({display(row.reason, PATH_LIMIT)})")
        elif row.worst_index is not None:
            verdict.append(
                f" (worst element {tuple(row.worst_index)}: engine {row.engine_value:.6g}, "
                f"keras {row.keras_value:.6g})"
            )
    lines.append(verdict)
    if own_tolerance:
        shown = ", ".join(
            f"{display(r.name)} rtol={r.tolerance['rtol']:g}"
            + (f" ({r.tolerance['why']})" if r.tolerance.get("why") else "")
            for r in own_tolerance[:4]
        )
        more = f" and {len(own_tolerance) - 4} more" if len(own_tolerance) > 4 else ""
        lines.append(Text(f"per-layer tolerances in force: {shown}{more}"))
    if result.stateful:
        lines.append(Text(f"stateful: states reset before the run ({_names(result.stateful)})"))
    lines.append(
        Text(
            f"oracle {result.oracle}: {display(result.oracle_reason, None)}; "
            f"engine {result.engine_seconds:.3f}s, "
            f"keras {result.keras_seconds:.3f}s",
            style="dim",
        )
    )
    return Group(*lines)


def summary_table(model) -> Group:
    spec = model.spec
    table = Table(
        title=cell(
            f"{display(spec.name)} ({display(spec.class_name)}, "
            f"saved by Keras {display(spec.keras_version)})",
            None,
        ),
        title_justify="left",
    )
    table.add_column("layer")
    table.add_column("class")
    table.add_column("output shape")
    table.add_column("params", justify="right")
    table.add_column("data format")
    functional = spec.class_name != "Sequential"
    if functional:
        table.add_column("inputs from")
    for inp in spec.inputs:
        row = [cell(inp.name), "InputLayer", _shape((None, *inp.shape)), "0", "-"]
        table.add_row(*(row + ["-"] if functional else row))
    counted = set()
    for call in spec.calls:
        layer = model.graph.layers[call.layer]
        params = 0 if call.layer in counted else layer.param_count()
        counted.add(call.layer)
        row = [
            cell(call.name),
            cell(layer.class_name),
            _shape(model.output_shapes[call.name]),
            f"{params:,}",
            cell(layer.config.get("data_format") or "-"),
        ]
        if functional:
            row.append(_names(_ref_name(r) for r in call.inputs))
        table.add_row(*row)
    total = model.param_count()
    outputs = _names(_ref_name(r) for r in spec.outputs)
    footer = Text(f"Total params: {total:,}    Outputs: {outputs}")
    stateful = stateful_layers(spec)
    if stateful:
        footer.append(f"\nstateful: states reset before the run ({_names(stateful)})")
    return Group(table, footer)


def _names(names) -> str:
    """Names joined for one cell or line, each escaped and capped."""
    return ", ".join(display(name) for name in names)


def _ref_name(ref) -> str:
    name = ref.layer if ref.call == 0 else f"{ref.layer}#{ref.call}"
    return name if ref.tensor == 0 else f"{name}[{ref.tensor}]"


def predictions_view(
    outputs: list[np.ndarray], names: list[str], engine: str, top: int = 5
) -> Group:
    """Shape, dtype and values (or a head) of each output; top classes for a classifier."""
    parts = []
    for name, y in zip(names, outputs):
        y = np.asarray(y)
        parts.append(
            Text(f"{display(name)}: shape {y.shape}, dtype {y.dtype} ({engine})", style="bold")
        )
        if _looks_like_probabilities(y):
            table = Table("sample", "top classes (index: probability)")
            for i, row in enumerate(y[:10]):
                best = np.argsort(row)[::-1][:top]
                table.add_row(str(i), "  ".join(f"{c}: {row[c]:.4f}" for c in best))
            parts.append(table)
        else:
            with np.printoptions(precision=6, suppress=False, threshold=60, edgeitems=3):
                parts.append(Text(str(y)))
    return Group(*parts)


def _looks_like_probabilities(y: np.ndarray) -> bool:
    if y.dtype.kind not in "biuf" or y.ndim != 2 or y.shape[1] < 2 or not np.all(np.isfinite(y)):
        return False
    return bool(np.all(y >= 0) and np.allclose(y.sum(axis=1), 1.0, atol=1e-3))


def audit_table(outcome) -> Group:
    table = Table(title="kerascheck audit", title_justify="left")
    for column in ("model", "status", "layers", "first divergence", "max carried rel", "seconds"):
        table.add_column(
            column,
            justify="right" if column in ("layers", "seconds") else "left",
            overflow="fold",
        )
    for result in outcome.results:
        rows = result.comparison.layers
        worst = max((r.max_rel_diff or 0.0 for r in rows), default=0.0)
        table.add_row(
            path_cell(result.model_path),
            Text(result.status, style=STATUS_STYLE[result.status]),
            str(len(rows)),
            cell(result.comparison.first_divergence or "-"),
            _num(worst),
            f"{result.engine_seconds + result.keras_seconds:.2f}",
        )
    for path, error in outcome.errors.items():
        table.add_row(
            path_cell(path), Text("error", style="bold red"), "-", Text(message(error)), "-", "-"
        )
    counts = Text(
        f"{sum(r.status == 'match' for r in outcome.results)} match, "
        f"{sum(r.status == 'mismatch' for r in outcome.results)} diverge, "
        f"{len(outcome.errors)} could not be checked"
    )
    return Group(table, counts)
