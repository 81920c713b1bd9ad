"""`predict` folds an inference BatchNormalization into the convolution or Dense before it.

Each model is saved with random weights and BatchNormalization statistics
(moving variance 0.5-2, means and offsets of either sign), so a fold that
forgets the bias, the mean or the offset, or scales the wrong axis, is off by
far more than the tolerance. Both the folded `predict` and the unfolded
per-call `run` are compared with Keras, and the test states whether the pair
must fold.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import FLAVORS, assert_matches, build_model, keras_predict, make_input, save

import kerascheck


def chain(make_first, norm=None, then=None):
    def make(k):
        def apply(x):
            y = make_first(k)(x)
            z = k.layers.BatchNormalization(**(norm or {}))(y)
            return then(k, y, z) if then else z

        return apply

    return make


def conv(**kw):
    return lambda k: k.layers.Conv2D(**kw)


CASES = [
    # id, make, input shape, folds
    (
        "conv-same-s2",
        chain(conv(filters=5, kernel_size=3, strides=2, padding="same")),
        (9, 8, 3),
        True,
    ),
    ("conv-nobias", chain(conv(filters=4, kernel_size=3, use_bias=False)), (7, 7, 2), True),
    ("conv-1x1-nobias", chain(conv(filters=6, kernel_size=1, use_bias=False)), (5, 6, 4), True),
    ("conv-no-scale", chain(conv(filters=4, kernel_size=2), dict(scale=False)), (6, 5, 3), True),
    ("conv-no-center", chain(conv(filters=4, kernel_size=2), dict(center=False)), (6, 5, 3), True),
    (
        "conv-groups",
        chain(conv(filters=6, kernel_size=3, groups=2, padding="same")),
        (6, 7, 4),
        True,
    ),
    (
        "conv-channels-first",
        chain(conv(filters=5, kernel_size=3, data_format="channels_first"), dict(axis=1)),
        (3, 7, 8),
        True,
    ),
    (
        "conv1d-causal",
        chain(lambda k: k.layers.Conv1D(4, 3, padding="causal", dilation_rate=2)),
        (9, 3),
        True,
    ),
    ("conv3d", chain(lambda k: k.layers.Conv3D(3, 2, padding="same")), (4, 5, 4, 2), True),
    (
        "depthwise-multiplier",
        chain(lambda k: k.layers.DepthwiseConv2D(3, depth_multiplier=2, padding="same")),
        (7, 6, 3),
        True,
    ),
    (
        "separable",
        chain(lambda k: k.layers.SeparableConv2D(5, 3, strides=2, use_bias=False)),
        (9, 8, 3),
        True,
    ),
    ("dense", chain(lambda k: k.layers.Dense(6)), (5,), True),
    ("dense-3d", chain(lambda k: k.layers.Dense(6)), (4, 5), True),
    # the BatchNormalization is not an affine map of each output channel: no fold
    ("dense-3d-axis-1", chain(lambda k: k.layers.Dense(6), dict(axis=1)), (4, 5), False),
    ("conv-axis-1", chain(conv(filters=4, kernel_size=3), dict(axis=1)), (6, 6, 3), False),
    # the convolution's activation comes between: no fold
    ("conv-relu", chain(conv(filters=4, kernel_size=3, activation="relu")), (6, 6, 3), False),
    # the convolution's own output is read again: no fold
    (
        "conv-read-twice",
        chain(conv(filters=4, kernel_size=3), then=lambda k, y, z: k.layers.Add()([y, z])),
        (6, 6, 3),
        False,
    ),
]


@pytest.mark.parametrize("flavor", FLAVORS)
@pytest.mark.parametrize("make, shape, folds", [pytest.param(*c[1:], id=c[0]) for c in CASES])
def test_predict_folds_batch_normalization(tmp_path, flavor, make, shape, folds):
    model = build_model(flavor, make, shape)
    path = save(model, tmp_path, flavor)
    x = make_input((3, *shape))
    expected = keras_predict(model, x)
    engine = kerascheck.load(path)

    predicted = engine.predict(x)
    assert bool(engine.graph.folded_pairs()) == folds, engine.graph.folded_pairs()
    assert_matches(predicted, expected, what=f"{flavor} predict")
    # the per-call run computes both calls as written, and agrees with Keras too
    unfolded = engine.run(x)[model.layers[-1].name]
    assert_matches(unfolded, expected, what=f"{flavor} run")
    scale = float(np.max(np.abs(expected)))
    assert float(np.max(np.abs(predicted - unfolded))) <= 1e-5 * scale


def test_fold_keeps_the_mean_far_from_zero(tmp_path):
    """|moving mean| >> spread: the folded bias cancels as Keras 3's own formula does."""
    model = build_model("keras", chain(conv(filters=4, kernel_size=3)), (6, 6, 3))
    weights = model.get_weights()  # kernel, bias, gamma, beta, moving mean, variance
    weights[1] = weights[1] + 300.0
    weights[4] = weights[4] + 300.0
    model.set_weights(weights)
    path = save(model, tmp_path, "keras")
    x = make_input((3, 6, 6, 3))
    engine = kerascheck.load(path)
    assert engine.graph.folded_pairs() == [] and engine.predict(x) is not None
    assert engine.graph.folded_pairs() == [(model.layers[1].name, model.layers[2].name)]
    assert_matches(engine.predict(x), keras_predict(model, x))


# -- activations computed over their input's memory ------------------------------


def graph(body):
    """A Functional model of one (32, 32, 8) image input: body(keras, x) -> output."""
    return lambda k: lambda x: body(k, x)


IN_PLACE = [
    # id, body, calls that run in place
    (
        "conv-bn-relu",
        lambda k, x: k.layers.Activation("relu")(
            k.layers.BatchNormalization()(k.layers.Conv2D(16, 3, padding="same")(x))
        ),
        ["activation"],
    ),
    (
        "conv-relu6-layer",
        lambda k, x: k.layers.ReLU(max_value=6.0)(k.layers.Conv2D(16, 3, padding="same")(x)),
        ["re_lu"],
    ),
    (
        # swish over a tensor larger than one piece: written piece by piece
        "dense-swish",
        lambda k, x: k.layers.Activation("swish")(k.layers.Dense(300)(x)),
        ["activation"],
    ),
    (
        "add-relu",
        lambda k, x: k.layers.Activation("relu")(k.layers.Add()([k.layers.Conv2D(8, 1)(x), x])),
        ["activation"],
    ),
    # softmax is not elementwise: computed as usual, still right
    ("dense-softmax", lambda k, x: k.layers.Activation("softmax")(k.layers.Dense(5)(x)), []),
    # the model input is the user's array: never overwritten
    ("input-relu", lambda k, x: k.layers.Activation("relu")(x), []),
    # a Reshape's output is a view of its input, which the Add reads afterwards
    (
        "view-relu",
        lambda k, x: k.layers.Add()(
            [
                x,
                k.layers.Reshape((32, 32, 8))(
                    k.layers.Activation("relu")(k.layers.Reshape((32, 256))(x))
                ),
            ]
        ),
        [],
    ),
    # the convolution's output is read twice: its ReLU gets a new array
    (
        "read-twice",
        lambda k, x: (lambda y: k.layers.Add()([k.layers.Activation("relu")(y), y]))(
            k.layers.Conv2D(8, 3, padding="same")(x)
        ),
        [],
    ),
    # the LeakyReLU-style ReLU (negative slope) is not a clip: computed as usual
    (
        "leaky-relu-layer",
        lambda k, x: k.layers.ReLU(negative_slope=0.1)(k.layers.Conv2D(8, 1)(x)),
        [],
    ),
]


@pytest.mark.parametrize("flavor", FLAVORS)
@pytest.mark.parametrize("body, expected", [pytest.param(*c[1:], id=c[0]) for c in IN_PLACE])
def test_activation_overwrites_only_what_nothing_else_reads(tmp_path, flavor, body, expected):
    model = build_model(flavor, graph(body), (32, 32, 8))
    path = save(model, tmp_path, flavor)
    x = make_input((3, 32, 32, 8))
    original = x.copy()
    expected_output = keras_predict(model, x)
    engine = kerascheck.load(path)
    names = {layer.name: i for i, layer in enumerate(model.layers)}
    planned = engine.graph.in_place_calls()
    # Keras names layers per session (re_lu_3, activation_7): compare by kind and count
    assert [n.rstrip("_0123456789") for n in planned] == expected, (planned, names)

    predicted = engine.predict(x)
    np.testing.assert_array_equal(x, original)  # the input is untouched
    assert_matches(predicted, expected_output, what=f"{flavor} predict")
    unfused = engine.run(x)[model.layers[-1].name]  # every call as written
    scale = float(np.max(np.abs(expected_output)))
    assert float(np.max(np.abs(predicted - unfused))) <= 1e-5 * scale  # a fold rounds apart
    np.testing.assert_array_equal(engine.predict(x), predicted)  # a second run: same


def test_weights_changed_in_place_refold(tmp_path):
    model = build_model("keras", chain(conv(filters=4, kernel_size=3)), (6, 6, 3))
    path = save(model, tmp_path, "keras")
    x = make_input((3, 6, 6, 3))
    engine = kerascheck.load(path)
    before = engine.predict(x)
    norm = engine.graph.layers[model.layers[2].name]
    norm.w["moving_mean"][...] += 1.0  # in place, as a training step updates it
    engine.graph.weights_changed()
    after = engine.predict(x)
    unfolded = engine.run(x)[model.layers[-1].name]
    np.testing.assert_allclose(after, unfolded, rtol=1e-5, atol=1e-5)
    assert not np.allclose(after, before, atol=1e-3)
