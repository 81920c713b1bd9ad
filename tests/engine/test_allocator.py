"""The engine's allocator settings: applied once on glibc, and KERASCHECK_MALLOC=default
leaves glibc's policy. Run in fresh interpreters, since the settings are process-wide."""

import os
import platform
import subprocess
import sys

import pytest

SAMPLES = os.path.join(os.path.dirname(__file__), "..", "..", "sample_models")

PROBE = """
import resource
import numpy as np
from kerascheck.engine import allocator
print(allocator.keep_freed_memory())
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):  # three arrays at a time, as a layer's temporaries are:
    arrays = [np.ones(4 * 2**20, dtype=np.float32) for _ in range(3)]  # 16 MB
    arrays += [np.ones(16 * 2**20, dtype=np.float32)]  # 64 MB, a batch-64 activation
    del arrays
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _probe(**env):
    result = subprocess.run(
        [sys.executable, "-c", PROBE],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    applied, faults = result.stdout.split()
    return applied == "True", int(faults)


glibc = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only"
)


@glibc
def test_freed_arrays_are_reused_without_page_faults():
    applied, faults = _probe(KERASCHECK_MALLOC="")
    default_applied, default_faults = _probe(KERASCHECK_MALLOC="default")
    assert applied and not default_applied
    # glibc's default maps the 64 MB array afresh every round and trims the 48 MB it
    # finds free at the top of its heap, faulting both in again in the next round;
    # kept, the first round's memory serves them all.
    assert default_faults > 4 * faults


def test_the_engine_applies_the_settings_when_it_builds_a_model(monkeypatch):
    import kerascheck
    from kerascheck.engine import model

    calls = []
    monkeypatch.setattr(model, "keep_freed_memory", lambda: calls.append(1))
    kerascheck.load(os.path.join(SAMPLES, "seed004_cnn.keras"))
    assert calls == [1]
