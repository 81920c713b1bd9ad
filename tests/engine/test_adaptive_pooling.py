"""Keras 3's AdaptiveAverage/MaxPooling{1,2,3}D against Keras: forward and backward.

Sizes that do not divide (7 -> 3, 5 -> 4, 8 -> 5), that divide (6 -> 3), an
output of one bin, and outputs larger than the input (3 -> 5: bins repeat
cells) in both data formats. Backward: Keras' tape per tensor, relatively,
plus finite differences of the float64 engine; inputs rounded to integers make
ties in max windows, where TensorFlow's tie rules (first maximum in 1D/2D,
every maximum in 3D) decide the gradient.
"""

from __future__ import annotations

import numpy as np
import pytest
from gradcheck import check_layer_grad
from helpers import make_input

from kerascheck.engine.layers.adaptive_pooling import bins

CHANNELS = 2
FORMATS = ("channels_last", "channels_first")
# (input spatial sizes, output sizes); a rank-r layer takes the first r of each.
CASES = {
    "not_dividing": ((7, 5, 8), (3, 4, 5)),
    "dividing": ((6, 4, 6), (3, 2, 2)),
    "one_bin": ((5, 3, 4), (1, 1, 1)),
    "upsampling": ((3, 2, 3), (5, 3, 4)),
}


def shape_of(spatial, fmt):
    return (CHANNELS, *spatial) if fmt == "channels_first" else (*spatial, CHANNELS)


def factory(mode, rank, output_size, fmt):
    name = f"Adaptive{mode}Pooling{rank}D"
    size = output_size[0] if rank == 1 else output_size
    return lambda k: getattr(k.layers, name)(size, data_format=fmt)


def test_bins_follow_pytorch_rule():
    starts, sizes = bins(7, 3)
    assert starts.tolist() == [0, 2, 4] and sizes.tolist() == [3, 3, 3]
    starts, sizes = bins(5, 3)
    assert starts.tolist() == [0, 1, 3] and sizes.tolist() == [2, 3, 2]
    starts, sizes = bins(2, 3)
    assert starts.tolist() == [0, 0, 1] and sizes.tolist() == [1, 2, 1]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize("mode", ["Average", "Max"])
def test_adaptive_pooling_matches_keras(check_layer, mode, rank, case, fmt):
    if mode == "Max" and case == "one_bin":
        # Keras' max pools a window one longer than the input (`big = ceil(L / n) + 1`),
        # and TensorFlow's CPU kernel dies with SIGFPE on it: nothing to compare with.
        pytest.skip("Keras 3.15 / TF 2.21 crash on a one-bin adaptive max pool")
    spatial, output = (c[:rank] for c in CASES[case])
    out = check_layer(factory(mode, rank, output, fmt), shape_of(spatial, fmt), flavors=("keras",))
    expected = shape_of(output, fmt)
    assert out.shape[1:] == expected


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("case", ["not_dividing", "upsampling"])
@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize("mode", ["Average", "Max"])
def test_adaptive_pooling_backward_matches_keras(tmp_path, mode, rank, case, fmt):
    """Tie-free inputs (make_input's repeated spikes tie), so finite differences apply."""
    spatial, output = (c[:rank] for c in CASES[case])
    shape = shape_of(spatial, fmt)
    x = (3 * np.random.default_rng(5).standard_normal((3, *shape))).astype("float32")
    check_layer_grad(
        tmp_path, factory(mode, rank, output, fmt), shape, flavors=("keras",), x=x, rtol=1e-5
    )


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("rank", [1, 2, 3])
def test_adaptive_max_pooling_ties_follow_tensorflow(tmp_path, rank, fmt):
    """Integer inputs tie inside windows; no finite differences at a tie."""
    spatial, output = (c[:rank] for c in CASES["not_dividing"])
    shape = shape_of(spatial, fmt)
    x = np.round(make_input((3, *shape), seed=4) / 4.0).astype("float32")
    assert len(np.unique(x)) < x.size / 4  # many ties
    check_layer_grad(
        tmp_path,
        factory("Max", rank, output, fmt),
        shape,
        flavors=("keras",),
        x=x,
        rtol=1e-6,
        finite_differences=False,
    )
