"""A Markdown summary fit for a CI job's summary page."""

from __future__ import annotations

from ..diff import DiffResult


def _num(value) -> str:
    return "-" if value is None else f"{value:.2e}"


def diff_markdown(result: DiffResult, rows: str = "diverging") -> str:
    """Verdict, settings and a table (all rows, or only diverging ones plus the first)."""
    comparison = result.comparison
    tol = comparison.tolerance
    icon = "✅" if comparison.status == "match" else "❌"
    lines = [
        f"### {icon} kerascheck: `{result.model_path}` — {comparison.status}",
        "",
        f"Engine vs {result.oracle} {result.oracle_version} (saved by Keras "
        f"{result.keras_version}); {result.batch} samples; tolerance atol={tol.atol:g}, "
        f"rtol={tol.rtol:g} x max|keras| per layer.",
        "",
    ]
    first = comparison.first_divergence
    if first:
        lines += [f"**First divergence:** `{first}`", ""]
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
                f"| {index} | `{row.name}` | {row.class_name} | {own} | "
                f"{_num(row.max_abs_diff)} | {_num(row.max_rel_diff)} | {row.status} |"
            )
    else:
        lines.append(f"All {len(comparison.layers)} compared outputs agree.")
    return "\n".join(lines) + "\n"
