"""Read legacy `.h5` model files written by Keras 2 (tf.keras, tf_keras) or Keras 3."""

from __future__ import annotations

import json

import h5py

from ..errors import KerascheckError
from .config import parse_model_config
from .hdf5 import child, list_attr, read_array, text_attr
from .spec import ModelSpec


def read_legacy_h5(path: str) -> ModelSpec:
    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise KerascheckError(f"{path}: expected an HDF5 model file, found an unreadable one ({exc})")
    with handle:
        raw = text_attr(handle, "model_config")
        if raw is None:
            raise KerascheckError(
                f"{path}: expected a model config in the .h5 file, found none "
                "(a weights-only file needs its architecture; save with model.save())"
            )
        try:
            config = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise KerascheckError(f"{path}: the model config is not valid JSON ({exc})")
        keras_version = text_attr(handle, "keras_version") or "2"
        spec = parse_model_config(config, str(keras_version), path)
        weights = child(handle, "model_weights")
        if weights is None:
            raise KerascheckError(f"{path}: expected a 'model_weights' group, found none")
        assign_weights(spec, weights, path)
    return spec


def assign_weights(spec: ModelSpec, store: h5py.Group, path: str) -> None:
    """Weights live in `model_weights/<layer>` in the order of its `weight_names`."""
    for layer in spec.layers.values():
        group = child(store, layer.name)
        if group is None:
            continue
        names = list_attr(group, "weight_names")
        arrays = [(name, read_array(_dataset(group, name, path))) for name in names]
        if layer.model is not None:
            _distribute(layer.model, arrays)
        else:
            layer.weights = [array for _, array in arrays]


def _dataset(group: h5py.Group, name: str, path: str):
    dataset = child(group, name)
    if dataset is None:
        raise KerascheckError(f"{path}: weight '{name}' of layer '{group.name}' is missing")
    return dataset


def _distribute(model: ModelSpec, arrays: list) -> None:
    """Hand a nested model's flat weight list to its leaf layers by weight name.

    Names look like `dense/kernel:0` (Keras 2) or `inner/dense/kernel` (Keras 3):
    the leftmost path part naming a leaf layer is the owner.
    """
    leaves = {}
    _collect_leaves(model, leaves)
    for layer in leaves.values():
        layer.weights = []
    for name, array in arrays:
        parts = name.split(":")[0].split("/")
        owner = next((leaves[p] for p in parts[:-1] if p in leaves), None)
        if owner is None:
            raise KerascheckError(
                f"weight '{name}' of nested model '{model.name}' belongs to no layer it defines"
            )
        owner.weights.append(array)


def _collect_leaves(model: ModelSpec, leaves: dict) -> None:
    for layer in model.layers.values():
        if layer.model is not None:
            _collect_leaves(layer.model, leaves)
        else:
            leaves[layer.name] = layer
