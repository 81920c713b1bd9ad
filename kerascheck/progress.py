"""What a long run is doing, shown as it happens, and where its wall time went.

A run is a sequence of phases (reading the model, starting TensorFlow, loading
the model in Keras, the batches, the own-error replay). `Phases` shows the
current one on stderr from its first second: a spinner naming it, and for the
batches a bar with the count and the time remaining. Each phase's wall time is
recorded under a short name, so the report's timings add up to the run's wall
time instead of counting only the arithmetic.

Nothing is drawn when stderr is not a terminal (CI logs, pipes) or when
`show=False`; the timings are recorded either way.
"""

from __future__ import annotations

import contextlib
import time


class Phases:
    def __init__(self, show: bool = True):
        self.started = time.perf_counter()
        self.seconds: dict[str, float] = {}
        self._progress = _live_progress() if show else None
        self._task = None

    def add(self, name: str, seconds: float) -> None:
        """Add `seconds` to phase `name` (phases interleaved batch by batch add up)."""
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    @contextlib.contextmanager
    def timed(self, name: str, label: str | None = None):
        """Record the block's wall time under `name`, showing `label` (or `name`) meanwhile."""
        start = time.perf_counter()
        with self.showing(label or name):
            try:
                yield
            finally:
                self.add(name, time.perf_counter() - start)

    @contextlib.contextmanager
    def showing(self, label: str):
        """A spinner naming what runs, for the block (restoring any bar it covered)."""
        if self._progress is None:
            yield
            return
        previous = self._task
        self._progress.start()
        task = self._progress.add_task(label, total=None)
        self._task = task
        try:
            yield
        finally:
            self._progress.remove_task(task)
            self._task = previous
            if previous is None:
                self._progress.stop()

    def batches(self, label: str = "batches"):
        """A `progress(done, total)` callback drawing a bar with ETA for 2+ batches."""
        state: dict = {}

        def update(done: int, total: int) -> None:
            if self._progress is None or total < 2:
                return
            if "task" not in state:
                self._progress.start()
                state["task"] = self._progress.add_task(label, total=total)
            self._progress.update(state["task"], completed=done)
            if done >= total:
                self._progress.remove_task(state["task"])
                if self._task is None:
                    self._progress.stop()

        return update

    def wall(self) -> float:
        return time.perf_counter() - self.started

    def summary(self) -> str:
        return format_phases(self.seconds, self.wall())


def format_phases(seconds: dict[str, float], wall: float | None) -> str:
    """`read 0.41s, TensorFlow start-up 4.10s, ..., wall 9.30s`."""
    parts = [f"{name} {value:.2f}s" for name, value in seconds.items()]
    return ", ".join(parts + ([f"wall {wall:.2f}s"] if wall is not None else []))


def _live_progress():
    import sys

    if not sys.stderr.isatty():
        return None
    from rich.console import Console
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TimeElapsedColumn(),
        _count_column(),
        console=Console(stderr=True),
        transient=True,
    )


def _count_column():
    from rich.progress import ProgressColumn
    from rich.text import Text

    class CountColumn(ProgressColumn):
        """`3/10 ETA 0:01:20` for a bar; nothing for a spinner."""

        def render(self, task):
            if task.total is None:
                return Text("")
            left = task.time_remaining
            eta = "?" if left is None else time.strftime("%H:%M:%S", time.gmtime(left))
            return Text(f"{int(task.completed)}/{int(task.total)}  ETA {eta}")

    return CountColumn()
