"""The HDF5 structure probe: a hang or crash inside the HDF5 library ends in one line,
and the structure the child walked is what the parent reads.

The library's C code cannot be interrupted by a signal handler, so the probe runs
it first in a forked child. A real hostile file that hangs h5py is not portable
to write, so these tests make the child's walk hang (with signals blocked) or
crash, and check that the parent reports it within the deadline. The child hands
its walk back, so a shapes-only read never opens the file in the parent.
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
    monkeypatch.setattr(hdf5, "scan", _spin)
    monkeypatch.setattr(hdf5_probe, "read_seconds", lambda size: 1)
    start = time.monotonic()
    with pytest.raises(KerascheckError, match="structure in 1 s of CPU time"):
        kerascheck.load(model_h5)
    assert time.monotonic() - start < 30


def test_a_waiting_library_is_killed_by_the_wall_clock_backstop(model_h5, monkeypatch):
    monkeypatch.setattr(hdf5, "scan", _wait)
    monkeypatch.setattr(hdf5_probe, "read_seconds", lambda size: 1)
    monkeypatch.setattr(hdf5_probe, "WALL_FACTOR", 1)
    monkeypatch.setattr(hdf5_probe, "WALL_EXTRA", 1)
    start = time.monotonic()
    with pytest.raises(KerascheckError, match="structure in 1 s of CPU time"):
        kerascheck.load(model_h5)
    assert time.monotonic() - start < 10


def test_a_crashing_library_is_named(model_h5, monkeypatch):
    monkeypatch.setattr(hdf5, "scan", _crash)
    with pytest.raises(KerascheckError, match=r"the HDF5 library crashed \(SIGSEGV\)"):
        kerascheck.load(model_h5)


def test_a_crash_that_does_not_repeat_is_not_the_files(model_h5, monkeypatch, tmp_path):
    """A child crashing once (state inherited at fork time) gets a second child; the
    crash a file causes repeats and is reported (above)."""
    marker, scan = tmp_path / "crashed-once", hdf5.scan

    def crash_first(handle, path):
        if not marker.exists():
            marker.write_text("")
            _crash(handle, path)
        return scan(handle, path)

    monkeypatch.setattr(hdf5, "scan", crash_first)
    model = kerascheck.load(model_h5)
    assert marker.exists() and model.param_count() > 0


def test_the_cli_gives_one_line_and_exit_2(model_h5, monkeypatch):
    monkeypatch.setattr(hdf5, "scan", _crash)
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


@pytest.mark.parametrize("values", [True, False])
def test_links_are_still_refused_after_the_probe(tmp_path, values):
    path = str(tmp_path / "soft.h5")
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=np.zeros(3))
        f["alias"] = h5py.SoftLink("/data")
    with pytest.raises(UnsafeModelError, match="'/alias' is a SoftLink"):
        kerascheck.load(path, values=values)


@pytest.mark.parametrize("values", [True, False])
def test_external_storage_is_refused_in_a_shapes_only_read(tmp_path, values):
    path, raw = str(tmp_path / "external.h5"), str(tmp_path / "raw.bin")
    np.zeros(3, np.float32).tofile(raw)
    with h5py.File(path, "w") as f:
        f.create_dataset("g/data", shape=(3,), dtype="float32", external=[(raw, 0, 12)])
    with pytest.raises(UnsafeModelError, match="'/g/data' stores its data outside"):
        kerascheck.load(path, values=values)


def test_the_parent_gets_the_childs_structure(model_h5):
    structure = hdf5_probe.probe(model_h5, model_h5, os.path.getsize(model_h5))
    root = hdf5._build(structure)
    kernel = hdf5.child(root, "model_weights/out/out/kernel:0")
    assert isinstance(kernel, hdf5.Dataset)
    assert (kernel.shape, kernel.dtype_text, kernel.file) == ((3, 2), "float32", root)
    assert kernel.stored == 3 * 2 * 4 and root.size == os.path.getsize(model_h5)
    assert "model_config" in root.attrs
    assert hdf5.list_attr(hdf5.child(root, "model_weights/out"), "weight_names") == [
        "out/kernel:0",
        "out/bias:0",
    ]


def test_attributes_of_every_kind_of_object_are_walked(tmp_path):
    path = str(tmp_path / "kinds.h5")
    with h5py.File(path, "w") as f:
        f["type"] = np.dtype("float32")  # a committed datatype
        f["type"].attrs["note"] = 1
        f.create_dataset("data", data=np.zeros(2)).attrs["note"] = "text"
        f.create_group("group").attrs["names"] = np.array(["a", "b"], dtype=h5py.string_dtype())
        f["group"].attrs["empty"] = np.array([])
        f["group"].attrs["number"] = 3
    root = hdf5._build(hdf5_probe.probe(path, path, os.path.getsize(path)))
    group = hdf5.child(root, "group")
    assert hdf5.list_attr(group, "names") == ["a", "b"]
    assert hdf5.list_attr(group, "empty") == []
    with pytest.raises(KerascheckError, match="'number' of '/group', found int64"):
        hdf5.text_attr(group, "number")
    with pytest.raises(KerascheckError, match="expected a model config"):
        kerascheck.load(path, values=False)


def _parent_must_not(monkeypatch, name, module=hdf5):
    """Make `module.name` fail when the test's own process calls it (the probe's forked
    child, with another pid, still may)."""
    parent, real = os.getpid(), getattr(module, name)
    calls = []

    def guarded(*args, **kwargs):
        if os.getpid() == parent:
            calls.append(args)
            raise AssertionError(f"{name} called in the parent")
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, guarded)
    return calls


@pytest.mark.parametrize("ext", [".keras", ".h5"])
def test_a_shapes_only_read_never_opens_the_file_in_the_parent(tmp_path, ext):
    from helpers import keras_module

    k = keras_module("keras")
    path = str(tmp_path / f"model{ext}")
    k.Sequential([k.Input((3,)), k.layers.Dense(2, name="out")]).save(path)
    with pytest.MonkeyPatch.context() as patch:
        _parent_must_not(patch, "File", h5py)
        _parent_must_not(patch, "scan")
        model = kerascheck.load(path, values=False)
    assert model.param_count() == 8 and model.output_shapes["out"] == (None, 2)
    with pytest.MonkeyPatch.context() as patch:
        _parent_must_not(patch, "scan")  # a full read opens it, but walks it in the child
        model = kerascheck.load(path)
    assert model.predict(np.ones((1, 3), np.float32)).shape == (1, 2)


def test_without_fork_the_walk_runs_in_process(model_h5, tmp_path, monkeypatch):
    monkeypatch.delattr(os, "fork")
    assert kerascheck.load(model_h5, values=False).param_count() == 8
    assert kerascheck.load(model_h5).predict(np.ones((1, 3), np.float32)).shape == (1, 2)
    path = str(tmp_path / "soft.h5")
    with h5py.File(path, "w") as f:
        f["group/alias"] = h5py.SoftLink("/elsewhere")
    with pytest.raises(UnsafeModelError, match="'/group/alias' is a SoftLink"):
        kerascheck.load(path, values=False)


def test_a_file_replaced_after_the_walk_is_refused(model_h5, tmp_path, monkeypatch):
    """The parent reads values from the file the child walked, not one put in its place."""
    import shutil

    path = str(tmp_path / "swapped.h5")
    shutil.copy(model_h5, path)
    real = hdf5_probe.probe

    def walk_then_swap(source, where, size):
        structure = real(source, where, size)
        shutil.copy(model_h5, path + ".new")
        os.replace(path + ".new", path)
        return structure

    monkeypatch.setattr(hdf5_probe, "probe", walk_then_swap)
    with pytest.raises(KerascheckError, match="the file changed while it was read"):
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
