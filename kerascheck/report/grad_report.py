"""Reports for `grad`: a rich table, the schema-1 JSON document, JUnit XML and Markdown.

One table row per gradient tensor, grouped by layer call in backward order
(the loss first, the model inputs last), each with its own and carried
relative error, the norm ratio and the cosine against Keras.
"""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text

from ..grad import GradResult
from .json_report import SCHEMA_VERSION
from .names import PATH_LIMIT, cell, display, markdown_cell, markdown_code
from .tables import rows_line, show_only_failures

STYLE = {"match": "green", "mismatch": "red", "drift": "yellow", "skipped": "dim"}


def _num(value) -> str:
    if value is None:
        return "-"
    return f"{value:.1e}" if value else "0"


def _sides(result: GradResult) -> tuple[str, str]:
    """Who is judged against whom: the engine or the user's arrays, Keras or the engine."""
    ours = "engine" if result.subject == "engine" else "yours"
    return ours, "engine" if result.oracle == "numpy" else "keras"


def _title(result: GradResult) -> str:
    return (
        f"{display(result.model_path, PATH_LIMIT)}: gradients, {display(result.subject, None)} "
        f"vs {result.oracle} "
        f"{result.oracle_version} "
        f"(saved by Keras {result.keras_version}), batch {result.batch}, {result.mode} mode"
    )


def loss_line(result: GradResult) -> Text:
    text = Text()
    text.append(f"loss {display(result.loss_name)}", style="bold")
    text.append(f" (from {display(result.loss_from, None)})")
    if result.logits_path:
        text.append(", taken from the logits as fit does")
    text.append(f": keras {result.keras_loss:.8g}, engine {result.engine_loss:.8g}")
    return text


def grad_table(result: GradResult, only_failures: bool | None = False, height=None) -> Group:
    """The table of every call's tensors; with `only_failures` (None: when something
    failed and the table is taller than `height` lines), only the tensors that are not
    `match`, and the first divergence."""
    total = sum(len(row.tensors) for row in result.rows)
    only = show_only_failures(only_failures, total, result.status != "match", height)
    table = Table(title=Text(_title(result)), title_justify="left")
    # own / carried: ||engine - keras|| / ||keras|| per tensor; ratio: ||engine|| / ||keras||
    table.add_column("#", justify="right", style="dim")
    table.add_column("call", no_wrap=True)
    table.add_column("class", overflow="ellipsis", max_width=24)
    table.add_column("tensor", no_wrap=True)
    table.add_column("shape", no_wrap=True)
    table.add_column("|keras|", justify="right", no_wrap=True)
    engine = result.subject == "engine"  # the user's arrays (--against) have no own error
    if engine:
        table.add_column("own", justify="right", no_wrap=True)
    table.add_column("carried" if engine else "rel error", justify="right", no_wrap=True)
    table.add_column("ratio", justify="right", no_wrap=True)
    table.add_column("cosine", justify="right", no_wrap=True)
    exact = any(t.float64 for r in result.rows for t in r.tensors)
    if exact:
        table.add_column("keras/f64", justify="right", no_wrap=True)
        table.add_column("engine/f64", justify="right", no_wrap=True)
    table.add_column("status")
    hints = any(t.hint for r in result.rows for t in r.tensors)
    if hints:
        table.add_column("likely cause", overflow="fold")
    first = result.first_divergence
    rows = 0
    for index, row in enumerate(result.rows):
        named = False  # the call's number, name and class go on its first row shown
        for tensor in row.tensors:
            shown = tensor.own or tensor.carried
            is_first = first and (first["call"], first["tensor"]) == (row.name, tensor.tensor)
            if only and tensor.status == "match" and not is_first:
                continue
            rows += 1
            cells = [
                "" if named else str(index),
                "" if named else cell(row.name),
                "" if named else cell(row.class_name),
                cell(tensor.tensor),
                "(" + ", ".join(str(d) for d in tensor.shape) + ")",
                _num(tensor.keras_norm),
            ]
            if engine:
                cells.append(
                    Text(
                        _num(tensor.own.rel_error) if tensor.own else "-",
                        style="red" if tensor.own and not tensor.own.ok else "",
                    )
                )
            cells += [
                _num(tensor.carried.rel_error) if tensor.carried else "-",
                f"{shown.norm_ratio:.3f}" if shown else "-",
                f"{shown.cosine:.4f}" if shown else "-",
            ]
            if exact:
                truth = tensor.float64 or {}
                cells += [_num(truth.get("keras")), _num(truth.get("engine"))]
            cells.append(Text(tensor.status, style=STYLE[tensor.status]))
            if hints:
                cells.append(cell(tensor.hint or "", None))  # plain text: hints hold [brackets]
            table.add_row(*cells, style="bold red reverse" if is_first else None)
            named = True
    parts = [loss_line(result), table]
    if only:
        parts.append(rows_line(rows, total))
    return Group(*parts, verdict(result))


def verdict(result: GradResult) -> Text:
    tol = result.tolerance
    text = Text()
    first = result.first_divergence
    ours, theirs = _sides(result)
    rule = (
        f"||{ours} - {theirs}|| <= {tol.rtol:g} x ||{theirs}|| + {tol.atol:g} x sqrt(n), per tensor"
    )
    if first is None:
        text.append("MATCH", style="bold green")
        text.append(f": every gradient within {rule}")
        drift = [t for r in result.rows for t in r.tensors if t.status == "drift"]
        if drift:
            text.append(
                f"; {len(drift)} tensors drift end to end (carried error only) while every "
                "layer's own backward agrees"
            )
        return text
    text.append("MISMATCH", style="bold red")
    text.append(
        f": first divergence in backward order at {display(first['call'])} "
        f"({display(first['class_name'])}), tensor {display(first['tensor'])}; tolerance {rule}"
    )
    hint = _first_hint(result, first)
    if hint:
        text.append(f"\nlikely cause: {display(hint, None)}", style="bold")
    return text


def _first_hint(result: GradResult, first: dict) -> str | None:
    for row in result.rows:
        for tensor in row.tensors:
            if (row.name, tensor.tensor) == (first["call"], first["tensor"]):
                return tensor.hint
    return None


def grad_json(result: GradResult) -> dict:
    return {
        "schema": SCHEMA_VERSION,
        "command": "grad",
        "model": result.model_path,
        "keras_version": result.keras_version,
        "oracle": {
            "name": result.oracle,
            "version": result.oracle_version,
            "reason": result.oracle_reason,
        },
        "loss": {
            "name": result.loss_name,
            "from": result.loss_from,
            "keras": result.keras_loss,
            "engine": result.engine_loss,
            "logits_path": result.logits_path,
        },
        "mode": result.mode,
        "status": result.status,
        "tolerance": {"rtol": result.tolerance.rtol, "atol": result.tolerance.atol},
        "first_divergence": result.first_divergence,
        "batch": result.batch,
        "timing": {"engine_seconds": result.engine_seconds, "keras_seconds": result.keras_seconds},
        "calls": [
            {
                "name": row.name,
                "class_name": row.class_name,
                "status": row.status,
                "tensors": [t.to_json() for t in row.tensors],
            }
            for row in result.rows
        ],
    }


def grad_junit(result: GradResult) -> str:
    from .tensor_rows import tensor_junit

    return tensor_junit(
        f"kerascheck grad {result.model_path}",
        result.model_path,
        result.rows,
        result.engine_seconds + result.keras_seconds,
    )


def grad_markdown(result: GradResult) -> str:
    icon = "✅" if result.status == "match" else "❌"
    tol = result.tolerance
    lines = [
        f"### {icon} kerascheck grad: {markdown_code(result.model_path, PATH_LIMIT)} — "
        f"{result.status}",
        "",
        f"{markdown_cell(result.subject.capitalize(), None)} vs {result.oracle} "
        f"{result.oracle_version}; "
        f"loss {markdown_cell(result.loss_name)} "
        f"(from {markdown_cell(result.loss_from, None)}): keras {result.keras_loss:.8g}, engine "
        f"{result.engine_loss:.8g}; {result.batch} samples, {result.mode} mode; tolerance "
        f"rtol={tol.rtol:g} per tensor.",
        "",
    ]
    first = result.first_divergence
    if first:
        lines += [
            f"**First divergence:** {markdown_code(first['call'])} / "
            f"{markdown_code(first['tensor'])}",
            "",
        ]
    from .tensor_rows import tensor_markdown

    lines += tensor_markdown(result.rows, "gradient tensors")
    return "\n".join(lines) + "\n"
