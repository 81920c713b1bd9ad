"""Normalization backward against Keras 3 and tf_keras tape gradients (and finite differences).

BatchNormalization runs in both modes: `training=True` normalizes with the
batch's mean and biased variance, and the input gradient goes through them;
`training=False` uses the (randomized) moving statistics as constants. A layer
saved with `trainable: false` runs in inference mode even when training.
Keras 3 BatchNormalization takes a single int axis; lists of axes and
`virtual_batch_size` exist in tf_keras only, so those cells run there alone;
RMSNormalization and LayerNormalization's `rms_scaling` exist in Keras 3 only.
"""

from __future__ import annotations

import numpy as np
import pytest
from gradcheck import _weight_name, check_layer_grad, engine_grads, keras_grads, relative_error
from helpers import FLAVORS, build_model, make_input, save

import kerascheck
from kerascheck.engine import backprop

IMAGE = (4, 5, 3)  # channels_last image; axis=1 reads it as channels-first
AFFINE = [(True, True), (True, False), (False, True), (False, False)]
MODES = [True, False]  # training


def batch_norm(axis, center=True, scale=True, epsilon=1e-3, **extra):
    return lambda k: k.layers.BatchNormalization(
        axis=axis, center=center, scale=scale, epsilon=epsilon, **extra
    )


def layer_norm(axis, center=True, scale=True, epsilon=1e-3, **extra):
    return lambda k: k.layers.LayerNormalization(
        axis=axis, center=center, scale=scale, epsilon=epsilon, **extra
    )


# --- BatchNormalization ----------------------------------------------------


@pytest.mark.parametrize("training", MODES)
@pytest.mark.parametrize("center, scale", AFFINE)
@pytest.mark.parametrize(
    "shape, axis",
    [
        ((6,), -1),  # 2-D input
        ((5, 4), 1),  # sequence input, normalizing over time steps
        (IMAGE, -1),  # tf_keras: fused NHWC kernel
        (IMAGE, 1),  # channels-first style; tf_keras: fused NCHW kernel
        (IMAGE, 2),
        ((3, 4, 2, 3), 1),  # rank 5, fused NCDHW in tf_keras
    ],
)
def test_batch_norm(tmp_path, shape, axis, center, scale, training):
    check_layer_grad(tmp_path, batch_norm(axis, center, scale), shape, training=training)


@pytest.mark.parametrize("training", MODES)
@pytest.mark.parametrize("epsilon", [1e-6, 0.5])
@pytest.mark.parametrize("shape, axis", [((6,), -1), (IMAGE, 1)])
def test_batch_norm_epsilon(tmp_path, shape, axis, epsilon, training):
    check_layer_grad(tmp_path, batch_norm(axis, epsilon=epsilon), shape, training=training)


@pytest.mark.parametrize("shape, axis", [((6,), -1), (IMAGE, 1), (IMAGE, -1)])
def test_frozen_batch_norm_runs_in_inference_mode(tmp_path, shape, axis):
    """`trainable=False`: moving statistics, constants in the backward, no weight gradients."""
    make = batch_norm(axis, trainable=False)
    check_layer_grad(tmp_path, make, shape, training=True)
    x = make_input((3, *shape))
    for flavor in FLAVORS:
        ours = kerascheck.load(save(build_model(flavor, make, shape), str(tmp_path), flavor))
        train = backprop.forward(ours.graph, [x], training=True)
        infer = backprop.forward(ours.graph, [x], training=False)
        np.testing.assert_array_equal(train.outputs[0], infer.outputs[0])
        grads = backprop.backward(ours.graph, train, [np.ones_like(train.outputs[0])])
        assert grads.weights == {}
        assert train.backwards[ours.graph.spec.calls[0].name].batch_mean is None


def test_trainable_batch_norm_training_differs_from_inference(tmp_path):
    """The control for the frozen test: a trainable layer uses batch statistics."""
    x = make_input((3, *IMAGE))
    ours = kerascheck.load(save(build_model("keras", batch_norm(-1), IMAGE), str(tmp_path), "k"))
    train = backprop.forward(ours.graph, [x], training=True).outputs[0]
    infer = backprop.forward(ours.graph, [x], training=False).outputs[0]
    assert np.abs(train - infer).max() > 0.1
    # Batch statistics make each channel's output zero-mean with unit variance (before affine).
    ours_no_affine = kerascheck.load(
        save(build_model("keras", batch_norm(-1, False, False), IMAGE), str(tmp_path), "n")
    )
    out = backprop.forward(ours_no_affine.graph, [x], training=True).outputs[0]
    np.testing.assert_allclose(out.mean(axis=(0, 1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(out.var(axis=(0, 1, 2)), 1.0, rtol=1e-3)  # var / (var + 1e-3)


@pytest.mark.parametrize("training", MODES)
@pytest.mark.parametrize(
    "axis, center, scale",
    [([1, 3], True, True), ([1, 2], False, True), ([3, 1], True, False), ([2], True, True)],
)
def test_batch_norm_axis_lists_tf_keras(tmp_path, axis, center, scale, training):
    """Several axes: tf_keras keeps full-rank parameters with 1s elsewhere (Keras 3 cannot)."""
    check_layer_grad(
        tmp_path, batch_norm(axis, center, scale), IMAGE, flavors=("tf_keras",), training=training
    )


@pytest.mark.parametrize("training", MODES)
@pytest.mark.parametrize("shape, axis", [(IMAGE, -1), ((5,), -1), (IMAGE, 1)])
def test_batch_norm_virtual_batch_size_tf_keras(tmp_path, shape, axis, training):
    """Ghost batches: statistics per virtual batch (a reshape to (3, 2, ...), reduced over 0).

    Three samples per virtual batch: with two, a 2-D input normalizes to +-1
    whatever it is, and its input gradient is float32 noise around zero.
    """
    check_layer_grad(
        tmp_path,
        batch_norm(axis, virtual_batch_size=3),
        shape,
        flavors=("tf_keras",),
        x=make_input((6, *shape)),
        training=training,
    )


@pytest.mark.parametrize("training", MODES)
@pytest.mark.parametrize("center, scale", [(True, True), (False, False), (True, False)])
@pytest.mark.parametrize("shape, axis", [((6,), -1), (IMAGE, 1)])
def test_batch_norm_renorm(tmp_path, shape, axis, center, scale, training):
    """Batch renormalization: `r`, `d` from the batch and renorm statistics, no gradient.

    Both Keras stop the gradient at `r` and `d`, so in training the tape is not
    the derivative of the forward and finite differences do not apply
    (test_batch_norm_renorm_clipped checks them where the clipping binds).
    """
    clipping = {"rmin": 0.5, "rmax": 2.0, "dmax": 1.0}
    make = batch_norm(axis, center, scale, renorm=True, renorm_clipping=clipping)
    check_layer_grad(tmp_path, make, shape, training=training, finite_differences=not training)


@pytest.mark.parametrize("shape, axis", [((6,), -1), (IMAGE, 1)])
def test_batch_norm_renorm_clipped(tmp_path, shape, axis):
    """`rmin == rmax` and `dmax == 0` make `r` and `d` constants: finite differences hold."""
    clipping = {"rmin": 1.5, "rmax": 1.5, "dmax": 0.0}
    check_layer_grad(tmp_path, batch_norm(axis, renorm=True, renorm_clipping=clipping), shape)


@pytest.mark.parametrize(
    "shape, axis, center, scale",
    [(IMAGE, 1, True, True), ((6,), -1, False, True), (IMAGE, 3, True, False)],
)
def test_batch_norm_h5(tmp_path, shape, axis, center, scale):
    check_layer_grad(tmp_path, batch_norm(axis, center, scale), shape, ext=".h5")


def test_batch_norm_batch_of_one(tmp_path):
    check_layer_grad(tmp_path, batch_norm(1), IMAGE, x=make_input((1, *IMAGE)))


def test_batch_norm_large_mean(tmp_path):
    """|mean| = 1000 std: the centered formulas keep float32 agreement.

    (At 10^4 std a float32 mean is itself off by ~1e-3 std, in Keras as here.)
    """
    x = make_input((4, 6)) * 0.01 + 30.0
    check_layer_grad(tmp_path, batch_norm(-1), (6,), x=x)


@pytest.mark.parametrize("flavor", FLAVORS)
@pytest.mark.parametrize("shape, axis", [((6,), -1), ((5, 4), 1)])
def test_batch_statistics_on_the_backward(tmp_path, flavor, shape, axis):
    """`batch_mean`/`batch_variance` are what Keras' moving averages take in (momentum 0.99)."""
    x = make_input((3, *shape))
    model = build_model(flavor, batch_norm(axis), shape)
    layer = model.layers[-1]
    ours = kerascheck.load(save(model, str(tmp_path), flavor))
    old_mean, old_variance = (np.asarray(v) for v in (layer.moving_mean, layer.moving_variance))
    model(x, training=True)  # one update of the moving statistics
    new_mean, new_variance = (np.asarray(v) for v in (layer.moving_mean, layer.moving_variance))
    tape = backprop.forward(ours.graph, [x], training=True)
    backward = tape.backwards[layer.name]  # a layer's first call is named after it
    np.testing.assert_allclose(0.99 * old_mean + 0.01 * backward.batch_mean, new_mean, atol=1e-6)
    np.testing.assert_allclose(
        0.99 * old_variance + 0.01 * backward.batch_variance, new_variance, atol=1e-6
    )
    reduce = tuple(i for i in range(x.ndim) if i != axis % x.ndim)
    np.testing.assert_allclose(backward.batch_variance, x.var(axis=reduce), rtol=1e-5)


def masked_grads(tmp_path, flavor, make, x, mask, training=True):
    """(engine, Keras) ([dL/dx, {weight: dL/dw}]) for one layer called with an explicit mask."""
    import tensorflow as tf

    model = build_model(flavor, make, x.shape[1:])
    keras_layer = model.layers[-1]
    layer = kerascheck.load(save(model, str(tmp_path), flavor)).graph.layers[keras_layer.name]
    dy = np.random.default_rng(1).standard_normal(x.shape).astype("float32")
    t = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(t)
        y = keras_layer(t, training=training, mask=tf.constant(mask))
        loss = tf.reduce_sum(y * dy)
    variables = keras_layer.trainable_weights
    theirs = tape.gradient(loss, [t, *variables])
    theirs = [
        np.asarray(theirs[0]),
        {_weight_name(v): np.asarray(g) for v, g in zip(variables, theirs[1:])},
    ]
    y_ours, backward = layer.vjp(x, training=training, mask=mask)
    np.testing.assert_allclose(y_ours, np.asarray(y), rtol=1e-4, atol=1e-5)
    return list(backward(dy)), theirs


@pytest.mark.parametrize("flavor", FLAVORS)
@pytest.mark.parametrize("shape", [(5, 4), (5, 2, 3)])
def test_batch_norm_masked_statistics(tmp_path, flavor, shape):
    """Masked steps drop out of the batch statistics in training.

    The 4-D cell runs tf_keras' fused kernel, which ignores the mask (with a
    warning); Keras 3 still uses it, and the engine follows each.
    """
    x = make_input((3, *shape))
    mask = np.array([[1, 1, 0, 1, 0], [1, 1, 1, 1, 1], [0, 0, 1, 0, 1]], dtype=bool)
    mask = np.broadcast_to(mask.reshape(3, 5, *([1] * (len(shape) - 2))), x.shape[:-1])
    ours, theirs = masked_grads(tmp_path, flavor, batch_norm(-1), x, mask)
    np.testing.assert_allclose(ours[0], theirs[0], rtol=1e-4, atol=1e-5)
    for name, grad in theirs[1].items():
        np.testing.assert_allclose(ours[1][name], grad, rtol=1e-4, atol=1e-5)
    # The control: without the mask the gradient is visibly different.
    unmasked = kerascheck.load(
        save(build_model(flavor, batch_norm(-1), x.shape[1:]), str(tmp_path), flavor + "u")
    )
    tape = backprop.forward(unmasked.graph, [x], training=True)
    dy = np.random.default_rng(1).standard_normal(x.shape).astype("float32")
    plain = backprop.backward(unmasked.graph, tape, [dy]).model_inputs[0]
    if flavor == "tf_keras" and len(shape) == 3:
        np.testing.assert_allclose(ours[0], plain, rtol=1e-6, atol=1e-7)
    else:
        assert np.abs(plain - ours[0]).max() > 1e-2


# --- LayerNormalization ----------------------------------------------------


@pytest.mark.parametrize("center, scale", AFFINE)
@pytest.mark.parametrize(
    "shape, axis",
    [
        ((6,), -1),
        ((5, 4), -1),
        ((5, 4), 1),  # over time steps, not features
        (IMAGE, -1),
        (IMAGE, 1),
        (IMAGE, [1, 2, 3]),  # whole example
        (IMAGE, [1, 2]),
        (IMAGE, [2, 3]),
    ],
)
def test_layer_norm(tmp_path, shape, axis, center, scale):
    check_layer_grad(tmp_path, layer_norm(axis, center, scale), shape)


@pytest.mark.parametrize("epsilon", [1e-6, 0.5])
def test_layer_norm_epsilon(tmp_path, epsilon):
    check_layer_grad(tmp_path, layer_norm(-1, epsilon=epsilon), (5, 4))


def test_layer_norm_unsorted_axes(tmp_path):
    """Out-of-order axes reinterpret gamma's memory; its gradient reshapes back the same way."""
    check_layer_grad(tmp_path, layer_norm([3, 1]), IMAGE, flavors=("tf_keras",))
    check_layer_grad(tmp_path, layer_norm([-1, 1]), IMAGE, flavors=("keras",))


@pytest.mark.parametrize("scale", [True, False])
@pytest.mark.parametrize("shape, axis", [((5, 4), -1), (IMAGE, [1, 2]), (IMAGE, 1)])
def test_layer_norm_rms_scaling_keras3(tmp_path, shape, axis, scale):
    """Keras 3 only: divides by the standard deviation without centering x."""
    make = layer_norm(axis, scale=scale, rms_scaling=True)
    check_layer_grad(tmp_path, make, shape, flavors=("keras",))


def test_frozen_layer_norm(tmp_path):
    """Frozen: the same output; Keras has no trainable weights, the graph drops ours."""
    check_layer_grad(tmp_path, layer_norm(-1, trainable=False), (5, 4))


def test_layer_norm_h5(tmp_path):
    check_layer_grad(tmp_path, layer_norm([1, 2, 3]), IMAGE, ext=".h5")


# --- GroupNormalization ----------------------------------------------------


@pytest.mark.parametrize("center, scale", AFFINE)
@pytest.mark.parametrize(
    "shape, groups, axis",
    [
        ((4, 5, 6), 3, -1),
        ((4, 5, 6), 6, -1),  # one channel per group (instance norm)
        ((4, 5, 6), 1, -1),  # one group (layer norm over the example)
        ((6, 4, 5), 3, 1),  # channels-first
        ((7, 4), 2, -1),
        ((6, 7), 2, -2),  # negative axis that is not the last
    ],
)
def test_group_norm(tmp_path, shape, groups, axis, center, scale):
    make = lambda k: k.layers.GroupNormalization(  # noqa: E731
        groups=groups, axis=axis, center=center, scale=scale
    )
    check_layer_grad(tmp_path, make, shape)


def test_group_norm_all_channels_h5(tmp_path):
    """`groups=-1`: one group per channel."""
    make = lambda k: k.layers.GroupNormalization(groups=-1, epsilon=0.5)  # noqa: E731
    check_layer_grad(tmp_path, make, (4, 5, 6), ext=".h5")


# --- UnitNormalization -----------------------------------------------------


@pytest.mark.parametrize(
    "shape, axis", [((6,), -1), ((5, 4), 1), (IMAGE, [1, 2]), (IMAGE, [1, 2, 3]), (IMAGE, 1)]
)
def test_unit_norm(tmp_path, shape, axis):
    check_layer_grad(tmp_path, lambda k: k.layers.UnitNormalization(axis=axis), shape)


@pytest.mark.parametrize("flavor", FLAVORS)
def test_unit_norm_tiny_and_zero_vectors(tmp_path, flavor):
    """Under each Keras' guard the inverse norm is a constant: the gradient is dy * cap.

    Rows are compared one by one: the guarded rows' gradients are 1e6 (tf_keras)
    to 1e12 (Keras 3) times larger and would hide the others in one norm.
    """
    x = make_input((5, 6))
    x[1] *= 1e-8  # ||x||**2 ~ 1e-14: under tf_keras' floor, not Keras 3's cap
    x[2] *= 1e-14  # ||x|| ~ 1e-13: under both guards
    x[3] = 0.0
    x[4] *= 1e-3
    model = build_model(flavor, lambda k: k.layers.UnitNormalization(), (6,))
    ours = kerascheck.load(save(model, str(tmp_path), flavor))
    dy = np.random.default_rng(1).standard_normal(x.shape).astype("float32")
    theirs = keras_grads(model, x, dy, training=True)[0][0]
    mine = engine_grads(ours, x, dy, training=True)[0][0]
    for row in range(len(x)):
        assert relative_error(mine[row], theirs[row]) < 1e-5, row
    cap = 1e12 if flavor == "keras" else 1e6
    np.testing.assert_allclose(mine[3], dy[3] * cap, rtol=1e-6)


# --- RMSNormalization (Keras 3 only) ---------------------------------------


@pytest.mark.parametrize(
    "shape, axis, epsilon",
    [((6,), -1, 1e-6), ((5, 4), -1, 0.5), (IMAGE, [2, 3], 1e-6), ((4, 4), 1, 1e-6)],
)
def test_rms_norm_keras3(tmp_path, shape, axis, epsilon):
    """The last cell has `scale` broadcast along the trailing axis although `axis=1`."""
    make = lambda k: k.layers.RMSNormalization(axis=axis, epsilon=epsilon)  # noqa: E731
    check_layer_grad(tmp_path, make, shape, flavors=("keras",))
