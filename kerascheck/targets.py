"""Training targets and sample weights read from `.npy` / `.npz` files, for `grad`."""

from __future__ import annotations

import os

import numpy as np

from .errors import KerascheckError
from .loading.spec import ModelSpec


def read_targets(path: str, spec: ModelSpec) -> list[np.ndarray]:
    """`.npy` for a one-output model; `.npz` keyed by output name (or arr_0, arr_1, ...)."""
    loaded = _load(path, "TARGET")
    names = spec.output_names
    if isinstance(loaded, np.ndarray):
        if len(names) != 1:
            raise KerascheckError(
                f"{path}: expected one target per output {names} in an .npz keyed by output "
                "name, found a single .npy array"
            )
        return [np.asarray(loaded)]
    with loaded:
        keys = list(loaded.keys())
        positional = [f"arr_{i}" for i in range(len(names))]
        chosen = names if all(n in keys for n in names) else positional
        if not all(k in keys for k in chosen):
            raise KerascheckError(
                f"{path}: expected target arrays named {names} (or {', '.join(positional)}), "
                f"found {keys}"
            )
        return [np.asarray(loaded[k]) for k in chosen]


def read_sample_weight(path: str, batch: int) -> np.ndarray:
    loaded = _load(path, "--sample-weight")
    if not isinstance(loaded, np.ndarray):
        raise KerascheckError(f"{path}: expected a .npy array of sample weights, found an .npz")
    weights = np.asarray(loaded, dtype=np.float32)
    if weights.ndim == 0 or weights.shape[0] != batch:
        raise KerascheckError(
            f"{path}: expected sample weights of shape ({batch},) (one per sample), "
            f"found {weights.shape}"
        )
    return weights


def _load(path: str, what: str):
    if not os.path.isfile(path):
        raise KerascheckError(f"{path}: no such file; expected a .npy or .npz for {what}")
    from .inputs import load_arrays

    return load_arrays(path)
