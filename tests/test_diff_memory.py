"""`diff --layer-wise` memory: batches sized from the model's activations and the limit.

The batch is chosen so that every layer's output from both sides would fit a share
of `--max-memory` (the layer-by-layer walk holds far less: only the values later
calls read); peak resident memory then stays flat in the number of samples, and
the statistics equal those of one big batch.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import keras_module, randomize_weights

import kerascheck
from kerascheck import KerascheckError
from kerascheck.diff import ACTIVATION_SHARE, COPIES_HELD, diff_model, fitting_batch
from kerascheck.limits import ENV_MAX_MEMORY


@pytest.fixture(scope="module")
def conv_model(tmp_path_factory):
    k = keras_module("keras")
    model = k.Sequential(
        [
            k.Input((48, 48, 3)),
            k.layers.Conv2D(32, 3, padding="same", activation="relu"),
            k.layers.Conv2D(32, 3, padding="same"),
            k.layers.BatchNormalization(),
            k.layers.GlobalAveragePooling2D(),
            k.layers.Dense(3),
        ]
    )
    randomize_weights(model)
    path = str(tmp_path_factory.mktemp("memory") / "conv.keras")
    model.save(path)
    return path


def test_the_batch_fits_half_the_limit(conv_model, monkeypatch):
    model = kerascheck.load(conv_model)
    x = np.zeros((100, 48, 48, 3), np.float32)
    # conv, conv and BN outputs are 48*48*32 float32 a sample; pooling and dense small
    held = (3 * 48 * 48 * 32 + 32 + 3) * 4 * COPIES_HELD
    monkeypatch.setenv(ENV_MAX_MEMORY, str(256 * 2**20))
    small = fitting_batch(model, [x])
    monkeypatch.setenv(ENV_MAX_MEMORY, str(1024 * 2**20))
    large = fitting_batch(model, [x])
    budget = 256 * 2**20 * ACTIVATION_SHARE
    assert 1 <= small < budget // held  # the working memory (windows) counts too
    assert 3.5 * small <= large <= 4.5 * small + 1


def test_capped_batches_give_the_numbers_of_one_batch(conv_model, monkeypatch):
    model = kerascheck.load(conv_model)
    x = np.random.default_rng(0).normal(0, 3, (40, 48, 48, 3)).astype(np.float32)
    whole = diff_model(conv_model, model, [x], layer_wise=True)
    monkeypatch.setenv(ENV_MAX_MEMORY, str(128 * 2**20))
    capped = diff_model(conv_model, model, [x], layer_wise=True)
    assert whole.batches == 1 and capped.batches == math.ceil(40 / fitting_batch(model, [x]))
    for a, b in zip(whole.comparison.layers, capped.comparison.layers):
        # every sample counted in both; the worst element may move by float32 rounding,
        # as BLAS blocks a 4-sample batch differently from a 40-sample one
        assert (a.status, a.output_shape) == (b.status, b.output_shape) == ("match", a.output_shape)
        assert b.output_shape[0] == 40
        assert 0.5 * a.max_abs_diff <= b.max_abs_diff <= 2 * a.max_abs_diff + 1e-6, a.name


def test_a_model_that_does_not_fit_one_sample_is_refused(conv_model, monkeypatch):
    monkeypatch.setenv(ENV_MAX_MEMORY, str(2**20))
    model = kerascheck.load(conv_model)
    with pytest.raises(
        KerascheckError, match=f"per sample .* over {ACTIVATION_SHARE:.0%} of the memory limit"
    ):
        fitting_batch(model, [np.zeros((4, 48, 48, 3), np.float32)])


PEAK = """
import resource, subprocess, sys
subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)
"""


def _peak(conv_model, tmp_path, samples):
    x = np.random.default_rng(1).normal(0, 3, (samples, 48, 48, 3)).astype(np.float32)
    np.save(tmp_path / f"x{samples}.npy", x)
    report = tmp_path / f"r{samples}.json"
    kerascheck_cli = os.path.join(os.path.dirname(sys.executable), "kerascheck")
    command = [kerascheck_cli, "--max-memory", "400M", "diff", "--layer-wise", conv_model]
    command += [str(tmp_path / f"x{samples}.npy"), "--json", str(report), "--batch-size", "100000"]
    out = subprocess.run([sys.executable, "-c", PEAK, *command], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert json.loads(report.read_text())["status"] == "match"
    return int(out.stdout.strip())


def test_peak_memory_is_flat_in_the_number_of_samples(conv_model, tmp_path):
    """With --max-memory 400M and no batch-size cap: 900 more samples add less than the
    limit (one 1200-sample batch would hold about 10 GB of outputs and windows; what
    remains is the allocators' growth over more batches and the inputs), and what the
    run adds over an 8-sample run stays within twice the limit (the limit bounds
    kerascheck's arrays; TensorFlow's allocator keeps some memory of its own)."""
    tiny, small, large = (_peak(conv_model, tmp_path, n) for n in (8, 300, 1200))
    shown = (tiny / 2**20, small / 2**20, large / 2**20)
    assert large - small < 400 * 2**20, shown
    assert large - tiny < 2 * 400 * 2**20, shown
