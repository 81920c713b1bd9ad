"""`audit --jobs`, `--timeout` and `--scheduler`: the same report however the work is spread.

The pool's own behaviour (order, a hanging model, a crashing worker, replacement
workers) is tested with a stand-in check in forked workers, so it is fast and
deterministic; the real thing runs end to end through the CLI in spawned workers
and on a two-worker Dask LocalCluster.
"""

from __future__ import annotations

import faulthandler
import json
import multiprocessing
import os
import signal
import time

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import keras_module, randomize_weights

from kerascheck import audit_pool
from kerascheck.audit import AuditSettings
from kerascheck.cli import main
from kerascheck.compare import TolerancePolicy


def _fake_check(path, settings):
    name = os.path.basename(path)
    if name == "crash":
        faulthandler.disable()  # pytest's handler would print the child's stack
        os.kill(os.getpid(), signal.SIGSEGV)
    if name == "hang":
        time.sleep(60)
    if name == "bug":
        raise ZeroDivisionError("division by zero")
    return None, f"checked {name} in {os.getpid()}"


@pytest.fixture
def forked_pool(monkeypatch):
    fork = multiprocessing.get_context("fork")
    monkeypatch.setattr(audit_pool.multiprocessing, "get_context", lambda _: fork)
    monkeypatch.setattr(audit_pool, "check_model", _fake_check)
    return AuditSettings(TolerancePolicy())


def test_results_keep_the_order_of_the_paths(forked_pool):
    models = [f"/m/{i}" for i in range(7)]
    outcomes = audit_pool.run_local(models, forked_pool, jobs=3, timeout=None)
    assert [error.split()[1] for _, error in outcomes] == [str(i) for i in range(7)]
    assert len({error.split()[-1] for _, error in outcomes}) == 3  # three workers shared them


def test_a_hanging_model_is_killed_and_the_others_go_on(forked_pool):
    start = time.monotonic()
    outcomes = audit_pool.run_local(
        ["/m/a", "/m/hang", "/m/b", "/m/c"], forked_pool, jobs=2, timeout=1.5
    )
    assert time.monotonic() - start < 20
    errors = [error for _, error in outcomes]
    assert errors[1] == "/m/hang: the check did not finish in 1.5 s (--timeout)"
    assert [e.split()[1] for i, e in enumerate(errors) if i != 1] == ["a", "b", "c"]


def test_a_crashing_worker_is_reported_and_replaced(forked_pool):
    outcomes = audit_pool.run_local(
        ["/m/crash", "/m/a", "/m/crash", "/m/b"], forked_pool, jobs=1, timeout=None
    )
    errors = [error for _, error in outcomes]
    assert errors[0] == "/m/crash: the check crashed (the worker process was killed by SIGSEGV)"
    assert errors[2] == errors[0]
    assert errors[1].startswith("checked a") and errors[3].startswith("checked b")


def test_a_bug_in_a_check_is_one_line_for_that_model(forked_pool):
    ((_, error),) = audit_pool.run_local(["/m/bug"], forked_pool, jobs=1, timeout=10)
    assert error == "/m/bug: internal error (ZeroDivisionError: division by zero)"


# ------------------------------------------------------------- end to end, real checks


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("jobs")
    k = keras_module("keras")
    for index in range(3):
        model = k.Sequential(
            [k.Input((5,)), k.layers.Dense(4, activation="tanh"), k.layers.Dense(2)],
            name=f"model_{index}",
        )
        randomize_weights(model, seed=index)
        model.save(root / f"model_{index}.keras")
        x = np.random.default_rng(index).normal(0, 3, (4, 5)).astype("float32")
        np.save(root / f"model_{index}.input.npy", x)
    (root / "broken.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 64)
    return root


def _report(folder, tmp_path, *extra):
    path = tmp_path / f"report{len(extra)}.json"
    result = CliRunner().invoke(main, ["audit", str(folder), "--json", str(path), *extra])
    assert result.exit_code == 2, result.output  # broken.h5 cannot be checked
    report = json.loads(path.read_text())
    for model in report["models"]:
        model.pop("timing")  # differs from run to run
    return report


def test_jobs_give_the_report_one_process_gives(folder, tmp_path):
    serial = _report(folder, tmp_path, "--jobs", "1")
    parallel = _report(folder, tmp_path, "--jobs", "2", "--timeout", "300")
    assert parallel == serial
    assert [m["status"] for m in serial["models"]] == ["match"] * 3
    assert [e["model"] for e in serial["errors"]] == [str(folder / "broken.h5")]


def test_a_dask_cluster_gives_the_same_report(folder, tmp_path):
    distributed = pytest.importorskip("distributed")
    serial = _report(folder, tmp_path, "--jobs", "1")
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        on_dask = _report(folder, tmp_path, "--scheduler", cluster.scheduler_address)
    assert on_dask == serial


def test_an_unreachable_scheduler_is_one_line(folder):
    result = CliRunner().invoke(
        main, ["audit", str(folder), "--scheduler", "tcp://127.0.0.1:9", "--timeout", "5"]
    )
    assert result.exit_code == 2
    assert result.output.startswith("error: expected a Dask scheduler at tcp://127.0.0.1:9")
    assert len(result.output.strip().splitlines()) == 1
