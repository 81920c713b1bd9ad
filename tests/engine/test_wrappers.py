"""TimeDistributed against Keras 3 and tf_keras: plain inner layers, nested models (whose
weights sit one level deeper in the file), and masks in and out of the wrapper."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import make_input

EXTS = (".keras", ".h5")


def distributed(make_inner):
    return lambda k: k.layers.TimeDistributed(make_inner(k))


@pytest.mark.parametrize("ext", EXTS)
@pytest.mark.parametrize(
    "name, make_inner, shape",
    [
        ("dense", lambda k: k.layers.Dense(4, activation="relu"), (3, 5)),
        ("dense_rank4", lambda k: k.layers.Dense(2), (3, 2, 5)),
        ("conv2d", lambda k: k.layers.Conv2D(3, 3, strides=2, padding="same"), (2, 5, 5, 2)),
        ("batchnorm", lambda k: k.layers.BatchNormalization(epsilon=0.01), (3, 4)),
        ("batchnorm_axis1", lambda k: k.layers.BatchNormalization(axis=1), (3, 2, 4)),
        ("flatten", lambda k: k.layers.Flatten(), (3, 2, 3, 2)),
    ],
)
def test_time_distributed_layer(check_layer, ext, name, make_inner, shape):
    out = check_layer(distributed(make_inner), shape, ext=ext)
    assert out.shape[:2] == (2, shape[0])


def test_time_distributed_batch_of_one(check_layer):
    check_layer(distributed(lambda k: k.layers.Dense(3)), (4, 5), x=make_input((1, 4, 5)))


def sequential(k):
    return k.Sequential(
        [k.layers.Dense(4, activation="tanh"), k.layers.BatchNormalization(), k.layers.Dense(3)]
    )


def functional(k):
    x = k.Input((5,))
    h = k.layers.Dense(4)(x)
    y = k.layers.Add()([k.layers.Dense(4, use_bias=False)(x), k.layers.BatchNormalization()(h)])
    return k.Model(x, y)


@pytest.mark.parametrize("ext", EXTS)
@pytest.mark.parametrize("make_inner", [sequential, functional], ids=["sequential", "functional"])
def test_time_distributed_nested_model(check_layer, ext, make_inner):
    """The nested model's layers take the flat weight list in order; in .h5 the
    BatchNormalization statistics come after every trainable weight."""
    check_layer(distributed(make_inner), (3, 5), ext=ext)


# --- masks ---------------------------------------------------------------------------


def padded(shape, high, seed=0):
    x = np.random.default_rng(seed).integers(1, high, size=shape).astype("int32")
    x[:, -1] = 0
    x[0, 1:3] = 0
    return x


@pytest.mark.parametrize("ext", EXTS)
def test_time_distributed_passes_the_mask_on(check_layer, ext):
    """Embedding(mask_zero) -> TimeDistributed(Dense) -> GlobalAveragePooling1D: the mask
    crosses the wrapper (Keras 3 unchanged, tf_keras via the inner Dense's mask)."""

    def make(k):
        def apply(x):
            h = k.layers.Embedding(7, 4, mask_zero=True)(x)
            h = k.layers.TimeDistributed(k.layers.Dense(3))(h)
            return k.layers.GlobalAveragePooling1D()(h)

        return apply

    check_layer(make, (5,), ext=ext, dtype="int32", x=padded((2, 5), 7))


@pytest.mark.parametrize("ext", EXTS)
def test_time_distributed_folds_the_mask_for_the_inner_layer(check_layer, ext):
    """A (batch, time, steps) mask from Embedding reaches the inner pooling folded."""

    def make(k):
        def apply(x):
            h = k.layers.Embedding(6, 3, mask_zero=True)(x)
            return k.layers.TimeDistributed(k.layers.GlobalAveragePooling1D())(h)

        return apply

    x = np.random.default_rng(1).integers(1, 6, size=(2, 3, 4)).astype("int32")
    x[:, :, -1] = 0
    x[0, 1, :2] = 0
    check_layer(make, (3, 4), ext=ext, dtype="int32", x=x)


@pytest.mark.parametrize("ext", EXTS)
def test_time_distributed_inner_mask_differs_by_flavor(check_layer, ext):
    """TimeDistributed(Masking) -> TimeDistributed(GlobalAveragePooling1D): tf_keras asks
    the inner Masking for the output mask, so the mean skips masked steps; Keras 3 passes
    the (absent) input mask through, so it does not."""

    def make(k):
        def apply(x):
            h = k.layers.TimeDistributed(k.layers.Masking())(x)
            return k.layers.TimeDistributed(k.layers.GlobalAveragePooling1D())(h)

        return apply

    x = make_input((2, 3, 4, 2))
    x[:, :, -1] = 0.0
    x[1, 0, :2] = 0.0
    out = check_layer(make, (3, 4, 2), ext=ext, x=x)
    assert out.shape == (2, 3, 2)


def test_time_distributed_inside_nested_model_with_mask(check_layer):
    """A mask entering a nested Sequential inside TimeDistributed is folded with it."""

    def make(k):
        def apply(x):
            h = k.layers.Masking()(x)
            inner = k.Sequential([k.layers.Dense(3), k.layers.GlobalAveragePooling1D()])
            return k.layers.TimeDistributed(inner)(h)

        return apply

    x = make_input((2, 3, 4, 2))
    x[:, 1, 2] = 0.0
    check_layer(make, (3, 4, 2), x=x)
