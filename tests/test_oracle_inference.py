"""The oracle replays each layer as model.predict runs it: in inference mode.

Keras 3's image-augmentation layers default to `training=True` when called bare,
so a replay that forgets `training=False` augments on Keras' side only and reports
a correct engine as diverging. And when Keras' whole model disagrees with the
replay, the oracle is wrong, not the model: exit 2 with the reason.
"""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import keras_module, randomize_weights, save

import kerascheck.oracle
from kerascheck.cli import main

AUGMENTATIONS = {
    "RandomFlip": dict(mode="horizontal_and_vertical"),
    "RandomRotation": dict(factor=0.4),
    "RandomTranslation": dict(height_factor=0.3, width_factor=0.3),
    "RandomZoom": dict(height_factor=0.4),
    "RandomContrast": dict(factor=0.8),
    "RandomBrightness": dict(factor=0.8, value_range=(-10, 10)),
    "RandomHue": dict(factor=0.8, value_range=(-10, 10)),
    "RandomSaturation": dict(factor=0.8, value_range=(-10, 10)),
    "RandomSharpness": dict(factor=0.8, value_range=(-10, 10)),
}
CASES = [
    (flavor, name)
    for flavor in ("keras", "tf_keras")
    for name in AUGMENTATIONS
    if hasattr(keras_module(flavor).layers, name)
]


def augmented_model(flavor, name, tmp_path):
    k = keras_module(flavor)
    x = k.Input((8, 8, 3))
    y = getattr(k.layers, name)(**AUGMENTATIONS[name], seed=1)(x)
    model = k.Model(x, k.layers.Dense(4)(k.layers.Flatten()(y)))
    randomize_weights(model)
    return save(model, str(tmp_path), flavor)


def test_every_flavor_has_the_common_layers():
    assert len([c for c in CASES if c[0] == "tf_keras"]) >= 6


@pytest.mark.parametrize("flavor,name", CASES)
def test_augmentation_layers_run_in_inference_mode(flavor, name, tmp_path):
    path = augmented_model(flavor, name, tmp_path)
    result = CliRunner().invoke(main, ["diff", path, "--layer-wise", "--batch", "3"])
    assert result.exit_code == 0, result.output
    assert "MATCH" in result.output


def test_replay_disagreeing_with_the_whole_model_is_an_oracle_error(tmp_path, monkeypatch):
    path = augmented_model("keras", "RandomFlip", tmp_path)
    replay = kerascheck.oracle._replay

    def wrong_replay(*args, **kwargs):
        outputs, per_call = replay(*args, **kwargs)
        return [o + np.float32(0.5) for o in outputs], per_call

    monkeypatch.setattr(kerascheck.oracle, "_replay", wrong_replay)
    for args in (["diff", path], ["diff", path, "--layer-wise"], ["audit", path]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2, (args, result.output)
        assert "Traceback" not in result.output
        if args[0] == "diff":
            lines = result.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("error: oracle error"), lines
            assert "whole-model output differs" in lines[0] and "5.00e-01" in lines[0]
            assert "MISMATCH" not in result.stdout
        else:
            assert "oracle error" in result.output


def test_keras_messages_lose_terminal_formatting_and_fit_one_line():
    """Keras bolds parts of some messages with ANSI escapes; kerascheck's one error line
    drops them rather than showing `\\x1b[1m` as text."""
    exc = ValueError("\x1b[1mInvalid value for argument `interpolation`.\x1b[0m\n  Received: x")
    text = kerascheck.oracle.keras_message(exc)
    assert text == "Invalid value for argument `interpolation`. Received: x"
    assert len(kerascheck.oracle.keras_message(ValueError("y" * 1000))) == 300
