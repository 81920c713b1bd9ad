"""Whole models through `grad`: every call's gradients against Keras, in train mode.

The shipped seed models, a small ResNet-style block (BatchNormalization in
training mode, Add), a MobileNet-style stack (depthwise and separable
convolutions, ReLU6) in both file formats, seeds/003's two convolutions, and
two keras.applications architectures. Each must agree tensor by tensor on its
own backward (`first_divergence` is None); carried drift is allowed only
where float32 rounding grows through depth, and is reported, not hidden.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from helpers import FLAVORS, keras_module, make_input, randomize_weights

import kerascheck
from kerascheck.grad import grad_model

HERE = os.path.dirname(os.path.abspath(__file__))
SAMPLES = os.path.join(HERE, "..", "sample_models")


def check(path, x, y, deep=False, **kwargs):
    """No own mismatch anywhere; for small models the end-to-end loss agrees too (deep
    randomly initialised ones amplify float32 rounding in training mode: drift)."""
    result = grad_model(path, kerascheck.load(path), [x], [y], **kwargs)
    assert result.first_divergence is None, result.first_divergence
    loss = result.rows[0].tensors[0]
    assert loss.tensor == "loss" and loss.own.rel_error < 1e-5
    if not deep:
        assert abs(result.engine_loss - result.keras_loss) <= 1e-4 * max(1, abs(result.keras_loss))
    tensors = [t for row in result.rows for t in row.tensors]
    assert len(tensors) > 3
    return result


@pytest.mark.parametrize(
    "stem",
    ["seed000_regressor", "seed000_regressor_keras2", "seed004_cnn", "seed001_channels_first"],
)
def test_shipped_samples(stem):
    ext = ".h5" if stem.endswith("keras2") else ".keras"
    path = os.path.join(SAMPLES, stem + ext)
    x = np.load(os.path.join(SAMPLES, stem + ".input.npy"))
    y = np.load(os.path.join(SAMPLES, stem + ".target.npy"))
    result = check(path, x, y)
    assert result.loss_from.startswith("the file's")


def resnet_block(k):
    inputs = k.Input((9, 9, 3))
    x = k.layers.Conv2D(8, 3, padding="same", use_bias=False)(inputs)
    x = k.layers.BatchNormalization()(x)
    x = k.layers.ReLU()(x)
    shortcut = x
    x = k.layers.Conv2D(8, 3, strides=1, padding="same")(x)
    x = k.layers.BatchNormalization()(x)
    x = k.layers.Add()([x, shortcut])
    x = k.layers.Activation("relu")(x)
    x = k.layers.Conv2D(6, 3, strides=2, padding="same")(x)
    x = k.layers.GlobalAveragePooling2D()(x)
    return k.Model(inputs, k.layers.Dense(4, activation="softmax")(x))


def mobilenet_block(k):
    inputs = k.Input((10, 10, 4))
    x = k.layers.Conv2D(8, 3, strides=2, padding="same")(inputs)
    x = k.layers.BatchNormalization()(x)
    x = k.layers.ReLU(6.0)(x)
    x = k.layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2)(x)
    x = k.layers.BatchNormalization()(x)
    x = k.layers.ReLU(6.0)(x)
    x = k.layers.SeparableConv2D(6, 3, strides=2, padding="same", activation="relu")(x)
    x = k.layers.MaxPooling2D(2, padding="same")(x)
    x = k.layers.Flatten()(x)
    x = k.layers.Dropout(0.25)(x)
    return k.Model(inputs, k.layers.Dense(3, activation="softmax")(x))


def seed003(k):
    """seeds/003: Conv(3x3x3, 12)+ReLU -> MaxPool -> Conv(3x3x12, 8)+ReLU -> MaxPool ->
    Dense+ReLU -> Dense+Softmax on a 32x32 RGB image."""
    return k.Sequential(
        [
            k.Input((32, 32, 3)),
            k.layers.Conv2D(12, 3, padding="same", activation="relu"),
            k.layers.MaxPooling2D(2),
            k.layers.Conv2D(8, 3, padding="same", activation="relu"),
            k.layers.MaxPooling2D(2),
            k.layers.Flatten(),
            k.layers.Dense(16, activation="relu"),
            k.layers.Dense(10, activation="softmax"),
        ]
    )


def saved(tmp_path, flavor, build, ext):
    k = keras_module(flavor)
    model = build(k)
    randomize_weights(model)
    model.compile(optimizer="sgd", loss="categorical_crossentropy")
    path = os.path.join(str(tmp_path), f"{build.__name__}_{flavor}{ext}")
    model.save(path)
    return path, model


@pytest.mark.parametrize("build", [resnet_block, mobilenet_block, seed003])
@pytest.mark.parametrize("flavor, ext", [("keras", ".keras"), ("tf_keras", ".h5")])
def test_small_architectures_both_formats(tmp_path, build, flavor, ext):
    path, model = saved(tmp_path, flavor, build, ext)
    shape = model.inputs[0].shape[1:]
    x = make_input((4, *shape), seed=1)
    classes = model.outputs[0].shape[-1]
    y = np.eye(classes, dtype="float32")[np.arange(4) % classes]
    result = check(path, x, y)
    assert result.logits_path
    if build is resnet_block:  # BatchNormalization ran with batch statistics
        rows = {row.name: row for row in result.rows}
        assert any(r.class_name == "BatchNormalization" for r in rows.values())


@pytest.mark.parametrize("flavor", FLAVORS)
def test_inference_mode_uses_moving_statistics(tmp_path, flavor):
    ext = ".keras" if flavor == "keras" else ".h5"
    path, model = saved(tmp_path, flavor, resnet_block, ext)
    x = make_input((3, 9, 9, 3), seed=2)
    y = np.eye(4, dtype="float32")[[0, 1, 2]]
    train = check(path, x, y)
    inference = check(path, x, y, mode="inference")
    assert train.keras_loss != pytest.approx(inference.keras_loss, rel=1e-6)


@pytest.mark.parametrize(
    "name, kwargs, shape",
    [
        ("MobileNetV2", dict(alpha=0.35), (2, 32, 32, 3)),
        ("ResNet50", {}, (2, 32, 32, 3)),
    ],
)
def test_applications_subset(tmp_path, name, kwargs, shape):
    import keras

    build = getattr(keras.applications, name)
    model = build(weights=None, input_shape=shape[1:], classes=5, **kwargs)
    model.compile(optimizer="sgd", loss="categorical_crossentropy")
    path = os.path.join(str(tmp_path), f"{name}.keras")
    model.save(path)
    x = make_input(shape, seed=4)
    y = np.eye(5, dtype="float32")[[1, 3]]
    result = check(path, x, y, deep=True)
    tensors = [t for row in result.rows for t in row.tensors if t.own is not None]
    assert len(tensors) > 100


@pytest.mark.parametrize("flavor, ext", [("keras", ".keras"), ("tf_keras", ".h5")])
def test_a_nested_model_is_differentiated_through_and_its_weights_reported(tmp_path, flavor, ext):
    k = keras_module(flavor)
    block = k.Sequential(
        [k.Input((6, 6, 3)), k.layers.Conv2D(4, 3, activation="relu"), k.layers.Flatten()],
        name="block",
    )
    inputs = k.Input((6, 6, 3))
    outputs = k.layers.Dense(2, activation="softmax")(block(inputs))
    model = k.Model(inputs, outputs)
    randomize_weights(model)
    model.compile(optimizer="sgd", loss="categorical_crossentropy")
    path = os.path.join(str(tmp_path), f"nested_{flavor}{ext}")
    model.save(path)
    result = check(path, make_input((3, 6, 6, 3), seed=5), np.eye(2, dtype="float32")[[0, 1, 0]])
    row = next(r for r in result.rows if r.name == "block")
    names = {t.tensor for t in row.tensors}
    assert {"d_input"} <= names and any(n.endswith("/kernel") for n in names)


@pytest.mark.parametrize("flavor, ext", [("keras", ".keras"), ("tf_keras", ".h5")])
def test_a_shared_layer_sums_its_calls_gradients(tmp_path, flavor, ext):
    k = keras_module(flavor)
    first, second = k.Input((5,)), k.Input((5,))
    shared = k.layers.Dense(4, activation="tanh", name="shared")
    joined = k.layers.Concatenate()([shared(first), shared(second)])
    model = k.Model([first, second], k.layers.Dense(2)(joined))
    randomize_weights(model)
    model.compile(optimizer="sgd", loss="mse")
    path = os.path.join(str(tmp_path), f"shared_{flavor}{ext}")
    model.save(path)
    x = [make_input((3, 5), seed=6), make_input((3, 5), seed=7)]
    y = make_input((3, 2), seed=8)
    result = grad_model(path, kerascheck.load(path), x, [y])
    assert result.first_divergence is None, result.first_divergence
    rows = {row.name: {t.tensor for t in row.tensors} for row in result.rows}
    assert "kernel" in rows["shared#1"] and "kernel" not in rows["shared"]
    assert "d_input" in rows["shared"] and "d_input" in rows["shared#1"]
