"""Whole models, every saved shape: .keras and .h5, Keras 3 and tf_keras.

Each builder makes a small model in real Keras and names every layer call it
expects kerascheck's `.run()` to report, keeping the Keras tensor of each call
so the per-call values are compared too, not only the final prediction.
Models are saved once per module (per Keras flavor, both file formats).
"""

from __future__ import annotations

import json
import os

import h5py
import numpy as np
import pytest
from helpers import ATOL, RTOL, assert_matches, keras_module, make_input, randomize_weights

import kerascheck

FORMATS = (".keras", ".h5")
FLAVORS = ("keras", "tf_keras")


# -- builders: each returns (model, {call name: Keras tensor(s) of that call}) ------------


def _sequential_calls(model):
    """Sequential layers are called once each, in order; their values are found by
    applying the layers one after the other (a nested Sequential's `.output` belongs to
    its own graph in tf_keras, so symbolic outputs cannot be used)."""
    return {layer.name: layer for layer in model.layers}


def sequential_with_input(k):
    model = k.Sequential(
        [
            k.Input((6,)),
            k.layers.Dense(5, activation="tanh", name="d1"),
            k.layers.Activation("relu", name="act"),
            k.layers.Dense(3, name="d2"),
        ],
        name="seq_in",
    )
    return model, _sequential_calls(model)


def sequential_built(k):
    """No Input: the model is built from a shape, as after `model.build()`."""
    model = k.Sequential(
        [k.layers.Dense(4, activation="relu", name="d1"), k.layers.Dense(2, name="d2")],
        name="seq_built",
    )
    model.build((None, 6))
    return model, _sequential_calls(model)


def sequential_input_shape(k):
    """The first layer carries the input shape (Keras 2 writes `batch_input_shape` on it)."""
    model = k.Sequential(
        [
            k.layers.Dense(4, activation="sigmoid", input_shape=(6,), name="d1"),
            k.layers.Dense(2, name="d2"),
        ],
        name="seq_shape",
    )
    return model, _sequential_calls(model)


def branches(k):
    """Two branches from one input, both outputs; Flatten, Reshape, Dense, Activation."""
    x = k.Input((3, 4), name="x")
    flat = k.layers.Flatten(name="flat")(x)
    left = k.layers.Dense(6, activation="relu", name="left")(flat)
    shaped = k.layers.Reshape((2, 3), name="shaped")(left)
    left_out = k.layers.Flatten(name="left_flat")(shaped)
    right = k.layers.Dense(5, name="right")(flat)
    right_out = k.layers.Activation("tanh", name="right_act")(right)
    calls = {
        "flat": flat,
        "left": left,
        "shaped": shaped,
        "left_flat": left_out,
        "right": right,
        "right_act": right_out,
    }
    return k.Model(x, [left_out, right_out], name="branches"), calls


def merges(k):
    """Branches that rejoin: Conv2D, BatchNormalization, MaxPooling2D, Add, Concatenate."""
    x = k.Input((6, 6, 2), name="img")
    conv = k.layers.Conv2D(3, 3, padding="same", name="conv")(x)
    norm = k.layers.BatchNormalization(name="norm")(conv)
    side = k.layers.Conv2D(3, 1, name="side")(x)
    added = k.layers.Add(name="added")([norm, side])
    pooled = k.layers.MaxPooling2D(2, name="pooled")(added)
    flat = k.layers.Flatten(name="flat")(pooled)
    dense = k.layers.Dense(4, name="dense")(flat)
    joined = k.layers.Concatenate(name="joined")([dense, flat])
    calls = {
        "conv": conv,
        "norm": norm,
        "side": side,
        "added": added,
        "pooled": pooled,
        "flat": flat,
        "dense": dense,
        "joined": joined,
    }
    return k.Model(x, joined, name="merges"), calls


def shared_layer(k):
    """One Dense called twice: rows `shared` and `shared#1`."""
    x = k.Input((4,), name="x")
    pre = k.layers.Dense(4, activation="tanh", name="pre")(x)
    shared = k.layers.Dense(4, activation="relu", name="shared")
    first = shared(pre)
    second = shared(first)
    out = k.layers.Dense(2, name="out")(second)
    calls = {"pre": pre, "shared": first, "shared#1": second, "out": out}
    return k.Model(x, out, name="shared_model"), calls


def two_in_two_out(k):
    """Two inputs, two outputs, a layer shared across the inputs; outputs in swapped order."""
    a = k.Input((4,), name="a")
    b = k.Input((3,), name="b")
    a_proj = k.layers.Dense(5, name="a_proj")(a)
    b_proj = k.layers.Dense(5, name="b_proj")(b)
    head = k.layers.Dense(2, activation="sigmoid", name="head")
    a_out = head(a_proj)
    b_out = head(b_proj)
    calls = {"a_proj": a_proj, "b_proj": b_proj, "head": a_out, "head#1": b_out}
    return k.Model([a, b], [b_out, a_out], name="two_two"), calls


def seq_in_functional(k):
    inner = k.Sequential(
        [
            k.Input((4,)),
            k.layers.Dense(5, activation="relu", name="sd1"),
            k.layers.Dense(3, name="sd2"),
        ],
        name="inner_seq",
    )
    x = k.Input((6,), name="x")
    pre = k.layers.Dense(4, name="pre")(x)
    mid = inner(pre)
    out = k.layers.Dense(2, name="post")(mid)
    calls = {"pre": pre, "inner_seq": mid, "post": out}
    return k.Model(x, out, name="outer"), calls


def seq_in_sequential(k):
    inner = k.Sequential([k.Input((6,)), k.layers.Dense(4, name="sd1")], name="inner_seq")
    model = k.Sequential(
        [k.Input((6,)), inner, k.layers.Dense(2, activation="tanh", name="post")], name="outer"
    )
    return model, _sequential_calls(model)


def functional_two_deep(k):
    """Functional inside Functional inside Functional; the inner ones end the outer graph."""
    i1 = k.Input((3,), name="leaf_in")
    leaf = k.Model(i1, k.layers.Dense(3, activation="tanh", name="leaf_dense")(i1), name="leaf")
    i2 = k.Input((3,), name="mid_in")
    mid_hidden = k.layers.Dense(3, name="mid_dense")(i2)
    mid = k.Model(i2, leaf(mid_hidden), name="mid")
    x = k.Input((5,), name="x")
    pre = k.layers.Dense(3, name="pre")(x)
    out = mid(pre)
    return k.Model(x, out, name="outer"), {"pre": pre, "mid": out}


def nested_called_twice(k):
    """A Functional and a Sequential, each called twice; model outputs are their calls."""
    i1 = k.Input((4,), name="fn_in")
    fn = k.Model(i1, k.layers.Dense(4, activation="relu", name="fn_dense")(i1), name="fn")
    seq = k.Sequential([k.Input((4,)), k.layers.Dense(3, name="seq_dense")], name="seq")
    x = k.Input((4,), name="x")
    pre = k.layers.Dense(4, name="pre")(x)
    f0 = fn(x)
    f1 = fn(pre)
    s0 = seq(f0)
    s1 = seq(f1)
    calls = {"pre": pre, "fn": f0, "fn#1": f1, "seq": s0, "seq#1": s1}
    return k.Model(x, [f1, s0, s1], name="outer"), calls


def nested_multi_io(k):
    """A nested model with two inputs and two outputs: tensor indices 0 and 1 of one call."""
    a = k.Input((3,), name="in_a")
    b = k.Input((4,), name="in_b")
    inner = k.Model(
        [a, b],
        [
            k.layers.Dense(2, name="from_a")(a),
            k.layers.Dense(5, activation="relu", name="from_b")(b),
        ],
        name="inner",
    )
    x = k.Input((3,), name="x")
    y = k.Input((4,), name="y")
    first, second = inner([x, y])
    out = k.layers.Dense(2, name="post")(second)
    calls = {"inner": [first, second], "post": out}
    return k.Model([x, y], [out, first], name="outer"), calls


BUILDERS = {
    "sequential_with_input": sequential_with_input,
    "sequential_built": sequential_built,
    "sequential_input_shape": sequential_input_shape,
    "branches": branches,
    "merges": merges,
    "shared_layer": shared_layer,
    "two_in_two_out": two_in_two_out,
    "seq_in_functional": seq_in_functional,
    "seq_in_sequential": seq_in_sequential,
    "functional_two_deep": functional_two_deep,
    "nested_called_twice": nested_called_twice,
    "nested_multi_io": nested_multi_io,
}


# -- saving once per module ------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def saved(model_dir):
    """saved(builder, flavor) -> Case, built and written in both formats on first use."""
    cache = {}

    def get(name, flavor):
        if (name, flavor) not in cache:
            cache[(name, flavor)] = Case.make(name, flavor, str(model_dir))
        return cache[(name, flavor)]

    return get


class Case:
    """One model built in one Keras flavor, its expected values and its saved files."""

    @classmethod
    def make(cls, name, flavor, root):
        case = cls()
        k = keras_module(flavor)
        model, calls = BUILDERS[name](k)
        randomize_weights(model)
        shapes = [tuple(t.shape[1:]) for t in model.inputs]
        case.x = [make_input((3, *s), seed=i) for i, s in enumerate(shapes)]
        case.x = case.x[0] if len(case.x) == 1 else case.x
        case.calls = _call_values(k, model, calls, case.x)
        case.expected = _as_arrays(model(case.x, training=False))
        case.expected = case.expected[0] if len(case.expected) == 1 else case.expected
        case.param_count = model.count_params()
        case.paths = {}
        for ext in FORMATS:
            path = os.path.join(root, f"{name}_{flavor}{ext}")
            if flavor == "tf_keras" and ext == ".keras":
                model.save(path, save_format="keras")
            else:
                model.save(path)
            case.paths[ext] = path
        return case


def _call_values(k, model, calls, x):
    """Keras' value for each named call: layers applied in turn, or a probe model."""
    if all(isinstance(v, k.layers.Layer) for v in calls.values()):
        values, h = {}, x
        for name, layer in calls.items():
            h = layer(h, training=False)
            values[name] = np.asarray(h)
        return values
    flat = [t for v in calls.values() for t in (v if isinstance(v, list) else [v])]
    values = iter(_as_arrays(k.Model(model.inputs, flat)(x, training=False)))
    return {
        name: [next(values) for _ in v] if isinstance(v, list) else next(values)
        for name, v in calls.items()
    }


def _as_arrays(out):
    return [np.asarray(o) for o in out] if isinstance(out, (list, tuple)) else [np.asarray(out)]


# -- tests -----------------------------------------------------------------------------


@pytest.mark.parametrize("ext", FORMATS)
@pytest.mark.parametrize("flavor", FLAVORS)
@pytest.mark.parametrize("name", list(BUILDERS))
def test_model_matches_keras(saved, name, flavor, ext):
    case = saved(name, flavor)
    model = kerascheck.load(case.paths[ext])
    what = f"{name} {flavor} {ext}"
    assert_matches(model.predict(case.x), case.expected, RTOL, ATOL, what)
    outputs = model.run(case.x)
    assert sorted(outputs) == sorted(case.calls), what
    for call, expected in case.calls.items():
        assert_matches(outputs[call], expected, RTOL, ATOL, f"{what} call {call}")
    assert model.param_count() == case.param_count, what


@pytest.mark.parametrize("layout", ["config_list", "no_input_layer"])
def test_keras2_sequential_old_layouts(saved, model_dir, layout):
    """Old Keras 2 files: no InputLayer entry, `batch_input_shape` on the first layer only,
    and (before Keras 2.2.3) the Sequential config as a bare list of layers.

    tf_keras still reads these, so it checks the edited file is a valid Keras file.
    """
    case = saved("sequential_input_shape", "tf_keras")
    path = str(model_dir / f"old_{layout}.h5")
    with open(case.paths[".h5"], "rb") as src, open(path, "wb") as dst:
        dst.write(src.read())
    with h5py.File(path, "r+") as handle:
        config = json.loads(handle.attrs["model_config"])
        layers = config["config"]["layers"]
        assert layers[0]["class_name"] == "InputLayer"
        assert layers[1]["config"]["batch_input_shape"] == [None, 6]
        del layers[0]
        if layout == "config_list":
            config["config"] = layers
        handle.attrs["model_config"] = json.dumps(config)
    reloaded = keras_module("tf_keras").models.load_model(path, compile=False)
    assert_matches(np.asarray(reloaded(case.x)), case.expected, what=f"tf_keras reads {layout}")
    model = kerascheck.load(path)
    assert_matches(model.predict(case.x), case.expected, RTOL, ATOL, layout)
    assert list(model.run(case.x)) == ["d1", "d2"]
