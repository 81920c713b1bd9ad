"""Merge layers' backward against Keras 3 and tf_keras tape gradients (and finite differences).

Element-wise layers run with 2 and 3 inputs and with inputs Keras broadcasts
(a size-1 axis, a lower-rank input read as `(b, 1, ...)`), whose gradients
must be summed back to each input's own shape. Maximum and Minimum are also
checked on integer inputs full of ties, against the tape alone (finite
differences do not exist there): TensorFlow gives each step's whole gradient to
its left operand on a tie, so the earliest input wins.
"""

from __future__ import annotations

import numpy as np
import pytest
from gradcheck import check_layer_grad
from helpers import make_input

ELEMENTWISE = ["Add", "Multiply", "Average", "Maximum", "Minimum"]

SHAPES = {
    "two_vectors": [(4,), (4,)],
    "three_matrices": [(3, 5), (3, 5), (3, 5)],
    "size_one_axis": [(1, 5), (3, 5), (3, 1)],
    "lower_rank": [(5,), (3, 5)],  # (b, 5) is read as (b, 1, 5)
    "lower_rank_3": [(2, 3, 4), (4,), (3, 4)],
}


def tie_free(shapes):
    """Continuous values: the fixture's +-8 spikes sit at the same positions in every
    input and tie there, where Maximum and Minimum have no derivative to check."""
    rng = np.random.default_rng(0)
    return [(3.0 * rng.standard_normal((3, *s))).astype("float32") for s in shapes]


@pytest.mark.parametrize("shapes", sorted(SHAPES))
@pytest.mark.parametrize("name", ELEMENTWISE)
def test_elementwise(tmp_path, name, shapes):
    x = tie_free(SHAPES[shapes]) if name in ("Maximum", "Minimum") else None
    check_layer_grad(tmp_path, lambda k: getattr(k.layers, name)(), SHAPES[shapes], x=x)


@pytest.mark.parametrize("shapes", [[(4,), (4,)], [(3, 5), (1, 5)], [(5,), (3, 5)]])
def test_subtract(tmp_path, shapes):
    check_layer_grad(tmp_path, lambda k: k.layers.Subtract(), shapes)


def ties(shape, seed):
    return np.random.default_rng(seed).integers(0, 2, size=shape).astype("float32")


@pytest.mark.parametrize("name", ["Maximum", "Minimum"])
@pytest.mark.parametrize("shapes", [[(6,), (6,)], [(4, 6), (6,), (4, 6)]])
def test_ties_go_to_the_earliest_input(tmp_path, name, shapes):
    x = [ties((3, *s), seed) for seed, s in enumerate(shapes)]
    # Two levels only: most cells tie, and the error would be O(1) if ties were split.
    worst = check_layer_grad(
        tmp_path, lambda k: getattr(k.layers, name)(), shapes, x=x, finite_differences=False
    )
    assert worst < 1e-6


CONCAT = [
    (-1, [(3, 2), (3, 4)]),
    (1, [(2, 4), (3, 4), (1, 4)]),
    (2, [(2, 1, 3), (2, 2, 3)]),
    (-2, [(2, 3, 4), (2, 1, 4), (2, 2, 4)]),
    (3, [(2, 3, 2), (2, 3, 4)]),
    (-3, [(1, 3, 2), (2, 3, 2)]),
]


@pytest.mark.parametrize("axis,shapes", CONCAT)
def test_concatenate(tmp_path, axis, shapes):
    worst = check_layer_grad(tmp_path, lambda k: k.layers.Concatenate(axis=axis), shapes)
    assert worst < 1e-6  # a copy: the same float32 numbers


DOT = [
    (1, [(4,), (4,)]),  # two rank-2 inputs give (batch, 1)
    ((1, 1), [(3, 4), (3, 5)]),
    ((2, 1), [(3, 4), (4, 5)]),
    (-1, [(3, 4), (5, 4)]),
    ((-1, -2), [(3, 4), (4, 2)]),
    ((1, 2), [(4,), (3, 4)]),  # rank 2 with rank 3
    ((2, 1), [(3, 4), (4,)]),  # rank 3 with rank 2
    ((-1, 1), [(2, 3, 4), (4, 5, 2)]),  # rank 4 with rank 4
    ((1, -1), [(3, 2, 5), (4, 3)]),  # rank 4 with rank 3
]


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("axes,shapes", DOT)
def test_dot(tmp_path, axes, shapes, normalize):
    check_layer_grad(tmp_path, lambda k: k.layers.Dot(axes=axes, normalize=normalize), shapes)


def test_dot_normalize_floors(tmp_path):
    """Norms of 0, 3e-8 and 3e-7: Keras 3 caps the inverse norm at 1e7, tf_keras floors
    the squared norm at 1e-12, so the rows fall on different sides of each floor and a
    floored inverse norm must pass no gradient of its own. No finite differences: a
    step of 1e-6 is larger than these vectors."""
    x = make_input((3, 4), seed=1)
    y = make_input((3, 4), seed=2)
    x[0] = 0.0
    x[1] = np.array([3e-8, 0.0, 0.0, 0.0], dtype="float32")
    x[2] = np.array([0.0, 3e-7, 0.0, 0.0], dtype="float32")
    check_layer_grad(
        tmp_path,
        lambda k: k.layers.Dot(axes=1, normalize=True),
        [(4,), (4,)],
        x=[x, y],
        finite_differences=False,
    )


@pytest.mark.parametrize(
    "make,shapes",
    [
        (lambda k: k.layers.Average(), [(3, 4), (4,), (1, 4)]),
        (lambda k: k.layers.Concatenate(axis=1), [(2, 3), (4, 3)]),
        (lambda k: k.layers.Dot(axes=(2, 1), normalize=True), [(3, 4), (4, 2)]),
    ],
)
def test_h5(tmp_path, make, shapes):
    check_layer_grad(tmp_path, make, shapes, ext=".h5")


def test_shared_input_gradients_add_up(tmp_path):
    """`Multiply()([x, x])` reads one tensor twice: its gradient is 2 x dy."""

    def make(k):
        return lambda x: k.layers.Multiply()([x, x])

    check_layer_grad(tmp_path, make, (5,))
