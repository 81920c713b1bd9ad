"""Backward of the attention layers and Embedding against Keras 3 and tf_keras tapes.

Attention/AdditiveAttention take [query, value(, key)] as their first argument;
MultiHeadAttention/GroupedQueryAttention take value and key as further
arguments, whose gradients travel in the backward's third item. Masks come from
Embedding `mask_zero`, a boolean `attention_mask` input, or causal masking.
Every case also checks the float64 engine against central finite differences.
"""

from __future__ import annotations

import numpy as np
import pytest
from gradcheck import FD_RTOL, GRAD_RTOL, check_layer_grad, relative_error
from helpers import FLAVORS, keras_module, make_input, randomize_weights, save

import kerascheck
from kerascheck.engine import backprop
from kerascheck.errors import KerascheckError

VOCAB = 7
# Padding (0) at the end and in the middle; the last query row is fully padded
# (a fully masked query). Value rows always keep a token: a fully masked value row
# leaves float32 scores - 1e9 quantized, which no tolerance should cover up.
QUERY_TOKENS = np.array([[3, 1, 4, 0], [2, 0, 5, 6], [0, 0, 0, 0]], dtype="int32")
VALUE_TOKENS = np.array([[1, 5, 0, 0, 2], [6, 6, 3, 0, 0], [4, 0, 0, 0, 0]], dtype="int32")


def _as_inputs(x):
    return [np.asarray(a, "float32") if np.asarray(a).dtype.kind == "f" else a for a in x]


def _keras_grads(model, x, dy):
    """Keras' float-input gradients and {layer: {weight index: grad}} for sum(y * dy)."""
    import tensorflow as tf

    xs = [tf.constant(a) for a in x]
    with tf.GradientTape() as tape:
        for t in xs:
            if t.dtype.is_floating:
                tape.watch(t)
        y = model(xs if len(xs) > 1 else xs[0], training=True)
        ys = y if isinstance(y, (list, tuple)) else [y]
        loss = tf.add_n([tf.reduce_sum(a * b) for a, b in zip(ys, dy)])
    owners, variables = [], []
    for layer in model.layers:
        trainable = {id(v) for v in layer.trainable_weights}
        for index, variable in enumerate(layer.weights):
            if id(variable) in trainable:
                owners.append((layer.name, index))
                variables.append(variable)
    grads = [
        None if g is None else tf.convert_to_tensor(g) for g in tape.gradient(loss, xs + variables)
    ]
    d_inputs = [None if g is None else np.asarray(g) for g in grads[: len(xs)]]
    weights = {}
    for (name, index), g in zip(owners, grads[len(xs) :]):
        weights.setdefault(name, {})[index] = None if g is None else np.asarray(g)
    return [np.asarray(t) for t in ys], d_inputs, weights


def check_grad(tmp_path, build, x, flavors=FLAVORS, rtol=GRAD_RTOL, fd=True):
    """`build(keras)` -> model; engine vs Keras gradients per tensor (weights matched by
    their place in the file), then finite differences. Returns the worst error."""
    worst = 0.0
    data = _as_inputs(x)
    for flavor in flavors:
        model = build(keras_module(flavor))
        randomize_weights(model)
        path = save(model, str(tmp_path), flavor)
        ours = kerascheck.load(path)
        tape = backprop.forward(ours.graph, data, True)
        rng = np.random.default_rng(1)
        dy = [rng.standard_normal(np.shape(y)).astype("float32") for y in tape.outputs]
        grads = backprop.backward(ours.graph, tape, dy)
        k_outputs, k_inputs, k_weights = _keras_grads(model, data, dy)
        for a, b in zip(tape.outputs, k_outputs):
            assert relative_error(a, b) <= 1e-4, f"{flavor}: forward differs"
        for i, (a, b) in enumerate(zip(grads.model_inputs, k_inputs)):
            if b is None:
                assert a is None or data[i].dtype.kind != "f", f"{flavor}: input {i}"
                continue
            assert a is not None, f"{flavor}: engine gives no gradient for input {i}"
            err = relative_error(a, b)
            worst = max(worst, err)
            assert err <= rtol, f"{flavor}: d_input[{i}] relative error {err:.2e} > {rtol}"
        compared = 0
        for layer, by_index in k_weights.items():
            names = list(ours.graph.layers[layer].w)
            for index, b in by_index.items():
                assert b is not None, f"{flavor}: Keras gives no gradient for {layer}/{index}"
                a = grads.weights.get(layer, {}).get(names[index])
                assert a is not None, (
                    f"{flavor}: engine gives no gradient for {layer}/{names[index]}"
                )
                if names[index] == "key/bias":
                    # q . b_k shifts every logit of a query alike, and softmax ignores
                    # shifts: the true gradient is 0, both sides hold rounding noise.
                    kernel = np.linalg.norm(by_index[names.index("key/kernel")])
                    noise = max(np.linalg.norm(a), np.linalg.norm(b))
                    assert noise <= 1e-5 * kernel, f"{flavor}: {layer}/key/bias {noise:.2e}"
                    continue
                err = relative_error(a, b)
                worst = max(worst, err)
                assert err <= rtol, f"{flavor}: {layer}/{names[index]} error {err:.2e} > {rtol}"
                compared += 1
        assert compared > 0
        if fd:
            finite_differences(path, data)
    return worst


def finite_differences(path, data, h=1e-6, rtol=FD_RTOL, seed=3):
    """The float64 engine's backward against central differences (integer inputs kept)."""
    model = kerascheck.load(path, dtype="float64")
    xs = [np.asarray(a, np.float64) if a.dtype.kind == "f" else a for a in data]
    tape = backprop.forward(model.graph, xs, True)
    rng = np.random.default_rng(seed)
    dy = [rng.standard_normal(np.shape(y)) for y in tape.outputs]
    grads = backprop.backward(model.graph, tape, dy)

    def objective():
        outs = backprop.forward(model.graph, xs, True).outputs
        return sum(float(np.sum(o * d)) for o, d in zip(outs, dy))

    directions = [
        (x, grads.model_inputs[i], f"input {i}")
        for i, x in enumerate(xs)
        if x.dtype.kind == "f" and grads.model_inputs[i] is not None
    ]
    for layer_name, weights in grads.weights.items():
        layer = model.graph.layers[layer_name]
        # key/bias: a true 0 (see check_grad), below the differences' rounding noise
        directions += [
            (layer.w[n], g, f"{layer_name}/{n}") for n, g in weights.items() if n != "key/bias"
        ]
    assert directions
    for array, analytic, what in directions:
        v = rng.standard_normal(array.shape)
        original = array.copy()
        array += h * v
        plus = objective()
        array[...] = original - h * v
        minus = objective()
        array[...] = original
        numeric = (plus - minus) / (2 * h)
        exact = float(np.sum(analytic * v))
        scale = max(abs(numeric), abs(exact), 1e-12)
        assert abs(numeric - exact) <= rtol * scale + 1e-9, (
            f"{what}: analytic {exact:.8e} vs finite differences {numeric:.8e}"
        )


def sequences(*lengths, dim=4, batch=3):
    return [make_input((batch, t, dim), seed=i) for i, t in enumerate(lengths)]


def embedded(k, dim=4):
    """Two token inputs, each through its own Embedding(mask_zero=True)."""
    q_tokens = k.Input(shape=(QUERY_TOKENS.shape[1],), dtype="int32")
    v_tokens = k.Input(shape=(VALUE_TOKENS.shape[1],), dtype="int32")
    q = k.layers.Embedding(VOCAB, dim, mask_zero=True)(q_tokens)
    v = k.layers.Embedding(VOCAB, dim, mask_zero=True)(v_tokens)
    return [q_tokens, v_tokens], q, v


# --- Attention, AdditiveAttention ---------------------------------------------


@pytest.mark.parametrize(
    "score_mode, use_scale, with_key, causal",
    [
        ("dot", False, False, False),
        ("dot", True, True, True),
        ("concat", False, True, True),
        ("concat", True, False, False),
    ],
)
def test_attention(tmp_path, score_mode, use_scale, with_key, causal):
    lengths = [(4, 4), (5, 4), (5, 4)] if with_key else [(4, 4), (5, 4)]

    def make(k):
        layer = k.layers.Attention(use_scale=use_scale, score_mode=score_mode)
        return lambda xs: layer(xs, use_causal_mask=causal)

    check_layer_grad(tmp_path, make, lengths)


@pytest.mark.parametrize("use_scale, with_key, causal", [(True, False, False), (False, True, True)])
def test_additive_attention(tmp_path, use_scale, with_key, causal):
    lengths = [(4, 4), (5, 4), (5, 4)] if with_key else [(4, 4), (5, 4)]

    def make(k):
        layer = k.layers.AdditiveAttention(use_scale=use_scale)
        return lambda xs: layer(xs, use_causal_mask=causal)

    check_layer_grad(tmp_path, make, lengths)


@pytest.mark.parametrize("cls", ["Attention", "AdditiveAttention"])
@pytest.mark.parametrize("scores", [False, True])
def test_dense_attention_masks(tmp_path, cls, scores):
    """Embedding masks: masked scores shifted by -1e9, masked queries zeroed; with
    `return_attention_scores` the weights' gradient joins in."""

    def build(k):
        inputs, q, v = embedded(k)
        layer = getattr(k.layers, cls)(use_scale=True)
        out = layer([q, v], return_attention_scores=scores)
        return k.Model(inputs, list(out) if scores else out)

    check_grad(tmp_path, build, [QUERY_TOKENS, VALUE_TOKENS])


def test_attention_dropout_in_training_needs_the_mask_keras_drew(tmp_path):
    """The mask comes from Keras' taped pass (tests/engine/test_dropout_training.py)."""
    k = keras_module("keras")
    inputs = [k.Input(shape=(4, 4)), k.Input(shape=(5, 4))]
    model = k.Model(inputs, k.layers.Attention(dropout=0.5)(inputs))
    ours = kerascheck.load(save(model, str(tmp_path), "keras"))
    with pytest.raises(KerascheckError, match="masks come from Keras"):
        backprop.forward(ours.graph, sequences(4, 5), True)
    backprop.forward(ours.graph, sequences(4, 5), False)  # inference has no dropout


# --- MultiHeadAttention ----------------------------------------------------------


@pytest.mark.parametrize(
    "with_key, use_bias, output_shape, causal",
    [
        (False, True, None, False),
        (True, False, (5,), True),
        (True, True, 3, False),
        (False, False, None, True),
    ],
)
def test_multi_head_attention(tmp_path, with_key, use_bias, output_shape, causal):
    lengths = (4, 5, 5) if with_key else (4, 5)

    def build(k):
        inputs = [k.Input(shape=(t, 4)) for t in lengths]
        layer = k.layers.MultiHeadAttention(
            num_heads=2, key_dim=3, value_dim=2, use_bias=use_bias, output_shape=output_shape
        )
        out = layer(inputs[0], inputs[1], *inputs[2:], use_causal_mask=causal)
        return k.Model(inputs, out)

    check_grad(tmp_path, build, sequences(*lengths))


def test_multi_head_attention_key_kwarg_and_shared_input(tmp_path):
    """Self-attention (query = value) with `key=` by name: the routed gradients add up."""

    def build(k):
        x, y = k.Input(shape=(4, 4)), k.Input(shape=(4, 4))
        out = k.layers.MultiHeadAttention(num_heads=2, key_dim=2)(x, x, key=y)
        return k.Model([x, y], out)

    check_grad(tmp_path, build, sequences(4, 4))


def test_multi_head_attention_attention_mask(tmp_path):
    """A boolean `attention_mask` input together with causal masking."""
    rng = np.random.default_rng(5)
    mask = rng.random((3, 4, 5)) > 0.4
    mask[..., 0] = True  # every query keeps a key

    def build(k):
        q, v = k.Input(shape=(4, 4)), k.Input(shape=(5, 4))
        m = k.Input(shape=(4, 5), dtype="bool")
        out = k.layers.MultiHeadAttention(num_heads=2, key_dim=3)(
            q, v, attention_mask=m, use_causal_mask=True
        )
        return k.Model([q, v, m], out)

    check_grad(tmp_path, build, [*sequences(4, 5), mask])


@pytest.mark.parametrize("flavor", FLAVORS)
@pytest.mark.parametrize("scores", [False, True])
def test_multi_head_attention_embedding_masks(tmp_path, scores, flavor):
    """Query and value masks from Embedding; with scores Keras 3 takes its Softmax path.

    tf_keras *adds* -1e9 to the logits of every masked query (all its keys are
    masked), so in float64 they keep only ~1e-7 of resolution, too coarse for
    finite differences: there they run on unpadded queries (value padding kept).
    Keras 3 replaces those logits, which then get no gradient at all.
    """

    def build(k):
        inputs, q, v = embedded(k)
        layer = k.layers.MultiHeadAttention(num_heads=2, key_dim=3)
        out = layer(q, v, return_attention_scores=scores)
        return k.Model(inputs, list(out) if scores else out)

    padded = flavor == "keras"
    check_grad(tmp_path, build, [QUERY_TOKENS, VALUE_TOKENS], flavors=(flavor,), fd=padded)
    if not padded:
        unpadded = np.where(QUERY_TOKENS == 0, 1, QUERY_TOKENS)
        check_grad(tmp_path, build, [unpadded, VALUE_TOKENS], flavors=(flavor,))


@pytest.mark.parametrize(
    "kwargs, q_shape, v_shape",
    [
        (dict(), (2, 3, 4), (3, 2, 4)),  # default axes of rank-4 inputs: two attention axes
        (dict(attention_axes=2), (2, 3, 4), (2, 4, 4)),  # one of two axes: batch-like axis 1
    ],
)
def test_multi_head_attention_axes(tmp_path, kwargs, q_shape, v_shape):
    def build(k):
        q, v = k.Input(shape=q_shape), k.Input(shape=v_shape)
        return k.Model([q, v], k.layers.MultiHeadAttention(2, 2, **kwargs)(q, v))

    x = [make_input((3, *q_shape), seed=0), make_input((3, *v_shape), seed=1)]
    check_grad(tmp_path, build, x)


@pytest.mark.parametrize("cls", ["MultiHeadAttention", "GroupQueryAttention"])
def test_gate_and_sliding_window(tmp_path, cls):
    """Keras 3's `use_gate` (a sigmoid EinsumDense of the query) and `sliding_window`."""
    heads = (
        dict(num_heads=2, key_dim=3)
        if cls == "MultiHeadAttention"
        else dict(head_dim=3, num_query_heads=2, num_key_value_heads=1)
    )

    def build(k):
        q, v = k.Input(shape=(4, 4)), k.Input(shape=(4, 4))
        layer = getattr(k.layers, cls)(use_gate=True, sliding_window=2, **heads)
        return k.Model([q, v], layer(q, v))

    check_grad(tmp_path, build, sequences(4, 4), flavors=("keras",))


def test_multi_head_attention_dropout_in_training_needs_the_mask_keras_drew(tmp_path):
    k = keras_module("keras")
    q, v = k.Input(shape=(4, 4)), k.Input(shape=(5, 4))
    model = k.Model([q, v], k.layers.MultiHeadAttention(2, 3, dropout=0.2)(q, v))
    ours = kerascheck.load(save(model, str(tmp_path), "keras"))
    with pytest.raises(KerascheckError, match="masks come from Keras"):
        backprop.forward(ours.graph, sequences(4, 5), True)


# --- GroupedQueryAttention (Keras 3 only) ------------------------------------------


@pytest.mark.parametrize(
    "with_key, use_bias, causal", [(False, True, False), (True, False, True), (True, True, True)]
)
def test_grouped_query_attention(tmp_path, with_key, use_bias, causal):
    lengths = (4, 5, 5) if with_key else (4, 5)

    def build(k):
        inputs = [k.Input(shape=(t, 4)) for t in lengths]
        layer = k.layers.GroupQueryAttention(
            head_dim=3, num_query_heads=4, num_key_value_heads=2, use_bias=use_bias
        )
        out = layer(inputs[0], inputs[1], *inputs[2:], use_causal_mask=causal)
        return k.Model(inputs, out)

    check_grad(tmp_path, build, sequences(*lengths), flavors=("keras",))


@pytest.mark.parametrize("scores", [False, True])
def test_grouped_query_attention_masks(tmp_path, scores):
    def build(k):
        inputs, q, v = embedded(k)
        layer = k.layers.GroupQueryAttention(head_dim=2, num_query_heads=2, num_key_value_heads=1)
        out = layer(q, v, return_attention_scores=scores)
        return k.Model(inputs, list(out) if scores else out)

    check_grad(tmp_path, build, [QUERY_TOKENS, VALUE_TOKENS], flavors=("keras",))


# --- Embedding ------------------------------------------------------------------------


def test_embedding_flatten_dense(tmp_path):
    """Repeated indices add their rows up; unused rows get zeros; indices get no gradient."""
    tokens = np.array([[1, 1, 4, 0], [6, 1, 0, 0], [2, 2, 2, 2]], dtype="int32")

    def make(k):
        embedding = k.layers.Embedding(VOCAB, 3)
        return lambda x: k.layers.Dense(2)(k.layers.Flatten()(embedding(x)))

    def build(k):
        x = k.Input(shape=(4,), dtype="int32")
        return k.Model(x, make(k)(x))

    check_grad(tmp_path, build, [tokens])


def test_embedding_mask_zero_keeps_row_zero_gradient(tmp_path):
    """`mask_zero` marks padding for later layers; row 0 still gets its gradient."""

    def build(k):
        tokens = k.Input(shape=(4,), dtype="int32")
        out = k.layers.Dense(2)(k.layers.Embedding(VOCAB, 3, mask_zero=True)(tokens))
        return k.Model(tokens, out)

    check_grad(tmp_path, build, [QUERY_TOKENS])
    tokens = np.array([[3, 1, 0, 0], [1, 0, 3, 3]], dtype="int32")  # rows 2, 4, 5, 6 unused
    model = kerascheck.load(save(build(keras_module("keras")), str(tmp_path), "keras"))
    tape = backprop.forward(model.graph, [tokens], True)
    grads = backprop.backward(model.graph, tape, [np.ones_like(tape.outputs[0])])
    (table,) = [g["embeddings"] for g in grads.weights.values() if "embeddings" in g]
    assert np.all(table[[0, 1, 3]] != 0)
    assert np.all(table[[2, 4, 5, 6]] == 0)
    assert grads.model_inputs == [None]


def test_embedding_negative_indices_keras3(tmp_path):
    """Keras 3 wraps a negative index once (-1 is the last row); its gradient lands there."""
    tokens = np.array([[-1, 2, -7, 0], [6, -1, 1, 1]], dtype="int32")

    def build(k):
        x = k.Input(shape=(4,), dtype="int32")
        return k.Model(x, k.layers.Dense(2)(k.layers.Embedding(VOCAB, 3)(x)))

    check_grad(tmp_path, build, [tokens], flavors=("keras",))
