"""The training step's fast backward paths, against Keras' gradients.

`backprop.weight_gradients_only()` (used by `train-step`) lets a convolution whose
input no trainable weight lies behind (the model's first layer) compute its weight
gradients without dL/d input. These tests put each convolution variant first, in
front of a second trainable layer, and check every weight gradient against Keras'
tape (relative per-tensor error, inputs with negative values) and against the
engine's full backward, bit for bit; they also check that the full backward still
reports dL/d input. Batch statistics and data-movement layers (ZeroPadding2D,
Permute, Concatenate: their backward is a strided copy) sit behind the first layer.
"""

from __future__ import annotations

import numpy as np
import pytest
from gradcheck import GRAD_RTOL, keras_grads, relative_error
from helpers import save

import kerascheck
from kerascheck.engine import backprop

FIRST_LAYERS = {
    "conv2d-same-s2": lambda k: k.layers.Conv2D(4, 3, strides=2, padding="same"),
    "conv2d-valid-even-relu": lambda k: k.layers.Conv2D(3, (4, 2), activation="relu"),
    "conv2d-dilated-s1": lambda k: k.layers.Conv2D(3, 3, dilation_rate=2, padding="same"),
    "conv2d-groups": lambda k: k.layers.Conv2D(4, 3, groups=2, padding="same"),
    "conv2d-1x1-nobias": lambda k: k.layers.Conv2D(5, 1, use_bias=False),
    "depthwise-s2": lambda k: k.layers.DepthwiseConv2D(3, strides=2, depth_multiplier=2),
    "separable": lambda k: k.layers.SeparableConv2D(3, 3, padding="same", activation="tanh"),
    "conv2d-transpose-s2": lambda k: k.layers.Conv2DTranspose(3, 3, strides=2, padding="same"),
}


def _model(keras, first, shape):
    inputs = keras.Input(shape)
    x = keras.layers.Activation("tanh")(first(keras)(inputs))  # a bias before BN gets ~0
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ZeroPadding2D(((1, 0), (0, 2)))(x)
    y = keras.layers.Permute((2, 1, 3))(x)
    x = keras.layers.Concatenate()([x, keras.layers.Permute((2, 1, 3))(y)])
    x = keras.layers.Conv2D(2, 2, activation="relu")(x)
    return keras.Model(inputs, x)


def _engine(model, x, dy, weights_only):
    tape = backprop.forward(model.graph, [x], True)
    if weights_only:
        with backprop.weight_gradients_only():
            return backprop.backward(model.graph, tape, [dy])
    return backprop.backward(model.graph, tape, [dy])


@pytest.mark.parametrize("name", sorted(FIRST_LAYERS))
def test_first_layer_weights_only_matches_keras(tmp_path, name):
    import keras

    shape = (9, 8, 4)
    model = _model(keras, FIRST_LAYERS[name], shape)
    rng = np.random.default_rng(0)
    for weight in model.trainable_weights:  # random, signed weights: no symmetric zeros
        weight.assign(rng.uniform(-0.5, 0.5, weight.shape).astype("float32"))
    path = save(model, str(tmp_path), "keras3", ".keras")
    ours = kerascheck.load(path)
    x = rng.standard_normal((3, *shape)).astype("float32")  # negative values too
    dy = rng.standard_normal((3, *model.output_shape[1:])).astype("float32")

    fast = _engine(ours, x, dy, weights_only=True)
    full = _engine(ours, x, dy, weights_only=False)
    first = ours.spec.calls[0].name
    assert fast.d_inputs[first] == [None] and fast.model_inputs == [None]
    assert full.model_inputs[0] is not None and full.model_inputs[0].shape == x.shape

    k_inputs, k_weights = keras_grads(model, x, dy, True)
    assert relative_error(full.model_inputs[0], k_inputs[0]) <= GRAD_RTOL
    checked = 0
    for layer, grads in k_weights.items():
        # By position: Keras 3 names a depthwise kernel `kernel`, the engine as the file.
        names = ours.graph.layers[layer].trainable_names()
        for weight, theirs in zip(names, grads.values()):
            if theirs is None:
                continue
            mine = fast.weights[layer][weight]
            assert np.array_equal(mine, full.weights[layer][weight]), f"{layer}/{weight}"
            err = relative_error(mine, theirs)
            assert err <= GRAD_RTOL, f"{name}: {layer}/{weight} relative error {err:.2e}"
            checked += 1
    assert checked >= 5
