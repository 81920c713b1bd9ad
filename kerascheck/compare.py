"""Compare two runs ({call name: array}) layer by layer; a pure function of its inputs.

Tolerance policy: a layer call agrees when

    max |engine - keras|  <=  atol + rtol * max |keras|

i.e. the error is judged against the layer's own magnitude, not element by
element (elements near zero would make element-wise relative error explode).
Defaults atol=1e-5, rtol=1e-4: float32 reordering noise stays around 1e-7 to
1e-6 of the magnitude even after 50+ layers, while a single element that is off
by 1% of the layer's largest value exceeds 1e-4 by a factor of 100.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

DEFAULT_ATOL = 1e-5
DEFAULT_RTOL = 1e-4


@dataclass(frozen=True)
class Tolerance:
    atol: float = DEFAULT_ATOL
    rtol: float = DEFAULT_RTOL


@dataclass
class LayerDiff:
    name: str
    class_name: str
    output_shape: list
    status: str  # "match", "mismatch" or "skipped"
    max_abs_diff: float | None = None
    max_rel_diff: float | None = None
    mean_abs_diff: float | None = None
    worst_index: list | None = None
    engine_value: float | None = None
    keras_value: float | None = None
    reason: str | None = None

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None or k == "reason"}


@dataclass
class Comparison:
    layers: list[LayerDiff] = field(default_factory=list)
    tolerance: Tolerance = field(default_factory=Tolerance)

    @property
    def status(self) -> str:
        return "mismatch" if any(r.status == "mismatch" for r in self.layers) else "match"

    @property
    def first_divergence(self) -> str | None:
        return next((r.name for r in self.layers if r.status == "mismatch"), None)


def compare_arrays(name, class_name, ours, theirs, tolerance: Tolerance) -> LayerDiff:
    """Statistics for one layer call; several outputs are compared as one."""
    if isinstance(theirs, (list, tuple)) or isinstance(ours, (list, tuple)):
        ours_list = list(ours) if isinstance(ours, (list, tuple)) else [ours]
        theirs_list = list(theirs) if isinstance(theirs, (list, tuple)) else [theirs]
        if len(ours_list) != len(theirs_list):
            return LayerDiff(
                name,
                class_name,
                [],
                "mismatch",
                reason=f"engine gives {len(ours_list)} outputs, Keras {len(theirs_list)}",
            )
        parts = [
            compare_arrays(name, class_name, a, b, tolerance)
            for a, b in zip(ours_list, theirs_list)
        ]
        worst = max(parts, key=lambda p: (p.status == "mismatch", p.max_abs_diff or 0.0))
        worst.output_shape = [p.output_shape for p in parts]
        return worst
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    shape = list(theirs.shape)
    if ours.shape != theirs.shape:
        return LayerDiff(
            name,
            class_name,
            shape,
            "mismatch",
            reason=f"engine output shape {list(ours.shape)} != Keras {shape}",
        )
    if theirs.size == 0:
        return LayerDiff(name, class_name, shape, "match", 0.0, 0.0, 0.0)
    a, b = ours.astype(np.float64), theirs.astype(np.float64)
    finite = np.isfinite(a) & np.isfinite(b)
    same_nan = np.isnan(a) & np.isnan(b)
    differs = ~finite & ~same_nan & (a != b)
    if np.any(differs):
        index = np.unravel_index(np.argmax(differs), a.shape)
        return LayerDiff(
            name,
            class_name,
            shape,
            "mismatch",
            float("inf"),
            float("inf"),
            float("inf"),
            [int(i) for i in index],
            float(a[index]),
            float(b[index]),
            reason=f"non-finite values differ ({int(differs.sum())} elements with NaN/Inf "
            "on one side only or of different sign)",
        )
    diff = np.where(finite, np.abs(a - b), 0.0)
    worst = np.unravel_index(np.argmax(diff), diff.shape)
    max_abs = float(diff[worst])
    scale = float(np.max(np.abs(np.where(finite, b, 0.0))))
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    ok = max_abs <= tolerance.atol + tolerance.rtol * scale
    return LayerDiff(
        name,
        class_name,
        shape,
        "match" if ok else "mismatch",
        max_abs,
        max_rel,
        float(np.mean(diff)),
        [int(i) for i in worst],
        float(a[worst]),
        float(b[worst]),
    )


def compare_runs(
    ours: dict, theirs: dict, rows: list[tuple[str, str]], tolerance: Tolerance
) -> Comparison:
    """Compare every (call name, class name) row present on both sides, in row order."""
    result = Comparison(tolerance=tolerance)
    for name, class_name in rows:
        if name not in ours or name not in theirs:
            side = "engine" if name not in ours else "Keras"
            result.layers.append(
                LayerDiff(name, class_name, [], "skipped", reason=f"no {side} output")
            )
            continue
        result.layers.append(compare_arrays(name, class_name, ours[name], theirs[name], tolerance))
    return result
