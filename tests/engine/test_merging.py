"""Merge layers against Keras 3 and tf_keras.

Element-wise layers are checked with 2 and 3 inputs, and with inputs Keras
broadcasts: a size-1 axis, and a lower-rank input, which Keras aligns by
inserting axes after the batch axis (not in front, as NumPy would). Dot covers
rank-2/3/4 combinations of `batch_dot`, int, pair and negative axes, and
`normalize`, including vectors whose norm falls between the two versions'
epsilon floors.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import make_input

ELEMENTWISE = ["Add", "Multiply", "Average", "Maximum", "Minimum"]

SHAPES = {
    "two_vectors": [(4,), (4,)],
    "three_matrices": [(3, 5), (3, 5), (3, 5)],
    "size_one_axis": [(1, 5), (3, 5), (3, 1)],
    "lower_rank": [(5,), (3, 5)],  # (b, 5) is read as (b, 1, 5)
    "lower_rank_3": [(2, 3, 4), (4,), (3, 4)],
}


@pytest.mark.parametrize("shapes", sorted(SHAPES))
@pytest.mark.parametrize("name", ELEMENTWISE)
def test_elementwise(check_layer, name, shapes):
    check_layer(lambda k: getattr(k.layers, name)(), SHAPES[shapes])


@pytest.mark.parametrize("shapes", [[(4,), (4,)], [(3, 5), (1, 5)], [(5,), (3, 5)]])
def test_subtract(check_layer, shapes):
    check_layer(lambda k: k.layers.Subtract(), shapes)


CONCAT = [
    (-1, [(3, 2), (3, 4)]),
    (1, [(2, 4), (3, 4), (1, 4)]),
    (2, [(2, 1, 3), (2, 2, 3)]),
    (-2, [(2, 3, 4), (2, 1, 4), (2, 2, 4)]),
    (3, [(2, 3, 2), (2, 3, 4)]),
    (-3, [(1, 3, 2), (2, 3, 2)]),
]


@pytest.mark.parametrize("axis,shapes", CONCAT)
def test_concatenate(check_layer, axis, shapes):
    check_layer(lambda k: k.layers.Concatenate(axis=axis), shapes)


DOT = [
    (1, [(4,), (4,)]),  # two rank-2 inputs give (batch, 1)
    (-1, [(4,), (4,)]),
    ((1, 1), [(3, 4), (3, 5)]),
    ((2, 1), [(3, 4), (4, 5)]),
    ((1, 2), [(3, 4), (5, 3)]),
    (2, [(3, 4), (5, 4)]),
    (-1, [(3, 4), (5, 4)]),
    ((-1, -2), [(3, 4), (4, 2)]),
    ((1, 2), [(4,), (3, 4)]),  # rank 2 with rank 3
    ((2, 1), [(3, 4), (4,)]),  # rank 3 with rank 2
    ((-1, 1), [(2, 3, 4), (4, 5, 2)]),  # rank 4 with rank 4
    ((1, -1), [(3, 2, 5), (4, 3)]),  # rank 4 with rank 3
]


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("axes,shapes", DOT)
def test_dot(check_layer, axes, shapes, normalize):
    check_layer(lambda k: k.layers.Dot(axes=axes, normalize=normalize), shapes)


def test_dot_normalize_epsilon(check_layer):
    """Norms of 0, 3e-7 and 3e-6: Keras 3 floors the norm at 1e-7, tf_keras at 1e-6."""
    x = make_input((3, 4), seed=1)
    y = make_input((3, 4), seed=2)
    x[0] = 0.0
    x[1] = np.array([3e-7, 0.0, 0.0, 0.0], dtype="float32")
    x[2] = np.array([0.0, -3e-6, 0.0, 0.0], dtype="float32")
    check_layer(lambda k: k.layers.Dot(axes=1, normalize=True), [(4,), (4,)], x=[x, y])


@pytest.mark.parametrize(
    "make,shapes",
    [
        (lambda k: k.layers.Average(), [(3, 4), (4,), (1, 4)]),
        (lambda k: k.layers.Concatenate(axis=1), [(2, 3), (4, 3)]),
        (lambda k: k.layers.Dot(axes=(2, 1), normalize=True), [(3, 4), (4, 2)]),
    ],
)
def test_h5(check_layer, make, shapes):
    check_layer(make, shapes, ext=".h5")


def test_batch_of_one(check_layer):
    x, y = make_input((1, 4), seed=3), make_input((1, 4), seed=4)
    check_layer(lambda k: k.layers.Dot(axes=1), [(4,), (4,)], x=[x, y])
