"""The `kerascheck` executable ends without tearing TensorFlow down (`cli.entry`), and
that loses nothing: the whole report reaches a pipe, report files are complete, and
the exit code is the command's own (0 match, 1 mismatch, 2 bad input)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import build_model, save

KERASCHECK = os.path.join(os.path.dirname(sys.executable), "kerascheck")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("exit"))
    layer = lambda k: k.layers.Dense(3, activation="tanh", name="out")  # noqa: E731
    path = save(build_model("keras", layer, (5,)), root, "keras")
    return root, path


def run(*args):
    return subprocess.run([KERASCHECK, *args], capture_output=True, text=True, timeout=300)


def test_a_match_prints_everything_and_exits_0(model):
    root, path = model
    report = os.path.join(root, "report.json")
    result = run("diff", "--layer-wise", path, "--json", report)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "MATCH" in result.stdout
    assert "wall " in result.stdout.splitlines()[-1]  # the last line: the phases' times
    with open(report) as f:
        assert json.load(f)["status"] == "match"


def test_a_mismatch_exits_1_and_the_error_exits_2(model, tmp_path):
    _, path = model
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, out=np.full((2, 3), 5.0, dtype="float32"))
    result = run("diff", path, "--batch", "2", "--against", str(wrong), "--layer-wise")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "MISMATCH" in result.stdout
    missing = run("diff", path, str(tmp_path / "missing.npy"))
    assert missing.returncode == 2 and missing.stderr.startswith("error: ")
