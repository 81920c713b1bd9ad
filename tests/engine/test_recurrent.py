"""Recurrent layers against Keras 3 and Keras 2 (tf_keras).

Sequences are 5-7 steps of inputs with negatives and +-8 spikes (so sigmoid,
hard_sigmoid and tanh saturate), weights are re-drawn at random. Options are
tried in grids; masks come from a Masking layer with whole time steps zeroed
(leading, inner and trailing, so carried states and repeated outputs show).
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import (
    FLAVORS,
    assert_matches,
    keras_module,
    make_input,
    randomize_weights,
    save,
)

import kerascheck

KERAS3 = ("keras",)
KERAS2 = ("tf_keras",)


def check_model(tmp_path, make, data, flavors=FLAVORS, exts=(".keras",), rtol=1e-4, atol=1e-5):
    """Build `make(keras) -> (inputs, outputs)` in each flavor, save in each format, compare
    every model output, labelled with the layer that produced it."""
    for flavor in flavors:
        k = keras_module(flavor)
        inputs, outputs = make(k)
        model = k.Model(inputs, outputs)
        randomize_weights(model)
        expected = flat_predict(model, data)
        labels = [t._keras_history[0].name for t in model.outputs]
        for ext in exts:
            path = save(model, str(tmp_path), flavor, ext)
            result = kerascheck.load(path).predict(data)
            result = result if len(expected) > 1 else [result]
            assert isinstance(result, list) and len(result) == len(expected), (flavor, ext)
            for label, ours, theirs in zip(labels, result, expected):
                assert_matches(ours, theirs, rtol, atol, f"{flavor} {ext} {label}")


def flat_predict(model, data):
    """Keras' outputs as the functional graph indexes them: nested state lists flattened
    (RNN over stacked cells returns [output, state, [h, c], ...])."""

    def flatten(value):
        if isinstance(value, (list, tuple)):
            return [item for v in value for item in flatten(v)]
        return [np.asarray(value)]

    return flatten(model(data, training=False))


def single(layer_fn, shape, masked=False):
    """A model `Input(shape) [-> Masking] -> layer_fn(k)`."""
    return branches({"layer": lambda k, name: layer_fn(k)}, shape, masked)


def branches(layer_fns: dict, shape, masked=False):
    """A model applying each `layer_fn(k, name)` to the same (masked) input: one Keras
    build covers a whole row of a grid, and every output is labelled by its layer."""

    def make(k):
        x = k.Input(shape=shape)
        h = k.layers.Masking(mask_value=0.0)(x) if masked else x
        outputs = []
        for name, fn in layer_fns.items():
            y = fn(k, name)(h)
            outputs += y if isinstance(y, (list, tuple)) else [y]
        return x, outputs

    return make


def rnn(cls, units=3, **options):
    """`layer_fn(k, name)` for a built-in recurrent class."""
    return lambda k, name: getattr(k.layers, cls)(units, name=name, **options)


def ident(text: str) -> str:
    return text.replace("-", "_").lower()


def masked_input(shape, seed=0):
    """Random steps with steps zeroed per sample: leading, inner, trailing, none."""
    x = make_input(shape, seed=seed)
    x[0, 0] = 0.0
    x[0, 2] = 0.0
    x[1, -1] = 0.0
    x[1, 1] = 0.0
    if shape[0] > 2:
        x[2, 0] = 0.0
        x[2, -2:] = 0.0
    return x


# -- SimpleRNN, LSTM, GRU: option grid ------------------------------------------------

OPTIONS = {
    "default": {},
    "seq": dict(return_sequences=True),
    "state": dict(return_state=True),
    "seq-state": dict(return_sequences=True, return_state=True),
    "backwards": dict(go_backwards=True),
    "backwards-seq": dict(go_backwards=True, return_sequences=True),
    "unroll-seq-state": dict(unroll=True, return_sequences=True, return_state=True),
    "unroll-backwards": dict(unroll=True, go_backwards=True, return_sequences=True),
    "nobias": dict(use_bias=False, return_sequences=True),
    "relu": dict(activation="relu", return_sequences=True),
    "dropouts": dict(dropout=0.5, recurrent_dropout=0.3, return_sequences=True),
}
GATED = {
    "hard-sigmoid": dict(recurrent_activation="hard_sigmoid", return_sequences=True),
    "sigmoid-tanh": dict(activation="sigmoid", recurrent_activation="tanh"),
}


@pytest.mark.parametrize("cls", ["SimpleRNN", "LSTM", "GRU"])
def test_rnn_options(tmp_path, cls):
    grid = {**OPTIONS, **(GATED if cls != "SimpleRNN" else {})}
    layers = {ident(f"{cls}_{n}"): rnn(cls, **o) for n, o in grid.items()}
    check_model(tmp_path, branches(layers, (6, 4)), make_input((2, 6, 4)))


def test_gru_reset_after(tmp_path):
    """reset_after=True: bias (2, 3u), the recurrent bias inside the reset product;
    False (Keras 2's old default): bias (3u,), reset applied to the state before the matmul."""
    grid = {
        "ra_false": dict(reset_after=False),
        "ra_false_nobias": dict(reset_after=False, use_bias=False, return_sequences=True),
        "ra_true_nobias": dict(reset_after=True, use_bias=False, go_backwards=True),
        "ra_false_back_state": dict(
            reset_after=False, go_backwards=True, return_state=True, unroll=True
        ),
    }
    layers = {name: rnn("GRU", **o) for name, o in grid.items()}
    check_model(tmp_path, branches(layers, (6, 2)), make_input((2, 6, 2)), exts=(".keras", ".h5"))


def test_h5_files(tmp_path):
    layers = {
        ident(c): rnn(c, return_sequences=True, return_state=True)
        for c in ("SimpleRNN", "LSTM", "GRU")
    }
    check_model(tmp_path, branches(layers, (5, 3)), make_input((2, 5, 3)), exts=(".h5",))


def test_keras2_h5_hard_sigmoid_lstm_and_gru(tmp_path):
    """Keras 2's hard_sigmoid is clip(0.2x + 0.5); GRU without reset_after has bias (3u,)."""

    def make(k):
        x = k.Input(shape=(6, 3))
        h = k.layers.LSTM(4, recurrent_activation="hard_sigmoid", return_sequences=True)(x)
        y = k.layers.GRU(3, recurrent_activation="hard_sigmoid", reset_after=False)(h)
        return x, y

    check_model(tmp_path, make, make_input((3, 6, 3)), KERAS2, (".h5", ".keras"))


@pytest.mark.parametrize("cls", ["SimpleRNN", "LSTM", "GRU"])
def test_time_major_keras2(tmp_path, cls):
    """`time_major` (Keras 2 only): the model's first axis is time (6 steps, 2 samples)."""
    grid = {
        "last": {},
        "seq_backwards": dict(return_sequences=True, go_backwards=True),
        "state": dict(return_state=True),
    }
    layers = {n: rnn(cls, time_major=True, **o) for n, o in grid.items()}
    check_model(tmp_path, branches(layers, (2, 3)), make_input((6, 2, 3)), KERAS2)


def test_batch_of_one(tmp_path):
    layer = lambda k: k.layers.LSTM(2, return_sequences=True)  # noqa: E731
    check_model(tmp_path, single(layer, (5, 3)), make_input((1, 5, 3)))


# -- masks ------------------------------------------------------------------------------

MASK_OPTIONS = {
    "last": {},
    "seq": dict(return_sequences=True),
    "backwards_seq_state": dict(go_backwards=True, return_sequences=True, return_state=True),
    "backwards_last": dict(go_backwards=True),
    "unroll_backwards": dict(unroll=True, go_backwards=True, return_sequences=True),
}
ZERO_OUTPUT = {
    "zero_seq": dict(return_sequences=True),
    "zero_backwards": dict(go_backwards=True, return_sequences=True),
    "zero_backwards_last": dict(go_backwards=True),
    "zero_unroll_backwards": dict(unroll=True, go_backwards=True, return_sequences=True),
}


@pytest.mark.parametrize("cls", ["SimpleRNN", "LSTM", "GRU"])
def test_masked_steps(tmp_path, cls):
    """Masked steps carry states and repeat the previous output (zeros before any step)."""
    layers = {ident(f"{cls}_{n}"): rnn(cls, **o) for n, o in MASK_OPTIONS.items()}
    check_model(tmp_path, branches(layers, (6, 2), masked=True), masked_input((3, 6, 2)))


@pytest.mark.parametrize("cls", ["LSTM", "GRU"])
def test_zero_output_for_mask(tmp_path, cls):
    """Masked outputs are zeros; unrolled, Keras zeroes by the mask in *input* order."""
    layers = {
        ident(f"{cls}_{n}"): rnn(cls, zero_output_for_mask=True, **o)
        for n, o in ZERO_OUTPUT.items()
    }
    check_model(tmp_path, branches(layers, (6, 2), masked=True), masked_input((3, 6, 2)))


def test_zero_output_unrolled_last_keras3(tmp_path):
    # tf_keras cannot build this one: its unrolled loop broadcasts the one kept output
    # against the whole mask and fails in set_shape (tf_keras/src/backend.py `rnn`).
    layer = rnn("LSTM", zero_output_for_mask=True, unroll=True, go_backwards=True)
    check_model(
        tmp_path, branches({"lstm": layer}, (6, 2), masked=True), masked_input((3, 6, 2)), KERAS3
    )


def test_mask_flows_on_after_return_sequences(tmp_path):
    """The output mask of a return_sequences RNN masks the next RNN (also after go_backwards,
    where Keras passes the input mask on unreversed)."""

    def make(k):
        x = k.Input(shape=(7, 2))
        h = k.layers.Masking()(x)
        h = k.layers.GRU(4, return_sequences=True, go_backwards=True)(h)
        h = k.layers.LSTM(3, return_sequences=True)(h)
        return x, k.layers.SimpleRNN(2)(h)

    check_model(tmp_path, make, masked_input((3, 7, 2)), exts=(".keras", ".h5"))


def test_embedding_mask_zero(tmp_path):
    def make(k):
        x = k.Input(shape=(6,), dtype="int32")
        h = k.layers.Embedding(5, 3, mask_zero=True)(x)
        return x, k.layers.LSTM(3, return_sequences=True)(h)

    tokens = np.array([[0, 1, 2, 0, 4, 3], [1, 2, 3, 4, 0, 0], [0, 0, 1, 1, 2, 2]], "int32")
    check_model(tmp_path, make, tokens)


# -- initial states -----------------------------------------------------------------------


@pytest.mark.parametrize("ext", [".keras", ".h5"])
def test_initial_state_inputs(tmp_path, ext):
    """A list of states (LSTM) and a single state tensor (SimpleRNN, GRU)."""

    def make(k):
        x, h0, c0 = k.Input(shape=(6, 3)), k.Input(shape=(3,)), k.Input(shape=(3,))
        lstm = k.layers.LSTM(3, return_sequences=True, return_state=True)
        outputs = list(lstm(x, initial_state=[h0, c0]))
        outputs.append(k.layers.SimpleRNN(3, go_backwards=True)(x, initial_state=h0))
        outputs.append(k.layers.GRU(3, return_sequences=True)(x, initial_state=c0))
        return [x, h0, c0], outputs

    data = [make_input((2, 6, 3)), make_input((2, 3), 1), make_input((2, 3), 2)]
    check_model(tmp_path, make, data, exts=(ext,))


def test_initial_state_with_mask(tmp_path):
    """Keras 3 runs an RNN called with tensor initial states unmasked (its `__call__` fills
    `mask` only for one tensor argument); Keras 2 applies the mask."""

    def make(k):
        x, h0 = k.Input(shape=(6, 2)), k.Input(shape=(3,))
        h = k.layers.Masking()(x)
        return [x, h0], k.layers.GRU(3, return_sequences=True)(h, initial_state=[h0])

    check_model(tmp_path, make, [masked_input((3, 6, 2)), make_input((3, 3), 1)])


def test_encoder_decoder_states(tmp_path):
    """The classic seq2seq wiring: an encoder's returned states start the decoder."""

    def make(k):
        enc_in, dec_in = k.Input(shape=(6, 3)), k.Input(shape=(5, 2))
        _, h, c = k.layers.LSTM(4, return_state=True)(enc_in)
        y = k.layers.LSTM(4, return_sequences=True)(dec_in, initial_state=[h, c])
        return [enc_in, dec_in], k.layers.Dense(2)(y)

    check_model(tmp_path, make, [make_input((2, 6, 3)), make_input((2, 5, 2), 1)])


# -- RNN over cells -------------------------------------------------------------------------

CELL_OPTIONS = {
    "default": {},
    "seq_backwards": dict(return_sequences=True, go_backwards=True),
    "state": dict(return_state=True),
}
CELLS = {
    "simple": lambda k: k.layers.SimpleRNNCell(3, activation="relu"),
    "lstm": lambda k: k.layers.LSTMCell(3, recurrent_activation="hard_sigmoid"),
    "gru_ra_false": lambda k: k.layers.GRUCell(3, reset_after=False),
    "gru": lambda k: k.layers.GRUCell(3),
    "list": lambda k: [k.layers.SimpleRNNCell(2), k.layers.LSTMCell(3), k.layers.GRUCell(2)],
    "stacked": lambda k: k.layers.StackedRNNCells([k.layers.LSTMCell(2), k.layers.LSTMCell(3)]),
}


@pytest.mark.parametrize(
    "cell, ext", [(c, ".keras") for c in CELLS] + [("lstm", ".h5"), ("list", ".h5")]
)
def test_rnn_cells(tmp_path, cell, ext):
    def layer(options):
        return lambda k, name: k.layers.RNN(CELLS[cell](k), name=name, **options)

    layers = {f"{cell}_{n}": layer(o) for n, o in CELL_OPTIONS.items()}
    check_model(tmp_path, branches(layers, (5, 3)), make_input((2, 5, 3)), exts=(ext,))


@pytest.mark.parametrize("ext", [".keras", ".h5"])
def test_stacked_cells_masked_with_initial_states(tmp_path, ext):
    """Stacked cells take their initial states nested per cell (Keras 2 writes nested
    inbound-node entries for them)."""

    def make(k):
        x = k.Input(shape=(6, 2))
        s = [k.Input(shape=(2,)), k.Input(shape=(3,)), k.Input(shape=(3,))]
        layer = k.layers.RNN(
            [k.layers.GRUCell(2), k.layers.LSTMCell(3)], return_sequences=True, return_state=True
        )
        return [x, *s], layer(k.layers.Masking()(x), initial_state=[s[0], [s[1], s[2]]])

    data = [masked_input((3, 6, 2)), *(make_input((3, n), i) for i, n in enumerate((2, 3, 3)))]
    check_model(tmp_path, make, data, exts=(ext,))


def test_stacked_cells_masked(tmp_path):
    layer = lambda k: k.layers.RNN(  # noqa: E731
        [k.layers.SimpleRNNCell(2), k.layers.LSTMCell(3)], return_sequences=True, return_state=True
    )
    check_model(tmp_path, single(layer, (6, 2), masked=True), masked_input((3, 6, 2)))


# -- Bidirectional --------------------------------------------------------------------------

MERGES = {"concat": "concat", "sum": "sum", "mul": "mul", "ave": "ave", "none": None}


def bidirectional(inner, **options):
    return lambda k, name: k.layers.Bidirectional(inner(k), name=name, **options)


@pytest.mark.parametrize("sequences", [True, False], ids=["seq", "last"])
def test_bidirectional_merge_modes(tmp_path, sequences):
    def inner(k):
        return k.layers.LSTM(3, return_sequences=sequences)

    layers = {n: bidirectional(inner, merge_mode=m) for n, m in MERGES.items()}
    check_model(tmp_path, branches(layers, (5, 3)), make_input((2, 5, 3)))


@pytest.mark.parametrize("cls", ["GRU", "SimpleRNN"])
def test_bidirectional_masked(tmp_path, cls):
    layers = {
        f"{merge}_{seq}": bidirectional(
            lambda k, s=seq: getattr(k.layers, cls)(3, return_sequences=s == "seq"),
            merge_mode=MERGES[merge],
        )
        for merge in ("concat", "none")
        for seq in ("seq", "last")
    }
    check_model(tmp_path, branches(layers, (6, 2), masked=True), masked_input((3, 6, 2)))


def test_bidirectional_masked_unrolled(tmp_path):
    """Unrolled layers zero masked outputs with the mask in input order, even backwards."""
    layer = bidirectional(
        lambda k: k.layers.LSTM(3, return_sequences=True, unroll=True), merge_mode="sum"
    )
    check_model(tmp_path, branches({"bidi": layer}, (6, 2), masked=True), masked_input((3, 6, 2)))


def test_bidirectional_return_state(tmp_path):
    def inner(k):
        return k.layers.LSTM(3, return_sequences=True, return_state=True)

    layers = {
        "mul": bidirectional(inner, merge_mode="mul"),
        "none": bidirectional(inner, merge_mode=None),
    }
    check_model(tmp_path, branches(layers, (5, 2)), make_input((2, 5, 2)), exts=(".h5",))


def test_bidirectional_custom_backward_layer(tmp_path):
    def layer(k):
        forward = k.layers.LSTM(3, return_sequences=True)
        backward = k.layers.GRU(3, return_sequences=True, go_backwards=True, reset_after=False)
        return k.layers.Bidirectional(forward, backward_layer=backward, merge_mode="ave")

    data = masked_input((3, 6, 2))
    check_model(tmp_path, single(layer, (6, 2), masked=True), data, exts=(".keras", ".h5"))


def test_bidirectional_initial_states(tmp_path):
    def make(k):
        x = k.Input(shape=(6, 3))
        s = [k.Input(shape=(2,)) for _ in range(4)]
        y = k.layers.Bidirectional(k.layers.LSTM(2, return_sequences=True))(x, initial_state=s)
        return [x, *s], y

    data = [make_input((2, 6, 3)), *(make_input((2, 2), i + 1) for i in range(4))]
    check_model(tmp_path, make, data, exts=(".keras", ".h5"))


def test_bidirectional_keras2_flips_go_backwards(tmp_path):
    """Keras 2 builds the backward copy by flipping `go_backwards` of the wrapped layer
    (Keras 3 refuses a wrapped layer with go_backwards=True); also time_major."""
    layers = {
        "cells_backwards": bidirectional(
            lambda k: k.layers.RNN(k.layers.GRUCell(3), return_sequences=True, go_backwards=True)
        ),
    }
    check_model(tmp_path, branches(layers, (5, 2)), make_input((2, 5, 2)), KERAS2)

    def make(k):
        x = k.Input(shape=(2, 3))
        return x, k.layers.Bidirectional(k.layers.GRU(3, return_sequences=True, time_major=True))(x)

    check_model(tmp_path, make, make_input((6, 2, 3)), KERAS2)


# -- ConvLSTM ---------------------------------------------------------------------------------

CONV_OPTIONS = {
    "valid": dict(kernel_size=3),
    "same_s2_seq": dict(kernel_size=3, strides=2, padding="same", return_sequences=True),
    "dilated_same": dict(kernel_size=2, dilation_rate=2, padding="same"),
    "backwards_state": dict(kernel_size=2, go_backwards=True, return_state=True),
    "nobias_hard": dict(kernel_size=3, use_bias=False, recurrent_activation="hard_sigmoid"),
}


def conv_lstm(cls, filters, **options):
    return lambda k, name: getattr(k.layers, cls)(filters, name=name, **options)


@pytest.mark.parametrize("cls, shape", [("ConvLSTM1D", (5, 9, 2)), ("ConvLSTM2D", (4, 7, 6, 2))])
def test_conv_lstm(tmp_path, cls, shape):
    layers = {ident(f"{cls}_{n}"): conv_lstm(cls, 2, **o) for n, o in CONV_OPTIONS.items()}
    check_model(tmp_path, branches(layers, shape), make_input((2, *shape)))


def test_conv_lstm3d(tmp_path):
    layer = conv_lstm("ConvLSTM3D", 2, kernel_size=2, padding="same", return_sequences=True)
    data = make_input((2, 3, 4, 5, 3, 2))
    check_model(tmp_path, branches({"c3": layer}, (3, 4, 5, 3, 2)), data, exts=(".h5",))


def test_conv_lstm_channels_first(tmp_path):
    # Keras 3 only: TensorFlow's CPU kernels have no NCHW convolution, which tf_keras needs.
    cf = dict(data_format="channels_first")
    layers = {
        "c2_seq": conv_lstm("ConvLSTM2D", 2, kernel_size=3, return_sequences=True, **cf),
        "c2_s2_state_back": conv_lstm(
            "ConvLSTM2D",
            2,
            kernel_size=2,
            strides=2,
            padding="same",
            return_state=True,
            go_backwards=True,
            **cf,
        ),
    }
    check_model(tmp_path, branches(layers, (4, 2, 7, 6)), make_input((2, 4, 2, 7, 6)), KERAS3)
    layer = conv_lstm("ConvLSTM1D", 2, kernel_size=3, return_state=True, **cf)
    check_model(tmp_path, branches({"c1": layer}, (4, 2, 8)), make_input((2, 4, 2, 8)), KERAS3)


# -- the encoder-decoder of seeds/003 ---------------------------------------------------------


@pytest.mark.parametrize("ext", [".keras", ".h5"])
def test_seed_003_encoder_decoder(tmp_path, ext):
    def make(k):
        x = k.Input(shape=(6, 2))
        h = k.layers.LSTM(8, activation="relu")(x)
        h = k.layers.RepeatVector(5)(h)
        h = k.layers.LSTM(8, activation="relu", return_sequences=True)(h)
        h = k.layers.TimeDistributed(k.layers.Dense(4, activation="relu"))(h)
        return x, k.layers.TimeDistributed(k.layers.Dense(1))(h)

    check_model(tmp_path, make, make_input((3, 6, 2)), exts=(ext,))
