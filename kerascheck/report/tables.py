"""Rich renderables for the terminal: diff table, model summary, predictions.

Fitting the width. `diff_table` and `audit_table` take the width they are given (the
terminal's; the CLI gives files and pipes WIDE). At WIDE columns or more they show
today's full layout, every column as wide as its contents. Narrower, they give up
detail one step at a time, in this order, until the table fits:

- diff: (1) drop `#`, (2) drop `carried abs`, (3) abbreviate `output shape`
  (headed `shape`; `(4, 27, 3, 10)` becomes `4x27x3x10`), (4) fold layer names (wrapped onto more
  lines, at least FOLD wide), (5) drop `class`, (6) drop `output shape`, (7) drop
  `keras/f64` and `engine/f64`; `layer`, `own rel`, `carried rel` and `status` stay;
- audit: (1) drop `seconds`, (2) drop `layers`, (3) drop `max carried rel`.

Notes, model paths and first divergences always fold into the width left (at least
NOTE_FOLD); titles and verdict lines wrap.

Rows. `only_failures=True` shows only the rows that are not `match` (the first
divergence always among them); None (the default) does so when something failed
and the whole table would be taller than `height` (the screen; None for files and
pipes, which always get every row). A dim line then says how many rows are shown.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from rich.cells import cell_len
from rich.console import Group
from rich.table import Table
from rich.text import Text

from ..diff import DiffResult
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


WIDE = 140  # at this width or more (and in files and pipes) every column is shown
FOLD = 12  # a folded column (layer name, model path) wraps down to this many characters
NOTE_FOLD = 20  # notes always fold into what is left, at least this wide
TABLE_LINES = 5  # a table's lines besides its rows: title, three rules, the header

# Narrowing steps, applied in order until the table fits: (action, column keys).
DIFF_NARROWING = (
    ("drop", "#"),
    ("drop", "carried abs"),
    ("short", "output shape"),
    ("fold", "layer"),
    ("drop", "class"),
    ("drop", "output shape"),
    ("drop", "keras/f64", "engine/f64"),
)
AUDIT_NARROWING = (
    ("drop", "seconds"),
    ("drop", "layers"),
    ("drop", "max carried rel"),
)


@dataclass
class _Column:
    header: str
    cells: list  # one str or Text per row
    justify: str = "left"
    style: str | None = None
    fold: int | None = None  # wraps down to this width; None: never wraps
    short: list | None = None  # abbreviated cells for a narrow table
    short_header: str | None = None

    def width(self) -> int:
        natural = max(cell_len(_plain(c)) for c in [self.header, *self.cells])
        return natural if self.fold is None else min(natural, self.fold)


def _plain(value) -> str:
    return value.plain if isinstance(value, Text) else str(value)


def _fit(columns: dict[str, _Column], width: int | None, steps) -> dict[str, _Column]:
    """The columns after as many narrowing `steps` as it takes to fit `width`."""
    if width is None or width >= WIDE:
        return columns
    for action, *keys in steps:
        if _table_width(columns) <= width:
            break
        for key in keys:
            column = columns.get(key)
            if column is None:
                continue
            if action == "drop":
                del columns[key]
            elif action == "short":
                column.cells, column.header = column.short, column.short_header
            else:
                column.fold = FOLD
    return columns


def _table_width(columns: dict[str, _Column]) -> int:
    """rich's default box: a rule around and between columns, one space each side."""
    return sum(c.width() for c in columns.values()) + 3 * len(columns) + 1


def _table(title, columns: dict[str, _Column], row_styles: list) -> Table:
    table = Table(title=title, title_justify="left")
    for column in columns.values():
        table.add_column(
            column.header,
            justify=column.justify,
            style=column.style,
            no_wrap=column.fold is None,
            overflow="fold",
        )
    for index, style in enumerate(row_styles):
        table.add_row(*(c.cells[index] for c in columns.values()), style=style)
    return table


def show_only_failures(only_failures: bool | None, rows: int, failed: bool, height) -> bool:
    """None: failures only when something failed and the whole table is taller than
    the screen (`height`; None for files and pipes, which get every row)."""
    if only_failures is not None:
        return only_failures
    return failed and height is not None and rows + TABLE_LINES > height


def rows_line(shown: int, total: int) -> Text:
    return Text(
        f"showing {shown} of {total} rows (only failures); --all-rows to show every row",
        style="dim",
    )


def _short_shape(shape) -> str:
    """(4, 27, 3, 10) as 4x27x3x10, for a narrow table."""
    if shape and isinstance(shape[0], (list, tuple)):
        return ",".join(_short_shape(s) for s in shape)
    return "x".join("?" if d is None else str(d) for d in shape)


def diff_table(
    result: DiffResult,
    width: int | None = None,
    height: int | None = None,
    only_failures: bool | None = None,
) -> Group:
    """The diff table, fitted to `width` (see the module docstring), and its verdict."""
    comparison = result.comparison
    first = comparison.first_divergence
    everything = list(enumerate(comparison.layers))
    failures = show_only_failures(
        only_failures, len(everything), comparison.status == "mismatch", height
    )
    shown = [
        (index, row)
        for index, row in everything
        if not failures or row.status != "match" or row.name == first
    ]
    title = (
        f"{display(result.model_path, None)}: {display(result.subject, None)} vs "
        f"{result.oracle} {result.oracle_version} "
        f"(saved by Keras {display(result.keras_version)}), batch {result.batch}"
    )
    columns = _fit(_diff_columns(result, shown), width, DIFF_NARROWING)
    styles = ["bold red reverse" if row.name == first else None for _, row in shown]
    lines = [_table(path_cell(title), columns, styles)]
    if failures:
        lines.append(rows_line(len(shown), len(everything)))
    lines.append(_verdict(result))
    own_tolerance = [r for r in comparison.layers if r.tolerance]
    if own_tolerance:
        lines.append(Text(f"per-layer tolerances in force: {_tolerances(own_tolerance)}"))
    if result.stateful:
        lines.append(Text(f"stateful: states reset before the run ({_names(result.stateful)})"))
    lines.append(
        Text(
            f"oracle {result.oracle}: {display(result.oracle_reason, None)}; {_timings(result)}",
            style="dim",
        )
    )
    return Group(*lines)


def _timings(result: DiffResult) -> str:
    """Where the wall time went, phase by phase (see progress.Phases)."""
    if not result.timings:
        return f"engine {result.engine_seconds:.3f}s, keras {result.keras_seconds:.3f}s"
    from ..progress import format_phases

    return format_phases(result.timings, result.wall_seconds)


def _diff_columns(result: DiffResult, shown: list) -> dict[str, _Column]:
    rows = [row for _, row in shown]
    shapes = [row.output_shape for row in rows]
    columns = {
        "#": _Column("#", [str(index) for index, _ in shown], "right", "dim"),
        "layer": _Column("layer", [cell(r.name) for r in rows]),
        "class": _Column("class", [cell(r.class_name) for r in rows]),
        "output shape": _Column(
            "output shape",
            [_shape(s) for s in shapes],
            short=[_short_shape(s) for s in shapes],
            short_header="shape",
        ),
    }
    if any(r.own is not None for r in result.comparison.layers):
        own = [r.own or {} for r in rows]
        columns["own rel"] = _Column(
            "own rel",
            [Text(_num(o.get("max_rel_diff")), style=_own_style(o)) for o in own],
            "right",
        )
    columns["carried abs"] = _Column(
        "carried abs", [_compared(r, r.max_abs_diff) for r in rows], "right"
    )
    columns["carried rel"] = _Column(
        "carried rel", [_compared(r, r.max_rel_diff) for r in rows], "right"
    )
    if result.float64:
        exact = [r.float64 or {} for r in rows]
        for key, side in (("keras/f64", "keras"), ("engine/f64", "engine")):
            columns[key] = _Column(
                key, [_num(e.get(f"{side}_max_rel_diff")) for e in exact], "right"
            )
    columns["status"] = _Column(
        "status", [Text(_status_text(r.status), style=STATUS_STYLE[r.status]) for r in rows]
    )
    notes = [_note(r) for r in rows]
    if any(notes):
        columns["note"] = _Column("note", [cell(n, PATH_LIMIT) for n in notes], fold=NOTE_FOLD)
    return columns


def _compared(row, value) -> str:
    """A number, or `-` for a row that was not compared (0 would read as a match)."""
    return "-" if row.status == "skipped" else _num(value)


def _status_text(status: str) -> str:
    return "not compared" if status == "skipped" else status


def _note(row) -> str:
    if row.reason:
        return row.reason
    return f"inherits divergence from {row.inherits}" if row.inherits else ""


def _tolerances(rows, shown: int = 4) -> str:
    text = ", ".join(
        f"{display(r.name)} rtol={r.tolerance['rtol']:g}"
        + (f" ({r.tolerance['why']})" if r.tolerance.get("why") else "")
        for r in rows[:shown]
    )
    return text + (f" and {len(rows) - shown} more" if len(rows) > shown else "")


def _tolerance_text(comparison) -> str:
    """The tolerances actually used: the default, and whether layers had their own."""
    tol = comparison.tolerance
    default = f"atol={tol.atol:g} + rtol={tol.rtol:g} x max|keras|"
    own = sum(bool(r.tolerance) for r in comparison.layers)
    if not own:
        return default
    return f"its tolerance (default {default}; {own} with their own, below)"


def _drift_text(comparison) -> str:
    """Why layers drift: rounding, or only within the tolerances in force."""
    drift = [r for r in comparison.layers if r.status == "drift"]
    if not drift:
        return ""
    worst = max(r.max_rel_diff or 0.0 for r in drift)
    text = f"{len(drift)} layers drift (carried error up to {worst:.2e} relative"
    above = comparison.above_rounding
    if not above:
        return text + ": rounding amplified along the network, not a wrong layer)"
    named = ", ".join(
        f"{display(r.name)} own {r.own['max_rel_diff']:.2e} (rounding level "
        f"{r.own['rounding_level']:g}; tolerance "
        f"rtol={(r.tolerance or {}).get('rtol', comparison.tolerance.rtol):g})"
        for r in above[:3]
    )
    more = f" and {len(above) - 3} more" if len(above) > 3 else ""
    return (
        text + ") within the tolerances in force, not explained by rounding: own error "
        f"above rounding level at {named}{more}"
    )


def _end_to_end_text(result: DiffResult) -> str:
    """The model outputs' end-to-end error, in a layer-by-layer verdict."""
    rows = result.comparison.end_to_end
    if not result.layer_wise or not rows:
        return ""
    worst = max(rows, key=lambda r: r.max_rel_diff or 0.0)
    if worst.status == "mismatch":
        return (
            f"model outputs end to end: '{display(worst.name)}' out of tolerance "
            f"({_num(worst.max_rel_diff)} relative)"
        )
    return (
        f"model outputs end to end within tolerance (up to {_num(worst.max_rel_diff)} "
        "relative, as diff without --layer-wise judges them)"
    )


def _verdict(result: DiffResult) -> Text:
    comparison = result.comparison
    drift = _drift_text(comparison)
    end_to_end = _end_to_end_text(result)
    verdict = Text()
    if comparison.status == "match":
        verdict.append("MATCH", style="bold green")
        if drift:
            verdict.append(f": every layer's own error within {_tolerance_text(comparison)}; ")
            verdict.append(drift, style="yellow")
        else:
            verdict.append(f": every compared output within {_tolerance_text(comparison)}")
        if end_to_end:
            verdict.append(f"; {end_to_end}")
        return verdict
    verdict.append("MISMATCH", style="bold red")
    if comparison.reason:  # only the outputs, end to end
        verdict.append(f": {display(comparison.reason, PATH_LIMIT)}")
        if drift:
            verdict.append(f"; {drift}", style="yellow")
        return verdict
    first = comparison.first_divergence
    count = sum(r.status == "mismatch" for r in comparison.layers)
    compared = sum(r.status != "skipped" for r in comparison.layers)
    verdict.append(f": {count} of {compared} compared outputs out of tolerance; ")
    verdict.append(f"first divergence at '{display(first)}'", style="bold")
    row = next(r for r in comparison.layers if r.name == first)
    if row.own is not None and row.own["status"] == "mismatch":
        verdict.append(f" (its own error, fed {result.reference}'s inputs, is out of tolerance)")
    if row.reason:
        verdict.append(f" ({display(row.reason, PATH_LIMIT)})")
    elif row.worst_index is not None:
        verdict.append(
            f" (worst element {tuple(row.worst_index)}: {result.subject_label} "
            f"{row.engine_value:.6g}, {result.reference} {row.keras_value:.6g})"
        )
    if end_to_end:
        verdict.append(f"; {end_to_end}")
    if not result.layer_wise and result.subject == "engine":
        command = f"kerascheck diff --layer-wise {display(result.model_path, PATH_LIMIT)}"
        if result.input_path:
            command += f" {display(result.input_path, PATH_LIMIT)}"
        verdict.append(f"; run `{command}` (same options) to find the first diverging layer")
    return verdict


def _names(names) -> str:
    """Names joined for one cell or line, each escaped and capped."""
    return ", ".join(display(name) for name in names)


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


def audit_table(
    outcome,
    width: int | None = None,
    height: int | None = None,
    only_failures: bool | None = None,
) -> Group:
    """One row per model, fitted to `width`; failures only as in `diff_table`."""
    total = len(outcome.results) + len(outcome.errors)
    failed = bool(outcome.errors) or any(r.status == "mismatch" for r in outcome.results)
    failures = show_only_failures(only_failures, total, failed, height)
    results = [r for r in outcome.results if not failures or r.status != "match"]
    rows = [
        (
            path_cell(result.model_path),
            Text(result.status, style=STATUS_STYLE[result.status]),
            str(len(result.comparison.layers)),
            cell(_first_divergence(result.comparison)),
            _num(max((r.max_rel_diff or 0.0 for r in result.comparison.layers), default=0.0)),
            f"{result.engine_seconds + result.keras_seconds:.2f}",
        )
        for result in results
    ]
    rows += [
        (path_cell(path), Text("error", style="bold red"), "-", Text(message(error)), "-", "-")
        for path, error in outcome.errors.items()
    ]
    cells = list(zip(*rows)) or [()] * 6
    columns = {
        "model": _Column("model", list(cells[0]), fold=NOTE_FOLD),
        "status": _Column("status", list(cells[1])),
        "layers": _Column("layers", list(cells[2]), "right"),
        "first divergence": _Column("first divergence", list(cells[3]), fold=NOTE_FOLD),
        "max carried rel": _Column("max carried rel", list(cells[4]), "right"),
        "seconds": _Column("seconds", list(cells[5]), "right"),
    }
    columns = _fit(columns, width, AUDIT_NARROWING)
    lines = [_table("kerascheck audit", columns, [None] * len(rows))]
    if failures:
        lines.append(rows_line(len(rows), total))
    lines.append(
        Text(
            f"{sum(r.status == 'match' for r in outcome.results)} match, "
            f"{sum(r.status == 'mismatch' for r in outcome.results)} diverge, "
            f"{len(outcome.errors)} could not be checked"
        )
    )
    return Group(*lines)


def _first_divergence(comparison) -> str:
    if comparison.first_divergence is not None:
        return comparison.first_divergence
    return "end-to-end outputs" if comparison.reason else "-"
