"""The command line: each command, each exit code, and each kind of bad input.

Every failure must be exit code 2 with one line on stderr naming what was
expected and what was found, never a traceback.
"""

from __future__ import annotations

import json
import os
import zipfile

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import keras_module, randomize_weights

import kerascheck
from kerascheck.cli import main
from kerascheck.engine.layers import core

SAMPLES = os.path.join(os.path.dirname(__file__), "..", "sample_models")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Small models and inputs written once for the whole module."""
    keras = keras_module("keras")
    tf_keras = keras_module("tf_keras")
    root = tmp_path_factory.mktemp("cli")
    paths = {}

    dense = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(8, activation="relu"),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    randomize_weights(dense)
    paths["dense"] = str(root / "dense.keras")
    dense.save(paths["dense"])
    np.save(root / "dense_in.npy", np.linspace(-4, 4, 24, dtype="float32").reshape(4, 6))
    paths["dense_in"] = str(root / "dense_in.npy")

    a = keras.Input((4,), name="left")
    b = keras.Input((5,), name="right")
    hidden = keras.layers.Dense(3, name="hidden")(a)
    other = keras.layers.Dense(3, name="other")(b)
    two = keras.Model([a, b], [hidden, other])
    randomize_weights(two)
    paths["two"] = str(root / "two.keras")
    two.save(paths["two"])

    lam = tf_keras.Sequential(
        [tf_keras.Input((3,)), tf_keras.layers.Lambda(lambda t: t * 2, name="double")]
    )
    paths["lambda"] = str(root / "lambda.h5")
    lam.save(paths["lambda"])

    weights_only = str(root / "weights_only.weights.h5")
    dense.save_weights(weights_only)
    paths["weights_only"] = weights_only

    paths["empty"] = str(root / "empty.keras")
    open(paths["empty"], "wb").close()
    paths["random"] = str(root / "random.h5")
    with open(paths["random"], "wb") as handle:
        handle.write(np.random.default_rng(0).bytes(4096))
    paths["truncated"] = str(root / "truncated.keras")
    with open(paths["dense"], "rb") as src, open(paths["truncated"], "wb") as dst:
        dst.write(src.read()[:300])
    paths["no_config"] = str(root / "no_config.keras")
    with zipfile.ZipFile(paths["no_config"], "w") as archive:
        archive.writestr("metadata.json", "{}")
        archive.writestr("model.weights.h5", b"")
    return paths


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result


def assert_clean_error(result, *fragments):
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) <= 2, result.stderr
    assert lines and lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


def test_predict_prints_and_saves_npy(files, tmp_path):
    out = tmp_path / "pred.npy"
    result = run("predict", files["dense"], files["dense_in"], "-o", out)
    assert result.exit_code == 0, result.output
    assert "shape (4, 3)" in result.stdout
    assert "top classes" in result.stdout  # a softmax output is shown as a classifier
    x = np.load(files["dense_in"])
    np.testing.assert_array_equal(np.load(out), kerascheck.load(files["dense"]).predict(x))


def test_predict_with_keras_engine_agrees_with_numpy(files, tmp_path):
    ours, theirs = tmp_path / "ours.npy", tmp_path / "theirs.npy"
    assert run("predict", files["dense"], files["dense_in"], "-o", ours).exit_code == 0
    result = run("predict", files["dense"], files["dense_in"], "--engine", "keras", "-o", theirs)
    assert result.exit_code == 0, result.output
    assert "keras 3" in result.stdout
    np.testing.assert_allclose(np.load(ours), np.load(theirs), rtol=1e-5, atol=1e-6)


def test_predict_two_outputs_to_npz(files, tmp_path):
    out = tmp_path / "pred.npz"
    result = run("predict", files["two"], "-o", out, "--batch", 3)
    assert result.exit_code == 0, result.output
    with np.load(out) as saved:
        assert sorted(saved.files) == ["hidden", "other"]
        assert saved["hidden"].shape == (3, 3)


def test_predict_npy_for_two_outputs_is_refused(files, tmp_path):
    result = run("predict", files["two"], "-o", tmp_path / "pred.npy")
    assert_clean_error(result, "2 outputs", ".npz")


def test_diff_match_exit_0_and_json(files, tmp_path):
    report = tmp_path / "report.json"
    result = run("diff", files["dense"], files["dense_in"], "--layer-wise", "--json", report)
    assert result.exit_code == 0, result.output
    assert "MATCH" in result.stdout
    data = json.loads(report.read_text())
    assert data["schema"] == 1 and data["status"] == "match"
    assert data["first_divergence"] is None
    assert data["tolerance"] == {"atol": 1e-5, "rtol": 1e-4}
    assert [row["name"] for row in data["layers"]] == [
        call.name for call in kerascheck.load(files["dense"]).spec.calls
    ]
    for row in data["layers"]:
        assert row["status"] == "match"
        assert set(row) >= {
            "class_name",
            "output_shape",
            "max_abs_diff",
            "max_rel_diff",
            "mean_abs_diff",
            "worst_index",
        }


def test_diff_outputs_only_without_layer_wise(files):
    result = run("diff", files["two"], "--json", "/dev/null")
    assert result.exit_code == 0, result.output
    assert "hidden" in result.stdout and "other" in result.stdout


def test_diff_divergence_exit_1_names_the_layer(files, tmp_path, monkeypatch):
    """Break the engine's second Dense on purpose: one element off by 1% of its magnitude."""
    broken = kerascheck.load(files["dense"]).spec.calls[1].layer
    original = core.Dense.call

    def off_by_one_percent(self, x):
        y = original(self, x)
        if self.name == broken:
            y = y.copy()
            y[0, 0] += 0.01 * np.max(np.abs(y))
        return y

    monkeypatch.setattr(core.Dense, "call", off_by_one_percent)
    report = tmp_path / "report.json"
    result = run("diff", files["dense"], files["dense_in"], "--layer-wise", "--json", report)
    assert result.exit_code == 1, result.output
    data = json.loads(report.read_text())
    assert data["status"] == "mismatch"
    assert data["first_divergence"] == broken
    assert [r["status"] for r in data["layers"]] == ["match", "mismatch"]
    assert "MISMATCH" in result.stdout and broken in result.stdout
    row = next(r for r in data["layers"] if r["name"] == broken)
    assert row["worst_index"] == [0, 0]


def test_diff_random_inputs_are_seeded(files, tmp_path):
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    assert run("diff", files["dense"], "--seed", 3, "--json", first).exit_code == 0
    assert run("diff", files["dense"], "--seed", 3, "--json", second).exit_code == 0
    rows = [json.loads(p.read_text())["layers"] for p in (first, second)]
    assert rows[0][0]["worst_index"] == rows[1][0]["worst_index"]


@pytest.mark.parametrize(
    "name",
    [
        "seed000_regressor.keras",
        "seed000_regressor_keras2.h5",
        "seed004_cnn.keras",
        "seed001_channels_first.keras",
    ],
)
def test_sample_models_match_layer_by_layer(name):
    model = os.path.join(SAMPLES, name)
    inputs = model.rsplit(".", 1)[0] + ".input.npy"
    result = run("diff", "--layer-wise", model, inputs)
    assert result.exit_code == 0, result.output


def test_summary_lists_layers_and_params(files):
    keras = keras_module("keras")
    result = run("summary", files["two"])
    assert result.exit_code == 0, result.output
    for name in ("left", "right", "hidden", "other"):
        assert name in result.stdout
    expected = keras.models.load_model(files["two"]).count_params()
    assert f"Total params: {expected:,}" in result.stdout


def test_summary_sample_matches_keras_param_count():
    keras = keras_module("keras")
    path = os.path.join(SAMPLES, "seed000_regressor.keras")
    result = run("summary", path)
    assert result.exit_code == 0, result.output
    assert "Total params: 6,211" in result.stdout  # the count the seeds/000 user saw
    assert keras.models.load_model(path).count_params() == 6211
    assert "(None, 9, 1, 20)" in result.stdout


@pytest.mark.parametrize(
    "key, fragments",
    [
        ("missing", ["no such file"]),
        ("empty", ["empty"]),
        ("random", ["expected a .keras zip archive or an HDF5 .h5 file"]),
        ("truncated", ["zip"]),
        ("no_config", ["config.json"]),
        ("weights_only", ["model config"]),
        ("lambda", ["double", "Lambda"]),
    ],
)
@pytest.mark.parametrize("command", ["predict", "diff", "summary"])
def test_bad_model_files_exit_2(files, key, fragments, command):
    path = files.get(key, "/nonexistent/model.keras")
    assert_clean_error(run(command, path), *fragments)


def test_wrong_input_shape_says_what_the_model_expects(files, tmp_path):
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((2, 7), dtype="float32"))
    assert_clean_error(run("predict", files["dense"], bad), "(batch, 6)", "(2, 7)")


def test_wrong_input_dtype(files, tmp_path):
    bad = tmp_path / "bad.npy"
    np.save(bad, np.array([["a"] * 6], dtype="U1"))
    assert_clean_error(run("diff", files["dense"], bad), "numeric")


def test_one_array_for_two_inputs(files, tmp_path):
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((2, 4), dtype="float32"))
    assert_clean_error(run("predict", files["two"], bad), "2 inputs", "left", "right")


def test_npz_missing_an_input_name(files, tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, left=np.zeros((2, 4), dtype="float32"))
    assert_clean_error(run("predict", files["two"], bad), "missing ['right']")


def test_npz_positional_keys_are_accepted(files, tmp_path):
    good = tmp_path / "good.npz"
    np.savez(good, np.zeros((2, 4), dtype="float32"), np.ones((2, 5), dtype="float32"))
    assert run("predict", files["two"], good).exit_code == 0


def test_missing_input_file(files):
    assert_clean_error(run("predict", files["dense"], "/nonexistent/x.npy"), "no such input file")


def test_unsupported_layer_lists_supported_classes(tmp_path):
    keras = keras_module("keras")
    wrapped = keras.layers.SpectralNormalization(keras.layers.Dense(2), name="wrapped")
    model = keras.Sequential([keras.Input((4, 3)), wrapped])
    path = tmp_path / "spectral.keras"
    model.save(path)
    assert_clean_error(
        run("summary", path), "wrapped", "SpectralNormalization", "kerascheck layers"
    )
    listed = run("layers")
    assert listed.exit_code == 0
    families = dict(line.split(" (", 1) for line in listed.stdout.splitlines())
    assert "Dense" in families["core"] and "LSTM" in families["recurrent"]
    assert "SpectralNormalization" not in listed.stdout
    assert run("layers", "--family", "nope").exit_code == 2


BLOCK_TENSORFLOW = """
import sys

class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "keras", "tf_keras"):
            raise ImportError(f"{name} is blocked in this test")

sys.meta_path.insert(0, Block())
from kerascheck.cli import main
sys.argv = ["kerascheck", *sys.argv[1:]]
try:
    main()
finally:
    loaded = [m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "tf_keras")]
    assert not loaded, loaded
"""


@pytest.mark.parametrize("args", [["summary"], ["predict"]])
def test_engine_commands_run_without_tensorflow(args):
    import subprocess
    import sys

    model = os.path.join(SAMPLES, "seed000_regressor.keras")
    done = subprocess.run(
        [sys.executable, "-c", BLOCK_TENSORFLOW, *args, model],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "dense_2" in done.stdout


def test_diff_without_tensorflow_is_a_clean_error():
    import subprocess
    import sys

    model = os.path.join(SAMPLES, "seed000_regressor.keras")
    done = subprocess.run(
        [sys.executable, "-c", BLOCK_TENSORFLOW, "diff", model],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: the Keras oracle needs 'keras' installed")


def test_keras2_file_keras3_cannot_load_runs_in_tf_keras(tmp_path):
    """A Keras 2 DepthwiseConv2D config (with `groups`) does not load in Keras 3."""
    tf_keras = keras_module("tf_keras")
    model = tf_keras.Sequential(
        [tf_keras.Input((8, 8, 3)), tf_keras.layers.DepthwiseConv2D(3, depth_multiplier=2)]
    )
    randomize_weights(model)
    path = tmp_path / "depthwise_keras2.h5"
    model.save(path)
    report = tmp_path / "report.json"
    result = run("diff", path, "--layer-wise", "--json", report)
    assert result.exit_code == 0, result.output
    oracle = json.loads(report.read_text())["oracle"]
    assert oracle["name"] == "tf_keras" and "Keras 3 cannot load" in oracle["reason"]
    forced = run("diff", path, "--oracle", "keras")
    assert_clean_error(forced, "keras 3", "cannot load", "DepthwiseConv2D")
