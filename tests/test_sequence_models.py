"""Whole sequence models compared layer by layer through `diff_model` (both Keras versions)."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import keras_module, randomize_weights

import kerascheck
from kerascheck.diff import diff_model


def text_classifier(k):
    """Embedding(mask_zero) -> Bidirectional(GRU) -> Dense: padded sentences, masks carried."""
    tokens = k.Input((9,), dtype="int32", name="tokens")
    x = k.layers.Embedding(30, 8, mask_zero=True)(tokens)
    x = k.layers.Bidirectional(k.layers.GRU(6, return_sequences=True))(x)
    x = k.layers.Bidirectional(k.layers.GRU(5), merge_mode="sum")(x)
    outputs = k.layers.Dense(1, activation="sigmoid")(x)
    return k.Model(tokens, outputs)


@pytest.mark.parametrize("flavor, ext", [("keras", ".keras"), ("tf_keras", ".h5")])
def test_text_classifier_with_padding_masks(tmp_path, flavor, ext):
    model = text_classifier(keras_module(flavor))
    randomize_weights(model)
    path = str(tmp_path / f"classifier{ext}")
    model.save(path)
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, 30, size=(4, 9)).astype("int32")
    tokens[0, 5:] = 0  # padded tails of different lengths
    tokens[1, 2:] = 0
    tokens[3, :] = 0  # an all-padding sentence
    engine = kerascheck.load(path)
    result = diff_model(path, engine, [tokens], layer_wise=True)
    bad = [
        (r.name, r.max_rel_diff, r.reason) for r in result.comparison.layers if r.status != "match"
    ]
    assert result.status == "match", bad
    assert result.graph_check <= 1e-6
    # The mask matters: the same sentences without padding treated as tokens differ.
    unmasked = np.where(tokens == 0, 1, tokens)
    assert not np.allclose(engine.predict(tokens), engine.predict(unmasked))
