"""Fixtures shared by all tests; the helpers they use live in tests/helpers.py."""

from __future__ import annotations

import pytest
from helpers import (  # noqa: F401  (re-exported for test modules)
    ATOL,
    FLAVORS,
    RTOL,
    assert_matches,
    build_model,
    keras_module,
    keras_predict,
    make_input,
    randomize_weights,
    save,
)

import kerascheck


@pytest.fixture
def check_layer(tmp_path):
    """check_layer(make_layer, input_shape, flavors=FLAVORS, ext=".keras", x=None, ...).

    Builds `make_layer(keras_module)` on `input_shape` in each Keras flavor,
    saves it, loads it with kerascheck and compares predictions. Returns the
    last engine output for extra assertions.
    """

    def check(
        make_layer,
        input_shape,
        flavors=FLAVORS,
        ext=".keras",
        x=None,
        rtol=RTOL,
        atol=ATOL,
        dtype="float32",
        integers=None,
    ):
        result = None
        for flavor in flavors:
            model = build_model(flavor, make_layer, input_shape, dtype)
            if x is None:
                shapes = input_shape if isinstance(input_shape, list) else [input_shape]
                data = [
                    make_input((2, *s), seed=i, integers=integers) for i, s in enumerate(shapes)
                ]
                data = data if isinstance(input_shape, list) else data[0]
            else:
                data = x
            expected = keras_predict(model, data)
            path = save(model, str(tmp_path), flavor, ext)
            result = kerascheck.load(path).predict(data)
            assert_matches(result, expected, rtol, atol, f"{flavor} {ext}")
        return result

    return check
