"""`kerascheck grad`: Keras' gradients as the oracle, own vs carried per tensor, the CLI.

The oracle must be what `fit` applies: one SGD step changes every weight by
exactly `-lr` times the gradient kerascheck reports. A wrong backward in one
layer must be pinned to that layer and tensor by the own error, while the
layers after it (in backward order) still agree on their own.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import FLAVORS, keras_module, make_input, randomize_weights

import kerascheck
from kerascheck.cli import main
from kerascheck.engine.layers import core
from kerascheck.grad import grad_model
from kerascheck.oracle.gradients import KerasGradientRunner

LR = 0.1


def mlp(flavor, tmp_path, loss="categorical_crossentropy", ext=None, regularize=True):
    """Dense(tanh, L2) -> Dense(relu) -> Dense(softmax), compiled with `loss`."""
    k = keras_module(flavor)
    reg = k.regularizers.L2(0.01) if regularize else None
    inputs = k.Input((6,))
    h = k.layers.Dense(5, activation="tanh", kernel_regularizer=reg, name="hidden")(inputs)
    h = k.layers.Dense(4, activation="relu", name="middle")(h)
    out = k.layers.Dense(3, activation="softmax", name="probs")(h)
    model = k.Model(inputs, out)
    randomize_weights(model)
    model.compile(optimizer=k.optimizers.SGD(LR), loss=loss)
    ext = ext or (".keras" if flavor == "keras" else ".h5")
    path = os.path.join(str(tmp_path), f"mlp_{flavor}{ext}")
    model.save(path)
    return model, path


def batch(n=8, seed=0):
    x = make_input((n, 6), seed=seed)
    y = np.eye(3, dtype="float32")[np.arange(n) % 3]
    return x, y


@pytest.mark.parametrize("flavor", FLAVORS)
def test_one_fit_step_moves_each_weight_by_minus_lr_times_the_reported_gradient(flavor, tmp_path):
    model, path = mlp(flavor, tmp_path)
    x, y = batch()
    spec = kerascheck.load(path).spec
    runner = KerasGradientRunner(path, spec, flavor, spec.training["loss"])
    grads = runner.gradients([x], [y], training=True)
    before = {v.name if flavor == "tf_keras" else v.path: np.asarray(v) for v in model.weights}
    model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
    for layer in model.layers[1:]:
        for index, variable in enumerate(layer.weights):
            key = variable.name if flavor == "tf_keras" else variable.path
            expected = before[key] - np.float32(LR) * grads.weights[layer.name][index]
            np.testing.assert_allclose(np.asarray(variable), expected, rtol=0, atol=1e-7)


@pytest.mark.parametrize("flavor", FLAVORS)
def test_engine_gradients_match_keras_and_the_loss_includes_regularization(flavor, tmp_path):
    _, path = mlp(flavor, tmp_path)
    x, y = batch()
    model = kerascheck.load(path)
    result = grad_model(path, model, [x], [y])
    assert result.status == "match", result.first_divergence
    assert result.logits_path  # softmax output + cross-entropy: fit uses the logits
    assert abs(result.engine_loss - result.keras_loss) <= 1e-5 * abs(result.keras_loss)
    rows = {row.name: {t.tensor: t for t in row.tensors} for row in result.rows}
    assert list(rows)[:2] == ["loss", "probs"]  # backward order
    assert set(rows["hidden"]) == {"d_output", "d_input", "kernel", "bias"}
    assert rows["hidden"]["kernel"].own.rel_error < 1e-5


def wrong_middle_kernel(monkeypatch):
    """The engine's Dense 'middle' reports its kernel gradient 1 % too large."""
    real = core.Dense.vjp

    def off_by_one_percent(self, x, training=False, noise=None):
        output, backward = real(self, x, training, noise)
        if self.name != "middle":
            return output, backward

        def wrong(d_output):
            d_input, grads = backward(d_output)
            return d_input, {**grads, "kernel": grads["kernel"] * 1.01}

        return output, wrong

    monkeypatch.setattr(core.Dense, "vjp", off_by_one_percent)


def test_a_wrong_layer_backward_is_pinned_to_that_layer_and_tensor(tmp_path, monkeypatch):
    _, path = mlp("keras", tmp_path)
    x, y = batch()
    wrong_middle_kernel(monkeypatch)
    result = grad_model(path, kerascheck.load(path), [x], [y])
    assert result.first_divergence == {"call": "middle", "class_name": "Dense", "tensor": "kernel"}
    rows = {row.name: {t.tensor: t for t in row.tensors} for row in result.rows}
    assert rows["middle"]["kernel"].own.rel_error == pytest.approx(0.01, rel=1e-3)
    assert rows["middle"]["d_input"].status == "match"
    assert rows["hidden"]["kernel"].status == "match"


def test_a_gradient_of_size_1e5_that_is_half_wrong_fails(tmp_path):
    """Relative per tensor: an absolute 1e-5 would pass this."""
    from kerascheck.grad import GradTolerance, TensorStats

    truth = np.full((3, 3), 1e-5)
    stats = TensorStats.of(truth * 1.5, truth, GradTolerance())
    assert not stats.ok and stats.rel_error == pytest.approx(0.5)
    assert TensorStats.of(truth * (1 + 1e-5), truth, GradTolerance()).ok


# -- the command line ---------------------------------------------------------------


@pytest.fixture
def files(tmp_path):
    _, path = mlp("keras", tmp_path)
    x, y = batch()
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    return path, str(tmp_path / "x.npy"), str(tmp_path / "y.npy"), tmp_path


def test_cli_reports_match_json_and_saved_gradients(files):
    path, x, y, tmp = files
    out = CliRunner().invoke(
        main,
        ["grad", path, x, y, "--json", str(tmp / "r.json"), "--save-grads", str(tmp / "g.npz")],
    )
    assert out.exit_code == 0, out.output
    assert "MATCH" in out.output and "compile_config" in out.output
    report = json.loads((tmp / "r.json").read_text())
    assert report["command"] == "grad" and report["schema"] == 1
    assert report["status"] == "match" and report["first_divergence"] is None
    assert report["loss"]["name"] == "CategoricalCrossentropy"
    assert [c["name"] for c in report["calls"]] == ["loss", "probs", "middle", "hidden"]
    saved = np.load(tmp / "g.npz")
    for side in ("keras", "numpy"):
        assert saved[f"{side}/grad/hidden/kernel"].shape == (6, 5)
        assert saved[f"{side}/d/hidden"].shape == (8, 5)
    np.testing.assert_allclose(
        saved["numpy/grad/middle/kernel"], saved["keras/grad/middle/kernel"], rtol=1e-4
    )


def test_cli_loss_flag_overrides_the_file(files):
    path, x, y, _ = files
    out = CliRunner().invoke(main, ["grad", path, x, y, "--loss", "mse"])
    assert out.exit_code == 0, out.output
    assert "MeanSquaredError" in out.output and "--loss" in out.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["--loss", "no_such_loss"], "no_such_loss"),
        (["--sample-weight", "WRONG"], "sample weights"),
    ],
)
def test_cli_bad_options_exit_2_with_one_line(files, args, message):
    path, x, y, tmp = files
    np.save(tmp / "w.npy", np.ones(3, "float32"))
    args = [str(tmp / "w.npy") if a == "WRONG" else a for a in args]
    out = CliRunner().invoke(main, ["grad", path, x, y, *args])
    assert out.exit_code == 2, out.output
    assert message in out.output and "Traceback" not in out.output


def test_cli_wrong_target_shape_names_both_shapes(files):
    path, x, _, tmp = files
    np.save(tmp / "bad.npy", np.zeros((8, 4), "float32"))
    out = CliRunner().invoke(main, ["grad", path, x, str(tmp / "bad.npy")])
    assert out.exit_code == 2
    assert "(batch, 3)" in out.output and "(8, 4)" in out.output


def test_targets_of_a_layer_with_two_outputs_are_keyed_layer_and_layer_1(tmp_path):
    """GRU(return_state=True) gives the sequence and the state: an .npz names them `gru`
    and `gru[1]` (one key each); a single .npy is refused naming both."""
    k = keras_module("keras")
    x_in = k.Input((5, 3))
    seq, state = k.layers.GRU(4, return_sequences=True, return_state=True, name="gru")(x_in)
    model = k.Model(x_in, [seq, state])
    model.compile(optimizer="sgd", loss="mse")
    path = str(tmp_path / "gru.keras")
    model.save(path)
    np.save(tmp_path / "x.npy", make_input((3, 5, 3)))
    np.save(tmp_path / "y.npy", make_input((3, 5, 4), seed=1))
    args = ["grad", path, str(tmp_path / "x.npy")]
    out = CliRunner().invoke(main, [*args, str(tmp_path / "y.npy")])
    assert out.exit_code == 2 and "['gru', 'gru[1]']" in out.stderr, out.output
    targets = {"gru": make_input((3, 5, 4), seed=1), "gru[1]": make_input((3, 4), seed=2)}
    np.savez(tmp_path / "y.npz", **targets)
    out = CliRunner().invoke(main, [*args, str(tmp_path / "y.npz")])
    assert out.exit_code == 0, out.output


def test_cli_without_a_compiled_loss_asks_for_one(tmp_path):
    k = keras_module("keras")
    model = k.Sequential([k.Input((4,)), k.layers.Dense(2)])
    path = str(tmp_path / "plain.keras")
    model.save(path)
    np.save(tmp_path / "x.npy", make_input((2, 4)))
    np.save(tmp_path / "y.npy", np.zeros((2, 2), "float32"))
    out = CliRunner().invoke(main, ["grad", path, str(tmp_path / "x.npy"), str(tmp_path / "y.npy")])
    assert out.exit_code == 2 and "--loss" in out.output


def test_cli_layer_without_a_backward_is_named(tmp_path, monkeypatch):
    """A layer class whose backward is missing is refused by name, never differentiated
    as zero (every class the engine runs has one, so one is taken away here)."""
    from kerascheck.engine.base import Layer
    from kerascheck.engine.layers.core import Flatten

    monkeypatch.setattr(Flatten, "vjp", Layer.vjp)
    k = keras_module("keras")
    inputs = k.Input((4, 2))
    hidden = k.layers.Flatten()(k.layers.Dense(3)(inputs))
    model = k.Model(inputs, k.layers.Dense(2)(hidden))
    model.compile(loss="mse")
    path = str(tmp_path / "flat.keras")
    model.save(path)
    np.save(tmp_path / "x.npy", make_input((2, 4, 2)))
    np.save(tmp_path / "y.npy", np.zeros((2, 2), "float32"))
    spec = kerascheck.load(path).spec
    op = next(c for c in spec.calls if spec.layers[c.layer].class_name == "Flatten")
    out = CliRunner().invoke(main, ["grad", path, str(tmp_path / "x.npy"), str(tmp_path / "y.npy")])
    assert out.exit_code == 2, out.output
    assert op.layer in out.output and "backward" in out.output


def test_cli_batch_size_checks_each_batch_and_keeps_the_worst(files):
    path, x, y, tmp = files
    out = CliRunner().invoke(
        main, ["grad", path, x, y, "--batch-size", "3", "--json", str(tmp / "r.json")]
    )
    assert out.exit_code == 0, out.output
    report = json.loads((tmp / "r.json").read_text())
    assert report["batch"] == 8 and report["status"] == "match"
    whole = json.loads((tmp / "r.json").read_text())
    kernel = next(
        t
        for c in whole["calls"]
        if c["name"] == "hidden"
        for t in c["tensors"]
        if t["tensor"] == "kernel"
    )
    assert kernel["own"]["rel_error"] < 1e-4
    out = CliRunner().invoke(
        main, ["grad", path, x, y, "--batch-size", "3", "--save-grads", str(tmp / "g.npz")]
    )
    assert out.exit_code == 2 and "--batch-size" in out.output


def test_an_output_that_is_one_piece_of_a_split_is_differentiated(tmp_path):
    """The loss row reads Keras' gradient of the one output tensor a call returned among
    several (`keras.ops.split`)."""
    k = keras_module("keras")
    inputs = k.Input((6,))
    _, second = k.ops.split(k.layers.Dense(4)(inputs), 2, axis=-1)
    model = k.Model(inputs, second)
    model.compile(loss="mse")
    path = str(tmp_path / "split.keras")
    model.save(path)
    x, y = make_input((3, 6), seed=1), make_input((3, 2), seed=2)
    result = grad_model(path, kerascheck.load(path), [x], [y])
    assert result.status == "match", result.first_divergence
    loss_row = result.rows[0]
    assert [t.tensor for t in loss_row.tensors] == ["loss", "d_prediction"]


def test_cli_only_failures_shows_the_failing_tensors(tmp_path, monkeypatch):
    """--only-failures keeps the tensors that are not 'match' (and the first divergence);
    without it every tensor has its row."""
    _, path = mlp("keras", tmp_path)
    x, y = batch()
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    wrong_middle_kernel(monkeypatch)
    args = ["grad", path, str(tmp_path / "x.npy"), str(tmp_path / "y.npy")]
    every = CliRunner().invoke(main, args)
    only = CliRunner().invoke(main, [*args, "--only-failures"])
    assert every.exit_code == 1 and only.exit_code == 1, only.output
    assert "hidden" in every.stdout and "bias" in every.stdout
    assert "middle" in only.stdout and "kernel" in only.stdout
    assert "hidden" not in only.stdout and "d_input" not in only.stdout
    assert "rows (only failures)" in only.stdout
    both = CliRunner().invoke(main, [*args, "--only-failures", "--all-rows"])
    assert both.exit_code == 2 and "contradict" in both.stderr
