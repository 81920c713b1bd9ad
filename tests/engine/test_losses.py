"""Engine losses against Keras' own loss objects under `tf.GradientTape`, both flavors.

Every case serializes a Keras loss object, rebuilds the engine's loss from that dict
(`get_loss`), and compares value and gradient with the loss Keras rebuilds from the same
dict (what `fit` on a loaded file would use). Inputs are float32 and include saturated
probabilities (exact 0 and 1, 1e-9, values past the clip bounds), negative targets and
predictions, ties at kinks, unnormalized rows and zero sample weights.

Tolerance: per tensor, `||engine - keras|| <= 1e-5 * ||keras|| + 1e-9 * sqrt(n)`; the
engine works in float64 after float32 clipping, so what is left is float32 noise.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from helpers import FLAVORS, keras_module

from kerascheck.engine.losses import ALIASES, REGISTRY, get_loss
from kerascheck.errors import KerascheckError

RTOL = 1e-5
MAJOR = {"keras": 3, "tf_keras": 2}
B = 4


def assert_close(ours, theirs, what):
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    assert ours.shape == theirs.shape, f"{what}: shape {ours.shape} != {theirs.shape}"
    err = np.linalg.norm(ours - theirs)
    bound = RTOL * np.linalg.norm(theirs) + 1e-9 * np.sqrt(max(theirs.size, 1))
    assert err <= bound, f"{what}: |diff| {err:.3g} > {bound:.3g}\nours={ours}\nkeras={theirs}"


def keras_value_and_grad(loss, y_true, x, sample_weight=None, activation=None, mask=None):
    """Keras' loss and its tape gradient w.r.t. x (the logits when `activation` is given:
    Keras' own softmax/sigmoid marks its output with `_keras_logits`)."""
    x, y_true = tf.constant(x), tf.constant(y_true)  # tensors, as in `fit`
    with tf.GradientTape() as tape:
        tape.watch(x)
        y_pred = activation(x) if activation is not None else tf.identity(x)
        if mask is not None:
            y_pred._keras_mask = tf.constant(mask)
        value = loss(y_true, y_pred, sample_weight=sample_weight)
    return float(value), tape.gradient(value, x).numpy()


# -- inputs ------------------------------------------------------------------------------

RNG = np.random.default_rng(0)
F32 = np.float32


def _probabilities(shape):
    p = RNG.uniform(0.0, 1.0, size=shape)
    flat = p.reshape(-1)
    saturated = [0.0, 1.0, 1e-9, 1.0 - 1e-9, 5e-8, 1.0 - 5e-8, 1e-7, 0.9999999, 0.5]
    flat[: len(saturated)] = saturated[: flat.size]
    return p.astype(F32)


def _regression():
    y_true = (3.0 * RNG.standard_normal((B, 5))).astype(F32)
    y_pred = (3.0 * RNG.standard_normal((B, 5))).astype(F32)
    y_pred[0, :2] = y_true[0, :2]  # abs'(0): TF gives 0
    y_pred[1, 0] = y_true[1, 0] + 0.5  # inside Huber's quadratic zone
    y_true[2, 1] = 0.0  # MAPE's epsilon floor
    return y_true, y_pred


def _binary():
    y_pred = _probabilities((B, 5))
    y_true = RNG.integers(0, 2, size=(B, 5)).astype(F32)
    y_true[0, :4] = [1.0, 0.0, 1.0, 0.0]  # against p = 0, 1, 1e-9, 1 - 1e-9
    y_true[3, :2] = [0.3, 0.8]  # soft labels
    return y_true, y_pred


def _categorical():
    y_pred = RNG.uniform(0.0, 1.0, size=(B, 4))
    y_pred /= y_pred.sum(axis=1, keepdims=True)
    y_pred[0] = [1.0, 0.0, 0.0, 0.0]  # saturated: clipped everywhere
    y_pred[1] = [1e-9, 1.0 - 1e-9, 0.0, 0.0]
    y_pred[2] *= 1.3  # unnormalized: Keras renormalizes
    y_true = np.eye(4)[[1, 1, 2, 3]]
    y_true[3] = [0.1, 0.2, 0.3, 0.4]
    return y_true.astype(F32), y_pred.astype(F32)


def _unnormalized_targets():
    y_true, y_pred = _categorical()
    y_true[2] = [1.0, 1.0, 0.0, 0.5]  # TF's softmax gradient is p - t all the same
    return y_true, y_pred


def _sparse():
    _, y_pred = _categorical()
    return np.array([1, 0, 3, 2], np.int32), y_pred


def _sparse_column():
    y_true, y_pred = _sparse()
    return y_true[:, None].astype(F32), y_pred


def _sequence():
    y_pred = RNG.uniform(0.0, 1.0, size=(B, 3, 4))
    y_pred /= y_pred.sum(axis=-1, keepdims=True)
    y_pred[0, 0] = [1.0, 0.0, 0.0, 0.0]
    y_true = np.eye(4)[RNG.integers(0, 4, size=(B, 3))]
    return y_true.astype(F32), y_pred.astype(F32)


def _hinge_binary():
    y_true = RNG.integers(0, 2, size=(B, 5)).astype(F32)
    y_pred = (2.0 * RNG.standard_normal((B, 5))).astype(F32)
    y_pred[0, :3] = 2.0 * y_true[0, :3] - 1.0  # margin exactly 0
    return y_true, y_pred


def _hinge_signed():
    y_true = np.where(RNG.uniform(size=(B, 5)) < 0.5, -1.0, 1.0).astype(F32)
    y_pred = (2.0 * RNG.standard_normal((B, 5))).astype(F32)
    y_pred[1, :2] = y_true[1, :2]
    return y_true, y_pred


def _categorical_hinge():
    y_true = np.eye(4)[[0, 1, 2, 3]].astype(F32)
    y_pred = (2.0 * RNG.standard_normal((B, 4))).astype(F32)
    y_pred[0] = [0.5, 1.5, 1.5, -1.0]  # tied maxima among the negatives
    y_pred[1] = [0.0, 1.0, 0.0, 0.0]  # margin exactly 0
    return y_true, y_pred


def _poisson():
    y_true = RNG.poisson(2.0, size=(B, 5)).astype(F32)
    y_pred = RNG.uniform(0.0, 4.0, size=(B, 5)).astype(F32)
    y_pred[0, :2] = 0.0
    return y_true, y_pred


def _kld():
    y_true, y_pred = _categorical()
    y_true[0] = [0.0, 1.0, 0.0, 0.0]
    y_pred[3, 0] = -0.2  # below the clip floor
    return y_true, y_pred


def _cosine():
    y_true = RNG.standard_normal((B, 5)).astype(F32)
    y_pred = RNG.standard_normal((B, 5)).astype(F32)
    y_pred[1] = -2.0 * y_true[1]
    y_pred[2] *= 1e-8  # norm below both flavors' floors: the scale is a constant
    y_pred[3] *= 3e-7  # below tf_keras' floor (1e-12 on the squared norm) only
    return y_true, y_pred


def _logits_categorical():
    y_true, _ = _categorical()
    return y_true, (3.0 * RNG.standard_normal((B, 4))).astype(F32)


def _segmentation():
    y_true = RNG.integers(0, 2, size=(B, 3, 3, 1)).astype(F32)
    return y_true, _probabilities((B, 3, 3, 1))


# (Keras class, constructor arguments, inputs)
CASES = [
    ("MeanSquaredError", {}, _regression),
    ("MeanAbsoluteError", {}, _regression),
    ("MeanAbsolutePercentageError", {}, _regression),
    ("MeanSquaredLogarithmicError", {}, _regression),
    ("Huber", {}, _regression),
    ("LogCosh", {}, _regression),
    ("Poisson", {}, _poisson),
    ("Hinge", {}, _hinge_binary),
    ("Hinge", {}, _hinge_signed),
    ("SquaredHinge", {}, _hinge_binary),
    ("SquaredHinge", {}, _hinge_signed),
    ("CategoricalHinge", {}, _categorical_hinge),
    ("KLDivergence", {}, _kld),
    ("CosineSimilarity", {}, _cosine),
    ("BinaryCrossentropy", {}, _binary),
    ("BinaryCrossentropy", {"label_smoothing": 0.2}, _binary),
    ("BinaryCrossentropy", {"from_logits": True}, _regression),
    ("BinaryCrossentropy", {"axis": 1}, _sequence),
    ("BinaryFocalCrossentropy", {}, _binary),
    ("BinaryFocalCrossentropy", {"apply_class_balancing": True, "gamma": 1.5}, _binary),
    ("BinaryFocalCrossentropy", {"from_logits": True, "label_smoothing": 0.1}, _regression),
    ("CategoricalCrossentropy", {}, _categorical),
    ("CategoricalCrossentropy", {"label_smoothing": 0.1}, _categorical),
    ("CategoricalCrossentropy", {"from_logits": True}, _unnormalized_targets),
    ("CategoricalCrossentropy", {}, _sequence),
    ("CategoricalCrossentropy", {"axis": 1, "label_smoothing": 0.1}, _sequence),
    ("CategoricalFocalCrossentropy", {}, _categorical),
    ("CategoricalFocalCrossentropy", {"alpha": [0.1, 0.2, 0.3, 0.4], "gamma": 3.0}, _categorical),
    (
        "CategoricalFocalCrossentropy",
        {"from_logits": True, "label_smoothing": 0.1},
        _logits_categorical,
    ),
    ("SparseCategoricalCrossentropy", {}, _sparse),
    ("SparseCategoricalCrossentropy", {}, _sparse_column),
    ("SparseCategoricalCrossentropy", {"from_logits": True}, _sparse),
    ("SparseCategoricalCrossentropy", {"ignore_class": 3}, _sparse),
]
KERAS3_ONLY = [
    ("Dice", {}, _segmentation),
    ("Dice", {"axis": [1, 2, 3]}, _segmentation),
    ("Tversky", {"alpha": 0.3, "beta": 0.7, "axis": [1, 2]}, _segmentation),
]
# (reduction, weighted): the default, per-sample weights with a zero, a non-default reduction
MODES = [("sum_over_batch_size", False), ("sum_over_batch_size", True), ("sum", True)]
KERAS3_MODES = [("mean_with_sample_weight", True), ("mean", False)]


def _weights():
    return np.array([1.0, 0.0, 2.5, 0.5], F32)


def _run_case(flavor, class_name, kwargs, make, reduction, weighted):
    k = keras_module(flavor)
    serialized = k.losses.serialize(getattr(k.losses, class_name)(reduction=reduction, **kwargs))
    theirs = k.losses.deserialize(serialized)  # what a loaded file's `fit` would use
    ours = get_loss(serialized, MAJOR[flavor])
    y_true, y_pred = make()
    sample_weight = _weights() if weighted else None
    try:
        value, grad = keras_value_and_grad(theirs, y_true, y_pred, sample_weight)
    except (tf.errors.InvalidArgumentError, ValueError):
        # Keras 3 multiplies (batch,) weights into (batch, steps) losses without expanding
        with pytest.raises(KerascheckError, match="sample weights"):
            ours.value_and_grad(y_true, y_pred, sample_weight)
        return ours
    our_value, our_grad = ours.value_and_grad(y_true, y_pred, sample_weight)
    what = f"{flavor} {class_name}{kwargs} {reduction} weighted={weighted}"
    assert_close(our_value, value, what + " value")
    assert_close(our_grad, grad, what + " gradient")
    assert our_grad.dtype == y_pred.dtype
    return ours


@pytest.mark.parametrize("flavor", FLAVORS)
@pytest.mark.parametrize("reduction, weighted", MODES)
@pytest.mark.parametrize("class_name, kwargs, make", CASES, ids=lambda c: getattr(c, "__name__", c))
def test_loss_matches_keras(flavor, class_name, kwargs, make, reduction, weighted):
    _run_case(flavor, class_name, kwargs, make, reduction, weighted)


@pytest.mark.parametrize("reduction, weighted", KERAS3_MODES + MODES)
@pytest.mark.parametrize(
    "class_name, kwargs, make",
    KERAS3_ONLY + [c for c in CASES if c[0] in ("MeanSquaredError", "CategoricalCrossentropy")],
    ids=lambda c: getattr(c, "__name__", c),
)
def test_keras3_losses_and_reductions(class_name, kwargs, make, reduction, weighted):
    _run_case("keras", class_name, kwargs, make, reduction, weighted)


def test_float64_predictions_keep_their_dtype():
    y_true, y_pred = _binary()
    value, grad = get_loss("binary_crossentropy", 3).value_and_grad(y_true, y_pred.astype("f8"))
    assert grad.dtype == np.float64
    # float64 clips at 1 - 1e-7 exactly; float32 at 1 - 1.19e-7 (15.94 instead of 16.12)
    single = get_loss("binary_crossentropy", 3).value_and_grad([[0.0]], np.ones((1, 1), "f4"))
    double = get_loss("binary_crossentropy", 3).value_and_grad([[0.0]], np.ones((1, 1), "f8"))
    assert single[0] == pytest.approx(-np.log(np.float32(1) - np.float32(1 - 1e-7)), rel=1e-6)
    assert double[0] == pytest.approx(-np.log(1e-7), rel=1e-6)


def test_saturated_binary_crossentropy_differs_between_flavors():
    """GRADIENTS.md: y=1, p=0 gives 16.118 in Keras 3 but 15.425 in tf_keras (+epsilon)."""
    keras3 = get_loss("binary_crossentropy", 3).value_and_grad([[1.0]], [[0.0]])[0]
    legacy = get_loss("binary_crossentropy", 2).value_and_grad([[1.0]], [[0.0]])[0]
    assert keras3 == pytest.approx(16.118, abs=1e-3)
    assert legacy == pytest.approx(15.425, abs=1e-3)


# -- the logits path -----------------------------------------------------------------------


def _saturating_logits(shape):
    z = (4.0 * RNG.standard_normal(shape)).astype(F32)
    z.reshape(-1)[0] = 40.0  # a saturated softmax/sigmoid: clipping would give 16.1 and 0
    return z


LOGITS_CASES = [
    ("CategoricalCrossentropy", {}, "softmax", lambda: np.eye(4, dtype=F32)[[1, 0, 3, 2]]),
    ("CategoricalCrossentropy", {"label_smoothing": 0.1}, "softmax", lambda: np.eye(4)[[1] * 4]),
    ("CategoricalCrossentropy", {"from_logits": True}, "softmax", lambda: np.eye(4)[[2] * 4]),
    ("SparseCategoricalCrossentropy", {}, "softmax", lambda: np.array([1, 0, 3, 2])),
    ("SparseCategoricalCrossentropy", {"from_logits": True}, "softmax", lambda: np.arange(4)),
    ("BinaryCrossentropy", {}, "sigmoid", lambda: RNG.integers(0, 2, (B, 4)).astype(F32)),
    ("BinaryCrossentropy", {"from_logits": True}, "sigmoid", lambda: np.ones((B, 4), F32)),
    ("BinaryFocalCrossentropy", {}, "sigmoid", lambda: RNG.integers(0, 2, (B, 4)).astype(F32)),
    (
        "BinaryFocalCrossentropy",
        {"apply_class_balancing": True, "label_smoothing": 0.1},
        "sigmoid",
        lambda: np.zeros((B, 4), F32),
    ),
]


@pytest.mark.parametrize("flavor", FLAVORS)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("class_name, kwargs, activation, make_targets", LOGITS_CASES)
def test_logits_path_matches_keras(flavor, weighted, class_name, kwargs, activation, make_targets):
    """Keras' loss on `activations.softmax(z)` equals the engine's loss from z, and the
    tape gradient w.r.t. z equals the engine's d_logits (even with from_logits=True:
    Keras then warns and still uses the activation's logits)."""
    k = keras_module(flavor)
    loss = getattr(k.losses, class_name)(**kwargs)
    ours = get_loss(k.losses.serialize(loss), MAJOR[flavor])
    assert ours.logits_activation == activation
    z = _saturating_logits((B, 4))
    act = getattr(k.activations, activation)
    y_true = make_targets()
    sample_weight = _weights() if weighted else None
    value, d_z = keras_value_and_grad(loss, y_true, z, sample_weight, activation=act)
    y_pred = np.asarray(act(tf.constant(z)))
    our_value, our_dz = ours.value_and_grad(y_true, y_pred, sample_weight, logits=z)
    assert_close(our_value, value, f"{flavor} {class_name} value")
    assert_close(our_dz, d_z, f"{flavor} {class_name} d_logits")


def test_saturated_softmax_from_logits_gives_40():
    """GRADIENTS.md: a saturated softmax output gives loss 40 and gradient p - y from the
    logits, but 16.118 and a zero gradient from the (clipped) probabilities."""
    z = np.array([[0.0, 40.0]], F32)
    y_true = np.array([[1.0, 0.0]], F32)
    p = np.array([[0.0, 1.0]], F32)
    loss = get_loss("categorical_crossentropy", 3)
    value, d_z = loss.value_and_grad(y_true, p, logits=z)
    assert value == pytest.approx(40.0, rel=1e-6)
    np.testing.assert_allclose(d_z, p - y_true, atol=1e-7)
    value, d_p = loss.value_and_grad(y_true, p)
    assert value == pytest.approx(16.118, abs=1e-3)
    np.testing.assert_array_equal(d_p, 0.0)


def test_tf_keras_categorical_focal_takes_the_logits():
    """tf_keras' focal loss runs `_get_logits` (then softmax again); Keras 3's never looks."""
    z = _saturating_logits((B, 4))
    y_true = np.eye(4, dtype=F32)[[0, 1, 2, 3]]
    loss = get_loss({"class_name": "CategoricalFocalCrossentropy", "config": {}}, 2)
    assert loss.logits_activation == "softmax"
    assert get_loss("categorical_focal_crossentropy", 3).logits_activation is None
    theirs = keras_module("tf_keras").losses.CategoricalFocalCrossentropy()
    softmax = keras_module("tf_keras").activations.softmax
    value, d_z = keras_value_and_grad(theirs, y_true, z, activation=softmax)
    y_pred = np.asarray(softmax(tf.constant(z)))
    our_value, our_dz = loss.value_and_grad(y_true, y_pred, logits=z)
    assert_close(our_value, value, "value")
    assert_close(our_dz, d_z, "d_logits")


@pytest.mark.parametrize("flavor", FLAVORS)
def test_logits_activation_per_loss(flavor):
    major = MAJOR[flavor]
    assert get_loss("mse", major).logits_activation is None
    assert get_loss("kld", major).logits_activation is None
    ignoring = {"class_name": "SparseCategoricalCrossentropy", "config": {"ignore_class": 0}}
    # Keras 3 masks ignored rows with `where`, a new tensor without the softmax's logits
    assert get_loss(ignoring, major).logits_activation == (None if major == 3 else "softmax")
    focal = {"class_name": "BinaryFocalCrossentropy", "config": {"from_logits": True}}
    assert get_loss(focal, major).logits_activation is None
    with pytest.raises(KerascheckError, match="never takes"):
        get_loss("mse", major).value_and_grad(
            np.zeros((2, 2)), np.zeros((2, 2)), logits=np.ones((2, 2))
        )


# -- shapes and masks ------------------------------------------------------------------------


@pytest.mark.parametrize("flavor", FLAVORS)
def test_mask_on_the_prediction(flavor):
    """A prediction's `_keras_mask` zeroes masked entries and rescales the valid ones."""
    y_true, y_pred = _sequence()
    mask = np.array([[1, 1, 0], [0, 0, 0], [1, 0, 1], [1, 1, 1]], bool)
    for name in ("CategoricalCrossentropy", "MeanSquaredError"):
        for reduction in ("sum_over_batch_size", "sum"):
            theirs = getattr(keras_module(flavor).losses, name)(reduction=reduction)
            ours = get_loss({"class_name": name, "config": {"reduction": reduction}}, MAJOR[flavor])
            # Keras 3 cannot combine a (batch, steps) mask with (batch,) weights; tf_keras can
            per_sample = [_weights()] if flavor == "tf_keras" else []
            for weights in [None, RNG.uniform(size=(B, 3)).astype(F32), *per_sample]:
                value, grad = keras_value_and_grad(theirs, y_true, y_pred, weights, mask=mask)
                our_value, our_grad = ours.value_and_grad(y_true, y_pred, weights, mask=mask)
                assert_close(our_value, value, f"{name} {reduction} value")
                assert_close(our_grad, grad, f"{name} {reduction} gradient")


def test_keras3_mask_with_per_sample_weights_refused():
    """Keras 3 multiplies a (batch, steps) mask into (batch,) weights and fails; so do we."""
    y_true, y_pred = _sequence()
    mask = np.ones((B, 3), bool)
    with pytest.raises(KerascheckError, match="sample weights"):
        get_loss("mse", 3).value_and_grad(y_true, y_pred, _weights(), mask=mask)


@pytest.mark.parametrize("flavor", FLAVORS)
def test_squeezed_prediction_loses_the_logits(flavor):
    """(batch, steps) targets against a (batch, steps, 1) sigmoid output: Keras squeezes
    the prediction to match, the squeezed tensor has no `_keras_logits`, and the loss is
    the clipped probability one; the engine still returns d_logits, through the sigmoid."""
    k = keras_module(flavor)
    z = _saturating_logits((B, 3, 1))
    y_true = RNG.integers(0, 2, (B, 3)).astype(F32)
    loss = k.losses.BinaryCrossentropy()
    value, d_z = keras_value_and_grad(loss, y_true, z, activation=k.activations.sigmoid)
    y_pred = np.asarray(k.activations.sigmoid(tf.constant(z)))
    ours = get_loss("binary_crossentropy", MAJOR[flavor]).value_and_grad(y_true, y_pred, logits=z)
    assert_close(ours[0], value, "value")
    assert_close(ours[1], d_z, "d_logits")


@pytest.mark.parametrize("flavor", FLAVORS)
def test_per_timestep_weights_and_rank1_targets(flavor):
    k = keras_module(flavor)
    y_true, y_pred = _sequence()
    weights = RNG.uniform(size=(B, 3)).astype(F32)
    loss = k.losses.CategoricalCrossentropy()
    value, grad = keras_value_and_grad(loss, y_true, y_pred, weights)
    ours = get_loss("categorical_crossentropy", MAJOR[flavor]).value_and_grad(
        y_true, y_pred, weights
    )
    assert_close(ours[0], value, "value")
    assert_close(ours[1], grad, "gradient")
    # (batch,) targets against a (batch, 1) output, through the compiled loss as `fit` runs it
    y_true, y_pred = np.array([1.0, 0.0, 1.0, 0.0], F32), _probabilities((B, 1))
    inputs = k.Input((1,))
    model = k.Model(inputs, k.layers.Activation("linear")(inputs))
    model.compile(loss="binary_crossentropy")
    x = tf.constant(y_pred)
    with tf.GradientTape() as tape:
        tape.watch(x)
        value = model.compute_loss(x=None, y=tf.constant(y_true), y_pred=x)
    ours = get_loss("binary_crossentropy", MAJOR[flavor]).value_and_grad(y_true, y_pred)
    assert_close(ours[0], float(value), "rank-1 targets value")
    assert_close(ours[1], tape.gradient(value, x).numpy(), "rank-1 targets gradient")


@pytest.mark.parametrize("flavor", FLAVORS)
def test_sparse_label_out_of_range_refused(flavor):
    loss = get_loss("sparse_categorical_crossentropy", MAJOR[flavor])
    with pytest.raises(KerascheckError, match=r"class indices in \[0, 4\)"):
        loss.value_and_grad(np.array([0, 4, 1, 2]), _categorical()[1])


# -- identifiers -----------------------------------------------------------------------------


def _alias_data(class_name):
    if class_name == "SparseCategoricalCrossentropy":
        return _sparse()
    if class_name in ("Dice", "Tversky"):
        return _segmentation()
    return _categorical()


@pytest.mark.parametrize("flavor", FLAVORS)
def test_aliases_compute_what_keras_resolves(flavor):
    """Every alias the flavor's own `losses.get` knows computes what Keras computes."""
    k = keras_module(flavor)
    checked = 0
    for alias, class_name in ALIASES.items():
        try:
            fn = k.losses.get(alias)
        except ValueError:
            continue  # e.g. "huber_loss" is a tf_keras name only
        y_true, y_pred = _alias_data(class_name)
        expected = float(tf.reduce_mean(fn(tf.constant(y_true), tf.constant(y_pred))))
        loss = get_loss(alias, MAJOR[flavor])
        assert loss.name == class_name
        assert_close(loss.value_and_grad(y_true, y_pred)[0], expected, alias)
        checked += 1
    assert checked >= 25


@pytest.mark.parametrize("flavor", FLAVORS)
def test_class_names_and_serialized_dicts(flavor):
    k = keras_module(flavor)
    for name in REGISTRY:
        if not hasattr(k.losses, name):
            continue
        assert get_loss(name, MAJOR[flavor]).name == name
        serialized = k.losses.serialize(getattr(k.losses, name)())
        assert get_loss(serialized, MAJOR[flavor]).name == name
    function = k.losses.serialize(k.losses.mean_squared_error)  # {"class_name": "function"}
    assert get_loss(function, MAJOR[flavor]).name == "MeanSquaredError"


def test_tf_keras_legacy_dict_and_config_values():
    tf_keras = keras_module("tf_keras")
    huber = tf_keras.losses.Huber(delta=2.0, reduction="sum")
    legacy = tf_keras.losses.serialize(huber, use_legacy_format=True)
    assert "module" not in legacy
    loss = get_loss(legacy, 2)
    assert (loss.name, loss.delta, loss.reduction) == ("Huber", 2.0, "sum")
    wrapper = {"class_name": "LossFunctionWrapper", "config": {"fn": "huber", "delta": 0.5}}
    assert get_loss(wrapper, 2).delta == 0.5


def test_keras3_does_not_save_huber_delta():
    """Keras 3's `Huber.get_config` drops `delta`: a file rebuilt from it uses delta 1."""
    keras = keras_module("keras")
    serialized = keras.losses.serialize(keras.losses.Huber(delta=2.0))
    assert "delta" not in serialized["config"]
    assert keras.losses.deserialize(serialized).fn.__name__ == "huber"
    assert get_loss(serialized, 3).delta == 1.0


@pytest.mark.parametrize(
    "identifier, keras_major, match",
    [
        ("my_loss", 3, "the loss 'my_loss'"),
        ({"class_name": "MyLoss", "config": {}}, 2, "'MyLoss'"),
        (
            {"module": "my_pkg.losses", "class_name": "MeanSquaredError", "config": {}},
            3,
            "from module 'my_pkg.losses'",
        ),
        (
            {"module": "keras.losses", "class_name": "MeanSquaredError", "registered_name": "X>Y"},
            3,
            "custom loss 'X>Y'",
        ),
        ({"class_name": "Custom>FocalLoss", "config": {}}, 2, "custom loss class"),
        ({"module": "builtins", "class_name": "function", "config": "my_fn"}, 3, "'my_fn'"),
        ({"module": "__main__", "class_name": "function", "config": "mse"}, 3, "custom loss func"),
        (["mse", "mae"], 3, "the loss"),
        ("CTC", 3, "not supported"),
        ("crossentropy", 3, "explicit name"),
        ({"class_name": "MeanSquaredError", "config": {"reduction": "none"}}, 3, "one number"),
        ({"class_name": "MeanSquaredError", "config": {"reduction": "mean"}}, 2, "expected one"),
    ],
)
def test_unknown_or_custom_loss_refused(identifier, keras_major, match):
    with pytest.raises(KerascheckError, match=match) as info:
        get_loss(identifier, keras_major)
    assert "\n" not in str(info.value)
    if "; supported:" in str(info.value):
        assert "MeanSquaredError" in str(info.value) and "mse" in str(info.value)
