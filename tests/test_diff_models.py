"""`kerascheck diff A B`: two model files of one architecture, compared in the engine.

Every pair is made in real Keras: one model saved as `.keras` and as `.h5` (Keras 3),
the same weights in a tf_keras (Keras 2) `.h5`, and copies with one weight changed,
a layer renamed or removed, a config changed, or another input shape.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import keras_module, make_input, randomize_weights

from kerascheck.cli import main
from kerascheck.diff_models import is_model_file

SHAPE = (9, 7, 3)


def _model(flavor="keras", shape=SHAPE, act=True, hidden="hidden", conv2_activation="relu"):
    k = keras_module(flavor)
    x = k.Input(shape)
    y = k.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv1")(x)
    y = k.layers.Conv2D(5, 3, activation=conv2_activation, name="conv2")(y)
    if act:
        y = k.layers.Activation("tanh", name="act")(y)
    y = k.layers.Flatten(name="flat")(y)
    y = k.layers.Dense(6, name=hidden)(y)
    return k.Model(x, k.layers.Dense(2, name="out")(y))


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """(Keras 3 model, its .keras path, directory)."""
    tmp = tmp_path_factory.mktemp("pair")
    model = _model()
    randomize_weights(model, seed=4)
    path = str(tmp / "a.keras")
    model.save(path)
    return model, path, tmp


def _copy(base, name, **changes):
    """A model like the base one (optionally changed), with the base's weights by layer."""
    model, _, tmp = base
    other = _model(**changes)
    for layer in other.layers:
        if layer.weights and layer.name in [lay.name for lay in model.layers]:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    path = str(tmp / name)
    other.save(path)
    return other, path


def run(tmp_path, a, b, *flags):
    report = tmp_path / "report.json"
    result = CliRunner().invoke(main, ["diff", a, b, "--json", str(report), *flags])
    return result, (json.loads(report.read_text()) if report.exists() else None)


def rows(data):
    return {r["name"]: r for r in data["layers"]}


def test_same_model_as_keras_and_h5_matches(tmp_path, base):
    _, path, tmp = base
    model, _, _ = base
    h5 = str(tmp / "b.h5")
    model.save(h5)
    result, data = run(tmp_path, path, h5)
    assert result.exit_code == 0, result.output
    assert data["status"] == "match" and data["first_divergence"] is None
    assert data["models"]["b"]["path"] == h5
    assert data["only_in_a"] == [] and data["only_in_b"] == [] and data["changed_layers"] == []
    assert {w["status"] for w in data["weights"]} == {"identical"}
    assert len(data["weights"]) == 8  # kernel and bias of conv1, conv2, hidden, out
    assert all(r["status"] == "match" for r in data["layers"])
    assert "A vs B" in result.stdout


def test_keras2_h5_migrated_to_keras3_matches(tmp_path, base):
    """A tf_keras (Keras 2) .h5 holding the same weights: the migration computes the same."""
    model, path, tmp = base
    old = _model("tf_keras")
    old.set_weights(model.get_weights())
    h5 = str(tmp / "keras2.h5")
    old.save(h5)
    result, data = run(tmp_path, h5, path)
    assert result.exit_code == 0, result.output
    assert data["models"]["a"]["keras_version"].startswith("2.")
    assert data["models"]["b"]["keras_version"].startswith("3.")
    assert {w["status"] for w in data["weights"]} == {"identical"}


def test_one_changed_weight_is_the_first_divergence(tmp_path, base):
    _, path = base[0], base[1]
    other, changed = _copy(base, "updated.keras")
    kernel, bias = other.get_layer("conv2").get_weights()
    kernel[1, 2, 0, 3] += 0.5
    other.get_layer("conv2").set_weights([kernel, bias])
    other.save(changed)
    result, data = run(tmp_path, path, changed)
    assert result.exit_code == 1, result.output
    assert data["first_divergence"] == "conv2"
    assert rows(data)["conv1"]["status"] == "match"
    assert rows(data)["conv2"]["own"]["status"] == "mismatch"
    differing = [(w["layer"], w["weight"]) for w in data["weights"] if w["status"] != "identical"]
    assert differing == [("conv2", "kernel")]
    weight = next(w for w in data["weights"] if w["layer"] == "conv2" and w["weight"] == "kernel")
    assert weight["status"] == "differs" and weight["max_abs_diff"] == pytest.approx(0.5)
    assert "weights that differ" in result.stdout and "kernel" in result.stdout


def test_renamed_layer_is_reported_in_a_and_b(tmp_path, base):
    _, path = base[0], base[1]
    other, renamed = _copy(base, "renamed.keras", hidden="hidden_v2")
    other.get_layer("hidden_v2").set_weights(base[0].get_layer("hidden").get_weights())
    other.save(renamed)
    result, data = run(tmp_path, path, renamed)
    assert result.exit_code == 0, result.output  # same values: the rename computes the same
    assert data["only_in_a"] == ["hidden"] and data["only_in_b"] == ["hidden_v2"]
    assert rows(data)["hidden"]["status"] == "skipped"
    assert rows(data)["hidden"]["reason"] == "only in A"
    assert rows(data)["hidden_v2"]["reason"] == "only in B"
    assert "layers only in A: hidden" in result.stdout


def test_removed_layer_changes_the_next_one(tmp_path, base):
    _, path = base[0], base[1]
    _, removed = _copy(base, "removed.keras", act=False)
    result, data = run(tmp_path, path, removed)
    assert result.exit_code == 1, result.output
    assert data["only_in_a"] == ["act"] and data["only_in_b"] == []
    assert data["first_divergence"] == "flat"  # fed tanh'd values in A, raw ones in B


def test_changed_config_is_listed(tmp_path, base):
    _, path = base[0], base[1]
    _, changed = _copy(base, "linear.keras", conv2_activation="linear")
    result, data = run(tmp_path, path, changed)
    assert result.exit_code == 1, result.output
    assert data["first_divergence"] == "conv2"
    assert data["changed_layers"] == [
        {"name": "conv2", "class_name": "Conv2D", "config": {"activation": ["relu", "linear"]}}
    ]
    assert "layer 'conv2' differs: activation relu in A, linear in B" in result.stdout


def test_different_input_shapes_are_one_line_exit_2(tmp_path, base):
    _, path, tmp = base
    other = _model(shape=(9, 8, 3))
    wider = str(tmp / "wider.keras")
    other.save(wider)
    result, _ = run(tmp_path, path, wider)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output
    assert "(batch, 9, 7, 3)" in lines[0] and "(batch, 9, 8, 3)" in lines[0]


def test_input_file_and_seed(tmp_path, base):
    model, path, tmp = base
    h5 = str(tmp / "seeded.h5")
    model.save(h5)
    x = tmp_path / "x.npy"
    np.save(x, make_input((3, *SHAPE)))
    result, data = run(tmp_path, path, h5, "--input", str(x))
    assert result.exit_code == 0, result.output
    assert data["batch"] == 3
    result, data = run(tmp_path, path, h5, "--seed", "7", "--batch", "4")
    assert result.exit_code == 0, result.output
    assert data["batch"] == 4


def test_model_files_are_recognised_by_content(tmp_path, base):
    model, path, tmp = base
    disguised = tmp_path / "model.bin"
    disguised.write_bytes(open(path, "rb").read())
    np.savez(tmp_path / "x.npz", x=np.zeros(3))
    np.save(tmp_path / "x.npy", np.zeros(3))
    h5 = str(tmp / "plain.h5")
    model.save(h5)
    assert is_model_file(path) and is_model_file(h5) and is_model_file(disguised)
    assert not is_model_file(tmp_path / "x.npz") and not is_model_file(tmp_path / "x.npy")
    assert not is_model_file(tmp_path / "missing.keras")


def test_changed_weight_shapes_are_reported_not_a_crash(tmp_path, base):
    """B's hidden layer is wider: its weights and the next layer's do not fit A's."""
    _, path = base[0], base[1]
    k = keras_module("keras")
    x = k.Input(SHAPE)
    y = k.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv1")(x)
    y = k.layers.Conv2D(5, 3, activation="relu", name="conv2")(y)
    y = k.layers.Activation("tanh", name="act")(y)
    y = k.layers.Dense(7, name="hidden")(k.layers.Flatten(name="flat")(y))
    wider = k.Model(x, k.layers.Dense(2, name="out")(y))
    wider_path = str(tmp_path / "wider_hidden.keras")
    wider.save(wider_path)
    result, data = run(tmp_path, path, wider_path)
    assert result.exit_code == 1, result.output
    shapes = {(w["layer"], w["weight"]): w["status"] for w in data["weights"]}
    assert shapes[("hidden", "kernel")] == "shape" and shapes[("out", "kernel")] == "shape"
    assert {"name": "hidden", "class_name": "Dense", "config": {"units": [6, 7]}} in data[
        "changed_layers"
    ]
    assert "output shape in A" in rows(data)["hidden"]["reason"]
    assert "cannot take B's inputs" in rows(data)["out"]["own"]["reason"]


def test_options_for_one_model_are_refused_with_two(tmp_path, base):
    model, path, tmp = base
    h5 = str(tmp / "refuse.h5")
    model.save(h5)
    result, _ = run(tmp_path, path, h5, "--against", str(tmp_path / "mine.npz"))
    assert result.exit_code == 2 and "expected none of --against" in result.stderr


def test_diff_a_b_imports_no_tensorflow(base):
    """Both files run in the engine: a fresh process never imports TensorFlow or Keras."""
    model, path, tmp = base
    h5 = str(tmp / "no_tf.h5")
    model.save(h5)
    code = (
        "import sys; from click.testing import CliRunner; from kerascheck.cli import main; "
        f"r = CliRunner().invoke(main, ['diff', {path!r}, {h5!r}]); "
        "print(r.exit_code, 'tensorflow' in sys.modules, 'keras' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["0", "False", "False"], done.stdout + done.stderr


def test_input_given_twice_is_refused(tmp_path, base):
    _, path, _ = base
    np.save(tmp_path / "x.npy", make_input((2, *SHAPE)))
    x = str(tmp_path / "x.npy")
    result, _ = run(tmp_path, path, x, "--input", x)
    assert result.exit_code == 2 and "expected INPUT or --input, found both" in result.stderr
