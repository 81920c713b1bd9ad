"""Bounds on what one run may read, allocate and spend, so a hostile file fails fast.

The CLI's global `--max-memory` sets `KERASCHECK_MAX_MEMORY` (bytes), which loading
code reads through `max_memory()`; every other bound is a constant here.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import threading

from .errors import KerascheckError

ENV_MAX_MEMORY = "KERASCHECK_MAX_MEMORY"
DEFAULT_MAX_MEMORY = 8 * 2**30
MAX_CONFIG_DEPTH = 200  # JSON nesting; Keras' own deepest configs are a few dozen
MAX_HDF5_DEPTH = 64  # nested groups in a weights file
MAX_HDF5_NODES = 200_000  # groups and datasets in one file
MAX_ATTR_BYTES = 64 * 2**20  # one HDF5 attribute (a model_config can be large)
# What h5py cannot bound in work is bounded in CPU time: a few seconds plus read speed.
BASE_SECONDS = 5
BYTES_PER_SECOND = 50 * 2**20
MAX_NAME = 80


def read_seconds(file_size: int) -> int:
    return BASE_SECONDS + file_size // BYTES_PER_SECOND


def parse_size(text: str) -> int:
    """`8G`, `512MiB`, `1.5GB`, `1000000` -> bytes (binary units)."""
    value = str(text).strip().upper().replace("IB", "").replace("B", "")
    factor = 1
    for suffix, power in (("K", 1), ("M", 2), ("G", 3), ("T", 4)):
        if value.endswith(suffix):
            value, factor = value[:-1], 1024**power
            break
    try:
        number = float(value)
    except ValueError:
        raise KerascheckError(f"expected a size such as 8G or 512M, found {text!r}") from None
    if not math.isfinite(number) or number <= 0:
        raise KerascheckError(f"expected a positive size such as 8G or 512M, found {text!r}")
    return int(number * factor)


def max_memory() -> int:
    raw = os.environ.get(ENV_MAX_MEMORY)
    return parse_size(raw) if raw else DEFAULT_MAX_MEMORY


def gib(n: int) -> str:
    if n >= 2**30:
        return f"{n / 2**30:.3g} GiB"
    return f"{n / 2**20:.3g} MiB" if n >= 2**20 else f"{n} bytes"


def check_bytes(nbytes: int, what: str, shape=None) -> None:
    """Refuse an allocation of `nbytes` over the memory limit, naming it."""
    limit = max_memory()
    if nbytes > limit:
        shown = f" of shape {tuple(shape)}" if shape is not None else ""
        raise KerascheckError(
            f"{what}{shown} needs {gib(nbytes)}, over the memory limit of {gib(limit)}; "
            "expected a model and input that fit (raise it with --max-memory)"
        )


def clip(text, limit: int = MAX_NAME) -> str:
    """A value echoed in a message, cut to `limit` characters with an ellipsis."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


@contextlib.contextmanager
def deadline(seconds: int, what: str):
    """Raise a KerascheckError if the block spends more than `seconds` of CPU time
    (main thread only: SIGPROF; elsewhere the block simply runs). CPU time, not wall
    time, so a busy machine does not fail a good file; a damaged file that makes a
    loop spin burns CPU and is stopped. Nested deadlines keep the outer one."""
    usable = (
        hasattr(signal, "SIGPROF")
        and threading.current_thread() is threading.main_thread()
        and signal.getitimer(signal.ITIMER_PROF)[0] == 0
    )
    if not usable:
        yield
        return

    def expire(signum, frame):
        raise KerascheckError(
            f"{what}: the file did not finish reading in {seconds} s of CPU time; "
            "expected a readable model file, found a damaged one"
        )

    previous = signal.signal(signal.SIGPROF, expire)
    signal.setitimer(signal.ITIMER_PROF, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.signal(signal.SIGPROF, previous)
