"""kerascheck/inputs.py: checking, reading and making model inputs.

Specs are written by hand (the loader's output format), so most tests need no
Keras; one feeds random indices made for a saved Embedding model to Keras.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import keras_module, keras_predict

from kerascheck import KerascheckError
from kerascheck.inputs import check_inputs, input_layout, random_inputs, read_inputs
from kerascheck.loading import read_model
from kerascheck.loading.spec import CallSpec, InputSpec, LayerSpec, ModelSpec, TensorRef


def _spec(*inputs: InputSpec) -> ModelSpec:
    layers = {i.name: LayerSpec(i.name, "InputLayer", {}) for i in inputs}
    return ModelSpec("m", "Functional", layers, [], list(inputs), [TensorRef(inputs[0].name)])


ONE = _spec(InputSpec("image", (4, 3)))
TWO = _spec(InputSpec("left", (4,)), InputSpec("right", (None, 2)))
INT = _spec(InputSpec("tokens", (5,), "int32"))


def _fails(call, *fragments):
    with pytest.raises(KerascheckError) as info:
        call()
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)


def test_one_array_is_checked_and_cast():
    (x,) = check_inputs(ONE, np.arange(24, dtype="float64").reshape(2, 4, 3) - 12)
    assert x.dtype == np.float32 and x.shape == (2, 4, 3) and x.min() == -12


def test_single_sample_gets_a_batch_axis():
    (x,) = check_inputs(ONE, np.ones((4, 3)))
    assert x.shape == (1, 4, 3)


def test_nested_python_list_is_one_input():
    (x,) = check_inputs(_spec(InputSpec("v", (2,))), [[1.0, -2.0], [3.0, 4.0]])
    assert x.shape == (2, 2)


def test_list_dict_and_variable_sizes():
    left, right = np.zeros((3, 4)), np.zeros((3, 7, 2))
    for given in ([left, right], (left, right), {"right": right, "left": left}):
        arrays = check_inputs(TWO, given)
        assert [a.shape for a in arrays] == [(3, 4), (3, 7, 2)]


def test_wrong_shape_names_input_and_expected_shape():
    _fails(lambda: check_inputs(ONE, np.zeros((2, 3, 4))), "'image'", "(batch, 4, 3)", "(2, 3, 4)")
    _fails(lambda: check_inputs(ONE, np.zeros((2, 4, 3, 1))), "(batch, 4, 3)", "(2, 4, 3, 1)")
    _fails(lambda: check_inputs(TWO, [np.zeros((3, 4)), np.zeros((3, 7))]), "(batch, ?, 2)")


def test_wrong_count_lists_every_expected_input():
    _fails(
        lambda: check_inputs(TWO, np.zeros((3, 4))),
        "expected 2 input(s)",
        "'left' (batch, 4) float32",
        "'right' (batch, ?, 2) float32",
        "found 1",
    )
    _fails(lambda: check_inputs(TWO, [np.zeros((3, 4))] * 3), "expected 2 input(s)", "found 3")


def test_wrong_batch_sizes():
    _fails(
        lambda: check_inputs(TWO, [np.zeros((3, 4)), np.zeros((2, 7, 2))]),
        "same batch size",
        "'left' 3",
        "'right' 2",
    )


@pytest.mark.parametrize(
    "value, found",
    [
        (np.array([["a", "b", "c"]] * 4), "<U1"),
        (np.array([[None] * 3] * 4, dtype=object), "object"),
        (np.full((4, 3), 1 + 2j), "complex128"),
    ],
    ids=["strings", "objects", "complex"],
)
def test_wrong_dtype_says_numeric_expected(value, found):
    _fails(lambda: check_inputs(ONE, value), "expected numeric values", "'image'", "float32", found)


def test_ragged_data():
    _fails(lambda: check_inputs(_spec(InputSpec("v", (2,))), [[1.0], [1.0, 2.0], [3.0]]), "'v'")


def test_dict_missing_and_unknown_names():
    _fails(
        lambda: check_inputs(TWO, {"left": np.zeros((3, 4)), "rite": np.zeros((3, 1, 2))}),
        "expected inputs named ['left', 'right']",
        "missing ['right']",
        "unknown ['rite']",
    )


def test_integer_inputs():
    (x,) = check_inputs(INT, np.array([[1.0, 2, 3, 4, 5]]))
    assert x.dtype == np.int32
    _fails(lambda: check_inputs(INT, np.array([[1.5, 2, 3, 4, 5]])), "expected integers", "int32")


def test_random_inputs_are_seeded_and_reach_past_clamp_points():
    a = random_inputs(TWO, batch=3, seed=4, size=5)
    b = random_inputs(TWO, batch=3, seed=4, size=5)
    assert [x.shape for x in a] == [(3, 4), (3, 5, 2)]
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    big = random_inputs(ONE, batch=64, seed=0)[0]
    assert big.dtype == np.float32 and big.min() < -3 and big.max() > 3
    check_inputs(TWO, a)


def test_random_string_input_is_refused():
    _fails(lambda: random_inputs(_spec(InputSpec("text", (), "string"))), "'text'", "string")


def test_random_integer_inputs_are_valid_embedding_indices(tmp_path):
    """Indices for an input feeding Embedding(7, ...) cover 0..6 and nothing else."""
    k = keras_module("keras")
    x = k.Input((6,), dtype="int32", name="tokens")
    model = k.Model(x, k.layers.Embedding(7, 3, name="embed")(x))
    path = str(tmp_path / "embed.keras")
    model.save(path)
    (tokens,) = random_inputs(read_model(path), batch=50, seed=1)
    assert tokens.dtype == np.int32 and tokens.min() == 0 and tokens.max() == 6
    assert keras_predict(model, tokens).shape == (50, 6, 3)  # Keras accepts them


def test_integer_inputs_without_embedding_get_small_indices():
    assert set(np.unique(random_inputs(INT, batch=20)[0])) <= {0, 1}


# -- read_inputs -----------------------------------------------------------------------


def test_npy_for_one_input(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.ones((2, 4, 3), dtype="float32"))
    assert read_inputs(str(path), ONE)[0].shape == (2, 4, 3)


def test_npz_by_name_and_positional(tmp_path):
    left, right = np.ones((2, 4)), np.ones((2, 3, 2))
    np.savez(tmp_path / "named.npz", right=right, left=left)
    np.savez(tmp_path / "positional.npz", left, right)
    for name in ("named.npz", "positional.npz"):
        arrays = read_inputs(str(tmp_path / name), TWO)
        assert [a.shape for a in arrays] == [(2, 4), (2, 3, 2)]


def test_npz_missing_an_input_name(tmp_path):
    np.savez(tmp_path / "bad.npz", left=np.ones((2, 4)))
    _fails(
        lambda: read_inputs(str(tmp_path / "bad.npz"), TWO),
        "expected arrays named ['left', 'right']",
        "arr_0, arr_1",
        "'right' (batch, ?, 2)",
        "missing ['right']",
    )


def test_npy_for_two_inputs(tmp_path):
    np.save(tmp_path / "one.npy", np.ones((2, 4)))
    _fails(
        lambda: read_inputs(str(tmp_path / "one.npy"), TWO), "expected 2 inputs", "'left'", ".npy"
    )


def test_npz_with_wrong_shape_names_the_input(tmp_path):
    np.savez(tmp_path / "shape.npz", left=np.ones((2, 5)), right=np.ones((2, 3, 2)))
    _fails(lambda: read_inputs(str(tmp_path / "shape.npz"), TWO), "'left'", "(batch, 4)", "(2, 5)")


def test_pickled_object_arrays_are_refused(tmp_path):
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    _fails(lambda: read_inputs(str(tmp_path / "obj.npy"), ONE), "numeric .npy")
    np.savez(tmp_path / "obj.npz", image=np.array([{"a": 1}], dtype=object))
    _fails(lambda: read_inputs(str(tmp_path / "obj.npz"), ONE), "'image'", "unreadable")


@pytest.mark.parametrize(
    "content, fragment",
    [(None, "no such input file"), (b"", "found neither"), (b"hello world", "found neither")],
    ids=["missing", "empty", "text"],
)
def test_unreadable_input_files(tmp_path, content, fragment):
    path = tmp_path / "x.npy"
    if content is not None:
        path.write_bytes(content)
    _fails(lambda: read_inputs(str(path), ONE), fragment, "expected a .npy or .npz")


def test_directory_as_input(tmp_path):
    _fails(lambda: read_inputs(str(tmp_path), ONE), "is a directory")


def test_random_inputs_for_a_keras2_float_embedding_input(tmp_path):
    """tf_keras Sequential Embedding models declare float32 inputs that hold indices."""
    k = keras_module("tf_keras")
    model = k.Sequential([k.layers.Embedding(7, 3, input_length=5), k.layers.Flatten()])
    model.build((None, 5))
    path = tmp_path / "embedding.h5"
    model.save(path)
    spec = read_model(path)
    assert spec.inputs[0].dtype == "float32"
    (x,) = random_inputs(spec, batch=50, seed=1)
    assert x.dtype == np.float32 and np.all(x == np.round(x))
    assert x.min() >= 0 and x.max() <= 6 and len(np.unique(x)) == 7


# -- layouts ---------------------------------------------------------------------------


def _image_spec(data_format):
    """An input (3, 6, 5) or (6, 5, 3) read by a conv of that data_format, after a ReLU."""
    shape = (3, 6, 5) if data_format == "channels_first" else (6, 5, 3)
    inp = InputSpec("image", shape)
    layers = {
        "image": LayerSpec("image", "InputLayer", {}),
        "relu": LayerSpec("relu", "ReLU", {}),
        "conv": LayerSpec("conv", "Conv2D", {"data_format": data_format}),
    }
    calls = [
        CallSpec("relu", 0, [TensorRef("image")]),
        CallSpec("conv", 0, [TensorRef("relu")]),
    ]
    return ModelSpec("m", "Functional", layers, calls, [inp], [TensorRef("conv")])


CF, CL = _image_spec("channels_first"), _image_spec("channels_last")
NCHW = np.arange(2 * 3 * 6 * 5, dtype="float32").reshape(2, 3, 6, 5)


def test_input_layout_is_the_first_data_format_downstream():
    assert input_layout(CF, "image") == "channels_first"
    assert input_layout(CL, "image") == "channels_last"
    assert input_layout(ONE, "image") == "channels_last"  # no layer says


def test_layout_says_what_the_given_array_is_in():
    np.testing.assert_array_equal(check_inputs(CF, NCHW, layout="channels_first")[0], NCHW)
    np.testing.assert_array_equal(check_inputs(CF, NCHW)[0], NCHW)  # the model's own
    nhwc = np.moveaxis(NCHW, 1, -1)
    np.testing.assert_array_equal(check_inputs(CF, nhwc, layout="channels_last")[0], NCHW)
    np.testing.assert_array_equal(check_inputs(CL, NCHW, layout="channels_first")[0], nhwc)


def test_a_sample_without_batch_axis_is_transposed_as_one_sample():
    (x,) = check_inputs(CL, NCHW[1], layout="channels_first")
    np.testing.assert_array_equal(x, np.moveaxis(NCHW[1], 0, -1)[None])
    (x,) = check_inputs(CF, NCHW[1], layout="channels_first")
    np.testing.assert_array_equal(x, NCHW[1][None])


def test_layout_errors_show_the_shape_as_given_and_the_flag_that_fits():
    _fails(
        lambda: check_inputs(CL, NCHW),
        "expected shape (batch, 6, 5, 3)",
        "found (2, 3, 6, 5)",
        "pass --input-layout channels_first",
    )
    _fails(
        lambda: check_inputs(CF, np.zeros((6, 5, 3))),
        "found (6, 5, 3)",
        "pass --input-layout channels_last",
    )
    _fails(
        lambda: check_inputs(CL, np.zeros((2, 6, 5, 3)), layout="channels_first"),
        "expected shape (batch, 3, 6, 5) for input 'image' given as channels_first",
        "the model reads (batch, 6, 5, 3), channels_last",
        "found (2, 6, 5, 3)",
        "pass --input-layout channels_last",
    )
    _fails(lambda: check_inputs(CL, NCHW, layout="nchw"), "expected a layout", "'nchw'")
