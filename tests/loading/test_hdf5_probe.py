"""The HDF5 structure probe: a hang or crash inside the HDF5 library ends in one line.

The library's C code cannot be interrupted by a signal handler, so the probe runs
it first in a forked child. A real hostile file that hangs h5py is not portable
to write, so these tests make the child's walk hang (with signals blocked) or
crash, and check that the parent reports it within the deadline.
"""

from __future__ import annotations

import faulthandler
import os
import signal
import time

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

import kerascheck
from kerascheck import KerascheckError, UnsafeModelError
from kerascheck.cli import main
from kerascheck.loading import hdf5, hdf5_probe

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="the probe needs os.fork")


@pytest.fixture(scope="module")
def model_h5(tmp_path_factory):
    from helpers import keras_module

    k = keras_module("tf_keras")
    path = str(tmp_path_factory.mktemp("probe") / "small.h5")
    k.Sequential([k.Input((3,)), k.layers.Dense(2, name="out")]).save(path)
    return path


def _spin(handle, path):
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGXCPU, signal.SIGPROF, signal.SIGINT})
    while True:
        pass


def _wait(handle, path):
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGPROF, signal.SIGTERM, signal.SIGINT})
    time.sleep(60)


def _crash(handle, path):
    faulthandler.disable()  # pytest's handler would print the child's stack
    os.kill(os.getpid(), signal.SIGSEGV)


def test_a_spinning_library_is_stopped_after_its_cpu_time(model_h5, monkeypatch):
    monkeypatch.setattr(hdf5, "walk_metadata", _spin)
    monkeypatch.setattr(hdf5_probe, "read_seconds", lambda size: 1)
    start = time.monotonic()
    with pytest.raises(KerascheckError, match="structure in 1 s of CPU time"):
        kerascheck.load(model_h5)
    assert time.monotonic() - start < 30


def test_a_waiting_library_is_killed_by_the_wall_clock_backstop(model_h5, monkeypatch):
    monkeypatch.setattr(hdf5, "walk_metadata", _wait)
    monkeypatch.setattr(hdf5_probe, "read_seconds", lambda size: 1)
    monkeypatch.setattr(hdf5_probe, "WALL_FACTOR", 1)
    monkeypatch.setattr(hdf5_probe, "WALL_EXTRA", 1)
    start = time.monotonic()
    with pytest.raises(KerascheckError, match="structure in 1 s of CPU time"):
        kerascheck.load(model_h5)
    assert time.monotonic() - start < 10


def test_a_crashing_library_is_named(model_h5, monkeypatch):
    monkeypatch.setattr(hdf5, "walk_metadata", _crash)
    with pytest.raises(KerascheckError, match=r"the HDF5 library crashed \(SIGSEGV\)"):
        kerascheck.load(model_h5)


def test_the_cli_gives_one_line_and_exit_2(model_h5, monkeypatch):
    monkeypatch.setattr(hdf5, "walk_metadata", _crash)
    result = CliRunner().invoke(main, ["summary", model_h5])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "crashed" in lines[0], result.output


def test_the_child_reports_its_own_error_in_one_line(tmp_path, monkeypatch):
    path = str(tmp_path / "big_attribute.h5")
    with h5py.File(path, "w") as f:
        f.attrs["model_config"] = np.zeros(200)
    monkeypatch.setattr(hdf5, "MAX_ATTR_BYTES", 1000)
    with pytest.raises(KerascheckError, match="expected HDF5 attributes of at most"):
        hdf5_probe.probe(path, path, os.path.getsize(path))


def test_links_are_still_refused_after_the_probe(tmp_path):
    path = str(tmp_path / "soft.h5")
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=np.zeros(3))
        f["alias"] = h5py.SoftLink("/data")
    with pytest.raises(UnsafeModelError, match="SoftLink"):
        kerascheck.load(path)


def test_a_good_file_loads_and_the_probe_leaves_no_child(model_h5, monkeypatch):
    children, fork = [], os.fork

    def recording_fork():
        pid = fork()
        if pid:
            children.append(pid)
        return pid

    monkeypatch.setattr(os, "fork", recording_fork)
    model = kerascheck.load(model_h5)
    assert model.predict(np.ones((1, 3), np.float32)).shape == (1, 2)
    assert len(children) == 1
    with pytest.raises(ChildProcessError):  # already reaped
        os.waitpid(children[0], os.WNOHANG)
