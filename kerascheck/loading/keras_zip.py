"""Read Keras 3 (and tf_keras) `.keras` zip archives without extracting them."""

from __future__ import annotations

import io
import json
import re
import zipfile

import h5py

from ..errors import KerascheckError, UnsafeModelError
from .config import parse_model_config
from .hdf5 import child, read_array, text_attr
from .spec import ModelSpec

MAX_CONFIG_BYTES = 256 * 2**20
MAX_WEIGHTS_BYTES = 16 * 2**30


def read_keras_zip(path: str) -> ModelSpec:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise KerascheckError(f"{path}: expected a .keras zip archive, found an unreadable zip ({exc})")
    with archive:
        names = set(archive.namelist())
        if "model.weights.npz" in names:
            raise UnsafeModelError(
                f"{path}: weights are stored as model.weights.npz (a pickle-capable format); "
                "expected model.weights.h5"
            )
        for required in ("config.json", "model.weights.h5"):
            if required not in names:
                found = ", ".join(sorted(names)) or "nothing"
                raise KerascheckError(f"{path}: expected '{required}' in the .keras archive, found {found}")
        metadata = {}
        if "metadata.json" in names:
            metadata = _read_json(archive, "metadata.json", path)
        config = _read_json(archive, "config.json", path)
        spec = parse_model_config(config, str(metadata.get("keras_version", "3")), path)
        weights = _read_member(archive, "model.weights.h5", MAX_WEIGHTS_BYTES, path)
    try:
        store = h5py.File(io.BytesIO(weights), "r")
    except OSError as exc:
        raise KerascheckError(f"{path}: model.weights.h5 is not a readable HDF5 file ({exc})")
    with store:
        assign_weights(spec, store, path)
    return spec


def _read_member(archive: zipfile.ZipFile, name: str, limit: int, path: str) -> bytes:
    info = archive.getinfo(name)
    if info.file_size > limit:
        raise KerascheckError(f"{path}: {name} is {info.file_size} bytes, more than the {limit} allowed")
    try:
        return archive.read(name)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise KerascheckError(f"{path}: cannot read {name} from the archive ({exc})")


def _read_json(archive: zipfile.ZipFile, name: str, path: str) -> dict:
    raw = _read_member(archive, name, MAX_CONFIG_BYTES, path)
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise KerascheckError(f"{path}: {name} is not valid JSON ({exc})")


def snake_case(name: str) -> str:
    """Keras' own group naming for saved layers: `BatchNormalization` -> `batch_normalization`."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def assign_weights(spec: ModelSpec, store: h5py.Group, path: str) -> None:
    """Fill each layer's weights from a `layers/<group>/vars/<i>` weight store.

    Groups carry the layer name in a `name` attribute (recent Keras 3); older
    files only have Keras' order-based group names, which we recompute.
    """
    groups = child(store, "layers")
    if groups is None:
        return
    by_name = {}
    for key in groups.keys():
        vars_group = child(groups[key], "vars")
        owner = text_attr(vars_group, "name") if vars_group is not None else None
        if owner:
            by_name[owner] = key
    used: dict[str, int] = {}
    for layer in spec.layers.values():
        if spec.class_name == "Sequential" and layer.class_name == "InputLayer":
            continue
        base = snake_case(layer.class_name)
        count = used.get(base)
        used[base] = 0 if count is None else count + 1
        fallback = base if count is None else f"{base}_{count + 1}"
        key = by_name.get(layer.name, fallback if not by_name else None)
        if key is None or key not in groups:
            continue
        group = groups[key]
        if layer.model is not None:
            assign_weights(layer.model, group, path)
            continue
        vars_group = child(group, "vars")
        if vars_group is None:
            continue
        count_vars = len(vars_group.keys())
        layer.weights = [read_array(child(vars_group, str(i))) for i in range(count_vars)]
