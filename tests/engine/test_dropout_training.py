"""Training-mode gradients through dropout inside recurrent and attention layers.

The oracle records the masks Keras realized in its taped training pass (the
cells' mask getters, wrapped on the instance; attention's draw replayed from
the seed generator in Keras 3, read from the dropped weights in tf_keras) and
the engine replays them forward and backward. Each case compiles a small model
with MSE, saves it (`.keras` for Keras 3, `.h5` for tf_keras) and runs
`grad_model`: the loss must match and every gradient tensor (each call's
d_output and d_input, every weight), own and carried, must agree per tensor to
a relative 1e-3. A spy on the oracle checks that realized masks (entries 0 or
1/(1-rate), never 1) were recorded, so a case cannot pass with dropout silently off.

Keras' two ways of holding the masks are both covered: one mask for every gate
(SimpleRNN, Keras 3 `implementation=2`) and one per gate (`implementation=1`,
forced by recurrent dropout; ConvLSTM), plus tf_keras' fused LSTM/GRU, which
drops the whole input sequence at once (a mask per time step).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from click.testing import CliRunner
from gradcheck import GRAD_RTOL
from helpers import FLAVORS, keras_module, make_input, randomize_weights

import kerascheck
from kerascheck.cli import main
from kerascheck.engine import backprop
from kerascheck.errors import KerascheckError
from kerascheck.grad import grad_model
from kerascheck.oracle import gradients

B, T, F = 4, 5, 3


def sequence_input(mask_steps=False, seed=0):
    x = make_input((B, T, F), seed=seed)
    if mask_steps:  # whole steps zeroed, for a Masking layer: inner, trailing, leading
        x[0, 2] = 0.0
        x[1, -1] = 0.0
        x[3, 0] = 0.0
    return x


def rnn(make, masking=False):
    """Input -> [Masking] -> make(k) -> Dense(2)."""

    def build(k):
        inputs = k.Input((T, F))
        h = k.layers.Masking(0.0)(inputs) if masking else inputs
        return k.Model(inputs, k.layers.Dense(2, name="head")(make(k)(h)))

    return build, lambda: [sequence_input(masking)]


def embedded_gru(k):
    ids = k.Input((T,), dtype="int32")
    h = k.layers.Embedding(7, F, mask_zero=True)(ids)
    h = k.layers.GRU(4, dropout=0.4, recurrent_dropout=0.4, go_backwards=True)(h)
    return k.Model(ids, k.layers.Dense(2)(h))


def token_ids():
    return [np.array([[1, 2, 0, 3, 4], [5, 6, 1, 0, 0], [2, 2, 2, 2, 2], [0, 1, 3, 0, 6]], "int32")]


def stacked_cells(k):
    inputs = k.Input((T, F))
    cells = [
        k.layers.LSTMCell(3, dropout=0.4, recurrent_dropout=0.3),
        k.layers.SimpleRNNCell(2, dropout=0.3, recurrent_dropout=0.5),
    ]
    return k.Model(inputs, k.layers.RNN(cells, return_sequences=True)(inputs))


def lstm_states(k):
    """return_state with go_backwards: the output is also the state h, so the oracle
    must tell what reaches each from outside the call."""
    inputs = k.Input((T, F))
    out, h, c = k.layers.LSTM(
        3, dropout=0.4, recurrent_dropout=0.3, return_state=True, go_backwards=True
    )(inputs)
    return k.Model(inputs, k.layers.Concatenate()([out, h, c]))


def attention_scores(k):
    """Keras returns the dropped weights; they join the output (dim = value length)."""
    q, v = k.Input((4, T)), k.Input((T, T))
    out, scores = k.layers.Attention(dropout=0.4)([q, v], return_attention_scores=True)
    return k.Model([q, v], k.layers.Concatenate()([out, scores]))


def conv_lstm(k):
    inputs = k.Input((3, 5, 2))
    layer = k.layers.ConvLSTM1D(2, 3, padding="same", dropout=0.4, recurrent_dropout=0.3)
    return k.Model(inputs, layer(inputs))


def pair(cls, **kwargs):
    def build(k):
        q, v = k.Input((4, F)), k.Input((T, F))
        return k.Model([q, v], getattr(k.layers, cls)(**kwargs)([q, v]))

    return build


def heads(cls, *args, dim=F, **kwargs):
    def build(k):
        q, v = k.Input((4, dim)), k.Input((T, dim))
        return k.Model([q, v], getattr(k.layers, cls)(*args, **kwargs)(q, v))

    return build


def query_value(dim=F):
    return [make_input((B, 4, dim)), make_input((B, T, dim), seed=1)]


RECURRENT = {
    "SimpleRNN-dropout": rnn(lambda k: k.layers.SimpleRNN(4, dropout=0.5)),
    "SimpleRNN-recurrent-backwards": rnn(
        lambda k: k.layers.SimpleRNN(4, recurrent_dropout=0.5, go_backwards=True)
    ),
    "SimpleRNN-both-masked": rnn(
        lambda k: k.layers.SimpleRNN(4, dropout=0.4, recurrent_dropout=0.4), masking=True
    ),
    # tf_keras: the fused kernel, the whole sequence dropped at once
    "LSTM-dropout": rnn(lambda k: k.layers.LSTM(4, dropout=0.5)),
    # tf_keras: implementation=2 on the step loop (relu), the first of 4 masks
    "LSTM-dropout-relu": rnn(lambda k: k.layers.LSTM(4, activation="relu", dropout=0.5)),
    "LSTM-dropout-implementation-1": rnn(lambda k: k.layers.LSTM(4, dropout=0.5, implementation=1)),
    "LSTM-recurrent-sequences": rnn(
        lambda k: k.layers.LSTM(4, recurrent_dropout=0.5, return_sequences=True)
    ),
    "LSTM-both-masked-backwards": rnn(
        lambda k: k.layers.LSTM(4, dropout=0.4, recurrent_dropout=0.3, go_backwards=True),
        masking=True,
    ),
    "GRU-dropout": rnn(lambda k: k.layers.GRU(4, dropout=0.5)),
    "GRU-recurrent": rnn(lambda k: k.layers.GRU(4, recurrent_dropout=0.5)),
    "GRU-both-sequences": rnn(
        lambda k: k.layers.GRU(4, dropout=0.4, recurrent_dropout=0.4, return_sequences=True)
    ),
    "GRU-reset-before-dropout": rnn(lambda k: k.layers.GRU(4, dropout=0.5, reset_after=False)),
    "GRU-reset-before-both-masked": rnn(
        lambda k: k.layers.GRU(4, dropout=0.4, recurrent_dropout=0.4, reset_after=False),
        masking=True,
    ),
    "GRU-embedding-mask-zero-backwards": (embedded_gru, token_ids),
    "Bidirectional-LSTM-masked": rnn(
        lambda k: k.layers.Bidirectional(k.layers.LSTM(3, dropout=0.4, recurrent_dropout=0.3)),
        masking=True,
    ),
    # tf_keras: each direction's fused kernel drops the whole sequence
    "Bidirectional-LSTM-dropout": rnn(
        lambda k: k.layers.Bidirectional(k.layers.LSTM(3, dropout=0.5, return_sequences=True))
    ),
    "Bidirectional-GRU-sum-sequences": rnn(
        lambda k: k.layers.Bidirectional(
            k.layers.GRU(3, dropout=0.4, recurrent_dropout=0.3, return_sequences=True),
            merge_mode="sum",
        )
    ),
    "RNN-stacked-cells": (stacked_cells, lambda: [sequence_input()]),
    "LSTM-return-state-backwards": (lstm_states, lambda: [sequence_input()]),
    "ConvLSTM1D-both": (conv_lstm, lambda: [make_input((B, 3, 5, 2))]),
}
ATTENTION = {
    "Attention": (pair("Attention", dropout=0.4), query_value),
    "Attention-concat-scale": (
        pair("Attention", dropout=0.4, use_scale=True, score_mode="concat"),
        query_value,
    ),
    # a third of the usual scale: saturated scores leave the query's gradient at float32
    # cancellation level once the loss reaches the weights directly
    "Attention-return-scores": (attention_scores, lambda: [a / 3 for a in query_value(T)]),
    "AdditiveAttention": (pair("AdditiveAttention", dropout=0.4), query_value),
    "MultiHeadAttention": (heads("MultiHeadAttention", 2, 3, dropout=0.4), query_value),
}
KERAS3_ONLY = {
    "GroupQueryAttention": (
        heads("GroupQueryAttention", 2, 4, 2, dim=4, dropout=0.4),
        lambda: query_value(4),
    ),
}
# The key projection's bias gets no gradient in exact arithmetic (softmax ignores a
# constant added to every key's score), so both sides hold float32 noise there.
NOISE_ONLY = {"key/bias"}


def save_compiled(k, model, tmp_path, flavor, name, optimizer="sgd"):
    randomize_weights(model)
    model.compile(optimizer=optimizer, loss="mse")
    ext = ".keras" if flavor == "keras" else ".h5"
    path = os.path.join(str(tmp_path), f"{name}_{flavor}{ext}")
    model.save(path)
    return path


def masks_in(value) -> list:
    if isinstance(value, dict):
        return [m for v in value.values() for m in masks_in(v)]
    if isinstance(value, (list, tuple)):
        return [m for v in value for m in masks_in(v)]
    return [] if value is None else [np.asarray(value)]


def check_case(tmp_path, monkeypatch, flavor, name, build, inputs):
    k = keras_module(flavor)
    model = build(k)
    path = save_compiled(k, model, tmp_path, flavor, name)
    xs = inputs()
    ys = [make_input((B, *o.shape[1:]), seed=7) for o in model.outputs]
    recorded = {}
    noisy_call = gradients._noisy_call

    def spy(runner, layer, *args):
        output, noise = noisy_call(runner, layer, *args)
        recorded[layer.name] = noise
        return output, noise

    monkeypatch.setattr(gradients, "_noisy_call", spy)
    result = grad_model(path, kerascheck.load(path), xs, ys)
    assert recorded, f"{flavor} {name}: no dropout masks were recorded"
    for layer, noise in recorded.items():
        masks = masks_in(noise)
        # a realized mask holds 0 and 1/(1-rate), never the identity's 1
        assert masks and all(np.all(m != 1) for m in masks), f"{layer}: no dropout applied"
    assert abs(result.engine_loss - result.keras_loss) <= 1e-5 * abs(result.keras_loss)
    checked = 0
    for row in result.rows[1:]:  # the loss row first
        for tensor in row.tensors:
            if tensor.tensor in NOISE_ONLY:
                continue
            for kind in ("own", "carried"):
                stats = getattr(tensor, kind)
                if stats is None:
                    continue
                checked += 1
                assert stats.rel_error <= GRAD_RTOL, (
                    f"{flavor} {name}: {row.name} {tensor.tensor} {kind} relative error "
                    f"{stats.rel_error:.2e} > {GRAD_RTOL}"
                )
    assert checked > 4
    assert result.status == "match", result.first_divergence


# Cases whose path in this flavor another case already takes (Keras 3 reloads an LSTM
# as implementation=2 and draws one mask for any activation; tf_keras' recurrent-only
# GRU masks per gate as GRU-both does; the concat score's dropout is the dot score's).
SAME_PATH = {
    ("LSTM-dropout-relu", "keras"),
    ("LSTM-dropout-implementation-1", "keras"),
    ("GRU-recurrent", "tf_keras"),
    ("Attention-concat-scale", "tf_keras"),
}


def grid(cases):
    return [
        pytest.param(name, flavor, id=f"{name}-{flavor}")
        for name in cases
        for flavor in FLAVORS
        if (name, flavor) not in SAME_PATH
    ]


@pytest.mark.parametrize("name, flavor", grid(RECURRENT))
def test_recurrent_dropout_gradients_match_keras(tmp_path, monkeypatch, flavor, name):
    build, inputs = RECURRENT[name]
    check_case(tmp_path, monkeypatch, flavor, name, build, inputs)


@pytest.mark.parametrize("name, flavor", grid(ATTENTION))
def test_attention_dropout_gradients_match_keras(tmp_path, monkeypatch, flavor, name):
    build, inputs = ATTENTION[name]
    check_case(tmp_path, monkeypatch, flavor, name, build, inputs)


@pytest.mark.parametrize("name", list(KERAS3_ONLY))
def test_grouped_query_attention_dropout_matches_keras(tmp_path, monkeypatch, name):
    build, inputs = KERAS3_ONLY[name]
    check_case(tmp_path, monkeypatch, "keras", name, build, inputs)


# -- without Keras' masks ----------------------------------------------------------------


@pytest.mark.parametrize(
    "build, inputs",
    [
        RECURRENT["LSTM-both-masked-backwards"],
        RECURRENT["Bidirectional-LSTM-masked"],
        ATTENTION["Attention"],
        ATTENTION["MultiHeadAttention"],
    ],
    ids=["LSTM", "Bidirectional", "Attention", "MultiHeadAttention"],
)
def test_training_without_keras_masks_says_they_come_from_keras(tmp_path, build, inputs):
    k = keras_module("keras")
    path = save_compiled(k, build(k), tmp_path, "keras", "refused")
    graph = kerascheck.load(path).graph
    with pytest.raises(KerascheckError, match="masks come from Keras"):
        backprop.forward(graph, inputs(), training=True)
    backprop.forward(graph, inputs(), training=False)  # inference draws no mask


# -- train-step ---------------------------------------------------------------------------


@pytest.mark.parametrize("flavor", FLAVORS)
def test_train_step_cli_with_lstm_dropout_and_adam(tmp_path, flavor):
    k = keras_module(flavor)
    inputs = k.Input((T, F))
    h = k.layers.LSTM(4, dropout=0.3, recurrent_dropout=0.3)(inputs)
    model = k.Model(inputs, k.layers.Dense(2)(h))
    path = save_compiled(k, model, tmp_path, flavor, "train", k.optimizers.Adam(0.01))
    np.save(tmp_path / "x.npy", make_input((B, T, F)))
    np.save(tmp_path / "y.npy", make_input((B, 2), seed=3))
    args = ["train-step", path, str(tmp_path / "x.npy"), str(tmp_path / "y.npy")]
    out = CliRunner().invoke(main, [*args, "--steps", "2"])
    assert out.exit_code == 0, out.output
