"""A Markdown summary fit for a CI job's summary page."""

from __future__ import annotations

from ..diff import DiffResult
from .names import PATH_LIMIT, markdown_cell, markdown_code


def _num(value) -> str:
    return "-" if value is None else f"{value:.2e}"


def diff_markdown(result: DiffResult, rows: str = "diverging") -> str:
    """Verdict, settings and a table (all rows, or only diverging ones plus the first)."""
    comparison = result.comparison
    tol = comparison.tolerance
    icon = "✅" if comparison.status == "match" else "❌"
    lines = [
        f"### {icon} kerascheck: {markdown_code(result.model_path, PATH_LIMIT)} — "
        f"{comparison.status}",
        "",
        f"Engine vs {result.oracle} {result.oracle_version} (saved by Keras "
        f"{markdown_cell(result.keras_version)}); {result.batch} samples; tolerance "
        f"atol={tol.atol:g}, rtol={tol.rtol:g} x max|keras| per layer.",
        "",
    ]
    if result.stateful:
        names = ", ".join(markdown_code(name) for name in result.stateful)
        lines += [f"Stateful: states reset before the run ({names}).", ""]
    first = comparison.first_divergence
    if first:
        lines += [f"**First divergence:** {markdown_code(first)}", ""]
    elif comparison.reason:
        lines += [f"**End to end:** {markdown_cell(comparison.reason, PATH_LIMIT)}", ""]
    shown = [
        r for r in comparison.layers if rows == "all" or r.status != "match" or r.name == first
    ]
    if shown:
        lines += [
            "| # | layer | class | own rel | carried abs | carried rel | status |",
            "|---:|---|---|---:|---:|---:|---|",
        ]
        for index, row in enumerate(comparison.layers):
            if row not in shown:
                continue
            own = _num((row.own or {}).get("max_rel_diff"))
            lines.append(
                f"| {index} | {markdown_code(row.name)} | {markdown_cell(row.class_name)} | "
                f"{own} | "
                f"{_num(row.max_abs_diff)} | {_num(row.max_rel_diff)} | {row.status} |"
            )
    else:
        lines.append(f"All {len(comparison.layers)} compared outputs agree.")
    return "\n".join(lines) + "\n"


def audit_markdown(outcome) -> str:
    """Every model's summary, then the models that could not be checked."""
    text = "".join(diff_markdown(r) + "\n" for r in outcome.results)
    for path, message in outcome.errors.items():
        text += (
            f"### ⚠️ {markdown_code(path, PATH_LIMIT)} could not be checked\n\n"
            f"{markdown_cell(message, None)}\n\n"
        )
    return text
