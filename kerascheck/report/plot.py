"""`--plot`: own and carried error per layer along the model, on a log scale.

matplotlib is an optional extra (`pip install kerascheck[plot]`); it is
imported only here, with the non-interactive Agg backend.
"""

from __future__ import annotations

from ..diff import DiffResult
from ..errors import KerascheckError

FLOOR = 1e-12  # exact agreement is drawn at the floor of the log scale


def error_plot(result: DiffResult, path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise KerascheckError("--plot needs matplotlib: pip install 'kerascheck[plot]'")
    rows = result.comparison.layers
    positions = list(range(len(rows)))
    carried = [max(r.max_rel_diff or 0.0, FLOOR) for r in rows]
    figure, axes = plt.subplots(figsize=(max(6.0, 0.25 * len(rows)), 4.0))
    axes.semilogy(positions, carried, marker="o", label="carried (end to end)")
    if any(r.own is not None for r in rows):
        own = [max((r.own or {}).get("max_rel_diff") or 0.0, FLOOR) for r in rows]
        axes.semilogy(positions, own, marker="x", label="own (fed Keras' inputs)")
    tol = result.comparison.tolerance
    axes.axhline(tol.rtol, color="red", linestyle="--", label=f"rtol {tol.rtol:g}")
    first = result.comparison.first_divergence
    if first is not None:
        index = next(i for i, r in enumerate(rows) if r.name == first)
        axes.axvline(index, color="red", alpha=0.4, label=f"first divergence: {first}")
    axes.set_xticks(positions)
    axes.set_xticklabels([r.name for r in rows], rotation=90, fontsize=7)
    axes.set_ylabel("max |diff| / max |keras|")
    axes.set_title(f"{result.model_path}: {result.subject} vs {result.oracle}")
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
