"""Run the engine and Keras on the same inputs and compare them (the `diff` command's core)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from .compare import Comparison, Tolerance, compare_runs
from .engine.model import EngineModel
from .oracle import choose_oracle, run_keras

# Keras' whole-model output and its layer-by-layer replay use identical kernels;
# anything above this means kerascheck read the graph differently from Keras.
GRAPH_CHECK_LIMIT = 1e-6


@dataclass
class DiffResult:
    model_path: str
    keras_version: str
    oracle: str
    oracle_reason: str
    oracle_version: str
    comparison: Comparison
    layer_wise: bool
    engine_seconds: float
    keras_seconds: float
    graph_check: float
    batch: int

    @property
    def status(self) -> str:
        return self.comparison.status


def diff_model(
    path: str,
    model: EngineModel,
    inputs: list[np.ndarray],
    layer_wise: bool = True,
    tolerance: Tolerance | None = None,
    oracle: str | None = None,
    batch_size: int | None = None,
) -> DiffResult:
    tolerance = tolerance or Tolerance()
    spec = model.spec
    flavor, why = choose_oracle(spec, oracle)
    start = time.perf_counter()
    if layer_wise:
        ours = model.run(inputs, batch_size=batch_size)
    else:
        outputs = model.predict(inputs, batch_size=batch_size)
        ours = dict(zip(_output_rows(spec), outputs if isinstance(outputs, list) else [outputs]))
    engine_seconds = time.perf_counter() - start
    keras = run_keras(path, spec, inputs, flavor, keep=layer_wise, batch_size=batch_size)
    if layer_wise:
        theirs = keras.per_call
        rows = [(call.name, spec.layers[call.layer].class_name) for call in spec.calls]
    else:
        theirs = dict(zip(_output_rows(spec), keras.outputs))
        rows = [(name, "output") for name in _output_rows(spec)]
    comparison = compare_runs(ours, theirs, rows, tolerance)
    return DiffResult(
        model_path=path,
        keras_version=spec.keras_version,
        oracle=flavor,
        oracle_reason=why,
        oracle_version=keras.version,
        comparison=comparison,
        layer_wise=layer_wise,
        engine_seconds=engine_seconds,
        keras_seconds=keras.seconds,
        graph_check=keras.graph_check,
        batch=int(inputs[0].shape[0]),
    )


def _output_rows(spec) -> list[str]:
    names = []
    for ref in spec.outputs:
        name = ref.layer if ref.call == 0 else f"{ref.layer}#{ref.call}"
        names.append(name if ref.tensor == 0 else f"{name}[{ref.tensor}]")
    return names
