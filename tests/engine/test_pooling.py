"""Pooling layers against Keras 3 and tf_keras.

Windowed cases mix odd and even sizes (the `same` padding parity rule),
strides different from the pool size, and pool sizes that do not divide the
input. tf_keras on this CPU build runs channels_first pooling (2D/3D through
TensorFlow's NCHW/NCDHW kernels, 1D through a transpose), so both data formats
are checked in both Keras flavors.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import keras_module, make_input

from kerascheck.engine.base import Context
from kerascheck.engine.layers import pooling
from kerascheck.errors import KerascheckError
from kerascheck.loading.spec import LayerSpec

CHANNELS = 3
FORMATS = ("channels_last", "channels_first")

# Per-axis settings; a rank-r layer takes the first r entries of each.
CASES = {
    "same_s2_odd": dict(pool=(2, 2, 2), strides=(2, 2, 2), padding="same", size=(7, 5, 5)),
    "same_s2_even": dict(pool=(2, 2, 2), strides=(2, 2, 2), padding="same", size=(8, 6, 4)),
    # 7 pads (1, 1), 6 pads (0, 1): the extra cell goes after.
    "same_k3_s2_mixed": dict(pool=(3, 3, 2), strides=(2, 2, 2), padding="same", size=(7, 6, 5)),
    "same_s1_overlap": dict(pool=(3, 2, 3), strides=(1, 1, 1), padding="same", size=(6, 5, 4)),
    "same_stride_gt_pool": dict(pool=(2, 2, 1), strides=(3, 3, 2), padding="same", size=(7, 8, 5)),
    "valid_not_dividing": dict(pool=(3, 3, 2), strides=None, padding="valid", size=(8, 7, 5)),
    "valid_strides_differ": dict(
        pool=(3, 2, 3), strides=(2, 1, 2), padding="valid", size=(7, 6, 5)
    ),
}


def pooling_input_shape(size, rank, fmt):
    spatial = tuple(size[:rank])
    return (CHANNELS, *spatial) if fmt == "channels_first" else (*spatial, CHANNELS)


def pooling_factory(mode, rank, case, fmt):
    """`make_layer` for check_layer; 1D pools get ints, as users usually write them."""
    pool = case["pool"][:rank]
    strides = None if case["strides"] is None else case["strides"][:rank]
    if rank == 1:
        pool = pool[0]
        strides = None if strides is None else strides[0]
    name = f"{mode}Pooling{rank}D"
    return lambda k: getattr(k.layers, name)(
        pool_size=pool, strides=strides, padding=case["padding"], data_format=fmt
    )


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize("mode", ["Max", "Average"])
def test_windowed_pooling(check_layer, mode, rank, case, fmt):
    settings = CASES[case]
    shape = pooling_input_shape(settings["size"], rank, fmt)
    out = check_layer(pooling_factory(mode, rank, settings, fmt), shape)
    assert out.dtype == np.float32


@pytest.mark.parametrize(
    "mode, rank, case, fmt",
    [
        ("Max", 2, "same_k3_s2_mixed", "channels_first"),
        ("Average", 2, "same_s2_odd", "channels_last"),
        ("Average", 3, "same_stride_gt_pool", "channels_first"),
        ("Max", 1, "valid_not_dividing", "channels_last"),
    ],
)
def test_windowed_pooling_h5(check_layer, mode, rank, case, fmt):
    settings = CASES[case]
    shape = pooling_input_shape(settings["size"], rank, fmt)
    check_layer(pooling_factory(mode, rank, settings, fmt), shape, ext=".h5")


@pytest.mark.parametrize("fmt", FORMATS)
def test_max_pooling_pads_with_minus_infinity(check_layer, fmt):
    """All-negative input: zero padding would win every border window; -inf never does."""
    case = CASES["same_k3_s2_mixed"]
    shape = pooling_input_shape(case["size"], 2, fmt)
    x = -np.abs(make_input((2, *shape))) - 0.5
    out = check_layer(pooling_factory("Max", 2, case, fmt), shape, x=x)
    assert (out < 0).all()


@pytest.mark.parametrize("mode", ["Max", "Average"])
def test_pooling_batch_of_one(check_layer, mode):
    case = CASES["same_k3_s2_mixed"]
    shape = pooling_input_shape(case["size"], 2, "channels_last")
    check_layer(pooling_factory(mode, 2, case, "channels_last"), shape, x=make_input((1, *shape)))


@pytest.mark.parametrize(
    "config",
    [
        {"pool_size": 3, "strides": None, "padding": "same"},
        {"pool_size": [3], "strides": [2], "padding": "valid"},
        {"pool_size": 2},
    ],
)
def test_hand_written_1d_configs(config):
    """Configs with ints, one-element lists, `strides: null` or missing keys, read as Keras does."""
    k = keras_module("keras")
    x = make_input((2, 9, CHANNELS))
    for mode in ("Max", "Average"):
        name = f"{mode}Pooling1D"
        expected = np.asarray(getattr(k.layers, name)(**config)(x))
        layer = getattr(pooling, name)(
            LayerSpec(name="p", class_name=name, config=config), Context()
        )
        np.testing.assert_allclose(layer.call(x), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize("mode", ["Max", "Average"])
def test_global_pooling(check_layer, mode, rank, keepdims, fmt):
    shape = pooling_input_shape((7, 6, 5), rank, fmt)
    name = f"Global{mode}Pooling{rank}D"
    out = check_layer(lambda k: getattr(k.layers, name)(data_format=fmt, keepdims=keepdims), shape)
    assert out.dtype == np.float32


@pytest.mark.parametrize("mode, rank", [("Average", 1), ("Max", 3)])
def test_global_pooling_h5(check_layer, mode, rank):
    shape = pooling_input_shape((7, 6, 5), rank, "channels_first")
    name = f"Global{mode}Pooling{rank}D"
    check_layer(
        lambda k: getattr(k.layers, name)(data_format="channels_first", keepdims=True),
        shape,
        ext=".h5",
    )


def test_wrong_rank_fails_by_name():
    spec = LayerSpec(name="pool", class_name="MaxPooling2D", config={"pool_size": [2, 2]})
    layer = pooling.MaxPooling2D(spec, Context())
    with pytest.raises(KerascheckError, match=r"'pool' \(MaxPooling2D\).*4D input"):
        layer.call(np.zeros((2, 5, 3), dtype="float32"))
