"""Files that are not loadable models fail with a KerascheckError, never anything else.

Each message must name what was expected and what was found, so the CLI's one
line on stderr is enough to fix the problem.
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile

import h5py
import numpy as np
import pytest
from helpers import keras_module, randomize_weights

import kerascheck
from kerascheck import KerascheckError, UnsupportedLayerError


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("bad")


def _model(k):
    model = k.Sequential(
        [k.Input((4,)), k.layers.Dense(3, name="hidden"), k.layers.Dense(2, name="out")],
        name="small",
    )
    randomize_weights(model)
    return model


@pytest.fixture(scope="module")
def good_keras(root):
    path = str(root / "good.keras")
    _model(keras_module("keras")).save(path)
    return path


@pytest.fixture(scope="module")
def good_h5(root):
    path = str(root / "good.h5")
    _model(keras_module("tf_keras")).save(path)
    return path


def _load_fails(path, *patterns):
    """Load must raise exactly a KerascheckError (or subclass) whose message matches all."""
    with pytest.raises(Exception) as info:
        kerascheck.load(path)
    assert isinstance(info.value, KerascheckError), f"{type(info.value).__name__}: {info.value}"
    message = str(info.value)
    for pattern in patterns:
        assert pattern in message, f"{pattern!r} not in {message!r}"
    return message


def test_missing_file(root):
    _load_fails(str(root / "nope.keras"), "no such file", "expected a .keras or .h5")


def test_directory(root):
    _load_fails(str(root), "is a directory", "expected a .keras or .h5")


def test_empty_file(root):
    path = root / "empty.keras"
    path.write_bytes(b"")
    _load_fails(str(path), "empty", "expected a .keras or .h5")


def test_random_bytes(root):
    path = root / "random.h5"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    _load_fails(str(path), "expected a .keras zip archive or an HDF5 .h5 file", "found neither")


def test_truncated_zip(root, good_keras):
    path = root / "truncated.keras"
    data = open(good_keras, "rb").read()
    path.write_bytes(data[: len(data) // 2])
    _load_fails(str(path), "expected a .keras zip archive", "unreadable")


def test_truncated_h5(root, good_h5):
    path = root / "truncated.h5"
    data = open(good_h5, "rb").read()
    path.write_bytes(data[: len(data) // 2])
    _load_fails(str(path), "expected a readable HDF5 file")


def _zip_with(path, members: dict):
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return str(path)


def _members(path):
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def test_zip_without_config(root, good_keras):
    members = _members(good_keras)
    del members["config.json"]
    path = _zip_with(root / "noconfig.keras", members)
    _load_fails(path, "expected 'config.json'", "found", "model.weights.h5")


def test_zip_without_weights(root, good_keras):
    members = _members(good_keras)
    del members["model.weights.h5"]
    path = _zip_with(root / "noweights.keras", members)
    _load_fails(path, "expected 'model.weights.h5'", "config.json")


def test_invalid_json_config(root, good_keras):
    members = _members(good_keras)
    members["config.json"] = b'{"class_name": "Sequential", "config": {'
    path = _zip_with(root / "badjson.keras", members)
    _load_fails(path, "expected JSON in config.json", "found invalid text")


def test_config_of_wrong_kind(root, good_keras):
    members = _members(good_keras)
    members["config.json"] = b"[1, 2, 3]"
    path = _zip_with(root / "listjson.keras", members)
    _load_fails(path, "expected a Keras model config", "found a list")


def test_damaged_weight_store(root, good_keras):
    members = _members(good_keras)
    members["model.weights.h5"] = b"not hdf5 at all"
    path = _zip_with(root / "badweights.keras", members)
    _load_fails(path, "model.weights.h5", "expected a readable HDF5 file")


@pytest.mark.parametrize(
    "flavor, name",
    [("tf_keras", "legacy.h5"), ("tf_keras", "new.weights.h5"), ("keras", "k3.weights.h5")],
)
def test_weights_only_h5(root, flavor, name):
    """save_weights() files: the legacy layout (`layer_names`) and the `.weights.h5` one."""
    path = str(root / f"{flavor}_{name}")
    _model(keras_module(flavor)).save_weights(path)
    _load_fails(path, "expected a model config", "found weights only", "model.save()")


def test_subclassed_model(root, good_keras):
    members = _members(good_keras)
    config = json.loads(members["config.json"])
    config["class_name"] = "MyModel"
    config.pop("module", None)
    config["registered_name"] = None
    members["config.json"] = json.dumps(config).encode()
    path = _zip_with(root / "subclassed.keras", members)
    _load_fails(path, "expected a Sequential or Functional model", "'MyModel'")


@pytest.mark.parametrize("fmt", ["h5", "keras"])
def test_weight_shape_does_not_match_config(root, good_h5, good_keras, fmt):
    """A kernel of the wrong shape (e.g. a file edited by another tool): named, both shapes."""
    if fmt == "h5":
        path = str(root / "wrongshape.h5")
        shutil.copy(good_h5, path)
        with h5py.File(path, "r+") as handle:
            group = handle["model_weights/hidden"]
            kernel = group.attrs["weight_names"][0]
            kernel = kernel.decode() if isinstance(kernel, bytes) else kernel
            del group[kernel]
            group[kernel] = np.zeros((5, 3), dtype="float32")
    else:
        members = _members(good_keras)
        scratch = str(root / "weights_scratch.h5")
        with open(scratch, "wb") as handle:
            handle.write(members["model.weights.h5"])
        with h5py.File(scratch, "r+") as store:
            del store["layers/dense/vars/0"]
            store["layers/dense/vars/0"] = np.zeros((5, 3), dtype="float32")
        members["model.weights.h5"] = open(scratch, "rb").read()
        path = _zip_with(root / "wrongshape.keras", members)
    _load_fails(path, "'hidden'", "(4, 3)", "(5, 3)")


def test_missing_weights(root, good_h5):
    path = str(root / "noweights.h5")
    shutil.copy(good_h5, path)
    with h5py.File(path, "r+") as handle:
        del handle["model_weights/out"]
    _load_fails(path, "'out'", "(3, 2)", "no weights")


def test_non_numeric_weights(root, good_h5):
    path = str(root / "strings.h5")
    shutil.copy(good_h5, path)
    with h5py.File(path, "r+") as handle:
        group = handle["model_weights/hidden"]
        kernel = group.attrs["weight_names"][0]
        kernel = kernel.decode() if isinstance(kernel, bytes) else kernel
        del group[kernel]
        group[kernel] = np.array([b"a", b"b"])
    _load_fails(path, "expected numeric weights", "found dtype")


def test_unsupported_layer(root):
    k = keras_module("keras")
    x = k.Input((5, 3))
    path = str(root / "spectral.keras")
    k.Model(x, k.layers.SpectralNormalization(k.layers.Dense(2), name="wrapped")(x)).save(path)
    with pytest.raises(UnsupportedLayerError) as info:
        kerascheck.load(path)
    message = str(info.value)
    assert "'wrapped'" in message and "'SpectralNormalization'" in message
    assert "`kerascheck layers`" in message


def _edit_config(root, good_keras, name, edit):
    members = _members(good_keras)
    config = json.loads(members["config.json"])
    edit(config)
    members["config.json"] = json.dumps(config).encode()
    return _zip_with(root / name, members)


@pytest.mark.parametrize(
    "name, edit, patterns",
    [
        (
            "dangling",
            lambda c: c["config"]["layers"][1].update({"class_name": 7}),
            ["expected each layer entry to be a dict with a 'class_name'"],
        ),
        (
            "duplicate",
            lambda c: c["config"]["layers"][2]["config"].update({"name": "hidden"}),
            ["expected unique layer names", "'hidden'"],
        ),
        (
            "no_layers",
            lambda c: c["config"].update({"layers": []}),
            ["expected layers in the Sequential model", "found none"],
        ),
        (
            "bad_input_shape",
            lambda c: c["config"]["layers"][0]["config"].update({"batch_shape": [None, "x"]}),
            ["expected sizes or None", "[None, 'x']"],
        ),
        (
            "units_not_a_number",
            lambda c: c["config"]["layers"][1]["config"].update({"units": "abc"}),
            ["'hidden' (Dense)", "expected a config Keras writes", "'abc'"],
        ),
        (
            "layers_not_list",
            lambda c: c["config"].update({"layers": {"a": 1}}),
            ["expected layers in the Sequential model"],
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_malformed_sequential_configs(root, good_keras, name, edit, patterns):
    _load_fails(_edit_config(root, good_keras, f"{name}.keras", edit), *patterns)


@pytest.fixture(scope="module")
def good_functional(root):
    k = keras_module("keras")
    x = k.Input((4,), name="x")
    path = str(root / "functional.keras")
    k.Model(x, k.layers.Dense(2, name="out")(k.layers.Dense(3, name="hidden")(x))).save(path)
    return path


def _set_history(config, layer_index, history):
    node = config["config"]["layers"][layer_index]["inbound_nodes"][0]
    node["args"][0]["config"]["keras_history"] = history


@pytest.mark.parametrize(
    "name, edit, patterns",
    [
        (
            "unknown_ref",
            lambda c: _set_history(c, 2, ["ghost", 0, 0]),
            ["'ghost'", "does not define"],
        ),
        (
            "bad_ref",
            lambda c: _set_history(c, 2, "hidden"),
            ["expected a [layer, node, tensor] reference", "'out'"],
        ),
        (
            "cycle",
            lambda c: _set_history(c, 1, ["out", 0, 0]),
            ["waiting for", "which no call produces"],
        ),
        (
            "missing_output_call",
            lambda c: c["config"].update({"output_layers": [["out", 3, 0]]}),
            ["expected the model outputs", "out[3]"],
        ),
        (
            "no_outputs",
            lambda c: c["config"].update({"output_layers": []}),
            ["expected model inputs and outputs", "0 output(s)"],
        ),
        (
            "input_not_input_layer",
            lambda c: c["config"].update({"input_layers": [["hidden", 0, 0]]}),
            ["expected model input 'hidden' to be an InputLayer", "Dense"],
        ),
        (
            "tensor_kwarg",
            lambda c: c["config"]["layers"][2]["inbound_nodes"][0]["kwargs"].update(
                {"scale": c["config"]["layers"][2]["inbound_nodes"][0]["args"][0]}
            ),
            ["'out' (Dense) is called with 'scale'", "accepts"],
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_malformed_functional_configs(root, good_functional, name, edit, patterns):
    _load_fails(_edit_config(root, good_functional, f"{name}.keras", edit), *patterns)


def test_declared_member_size_is_checked(root, good_keras, monkeypatch):
    """Sizes are checked from the zip directory before a member is inflated."""
    from kerascheck.loading import keras_zip

    monkeypatch.setattr(keras_zip, "MAX_CONFIG_BYTES", 10)
    _load_fails(good_keras, "of at most 10 bytes", "found")


def test_error_types_are_kerascheck_errors_for_garbage_zip_members(root, good_keras):
    """Random bytes in every member: still a KerascheckError."""
    rng = np.random.default_rng(1)
    members = {name: rng.bytes(64) for name in _members(good_keras)}
    _load_fails(_zip_with(root / "garbage.keras", members), "expected")


def test_valid_files_still_load(good_keras, good_h5):
    x = np.linspace(-3, 3, 8, dtype="float32").reshape(2, 4)
    for path in (good_keras, good_h5):
        assert kerascheck.load(path).predict(x).shape == (2, 2)
    assert os.path.exists(good_keras)
