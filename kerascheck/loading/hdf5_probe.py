"""Walk an HDF5 file's structure in a child process before the real read.

The HDF5 library is C code: a damaged header or chunk index can make it loop or
crash where no Python signal reaches it, so the `--max-memory`-style checks and the
CPU-time deadline in `limits` cannot bound it. Before a file is opened for real, a
forked child opens it and, through h5py's low-level API, touches every piece of
metadata the real read will use (every link, each dataset's storage and chunk
index, each attribute). A child that spins is stopped by the kernel after the read
deadline in CPU time (RLIMIT_CPU), one that waits is killed long after it in wall
time; if it crashes the crash is reported; if it finds a problem its one-line error is
the parent's. The real read then only repeats metadata work that has already
finished once, and reads data only after its declared size is checked against the
file and the memory limit.

Where `os.fork` does not exist the probe is skipped (the deadline still applies).
"""

from __future__ import annotations

import os
import resource
import select
import signal
import time

from ..errors import KerascheckError, UnsafeModelError
from ..limits import clip, read_seconds

# The wall-clock backstop: generous, since a busy machine slows a good file down.
WALL_FACTOR, WALL_EXTRA = 10, 30
_ERRORS = {"KerascheckError": KerascheckError, "UnsafeModelError": UnsafeModelError}
_MAX_MESSAGE = 4096


def probe(source, path: str, size: int) -> None:
    """Raise the error the structure walk of `source` ends in, in a child process."""
    if not hasattr(os, "fork"):
        return
    seconds = read_seconds(size)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: walk, report one line, leave without cleanup
        os.close(read_end)
        try:
            # a spinning library is stopped by the kernel after `seconds` of CPU time
            resource.setrlimit(resource.RLIMIT_CPU, (seconds, seconds + 2))
            os.write(write_end, _child_report(source, path).encode("utf-8", "replace"))
        finally:
            os._exit(0)
    os.close(write_end)
    try:
        report = _collect(read_end, pid, seconds, path)
    finally:
        os.close(read_end)
    if report:
        kind, _, message = report.partition("\t")
        raise _ERRORS.get(kind, KerascheckError)(message)


def _child_report(source, path: str) -> str:
    import h5py

    from .hdf5 import walk_metadata

    try:
        with h5py.File(source, "r") as handle:
            walk_metadata(handle, path)
    except KerascheckError as exc:
        return f"{type(exc).__name__}\t{exc}"[:_MAX_MESSAGE]
    except BaseException as exc:  # h5py's own errors on a damaged file
        return (
            f"KerascheckError\t{path}: expected a readable HDF5 file, found a damaged one "
            f"({type(exc).__name__}: {clip(exc)})"
        )
    return ""


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
        chunk = os.read(read_end, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status) and os.WTERMSIG(status) in (signal.SIGXCPU, signal.SIGKILL):
        raise _unfinished(path, seconds)
    if os.WIFSIGNALED(status):
        name = signal.Signals(os.WTERMSIG(status)).name
        raise KerascheckError(
            f"{path}: the HDF5 library crashed ({name}) reading the file's structure; "
            "expected a readable file, found a damaged one"
        )
    return b"".join(chunks).decode("utf-8", "replace")


def _unfinished(path: str, seconds: int) -> KerascheckError:
    return KerascheckError(
        f"{path}: the HDF5 library did not finish reading the file's structure in "
        f"{seconds} s of CPU time; expected a readable file, found a damaged one"
    )
