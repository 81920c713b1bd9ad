"""CI outputs: JUnit and Markdown parsed back, saved outputs, the plot, settings files, audit."""

from __future__ import annotations

import json
import os
import shutil
from xml.etree import ElementTree

import numpy as np
import pytest
from click.testing import CliRunner

import kerascheck
from kerascheck.cli import main
from kerascheck.compare import Tolerance
from kerascheck.engine.layers import core
from kerascheck.settings import tolerance_policy

SAMPLES = os.path.join(os.path.dirname(__file__), "..", "sample_models")
MODEL = os.path.join(SAMPLES, "seed004_cnn.keras")
INPUT = os.path.join(SAMPLES, "seed004_cnn.input.npy")


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_junit_has_one_testcase_per_layer_call(tmp_path):
    junit = tmp_path / "report.xml"
    assert run("diff", MODEL, INPUT, "--layer-wise", "--junit", junit).exit_code == 0
    suite = ElementTree.parse(junit).getroot().find("testsuite")
    names = [case.get("name") for case in suite.findall("testcase")]
    assert names == [call.name for call in kerascheck.load(MODEL).spec.calls]
    assert suite.get("failures") == "0" and suite.get("tests") == str(len(names))


def test_junit_and_markdown_report_a_divergence(tmp_path, monkeypatch):
    original = core.Dense.call

    def broken(self, x):
        y = original(self, x)
        return y + np.float32(0.1) if self.name == "dense" else y

    monkeypatch.setattr(core.Dense, "call", broken)
    junit, markdown = tmp_path / "report.xml", tmp_path / "summary.md"
    result = run("diff", MODEL, INPUT, "--layer-wise", "--junit", junit, "--markdown", markdown)
    assert result.exit_code == 1
    suite = ElementTree.parse(junit).getroot().find("testsuite")
    failed = [c.get("name") for c in suite.findall("testcase") if c.find("failure") is not None]
    assert failed == ["dense"]  # the broken layer; the one it feeds only drifts
    drift = suite.find("testcase[@name='dense_1']/system-out").text
    assert "status=drift" in drift
    text = suite.find("testcase[@name='dense']/failure").text
    assert "max_abs_diff=" in text and "own_status=mismatch" in text
    summary = markdown.read_text()
    assert "❌" in summary and "**First divergence:** `dense`" in summary
    assert "| `dense_1` | Dense |" in summary and "| drift |" in summary


def test_save_outputs_holds_both_sides(tmp_path):
    saved = tmp_path / "outputs.npz"
    assert run("diff", MODEL, INPUT, "--layer-wise", "--save-outputs", saved).exit_code == 0
    engine = kerascheck.load(MODEL).run(np.load(INPUT))
    with np.load(saved) as data:
        assert sorted(data.files) == sorted(
            [f"keras/{n}" for n in engine] + [f"numpy/{n}" for n in engine]
        )
        for name, value in engine.items():
            np.testing.assert_array_equal(data[f"numpy/{name}"], value)
            np.testing.assert_allclose(data[f"keras/{name}"], value, rtol=1e-4, atol=1e-5)


def test_plot_is_written(tmp_path):
    plot = tmp_path / "errors.png"
    assert run("diff", MODEL, INPUT, "--layer-wise", "--plot", plot).exit_code == 0
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_dtype_float64_adds_ground_truth_columns(tmp_path):
    report = tmp_path / "r.json"
    result = run("diff", MODEL, INPUT, "--layer-wise", "--dtype", "float64", "--json", report)
    assert result.exit_code == 0
    assert "engine/f64" in result.stdout and "keras/f64" in result.stdout
    rows = json.loads(report.read_text())["layers"]
    assert all({"keras_max_rel_diff", "engine_max_rel_diff"} <= set(r["float64"]) for r in rows)


def test_input_layout_channels_first(tmp_path):
    nchw = tmp_path / "nchw.npy"
    np.save(nchw, np.moveaxis(np.load(INPUT), -1, 1))
    plain = run("predict", MODEL, INPUT, "-o", tmp_path / "a.npy")
    moved = run(
        "predict", MODEL, nchw, "--input-layout", "channels_first", "-o", tmp_path / "b.npy"
    )
    assert plain.exit_code == moved.exit_code == 0
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy"))


def test_settings_file_and_layer_overrides(tmp_path):
    (tmp_path / "pyproject.toml").write_text(
        "[tool.kerascheck]\natol = 1e-6\nrtol = 1e-3\n"
        '[tool.kerascheck.layers]\n"conv*" = { rtol = 1e-2 }\n'
    )
    policy = tolerance_policy(cwd=str(tmp_path))
    assert policy.default == Tolerance(1e-6, 1e-3)
    assert policy.for_layer("conv2d_1", "Conv2D") == Tolerance(1e-6, 1e-2)
    assert policy.for_layer("dense", "Dense") == Tolerance(1e-6, 1e-3)
    (tmp_path / "kerascheck.toml").write_text('rtol = 5e-4\n[layers]\n"Dense" = { atol = 0.5 }\n')
    policy = tolerance_policy(atol=2e-5, layer_tols=("dense_1:rtol=0.1",), cwd=str(tmp_path))
    assert policy.default == Tolerance(2e-5, 5e-4)  # the command line wins over the file
    assert policy.for_layer("dense_1", "Dense") == Tolerance(2e-5, 0.1)  # first match wins
    assert policy.for_layer("dense", "Dense") == Tolerance(0.5, 5e-4)


def test_layer_tolerance_override_turns_a_divergence_into_a_match(tmp_path, monkeypatch):
    original = core.Dense.call

    def slightly_off(self, x):
        y = original(self, x)
        return y * np.float32(1.001) if self.name == "dense_1" else y

    monkeypatch.setattr(core.Dense, "call", slightly_off)
    assert run("diff", MODEL, INPUT, "--layer-wise").exit_code == 1
    assert (
        run("diff", MODEL, INPUT, "--layer-wise", "--layer-tol", "dense_1:rtol=1e-2").exit_code == 0
    )


def test_bad_layer_tolerance_is_a_clean_error():
    result = run("diff", MODEL, INPUT, "--layer-tol", "dense")
    assert result.exit_code == 2 and "PATTERN:rtol=" in result.stderr


@pytest.fixture
def audit_folder(tmp_path):
    folder = tmp_path / "models"
    folder.mkdir()
    for name in ("seed004_cnn", "seed001_channels_first"):
        shutil.copy(os.path.join(SAMPLES, f"{name}.keras"), folder)
        shutil.copy(os.path.join(SAMPLES, f"{name}.input.npy"), folder)
    (folder / "broken.h5").write_bytes(b"not a model")
    return folder


def test_audit_mixes_good_divergent_and_broken_models(audit_folder, tmp_path, monkeypatch):
    original = core.Dense.call

    def broken(self, x):
        y = original(self, x)
        return y + np.float32(1.0) if self.name == "dense_1" else y  # only in seed004_cnn

    monkeypatch.setattr(core.Dense, "call", broken)
    report, junit = tmp_path / "audit.json", tmp_path / "audit.xml"
    # --jobs 1: the checks run in this process, where the engine is patched
    result = run("audit", audit_folder, "--json", report, "--junit", junit, "--jobs", "1")
    assert result.exit_code == 2  # one model could not be checked; the others still were
    data = json.loads(report.read_text())
    statuses = {os.path.basename(m["model"]): m["status"] for m in data["models"]}
    assert statuses == {"seed001_channels_first.keras": "match", "seed004_cnn.keras": "mismatch"}
    assert [os.path.basename(e["model"]) for e in data["errors"]] == ["broken.h5"]
    suites = ElementTree.parse(junit).getroot().findall("testsuite")
    assert len(suites) == 3
    assert "1 match, 1 diverge, 1 could not be checked" in result.stdout


def test_audit_exit_codes_without_errors(audit_folder):
    os.remove(audit_folder / "broken.h5")
    assert run("audit", audit_folder).exit_code == 0
