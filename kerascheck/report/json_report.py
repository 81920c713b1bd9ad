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
        "batch": result.batch,
        "batches": result.batches,
        "timing": {"engine_seconds": result.engine_seconds, "keras_seconds": result.keras_seconds},
        "graph_check_max_abs_diff": result.graph_check,
        "stateful": {"layers": result.stateful, "states": "reset before the run"}
        if result.stateful
        else None,
        "layers": [row.to_json() for row in comparison.layers],
    }


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
