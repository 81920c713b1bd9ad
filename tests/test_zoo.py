"""A representative, fast subset of keras.applications, layer by layer (bench/zoo.py runs all).

Together these cover depthwise/separable convolution, squeeze-and-excitation,
hard_swish, Rescaling/Normalization stems, dense connectivity, pre-activation
residuals, ConvNeXt's LayerScale/StochasticDepth and InceptionResNetV2's scaled
residual join.
"""

from __future__ import annotations

import importlib.util
import os

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("zoo", os.path.join(HERE, "..", "bench", "zoo.py"))
zoo = importlib.util.module_from_spec(spec)
spec.loader.exec_module(zoo)


@pytest.mark.parametrize("name", zoo.FAST)
def test_application_matches_keras_layer_by_layer(name, tmp_path):
    result = zoo.check(name, str(tmp_path))
    assert result["status"] == "match", result
    assert result["layers"] > 50


@pytest.mark.parametrize("name", ["EfficientNetV2B0", "ConvNeXtTiny"])
def test_keras2_application_matches(name, tmp_path):
    """tf_keras .h5 files: a TensorFlow initializer in the config (never built, so not
    refused) and ConvNeXt's own LayerScale, which tf_keras itself only loads when told."""
    result = zoo.check(name, str(tmp_path), flavor="tf_keras")
    assert result["status"] == "match", result
