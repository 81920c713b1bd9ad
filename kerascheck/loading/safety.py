"""Refuse model configs that would need code execution to rebuild.

kerascheck never runs code from a model file. Anything that Keras itself would
deserialize as code (Lambda bytecode, custom classes, wrapped foreign models)
is reported by layer name instead.
"""

from __future__ import annotations

from ..errors import UnsafeModelError

CODE_LAYERS = {
    "Lambda": "it stores Python bytecode",
    "TFSMLayer": "it wraps a TensorFlow SavedModel",
    "TorchModuleWrapper": "it wraps a pickled PyTorch module",
    "JaxLayer": "it wraps JAX functions",
    "FlaxLayer": "it wraps a Flax module",
}
MODEL_CLASSES = {"Functional", "Model", "Sequential"}


def check_layer_entry(entry: dict) -> None:
    """Raise UnsafeModelError if a layer entry of a model config needs code."""
    class_name = entry.get("class_name")
    name = entry.get("config", {}).get("name") or entry.get("name") or "?"
    if class_name in CODE_LAYERS:
        raise UnsafeModelError(
            f"layer '{name}' is a {class_name}, which kerascheck refuses to load "
            f"because {CODE_LAYERS[class_name]}; expected built-in Keras layers only"
        )
    module = entry.get("module")
    registered = entry.get("registered_name")
    if module and not _is_keras_module(module):
        raise UnsafeModelError(
            f"layer '{name}' ({class_name}) comes from module '{module}'; kerascheck "
            "loads built-in Keras layers only and never imports custom code"
        )
    if registered not in (None, class_name) and registered not in MODEL_CLASSES:
        raise UnsafeModelError(
            f"layer '{name}' is the custom class '{registered}'; kerascheck loads "
            "built-in Keras layers only and never imports custom code"
        )
    _check_values(entry.get("config", {}), name, class_name)


def _is_keras_module(module: str) -> bool:
    return module.split(".")[0] in ("keras", "tf_keras") or module == "builtins"


def _check_values(value, name: str, class_name: str) -> None:
    """Walk nested config values looking for serialized functions or classes."""
    if isinstance(value, dict):
        inner_class = value.get("class_name")
        if inner_class == "__lambda__" or "__lambda__" in value:
            raise UnsafeModelError(
                f"layer '{name}' ({class_name}) contains a serialized Python lambda; "
                "kerascheck refuses to execute code from a model file"
            )
        module = value.get("module")
        if isinstance(module, str) and inner_class and not _is_keras_module(module):
            raise UnsafeModelError(
                f"layer '{name}' ({class_name}) refers to '{inner_class}' from module "
                f"'{module}'; kerascheck never imports custom code"
            )
        registered = value.get("registered_name")
        if isinstance(registered, str) and ">" in registered:
            raise UnsafeModelError(
                f"layer '{name}' ({class_name}) refers to the custom object "
                f"'{registered}'; kerascheck never imports custom code"
            )
        for item in value.values():
            _check_values(item, name, class_name)
    elif isinstance(value, list):
        for item in value:
            _check_values(item, name, class_name)
