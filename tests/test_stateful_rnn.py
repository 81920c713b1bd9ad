"""Stateful RNNs: one prediction from freshly reset (zero) states is well defined.

The engine starts every run from zero states, the oracle resets Keras' states
before it runs, and a run whose result would depend on earlier batches (more or
fewer samples than the declared batch, or several batches) is refused in one line.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import assert_matches, keras_module, make_input, randomize_weights, save

import kerascheck
from kerascheck.cli import main
from kerascheck.errors import KerascheckError
from kerascheck.oracle import KerasRunner

BATCH = 3
CASES = [(f, c) for f in ("keras", "tf_keras") for c in ("SimpleRNN", "GRU", "LSTM")]


def stateful_model(flavor, class_name, tmp_path, sequences=False):
    k = keras_module(flavor)
    x = k.Input(batch_shape=(BATCH, 5, 4))
    layer = getattr(k.layers, class_name)(
        6, stateful=True, return_sequences=sequences, name="remembers"
    )
    model = k.Model(x, k.layers.Dense(2)(layer(x)))
    randomize_weights(model)
    return model, save(model, str(tmp_path), flavor)


def reset(model):
    layer = model.get_layer("remembers")
    (getattr(layer, "reset_states", None) or layer.reset_state)()


@pytest.mark.parametrize("flavor,class_name", CASES)
def test_engine_matches_keras_from_reset_states(flavor, class_name, tmp_path):
    model, path = stateful_model(flavor, class_name, tmp_path, sequences=class_name == "GRU")
    x = make_input((BATCH, 5, 4))
    model.predict(make_input((BATCH, 5, 4), seed=7), verbose=0)  # leaves states behind
    reset(model)
    expected = np.asarray(model.predict(x, verbose=0))
    assert_matches(kerascheck.load(path).predict(x), expected, what=f"{flavor} {class_name}")


@pytest.mark.parametrize("flavor", ["keras", "tf_keras"])
def test_oracle_resets_states_before_every_run(flavor, tmp_path):
    _, path = stateful_model(flavor, "LSTM", tmp_path)
    spec = kerascheck.load(path).spec
    runner = KerasRunner(path, spec, flavor)
    x = [make_input((BATCH, 5, 4))]
    first = runner.run_batch(x)[0][0]
    second = runner.run_batch(x)[0][0]  # without a reset it would start from `first`'s states
    np.testing.assert_array_equal(first, second)


@pytest.mark.parametrize("flavor", ["keras", "tf_keras"])
def test_diff_says_states_were_reset(flavor, tmp_path):
    _, path = stateful_model(flavor, "GRU", tmp_path, sequences=True)
    report = tmp_path / "report.json"
    runner = CliRunner()
    result = runner.invoke(
        main, ["diff", path, "--layer-wise", "--batch", str(BATCH), "--json", str(report)]
    )
    assert result.exit_code == 0, result.output
    assert "stateful: states reset before the run (remembers)" in result.stdout
    assert json.loads(report.read_text())["stateful"]["layers"] == ["remembers"]
    summary = runner.invoke(main, ["summary", path])
    assert summary.exit_code == 0 and "stateful: states reset before the run" in summary.stdout


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["--batch", "4"], "exactly 3 samples, found 4"),
        (["--batch", "2"], "exactly 3 samples, found 2"),
        (["--batch", "3", "--batch-size", "2"], "would depend on earlier batches"),
    ],
)
def test_runs_depending_on_earlier_batches_are_refused(args, fragment, tmp_path):
    _, path = stateful_model("keras", "LSTM", tmp_path)
    for command in (["diff", path, "--layer-wise"], ["predict", path, "--engine", "keras"]):
        result = CliRunner().invoke(main, command + args)
        assert result.exit_code == 2, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "stateful layer 'remembers'" in lines[0], lines
        assert fragment in lines[0]


def test_python_api_check(tmp_path):
    from kerascheck.engine.layers.recurrent import check_stateful_run

    _, path = stateful_model("tf_keras", "SimpleRNN", tmp_path)
    spec = kerascheck.load(path).spec
    assert check_stateful_run(spec, BATCH, BATCH) == ["remembers"]
    with pytest.raises(KerascheckError, match="earlier batches"):
        check_stateful_run(spec, BATCH, 1)


def test_audit_draws_random_inputs_of_the_declared_batch(tmp_path):
    _, path = stateful_model("tf_keras", "GRU", tmp_path)
    result = CliRunner().invoke(main, ["audit", path, "--batch", "2"])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("flavor", ["keras", "tf_keras"])
def test_one_training_step_from_reset_states_and_no_more(flavor, tmp_path):
    """`grad` and one `train-step` start from zero states like a fresh `fit`; a second
    step would start from the states the first left, so it is refused."""
    from kerascheck.train_step import train_step_model

    model, path = stateful_model(flavor, "LSTM", tmp_path)
    model.compile(optimizer="adam", loss="mse")
    model.save(path)
    x, y = make_input((BATCH, 5, 4)), make_input((BATCH, 2), seed=3)
    result = train_step_model(path, kerascheck.load(path), [x], [y])
    assert result.status == "match", result.first_divergence
    with pytest.raises(KerascheckError, match="--steps 1"):
        train_step_model(path, kerascheck.load(path), [x], [y], steps=2)
