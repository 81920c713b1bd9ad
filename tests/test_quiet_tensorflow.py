"""kerascheck's stderr holds kerascheck's own lines only: TensorFlow's start-up chatter
(oneDNN notices, CUDA lines, absl's InitializeLog warning) and Keras' Python warnings
are muted while the oracle imports, loads and runs, unless `--verbose` is given.

Each check runs the real executable in a fresh process whose environment does not
set TF_CPP_MIN_LOG_LEVEL, as a user's shell would not.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from helpers import build_model, save

KERASCHECK = os.path.join(os.path.dirname(sys.executable), "kerascheck")
NOISY = ("TF_CPP_MIN_LOG_LEVEL", "ABSL_MIN_LOG_LEVEL", "GRPC_VERBOSITY", "TF_ENABLE_ONEDNN_OPTS")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("quiet"))
    return {
        flavor: save(
            build_model(flavor, lambda k: k.layers.Dense(3, activation="tanh"), (5,)), root, flavor
        )
        for flavor in ("keras", "tf_keras")
    }


def run(*args):
    env = {k: v for k, v in os.environ.items() if k not in NOISY}
    return subprocess.run([KERASCHECK, *args], capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.parametrize("flavor", ["keras", "tf_keras"])
def test_diff_stderr_is_empty(models, flavor):
    result = run("diff", models[flavor], "--layer-wise")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == ""
    assert "MATCH" in result.stdout


def test_audit_and_keras_predict_stderr_is_empty(models):
    audit = run("audit", models["keras"], models["tf_keras"])
    assert audit.returncode == 0, audit.stdout + audit.stderr
    # audit's own progress bar (rich, transient) leaves one newline when not on a terminal
    assert audit.stderr.strip() == ""
    predict = run("predict", models["tf_keras"], "--engine", "keras")
    assert predict.returncode == 0, predict.stdout + predict.stderr
    assert predict.stderr == ""


def test_errors_still_reach_stderr(models, tmp_path):
    result = run("diff", models["keras"], str(tmp_path / "missing.npy"))
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1


def test_verbose_shows_tensorflow_messages(models):
    quiet = run("diff", models["keras"])
    loud = run("--verbose", "diff", models["keras"])
    assert quiet.returncode == loud.returncode == 0, loud.stderr
    assert quiet.stderr == "" and loud.stderr != ""
