"""Model files that would need code execution, or data outside the file, are refused.

kerascheck never deserializes code: these files must fail with UnsafeModelError
naming the layer (or the HDF5 entry), and must not run anything on the way.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import zipfile

import h5py
import numpy as np
import pytest
from helpers import keras_module, randomize_weights

import kerascheck
from kerascheck import UnsafeModelError

FORMATS = (".keras", ".h5")
FLAVORS = ("keras", "tf_keras")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("safety")


def _save(model, path, flavor):
    if flavor == "tf_keras" and path.endswith(".keras"):
        model.save(path, save_format="keras")
    else:
        model.save(path)
    return path


def _dense_model(k, name="plain"):
    model = k.Sequential(
        [k.Input((3,)), k.layers.Dense(2, name="d1"), k.layers.Dense(2, name="d2")], name=name
    )
    randomize_weights(model)
    return model


# -- Lambda ----------------------------------------------------------------------------


def _lambda_model(k, marker):
    """A Lambda whose code writes `marker` when it runs (Keras runs it once to build)."""

    def touch_and_double(t):
        with open(marker, "a"):
            pass
        return t * 2.0

    x = k.Input((3,), name="x")
    hidden = k.layers.Dense(3, name="hidden")(x)
    doubled = k.layers.Lambda(touch_and_double, name="doubler")(hidden)
    return k.Model(x, k.layers.Dense(2, name="out")(doubled), name="with_lambda")


@pytest.mark.parametrize("ext", FORMATS)
@pytest.mark.parametrize("flavor", FLAVORS)
def test_lambda_is_refused_and_never_run(root, flavor, ext):
    marker = str(root / f"lambda_ran_{flavor}{ext}.txt")
    path = _save(
        _lambda_model(keras_module(flavor), marker), str(root / f"lambda_{flavor}{ext}"), flavor
    )
    assert os.path.exists(marker), "the Lambda should have run once while Keras built it"
    os.remove(marker)
    with pytest.raises(UnsafeModelError, match="'doubler'.*Lambda"):
        kerascheck.load(path)
    assert not os.path.exists(marker), "kerascheck executed the Lambda's code"


def test_lambda_nested_in_a_submodel_is_named(root):
    k = keras_module("keras")
    inner_in = k.Input((3,))
    inner = k.Model(
        inner_in, k.layers.Lambda(lambda t: t + 1.0, name="inner_lambda")(inner_in), name="inner"
    )
    x = k.Input((3,))
    path = str(root / "nested_lambda.keras")
    k.Model(x, inner(x)).save(path)
    with pytest.raises(UnsafeModelError, match="'inner_lambda'"):
        kerascheck.load(path)


def test_serialized_lambda_anywhere_in_a_config_is_refused(root):
    """A `__lambda__` value (Keras 3's serialized function) in any layer config."""
    source = _save(_dense_model(keras_module("keras")), str(root / "to_edit.keras"), "keras")
    path = str(root / "lambda_activation.keras")

    def edit(config):
        dense = config["config"]["layers"][1]
        dense["config"]["activation"] = {
            "class_name": "__lambda__",
            "config": {"code": "ZZZ", "defaults": None, "closure": None},
        }
        return config

    _rewrite_config(source, path, edit)
    with pytest.raises(UnsafeModelError, match="'d1'.*lambda"):
        kerascheck.load(path)


# -- custom classes --------------------------------------------------------------------


def _custom_layer_class(k, flavor):
    register = (
        k.saving.register_keras_serializable
        if flavor == "keras"
        else k.utils.register_keras_serializable
    )

    @register(package="kctest")
    class Scale(k.layers.Layer):
        def call(self, inputs):
            return inputs * 3.0

    return Scale


@pytest.mark.parametrize("ext", FORMATS)
@pytest.mark.parametrize("flavor", FLAVORS)
def test_custom_registered_layer_is_refused(root, flavor, ext):
    k = keras_module(flavor)
    scale = _custom_layer_class(k, flavor)
    x = k.Input((3,))
    model = k.Model(x, scale(name="tripler")(k.layers.Dense(3)(x)))
    path = _save(model, str(root / f"custom_{flavor}{ext}"), flavor)
    with pytest.raises(UnsafeModelError, match="'tripler'.*custom|'tripler'.*module"):
        kerascheck.load(path)


@pytest.mark.parametrize(
    "edit, pattern",
    [
        ({"module": "evil.layers"}, "'d1'.*module 'evil.layers'"),
        ({"registered_name": "evil>Dense"}, "'d1'.*custom class 'evil>Dense'"),
        ({"class_name": "TFSMLayer"}, "'d1' is a TFSMLayer"),
        ({"class_name": "TorchModuleWrapper"}, "'d1' is a TorchModuleWrapper"),
        ({"config": {"name": "d1", "vocabulary": "/etc/passwd"}}, "'d1'.*'/etc/passwd'"),
    ],
    ids=["module", "registered_name", "TFSMLayer", "TorchModuleWrapper", "vocabulary_path"],
)
def test_code_bearing_entries_are_refused(root, edit, pattern):
    """Each item of DESIGN.md's "Loading safely" list, planted in an otherwise valid file."""
    source = _save(_dense_model(keras_module("keras")), str(root / "to_edit2.keras"), "keras")
    path = str(root / f"edited_{sorted(edit)[0]}_{len(pattern)}.keras")

    def apply(config):
        config["config"]["layers"][1].update(edit)
        return config

    _rewrite_config(source, path, apply)
    with pytest.raises(UnsafeModelError, match=pattern):
        kerascheck.load(path)


def _rewrite_config(source, path, edit):
    """Copy a .keras archive with `edit(config)` applied to config.json."""
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(path, "w") as dst:
        for name in src.namelist():
            data = src.read(name)
            if name == "config.json":
                data = json.dumps(edit(json.loads(data))).encode()
            dst.writestr(name, data)


# -- weight stores ---------------------------------------------------------------------


def test_npz_weight_store_is_refused(root):
    """Keras 3 can write weights as model.weights.npz; NumPy archives may hold pickles."""
    from keras.src.saving import saving_lib

    path = str(root / "npz.keras")
    saving_lib.save_model(_dense_model(keras_module("keras")), path, weights_format="npz")
    assert "model.weights.npz" in zipfile.ZipFile(path).namelist()
    with pytest.raises(UnsafeModelError, match="model.weights.npz"):
        kerascheck.load(path)


@pytest.fixture(scope="module")
def plain_h5(root):
    """A valid tf_keras .h5 and the name of the group and dataset holding d1's kernel."""
    path = _save(_dense_model(keras_module("tf_keras")), str(root / "plain.h5"), "tf_keras")
    with h5py.File(path, "r") as handle:
        group = handle["model_weights/d1"]
        kernel = [n.decode() if isinstance(n, bytes) else n for n in group.attrs["weight_names"]][0]
    kerascheck.load(path)  # valid before any edit
    return path, "model_weights/d1", kernel


def _edited_h5(plain_h5, root, name, edit):
    source, group, kernel = plain_h5
    path = str(root / name)
    shutil.copy(source, path)
    with h5py.File(path, "r+") as handle:
        edit(handle, group, kernel)
    return path


def _soft_link(handle, group, kernel):
    """d1's kernel replaced by a soft link to d2's (same shape): would load if followed."""
    other = handle["model_weights/d2"]
    target = [n.decode() if isinstance(n, bytes) else n for n in other.attrs["weight_names"]][0]
    del handle[group][kernel]
    handle[group][kernel] = h5py.SoftLink(f"/model_weights/d2/{target}")


def _external_link(handle, group, kernel):
    side = handle.filename + ".side.h5"
    with h5py.File(side, "w") as other:
        other["k"] = np.zeros(handle[group][kernel].shape, dtype="float32")
    del handle[group][kernel]
    handle[group][kernel] = h5py.ExternalLink(side, "/k")


def _unused_soft_link(handle, group, kernel):
    """A link nothing reads still makes the file refused: the whole file is checked."""
    handle["model_weights"]["elsewhere"] = h5py.SoftLink("/model_weights/d2")


def _external_storage(handle, group, kernel):
    shape = handle[group][kernel].shape
    raw = handle.filename + ".raw"
    np.zeros(shape, dtype="float32").tofile(raw)
    del handle[group][kernel]
    handle[group].create_dataset(
        kernel, shape=shape, dtype="float32", external=[(raw, 0, 4 * int(np.prod(shape)))]
    )


def _virtual_dataset(handle, group, kernel):
    shape = handle[group][kernel].shape
    layout = h5py.VirtualLayout(shape=shape, dtype="float32")
    layout[...] = h5py.VirtualSource(handle[group][kernel])
    handle[group].create_virtual_dataset("virtual_kernel", layout)
    del handle[group][kernel]
    handle[group][kernel] = handle[group]["virtual_kernel"]


@pytest.mark.parametrize(
    "edit, pattern",
    [
        (_soft_link, "SoftLink"),
        (_external_link, "ExternalLink"),
        (_unused_soft_link, "elsewhere.*SoftLink"),
        (_external_storage, "outside the model file"),
        (_virtual_dataset, "outside the model file"),
    ],
    ids=["soft_link", "external_link", "unused_soft_link", "external_storage", "virtual"],
)
def test_h5_pointing_outside_itself_is_refused(plain_h5, root, edit, pattern):
    path = _edited_h5(plain_h5, root, f"{edit.__name__}.h5", edit)
    with pytest.raises(UnsafeModelError, match=pattern):
        kerascheck.load(path)


def test_link_inside_keras_weight_store_is_refused(root):
    """The same rule for the HDF5 file inside a .keras archive."""
    source = _save(_dense_model(keras_module("keras")), str(root / "to_link.keras"), "keras")
    path = str(root / "linked.keras")
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(path, "w") as dst:
        for name in src.namelist():
            data = src.read(name)
            if name == "model.weights.h5":
                buffer = io.BytesIO(data)
                with h5py.File(buffer, "r+") as store:
                    kernel = store["layers/dense/vars/0"]
                    del store["layers/dense/vars/0"]
                    store["layers/dense/vars/0"] = h5py.SoftLink("/layers/dense_1/vars/0")
                    assert kernel is not None
                data = buffer.getvalue()
            dst.writestr(name, data)
    with pytest.raises(UnsafeModelError, match="SoftLink"):
        kerascheck.load(path)
