"""`kerascheck explain` on pooling, BatchNormalization, activations and merge layers.

Each explanation must rebuild, from its own spelled-out numbers, the value the
engine computed, and that value must be Keras' at the same index. Inputs hold
negatives and values past every clamp point (helpers.make_input); pooling uses
`same` padding at odd sizes so border windows have padded cells.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import keras_module, make_input, randomize_weights

import kerascheck
from kerascheck.explain import explain

CASES = [
    ("maxpool", (0, 0, 0, 1)),  # corner: padded cells
    ("maxpool", (1, 3, 2, 3)),  # bottom-right: the extra padding row and column
    ("avgpool", (0, 0, 0, 2)),  # border window: fewer cells counted
    ("avgpool", (1, 3, 2, 0)),
    ("avgpool", (0, 1, 1, 3)),  # interior: all 9 cells
    ("pool1d", (1, 4, 2)),  # 'same' with an odd length
    ("maxpool1d", (0, 6, 1)),
    ("gmax", (1, 3)),
    ("gavg", (0, 2)),
    ("bn", (1, 2, 4, 3)),
    ("relu", (0, 0, 0, 0)),
    ("relu", (1, 3, 2, 1)),
    ("leaky", (0, 0, 1, 3)),
    ("elu", (0, 0, 1, 3)),
    ("elu", (0, 0, 0, 0)),
    ("sigmoid", (1, 6, 4, 2)),
    ("softmax", (0, 2, 3, 1)),  # along axis 1
    ("act_softmax", (1, 5, 0, 2)),
    ("add", (0, 1, 2, 3)),
    ("sub", (1, 0, 0, 0)),
    ("mul", (0, 3, 1, 2)),
    ("avg", (1, 2, 2, 1)),
    ("max", (0, 1, 0, 3)),
    ("min", (0, 1, 0, 3)),
    ("cat", (0, 2, 1, 1)),  # from the first input
    ("cat", (1, 2, 1, 6)),  # from the second
]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    k = keras_module("keras")
    L = k.layers
    image, steps = k.Input((7, 5, 4)), k.Input((9, 3))
    mp = L.MaxPooling2D(3, strides=2, padding="same", name="maxpool")(image)
    ap = L.AveragePooling2D(3, strides=2, padding="same", name="avgpool")(image)
    outputs = [
        mp,
        ap,
        L.AveragePooling1D(2, strides=2, padding="same", name="pool1d")(steps),
        L.MaxPooling1D(3, strides=1, name="maxpool1d")(steps),
        L.GlobalMaxPooling2D(name="gmax")(image),
        L.GlobalAveragePooling2D(name="gavg")(image),
        L.BatchNormalization(epsilon=0.01, name="bn")(image),
        L.ReLU(max_value=6.0, negative_slope=0.1, threshold=0.5, name="relu")(image),
        L.LeakyReLU(negative_slope=0.25, name="leaky")(image),
        L.ELU(alpha=0.7, name="elu")(image),
        L.Activation("sigmoid", name="sigmoid")(image),
        L.Softmax(axis=1, name="softmax")(image),
        L.Activation("softmax", name="act_softmax")(image),
        L.Add(name="add")([mp, ap]),
        L.Subtract(name="sub")([mp, ap]),
        L.Multiply(name="mul")([mp, ap]),
        L.Average(name="avg")([mp, ap, ap]),
        L.Maximum(name="max")([mp, ap]),
        L.Minimum(name="min")([mp, ap]),
        L.Concatenate(name="cat")([mp, ap]),
    ]
    model = k.Model([image, steps], outputs)
    randomize_weights(model)
    path = str(tmp_path_factory.mktemp("explain_layers") / "model.keras")
    model.save(path)
    inputs = [make_input((2, 7, 5, 4)), make_input((2, 9, 3), seed=1)]
    keras_values = dict(zip(model.output_names, [np.asarray(y) for y in model(inputs)]))
    return kerascheck.load(path), inputs, keras_values


@pytest.mark.parametrize("layer, index", CASES)
def test_explanation_is_the_engine_and_keras_value(built, layer, index):
    model, inputs, keras_values = built
    result = explain(model, inputs, layer, index)
    engine = float(model.run(inputs)[layer][index])
    assert result.value == pytest.approx(engine, rel=1e-6, abs=1e-7)
    assert result.value == pytest.approx(float(keras_values[layer][index]), rel=1e-5, abs=1e-6)
    assert result.recomputed == pytest.approx(result.value, rel=1e-5, abs=1e-6)
    assert len(result.lines) >= 1


def test_average_pooling_counts_only_real_cells(built):
    model, inputs, _ = built
    result = explain(model, inputs, "avgpool", (0, 0, 0, 2))
    # 'same', 7 rows, pool 3, stride 2: pad (4-1)*2+3-7 = 2 -> (1, 1); 5 columns:
    # (3-1)*2+3-5 = 2 -> (1, 1). The corner window has 2x2 = 4 real cells of 9.
    assert "5 of its cells fall on padding" in result.lines[0]
    assert "/ 4 =" in result.lines[-1] and "not counted" in result.lines[-1]


def test_max_pooling_names_the_winning_cell(built):
    model, inputs, _ = built
    result = explain(model, inputs, "maxpool", (1, 3, 2, 3))
    x = inputs[0][1, 5:7, 3:5, 3]  # the real cells of the bottom-right window
    row, col = np.unravel_index(np.argmax(x), x.shape)
    assert f"at input position ({5 + row}, {3 + col})" in result.lines[-1]


def test_softmax_shows_the_exp_sum(built):
    model, inputs, _ = built
    result = explain(model, inputs, "softmax", (0, 2, 3, 1))
    column = inputs[0][0, :, 3, 1].astype(np.float64)
    total = np.exp(column - column.max()).sum()
    assert f"sum = {total:.6g}" in result.lines[-1]


def test_relu_clips_past_max_value(built):
    model, inputs, _ = built
    spot = tuple(int(i) for i in np.argwhere(inputs[0] > 6.5)[0])
    result = explain(model, inputs, "relu", spot)
    assert result.value == 6.0 and "clipped at max_value 6" in result.lines[-1]


def test_unsupported_layer_names_what_is_covered(tmp_path):
    k = keras_module("keras")
    inp = k.Input((4,))
    model = k.Model(inp, k.layers.LayerNormalization(name="ln")(inp))
    path = str(tmp_path / "m.keras")
    model.save(path)
    with pytest.raises(kerascheck.KerascheckError, match="BatchNormalization"):
        explain(kerascheck.load(path), [make_input((1, 4))], "ln", (0, 1))
