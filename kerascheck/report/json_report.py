"""The `--json` report, schema version 1: fields may be added, never renamed."""

from __future__ import annotations

import json
import math

from ..diff import DiffResult

SCHEMA_VERSION = 1


def diff_report(result: DiffResult) -> dict:
    comparison = result.comparison
    return {
        "schema": SCHEMA_VERSION,
        "model": result.model_path,
        "keras_version": result.keras_version,
        "oracle": {
            "name": result.oracle,
            "version": result.oracle_version,
            "reason": result.oracle_reason,
        },
        "status": comparison.status,
        "layer_wise": result.layer_wise,
        "tolerance": {"atol": comparison.tolerance.atol, "rtol": comparison.tolerance.rtol},
        "first_divergence": comparison.first_divergence,
        "reason": comparison.reason,
        "end_to_end": [_end_to_end(row) for row in comparison.end_to_end],
        "drift": _drift(comparison),
        "batch": result.batch,
        "batches": result.batches,
        "timing": {
            "engine_seconds": result.engine_seconds,
            "keras_seconds": result.keras_seconds,
            "phases": result.timings,  # wall seconds per phase (progress.Phases)
            "wall_seconds": result.wall_seconds,
        },
        "graph_check_max_abs_diff": result.graph_check,
        "stateful": {"layers": result.stateful, "states": "reset before the run"}
        if result.stateful
        else None,
        "layers": [row.to_json() for row in comparison.layers],
    }


def _end_to_end(row) -> dict:
    """A model output judged as `diff` without --layer-wise judges it."""
    keys = ("name", "class_name", "status", "max_abs_diff", "max_rel_diff", "tolerance")
    return {key: getattr(row, key) for key in keys}


def _drift(comparison) -> dict | None:
    """Drifting layers, and whether rounding explains them (every own error at
    rounding level) or only the tolerances in force do."""
    drift = [r.name for r in comparison.layers if r.status == "drift"]
    if not drift:
        return None
    above = [r.name for r in comparison.above_rounding]
    return {"layers": drift, "rounding": not above, "own_error_above_rounding": above}


def audit_report(outcome) -> dict:
    """Aggregated audit: one diff report per model, plus the models that could not run."""
    return {
        "schema": SCHEMA_VERSION,
        "status": {0: "match", 1: "mismatch", 2: "error"}[outcome.exit_code],
        "models": [diff_report(result) for result in outcome.results],
        "errors": [{"model": path, "error": message} for path, message in outcome.errors.items()],
    }


def dumps(report: dict) -> str:
    return json.dumps(_finite(report), indent=2)


def _finite(value):
    """JSON has no Infinity/NaN: write them as strings a reader can still parse."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value
