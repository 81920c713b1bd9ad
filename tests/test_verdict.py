"""The verdict must be trustworthy.

A layer is broken on purpose in the engine (20 % off, or 1 % for the outputs-only
check), with Keras as the reference, and the verdict is read back:

- drift is called rounding only when every own error is at rounding level; a 20 %
  own error accepted by a loosened --layer-tol is "within the tolerances in force";
- the verdict names the tolerances used, not only the default;
- the model outputs' end-to-end error is part of every verdict: `--layer-wise`
  never passes what `diff` without it fails;
- an outputs-only mismatch names the output layer's class and suggests --layer-wise.
"""

from __future__ import annotations

import json
import os
from xml.etree import ElementTree

import numpy as np
import pytest
from click.testing import CliRunner

from kerascheck.cli import main
from kerascheck.compare import Comparison, LayerDiff, Tolerance
from kerascheck.diff import ROUNDING_REL, DiffResult
from kerascheck.engine.layers import conv, core
from kerascheck.report.tables import diff_table

SAMPLES = os.path.join(os.path.dirname(__file__), "..", "sample_models")
MODEL = os.path.join(SAMPLES, "seed004_cnn.keras")  # conv2d ... dense, dense_1 (output)
INPUT = os.path.join(SAMPLES, "seed004_cnn.input.npy")


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result, " ".join(result.stdout.split())  # the verdict, unwrapped


@pytest.fixture
def conv_20_percent_off(monkeypatch):
    """The engine's first Conv2D output scaled by 1.2: a wrong layer, 20 % off."""
    original = conv.Conv2D.call

    def off(self, x):
        y = original(self, x)
        return y * np.float32(1.2) if self.name == "conv2d" else y

    monkeypatch.setattr(conv.Conv2D, "call", off)


def test_loosened_tolerance_drift_is_not_called_rounding(conv_20_percent_off, tmp_path):
    """conv2d's 20 % is accepted by its own tolerance, and so is the output's carried
    error by the output's: the run passes, but the verdict must not call the drift of
    the layers in between rounding, and must name the tolerances that let it pass."""
    report = tmp_path / "r.json"
    result, text = run(
        "diff",
        "--layer-wise",
        MODEL,
        INPUT,
        "--layer-tol",
        "conv2d:rtol=0.5",
        "--layer-tol",
        "dense_1:rtol=0.5",
        "--json",
        report,
    )
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    rows = {r["name"]: r for r in data["layers"]}
    assert 0.1 < rows["conv2d"]["own"]["max_rel_diff"] < 0.5  # 20 % off, within 0.5
    assert rows["conv2d"]["own"]["rounding_level"] == ROUNDING_REL["float32"]
    assert rows["dense"]["status"] == "drift"  # default tolerance, fed a 20 % error
    assert data["drift"]["rounding"] is False
    assert data["drift"]["own_error_above_rounding"] == ["conv2d"]
    assert "rounding amplified" not in text and "not a wrong layer" not in text
    assert "within the tolerances in force, not explained by rounding" in text
    assert "above rounding level at conv2d own" in text and "rtol=0.5" in text
    # (b) the main line does not claim one tolerance for every layer
    assert "every layer's own error within its tolerance (default atol=1e-05" in text
    assert "2 with their own, below" in text
    assert "per-layer tolerances in force: conv2d rtol=0.5, dense_1 rtol=0.5" in text


def test_end_to_end_error_fails_a_layer_wise_run(conv_20_percent_off, tmp_path):
    """Without a tolerance for the output, its 20 % end-to-end error fails the run with
    its own reason, exactly as the outputs-only diff fails it."""
    report, junit = tmp_path / "r.json", tmp_path / "r.xml"
    plain, _ = run("diff", MODEL, INPUT, "--layer-tol", "conv2d:rtol=0.5")
    assert plain.exit_code == 1
    result, text = run(
        "diff", "--layer-wise", MODEL, INPUT, "--layer-tol", "conv2d:rtol=0.5",
        "--json", report, "--junit", junit,
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    data = json.loads(report.read_text())
    assert data["status"] == "mismatch" and data["first_divergence"] is None
    assert all(r["status"] in ("match", "drift") for r in data["layers"])
    assert data["reason"].startswith("end-to-end output error: output 'dense_1' differs")
    (output,) = data["end_to_end"]
    assert output["name"] == "dense_1" and output["class_name"] == "Dense"
    assert output["status"] == "mismatch" and output["max_rel_diff"] > 1e-2
    assert "MISMATCH: end-to-end output error: output 'dense_1'" in text
    assert "what diff without --layer-wise judges" in text
    failed = [
        case.get("name")
        for case in ElementTree.parse(junit).getroot().iter("testcase")
        if case.find("failure") is not None
    ]
    assert failed == ["end-to-end outputs"]


def test_every_layer_wise_verdict_reports_the_end_to_end_error(tmp_path):
    report = tmp_path / "r.json"
    result, text = run("diff", "--layer-wise", MODEL, INPUT, "--json", report)
    assert result.exit_code == 0, result.output
    (output,) = json.loads(report.read_text())["end_to_end"]
    assert output["status"] == "match" and output["max_rel_diff"] < 1e-4
    assert "model outputs end to end within tolerance (up to" in text
    assert "every compared output within atol=1e-05 + rtol=0.0001 x max|keras|" in text


def test_outputs_only_mismatch_names_the_class_and_suggests_layer_wise(monkeypatch, tmp_path):
    original = core.Dense.call

    def off(self, x):
        y = original(self, x)
        return y * np.float32(1.01) if self.name == "dense" else y

    monkeypatch.setattr(core.Dense, "call", off)
    report = tmp_path / "r.json"
    result, text = run("diff", MODEL, INPUT, "--json", report)
    assert result.exit_code == 1, result.output
    (row,) = json.loads(report.read_text())["layers"]
    assert row["name"] == "dense_1" and row["class_name"] == "Dense"
    assert "│ Dense " in result.stdout and "output" not in row["class_name"]
    assert f"run `kerascheck diff --layer-wise {MODEL} {INPUT}` (same options)" in text
    assert "to find the first diverging layer" in text


def _drifting(own_rel: float) -> DiffResult:
    """Two layers, the second drifting (carried error 1e-3, own error `own_rel`)."""
    rows = [
        LayerDiff("a", "Dense", [2, 3], "match", 1e-7, 1e-7, own={"max_rel_diff": 1e-7}),
        LayerDiff("b", "Dense", [2, 3], "drift", 1e-3, 1e-3, own={"max_rel_diff": own_rel}),
    ]
    for row in rows:
        row.own.update(status="match", rounding_level=ROUNDING_REL["float32"])
    end = LayerDiff("b", "Dense", [2, 3], "match", 1e-5, 1e-5)
    comparison = Comparison(rows, Tolerance(1e-5, 1e-2), end_to_end=[end])
    return DiffResult("m.keras", "3", "keras", "", "3", comparison, True, 0, 0, 0, 2)


def _verdict(result) -> str:
    from rich.console import Console

    console = Console(width=200, record=True, file=open(os.devnull, "w"))
    console.print(diff_table(result))
    return " ".join(console.export_text().split())


def test_drift_is_rounding_only_at_rounding_level():
    assert "rounding amplified along the network, not a wrong layer" in _verdict(_drifting(1e-7))
    text = _verdict(_drifting(5e-5))  # within rtol=1e-2, but 5x float32's rounding level
    assert "rounding amplified" not in text
    assert "above rounding level at b own 5.00e-05 (rounding level 1e-05" in text
