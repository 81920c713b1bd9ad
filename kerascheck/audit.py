"""`kerascheck audit`: check many model files in one run, as a CI step would.

Each model is compared layer by layer with its own inputs (`<model>.input.npy`
or `.npz` beside it, as `sample_models/` ships them) or seeded random inputs.
A model that cannot be checked is recorded with its error and the others are
still checked.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

from .compare import TolerancePolicy
from .diff import DiffResult, diff_model
from .errors import KerascheckError

MODEL_SUFFIXES = (".keras", ".h5", ".hdf5")


@dataclass
class AuditResult:
    results: list[DiffResult] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        if self.errors:
            return 2
        return 1 if any(r.status == "mismatch" for r in self.results) else 0


def find_models(paths: list[str]) -> list[str]:
    """Model files named on the command line, and those found under directories."""
    found = []
    for path in paths:
        if os.path.isdir(path):
            for root, _, files in sorted(os.walk(path)):
                found += [
                    os.path.join(root, f) for f in sorted(files) if f.endswith(MODEL_SUFFIXES)
                ]
        else:
            found.append(path)  # a missing or odd file becomes that model's error
    return found


def input_file(model_path: str) -> str | None:
    stem = model_path.rsplit(".", 1)[0]
    for candidate in (f"{stem}.input.npy", f"{stem}.input.npz"):
        if os.path.exists(candidate):
            return candidate
    return None


@dataclass(frozen=True)
class AuditSettings:
    """How each model is checked; picklable, so worker processes get the same."""

    policy: TolerancePolicy
    seed: int = 0
    batch: int = 2
    oracle: str | None = None
    batch_size: int | None = None
    verbose: bool = False


def check_model(path: str, settings: AuditSettings) -> tuple[DiffResult | None, str | None]:
    """One model's layer-by-layer check: (result, None), or (None, its one-line error)."""
    from . import load
    from .engine.layers.recurrent import stateful_batch
    from .inputs import random_inputs, read_inputs

    try:
        model = load(path)
        source = input_file(path)
        inputs = (
            read_inputs(source, model.spec)
            if source
            # a stateful model runs one batch of the size it was saved for
            else random_inputs(
                model.spec, batch=stateful_batch(model.spec) or settings.batch, seed=settings.seed
            )
        )
        result = diff_model(
            path,
            model,
            inputs,
            layer_wise=True,
            tolerance=settings.policy,
            oracle=settings.oracle,
            batch_size=settings.batch_size,
        )
        return result, None
    except KerascheckError as exc:
        return None, str(exc)


def audit(
    paths: list[str],
    settings: AuditSettings,
    jobs: int = 1,
    timeout: float | None = None,
    scheduler: str | None = None,
    on_start: Callable[[str], None] | None = None,
    on_model: Callable[[str], None] | None = None,
) -> AuditResult:
    """Check every model under `paths`: in this process (`jobs` 1, no `timeout`), in
    `jobs` worker processes, or on the Dask cluster at `scheduler`. Results keep the
    order of `find_models` whatever order they finish in."""
    models = find_models(paths)
    if scheduler is not None:
        from .audit_pool import run_dask

        outcomes = run_dask(models, settings, scheduler, timeout, on_start, on_model)
    elif jobs > 1 or timeout is not None:
        from .audit_pool import run_local

        outcomes = run_local(models, settings, jobs, timeout, on_start, on_model)
    else:
        outcomes = []
        for path in models:
            if on_start is not None:
                on_start(path)
            outcomes.append(check_model(path, settings))
            if on_model is not None:
                on_model(path)
    outcome = AuditResult()
    for path, (result, error) in zip(models, outcomes):
        if error is not None:
            outcome.errors[path] = error
        else:
            outcome.results.append(result)
    return outcome
