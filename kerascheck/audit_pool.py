"""`audit --jobs N` and `audit --scheduler ADDRESS`: the per-model check elsewhere.

Local: N worker processes (spawned, so each imports its own TensorFlow), each
taking one model at a time over its own pipe. The parent waits on the pipes and
on the processes themselves: a model past `--timeout` has its worker killed and
replaced, a worker that dies (a crash in native code) is reported for the model
it had and replaced, and the other models go on.

Dask: the same `check_model` is submitted to an existing `distributed` cluster.
A Dask task cannot be killed, so there the timeout is enforced inside the task: the
check runs in a thread, and a model past the timeout is reported as timed out while
the thread finishes on its own.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from collections import deque
from multiprocessing.connection import wait

from .audit import AuditSettings, check_model
from .errors import KerascheckError


def default_jobs() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def run_local(models, settings: AuditSettings, jobs, timeout, on_start=None, on_done=None):
    """[(result, error)] per model, in order, from `jobs` worker processes."""
    context = multiprocessing.get_context("spawn")
    pending = deque(enumerate(models))
    outcomes: dict[int, tuple] = {}
    workers: list[_Worker] = []
    try:
        while len(outcomes) < len(models):
            while len(workers) < jobs and sum(w.task is None for w in workers) < len(pending):
                workers.append(_Worker(context, settings))
            for worker in workers:
                if worker.task is None and pending:
                    worker.give(*pending.popleft())
                    if on_start is not None:
                        on_start(worker.task[1])
            busy = [w for w in workers if w.task is not None]
            ready = wait(
                [w.connection for w in busy] + [w.process.sentinel for w in busy],
                timeout=_next_deadline(busy, timeout),
            )
            for worker in busy:
                finished = _collect(worker, ready, timeout)
                if finished is None:
                    continue
                index, outcome = finished
                outcomes[index] = outcome
                if on_done is not None:
                    on_done(models[index])
                if not worker.process.is_alive():
                    workers.remove(worker)
    finally:
        for worker in workers:
            worker.stop()
    return [outcomes[i] for i in range(len(models))]


class _Worker:
    def __init__(self, context, settings):
        self.connection, child_end = context.Pipe()
        self.process = context.Process(target=_serve, args=(child_end, settings), daemon=True)
        self.process.start()
        child_end.close()
        self.task = None  # (index, path, started)

    def give(self, index, path):
        self.connection.send(path)
        self.task = (index, path, time.monotonic())

    def stop(self):
        if self.process.is_alive():
            try:
                self.connection.send(None)
            except (BrokenPipeError, OSError):
                pass
            self.process.join(1)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.connection.close()


def _next_deadline(busy, timeout):
    if timeout is None:
        return None
    now = time.monotonic()
    return max(0.0, min(w.task[2] + timeout - now for w in busy))


def _collect(worker, ready, timeout):
    """(index, outcome) when the worker's model is done, failed or overdue; else None."""
    index, path, started = worker.task
    if worker.connection in ready:
        try:
            outcome = worker.connection.recv()
        except (EOFError, OSError):
            outcome = None
        if outcome is not None:
            worker.task = None
            return index, outcome
    if not worker.process.is_alive() or worker.process.sentinel in ready:
        worker.process.join()
        worker.task = None
        return index, (None, f"{path}: the check crashed ({_exit_reason(worker.process)})")
    if timeout is not None and time.monotonic() - started >= timeout:
        worker.process.kill()
        worker.process.join()
        worker.task = None
        return index, (None, f"{path}: the check did not finish in {timeout:g} s (--timeout)")
    return None


def _exit_reason(process) -> str:
    code = process.exitcode
    if code is not None and code < 0:
        return f"the worker process was killed by {signal.Signals(-code).name}"
    return f"the worker process exited with code {code}"


def _serve(connection, settings: AuditSettings) -> None:
    """A worker: check each path it is sent until it is sent None."""
    from .oracle import set_verbose

    set_verbose(settings.verbose)
    while True:
        try:
            path = connection.recv()
        except (EOFError, OSError, KeyboardInterrupt):
            return
        if path is None:
            return
        connection.send(guarded_check(path, settings))


def guarded_check(path, settings: AuditSettings):
    """`check_model`, with a failure that is kerascheck's own bug kept to one line."""
    import warnings

    import numpy as np

    from .report.names import message

    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)
            return check_model(path, settings)
    except MemoryError:
        return None, f"{path}: the check needs more memory than is available"
    except Exception as exc:
        return None, message(f"{path}: internal error ({type(exc).__name__}: {exc})")


def run_dask(models, settings: AuditSettings, address, timeout, on_start=None, on_done=None):
    """[(result, error)] per model, in order, from the Dask cluster at `address`."""
    try:
        from distributed import Client, as_completed
    except ImportError:
        raise KerascheckError(
            "audit --scheduler needs Dask distributed (pip install 'kerascheck[distributed]')"
        ) from None
    try:
        client = Client(address, timeout=30)
    except (OSError, TimeoutError, ValueError) as exc:
        raise KerascheckError(
            f"expected a Dask scheduler at {address}, found none reachable ({exc})"
        ) from None
    with client:
        futures = {}
        for index, path in enumerate(models):
            future = client.submit(_dask_task, path, settings, timeout, pure=False)
            futures[future] = index
            if on_start is not None:
                on_start(path)
        outcomes = {}
        for future in as_completed(futures):
            index = futures[future]
            try:
                outcomes[index] = future.result()
            except Exception as exc:  # the worker died or the task was lost
                outcomes[index] = (None, f"{models[index]}: the Dask task failed ({exc})")
            if on_done is not None:
                on_done(models[index])
    return [outcomes[i] for i in range(len(models))]


def _dask_task(path, settings: AuditSettings, timeout):
    from .oracle import set_verbose

    set_verbose(settings.verbose)
    if timeout is None:
        return guarded_check(path, settings)
    box = []
    thread = threading.Thread(target=lambda: box.append(guarded_check(path, settings)), daemon=True)
    thread.start()
    thread.join(timeout)
    if not box:
        return None, f"{path}: the check did not finish in {timeout:g} s (--timeout)"
    return box[0]
