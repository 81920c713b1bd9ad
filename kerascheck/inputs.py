"""Model inputs: reading them from files, checking them, and making seeded ones."""

from __future__ import annotations

import os

import numpy as np

from .errors import KerascheckError
from .loading.spec import ModelSpec


def shape_text(shape) -> str:
    """An input shape as users read it: `(batch, 28, 28, 1)`, `?` for any size."""
    return "(" + ", ".join(["batch", *("?" if d is None else str(d) for d in shape)]) + ")"


def _describe(spec: ModelSpec) -> str:
    return ", ".join(f"'{i.name}' {shape_text(i.shape)} {i.dtype}" for i in spec.inputs)


def check_inputs(spec: ModelSpec, x, dtype=np.float32) -> list[np.ndarray]:
    """Return the inputs as a list of arrays in model-input order, or say what is wrong.

    Accepts one array (one-input models), a list/tuple in input order, or a dict
    keyed by input names.
    """
    expected = spec.inputs
    if isinstance(x, dict):
        missing = [i.name for i in expected if i.name not in x]
        if missing:
            raise KerascheckError(
                f"expected inputs named {[i.name for i in expected]}, missing {missing}; "
                f"found {sorted(x)}"
            )
        arrays = [x[i.name] for i in expected]
    elif isinstance(x, (list, tuple)):
        arrays = list(x)
    else:
        arrays = [x]
    if len(arrays) != len(expected):
        raise KerascheckError(
            f"the model expects {len(expected)} input(s) ({_describe(spec)}), found {len(arrays)}"
        )
    checked = []
    for inp, array in zip(expected, arrays):
        array = np.asarray(array)
        if array.dtype.kind not in "biuf":
            raise KerascheckError(
                f"input '{inp.name}' must be numeric ({inp.dtype}), found dtype {array.dtype}"
            )
        if array.ndim == len(inp.shape):  # a single sample without its batch axis
            array = array[None]
        fits = array.ndim == len(inp.shape) + 1 and all(
            d is None or d == s for d, s in zip(inp.shape, array.shape[1:])
        )
        if not fits:
            raise KerascheckError(
                f"input '{inp.name}' must have shape "
                f"{shape_text(inp.shape)}, "
                f"found {array.shape}"
            )
        if "int" in inp.dtype:
            if array.dtype.kind == "f" and not np.all(np.mod(array, 1) == 0):
                raise KerascheckError(
                    f"input '{inp.name}' must hold integers ({inp.dtype}), found fractional values"
                )
            checked.append(array.astype(inp.dtype))
        else:
            checked.append(array.astype(dtype, copy=False))
    batches = {a.shape[0] for a in checked}
    if len(batches) > 1:
        raise KerascheckError(f"all inputs must have the same batch size, found {sorted(batches)}")
    return checked


def random_inputs(spec: ModelSpec, batch: int = 2, seed: int = 0, size: int = 32) -> list[np.ndarray]:
    """Seeded inputs with negatives and values past activation clamp points.

    Standard normal times 2 reaches beyond relu6/hard_sigmoid knees (|x| > 3)
    in a few percent of entries; variable dimensions get `size`.
    """
    rng = np.random.default_rng(seed)
    arrays = []
    for inp in spec.inputs:
        shape = (batch, *(size if d is None else d for d in inp.shape))
        if "int" in inp.dtype:
            arrays.append(rng.integers(0, 2, size=shape).astype(inp.dtype))
        else:
            arrays.append((2.0 * rng.standard_normal(shape)).astype(inp.dtype))
    return arrays


def read_inputs(path: str, spec: ModelSpec) -> list[np.ndarray]:
    """Read `.npy` (one input) or `.npz` (keyed by input name, or arr_0, arr_1...)."""
    if not os.path.exists(path):
        raise KerascheckError(f"{path}: no such input file; expected a .npy or .npz file")
    try:
        loaded = np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise KerascheckError(f"{path}: expected a numeric .npy or .npz file ({exc})") from None
    except (OSError, EOFError) as exc:
        raise KerascheckError(f"{path}: expected a .npy or .npz file, found unreadable data ({exc})") from None
    if isinstance(loaded, np.ndarray):
        if len(spec.inputs) != 1:
            raise KerascheckError(
                f"{path}: the model has {len(spec.inputs)} inputs ({_describe(spec)}); "
                "give them in one .npz keyed by input name"
            )
        return check_inputs(spec, loaded)
    with loaded:
        keys = list(loaded.keys())
        names = [i.name for i in spec.inputs]
        if all(n in keys for n in names):
            return check_inputs(spec, {n: loaded[n] for n in names})
        positional = [f"arr_{k}" for k in range(len(names))]
        if all(p in keys for p in positional):
            return check_inputs(spec, [loaded[p] for p in positional])
        missing = [n for n in names if n not in keys]
        raise KerascheckError(
            f"{path}: expected arrays named {names} (or arr_0..arr_{len(names) - 1}), "
            f"missing {missing}; found {keys}"
        )
