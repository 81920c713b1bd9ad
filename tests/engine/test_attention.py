"""Attention layers against Keras 3 and tf_keras: Attention, AdditiveAttention,
MultiHeadAttention, GroupedQueryAttention, with every mask Keras applies
(Embedding `mask_zero` masks, explicit `attention_mask` inputs, causal masks),
Softmax with a mask, and a small transformer block compared layer by layer."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import (
    FLAVORS,
    assert_matches,
    keras_module,
    keras_predict,
    make_input,
    randomize_weights,
    save,
)

import kerascheck
from kerascheck.diff import diff_model
from kerascheck.engine.layers.activations import masked_softmax

VOCAB = 7
# Token rows with padding (0) at the end, in the middle, and one row fully padded:
# a fully masked query row is where Keras' masking paths disagree.
TOKENS = np.array(
    [
        [3, 1, 4, 1, 5, 0],
        [2, 6, 0, 5, 0, 0],
        [0, 0, 0, 0, 0, 0],
    ],
    dtype="int32",
)


def check_model(tmp_path, build, x, flavors=FLAVORS, exts=(".keras",), atol=1e-5):
    """Build `build(keras)` in each flavor with random weights, save, compare predictions."""
    for flavor in flavors:
        model = build(keras_module(flavor))
        randomize_weights(model, seed=3)
        expected = keras_predict(model, x)
        for ext in exts:
            path = save(model, str(tmp_path), flavor, ext)
            ours = kerascheck.load(path).predict(x)
            assert_matches(ours, expected, atol=atol, what=f"{flavor} {ext}")


def sequences(k, *lengths, dim=4):
    return [k.Input(shape=(t, dim)) for t in lengths]


def data(*lengths, dim=4, batch=2):
    return [make_input((batch, t, dim), seed=i) for i, t in enumerate(lengths)]


# --- Attention, AdditiveAttention ---------------------------------------------


# Each option takes each value at least once, paired differently with the others.
@pytest.mark.parametrize(
    "score_mode, use_scale, with_key, causal",
    [
        ("dot", False, False, False),
        ("dot", True, True, True),
        ("concat", False, True, True),
        ("concat", True, False, False),
    ],
)
def test_attention_grid(tmp_path, score_mode, use_scale, with_key, causal):
    lengths = (4, 5, 5) if with_key else (4, 5)

    def build(k):
        inputs = sequences(k, *lengths)
        layer = k.layers.Attention(use_scale=use_scale, score_mode=score_mode, dropout=0.3)
        out = layer(inputs, use_causal_mask=causal, return_attention_scores=True)
        return k.Model(inputs, list(out))

    check_model(tmp_path, build, data(*lengths))


@pytest.mark.parametrize(
    "use_scale, with_key, causal", [(False, False, False), (True, True, True), (True, False, True)]
)
def test_additive_attention_grid(tmp_path, use_scale, with_key, causal):
    lengths = (4, 5, 5) if with_key else (4, 5)

    def build(k):
        inputs = sequences(k, *lengths)
        out = k.layers.AdditiveAttention(use_scale=use_scale)(inputs, use_causal_mask=causal)
        return k.Model(inputs, out)

    check_model(tmp_path, build, data(*lengths))


@pytest.mark.parametrize("cls", ["Attention", "AdditiveAttention"])
def test_dense_attention_h5_and_scores(tmp_path, cls):
    def build(k):
        inputs = sequences(k, 4, 5)
        out = getattr(k.layers, cls)(use_scale=True)(inputs, return_attention_scores=True)
        return k.Model(inputs, list(out))

    check_model(tmp_path, build, data(4, 5), exts=(".keras", ".h5"))


def embedded(k, inputs, dim=4):
    """Integer tokens -> Embedding(mask_zero=True): values plus a (batch, T) Keras mask."""
    return [k.layers.Embedding(VOCAB, dim, mask_zero=True)(t) for t in inputs]


@pytest.mark.parametrize("cls", ["Attention", "AdditiveAttention"])
@pytest.mark.parametrize("causal, with_key", [(False, False), (True, True)])
def test_dense_attention_masks(tmp_path, cls, causal, with_key):
    """The value mask subtracts 1e9 from scores; the query mask zeroes outputs."""
    n = 3 if with_key else 2

    def build(k):
        tokens = [k.Input(shape=(6,), dtype="int32") for _ in range(n)]
        out = getattr(k.layers, cls)()(embedded(k, tokens), use_causal_mask=causal)
        return k.Model(tokens, out)

    x = [TOKENS, np.roll(TOKENS, 1, axis=0), np.roll(TOKENS, 2, axis=0)][:n]
    check_model(tmp_path, build, x)


def test_attention_causal_config_of_old_tf_keras(tmp_path):
    """TF 2.x before 2.10 saved `causal: true` in the config; it masks like the call kwarg."""
    import json

    import h5py

    k = keras_module("tf_keras")
    inputs = sequences(k, 5, 5)
    model = k.Model(inputs, k.layers.Attention()(inputs, use_causal_mask=True))
    randomize_weights(model)
    x = data(5, 5)
    expected = keras_predict(model, x)
    path = str(tmp_path / "old.h5")
    model.save(path)
    with h5py.File(path, "r+") as f:
        config = json.loads(f.attrs["model_config"])
        for layer in config["config"]["layers"]:
            if layer["class_name"] == "Attention":
                layer["config"]["causal"] = True
                for node in layer["inbound_nodes"]:
                    for inbound in node:
                        inbound[3].pop("use_causal_mask", None)
        f.attrs["model_config"] = json.dumps(config)
    assert_matches(kerascheck.load(path).predict(x), expected)


# --- MultiHeadAttention -------------------------------------------------------

MHA_CASES = {
    # kwargs, query shape, value shape, key shape (None: value is the key)
    "basic": (dict(num_heads=2, key_dim=3), (4, 6), (5, 6), None),
    "value_dim_no_bias": (
        dict(num_heads=3, key_dim=2, value_dim=4, use_bias=False),
        (4, 6),
        (5, 6),
        None,
    ),
    "key_input_other_dims": (dict(num_heads=2, key_dim=3), (4, 6), (5, 3), (5, 2)),
    "output_shape_int": (dict(num_heads=2, key_dim=3, output_shape=5), (4, 6), (5, 6), None),
    "output_shape_2d": (dict(num_heads=2, key_dim=3, output_shape=(2, 3)), (4, 6), (5, 6), None),
    "axes_2d_default": (dict(num_heads=2, key_dim=3), (2, 3, 4), (2, 3, 4), None),
    "axes_one_of_two": (dict(num_heads=2, key_dim=2, attention_axes=2), (2, 3, 4), (2, 4, 4), None),
    "axes_both": (dict(num_heads=2, key_dim=2, attention_axes=(1, 2)), (2, 3, 4), (3, 2, 4), None),
    "axes_negative": (
        dict(num_heads=2, key_dim=2, attention_axes=(-2,)),
        (2, 3, 4),
        (2, 3, 4),
        None,
    ),
    "dropout": (dict(num_heads=2, key_dim=3, dropout=0.5), (4, 6), (5, 6), None),
}


def mha_model(k, kwargs, shapes, causal=False, scores=False):
    q_shape, v_shape, k_shape = shapes
    inputs = [k.Input(shape=s) for s in (q_shape, v_shape, k_shape) if s is not None]
    layer = k.layers.MultiHeadAttention(**kwargs)
    extra = {"key": inputs[2]} if k_shape is not None else {}
    out = layer(
        inputs[0],
        inputs[1],
        use_causal_mask=causal,
        return_attention_scores=scores,
        **extra,
    )
    return k.Model(inputs, list(out) if scores else out)


def mha_data(shapes, batch=2):
    return [make_input((batch, *s), seed=i) for i, s in enumerate(shapes) if s is not None]


# (case, use_causal_mask, return_attention_scores); scores switch Keras 3 to its Softmax path.
MHA_GRID = [
    ("basic", False, False),
    ("basic", True, True),
    ("value_dim_no_bias", True, False),
    ("key_input_other_dims", True, True),
    ("output_shape_int", False, True),
    ("output_shape_2d", False, False),
    ("axes_2d_default", False, False),
    ("axes_one_of_two", False, True),
    ("axes_both", False, False),
    ("axes_negative", False, False),
    ("dropout", True, False),
]


@pytest.mark.parametrize("case, causal, scores", MHA_GRID)
def test_multi_head_attention_grid(tmp_path, case, causal, scores):
    """Causal masks on 4-D inputs follow Keras: a (1, T, S) mask from axis 1's lengths."""
    kwargs, *shapes = MHA_CASES[case]
    check_model(tmp_path, lambda k: mha_model(k, kwargs, shapes, causal, scores), mha_data(shapes))


@pytest.mark.parametrize("case", ["basic", "axes_both"])
def test_multi_head_attention_h5(tmp_path, case):
    kwargs, *shapes = MHA_CASES[case]
    check_model(tmp_path, lambda k: mha_model(k, kwargs, shapes), mha_data(shapes), exts=(".h5",))


@pytest.mark.parametrize(
    "causal, scores, self_attention",
    [(False, False, True), (True, True, True), (True, False, False), (False, True, False)],
)
def test_multi_head_attention_embedding_masks(tmp_path, causal, scores, self_attention):
    """Query, value and key masks from Embedding(mask_zero=True), merged as Keras'
    `_compute_attention_mask` does. The fully padded row is fully masked: Keras 3's
    dot-product path averages it, its Softmax path (scores returned) zeroes it."""

    def build(k):
        tokens = [k.Input(shape=(6,), dtype="int32") for _ in range(3)]
        q, v, key = embedded(k, tokens, dim=6)
        layer = k.layers.MultiHeadAttention(num_heads=2, key_dim=3)
        extra = {} if self_attention else {"key": key}
        out = layer(
            q,
            q if self_attention else v,
            use_causal_mask=causal,
            return_attention_scores=scores,
            **extra,
        )
        return k.Model(tokens, list(out) if scores else out)

    x = [TOKENS, np.roll(TOKENS, 1, axis=1), np.roll(TOKENS, 1, axis=0)]
    check_model(tmp_path, build, x)


@pytest.mark.parametrize(
    "dtype, causal, scores",
    [
        ("int32", False, False),
        ("int32", True, False),
        ("bool", True, True),
        ("float32", False, True),
    ],
)
def test_multi_head_attention_mask_input(tmp_path, dtype, causal, scores):
    """`attention_mask` as a model input (B, T, S), with a fully masked query row."""

    def build(k):
        q, v = k.Input(shape=(4, 6)), k.Input(shape=(5, 6))
        m = k.Input(shape=(4, 5), dtype=dtype)
        layer = k.layers.MultiHeadAttention(num_heads=2, key_dim=3)
        out = layer(q, v, attention_mask=m, use_causal_mask=causal, return_attention_scores=scores)
        return k.Model([q, v, m], list(out) if scores else out)

    mask = np.random.default_rng(1).integers(0, 2, size=(2, 4, 5))
    mask[0, 0] = 1
    mask[1, 2] = 0
    check_model(tmp_path, build, [*data(4, 5, dim=6), mask.astype(dtype)])


@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_multi_head_attention_gate_and_sliding_window_keras3(tmp_path, dropout):
    """Keras 3 options: a sigmoid `gate` projection (weights between key and value)
    and a `sliding_window` band mask."""
    kwargs = dict(num_heads=2, key_dim=3, use_gate=True, sliding_window=2, dropout=dropout)
    shapes = ((4, 6), (5, 6), None)
    check_model(
        tmp_path,
        lambda k: mha_model(k, kwargs, shapes, causal=True),
        mha_data(shapes),
        flavors=("keras",),
        exts=(".keras", ".h5"),
    )


# --- GroupedQueryAttention (Keras 3) -------------------------------------------

GQA_CASES = {
    "two_groups": dict(head_dim=3, num_query_heads=4, num_key_value_heads=2),
    "one_kv_head_no_bias": dict(
        head_dim=2, num_query_heads=3, num_key_value_heads=1, use_bias=False
    ),
    "gate_window_dropout": dict(
        head_dim=2,
        num_query_heads=2,
        num_key_value_heads=2,
        use_gate=True,
        sliding_window=2,
        dropout=0.5,
    ),
}


@pytest.mark.parametrize(
    "case, causal, scores",
    [
        ("two_groups", False, False),
        ("two_groups", True, True),
        ("one_kv_head_no_bias", True, False),
        ("gate_window_dropout", False, True),
        ("gate_window_dropout", True, False),
    ],
)
def test_grouped_query_attention(tmp_path, case, causal, scores):
    def build(k):
        tokens = [k.Input(shape=(6,), dtype="int32") for _ in range(2)]
        q, v = embedded(k, tokens, dim=6)
        key = k.Input(shape=(6, 5))
        layer = k.layers.GroupQueryAttention(**GQA_CASES[case])
        out = layer(q, v, key=key, use_causal_mask=causal, return_attention_scores=scores)
        return k.Model([*tokens, key], list(out) if scores else out)

    x = [TOKENS, np.roll(TOKENS, 1, axis=1), make_input((3, 6, 5))]
    exts = (".keras", ".h5") if case == "two_groups" and not scores else (".keras",)
    check_model(tmp_path, build, x, flavors=("keras",), exts=exts)


def test_grouped_query_attention_mask_input(tmp_path):
    def build(k):
        q, v = k.Input(shape=(4, 6)), k.Input(shape=(5, 6))
        m = k.Input(shape=(4, 5), dtype="int32")
        layer = k.layers.GroupQueryAttention(head_dim=2, num_query_heads=4, num_key_value_heads=2)
        return k.Model([q, v, m], layer(q, v, attention_mask=m))

    mask = np.random.default_rng(2).integers(0, 2, size=(2, 4, 5)).astype("int32")
    mask[1, 3] = 0
    check_model(tmp_path, build, [*data(4, 5, dim=6), mask], flavors=("keras",))


# --- Softmax with a mask ------------------------------------------------------


@pytest.mark.parametrize("flavor", FLAVORS)
@pytest.mark.parametrize("axis", [-1, (1, 2)])
@pytest.mark.parametrize("mask_dtype", ["bool", "float32"])
def test_softmax_mask_matches_keras(flavor, axis, mask_dtype):
    """Keras 3 replaces and zeroes masked entries, tf_keras adds (1 - mask) * -1e9."""
    k = keras_module(flavor)
    x = make_input((2, 3, 4))
    mask = np.random.default_rng(0).integers(0, 2, size=(2, 3, 4)).astype(mask_dtype)
    mask[0, 1] = 0  # a fully masked slice
    expected = np.asarray(k.layers.Softmax(axis=axis)(x, mask=mask))
    major = 3 if flavor == "keras" else 2
    assert_matches(masked_softmax(x, mask, axis, major), expected)


def test_softmax_robust_masking_tf_keras():
    k = keras_module("tf_keras")
    x = make_input((2, 5))
    mask = np.array([[1, 0, 1, 0, 1], [0, 0, 0, 0, 0]], dtype="float32")
    expected = np.asarray(k.layers.Softmax(robust_masking=True)(x, mask=mask))
    assert_matches(masked_softmax(x, mask, -1, 2, robust_masking=True), expected)


# --- A transformer block, layer by layer ----------------------------------------


@pytest.mark.parametrize("flavor", FLAVORS)
@pytest.mark.parametrize("ext", [".keras", ".h5"])
def test_transformer_block_layer_by_layer(tmp_path, flavor, ext):
    k = keras_module(flavor)
    x = k.Input(shape=(5, 8))
    attended = k.layers.MultiHeadAttention(num_heads=2, key_dim=4)(x, x)
    h = k.layers.LayerNormalization()(k.layers.Add()([x, attended]))
    ff = k.layers.Dense(8)(k.layers.Dense(16, activation="relu")(h))
    out = k.layers.LayerNormalization()(k.layers.Add()([h, ff]))
    model = k.Model(x, out)
    randomize_weights(model)
    path = save(model, str(tmp_path), flavor, ext)
    loaded = kerascheck.load(path)
    result = diff_model(path, loaded, [make_input((2, 5, 8))])
    assert result.status == "match", [(row.name, row.status) for row in result.comparison.layers]
    assert len(result.comparison.layers) == 7
