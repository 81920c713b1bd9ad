"""Shared test helpers: build a small model in real Keras, save it, load it in kerascheck.

Layer tests compare the engine with Keras on inputs that include negatives and
values well past activation clamp points (normal * 3, plus a few +-8 spikes).
Weights are re-drawn at random (biases and BatchNormalization statistics
included) so a forgotten bias or a swapped weight cannot hide behind zeros.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# as kerascheck's oracle does: channels-first kernels on every CPU
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

import numpy as np

FLAVORS = ("keras", "tf_keras")
# float32 arithmetic in a different order: errors stay within a few ulps of
# the layer's magnitude; 1e-5 relative to the largest output leaves margin.
RTOL = 1e-4
ATOL = 1e-5


def keras_module(flavor: str):
    if flavor == "tf_keras":
        import tf_keras

        return tf_keras
    import keras

    return keras


def make_input(shape, seed=0, integers=None):
    """Normal * 3 with spikes at +-8: negatives and values past every clamp point."""
    rng = np.random.default_rng(seed)
    if integers is not None:
        return rng.integers(0, integers, size=shape).astype("int32")
    x = 3.0 * rng.standard_normal(shape)
    flat = x.reshape(-1)
    flat[:: max(1, flat.size // 7)] = 8.0
    flat[3 :: max(1, flat.size // 5)] = -8.0
    return x.astype("float32")


def randomize_weights(model, seed=0):
    rng = np.random.default_rng(seed)
    weights = []
    for variable, value in zip(model.weights, model.get_weights()):
        name = getattr(variable, "path", None) or variable.name
        if "moving_variance" in name:
            weights.append(rng.uniform(0.5, 2.0, size=value.shape).astype(value.dtype))
        elif value.dtype.kind == "f":
            weights.append((0.5 * rng.standard_normal(value.shape)).astype(value.dtype))
        else:
            weights.append(value)
    model.set_weights(weights)


def build_model(flavor, make_layer, input_shapes, dtype="float32"):
    """A Functional model with `make_layer(keras)` applied to one or several inputs."""
    k = keras_module(flavor)
    shapes = input_shapes if isinstance(input_shapes, list) else [input_shapes]
    inputs = [k.Input(shape=s, dtype=dtype) for s in shapes]
    outputs = make_layer(k)(inputs if isinstance(input_shapes, list) else inputs[0])
    model = k.Model(inputs, outputs)
    randomize_weights(model)
    return model


def save(model, tmp_path, flavor, ext=".keras"):
    path = os.path.join(tmp_path, f"model_{flavor}{ext}")
    if flavor == "tf_keras" and ext == ".keras":
        model.save(path, save_format="keras")
    else:
        model.save(path)
    return path


def keras_predict(model, x):
    out = model(x, training=False)
    if isinstance(out, (list, tuple)):
        return [np.asarray(o) for o in out]
    return np.asarray(out)


def assert_matches(ours, theirs, rtol=RTOL, atol=ATOL, what=""):
    """Element-wise closeness with `atol` scaled by the output's magnitude."""
    if isinstance(theirs, list):
        assert isinstance(ours, list) and len(ours) == len(theirs), what
        for a, b in zip(ours, theirs):
            assert_matches(a, b, rtol, atol, what)
        return
    assert ours.shape == theirs.shape, f"{what}: shape {ours.shape} != Keras {theirs.shape}"
    scale = max(1.0, float(np.max(np.abs(theirs))) if theirs.size else 1.0)
    np.testing.assert_allclose(ours, theirs, rtol=rtol, atol=atol * scale, err_msg=what)
