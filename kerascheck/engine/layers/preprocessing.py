"""Preprocessing layers that end up inside saved models.

Numeric ones (Normalization, Discretization), image ones (Resizing,
CenterCrop, the random augmentations, which are inference-time identities),
and the lookup layers with a vocabulary stored inline in the config (a
vocabulary *file* is refused by the loader's safety check).

Image resampling follows `tf.image.resize` with `antialias=False`, which
Keras 3 (`keras/src/backend/tensorflow/image.py::resize`) and tf_keras
(`tf_keras/src/layers/preprocessing/image_preprocessing.py`) both call; the
kernel taps are shared with UpSampling2D (reshaping.py).
"""

from __future__ import annotations

import numpy as np

from ..base import Layer, data_format
from ..windows import from_channels_last, to_channels_last
from .core import Identity, config_array
from .reshaping import KERNELS, apply_taps, apply_taps_transpose, resampling_taps

EPSILON = 1e-7  # keras.backend.epsilon(), the floor on Normalization's std
INT64_MAX = np.iinfo(np.int64).max  # Keras' lookup value for mask tokens outside "int" mode


# -- Normalization ----------------------------------------------------------------------


class Normalization(Layer):
    """`(x - mean) / max(sqrt(variance), 1e-7)`, or its inverse with `invert=True`.

    Statistics come from the config (`mean`/`variance`, broadcast onto the kept
    axes right-aligned, as Keras' `build` does) or, for an adapted layer, from
    its weights `mean`, `variance`, `count` (shape of the kept axes).
    """

    supports_masking = True

    non_trainable = ("mean", "variance", "count")

    def setup(self, config):
        axis = config.get("axis", -1)
        if axis is None:
            axis = ()
        self.axis = (int(axis),) if isinstance(axis, (int, float)) else tuple(axis)
        self.mean = config_array(config.get("mean"))
        self.variance = config_array(config.get("variance"))
        self.invert = bool(config.get("invert", False))

    def keep_axes(self, ndim: int) -> tuple:
        return tuple(sorted(a % ndim for a in self.axis))

    def weight_shapes(self, input_shape):
        if self.mean is not None:
            return []
        shape = tuple(input_shape[d] for d in self.keep_axes(len(input_shape)))
        return [("mean", shape), ("variance", shape), ("count", ())]

    def statistics(self, shape, dtype):
        """Mean and variance shaped to broadcast against an input of `shape`."""
        keep = self.keep_axes(len(shape))
        target = [shape[d] if d in keep else 1 for d in range(len(shape))]
        if self.mean is None:
            mean, variance = self.w["mean"], self.w["variance"]
            return mean.reshape(target).astype(dtype), variance.reshape(target).astype(dtype)
        mean, variance = np.asarray(self.mean, dtype), np.asarray(self.variance, dtype)
        expanded = [1] * len(shape)
        for i in range(1, mean.ndim + 1):
            expanded[keep[-i]] = mean.shape[-i]
        return (
            np.broadcast_to(mean.reshape(expanded), target),
            np.broadcast_to(variance.reshape(expanded), target),
        )

    def call(self, x):
        if x.dtype.kind != "f":  # Keras converts integer inputs to the compute dtype
            x = x.astype(self.context.dtype)
        mean, variance = self.statistics(x.shape, x.dtype)
        std = np.maximum(np.sqrt(variance), np.asarray(EPSILON, x.dtype))
        return mean + x * std if self.invert else (x - mean) / std


# -- categorical encodings (Discretization and the lookups) ---------------------------


def encode_categorical(indices: np.ndarray, mode: str, depth: int, dtype) -> np.ndarray:
    """Keras' `encode_categorical_inputs`: indices as they are, or one/multi-hot, counts.

    One-hot drops a trailing axis of size 1 and appends `depth`; multi-hot and
    count reduce axis 1 (axis 0 for a rank-1 input: the batch itself), which is
    what both TensorFlow's bincount path and `ops.multi_hot` do. Indices outside
    `[0, depth)` (Keras' mask value) give an all-zero row.
    """
    if mode == "int":
        return indices.astype(dtype)
    if mode == "one_hot" and indices.ndim > 1 and indices.shape[-1] == 1:
        indices = indices[..., 0]
    hot = indices[..., None] == np.arange(depth)
    if mode == "one_hot":
        return hot.astype(dtype)
    axis = 1 if indices.ndim > 1 else 0
    reduced = np.any(hot, axis=axis) if mode == "multi_hot" else np.sum(hot, axis=axis)
    return reduced.astype(dtype)


class Discretization(Layer):
    """Bucket index = number of boundaries <= x (TensorFlow's Bucketize), then encoded.

    Boundaries are float32 (Bucketize's attribute type). tf_keras stores an
    adapted layer's boundaries only as a `(2, n)` quantile summary weight; they
    are recomputed from it as tf_keras' `get_bin_boundaries` does.
    """

    MODES = ("int", "one_hot", "multi_hot", "count")

    def setup(self, config):
        self.boundaries = config_array(config.get("bin_boundaries"))
        self.num_bins = config.get("num_bins")
        self.output_mode = config.get("output_mode") or "int"
        if self.output_mode not in self.MODES:
            raise self.error(f"output_mode '{self.output_mode}' is not one of {self.MODES}")
        if config.get("sparse"):
            raise self.error("sparse=True outputs are not supported; expected dense outputs")
        if self.boundaries is None and self.num_bins is None:
            raise self.error("expected bin_boundaries or an adapted num_bins, found neither")

    def weight_shapes(self, input_shape):
        if self.boundaries is not None:
            return []
        columns = self.raw_weights[0].shape[-1] if self.raw_weights else "n"
        return [("summary", (2, columns))]

    def build(self, input_shape):
        super().build(input_shape)
        if self.boundaries is None:
            summary = np.asarray(self.raw_weights[0], dtype=np.float32)
            self.boundaries = compress_summary(summary, 1.0 / self.num_bins)[0, :-1].tolist()

    def call(self, x):
        boundaries = np.asarray(self.boundaries, dtype=np.float32)
        values = x if x.dtype.kind == "f" else x.astype(np.float64)
        indices = np.searchsorted(boundaries, values, side="right")
        if self.output_mode == "int":
            dtype = "int32" if self.context.keras_major >= 3 else "int64"
        else:
            dtype = self.context.dtype
        return encode_categorical(indices, self.output_mode, len(boundaries) + 1, dtype)


def compress_summary(summary: np.ndarray, epsilon: float) -> np.ndarray:
    """Quantile boundaries by interpolating the summary's cumulative weights (Keras' own)."""
    if summary.shape[1] * epsilon < 1:
        return summary
    percents = epsilon + np.arange(0.0, 1.0, epsilon)
    cumulative = summary[1].cumsum()
    bins = np.interp(percents, cumulative / cumulative[-1], summary[0])
    return np.stack((bins, np.zeros_like(bins))).astype(np.float32)


# -- lookups -------------------------------------------------------------------------


class IndexLookup(Layer):
    """Keras' IndexLookup with an inline vocabulary (the base of the two lookups).

    Index layout: `[mask (int mode only)] [num_oov_indices OOV slots] [tokens]`;
    a vocabulary that starts with exactly those special tokens has them
    stripped first. OOV inputs go to the single OOV slot, or to
    `floormod(x, num_oov_indices)` for integer keys; masked inputs give 0 (int
    mode) or an all-zero row. `invert` maps indices back to tokens.

    With `num_oov_indices=0` an unknown input gets -1, the table's default:
    Keras fails on it with an assertion, and kerascheck cannot, because shape
    probing feeds inputs (zeros, empty strings) that need not be in vocabulary.
    """

    key_kind = "iu"
    MODES = ("int", "one_hot", "multi_hot", "count", "tf_idf")

    def setup(self, config):
        self.invert = bool(config.get("invert", False))
        self.num_oov = int(config.get("num_oov_indices", 1))
        self.mask_token = config.get("mask_token")
        self.oov_token = config.get("oov_token")
        mode = config.get("output_mode") or "int"
        self.output_mode = {"binary": "multi_hot", "tf-idf": "tf_idf"}.get(mode, mode)
        if self.output_mode not in self.MODES:
            raise self.error(f"output_mode '{mode}' is not one of {self.MODES}")
        if config.get("sparse"):
            raise self.error("sparse=True outputs are not supported; expected dense outputs")
        self.check_oov_method(config)
        vocabulary = config_array(config.get("vocabulary"))
        if vocabulary is None:
            raise self.error(
                "its vocabulary was adapted and is stored as a file asset, which kerascheck "
                "does not read; expected an inline `vocabulary` in the config"
            )
        self.oov_start = 1 if self.mask_token is not None and self.output_mode == "int" else 0
        self.token_start = self.oov_start + self.num_oov
        special = [self.mask_token] * self.oov_start + [self.oov_token] * self.num_oov
        vocabulary = list(vocabulary)
        self.found_special = vocabulary[: self.token_start] == special
        self.tokens = self.as_keys(
            vocabulary[self.token_start :] if self.found_special else vocabulary
        )
        self.size = self.token_start + len(self.tokens)
        pad = bool(config.get("pad_to_max_tokens")) and config.get("max_tokens") is not None
        self.depth = int(config["max_tokens"]) if pad else self.size
        self.idf = config_array(config.get("idf_weights"))
        self.order = np.argsort(self.tokens, kind="stable")

    def check_oov_method(self, config):
        if (config.get("oov_method") or "floormod") != "floormod":
            raise self.error(
                f"oov_method '{config['oov_method']}' hashes with farmhash, which kerascheck "
                "does not implement; expected 'floormod'"
            )

    def as_keys(self, values) -> np.ndarray:
        return np.asarray(values, dtype=np.int64)

    def weight_shapes(self, input_shape):
        """tf_idf keeps the padded idf weights as a weight in some formats, not in others."""
        if self.output_mode == "tf_idf" and self.raw_weights:
            return [("idf_weights", (self.depth,))]
        return []

    def idf_weights(self) -> np.ndarray:
        """The stored weights, else the config's padded as Keras' `set_vocabulary` pads them."""
        if "idf_weights" in self.w:
            return self.w["idf_weights"]
        idf = np.asarray(self.idf, dtype=self.context.dtype)
        front = 0 if self.found_special else self.token_start
        front_value = 0.0 if self.found_special else np.average(idf)
        back = self.depth - front - len(idf)
        return np.pad(idf, (front, back), constant_values=(front_value, 0.0)).astype(idf.dtype)

    def call(self, x):
        if self.invert:
            return self.lookup_tokens(x)
        indices = self.lookup_indices(self.as_keys(x))
        if self.output_mode == "int":
            return indices
        mode = "count" if self.output_mode == "tf_idf" else self.output_mode
        dtype = self.context.dtype if self.context.keras_major < 3 else np.int64
        encoded = encode_categorical(indices, mode, self.depth, dtype)
        if self.output_mode == "tf_idf":
            idf = self.idf_weights()
            return encoded.astype(idf.dtype) * idf
        return encoded

    def lookup_indices(self, keys: np.ndarray) -> np.ndarray:
        """Vocabulary index of every key: one binary search over the sorted tokens."""
        sorted_tokens = self.tokens[self.order]
        where = np.minimum(np.searchsorted(sorted_tokens, keys), len(sorted_tokens) - 1)
        found = sorted_tokens[where] == keys
        indices = np.where(found, self.order[where] + self.token_start, -1).astype(np.int64)
        if self.num_oov > 0:
            indices = np.where(found, indices, self.oov_indices(keys))
        if self.mask_token is not None:
            mask_value = 0 if self.output_mode == "int" else INT64_MAX
            indices = np.where(self.is_mask(keys), mask_value, indices)
        return indices

    def oov_indices(self, keys: np.ndarray) -> np.ndarray:
        if self.num_oov == 1:
            return np.full(keys.shape, self.oov_start, dtype=np.int64)
        return np.mod(keys, self.num_oov) + self.oov_start

    def is_mask(self, keys: np.ndarray) -> np.ndarray:
        if self.mask_token is None:
            return np.zeros(keys.shape, dtype=bool)
        return keys == self.as_keys(self.mask_token)

    def lookup_tokens(self, x: np.ndarray) -> np.ndarray:
        """`invert=True`: token of each index, the OOV token elsewhere, mask at index 0."""
        index = np.asarray(x).astype(np.int64)
        inside = (index >= self.token_start) & (index < self.size)
        position = np.clip(index - self.token_start, 0, max(len(self.tokens) - 1, 0))
        tokens = np.where(inside, self.tokens[position], self.as_keys(self.oov_token))
        if self.mask_token is not None:
            tokens = np.where(index == 0, self.as_keys(self.mask_token), tokens)
        return tokens


class IntegerLookup(IndexLookup):
    pass


class StringLookup(IndexLookup):
    """String keys; more than one OOV slot would need farmhash, so it is refused."""

    def check_oov_method(self, config):
        if int(config.get("num_oov_indices", 1)) > 1 and not config.get("invert"):
            raise self.error(
                "num_oov_indices > 1 hashes strings with farmhash, which kerascheck does not "
                "implement; expected num_oov_indices 0 or 1"
            )

    def as_keys(self, values) -> np.ndarray:
        values = np.asarray(values)
        if values.dtype.kind == "S" or values.dtype == object:
            values = np.char.decode(values.astype(bytes), "utf-8")
        return values.astype(str)


# -- image resizing ------------------------------------------------------------------


def nearest_taps(size: int, out_size: int):
    """Half-pixel nearest neighbour: input `floor((o + 0.5) * in/out)` (float32), clamped."""
    out = np.arange(out_size, dtype=np.float32)
    source = np.floor((out + np.float32(0.5)) * np.float32(size / out_size))
    index = np.clip(source, 0, size - 1).astype(np.intp)[:, None]
    return index, np.ones(index.shape)


def area_taps(size: int, out_size: int):
    """TensorFlow's ResizeArea: output `o` averages input cells over `[o*s, (o+1)*s)`.

    Each cell weighs by how much of it the window covers (computed in float32
    as `resize_area_op.cc` does), divided by the window size `s = in/out`;
    indices past the input are clamped like its `Bound`.
    """
    scale = np.float32(size / out_size)
    out = np.arange(out_size, dtype=np.float32)
    start, end = out * scale, (out + np.float32(1.0)) * scale
    cells = np.floor(start)[:, None] + np.arange(int(np.ceil(scale)) + 2, dtype=np.float32)
    cover = np.minimum(cells + 1, end[:, None]) - np.maximum(cells, start[:, None])
    weight = np.maximum(cover, 0).astype(np.float64) / float(scale)
    return np.clip(cells, 0, size - 1).astype(np.intp), weight


def resize_taps(size: int, out_size: int, method: str):
    if method == "nearest":
        return nearest_taps(size, out_size)
    if method == "area":
        return area_taps(size, out_size)
    return resampling_taps(size, 1, method, out_size=out_size)


def resize_images(x: np.ndarray, size: tuple, method: str) -> np.ndarray:
    """`tf.image.resize(x, size, method, antialias=False)` on channels-last images."""
    for axis, out_size in ((1, size[0]), (2, size[1])):
        if method == "nearest":
            index, _ = nearest_taps(x.shape[axis], out_size)
            x = np.take(x, index[:, 0], axis=axis)
        else:
            x = apply_taps(x, axis, *resize_taps(x.shape[axis], out_size, method))
    return x


def resize_images_transpose(d_output: np.ndarray, sizes: tuple, method: str) -> np.ndarray:
    """The backward of `resize_images` to input `sizes` (TensorFlow's Resize*Grad): each
    axis is its own linear map, transposed in turn. ResizeArea has no gradient."""
    if method == "area":
        raise NotImplementedError("resize with method 'area' (TensorFlow has no gradient)")
    d = d_output
    for axis, size in ((1, sizes[0]), (2, sizes[1])):
        d = apply_taps_transpose(d, axis, *resize_taps(size, d.shape[axis], method), size)
    return d


def aspect_box(height: int, width: int, size: tuple) -> tuple:
    """Largest centered window of the target aspect ratio (Keras' crop_to_aspect_ratio).

    Sizes are `int(float32(w * th) / tw)`, at least 1; starts `int((h - ch) / 2)`.
    """
    crop_h = int(np.float32(width * size[0]) / np.float32(size[1]))
    crop_w = int(np.float32(height * size[1]) / np.float32(size[0]))
    crop_h, crop_w = max(min(height, crop_h), 1), max(min(width, crop_w), 1)
    return (height - crop_h) // 2, (width - crop_w) // 2, crop_h, crop_w


def crop_to_aspect(x: np.ndarray, size: tuple) -> np.ndarray:
    top, left, h, w = aspect_box(x.shape[1], x.shape[2], size)
    return x[:, top : top + h, left : left + w]


def pad_to_aspect(x: np.ndarray, size: tuple, fill_value: float) -> np.ndarray:
    """Keras 3's pad_to_aspect_ratio pads `int((target - h) / 2)` on *both* sides.

    So the padded size is `h + 2 * pad`, one short of the target when the
    difference is odd (`keras/src/backend/tensorflow/image.py::resize`).
    """
    height, width = x.shape[1], x.shape[2]
    pad_h = max(height, int(np.float32(width * size[0]) / np.float32(size[1])))
    pad_w = max(width, int(np.float32(height * size[1]) / np.float32(size[0])))
    top, left = (pad_h - height) // 2, (pad_w - width) // 2
    pads = ((0, 0), (top, top), (left, left), (0, 0))
    return np.pad(x, pads, constant_values=np.asarray(fill_value, x.dtype))


def smart_resize(x: np.ndarray, size: tuple, method: str = "bilinear") -> np.ndarray:
    """Keras' `smart_resize`: crop to the target aspect ratio, then resize (float32)."""
    x = crop_to_aspect(x, size)
    return resize_images(x.astype(np.float32, copy=False), size, method)


class ImageLayer(Layer):
    """Channels-last plumbing for 4D image batches."""

    def setup(self, config):
        self.data_format = data_format(config)
        self.configure(config)

    def configure(self, config) -> None:
        """Read the layer's own options."""

    def call(self, x):
        if x.ndim != 4:
            raise self.error(f"expected a batch of images (rank 4), found shape {x.shape}")
        y = self.images(to_channels_last(x, self.data_format))
        return from_channels_last(y, self.data_format)

    def images(self, x):
        raise NotImplementedError


class Resizing(ImageLayer):
    """Resize to `(height, width)`; optionally crop or pad to the target aspect first.

    Keras 3 rounds and saturates back to an integer input's dtype; tf_keras
    returns float32.
    """

    METHODS = ("nearest", "area", *KERNELS)

    def configure(self, config):
        self.size = (int(config["height"]), int(config["width"]))
        self.method = str(config.get("interpolation") or "bilinear").lower()
        if self.method not in self.METHODS:
            raise self.error(f"interpolation '{self.method}' is not one of {self.METHODS}")
        self.crop = bool(config.get("crop_to_aspect_ratio", False))
        self.pad = bool(config.get("pad_to_aspect_ratio", False))
        self.fill_value = float(config.get("fill_value", 0.0) or 0.0)
        if (config.get("fill_mode") or "constant") != "constant":
            raise self.error(f"fill_mode '{config['fill_mode']}' is not supported by Keras")
        if config.get("antialias"):
            raise self.error(
                "antialias=True is not supported; expected antialias=False (the default)"
            )

    def images(self, x):
        source = x
        if self.crop:
            x = crop_to_aspect(x, self.size)
        elif self.pad:
            x = pad_to_aspect(x, self.size, self.fill_value)
        if x.dtype.kind != "f":
            x = x.astype(np.float32)
        y = resize_images(x, self.size, self.method)
        if source.dtype.kind in "iu" and self.context.keras_major >= 3:
            info = np.iinfo(source.dtype)
            return np.clip(np.round(y), info.min, info.max).astype(source.dtype)
        return y.astype(self.context.dtype if source.dtype.kind != "f" else source.dtype)

    def vjp(self, x, training=False, noise=None):
        if self.crop or self.pad or x.dtype.kind != "f" or self.method == "area":
            return super().vjp(x)
        sizes = to_channels_last(x, self.data_format).shape[1:3]

        def backward(d_output):
            d = to_channels_last(d_output, self.data_format)
            d = resize_images_transpose(d, sizes, self.method).astype(x.dtype, copy=False)
            return from_channels_last(d, self.data_format), {}

        return self.call(x), backward


class CenterCrop(ImageLayer):
    """Central `(height, width)` window; an input smaller on either side is smart-resized."""

    def configure(self, config):
        self.size = (int(config["height"]), int(config["width"]))

    def images(self, x):
        x = x if x.dtype.kind == "f" else x.astype(self.context.dtype)
        height, width = x.shape[1], x.shape[2]
        if height < self.size[0] or width < self.size[1]:
            return smart_resize(x, self.size).astype(x.dtype)
        top, left = (height - self.size[0]) // 2, (width - self.size[1]) // 2
        return x[:, top : top + self.size[0], left : left + self.size[1]]


# -- random augmentations: identities at inference --------------------------------------


class RandomCrop(ImageLayer):
    """At inference Keras 3 returns the input unchanged (its `transform_images` crops only
    when training), while tf_keras smart-resizes to `(height, width)`."""

    def configure(self, config):
        self.size = (int(config["height"]), int(config["width"]))

    def images(self, x):
        if self.context.keras_major >= 3:
            return x
        return smart_resize(x, self.size).astype(self.context.dtype)


class RandomAugmentation(Identity):
    """Random augmentation layers apply only when training; inference is the identity."""


def _augmentation(name: str) -> type:
    return type(name, (RandomAugmentation,), {"__doc__": RandomAugmentation.__doc__})


AUGMENTATIONS = tuple(
    _augmentation(name)
    for name in (
        "RandomBrightness",
        "RandomColorDegeneration",
        "RandomColorJitter",
        "RandomContrast",
        "RandomElasticTransform",
        "RandomErasing",
        "RandomFlip",
        "RandomGaussianBlur",
        "RandomGrayscale",
        "RandomHue",
        "RandomInvert",
        "RandomPerspective",
        "RandomPosterization",
        "RandomRotation",
        "RandomSaturation",
        "RandomSharpness",
        "RandomShear",
        "RandomTranslation",
        "RandomZoom",
        "RandomHeight",
        "RandomWidth",
        "RandAugment",
        "AugMix",
        "CutMix",
        "MixUp",
    )
)


LAYERS = (
    Normalization,
    Discretization,
    IntegerLookup,
    StringLookup,
    Resizing,
    CenterCrop,
    RandomCrop,
    *AUGMENTATIONS,
)
