"""Reports for `train-step`: the terminal table and the schema-1 JSON document."""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text

from ..train_step import TrainStepResult
from .grad_report import STYLE, _num
from .json_report import SCHEMA_VERSION


def header(result: TrainStepResult) -> Text:
    text = Text()
    text.append(f"optimizer {result.optimizer}", style="bold")
    text.append(f" (from {result.optimizer_from}; state from {result.state_from}), ")
    text.append(f"loss {result.loss_name} (from {result.loss_from})\n")
    for side in ("keras", "engine"):
        values = ", ".join(f"{v:.8g}" for v in result.losses[side])
        text.append(f"loss {side:<6} before each step, then after: {values}\n")
    return text


def train_step_table(result: TrainStepResult) -> Group:
    title = (
        f"{result.model_path}: {result.steps} training step(s), engine vs {result.oracle} "
        f"{result.oracle_version}, batch {result.batch}"
    )
    table = Table(title=title, title_justify="left")
    # Δ rows: the update W_after - W_before, judged against Keras' update.
    for name, justify in (("#", "right"), ("layer", "left"), ("class", "left")):
        table.add_column(name, justify=justify, no_wrap=True)
    table.add_column("tensor", no_wrap=True)
    table.add_column("shape", no_wrap=True)
    for name in ("|keras|", "rel error", "ratio", "cosine"):
        table.add_column(name, justify="right", no_wrap=True)
    table.add_column("status")
    first = result.first_divergence
    for index, row in enumerate(result.rows):
        for position, tensor in enumerate(row.tensors):
            stats = tensor.own or tensor.carried
            is_first = first and (first["layer"], first["tensor"]) == (row.name, tensor.tensor)
            table.add_row(
                str(index) if position == 0 else "",
                row.name if position == 0 else "",
                row.class_name if position == 0 else "",
                tensor.tensor,
                "(" + ", ".join(str(d) for d in tensor.shape) + ")",
                _num(tensor.keras_norm),
                _num(stats.rel_error),
                f"{stats.norm_ratio:.3f}",
                f"{stats.cosine:.4f}",
                Text(tensor.status, style=STYLE[tensor.status]),
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
        verdict.append(f": first diverging update at {first['layer']} / {first['tensor']}")
    return Group(header(result), table, verdict)


def train_step_json(result: TrainStepResult) -> dict:
    return {
        "schema": SCHEMA_VERSION,
        "command": "train-step",
        "model": result.model_path,
        "keras_version": result.keras_version,
        "oracle": {"name": result.oracle, "version": result.oracle_version},
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
