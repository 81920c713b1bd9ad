"""The tolerance policy: passes deep float32 models, flags a 1% error in one element."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import keras_module, make_input, randomize_weights

import kerascheck
from kerascheck.compare import CallStats, Tolerance, compare_arrays
from kerascheck.diff import diff_model


def test_one_element_off_by_one_percent_of_magnitude_is_flagged():
    rng = np.random.default_rng(0)
    for scale in (1e-2, 1.0, 1e3):
        keras = (scale * rng.standard_normal((4, 7, 7, 8))).astype("float32")
        ours = keras.copy()
        ours[1, 2, 3, 4] += 0.01 * np.max(np.abs(keras))
        row = compare_arrays("conv", "Conv2D", ours, keras, Tolerance())
        assert row.status == "mismatch", scale
        assert row.worst_index == [1, 2, 3, 4]
        assert row.max_rel_diff == pytest.approx(0.01, rel=1e-3)


def test_float32_rounding_noise_passes():
    rng = np.random.default_rng(1)
    keras = rng.standard_normal((8, 100)).astype("float32")
    ours = (keras.astype("float64") * (1 + 1e-6 * rng.standard_normal(keras.shape))).astype(
        "float32"
    )
    assert compare_arrays("d", "Dense", ours, keras, Tolerance()).status == "match"


def test_nan_on_one_side_is_a_divergence_and_on_both_is_not():
    keras = np.ones((2, 3), dtype="float32")
    ours = keras.copy()
    ours[1, 2] = np.nan
    row = compare_arrays("d", "Dense", ours, keras, Tolerance())
    assert row.status == "mismatch" and row.worst_index == [1, 2]
    keras[1, 2] = np.nan
    assert compare_arrays("d", "Dense", ours, keras, Tolerance()).status == "match"


def test_shape_difference_is_a_divergence_with_a_reason():
    row = compare_arrays("f", "Flatten", np.zeros((2, 6)), np.zeros((2, 3, 2)), Tolerance())
    assert row.status == "mismatch" and "[2, 6]" in row.reason


def _deep_model(k, blocks=12):
    """A ResNet-like stack: 1 + 5 * blocks + 3 layers (63 for 12 blocks), float32."""
    layers = k.layers
    inputs = k.Input((12, 12, 3))
    x = layers.Conv2D(16, 3, padding="same")(inputs)
    for _ in range(blocks):
        y = layers.Conv2D(16, 3, padding="same")(x)
        y = layers.BatchNormalization()(y)
        y = layers.ReLU()(y)
        y = layers.Conv2D(16, 3, padding="same")(y)
        x = layers.Add()([x, y])
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dense(10)(x)
    outputs = layers.Softmax()(x)
    return k.Model(inputs, outputs)


@pytest.mark.parametrize("flavor, ext", [("keras", ".keras"), ("tf_keras", ".h5")])
def test_default_tolerance_passes_a_63_layer_model(tmp_path, flavor, ext):
    model = _deep_model(keras_module(flavor))
    randomize_weights(model)
    # Keep activations bounded through 12 residual blocks: scale conv kernels down.
    model.set_weights([w * 0.3 if w.ndim == 4 else w for w in model.get_weights()])
    path = str(tmp_path / f"deep{ext}")
    model.save(path)
    engine = kerascheck.load(path)
    assert len(engine.spec.calls) >= 50
    x = make_input((2, 12, 12, 3))
    result = diff_model(path, engine, [x], layer_wise=True)
    bad = [(r.name, r.max_rel_diff) for r in result.comparison.layers if r.status != "match"]
    assert result.status == "match", bad
    assert result.graph_check <= 1e-6


def test_statistics_of_finite_float32_outputs_equal_float64_arithmetic():
    """The all-finite fast path (float32 differences, float64 sums) gives the numbers a
    float64 computation gives, worst element included."""
    rng = np.random.default_rng(3)
    keras = (rng.standard_normal((3, 7, 5, 4)) * 20).astype("float32")
    ours = keras + (rng.standard_normal(keras.shape) * 1e-3).astype("float32")
    stats = CallStats()
    stats.update(ours[:2], keras[:2], 0)
    stats.update(ours[2:], keras[2:], 2)  # two batches: sums and worst carry over
    row = stats.finish("x", "Dense", Tolerance())
    a, b = ours.astype(np.float64), keras.astype(np.float64)
    diff = np.abs(a - b)
    worst = np.unravel_index(np.argmax(diff), diff.shape)
    assert row.max_abs_diff == pytest.approx(diff.max(), rel=1e-7)
    assert row.worst_index == list(worst)
    assert row.mean_abs_diff == pytest.approx(diff.mean(), rel=1e-7)
    assert row.rms_diff == pytest.approx(np.sqrt(np.mean(diff**2)), rel=1e-7)
    cosine = np.sum(a * b) / np.sqrt(np.sum(a * a) * np.sum(b * b))
    assert row.cosine_similarity == pytest.approx(cosine, rel=1e-12)
    assert row.max_rel_diff == pytest.approx(diff.max() / np.abs(b).max(), rel=1e-7)


def test_a_difference_beyond_float32_range_is_still_finite():
    big = np.float32(3e38)
    stats = CallStats()
    stats.update(np.array([[big, 1.0]], "float32"), np.array([[-big, 1.0]], "float32"))
    row = stats.finish("x", "Dense", Tolerance())
    assert row.max_abs_diff == pytest.approx(6e38, rel=1e-6) and np.isfinite(row.max_abs_diff)
    assert row.status == "mismatch" and row.reason is None
