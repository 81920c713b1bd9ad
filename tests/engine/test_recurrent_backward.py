"""Backpropagation through time against Keras 3 and Keras 2 (tf_keras) tape gradients.

Every cell compares the engine's dL/dx and each weight gradient with both
flavors' tapes (relative error per tensor, `check_layer_grad`) and checks the
float64 engine against finite differences. Sequences are 5 steps of 3
features with negatives and +-8 spikes, so gates saturate. Masks come from a
Masking layer in front, with whole steps zeroed (leading, inner, trailing), so
the carried states and repeated outputs of masked steps are differentiated.

Bidirectional and stacked cells name their weights `kernel` twice in Keras
(once per direction or cell), so `check_by_order` pairs Keras' trainable
variables with the engine's weights in file order instead of by name.
"""

from __future__ import annotations

import numpy as np
import pytest
from gradcheck import (
    FD_RTOL,
    GRAD_RTOL,
    check_finite_differences,
    check_layer_grad,
    relative_error,
)
from helpers import FLAVORS, build_model, make_input, save

import kerascheck
from kerascheck.engine import backprop
from kerascheck.engine.base import Layer
from kerascheck.engine.layers import core
from kerascheck.errors import KerascheckError

SHAPE = (5, 3)  # time 5, features 3; the batch is 3


def masked_input(seed=0):
    """Whole steps zeroed per sample: leading and inner, inner and trailing, leading and
    two trailing; Masking masks them."""
    x = make_input((3, *SHAPE), seed=seed)
    x[0, 0] = x[0, 2] = 0.0
    x[1, 1] = x[1, -1] = 0.0
    x[2, 0] = 0.0
    x[2, -2:] = 0.0
    return x


@pytest.fixture
def masking_backward():
    """Masking's own backward (`where(keep, d, 0)`) lets the mask reach the recurrent
    layers; this file tests what they do with it."""
    assert core.Masking.vjp is not Layer.vjp


def check(request, tmp_path, make, shape=SHAPE, x=None):
    worst = check_layer_grad(tmp_path, make, shape, x=x, finite_differences=x is None)
    if x is not None:
        for flavor in FLAVORS:
            masked_finite_differences(str(tmp_path / f"model_{flavor}.keras"), x)
    print(f"{request.node.name}: worst relative error {worst:.2e}")  # seen with `pytest -s`
    assert worst <= GRAD_RTOL


def masked_finite_differences(path, x, h=1e-6, rtol=FD_RTOL, seed=3):
    """`check_finite_differences` for a masked input: a zeroed (masked) step is left
    zero, since moving it would unmask it; every other entry and every weight moves."""
    model = kerascheck.load(path, dtype="float64")
    x = np.asarray(x, np.float64)
    keep = np.any(x != 0, axis=-1, keepdims=True)
    tape = backprop.forward(model.graph, [x])
    rng = np.random.default_rng(seed)
    dy = [rng.standard_normal(np.shape(y)) for y in tape.outputs]
    grads = backprop.backward(model.graph, tape, dy)

    def objective():
        outs = backprop.forward(model.graph, [x]).outputs
        return sum(float(np.sum(o * d)) for o, d in zip(outs, dy))

    directions = [(x, grads.model_inputs[0], keep, "input")]
    for layer_name, weights in grads.weights.items():
        layer = model.graph.layers[layer_name]
        directions += [(layer.w[n], g, True, f"{layer_name}/{n}") for n, g in weights.items()]
    assert len(directions) > 1
    for array, analytic, where, what in directions:
        v = rng.standard_normal(array.shape) * where
        original = array.copy()
        array += h * v
        plus = objective()
        array[...] = original - h * v
        minus = objective()
        array[...] = original
        numeric, exact = (plus - minus) / (2 * h), float(np.sum(analytic * v))
        scale = max(abs(numeric), abs(exact), 1e-12)
        assert abs(numeric - exact) <= rtol * scale + 1e-9, f"{what}: {exact} vs {numeric}"


def masked(make_rnn):
    return lambda k: lambda x: make_rnn(k)(k.layers.Masking(0.0)(x))


# -- SimpleRNN, LSTM, GRU ---------------------------------------------------------------

OPTIONS = {
    "last": {},
    "seq": dict(return_sequences=True),
    "backwards": dict(go_backwards=True),
    "backwards-seq-state": dict(go_backwards=True, return_sequences=True, return_state=True),
    "state": dict(return_state=True),
}
CLASSES = {
    "SimpleRNN": {},
    "LSTM": {},
    "GRU": {},
    "GRU-reset-before": dict(reset_after=False),
}


@pytest.mark.parametrize(
    "cls, options",
    [
        pytest.param(cls, {**extra, **opts}, id=f"{cls}-{name}")
        for cls, extra in CLASSES.items()
        for name, opts in OPTIONS.items()
    ],
)
def test_rnn_layer(request, tmp_path, cls, options):
    layer = cls.split("-")[0]
    check(request, tmp_path, lambda k: getattr(k.layers, layer)(4, **options))


@pytest.mark.parametrize(
    "cls, options",
    [
        pytest.param("SimpleRNN", dict(activation="relu", use_bias=False), id="SimpleRNN-relu"),
        pytest.param("LSTM", dict(recurrent_activation="hard_sigmoid"), id="LSTM-hard-sigmoid"),
        pytest.param("GRU", dict(reset_after=False, use_bias=False), id="GRU-reset-before-nobias"),
        pytest.param("GRU", dict(use_bias=False), id="GRU-nobias"),
    ],
)
def test_rnn_activations_and_bias(request, tmp_path, cls, options):
    check(request, tmp_path, lambda k: getattr(k.layers, cls)(3, return_sequences=True, **options))


@pytest.mark.parametrize(
    "cls, options",
    [
        pytest.param("LSTM", dict(return_sequences=True), id="LSTM-seq"),
        pytest.param("LSTM", {}, id="LSTM-last"),
        pytest.param("GRU", dict(go_backwards=True), id="GRU-backwards"),
        pytest.param("GRU", dict(reset_after=False, return_sequences=True), id="GRU-before-seq"),
        pytest.param(
            "SimpleRNN",
            dict(return_sequences=True, return_state=True, go_backwards=True),
            id="SimpleRNN-backwards-seq-state",
        ),
    ],
)
def test_masked(request, tmp_path, masking_backward, cls, options):
    make = masked(lambda k: getattr(k.layers, cls)(4, **options))
    check(request, tmp_path, make, x=masked_input())


@pytest.mark.parametrize("cls", ["LSTM", "GRU"])
def test_time_major(request, tmp_path, cls):
    """tf_keras only (Keras 3 has no time_major): the first data axis is time."""
    make = lambda k: getattr(k.layers, cls)(3, time_major=True, return_sequences=True)  # noqa: E731
    worst = check_layer_grad(tmp_path, make, SHAPE, flavors=("tf_keras",))
    print(f"{request.node.name}: worst relative error {worst:.2e}")
    assert worst <= GRAD_RTOL


# -- RNN over cells -----------------------------------------------------------------------


@pytest.mark.parametrize("cell", ["SimpleRNNCell", "LSTMCell", "GRUCell"])
def test_rnn_over_cell(request, tmp_path, cell):
    make = lambda k: k.layers.RNN(getattr(k.layers, cell)(3), return_sequences=True)  # noqa: E731
    check(request, tmp_path, make)


# -- initial states -------------------------------------------------------------------------


def test_lstm_initial_state(request, tmp_path):
    """Keras 3 passes `initial_state=`; tf_keras stores [sequences, h, c] as the inputs."""

    def make(k):
        return lambda xs: k.layers.LSTM(4, return_sequences=True)(xs[0], initial_state=xs[1:])

    worst = check_layer_grad(tmp_path, make, [SHAPE, (4,), (4,)])
    print(f"{request.node.name}: worst relative error {worst:.2e}")
    assert worst <= GRAD_RTOL


# -- by order: Bidirectional, stacked cells ---------------------------------------------------


def check_by_order(tmp_path, make_layer, shape=SHAPE, x=None, rtol=GRAD_RTOL):
    """Keras' tape gradients of each input and weight, paired with the engine's in file
    order; `shape` a list for several inputs."""
    import tensorflow as tf

    worst = 0.0
    shapes = shape if isinstance(shape, list) else [shape]
    data = [x] if x is not None else [make_input((3, *s), seed=i) for i, s in enumerate(shapes)]
    for flavor in FLAVORS:
        model = build_model(flavor, make_layer, shape)
        path = save(model, str(tmp_path), flavor)
        ours = kerascheck.load(path)
        tape = backprop.forward(ours.graph, data)
        rng = np.random.default_rng(1)
        dy = [rng.standard_normal(np.shape(y)).astype("float32") for y in tape.outputs]
        grads = backprop.backward(ours.graph, tape, dy)
        xs = [tf.constant(a) for a in data]
        with tf.GradientTape() as gt:
            for t in xs:
                gt.watch(t)
            ys = model(xs if isinstance(shape, list) else xs[0], training=True)
            ys = ys if isinstance(ys, (list, tuple)) else [ys]
            loss = tf.add_n([tf.reduce_sum(a * b) for a, b in zip(ys, dy)])
        layers = [layer for layer in model.layers if layer.trainable_weights]
        variables = [v for layer in layers for v in layer.trainable_weights]
        theirs = gt.gradient(loss, [*xs, *variables])
        mine = list(grads.model_inputs)
        for layer in layers:
            engine_layer = ours.graph.layers[layer.name]
            assert len(engine_layer.w) == len(layer.trainable_weights), layer.name
            mine += [grads.weights[layer.name][name] for name in engine_layer.w]
        labels = [f"input {i}" for i in range(len(xs))]
        labels += [getattr(v, "path", None) or v.name for v in variables]
        for label, a, b in zip(labels, mine, theirs):
            err = relative_error(a, np.asarray(b))
            worst = max(worst, err)
            assert err <= rtol, f"{flavor}: {label} relative error {err:.2e} > {rtol}"
        if x is None:
            check_finite_differences(path, data)
        else:
            masked_finite_differences(path, x)
    return worst


@pytest.mark.parametrize(
    "cls, options",
    [
        pytest.param("LSTM", dict(merge_mode="concat"), id="LSTM-concat"),
        pytest.param("GRU", dict(merge_mode="sum", return_sequences=True), id="GRU-sum-seq"),
        pytest.param("SimpleRNN", dict(merge_mode="mul", return_sequences=True), id="mul-seq"),
        pytest.param("LSTM", dict(merge_mode="ave", return_state=True), id="LSTM-ave-state"),
        pytest.param("GRU", dict(merge_mode=None, return_sequences=True), id="GRU-none-seq"),
    ],
)
def test_bidirectional(request, tmp_path, cls, options):
    inner = {k: v for k, v in options.items() if k != "merge_mode"}
    merge = options["merge_mode"]
    make = lambda k: k.layers.Bidirectional(  # noqa: E731
        getattr(k.layers, cls)(3, **inner), merge_mode=merge
    )
    worst = check_by_order(tmp_path, make)
    print(f"{request.node.name}: worst relative error {worst:.2e}")
    assert worst <= GRAD_RTOL


@pytest.mark.parametrize("sequences", [True, False], ids=["seq", "last"])
def test_bidirectional_masked(request, tmp_path, masking_backward, sequences):
    """Bidirectional forces zero_output_for_mask = return_sequences on both copies."""
    make = masked(lambda k: k.layers.Bidirectional(k.layers.LSTM(3, return_sequences=sequences)))
    worst = check_by_order(tmp_path, make, x=masked_input())
    print(f"{request.node.name}: worst relative error {worst:.2e}")
    assert worst <= GRAD_RTOL


def test_bidirectional_masked_unrolled(request, tmp_path, masking_backward):
    """Unrolled, the backward copy's outputs are zeroed with the mask in input order."""
    make = masked(
        lambda k: k.layers.Bidirectional(
            k.layers.GRU(3, unroll=True, return_sequences=True), merge_mode="sum"
        )
    )
    worst = check_by_order(tmp_path, make, x=masked_input(seed=4))
    print(f"{request.node.name}: worst relative error {worst:.2e}")
    assert worst <= GRAD_RTOL


def test_bidirectional_initial_state(request, tmp_path):
    """Forward states first, then backward: Keras 3 `initial_state=`, tf_keras list inputs."""

    def make(k):
        layer = k.layers.Bidirectional(k.layers.GRU(3, return_sequences=True))
        return lambda xs: layer(xs[0], initial_state=xs[1:])

    worst = check_by_order(tmp_path, make, [SHAPE, (3,), (3,)])
    print(f"{request.node.name}: worst relative error {worst:.2e}")
    assert worst <= GRAD_RTOL


def test_stacked_cells(request, tmp_path):
    def make(k):
        cells = [k.layers.LSTMCell(3), k.layers.GRUCell(4), k.layers.SimpleRNNCell(3)]
        return k.layers.RNN(cells, return_sequences=True)

    worst = check_by_order(tmp_path, make)
    print(f"{request.node.name}: worst relative error {worst:.2e}")
    assert worst <= GRAD_RTOL


# -- TimeDistributed --------------------------------------------------------------------------


@pytest.mark.parametrize("activation", [None, "tanh"])
def test_time_distributed_dense(request, tmp_path, activation):
    check(request, tmp_path, lambda k: k.layers.TimeDistributed(k.layers.Dense(4, activation)))


def test_time_distributed_pre_activation(tmp_path):
    """The inner Dense's logits backward is passed on, unfolded to (batch, time, units)."""
    model = build_model(
        "keras", lambda k: k.layers.TimeDistributed(k.layers.Dense(4, "softmax")), SHAPE
    )
    ours = kerascheck.load(save(model, str(tmp_path), "keras"))
    x = make_input((3, *SHAPE))
    tape = backprop.forward(ours.graph, [x])
    (call,) = [c for c in ours.graph.spec.calls if c.layer.startswith("time_distributed")]
    back = tape.backwards[call.name]
    assert back.logits.shape == (3, 5, 4)
    d_logits = np.random.default_rng(2).standard_normal((3, 5, 4)).astype("float32")
    dx, grads = back.pre_activation(d_logits)
    kernel = ours.graph.layers[call.layer].w["kernel"]
    np.testing.assert_allclose(dx, d_logits @ kernel.T, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        grads["kernel"], x.reshape(-1, 3).T @ d_logits.reshape(-1, 4), rtol=1e-5, atol=1e-5
    )


# -- ConvLSTM ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cls, options, shape, flavors",
    [
        pytest.param("ConvLSTM1D", dict(kernel_size=3), (4, 7, 2), FLAVORS, id="1d-valid"),
        pytest.param(
            "ConvLSTM1D",
            dict(kernel_size=3, strides=2, padding="same", return_sequences=True),
            (4, 7, 2),
            FLAVORS,
            id="1d-same-s2-seq",
        ),
        pytest.param(
            "ConvLSTM2D",
            dict(kernel_size=2, dilation_rate=2, padding="same", go_backwards=True),
            (3, 5, 4, 2),
            FLAVORS,
            id="2d-dilated-backwards",
        ),
        pytest.param(
            "ConvLSTM2D",
            dict(kernel_size=2, return_state=True, data_format="channels_first"),
            (3, 2, 5, 4),
            ("keras",),  # TensorFlow's CPU kernels have no NCHW convolution for tf_keras
            id="2d-channels-first-state",
        ),
    ],
)
def test_conv_lstm(request, tmp_path, cls, options, shape, flavors):
    make = lambda k: getattr(k.layers, cls)(2, **options)  # noqa: E731
    worst = check_layer_grad(tmp_path, make, shape, flavors=flavors)
    print(f"{request.node.name}: worst relative error {worst:.2e}")
    assert worst <= GRAD_RTOL


# -- dropout without Keras' masks ------------------------------------------------------------


def test_dropout_in_training_needs_the_masks_keras_drew(tmp_path):
    """The masks come from Keras' taped pass (tests/engine/test_dropout_training.py);
    without them the engine names what is missing instead of drawing its own."""
    model = build_model("keras", lambda k: k.layers.LSTM(3, dropout=0.5), SHAPE)
    ours = kerascheck.load(save(model, str(tmp_path), "keras"))
    with pytest.raises(KerascheckError, match="masks come from Keras"):
        backprop.forward(ours.graph, [make_input((3, *SHAPE))], training=True)
    backprop.forward(ours.graph, [make_input((3, *SHAPE))], training=False)
