"""Read legacy `.h5` model files written by Keras 2 (tf.keras, tf_keras) or Keras 3."""

from __future__ import annotations

import json

from ..errors import KerascheckError
from ..limits import clip
from .config import check_depth, parse_model_config
from .hdf5 import Group, child, list_attr, open_file, read_array, text_attr
from .safety import MODEL_CLASSES
from .spec import LayerSpec, ModelSpec
from .training import h5_optimizer_weights, training_setup


def read_legacy_h5(path: str) -> ModelSpec:
    with open_file(path, path) as handle:
        raw = text_attr(handle, "model_config")
        if raw is None:
            weights_only = "layer_names" in handle.attrs or "layers" in handle
            found = "weights only" if weights_only else "no model"
            raise KerascheckError(
                f"{path}: expected a model config in the .h5 file, found {found} "
                "(a file from save_weights() needs its architecture; save with model.save())"
            )
        try:
            config = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise KerascheckError(
                f"{path}: expected a JSON model config, found invalid text ({clip(exc)})"
            ) from None
        check_depth(config, f"{path}: model_config")
        keras_version = text_attr(handle, "keras_version") or "2"
        spec = parse_model_config(config, str(keras_version), path)
        spec.training = _training_config(handle, path)
        weights = child(handle, "model_weights")
        if not isinstance(weights, Group):
            raise KerascheckError(f"{path}: expected a 'model_weights' group, found none")
        assign_weights(spec, weights, path)
        if spec.training is not None:
            spec.training["state"] = h5_optimizer_weights(handle, path)
    return spec


def _training_config(handle, path: str):
    raw = text_attr(handle, "training_config")
    if raw is None:
        return None
    try:
        config = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise KerascheckError(
            f"{path}: expected a JSON training_config, found invalid text ({clip(exc)})"
        ) from None
    check_depth(config, f"{path}: training_config")
    where = f"{path}: training_config"
    return training_setup(config, where) if isinstance(config, dict) else None


def assign_weights(spec: ModelSpec, store: Group, path: str) -> None:
    """Weights live in `model_weights/<layer>` in the order of its `weight_names`.

    A nested model's group holds the weights of all its leaf layers, nested ones
    included, so they are handed out by name.
    """
    for layer in spec.layers.values():
        group = child(store, layer.name)
        if not isinstance(group, Group):
            continue  # no weights saved; the engine checks the count against the config
        names = list_attr(group, "weight_names")
        arrays = [(name, read_array(child(group, name), _what(name, layer))) for name in names]
        if layer.model is not None:
            _distribute(layer.model, arrays, path)
        elif (wrapped := _wrapped_model(layer)) is not None:
            layer.weights = _per_layer_order(wrapped, arrays, spec, path)
        else:
            layer.weights = [array for _, array in arrays]


def _wrapped_model(layer: LayerSpec):
    """The model entry a TimeDistributed wraps, if it wraps one."""
    inner = layer.config.get("layer") if layer.class_name == "TimeDistributed" else None
    is_model = isinstance(inner, dict) and inner.get("class_name") in MODEL_CLASSES
    return inner if is_model else None


def _per_layer_order(entry: dict, arrays: list, spec: ModelSpec, path: str) -> list:
    """A wrapped model's weights in per-layer order (what `.keras` files give).

    `weight_names` list all trainable weights before the non-trainable ones
    (BatchNormalization statistics come last), so they are sorted by owner.
    """
    model = parse_model_config(entry, spec.keras_version, path)
    _distribute(model, arrays, path)
    leaves: dict[str, list[LayerSpec]] = {}
    _collect_leaves(model, leaves)
    return [w for same_name in leaves.values() for leaf in same_name for w in leaf.weights]


def _what(name: str, layer: LayerSpec) -> str:
    return f"'{name}' for layer '{layer.name}'"


def _distribute(model: ModelSpec, arrays: list, path: str) -> None:
    """Hand a nested model's flat weight list to its leaf layers by weight name.

    Names look like `dense/kernel:0` (Keras 2) or `inner/dense/kernel` (Keras 3,
    the variable's path, which may start with an enclosing model's name): the
    leftmost path part naming a leaf layer is the owner. Two leaves of different
    nested models may share a name; their weights come one layer after the other,
    so a repeated weight name moves on to the next leaf of that name.
    """
    leaves: dict[str, list[LayerSpec]] = {}
    _collect_leaves(model, leaves)
    taken: dict[int, set[str]] = {}
    for same_name in leaves.values():
        for layer in same_name:
            layer.weights = []
            taken[id(layer)] = set()
    for name, array in arrays:
        parts = name.split(":")[0].split("/")
        owner_name = next((p for p in parts[:-1] if p in leaves), None)
        if owner_name is None:
            raise KerascheckError(
                f"{path}: weight '{name}' of nested model '{model.name}' belongs to no layer "
                f"it defines; expected one of {sorted(leaves)}"
            )
        suffix = "/".join(parts[parts.index(owner_name) + 1 :])
        candidates = leaves[owner_name]
        owner = next((c for c in candidates if suffix not in taken[id(c)]), candidates[-1])
        taken[id(owner)].add(suffix)
        owner.weights.append(array)


def _collect_leaves(model: ModelSpec, leaves: dict) -> None:
    for layer in model.layers.values():
        if layer.model is not None:
            _collect_leaves(layer.model, leaves)
        elif layer.class_name != "InputLayer":
            leaves.setdefault(layer.name, []).append(layer)
