"""Walk an HDF5 file's structure in a child process, and hand the structure back.

The HDF5 library is C code: a damaged header or chunk index can make it loop or
crash where no Python signal reaches it, so the `--max-memory`-style checks and the
CPU-time deadline in `limits` cannot bound it. So a forked child opens the file and,
through h5py's low-level API, touches every piece of metadata a real read uses
(every link, each dataset's storage and chunk index, each attribute), makes every
safety check on the way (`hdf5.scan`), and writes the structure it found to a pipe as
JSON (never a pickle: the child is what a hostile file may have subverted). A child
that spins is stopped by the kernel after the read deadline in CPU time
(RLIMIT_CPU), one that waits is killed long after it in wall time; if it crashes the
crash is reported (after a second child crashes too: a crash the file causes
repeats); if it finds a problem its one-line error is the parent's. The
parent reads the structure from the JSON and opens the file itself only to read
values, after their declared sizes are checked against the file and the memory limit.

Where `os.fork` does not exist the walk runs in-process (the deadline still applies).
"""

from __future__ import annotations

import gc
import json
import os
import resource
import select
import signal
import time

from ..errors import KerascheckError, UnsafeModelError
from ..limits import read_seconds

# The wall-clock backstop: generous, since a busy machine slows a good file down.
WALL_FACTOR, WALL_EXTRA = 10, 30
_ERRORS = {"KerascheckError": KerascheckError, "UnsafeModelError": UnsafeModelError}
_MAX_MESSAGE = 4096


def probe(source, path: str, size: int) -> dict:
    """`hdf5.describe(source, path)`, run in a child process; its error is raised here."""
    from . import hdf5

    if not hasattr(os, "fork"):
        return hdf5.describe(source, path)
    seconds = read_seconds(size)
    try:
        report = _walk_in_child(hdf5, source, path, seconds)
    except _Crashed:
        # Once more, in a new child: a crash the file causes happens again, while one
        # from the forked process' inherited state (a library mid-call in another
        # thread at fork time) need not.
        try:
            report = _walk_in_child(hdf5, source, path, seconds)
        except _Crashed as crash:
            raise KerascheckError(
                f"{path}: the HDF5 library crashed ({crash}) reading the file's structure; "
                "expected a readable file, found a damaged one"
            ) from None
    try:
        report = json.loads(report)
        kind, message = report.get("error") or ("", None)
    except (ValueError, TypeError, AttributeError):  # not the JSON a child writes
        report, message = {}, None
    if message is not None:
        raise _ERRORS.get(kind, KerascheckError)(str(message)[:_MAX_MESSAGE])
    if not isinstance(report.get("structure"), dict):
        raise KerascheckError(
            f"{path}: the HDF5 structure walk ended without a report; expected a readable "
            "file, found a damaged one"
        )
    return report["structure"]


class _Crashed(Exception):
    """The child died of a signal other than the CPU limit's (its name is the message)."""


def _walk_in_child(hdf5, source, path: str, seconds: int) -> str:
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: walk, report, leave without cleanup
        os.close(read_end)
        try:
            # No collection in the child: it would run finalizers of objects inherited
            # from the parent (TensorFlow's, h5py's) whose libraries' threads and
            # state the child does not have.
            gc.disable()
            # a spinning library is stopped by the kernel after `seconds` of CPU time
            resource.setrlimit(resource.RLIMIT_CPU, (seconds, seconds + 2))
            _write_all(write_end, _child_report(hdf5, source, path))
        finally:
            os._exit(0)
    os.close(write_end)
    try:
        return _collect(read_end, pid, seconds, path)
    finally:
        os.close(read_end)


def _child_report(hdf5, source, path: str) -> bytes:
    try:
        report = {"structure": hdf5.describe(source, path)}
    except KerascheckError as exc:
        report = {"error": [type(exc).__name__, str(exc)[:_MAX_MESSAGE]]}
    return json.dumps(report, separators=(",", ":")).encode("ascii")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _collect(read_end: int, pid: int, seconds: int, path: str) -> str:
    """The child's report; names a crash or a child stopped past its CPU time, and
    kills one still waiting long after (a wall-clock backstop for a child that hangs
    without spinning)."""
    chunks, end = [], time.monotonic() + WALL_FACTOR * seconds + WALL_EXTRA
    while True:
        left = end - time.monotonic()
        ready, _, _ = select.select([read_end], [], [], max(left, 0))
        if not ready:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise _unfinished(path, seconds)
        chunk = os.read(read_end, 1 << 20)
        if not chunk:
            break
        chunks.append(chunk)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status) and os.WTERMSIG(status) in (signal.SIGXCPU, signal.SIGKILL):
        raise _unfinished(path, seconds)
    if os.WIFSIGNALED(status):
        raise _Crashed(signal.Signals(os.WTERMSIG(status)).name)
    return b"".join(chunks).decode("utf-8", "replace")


def _unfinished(path: str, seconds: int) -> KerascheckError:
    return KerascheckError(
        f"{path}: the HDF5 library did not finish reading the file's structure in "
        f"{seconds} s of CPU time; expected a readable file, found a damaged one"
    )
