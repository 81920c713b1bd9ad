"""Core layers against Keras 3 and tf_keras: Dense, EinsumDense, shape plumbing,
Rescaling, and the layers that are the identity at inference time."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import make_input

FORMATS = ("channels_last", "channels_first")


# --- Dense -----------------------------------------------------------------


@pytest.mark.parametrize("shape", [(5,), (3, 5), (2, 3, 5)])
@pytest.mark.parametrize("activation", ["relu", "linear", "tanh", "softmax"])
@pytest.mark.parametrize("use_bias", [True, False])
def test_dense_any_rank(check_layer, shape, activation, use_bias):
    """Rank 2, 3 and 4 inputs: only the last axis is contracted."""
    out = check_layer(lambda k: k.layers.Dense(4, activation=activation, use_bias=use_bias), shape)
    assert out.shape == (2, *shape[:-1], 4)
    assert out.dtype == np.float32


@pytest.mark.parametrize("shape", [(5,), (2, 3, 5)])
def test_dense_h5(check_layer, shape):
    check_layer(lambda k: k.layers.Dense(4, activation="sigmoid"), shape, ext=".h5")


def test_dense_batch_of_one(check_layer):
    check_layer(lambda k: k.layers.Dense(4), (3, 5), x=make_input((1, 3, 5)))


def test_dense_lora_is_saved_merged_keras3(check_layer):
    """Keras 3 LoRA: the file holds kernel + A @ B * (alpha / rank) merged, plus the bias."""

    def make(k):
        def apply(x):
            layer = k.layers.Dense(4)
            y = layer(x)
            layer.enable_lora(2)  # the fixture then randomizes lora_kernel_a/b too
            return y

        return apply

    check_layer(make, (3, 5), flavors=("keras",))


# --- EinsumDense -----------------------------------------------------------

EINSUM_CASES = {
    # equation, output_shape, bias_axes, input shape (no batch)
    "dense_like": ("ab,bc->ac", 4, "c", (6,)),
    "sequence": ("abc,cd->abd", (5, 4), "d", (5, 6)),
    "split_heads": ("abc,cde->abde", (5, 2, 3), "de", (5, 6)),
    "two_contracted": ("abcd,cde->abe", (5, 4), "e", (5, 6, 2)),
    "bias_on_middle_axis": ("abc,cd->abd", (5, 4), "b", (5, 6)),
    "no_bias": ("abc,cd->abd", (5, 4), None, (5, 6)),
    "ellipsis_left": ("...b,bc->...c", 4, "c", (3, 5, 6)),
    "ellipsis_left_two": ("...ab,bc->...ac", (5, 4), "c", (3, 5, 6)),
    "ellipsis_right": ("ab...,bc->ac...", 4, "c", (6, 3)),
    "ellipsis_right_rank4": ("abc...,cd->abd...", (5, 4), "bd", (5, 6, 3, 2)),
}


@pytest.mark.parametrize("case", sorted(EINSUM_CASES))
def test_einsum_dense(check_layer, case):
    equation, output_shape, bias_axes, shape = EINSUM_CASES[case]
    check_layer(
        lambda k: k.layers.EinsumDense(
            equation, output_shape=output_shape, bias_axes=bias_axes, activation="relu"
        ),
        shape,
    )


def test_einsum_dense_h5(check_layer):
    equation, output_shape, bias_axes, shape = EINSUM_CASES["ellipsis_right_rank4"]
    check_layer(
        lambda k: k.layers.EinsumDense(equation, output_shape=output_shape, bias_axes=bias_axes),
        shape,
        ext=".h5",
    )


# --- shape plumbing ----------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("shape", [(6,), (5, 3), (4, 5, 3), (3, 4, 2, 2)])
def test_flatten(check_layer, shape, fmt):
    """channels_first moves the channel axis last before flattening (Keras' order)."""
    check_layer(lambda k: k.layers.Flatten(data_format=fmt), shape)


def test_flatten_channels_first_is_not_a_plain_reshape(check_layer):
    x = make_input((2, 3, 4, 5))
    out = check_layer(lambda k: k.layers.Flatten(data_format="channels_first"), (3, 4, 5), x=x)
    assert not np.array_equal(out, x.reshape(2, -1))


def test_flatten_h5(check_layer):
    check_layer(lambda k: k.layers.Flatten(data_format="channels_first"), (4, 5, 3), ext=".h5")


@pytest.mark.parametrize(
    "shape, target",
    [((4, 3), (12,)), ((4, 3), (-1,)), ((4, 3), (3, -1)), ((4, 3), (2, -1, 3)), ((12,), (2, 2, 3))],
)
def test_reshape(check_layer, shape, target):
    check_layer(lambda k: k.layers.Reshape(target), shape)


@pytest.mark.parametrize(
    "shape, dims", [((4, 3), (2, 1)), ((4, 5, 3), (3, 1, 2)), ((4, 5, 3), (1, 3, 2))]
)
def test_permute(check_layer, shape, dims):
    check_layer(lambda k: k.layers.Permute(dims), shape)


@pytest.mark.parametrize("n", [1, 3])
def test_repeat_vector(check_layer, n):
    check_layer(lambda k: k.layers.RepeatVector(n), (5,))


@pytest.mark.parametrize("ext", [".keras", ".h5"])
def test_shape_layers_h5_and_keras(check_layer, ext):
    def make(k):
        def apply(x):
            y = k.layers.Reshape((2, -1))(x)
            y = k.layers.Permute((2, 1))(y)
            return k.layers.RepeatVector(2)(k.layers.Flatten()(y))

        return apply

    check_layer(make, (3, 4), ext=ext)


# --- Rescaling ---------------------------------------------------------------


@pytest.mark.parametrize(
    "scale, offset",
    [
        (1 / 255, 0.0),
        (2.0, -1.0),
        ([0.5, -2.0, 3.0], 0.0),  # per channel
        ([0.5, -2.0, 3.0], [0.1, 0.2, -0.3]),
        (0.5, [0.1, 0.2, -0.3]),
    ],
)
def test_rescaling(check_layer, scale, offset):
    check_layer(lambda k: k.layers.Rescaling(scale, offset=offset), (4, 3))


@pytest.mark.parametrize("ext", [".keras", ".h5"])
def test_rescaling_numpy_arrays(check_layer, ext):
    """Keras 3 writes NumPy values as `{"class_name": "__numpy__", ...}` in `.keras` configs."""
    scale = np.array([0.5, -2.0, 3.0], dtype="float32")
    offset = np.array([0.1, 0.2, -0.3], dtype="float32")
    check_layer(lambda k: k.layers.Rescaling(scale, offset=offset), (4, 3), ext=ext)


# --- Activation, Identity and inference-time identities ----------------------


@pytest.mark.parametrize("name", ["relu", "softmax", "linear"])
def test_activation_layer(check_layer, name):
    check_layer(lambda k: k.layers.Activation(name), (4, 3))


IDENTITY_AT_INFERENCE = {
    "Identity": (lambda k: k.layers.Identity(), (4, 3)),
    "Dropout": (lambda k: k.layers.Dropout(0.5), (4, 3)),
    "Dropout_noise_shape": (lambda k: k.layers.Dropout(0.5, noise_shape=(None, 1, 3)), (4, 3)),
    "SpatialDropout1D": (lambda k: k.layers.SpatialDropout1D(0.5), (5, 3)),
    "SpatialDropout2D_last": (
        lambda k: k.layers.SpatialDropout2D(0.5, data_format="channels_last"),
        (4, 5, 3),
    ),
    "SpatialDropout2D_first": (
        lambda k: k.layers.SpatialDropout2D(0.5, data_format="channels_first"),
        (3, 4, 5),
    ),
    "SpatialDropout3D": (lambda k: k.layers.SpatialDropout3D(0.5), (2, 3, 4, 3)),
    "GaussianNoise": (lambda k: k.layers.GaussianNoise(1.0), (4, 3)),
    "GaussianDropout": (lambda k: k.layers.GaussianDropout(0.5), (4, 3)),
    "AlphaDropout": (lambda k: k.layers.AlphaDropout(0.5), (4, 3)),
    "ActivityRegularization": (lambda k: k.layers.ActivityRegularization(l1=0.1, l2=0.1), (4, 3)),
}


@pytest.mark.parametrize("case", sorted(IDENTITY_AT_INFERENCE))
def test_identity_at_inference(check_layer, case):
    make, shape = IDENTITY_AT_INFERENCE[case]
    x = make_input((2, *shape))
    out = check_layer(make, shape, x=x)
    np.testing.assert_array_equal(out, x)


@pytest.mark.parametrize("case", ["Dropout", "SpatialDropout2D_first", "GaussianNoise"])
def test_identity_at_inference_h5(check_layer, case):
    make, shape = IDENTITY_AT_INFERENCE[case]
    check_layer(make, shape, ext=".h5")
