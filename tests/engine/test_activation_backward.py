"""Activation and keras.applications layers' backward against Keras 3 and tf_keras tapes.

The fixture's inputs (normal * 3, +-8 spikes) run on both sides of every
clamp point, with float64 finite differences on top; the kinks themselves
(0, the threshold, max_value, 6) are checked on inputs that hit them exactly,
against the tape alone, since no finite difference exists there.
"""

from __future__ import annotations

import importlib
import os

import numpy as np
import pytest
from gradcheck import (
    FD_RTOL,
    GRAD_RTOL,
    check_finite_differences,
    check_layer_grad,
    engine_grads,
    keras_grads,
    relative_error,
)
from helpers import FLAVORS, build_model, keras_module, make_input, randomize_weights, save

import kerascheck

SHAPE = (4, 6)
KINKS = np.array([0.0, 1.5, 2.5, 6.0, -1.5, 0.0], dtype="float32")


def on_kinks(shape=SHAPE):
    """The fixture's input with one row of exact kink values per sample."""
    x = make_input((3, *shape))
    x.reshape(3, -1, shape[-1])[:, 0, :] = KINKS[: shape[-1]]
    return x


@pytest.mark.parametrize("threshold", [0.0, 1.5])
@pytest.mark.parametrize("negative_slope", [0.0, 0.1])
@pytest.mark.parametrize("max_value", [None, 6.0, 2.5])
def test_relu(tmp_path, max_value, negative_slope, threshold):
    def make(k):
        return k.layers.ReLU(
            max_value=max_value, negative_slope=negative_slope, threshold=threshold
        )

    check_layer_grad(tmp_path, make, SHAPE)
    # At the kinks: relu6 passes nothing at 0 and 6, the clip of other max_values passes
    # the gradient at the maximum itself, leaky_relu alone has its slope at 0.
    check_layer_grad(tmp_path, make, SHAPE, x=on_kinks(), finite_differences=False)


@pytest.mark.parametrize("kinks", [False, True])
@pytest.mark.parametrize("flavor,name", [("keras", "negative_slope"), ("tf_keras", "alpha")])
@pytest.mark.parametrize("slope", [0.3, 0.05, 1.5])
def test_leaky_relu(tmp_path, slope, flavor, name, kinks):
    check_layer_grad(
        tmp_path,
        lambda k: k.layers.LeakyReLU(**{name: slope}),
        SHAPE,
        flavors=(flavor,),
        x=on_kinks() if kinks else None,
        finite_differences=not kinks,
    )


@pytest.mark.parametrize("shared_axes", [None, [1], [2], [1, 2], [1, 2, 3]])
def test_prelu(tmp_path, shared_axes):
    """The fixture randomizes alpha (signs included); its gradient sums over the batch
    and the shared axes."""
    make = lambda k: k.layers.PReLU(shared_axes=shared_axes)  # noqa: E731
    check_layer_grad(tmp_path, make, (4, 5, 3))
    check_layer_grad(tmp_path, make, (4, 5, 3), x=on_kinks((4, 5, 3)), finite_differences=False)


@pytest.mark.parametrize("alpha", [1.0, 0.5, 2.0])
def test_elu(tmp_path, alpha):
    make = lambda k: k.layers.ELU(alpha=alpha)  # noqa: E731
    check_layer_grad(tmp_path, make, SHAPE)
    check_layer_grad(tmp_path, make, SHAPE, x=on_kinks(), finite_differences=False)


@pytest.mark.parametrize("axis", [-1, 1, 2, [1], [1, 2], [2, 3], [1, 3]])
def test_softmax(tmp_path, axis):
    check_layer_grad(tmp_path, lambda k: k.layers.Softmax(axis=axis), (3, 4, 5))


@pytest.mark.parametrize("flavor", FLAVORS)
@pytest.mark.parametrize("axis,logits_path", [(-1, True), ([2], True), (1, True), ([1, 2], False)])
def test_softmax_output_loss_from_logits(tmp_path, flavor, axis, logits_path):
    """Both Kerases mark a single-axis Softmax's output with its input as logits, and
    `fit`'s cross-entropy takes them over the *last* axis even for `axis=1`: a loss of
    another softmax than the layer's. A joint softmax over [1, 2] is not marked. The
    engine must follow, or its loss differs from Keras' (15.4 against 4.1 here)."""
    from kerascheck.grad import grad_model

    k = keras_module(flavor)
    inputs = k.Input((3, 4))
    model = k.Model(inputs, k.layers.Softmax(axis=axis)(k.layers.Dense(4)(inputs)))
    randomize_weights(model)
    model.compile(optimizer="sgd", loss="categorical_crossentropy")
    path = os.path.join(str(tmp_path), "model" + (".keras" if flavor == "keras" else ".h5"))
    model.save(path)
    x = make_input((2, 3, 4))
    y = np.eye(4, dtype="float32")[[[1, 1, 2], [3, 0, 1]]]
    result = grad_model(path, kerascheck.load(path), [x], [y])
    assert result.logits_path is logits_path
    assert result.first_divergence is None, result.first_divergence
    assert abs(result.engine_loss - result.keras_loss) <= 1e-4 * max(1.0, result.keras_loss)


def keras_masked_softmax_grads(flavor, x, mask, dy, **kwargs):
    import tensorflow as tf

    layer = keras_module(flavor).layers.Softmax(**kwargs)
    t = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(t)
        y = layer(t, mask=tf.constant(mask))
    return np.asarray(y), np.asarray(tape.gradient(y, t, output_gradients=tf.constant(dy)))


@pytest.mark.parametrize(
    "flavor,robust", [("keras", False), ("tf_keras", False), ("tf_keras", True)]
)
@pytest.mark.parametrize("mask_shape", [(3, 4, 5), (3, 1, 5)])
def test_softmax_with_mask(flavor, robust, mask_shape):
    """A call-time mask (as attention passes one; a functional model cannot route a
    tensor argument through `grad` yet), one slice fully masked. Keras 3 and
    tf_keras' robust masking replace masked logits (no gradient there), plain
    tf_keras adds -1e9, so a fully masked slice is a softmax of shifted logits."""
    from kerascheck.engine.layers.activations import masked_softmax_vjp

    rng = np.random.default_rng(0)
    x = make_input((3, 4, 5))
    mask = rng.random(mask_shape) > 0.4
    mask[0, 0] = False
    dy = rng.standard_normal(x.shape).astype("float32")
    kwargs = {"robust_masking": True} if robust else {}
    y, dx = keras_masked_softmax_grads(flavor, x, mask, dy, **kwargs)
    major = 3 if flavor == "keras" else 2
    ours, backward = masked_softmax_vjp(x, mask, -1, major, robust)
    np.testing.assert_allclose(ours, y, rtol=1e-5, atol=1e-7)
    assert relative_error(backward(dy), dx) <= GRAD_RTOL
    # float64 finite differences along random directions; where tf_keras adds -1e9, a
    # fully masked slice holds x - 1e9, whose float64 spacing (1e-7) swamps a 1e-6 step,
    # so the directions leave that slice alone there.
    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    grad = masked_softmax_vjp(x64, mask, -1, major, robust)[1](dy64)
    for _ in range(3):
        v, h = rng.standard_normal(x.shape), 1e-6
        if major == 2 and not robust:
            v[~np.broadcast_to(mask, x.shape).any(axis=-1)] = 0.0
        plus = masked_softmax_vjp(x64 + h * v, mask, -1, major, robust)[0]
        minus = masked_softmax_vjp(x64 - h * v, mask, -1, major, robust)[0]
        numeric = np.sum((plus - minus) * dy64) / (2 * h)
        np.testing.assert_allclose(np.sum(grad * v), numeric, rtol=FD_RTOL)


@pytest.mark.parametrize("approximate", [False, True])
def test_gelu_operation_node(tmp_path, approximate):
    # Keras 3 only: tf_keras saves `ops.gelu` as a TFOpLambda, which kerascheck does not run.
    def make(k):
        return lambda x: k.ops.gelu(x, approximate=approximate)

    check_layer_grad(tmp_path, make, SHAPE, flavors=("keras",))


@pytest.mark.parametrize(
    "make",
    [
        lambda k: k.layers.ReLU(max_value=2.5, negative_slope=0.1, threshold=1.5),
        lambda k: k.layers.PReLU(shared_axes=[1]),
        lambda k: k.layers.Softmax(axis=[1, 2]),
        lambda k: k.layers.ELU(alpha=0.5),
    ],
    ids=["relu", "prelu", "softmax", "elu"],
)
def test_h5(tmp_path, make):
    check_layer_grad(tmp_path, make, (3, 4, 5), ext=".h5")


# --- keras.applications' own layers -------------------------------------------


def application(k, name):
    return importlib.import_module(f"{k.__name__}.src.applications.{name}")


def test_custom_scale_layer(tmp_path):
    def make(k):
        layer = application(k, "inception_resnet_v2").CustomScaleLayer(scale=0.17)
        return lambda inputs: layer(inputs)

    check_layer_grad(tmp_path, make, [(4, 3), (4, 3)])


@pytest.mark.parametrize("flavor", FLAVORS)
def test_layer_scale(tmp_path, flavor):
    """Input and `gamma` gradients. Keras 3 names the weight `variable` (an unnamed
    `add_weight`), so `check_layer_grad` cannot pair it with the engine's `gamma` by
    name: the one weight is compared by position instead."""
    make = lambda k: application(k, "convnext").LayerScale(init_values=1e-6, projection_dim=3)  # noqa: E731
    model = build_model(flavor, make, (4, 5, 3))
    path = save(model, str(tmp_path), flavor)
    x = make_input((3, 4, 5, 3))
    dy = np.random.default_rng(1).standard_normal(x.shape).astype("float32")
    (k_dx,), k_weights = keras_grads(model, x, dy, training=True)
    (e_dx,), e_weights, _ = engine_grads(kerascheck.load(path), x, dy, training=True)
    (k_gamma,) = [g for grads in k_weights.values() for g in grads.values()]
    (e_gamma,) = [g for grads in e_weights.values() for g in grads.values()]
    assert relative_error(e_dx, k_dx) <= GRAD_RTOL
    assert relative_error(e_gamma, k_gamma) <= GRAD_RTOL
    check_finite_differences(path, [x])


@pytest.mark.parametrize("training", [False, True])
def test_stochastic_depth_identity(tmp_path, training):
    """Inference is the identity; so is training with drop_path_rate 0 (floor(1 + u) = 1)."""
    rate = 0.0 if training else 0.5

    def make(k):
        return application(k, "convnext").StochasticDepth(drop_path_rate=rate)

    worst = check_layer_grad(tmp_path, make, (4, 3), training=training)
    assert worst == 0.0


@pytest.mark.parametrize("flavor", FLAVORS)
def test_stochastic_depth_training_replays_keras_mask(tmp_path, flavor):
    """`grad` reads the per-sample mask Keras drew (output / input) and the engine
    backpropagates through it: dropped samples get no gradient, kept ones 1 / keep."""
    from kerascheck.grad import grad_model

    k = keras_module(flavor)
    inputs = k.Input((3, 4))
    x = k.layers.Dense(4)(inputs)
    x = application(k, "convnext").StochasticDepth(drop_path_rate=0.5)(x)
    model = k.Model(inputs, k.layers.Dense(2)(k.layers.Flatten()(x)))
    model.compile(optimizer="sgd", loss="mse")
    ext = ".keras" if flavor == "keras" else ".h5"
    path = os.path.join(str(tmp_path), f"model{ext}")
    model.save(path)
    # 16 samples at rate 0.5: both dropped and kept ones, but for a 2**-15 chance.
    x = make_input((16, 3, 4))
    y = np.zeros((16, 2), dtype="float32")
    result = grad_model(path, kerascheck.load(path), [x], [y])
    assert result.first_divergence is None, result.first_divergence
    tensors = [t for row in result.rows for t in row.tensors]
    assert len(tensors) > 3
