"""Pooling backward against Keras 3 and tf_keras tape gradients (and finite differences).

Windowed cases mix odd and even sizes under `same`, strides below the pool
size (overlapping windows, whose gradients add up), above it (cells no window
reads) and pools that do not divide the input. Finite differences need an
input without ties, so those cells use continuous normal values; the tie
rules are checked on integer inputs against the tape alone:

- MaxPooling1D/2D: the whole gradient to the first maximum of the window;
- MaxPooling3D: the whole gradient to every maximum (TF's eager MaxPool3DGrad);
- GlobalMaxPooling: split equally among the maxima.
"""

from __future__ import annotations

import numpy as np
import pytest
from gradcheck import check_layer_grad
from helpers import FLAVORS, build_model, save

import kerascheck
from kerascheck.engine import backprop

CHANNELS = 2
FORMATS = ("channels_last", "channels_first")

# Per-axis settings; a rank-r layer takes the first r entries of each.
CASES = {
    "same_odd": dict(pool=(2, 2, 2), strides=(2, 2, 2), padding="same", size=(7, 5, 5)),
    "same_even": dict(pool=(3, 2, 2), strides=(2, 2, 2), padding="same", size=(8, 6, 4)),
    "same_overlap": dict(pool=(3, 3, 2), strides=(1, 2, 1), padding="same", size=(6, 5, 3)),
    "same_stride_gt_pool": dict(pool=(2, 1, 2), strides=(3, 2, 3), padding="same", size=(7, 5, 5)),
    "valid_overlap": dict(pool=(3, 2, 3), strides=(2, 1, 2), padding="valid", size=(7, 6, 5)),
    "valid_not_dividing": dict(pool=(3, 3, 2), strides=None, padding="valid", size=(8, 7, 5)),
}


def input_shape(size, rank, fmt):
    spatial = tuple(size[:rank])
    return (CHANNELS, *spatial) if fmt == "channels_first" else (*spatial, CHANNELS)


def pooling(mode, rank, case, fmt):
    pool = case["pool"][:rank]
    strides = None if case["strides"] is None else case["strides"][:rank]
    name = f"{mode}Pooling{rank}D"
    return lambda k: getattr(k.layers, name)(
        pool_size=pool, strides=strides, padding=case["padding"], data_format=fmt
    )


def flavors_for(mode, rank, fmt):
    # TensorFlow's CPU MaxPoolGrad supports NHWC only, and tf_keras calls it on
    # the NCHW tensor directly (Keras 3 transposes first); 1D and 3D are fine.
    if (mode, rank, fmt) == ("Max", 2, "channels_first"):
        return ("keras",)
    return FLAVORS


def tie_free(shape, seed=0):
    """Continuous values: no two cells of a window tie, so finite differences hold."""
    return (3.0 * np.random.default_rng(seed).standard_normal(shape)).astype("float32")


def ties(shape, seed=0, levels=3):
    """Few distinct integers: almost every window holds tied maxima."""
    return np.random.default_rng(seed).integers(0, levels, size=shape).astype("float32")


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize("mode", ["Max", "Average"])
def test_windowed_pooling(tmp_path, mode, rank, case, fmt):
    shape = input_shape(CASES[case]["size"], rank, fmt)
    worst = check_layer_grad(
        tmp_path,
        pooling(mode, rank, CASES[case], fmt),
        shape,
        flavors=flavors_for(mode, rank, fmt),
        x=tie_free((3, *shape)),
    )
    assert worst < 1e-5


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("case", ["same_overlap", "valid_overlap", "same_even"])
@pytest.mark.parametrize("rank", [1, 2, 3])
def test_max_pooling_ties(tmp_path, rank, case, fmt):
    """Integer inputs: TF's tie rule decides every tied window (finite differences cannot)."""
    shape = input_shape(CASES[case]["size"], rank, fmt)
    x = ties((3, *shape), seed=rank)
    worst = check_layer_grad(
        tmp_path,
        pooling("Max", rank, CASES[case], fmt),
        shape,
        flavors=flavors_for("Max", rank, fmt),
        x=x,
        finite_differences=False,
    )
    # The gradient only routes (and adds) upstream values: one wrong winner is a large
    # error, right ones agree to float32 rounding.
    assert worst < 1e-6


def engine_input_grad(tmp_path, make_layer, x, flavor="keras"):
    model = build_model(flavor, make_layer, x.shape[1:])
    ours = kerascheck.load(save(model, str(tmp_path), flavor))
    tape = backprop.forward(ours.graph, [x], training=True)
    ones = [np.ones_like(y) for y in tape.outputs]
    return backprop.backward(ours.graph, tape, ones).model_inputs[0]


def test_tie_rules_by_hand(tmp_path):
    """The three rules on one 2x2 window of equal cells, with an all-ones upstream gradient."""
    x = np.ones((1, 2, 2, 2, 1), dtype="float32")
    first = engine_input_grad(tmp_path, lambda k: k.layers.MaxPooling2D(2), x[:, 0])
    assert first[0, :, :, 0].tolist() == [[1.0, 0.0], [0.0, 0.0]]
    every = engine_input_grad(tmp_path, lambda k: k.layers.MaxPooling3D(2), x)
    assert (every == 1.0).all()
    split = engine_input_grad(tmp_path, lambda k: k.layers.GlobalMaxPooling2D(), x[:, 0])
    assert (split == 0.25).all()


@pytest.mark.parametrize("fmt", FORMATS)
def test_max_pooling_padding_never_wins(tmp_path, fmt):
    """All-negative input under `same`: a zero-padded cell would take border gradients."""
    case = CASES["same_overlap"]
    shape = input_shape(case["size"], 2, fmt)
    x = -np.abs(tie_free((3, *shape))) - 0.5
    check_layer_grad(
        tmp_path, pooling("Max", 2, case, fmt), shape, flavors=flavors_for("Max", 2, fmt), x=x
    )


def test_average_pooling_same_border_counts(tmp_path):
    """`same` border windows hold fewer real cells; their gradient shares are larger."""
    case = CASES["same_even"]
    x = np.ones((1, 8, 6, 1), dtype="float32")
    grad = engine_input_grad(tmp_path, pooling("Average", 2, case, "channels_last"), x)
    # 8 rows, pool 3, stride 2: pads (0, 1), so the last row's windows count 2 rows.
    assert grad[0, -1, 0, 0] == pytest.approx(1 / 4)
    assert grad[0, 0, 0, 0] == pytest.approx(1 / 6)
    check_layer_grad(tmp_path, pooling("Average", 2, case, "channels_last"), (8, 6, 1), x=x)


def test_pooling_batch_of_one(tmp_path):
    case = CASES["same_overlap"]
    shape = input_shape(case["size"], 2, "channels_last")
    for mode in ("Max", "Average"):
        check_layer_grad(
            tmp_path, pooling(mode, 2, case, "channels_last"), shape, x=tie_free((1, *shape))
        )


def test_pooling_h5(tmp_path):
    case = CASES["valid_overlap"]
    shape = input_shape(case["size"], 3, "channels_last")
    check_layer_grad(
        tmp_path,
        pooling("Max", 3, case, "channels_last"),
        shape,
        ext=".h5",
        x=tie_free((3, *shape)),
    )


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize("mode", ["Max", "Average"])
def test_global_pooling(tmp_path, mode, rank, keepdims, fmt):
    shape = input_shape((5, 4, 3), rank, fmt)
    name = f"Global{mode}Pooling{rank}D"
    check_layer_grad(
        tmp_path,
        lambda k: getattr(k.layers, name)(data_format=fmt, keepdims=keepdims),
        shape,
        x=tie_free((3, *shape)),
    )


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("rank", [1, 2, 3])
def test_global_max_pooling_ties_split_equally(tmp_path, rank, fmt):
    shape = input_shape((5, 4, 3), rank, fmt)
    x = ties((3, *shape), seed=rank, levels=2)  # many maxima per example and channel
    name = f"GlobalMaxPooling{rank}D"
    worst = check_layer_grad(
        tmp_path,
        lambda k: getattr(k.layers, name)(data_format=fmt),
        shape,
        x=x,
        finite_differences=False,
    )
    assert worst < 1e-6


# --- GlobalAveragePooling1D with a mask -------------------------------------


def masked_average_grads(tmp_path, flavor, x, mask, dy):
    """Keras' and the engine's dL/dx for GlobalAveragePooling1D called with a mask."""
    import tensorflow as tf

    model = build_model(flavor, lambda k: k.layers.GlobalAveragePooling1D(), x.shape[1:])
    layer = kerascheck.load(save(model, str(tmp_path), flavor)).graph.layers[model.layers[-1].name]
    t = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(t)
        y = model.layers[-1](t, mask=tf.constant(mask))
        loss = tf.reduce_sum(y * dy)
    theirs = np.asarray(tape.gradient(loss, t))
    y_ours, backward = layer.vjp(x, training=True, mask=mask)
    np.testing.assert_allclose(y_ours, np.asarray(y), rtol=1e-6)
    return backward(dy)[0], theirs


@pytest.mark.parametrize("flavor", FLAVORS)
def test_global_average_pooling_1d_mask(tmp_path, flavor):
    rng = np.random.default_rng(0)
    x = tie_free((3, 5, CHANNELS))
    mask = np.array([[1, 1, 0, 1, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]], dtype=bool)
    dy = rng.standard_normal((3, CHANNELS)).astype("float32")
    ours, theirs = masked_average_grads(tmp_path, flavor, x, mask, dy)
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-7)
    assert (ours[~mask] == 0).all()
