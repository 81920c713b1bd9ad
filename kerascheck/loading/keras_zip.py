"""Read Keras 3 (and tf_keras) `.keras` zip archives without extracting them.

Members are read by exact name and only after their declared sizes are
checked (Python's zipfile never inflates past the declared size), so a zip
bomb or a path-traversal member name never reaches the disk or memory.
"""

from __future__ import annotations

import io
import json
import lzma
import os
import re
import struct
import zipfile
import zlib

from ..errors import KerascheckError, UnsafeModelError
from ..limits import clip
from .config import check_depth, parse_model_config
from .hdf5 import Group, child, open_file, read_array, reading_values, text_attr
from .safety import MODEL_CLASSES
from .spec import ModelSpec
from .training import keras3_optimizer_vars, training_setup

MAX_CONFIG_BYTES = 256 * 2**20
MAX_WEIGHTS_BYTES = 16 * 2**30
# A member declaring far more bytes than it stores is a decompression bomb (the
# same rule as Keras' own `_reject_zip_bomb`, with a lower floor for JSON).
BOMB_RATIO = 100
BOMB_FLOOR_BYTES = 2**28


def read_keras_zip(path: str) -> ModelSpec:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise KerascheckError(
            f"{path}: expected a .keras zip archive, found an unreadable zip ({exc})"
        )
    with archive:
        names = set(archive.namelist())
        if "model.weights.npz" in names:
            raise UnsafeModelError(
                f"{path}: expected weights in model.weights.h5, found model.weights.npz "
                "(NumPy archives can hold pickles, which kerascheck never loads)"
            )
        for required in ("config.json", "model.weights.h5"):
            if required not in names:
                found = ", ".join(sorted(names)) or "nothing"
                raise KerascheckError(
                    f"{path}: expected '{required}' in the .keras archive, found {found}"
                )
        metadata = {}
        if "metadata.json" in names:
            metadata = _read_json(archive, "metadata.json", path)
        config = _read_json(archive, "config.json", path)
        version = metadata.get("keras_version", "3") if isinstance(metadata, dict) else "3"
        spec = parse_model_config(config, str(version), path)
        spec.training = training_setup(config.get("compile_config"), f"{path}: compile_config")
        weights = _weights_file(archive, path)
    with weights, open_file(weights, f"{path}: model.weights.h5") as store:
        assign_weights(spec, store, path)
        if spec.training is not None:
            spec.training["state"] = keras3_optimizer_vars(store, path)
    return spec


def _weights_file(archive: zipfile.ZipFile, path: str):
    """`model.weights.h5` as a file object for h5py: its bytes in memory or, when only
    shapes are wanted (`shapes_only`) and the member is stored uncompressed (as Keras
    writes it), a window onto the archive, so that only the HDF5 metadata h5py asks
    for is read."""
    name = "model.weights.h5"
    info = archive.getinfo(name)
    if reading_values() or info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
        return io.BytesIO(_read_member(archive, name, MAX_WEIGHTS_BYTES, path))
    _check_member(info, MAX_WEIGHTS_BYTES, path)
    archive.fp.seek(info.header_offset)
    header = archive.fp.read(LOCAL_HEADER_SIZE)
    if len(header) != LOCAL_HEADER_SIZE or header[:4] != b"PK\x03\x04":
        raise KerascheckError(f"{path}: expected a zip local header for {name}, found none")
    name_length, extra_length = struct.unpack("<HH", header[26:30])
    start = info.header_offset + LOCAL_HEADER_SIZE + name_length + extra_length
    return MemberWindow(path, start, info.file_size)


LOCAL_HEADER_SIZE = 30


class MemberWindow(io.RawIOBase):
    """Bytes `start .. start + size` of a file, as a read-only file of their own.

    Reads use `os.pread`, which leaves the descriptor's position alone, so the
    HDF5 probe's forked child can walk the same window. `bytes_read` counts what
    was read (the start-up test checks that no weight data was)."""

    def __init__(self, path: str, start: int, size: int):
        super().__init__()
        self._fd = os.open(path, os.O_RDONLY)
        self._start, self._size, self._pos = start, size, 0
        self.bytes_read = 0
        if start + size > os.fstat(self._fd).st_size:
            os.close(self._fd)
            raise KerascheckError(
                f"{path}: model.weights.h5 declares {size} bytes past the end of the archive"
            )

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(base + offset, 0)
        return self._pos

    def readinto(self, buffer) -> int:
        count = max(min(len(buffer), self._size - self._pos), 0)
        data = os.pread(self._fd, count, self._start + self._pos) if count else b""
        buffer[: len(data)] = data
        self._pos += len(data)
        self.bytes_read += len(data)
        return len(data)

    def close(self) -> None:
        if not self.closed:
            os.close(self._fd)
        super().close()


def _check_member(info: zipfile.ZipInfo, limit: int, path: str) -> None:
    name = info.filename
    if info.file_size > limit:
        raise KerascheckError(
            f"{path}: expected {name} of at most {limit} bytes, found {info.file_size}"
        )
    if info.file_size > BOMB_FLOOR_BYTES and info.file_size > BOMB_RATIO * info.compress_size:
        raise UnsafeModelError(
            f"{path}: {name} declares {info.file_size} bytes but stores only "
            f"{info.compress_size}; refusing a likely decompression bomb"
        )


def _read_member(archive: zipfile.ZipFile, name: str, limit: int, path: str) -> bytes:
    info = archive.getinfo(name)
    _check_member(info, limit, path)
    try:
        with archive.open(name) as member:  # streamed with a cap: the declared size can lie
            data = member.read(min(info.file_size, limit) + 1)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError,
            RuntimeError, lzma.LZMAError, zlib.error) as exc:  # fmt: skip
        raise KerascheckError(
            f"{path}: expected a readable {name} in the archive, found a damaged or "
            f"unsupported member ({clip(exc)})"
        ) from None
    if len(data) > info.file_size:
        raise KerascheckError(
            f"{path}: expected {name} of the {info.file_size} bytes it declares, found more"
        )
    return data


def _read_json(archive: zipfile.ZipFile, name: str, path: str):
    raw = _read_member(archive, name, MAX_CONFIG_BYTES, path)
    try:
        value = json.loads(raw)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise KerascheckError(
            f"{path}: expected JSON in {name}, found invalid text ({clip(exc)})"
        ) from None
    check_depth(value, f"{path}: {name}")
    return value


def snake_case(name: str) -> str:
    """Keras' own group naming for saved layers: `BatchNormalization` -> `batch_normalization`.

    Same regexes as keras/src/utils/naming.py and tf_keras/src/utils/generic_utils.py.
    """
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def assign_weights(spec: ModelSpec, store: Group, path: str) -> None:
    """Fill each layer's weights from a `layers/<group>/vars/<i>` weight store.

    Recent Keras 3 writes the layer name in a `name` attribute of `vars`; tf_keras
    and older Keras 3 only have the order-based group names (class name in snake
    case, `_1`, `_2` for repeats, in `model.layers` order), which we recompute.
    """
    groups = child(store, "layers")
    if groups is None:
        return
    if not isinstance(groups, Group):
        raise KerascheckError(f"{path}: expected a 'layers' group in model.weights.h5")
    by_name = _groups_by_layer_name(groups)
    for layer, key in zip(_saved_layers(spec), _order_keys(spec)):
        key = by_name.get(layer.name) if by_name else key
        group = child(groups, key) if key is not None else None
        if not isinstance(group, Group):
            continue  # a layer without weights; the engine checks the count
        if layer.model is not None:
            assign_weights(layer.model, group, path)
            continue
        layer.weights = _layer_weights(group, layer.class_name, layer.config, layer.name, path)


RNN_CLASSES = {
    "RNN",
    "SimpleRNN",
    "LSTM",
    "GRU",
    "ConvLSTM1D",
    "ConvLSTM2D",
    "ConvLSTM3D",
}
ATTENTION_PARTS = ("query_dense", "key_dense", "gate_dense", "value_dense", "output_dense")


def _layer_weights(group, class_name: str, config: dict, name: str, path: str) -> list:
    """A layer's variables in Keras' `layer.weights` order, the order legacy .h5 keeps.

    Layers made of sub-layers (RNN cells, wrappers, attention projections) store
    each part in its own group, named after the attribute holding it; Keras lists
    the parts' variables after the layer's own, in the order given here.
    """
    weights = _read_vars(child(group, "vars"), name, path)
    for key, part_class, part_config in _parts(group, class_name, config):
        part = child(group, key)
        if isinstance(part, Group):
            weights += _layer_weights(part, part_class, part_config, name, path)
    return weights


def _parts(group, class_name: str, config: dict) -> list[tuple[str, str, dict]]:
    """(group key, class name, config) of each sub-layer, in Keras' weight order."""

    def entry(value):
        value = value if isinstance(value, dict) else {}
        return value.get("class_name", ""), value.get("config") or {}

    if class_name == "Bidirectional":
        forward = entry(config.get("layer"))
        backward = entry(config.get("backward_layer")) if config.get("backward_layer") else forward
        return [("forward_layer", *forward), ("backward_layer", *backward)]
    if class_name == "TimeDistributed":
        return [("layer", *entry(config.get("layer")))]
    if class_name in RNN_CLASSES:
        cell = entry(config.get("cell")) if class_name == "RNN" else ("", {})
        return [("cell", *cell)]
    if class_name == "StackedRNNCells":
        cells = [entry(c) for c in config.get("cells") or []]
        keys = _list_keys([c[0] for c in cells])
        return [(f"cells/{key}", *cell) for key, cell in zip(keys, cells)]
    if class_name in MODEL_CLASSES:  # a model inside a wrapper: `layers/<group>` per layer
        return _model_parts(class_name, config)
    if class_name in ("MultiHeadAttention", "GroupedQueryAttention", "GroupQueryAttention"):
        return [(key if key in group else f"_{key}", "EinsumDense", {}) for key in ATTENTION_PARTS]
    return []


def _model_parts(class_name: str, config) -> list[tuple[str, str, dict]]:
    """A nested model's layers as parts, named as Keras names their groups (a Sequential
    saves no InputLayer); each layer's weights follow the previous layer's."""
    entries = config.get("layers") if isinstance(config, dict) else config
    entries = [e for e in entries or [] if isinstance(e, dict)]
    if class_name == "Sequential":
        entries = [e for e in entries if e.get("class_name") != "InputLayer"]
    parts = [(e.get("class_name", ""), e.get("config") or {}) for e in entries]
    keys = _list_keys([p[0] for p in parts])
    return [(f"layers/{key}", *part) for key, part in zip(keys, parts)]


def _list_keys(class_names: list[str]) -> list[str]:
    """Keras' group names for a list of objects: snake-case class, `_1`, `_2` on repeats."""
    used: dict[str, int] = {}
    keys = []
    for class_name in class_names:
        base = snake_case(class_name)
        count = used.get(base)
        used[base] = 0 if count is None else count + 1
        keys.append(base if count is None else f"{base}_{count + 1}")
    return keys


def _saved_layers(spec: ModelSpec) -> list:
    """Layers in the order Keras saves them: a Sequential's `layers` omit its InputLayer."""
    return [
        layer
        for layer in spec.layers.values()
        if not (spec.class_name == "Sequential" and layer.class_name == "InputLayer")
    ]


def _order_keys(spec: ModelSpec) -> list[str]:
    return _list_keys([layer.class_name for layer in _saved_layers(spec)])


def _groups_by_layer_name(groups: Group) -> dict[str, str]:
    by_name = {}
    for key in groups.keys():
        vars_group = child(groups, f"{key}/vars")
        owner = text_attr(vars_group, "name") if isinstance(vars_group, Group) else None
        if owner:
            by_name[owner] = key
    return by_name


def _read_vars(vars_group, layer_name: str, path: str) -> list:
    """`vars/0`, `vars/1`, ... in order; anything else in the group is a damaged file."""
    if vars_group is None:
        return []
    if not isinstance(vars_group, Group):
        raise KerascheckError(f"{path}: expected a 'vars' group for layer '{layer_name}'")
    keys = list(vars_group.keys())
    if keys == ["idf_weights"]:  # IndexLookup in tf_idf mode names its one variable
        return [read_array(child(vars_group, keys[0]), f"for layer '{layer_name}'")]
    expected = [str(i) for i in range(len(keys))]
    if sorted(keys, key=lambda k: (len(k), k)) != expected:
        raise KerascheckError(
            f"{path}: expected weights named {expected} for layer '{layer_name}', found {keys}"
        )
    return [read_array(child(vars_group, key), f"for layer '{layer_name}'") for key in expected]
