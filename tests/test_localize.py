"""Pinpointing: own vs carried error, streamed statistics, float64 ground truth.

A divergence is injected at one known layer by breaking the engine's layer on
purpose (Keras and the engine then disagree there only); the report must pin it
to that layer although every later layer's carried error is large too.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import keras_module, make_input, randomize_weights

import kerascheck
from kerascheck.compare import CallStats, Tolerance
from kerascheck.diff import diff_model
from kerascheck.engine.layers import conv


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    k = keras_module("keras")
    layers = k.layers
    model = k.Sequential(
        [
            k.Input((10, 10, 3)),
            layers.Conv2D(6, 3, padding="same", activation="relu", name="c1"),
            layers.Conv2D(6, 3, padding="same", activation="relu", name="c2"),
            layers.MaxPooling2D(name="pool"),
            layers.Flatten(name="flat"),
            layers.Dense(4, name="head"),
        ]
    )
    randomize_weights(model)
    path = str(tmp_path_factory.mktemp("localize") / "cnn.keras")
    model.save(path)
    return path


def test_wrong_layer_is_pinned_by_its_own_error(cnn, monkeypatch):
    original = conv.Conv2D.call

    def broken(self, x):
        y = original(self, x)
        return y * np.float32(1.01) if self.name == "c2" else y

    monkeypatch.setattr(conv.Conv2D, "call", broken)
    x = make_input((3, 10, 10, 3))
    result = diff_model(cnn, kerascheck.load(cnn), [x], layer_wise=True)
    rows = {r.name: r for r in result.comparison.layers}
    assert result.comparison.first_divergence == "c2"
    assert rows["c1"].own["status"] == "match" and rows["c1"].status == "match"
    assert rows["c2"].own["status"] == "mismatch"
    for later in ("pool", "flat", "head"):  # carried error is large, own error is not
        assert rows[later].max_rel_diff > 1e-3
        assert rows[later].own["status"] == "match"
        assert rows[later].status == "drift"  # inherited, not wrong itself
    assert result.status == "mismatch"


def test_statistics_accumulated_over_chunks_equal_one_pass():
    rng = np.random.default_rng(0)
    keras = rng.standard_normal((10, 4, 5)).astype("float32")
    ours = keras + (1e-6 * rng.standard_normal(keras.shape)).astype("float32")
    ours[7, 1, 2] = np.nan
    keras[7, 1, 2] = np.nan
    whole, streamed = CallStats(), CallStats()
    whole.update(ours, keras)
    for start in range(0, 10, 3):
        streamed.update(ours[start : start + 3], keras[start : start + 3], start)
    a = whole.finish("x", "Dense", Tolerance())
    b = streamed.finish("x", "Dense", Tolerance())
    assert a.output_shape == b.output_shape == [10, 4, 5]
    assert a.worst_index == b.worst_index
    assert a.max_abs_diff == b.max_abs_diff and a.max_rel_diff == b.max_rel_diff
    for field in ("mean_abs_diff", "rms_diff", "cosine_similarity"):
        assert getattr(a, field) == pytest.approx(getattr(b, field), rel=1e-12)
    assert (
        a.nonfinite
        == b.nonfinite
        == {"nan_engine": 1, "nan_keras": 1, "inf_engine": 0, "inf_keras": 0}
    )


def test_streamed_diff_reports_the_same_layers(cnn):
    """Batches of 3 vs one batch of 7: same verdicts; errors of the same size (BLAS and
    oneDNN round differently for different batch sizes, so not bit-identical)."""
    model = kerascheck.load(cnn)
    x = make_input((7, 10, 10, 3), seed=4)
    whole = diff_model(cnn, model, [x], layer_wise=True)
    streamed = diff_model(cnn, model, [x], layer_wise=True, batch_size=3)
    assert streamed.batches == 3 and whole.batches == 1
    for a, b in zip(whole.comparison.layers, streamed.comparison.layers):
        assert a.status == b.status == "match"
        assert a.output_shape == b.output_shape == [7, *a.output_shape[1:]]
        assert b.max_rel_diff < 10 * a.max_rel_diff + 1e-6  # kernels differ by batch size


def test_float64_ground_truth_measures_both_sides(cnn):
    model = kerascheck.load(cnn)
    result = diff_model(cnn, model, [make_input((2, 10, 10, 3))], float64=True)
    for row in result.comparison.layers:
        exact = row.float64
        assert exact is not None
        # Both float32 computations sit within float32 rounding of exact arithmetic...
        assert exact["keras_max_rel_diff"] < 1e-5
        assert exact["engine_max_rel_diff"] < 1e-5
    # ...and the convolutions really are computed in float32 (not exactly).
    assert result.comparison.layers[0].float64["engine_max_rel_diff"] > 0


def test_statistics_fields(cnn):
    result = diff_model(cnn, kerascheck.load(cnn), [make_input((2, 10, 10, 3))])
    row = result.comparison.layers[0]
    assert row.cosine_similarity == pytest.approx(1.0, abs=1e-6)
    assert row.nonfinite == {"nan_engine": 0, "nan_keras": 0, "inf_engine": 0, "inf_keras": 0}
    assert row.rms_diff <= row.max_abs_diff
    assert row.passing_rtol is not None and row.passing_rtol <= 1e-4


def test_carried_only_excess_is_drift_not_a_divergence(cnn, monkeypatch):
    """Every layer right, but the input to 'c2' arrives slightly off (as amplified float32
    rounding would make it): 'c2' onwards drift, nothing diverges on its own."""
    original = conv.Conv2D.call

    def noisy_input(self, x):
        y = original(self, x)
        if self.name == "c1":  # the engine's c1 output is what c2 is fed end to end...
            y = y * np.float32(1.001)
        return y

    monkeypatch.setattr(conv.Conv2D, "call", noisy_input)
    x = make_input((2, 10, 10, 3))
    model = kerascheck.load(cnn)
    result = diff_model(cnn, model, [x], layer_wise=True)
    rows = {r.name: r for r in result.comparison.layers}
    # ...but c1's own error is out of tolerance too, so this one is a real divergence:
    assert rows["c1"].status == "mismatch" and result.comparison.first_divergence == "c1"
    # Keep the carried error while giving c1 a tolerance that accepts its own error:
    from kerascheck.compare import TolerancePolicy

    policy = TolerancePolicy(Tolerance(), (("c1", Tolerance(1e-5, 1e-2)),))
    result = diff_model(cnn, model, [x], layer_wise=True, tolerance=policy)
    rows = {r.name: r for r in result.comparison.layers}
    assert rows["c1"].status == "match"
    assert rows["c2"].status == "drift" and rows["c2"].own["status"] == "match"
    assert result.comparison.first_divergence is None  # no layer is wrong on its own...
    # ...but the outputs are 0.1% off end to end, which an outputs-only diff fails: so
    # does this one, for that reason (c1's own error is not rounding, only within its
    # loosened tolerance).
    assert result.status == "mismatch"
    assert result.comparison.reason.startswith("end-to-end output error: output 'head'")
    assert [r.name for r in result.comparison.above_rounding] == ["c1"]
