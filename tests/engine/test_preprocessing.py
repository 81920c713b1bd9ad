"""Preprocessing layers against Keras 3 and tf_keras: option grids, both file formats."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_matches, keras_module, make_input, save

import kerascheck
from kerascheck.errors import KerascheckError

BOTH = ("keras", "tf_keras")
KERAS3 = ("keras",)


def check_model(tmp_path, flavor, make_layer, shape, x, dtype="float32", ext=".keras"):
    """Build Input -> layer in `flavor`, save as `ext`, compare kerascheck with Keras."""
    k = keras_module(flavor)
    inp = k.Input(shape=shape, dtype=dtype)
    model = k.Model(inp, make_layer(k)(inp))
    expected = np.asarray(model(x, training=False))
    path = save(model, str(tmp_path), flavor, ext)
    ours = kerascheck.load(path).predict(x)
    if expected.dtype == object:  # tf.string outputs arrive as bytes
        expected = np.char.decode(expected.astype(bytes), "utf-8")
        assert ours.shape == expected.shape and np.array_equal(ours, expected), (ours, expected)
    else:
        assert_matches(ours, expected, what=f"{flavor} {ext}")
    return ours, expected


# -- Normalization ----------------------------------------------------------------


def adapted_normalization(axis, invert, shape):
    def make(k):
        layer = k.layers.Normalization(axis=axis, invert=invert)
        layer.adapt(make_input((6, *shape), seed=5) * 2.0 + 1.5)
        return layer

    return make


@pytest.mark.parametrize("flavor", BOTH)
@pytest.mark.parametrize("ext", [".keras", ".h5"])
@pytest.mark.parametrize(
    "axis, shape",
    [(-1, (3,)), (None, (4,)), (1, (3, 4)), ((1, 2), (2, 3)), (-2, (3, 2))],
)
@pytest.mark.parametrize("invert", [False, True])
def test_normalization_adapted(tmp_path, flavor, ext, axis, shape, invert):
    x = make_input((2, *shape), seed=1)
    check_model(tmp_path, flavor, adapted_normalization(axis, invert, shape), shape, x, ext=ext)


@pytest.mark.parametrize("flavor", BOTH)
@pytest.mark.parametrize(
    "axis, shape, mean, variance",
    [
        (-1, (3,), [1.0, -2.0, 0.5], [4.0, 0.25, 0.0]),  # zero variance: the epsilon floor
        (-1, (2, 3), 0.5, 2.0),
        (None, (4,), 3.0, 2.0),
        ((1, 2), (2, 3), [0.1, 0.2, 0.3], [1.0, 2.0, 3.0]),  # right-aligned onto kept axes
        ((1, 2), (2, 3), [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]], [[1, 2, 3], [4, 5, 6]]),
        (1, (3, 2), [1.0, 2.0, 3.0], [0.5, 1.0, 1e-20]),
    ],
)
@pytest.mark.parametrize("invert", [False, True])
def test_normalization_config_statistics(tmp_path, flavor, axis, shape, mean, variance, invert):
    def make(k):
        return k.layers.Normalization(axis=axis, mean=mean, variance=variance, invert=invert)

    check_model(tmp_path, flavor, make, shape, make_input((2, *shape), seed=2))


@pytest.mark.parametrize("flavor", BOTH)
def test_normalization_integer_input(tmp_path, flavor):
    def make(k):
        return k.layers.Normalization(mean=[2.0, -1.0], variance=[9.0, 0.5])

    x = np.array([[3, -7], [0, 12]], dtype="int32")
    ours, _ = check_model(tmp_path, flavor, make, (2,), x, dtype="int32")
    assert ours.dtype == np.float32


@pytest.mark.parametrize("flavor", BOTH)
@pytest.mark.parametrize("ext", [".keras", ".h5"])
def test_efficientnet_style_stem(tmp_path, flavor, ext):
    """Rescaling(1/255) -> Normalization(mean, variance) -> Conv2D, as EfficientNet builds."""
    k = keras_module(flavor)
    inp = k.Input(shape=(6, 6, 3))
    y = k.layers.Rescaling(1.0 / 255.0)(inp)
    y = k.layers.Normalization(
        axis=-1, mean=[0.485, 0.456, 0.406], variance=[0.229**2, 0.224**2, 0.225**2]
    )(y)
    y = k.layers.Rescaling([1.0 / 0.5, 1.0 / 0.25, 2.0])(y)
    y = k.layers.Conv2D(4, 3, strides=2, padding="same")(y)
    model = k.Model(inp, y)
    x = np.random.default_rng(3).uniform(-20, 275, size=(2, 6, 6, 3)).astype("float32")
    expected = np.asarray(model(x))
    ours = kerascheck.load(save(model, str(tmp_path), flavor, ext)).predict(x)
    assert_matches(ours, expected, what=f"{flavor} {ext}")


# -- Discretization ---------------------------------------------------------------

BOUNDARIES = [-2.0, -0.1, 0.0, 0.1, 3.0]


def encodable(flavor, mode, shape):
    """tf_keras refuses encoded outputs of rank > 2 (one-hot of several columns, rank-3 input)."""
    rank = len(shape) + 1 + (mode == "one_hot" and shape[-1] != 1)
    return flavor == "keras" or mode == "int" or rank <= 2


@pytest.mark.parametrize("ext", [".keras", ".h5"])
@pytest.mark.parametrize(
    "flavor, mode, shape",
    [
        (flavor, mode, shape)
        for flavor in BOTH
        for mode in ("int", "one_hot", "multi_hot", "count")
        for shape in ((4,), (1,), (2, 3))
        if encodable(flavor, mode, shape)
    ],
)
def test_discretization(tmp_path, flavor, ext, mode, shape):
    x = make_input((6, *shape), seed=4)
    x.reshape(-1)[:5] = BOUNDARIES  # values exactly on the boundaries go right
    x.reshape(-1)[-2:] = [0.1 + 1e-8, -0.1 - 1e-8]  # float32-rounded onto boundaries

    def make(k):
        return k.layers.Discretization(bin_boundaries=BOUNDARIES, output_mode=mode)

    check_model(tmp_path, flavor, make, shape, x, ext=ext)


@pytest.mark.parametrize("flavor", BOTH)
@pytest.mark.parametrize("ext", [".keras", ".h5"])
def test_discretization_adapted(tmp_path, flavor, ext):
    def make(k):
        layer = k.layers.Discretization(num_bins=4)
        layer.adapt(make_input((40, 3), seed=6))
        return layer

    check_model(tmp_path, flavor, make, (3,), make_input((4, 3), seed=7), ext=ext)


# -- lookups ----------------------------------------------------------------------

INT_VOCAB = [12, -3, 7, 40, 0, 5]
INT_INPUT = np.array([[12, 7, 99, 0], [-3, 5, -8, 40], [41, 12, 12, 6]], dtype="int64")


def int_lookup_cases():
    cases = []
    for mode in ("int", "one_hot", "multi_hot", "count", "tf_idf"):
        for num_oov in (0, 1, 3):
            for mask in (None, 6):
                cases.append(dict(output_mode=mode, num_oov_indices=num_oov, mask_token=mask))
    cases.append(
        dict(oov_token=-7, num_oov_indices=2, mask_token=-100, vocabulary_extra=[-100, -7, -7])
    )
    cases.append(dict(max_tokens=12, pad_to_max_tokens=True, output_mode="multi_hot"))
    cases.append(dict(max_tokens=12, pad_to_max_tokens=True, output_mode="tf_idf"))
    cases.append(dict(output_mode="tf_idf", vocabulary_extra=[-1]))  # specials given: no padding
    return cases


def lookup_input(options, base):
    """Inputs with out-of-vocabulary values (none when Keras would fail) and mask tokens."""
    x = base.copy()
    if options.get("num_oov_indices", 1) == 0:
        x = np.where(np.isin(x, INT_VOCAB), x, INT_VOCAB[0])
    if options.get("mask_token") is not None:
        x[0, 0] = options["mask_token"]
    return x


@pytest.mark.parametrize("flavor", BOTH)
@pytest.mark.parametrize("options", int_lookup_cases())
def test_integer_lookup(tmp_path, flavor, options):
    options = dict(options)
    vocabulary = options.pop("vocabulary_extra", []) + INT_VOCAB
    if options.get("output_mode") == "tf_idf":
        options["idf_weights"] = list(np.linspace(0.25, 2.0, len(vocabulary)))
    x = lookup_input(options, INT_INPUT)
    if not encodable(flavor, options.get("output_mode", "int"), x.shape[1:]):
        x = x[:, :1]  # tf_keras one-hot takes one column
    # tf_idf keeps its idf weights as a variable: check both formats' storage
    exts = (".keras", ".h5") if options.get("output_mode") == "tf_idf" else (".keras",)

    def make(k):
        return k.layers.IntegerLookup(vocabulary=vocabulary, **options)

    for ext in exts:
        check_model(tmp_path, flavor, make, x.shape[1:], x, dtype="int64", ext=ext)


@pytest.mark.parametrize("flavor", BOTH)
@pytest.mark.parametrize("mask", [None, -100])
@pytest.mark.parametrize("num_oov", [1, 2])
def test_integer_lookup_invert(tmp_path, flavor, mask, num_oov):
    x = np.array([[0, 1, 2, 3], [4, 7, 8, 9], [12, -1, 5, 6]], dtype="int64")

    def make(k):
        return k.layers.IntegerLookup(
            vocabulary=INT_VOCAB, invert=True, mask_token=mask, num_oov_indices=num_oov
        )

    check_model(tmp_path, flavor, make, (4,), x, dtype="int64")


STR_VOCAB = ["fox", "a", "the", "ünïcode", "Dog"]
STR_INPUT = np.array([["fox", "cat", "Dog", ""], ["ünïcode", "dog", "the", "a"]])


@pytest.mark.parametrize("flavor", BOTH)
@pytest.mark.parametrize("ext", [".keras", ".h5"])
@pytest.mark.parametrize("mode", ["int", "one_hot", "multi_hot", "count"])
@pytest.mark.parametrize("mask", [None, ""])
@pytest.mark.parametrize("num_oov", [0, 1])
def test_string_lookup(tmp_path, flavor, ext, mode, mask, num_oov):
    x = STR_INPUT.copy()
    if num_oov == 0:
        x = np.where(np.isin(x, STR_VOCAB + ([] if mask is None else [mask])), x, "the")
    if not encodable(flavor, mode, x.shape[1:]):
        x = x[:, 1:2]  # tf_keras one-hot takes one column

    def make(k):
        return k.layers.StringLookup(
            vocabulary=STR_VOCAB, output_mode=mode, mask_token=mask, num_oov_indices=num_oov
        )

    check_model(tmp_path, flavor, make, x.shape[1:], x, dtype="string", ext=ext)


@pytest.mark.parametrize("flavor", BOTH)
def test_string_lookup_tf_idf_and_invert(tmp_path, flavor):
    def tf_idf(k):
        return k.layers.StringLookup(
            vocabulary=STR_VOCAB, output_mode="tf_idf", idf_weights=[0.5, 1.0, 1.5, 2.0, 2.5]
        )

    for ext in (".keras", ".h5"):
        check_model(tmp_path, flavor, tf_idf, (4,), STR_INPUT, dtype="string", ext=ext)

    def invert(k):
        return k.layers.StringLookup(vocabulary=STR_VOCAB, invert=True, mask_token="[M]")

    x = np.array([[0, 1, 2, 3], [4, 5, 6, 9]], dtype="int64")
    check_model(tmp_path, flavor, invert, (4,), x, dtype="int64")


def test_string_lookup_more_oov_slots_is_refused(tmp_path):
    k = keras_module("keras")
    inp = k.Input(shape=(2,), dtype="string")
    model = k.Model(inp, k.layers.StringLookup(vocabulary=["a"], num_oov_indices=2)(inp))
    with pytest.raises(KerascheckError, match="farmhash"):
        kerascheck.load(save(model, str(tmp_path), "keras"))


def test_lookup_out_of_vocabulary_without_oov_slot(tmp_path):
    """Keras fails on it; kerascheck gives the table default -1 (probing needs an output)."""
    k = keras_module("keras")
    inp = k.Input(shape=(2,), dtype="int64")
    model = k.Model(inp, k.layers.IntegerLookup(vocabulary=[1, 2], num_oov_indices=0)(inp))
    x = np.array([[1, 3]], dtype="int64")
    with pytest.raises(Exception, match="num_oov_indices=0"):
        model(x)
    ours = kerascheck.load(save(model, str(tmp_path), "keras")).predict(x)
    np.testing.assert_array_equal(ours, [[0, -1]])


@pytest.mark.parametrize("flavor", BOTH)
def test_adapted_vocabulary_in_assets_is_refused_clearly(tmp_path, flavor):
    k = keras_module(flavor)
    layer = k.layers.IntegerLookup()
    layer.adapt(np.array([3, 3, 5, 9], dtype="int64"))
    inp = k.Input(shape=(2,), dtype="int64")
    path = save(k.Model(inp, layer(inp)), str(tmp_path), flavor)
    with pytest.raises(KerascheckError, match="inline `vocabulary`"):
        kerascheck.load(path)


# -- Resizing, CenterCrop ---------------------------------------------------------

RESIZE_SIZES = [(3, 4), (8, 11), (5, 7), (2, 13), (1, 1)]


@pytest.mark.parametrize("flavor", BOTH)
@pytest.mark.parametrize(
    "interpolation", ["nearest", "bilinear", "bicubic", "area", "lanczos3", "lanczos5"]
)
@pytest.mark.parametrize("size", RESIZE_SIZES)
def test_resizing(tmp_path, flavor, interpolation, size):
    x = make_input((2, 5, 7, 2), seed=8)

    def make(k):
        return k.layers.Resizing(*size, interpolation=interpolation)

    check_model(tmp_path, flavor, make, (5, 7, 2), x)


@pytest.mark.parametrize("interpolation", ["gaussian", "mitchellcubic"])
@pytest.mark.parametrize("size", [(3, 4), (8, 11)])
def test_resizing_tf_keras_only_kernels(tmp_path, interpolation, size):
    def make(k):
        return k.layers.Resizing(*size, interpolation=interpolation)

    check_model(tmp_path, "tf_keras", make, (5, 7, 2), make_input((2, 5, 7, 2), seed=9))


@pytest.mark.parametrize("flavor", BOTH)
@pytest.mark.parametrize("ext", [".keras", ".h5"])
@pytest.mark.parametrize("size", [(4, 4), (3, 8), (6, 2), (9, 10)])
@pytest.mark.parametrize("interpolation", ["bilinear", "area", "nearest"])
def test_resizing_crop_to_aspect_ratio(tmp_path, flavor, ext, size, interpolation):
    def make(k):
        return k.layers.Resizing(*size, interpolation=interpolation, crop_to_aspect_ratio=True)

    check_model(tmp_path, flavor, make, (5, 7, 2), make_input((2, 5, 7, 2), seed=10), ext=ext)


@pytest.mark.parametrize("size", [(4, 4), (3, 8), (6, 2), (9, 10), (8, 3)])
@pytest.mark.parametrize("fill_value", [0.0, -2.5])
@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_resizing_pad_to_aspect_ratio(tmp_path, size, fill_value, data_format):
    shape = (5, 7, 2) if data_format == "channels_last" else (2, 5, 7)

    def make(k):
        return k.layers.Resizing(
            *size, pad_to_aspect_ratio=True, fill_value=fill_value, data_format=data_format
        )

    check_model(tmp_path, "keras", make, shape, make_input((2, *shape), seed=11))


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "area", "nearest"])
@pytest.mark.parametrize("crop", [False, True])
def test_resizing_channels_first(tmp_path, interpolation, crop):
    def make(k):
        return k.layers.Resizing(
            4,
            9,
            interpolation=interpolation,
            crop_to_aspect_ratio=crop,
            data_format="channels_first",
        )

    check_model(tmp_path, "keras", make, (3, 5, 6), make_input((2, 3, 5, 6), seed=12))


@pytest.mark.parametrize("flavor", BOTH)
@pytest.mark.parametrize("interpolation", ["bilinear", "nearest", "area"])
def test_resizing_integer_images(tmp_path, flavor, interpolation):
    x = np.random.default_rng(13).integers(0, 256, size=(2, 5, 7, 3)).astype("uint8")

    def make(k):
        return k.layers.Resizing(3, 10, interpolation=interpolation)

    ours, expected = check_model(tmp_path, flavor, make, (5, 7, 3), x, dtype="uint8")
    assert ours.dtype == expected.dtype


@pytest.mark.parametrize("flavor", BOTH)
@pytest.mark.parametrize("ext", [".keras", ".h5"])
@pytest.mark.parametrize("size", [(3, 5), (4, 4), (5, 7), (6, 3), (8, 9), (2, 8)])
def test_center_crop(tmp_path, flavor, ext, size):
    """Larger targets on either side make Keras smart-resize (aspect crop, then bilinear)."""

    def make(k):
        return k.layers.CenterCrop(*size)

    check_model(tmp_path, flavor, make, (5, 7, 2), make_input((2, 5, 7, 2), seed=14), ext=ext)


@pytest.mark.parametrize("size", [(3, 4), (8, 9)])
def test_center_crop_channels_first(tmp_path, size):
    def make(k):
        return k.layers.CenterCrop(*size, data_format="channels_first")

    check_model(tmp_path, "keras", make, (2, 5, 7), make_input((2, 2, 5, 7), seed=15))


@pytest.mark.parametrize("flavor", BOTH)
def test_batch_of_one(tmp_path, flavor):
    def make(k):
        return k.layers.Resizing(4, 3, interpolation="bicubic")

    check_model(tmp_path, flavor, make, (5, 7, 2), make_input((1, 5, 7, 2), seed=18))


# -- random augmentations ---------------------------------------------------------

KERAS3_AUGMENTATIONS = {
    "RandomBrightness": dict(factor=0.3),
    "RandomColorDegeneration": dict(factor=0.5),
    "RandomColorJitter": dict(brightness_factor=0.2, contrast_factor=0.2),
    "RandomContrast": dict(factor=0.5),
    "RandomElasticTransform": dict(),
    "RandomErasing": dict(),
    "RandomFlip": dict(mode="horizontal_and_vertical"),
    "RandomGaussianBlur": dict(),
    "RandomGrayscale": dict(factor=1.0),
    "RandomHue": dict(factor=0.5),
    "RandomInvert": dict(factor=1.0),
    "RandomPerspective": dict(),
    "RandomPosterization": dict(factor=(2, 4)),
    "RandomRotation": dict(factor=0.4),
    "RandomSaturation": dict(factor=0.5),
    "RandomSharpness": dict(factor=0.5),
    "RandomShear": dict(x_factor=0.3),
    "RandomTranslation": dict(height_factor=0.3, width_factor=0.3),
    "RandomZoom": dict(height_factor=0.3),
    "RandAugment": dict(),
    "AugMix": dict(),
    "CutMix": dict(),
    "MixUp": dict(),
}
TF_KERAS_AUGMENTATIONS = {
    "RandomBrightness": dict(factor=0.3),
    "RandomContrast": dict(factor=0.5),
    "RandomFlip": dict(),
    "RandomRotation": dict(factor=0.4),
    "RandomTranslation": dict(height_factor=0.3, width_factor=0.3),
    "RandomZoom": dict(height_factor=0.3),
    "RandomHeight": dict(factor=0.4),
    "RandomWidth": dict(factor=0.4),
}


def test_every_keras_random_layer_is_covered():
    import keras

    names = {n for n in dir(keras.layers) if n.startswith("Random")}
    covered = set(KERAS3_AUGMENTATIONS) | {"RandomCrop"}
    assert names <= covered, names - covered


@pytest.mark.parametrize(
    "flavor, name",
    [("keras", n) for n in KERAS3_AUGMENTATIONS]
    + [("tf_keras", n) for n in TF_KERAS_AUGMENTATIONS],
)
def test_random_augmentation_is_identity_at_inference(tmp_path, flavor, name):
    options = (KERAS3_AUGMENTATIONS if flavor == "keras" else TF_KERAS_AUGMENTATIONS)[name]
    x = np.abs(make_input((2, 6, 5, 3), seed=16))  # color layers expect non-negative values

    def make(k):
        return getattr(k.layers, name)(**options)

    ours, expected = check_model(tmp_path, flavor, make, (6, 5, 3), x)
    np.testing.assert_array_equal(ours, x)


@pytest.mark.parametrize("flavor", BOTH)
@pytest.mark.parametrize("ext", [".keras", ".h5"])
@pytest.mark.parametrize("size", [(3, 4), (6, 5), (8, 9), (2, 5)])
def test_random_crop_at_inference(tmp_path, flavor, ext, size):
    """Keras 3 returns the input unchanged; tf_keras center-crops to aspect and resizes."""

    def make(k):
        return k.layers.RandomCrop(*size)

    check_model(tmp_path, flavor, make, (6, 5, 3), make_input((2, 6, 5, 3), seed=17), ext=ext)
