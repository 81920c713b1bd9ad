"""Tables fit the width they are given; big failing tables show their failures only.

The demo model's layer-by-layer diff (sample_models/seed000_regressor, 8 layers, run
against real Keras) is rendered at 80, 100 and 160 columns: no line may be wider
than the console, layer names and statuses stay whole, and only a wide console
shows every column.
"""

from __future__ import annotations

import io
import json
import os
import re
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner
from rich.console import Console

import kerascheck
from kerascheck.cli import main
from kerascheck.compare import Comparison, LayerDiff
from kerascheck.diff import DiffResult, diff_model
from kerascheck.engine.layers import core
from kerascheck.report.tables import audit_table, diff_table

SAMPLES = os.path.join(os.path.dirname(__file__), "..", "sample_models")
DEMO = os.path.join(SAMPLES, "seed000_regressor.keras")
CNN = os.path.join(SAMPLES, "seed004_cnn.keras")
CNN_INPUT = os.path.join(SAMPLES, "seed004_cnn.input.npy")
HEADERS = ("#", "layer", "class", "output shape", "own rel", "carried abs", "carried rel")


@pytest.fixture(scope="module")
def demo():
    x = np.load(os.path.join(SAMPLES, "seed000_regressor.input.npy"))
    return diff_model(DEMO, kerascheck.load(DEMO), [x], layer_wise=True)


def render(renderable, width: int) -> str:
    console = Console(width=width, file=io.StringIO(), highlight=False)
    console.print(renderable)
    return console.file.getvalue()


def headers(text: str) -> list[str]:
    line = next(line for line in text.splitlines() if line.startswith("┃"))
    return [cell.strip() for cell in line.strip("┃").split("┃")]


@pytest.mark.parametrize("width", [80, 100])
def test_diff_table_fits_a_narrow_terminal(demo, width):
    text = render(diff_table(demo, width), width)
    assert max(len(line) for line in text.splitlines()) <= width
    shown = headers(text)
    assert shown[0] == "layer" and "status" in shown and "carried rel" in shown
    assert "#" not in shown  # the first to go; 100 columns then fit the rest
    assert ("carried abs" in shown) == (width == 100)
    rows = [line for line in text.splitlines() if line.startswith("│")]
    assert len(rows) == len(demo.comparison.layers)  # one line each: no name wrapped
    for row, layer in zip(rows, demo.comparison.layers):
        cells = [c.strip() for c in row.strip("│").split("│")]
        assert cells[0] == layer.name and cells[-1] == "match"
    if width == 80:
        assert "shape" in shown and "4x27x3x10" in text  # abbreviated
    else:
        assert "output shape" in shown and "(4, 27, 3, 10)" in text


def test_wide_console_shows_every_column(demo):
    text = render(diff_table(demo, 160), 160)
    assert headers(text) == [*HEADERS, "status"]
    assert headers(render(diff_table(demo), 160)) == [*HEADERS, "status"]  # no width given


def test_long_names_fold_and_extra_columns_go_last(demo):
    """--dtype float64 columns and 40-character layer names at 80 columns: names wrap
    onto more lines instead of being cut, and the f64 columns outlast class and shape."""
    x = np.load(os.path.join(SAMPLES, "seed000_regressor.input.npy"))
    result = diff_model(DEMO, kerascheck.load(DEMO), [x], layer_wise=True, float64=True)
    for row in result.comparison.layers:
        row.name = f"{row.name}_".ljust(40, "x")
    text = render(diff_table(result, 80), 80)
    assert max(len(line) for line in text.splitlines()) <= 80
    shown = headers(text)
    assert "keras/f64" in shown and "engine/f64" in shown and "status" in shown
    assert "class" not in shown and "…" not in text
    first_column = "".join(
        line.strip("│").split("│")[0].strip() for line in text.splitlines() if line.startswith("│")
    )
    for row in result.comparison.layers:
        assert row.name in first_column


def _tall_failure(rows: int = 40, broken: int = 10) -> DiffResult:
    layers = [LayerDiff(f"layer_{i}", "Dense", [2, 4], "match", 0.0, 0.0) for i in range(rows)]
    for i, row in enumerate(layers):
        row.own = {"status": "mismatch" if i == broken else "match", "max_rel_diff": 0.0}
        row.status = "mismatch" if i == broken else "drift" if i > broken else "match"
    comparison = Comparison(layers)
    comparison.mark_inherited()
    return DiffResult("m.keras", "3", "keras", "", "3", comparison, True, 0, 0, 0, 2)


def test_tall_failing_table_shows_only_failures_on_a_screen():
    result = _tall_failure()
    text = render(diff_table(result, 160, height=30), 160)
    names = re.findall(r"│\s*\d+\s*│ (layer_\d+)", text)
    assert names == [f"layer_{i}" for i in range(10, 40)]  # the divergence, then its drift
    assert "showing 30 of 40 rows (only failures); --all-rows to show every row" in text
    assert "inherits divergence from layer_10" in text
    for every in (
        diff_table(result, 160, height=None),  # a file or pipe
        diff_table(result, 160, height=30, only_failures=False),  # --all-rows
        diff_table(result, 160, height=60),  # fits the screen
    ):
        assert len(re.findall(r"│ layer_\d+", render(every, 160))) == 40
    forced = render(diff_table(result, 160, only_failures=True), 160)  # --only-failures
    assert len(re.findall(r"│ layer_\d+", forced)) == 30


def test_cli_terminal_is_fitted_and_files_get_the_full_table(monkeypatch):
    """A terminal (rich's TTY_COMPATIBLE=1) of 80 x 10 gets a fitted table of failures
    only; the same run into a pipe gets every column and row."""
    original = core.Dense.call

    def off(self, x):
        y = original(self, x)
        return y + np.float32(0.1) if self.name == "dense" else y

    monkeypatch.setattr(core.Dense, "call", off)
    args = ["diff", "--layer-wise", CNN, CNN_INPUT]
    terminal = {"TTY_COMPATIBLE": "1", "COLUMNS": "80", "LINES": "10", "NO_COLOR": "1"}
    result = CliRunner(env=terminal).invoke(main, args)
    assert result.exit_code == 1, result.output
    text = re.sub(r"\x1b\[[0-9;]*m", "", result.stdout)
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "showing 2 of 7 rows (only failures)" in text
    assert "│ dense " in text and "│ dense_1 " in text and "│ conv2d " not in text
    piped = CliRunner().invoke(main, args)
    assert "#" in headers(piped.stdout) and "carried abs" in headers(piped.stdout)
    assert "│ conv2d " in piped.stdout and "only failures" not in piped.stdout
    forced = CliRunner().invoke(main, [*args, "--only-failures"])
    assert "showing 2 of 7 rows (only failures)" in forced.stdout


def test_inherited_drift_is_in_the_json(monkeypatch, tmp_path):
    original = core.Dense.call
    monkeypatch.setattr(
        core.Dense,
        "call",
        lambda self, x: original(self, x) + np.float32(0.1 * (self.name == "dense")),
    )
    report = tmp_path / "r.json"
    result = CliRunner().invoke(main, ["diff", "--layer-wise", CNN, CNN_INPUT, "--json", report])
    assert result.exit_code == 1
    rows = {r["name"]: r for r in json.loads(report.read_text())["layers"]}
    assert rows["dense_1"]["status"] == "drift" and rows["dense_1"]["inherits"] == "dense"
    assert "inherits" not in rows["dense"] and "inherits" not in rows["conv2d"]


def test_contradicting_row_flags_are_one_line_exit_2():
    result = CliRunner().invoke(main, ["diff", CNN, "--only-failures", "--all-rows"])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "error: --only-failures and --all-rows contradict; expected one of them"
    ]


def test_audit_table_fits_and_shows_failures_only(demo):
    failing = _tall_failure()
    outcome = SimpleNamespace(
        results=[demo] * 30 + [failing],
        errors={"models/broken.h5": "broken.h5: not an HDF5 file; expected a Keras model"},
    )
    text = render(audit_table(outcome, 80), 80)
    assert max(len(line) for line in text.splitlines()) <= 80
    shown = headers(text)
    assert shown[:2] == ["model", "status"] and "first divergence" in shown
    assert "seconds" not in shown
    assert headers(render(audit_table(outcome, 160), 160))[-1] == "seconds"
    short = render(audit_table(outcome, 120, height=20), 120)
    assert "showing 2 of 32 rows (only failures)" in short
    assert "│ m.keras" in short and "broken.h5" in short and "seed000" not in short
