"""What a user sees about the run itself: honest phase timings that add up to the wall
time, rows not supplied to `--against` shown as not compared, and the user's values
called "yours"."""

from __future__ import annotations

import json
import os

import numpy as np
from click.testing import CliRunner

import kerascheck
from kerascheck.cli import main
from kerascheck.progress import Phases

SAMPLES = os.path.join(os.path.dirname(__file__), "..", "sample_models")
MODEL = os.path.join(SAMPLES, "seed004_cnn.keras")
INPUT = os.path.join(SAMPLES, "seed004_cnn.input.npy")


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_phase_timings_account_for_the_wall_time(tmp_path):
    report = tmp_path / "r.json"
    result = run("diff", "--layer-wise", MODEL, INPUT, "--json", report)
    assert result.exit_code == 0, result.output
    timing = json.loads(report.read_text())["timing"]
    phases, wall = timing["phases"], timing["wall_seconds"]
    for name in ("read", "TensorFlow start-up", "Keras load", "engine", "Keras", "own errors"):
        assert phases[name] >= 0.0, name
    # Every second of the run is in a phase: start-up is not hidden (it was 3-5x before).
    assert 0.9 * wall <= sum(phases.values()) <= wall
    assert f"wall {wall:.2f}s" in result.output


def test_phases_record_interleaved_work_and_stay_silent_off_a_terminal():
    phases = Phases()  # stderr is not a terminal under pytest: nothing is drawn
    with phases.timed("engine"):
        pass
    phases.add("engine", 0.5)
    with phases.showing("waiting"):
        update = phases.batches()
        update(1, 3)
        update(3, 3)
    assert phases.seconds["engine"] >= 0.5 and list(phases.seconds) == ["engine"]
    assert phases.summary().startswith("engine 0.5")


def test_rows_not_supplied_are_not_compared_and_the_values_are_yours(tmp_path):
    calls = kerascheck.load(MODEL).run(np.load(INPUT))
    mine = tmp_path / "mine.npz"
    np.savez(mine, conv2d=calls["conv2d"], dense=calls["dense"] * np.float32(1.1))
    report = tmp_path / "r.json"
    result = run("diff", MODEL, INPUT, "--against", mine, "--json", report)
    assert result.exit_code == 1
    assert "1 of 2 compared outputs out of tolerance" in result.output
    verdict = result.output.split("MISMATCH")[1].split("oracle keras")[0]
    assert "yours " in verdict and "engine" not in verdict
    table = result.output.split("MISMATCH")[0]
    flatten = next(line for line in table.splitlines() if " flatten " in line)
    assert "not compared" in flatten and " 0 " not in flatten and " - " in flatten
    data = json.loads(report.read_text())
    assert data["timing"]["engine_seconds"] > 0.0  # the engine ran (for the hints)
    statuses = {row["name"]: row["status"] for row in data["layers"]}
    assert statuses["flatten"] == "skipped" and statuses["dense"] == "mismatch"


def test_a_terminal_sees_each_phase_as_it_happens():
    """In a terminal, the run names what it is doing before TensorFlow has started."""
    import pty
    import subprocess
    import sys

    leader, follower = pty.openpty()
    command = [sys.executable, "-m", "kerascheck", "diff", "--layer-wise", MODEL, INPUT]
    process = subprocess.Popen(command, stdin=follower, stdout=follower, stderr=follower)
    os.close(follower)
    seen = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    assert process.wait(timeout=300) == 0
    os.close(leader)
    text = seen.decode("utf-8", "replace")
    assert "starting TensorFlow and loading the model in keras" in text
    assert text.index("starting TensorFlow") < text.index("MATCH")
