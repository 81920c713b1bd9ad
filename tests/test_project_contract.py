"""The small promises of the README: settings typos are refused, `python -m kerascheck`
works, and `make samples` leaves an unchanged tree alone."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from kerascheck.cli import main
from kerascheck.errors import KerascheckError
from kerascheck.settings import tolerance_policy

ROOT = os.path.join(os.path.dirname(__file__), "..")
SAMPLES = os.path.join(ROOT, "sample_models")
MODEL = os.path.join(SAMPLES, "seed004_cnn.keras")
INPUT = os.path.join(SAMPLES, "seed004_cnn.input.npy")


@pytest.mark.parametrize(
    "name, text, expected",
    [
        ("kerascheck.toml", "rtl = 1e-3\n", "unknown setting 'rtl' (did you mean 'rtol'?)"),
        ("kerascheck.toml", "[layer]\n'conv*' = { rtol = 1e-2 }\n", "did you mean 'layers'?"),
        ("kerascheck.toml", "layers = 3\n", "'layers' must be a table"),
        ("pyproject.toml", "[tool.kerascheck]\natoll = 1\n", "[tool.kerascheck]: unknown setting"),
        ("kerascheck.toml", "[layers]\n'conv*' = { rtl = 1e-2 }\n", "expected keys atol and rtol"),
    ],
)
def test_a_settings_typo_is_refused_by_name(tmp_path, name, text, expected):
    (tmp_path / name).write_text(text)
    with pytest.raises(KerascheckError) as error:
        tolerance_policy(cwd=str(tmp_path))
    assert expected in str(error.value)


def test_a_settings_typo_is_a_clean_cli_error(tmp_path):
    config = tmp_path / "ci.toml"
    config.write_text("rtol = 1e-3\natl = 1e-6\n")
    result = CliRunner().invoke(main, ["diff", MODEL, INPUT, "--config", str(config)])
    assert result.exit_code == 2
    assert "unknown setting 'atl' (did you mean 'atol'?)" in result.stderr
    assert "Traceback" not in result.output


def test_a_config_pyproject_without_a_kerascheck_table_is_refused(tmp_path):
    config = tmp_path / "pyproject.toml"
    config.write_text("[tool.black]\nline-length = 99\n")
    with pytest.raises(KerascheckError, match="expected a \\[tool.kerascheck\\] table"):
        tolerance_policy(config_path=str(config))


def test_known_settings_still_apply(tmp_path):
    (tmp_path / "kerascheck.toml").write_text("rtol = 5e-4\n[layers]\n'Dense' = { atol = 0.5 }\n")
    policy = tolerance_policy(cwd=str(tmp_path))
    assert policy.default.rtol == 5e-4
    assert policy.for_layer("dense", "Dense").atol == 0.5


def test_python_dash_m_runs_the_same_command_line():
    done = subprocess.run(
        [sys.executable, "-m", "kerascheck", "summary", MODEL],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "Total params" in done.stdout
    usage = subprocess.run(
        [sys.executable, "-m", "kerascheck", "--help"], capture_output=True, text=True, cwd=ROOT
    )
    assert usage.stdout.startswith("Usage: kerascheck ")


def test_make_samples_rewrites_a_model_only_when_its_meaning_changed(tmp_path):
    sys.path.insert(0, SAMPLES)
    try:
        import make_samples
    finally:
        sys.path.remove(SAMPLES)
    import keras

    model = make_samples.small_cnn(keras)
    make_samples.randomize(model, 3)
    path = str(tmp_path / "cnn.keras")
    assert make_samples.save_if_changed(model, path)
    before = open(path, "rb").read()
    assert not make_samples.save_if_changed(model, path)  # Keras would stamp a new date
    assert open(path, "rb").read() == before
    weights = model.get_weights()
    weights[-1] = weights[-1] + np.float32(1e-3)
    model.set_weights(weights)
    assert make_samples.save_if_changed(model, path)
    assert open(path, "rb").read() != before

    array = str(tmp_path / "x.npy")
    make_samples.save_array_if_changed(array, np.arange(4, dtype="float32"))
    stamp = os.stat(array).st_mtime_ns
    make_samples.save_array_if_changed(array, np.arange(4, dtype="float32"))
    assert os.stat(array).st_mtime_ns == stamp
