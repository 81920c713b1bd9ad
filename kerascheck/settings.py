"""Tolerance settings from the command line and from a config file, for CI.

Precedence: command-line options, then `--config FILE`, then `kerascheck.toml`
in the working directory, then `[tool.kerascheck]` in its `pyproject.toml`,
then the documented defaults. Both files use the same keys:

    [tool.kerascheck]            # or the top level of kerascheck.toml
    atol = 1e-5
    rtol = 1e-4

    [tool.kerascheck.layers]     # per-layer overrides: glob on layer name or class
    "conv2d*" = { rtol = 1e-3 }
    "Softmax" = { atol = 1e-6 }
"""

from __future__ import annotations

import difflib
import os

from .compare import Tolerance, TolerancePolicy
from .errors import KerascheckError


def _read_toml(path: str) -> dict:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        raise KerascheckError(f"{path}: reading TOML settings needs Python 3.11 or newer")
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise KerascheckError(f"{path}: expected a readable TOML file ({exc})")


def file_settings(config_path: str | None = None, cwd: str = ".") -> tuple[dict, str | None]:
    """The kerascheck table and where it came from (empty when there is none)."""
    if config_path:
        data = _read_toml(config_path)
        if "tool" in data:
            table = data["tool"].get("kerascheck") if isinstance(data["tool"], dict) else None
            if not isinstance(table, dict):
                raise KerascheckError(
                    f"{config_path}: expected a [tool.kerascheck] table, found none"
                )
            return _checked(table, config_path), config_path
        return _checked(data, config_path), config_path
    local = os.path.join(cwd, "kerascheck.toml")
    if os.path.exists(local):
        return _checked(_read_toml(local), local), local
    pyproject = os.path.join(cwd, "pyproject.toml")
    if os.path.exists(pyproject):
        table = _read_toml(pyproject).get("tool", {}).get("kerascheck")
        if table is not None:
            return _checked(table, f"{pyproject} [tool.kerascheck]"), pyproject
    return {}, None


KNOWN_KEYS = ("atol", "rtol", "layers")


def _checked(table, where: str) -> dict:
    """The settings table, or one line naming a key kerascheck does not know (a typo
    silently ignored would leave the default tolerance in force)."""
    if not isinstance(table, dict):
        raise KerascheckError(f"{where}: expected a table of settings, found {table!r}")
    for key in table:
        if key not in KNOWN_KEYS:
            close = difflib.get_close_matches(str(key), KNOWN_KEYS, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise KerascheckError(
                f"{where}: unknown setting '{key}'{hint}; expected {', '.join(KNOWN_KEYS)}"
            )
    if not isinstance(table.get("layers", {}), dict):
        raise KerascheckError(f"{where}: 'layers' must be a table of per-layer tolerances")
    return table


def _tolerance(values: dict, base: Tolerance, where: str) -> Tolerance:
    unknown = set(values) - {"atol", "rtol"}
    if unknown:
        raise KerascheckError(f"{where}: expected keys atol and rtol, found {sorted(unknown)}")
    try:
        atol = float(values.get("atol", base.atol))
        rtol = float(values.get("rtol", base.rtol))
    except (TypeError, ValueError):
        raise KerascheckError(f"{where}: expected numbers for atol/rtol, found {values}")
    if atol < 0 or rtol < 0:
        raise KerascheckError(f"{where}: expected non-negative tolerances, found {values}")
    return Tolerance(atol, rtol)


def parse_layer_tolerance(text: str, base: Tolerance) -> tuple[str, Tolerance]:
    """`PATTERN:rtol=1e-3,atol=1e-4` from the command line."""
    pattern, sep, rest = text.partition(":")
    if not sep or not pattern:
        raise KerascheckError(
            f"--layer-tol expects PATTERN:rtol=R[,atol=A] (e.g. 'conv*:rtol=1e-3'), found '{text}'"
        )
    values = {}
    for item in rest.split(","):
        key, eq, value = item.partition("=")
        if not eq:
            raise KerascheckError(f"--layer-tol: expected key=value in '{text}', found '{item}'")
        values[key.strip()] = value.strip()
    return pattern, _tolerance(values, base, f"--layer-tol '{text}'")


def tolerance_policy(
    atol: float | None = None,
    rtol: float | None = None,
    layer_tols: tuple[str, ...] = (),
    config_path: str | None = None,
    cwd: str = ".",
) -> TolerancePolicy:
    table, where = file_settings(config_path, cwd)
    default = _tolerance(
        {k: v for k, v in table.items() if k in ("atol", "rtol")}, Tolerance(), where or ""
    )
    default = Tolerance(
        default.atol if atol is None else atol, default.rtol if rtol is None else rtol
    )
    overrides = [parse_layer_tolerance(text, default) for text in layer_tols]
    for pattern, values in (table.get("layers") or {}).items():
        if not isinstance(values, dict):
            raise KerascheckError(f"{where}: layers.{pattern} must be a table of atol/rtol")
        overrides.append((pattern, _tolerance(values, default, f"{where}: layers.{pattern}")))
    return TolerancePolicy(default, tuple(overrides))
