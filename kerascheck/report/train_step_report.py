"""Reports for `train-step`: the terminal table and the schema-1 JSON document."""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text

from ..train_step import TrainStepResult
from . import names
from .grad_report import STYLE, _num
from .json_report import SCHEMA_VERSION
from .tensor_rows import tensor_junit, tensor_markdown


def header(result: TrainStepResult) -> Text:
    text = Text()
    text.append(f"optimizer {result.optimizer}", style="bold")
    text.append(f" (from {result.optimizer_from}; state from {result.state_from}), ")
    text.append(f"loss {result.loss_name} (from {result.loss_from})\n")
    for side in ("keras", "engine"):
        if result.losses[side]:
            values = ", ".join(f"{v:.8g}" for v in result.losses[side])
            text.append(f"loss {side:<6} before each step, then after: {values}\n")
    return text


def _reference(result: TrainStepResult) -> str:
    return "the engine" if result.oracle == "numpy" else f"{result.oracle} {result.oracle_version}"


def train_step_table(result: TrainStepResult) -> Group:
    title = (
        f"{result.model_path}: {result.steps} training step(s), {result.subject} vs "
        f"{_reference(result)}, batch {result.batch}"
    )
    table = Table(title=names.path_cell(title), title_justify="left")
    # Δ rows: the update W_after - W_before, judged against Keras' update.
    for name, justify in (("#", "right"), ("layer", "left"), ("class", "left")):
        table.add_column(name, justify=justify, no_wrap=True)
    table.add_column("tensor", no_wrap=True)
    table.add_column("shape", no_wrap=True)
    size = "|engine|" if result.oracle == "numpy" else "|keras|"
    for name in (size, "rel error", "ratio", "cosine"):
        table.add_column(name, justify="right", no_wrap=True)
    table.add_column("status")
    hints = any(t.hint for r in result.rows for t in r.tensors)
    if hints:
        table.add_column("likely cause", overflow="fold")
    first = result.first_divergence
    for index, row in enumerate(result.rows):
        for position, tensor in enumerate(row.tensors):
            stats = tensor.own or tensor.carried
            is_first = first and (first["layer"], first["tensor"]) == (row.name, tensor.tensor)
            hint = [Text(tensor.hint or "")] if hints else []  # plain text: hints hold [brackets]
            table.add_row(
                str(index) if position == 0 else "",
                names.cell(row.name) if position == 0 else "",
                names.cell(row.class_name) if position == 0 else "",
                names.cell(tensor.tensor),
                "(" + ", ".join(str(d) for d in tensor.shape) + ")",
                _num(tensor.keras_norm),
                _num(stats.rel_error) if stats else "-",
                f"{stats.norm_ratio:.3f}" if stats else "-",
                f"{stats.cosine:.4f}" if stats else "-",
                Text(tensor.status, style=STYLE[tensor.status]),
                *hint,
                style="bold red reverse" if is_first else None,
            )
    verdict = Text()
    if first is None:
        verdict.append("MATCH", style="bold green")
        verdict.append(
            f": every update within {result.tolerance.rtol:g} x ||keras update|| per tensor"
        )
    else:
        verdict.append("MISMATCH", style="bold red")
        verdict.append(
            f": first diverging update at {names.display(first['layer'])} / "
            f"{names.display(first['tensor'])}"
        )
        hint = _hint_at(result, first)
        if hint:
            verdict.append(f"\nlikely cause: {hint}", style="bold")
    return Group(header(result), table, verdict)


def _hint_at(result: TrainStepResult, first: dict) -> str | None:
    for row in result.rows:
        for tensor in row.tensors:
            if (row.name, tensor.tensor) == (first["layer"], first["tensor"]):
                return tensor.hint
    return None


def train_step_junit(result: TrainStepResult) -> str:
    return tensor_junit(
        f"kerascheck train-step {result.model_path}",
        result.model_path,
        result.rows,
        result.engine_seconds + result.keras_seconds,
    )


def train_step_markdown(result: TrainStepResult) -> str:
    icon = "✅" if result.status == "match" else "❌"
    lines = [
        f"### {icon} kerascheck train-step: {names.markdown_code(result.model_path, None)} — "
        f"{result.status}",
        "",
        f"{result.subject.capitalize()} vs {_reference(result)}; {result.steps} step(s) of "
        f"{result.optimizer} (from {result.optimizer_from}; state from {result.state_from}), "
        f"loss {result.loss_name}, batch {result.batch}; tolerance "
        f"rtol={result.tolerance.rtol:g} per update.",
        "",
    ]
    first = result.first_divergence
    if first:
        lines += [
            f"**First divergence:** {names.markdown_code(first['layer'])} / "
            f"{names.markdown_code(first['tensor'])}",
            "",
        ]
    lines += tensor_markdown(result.rows, "updates and tensors")
    return "\n".join(lines) + "\n"


def train_step_json(result: TrainStepResult) -> dict:
    return {
        "schema": SCHEMA_VERSION,
        "command": "train-step",
        "model": result.model_path,
        "keras_version": result.keras_version,
        "oracle": {"name": result.oracle, "version": result.oracle_version},
        "subject": result.subject,
        "optimizer": {
            "name": result.optimizer,
            "from": result.optimizer_from,
            "state_from": result.state_from,
        },
        "loss": {"name": result.loss_name, "from": result.loss_from, **result.losses},
        "steps": result.steps,
        "batch": result.batch,
        "status": result.status,
        "tolerance": {"rtol": result.tolerance.rtol, "atol": result.tolerance.atol},
        "first_divergence": result.first_divergence,
        "timing": {"engine_seconds": result.engine_seconds, "keras_seconds": result.keras_seconds},
        "layers": [
            {
                "name": row.name,
                "class_name": row.class_name,
                "status": row.status,
                "tensors": [t.to_json() for t in row.tensors],
            }
            for row in result.rows
        ],
    }
