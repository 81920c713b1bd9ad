"""Refuse model configs that would need code execution (or outside files) to rebuild.

kerascheck never runs code from a model file. Anything that Keras itself would
deserialize as code (Lambda bytecode, custom classes, wrapped foreign models)
or read from elsewhere (vocabulary files) is reported by layer name instead.
The checks run on the raw config entry, before anything else looks at it.
"""

from __future__ import annotations

import re

from ..errors import UnsafeModelError
from ..limits import clip

CODE_LAYERS = {
    "Lambda": "it stores Python bytecode",
    "TFSMLayer": "it wraps a TensorFlow SavedModel",
    "TorchModuleWrapper": "it wraps a pickled PyTorch module",
    "JaxLayer": "it wraps JAX functions",
    "FlaxLayer": "it wraps a Flax module",
}
# tf_keras layers that call a TensorFlow function by its saved name: allowed only for
# the names kerascheck reimplements (engine/layers/tf_ops.py `TF_FUNCTIONS`).
TF_OP_LAYERS = {"TFOpLambda", "SlicingOpLambda"}
MODEL_CLASSES = {"Functional", "Model", "Sequential"}
# Keys whose string value Keras treats as a path to read (lookup layers' vocabularies).
PATH_KEYS = ("vocabulary", "vocabulary_file", "idf_weights")
# Training-time objects: never built for inference, so whatever module they name is
# irrelevant (tf_keras EfficientNetV2 writes a TensorFlow `Constant` initializer).
TRAINING_ONLY_SUFFIXES = ("_initializer", "_regularizer", "_constraint")
# Layers that keras.applications itself defines and tf_keras registers under the
# package "Custom"; kerascheck implements them (engine/layers/applications.py).
APPLICATION_LAYERS = {"Custom>CustomScaleLayer": "CustomScaleLayer"}


def check_layer_entry(entry: dict, source: str = "") -> None:
    """Raise UnsafeModelError if a layer (or model) entry of a config needs code or files."""
    try:
        _check_entry(entry)
    except UnsafeModelError as exc:
        raise UnsafeModelError(f"{source}: {exc}" if source else str(exc)) from None


def _check_entry(entry: dict) -> None:
    class_name = entry.get("class_name")
    config = entry.get("config")
    config = config if isinstance(config, dict) else {}
    name = config.get("name") or entry.get("name") or "?"
    if class_name in CODE_LAYERS:
        raise UnsafeModelError(
            f"layer '{name}' is a {class_name}, which kerascheck refuses to load "
            f"because {CODE_LAYERS[class_name]}; expected built-in Keras layers only"
        )
    if class_name in TF_OP_LAYERS:
        _check_tf_function(name, class_name, config.get("function"))
    if isinstance(class_name, str) and ">" in class_name and class_name not in APPLICATION_LAYERS:
        # Keras 2 writes custom classes as `Package>Class`
        raise UnsafeModelError(
            f"layer '{name}' is the custom class '{class_name}'; expected built-in Keras "
            "layers only (kerascheck never imports custom code)"
        )
    module = entry.get("module")
    if isinstance(module, str) and not _is_keras_module(module):
        raise UnsafeModelError(
            f"layer '{name}' ({class_name}) comes from module '{module}'; expected built-in "
            "Keras layers only (kerascheck never imports custom code)"
        )
    registered = entry.get("registered_name")
    known = registered in MODEL_CLASSES or registered in APPLICATION_LAYERS
    if registered not in (None, class_name) and not known:
        raise UnsafeModelError(
            f"layer '{name}' is the custom class '{registered}'; expected built-in Keras "
            "layers only (kerascheck never imports custom code)"
        )
    for key in PATH_KEYS:
        if isinstance(config.get(key), str):
            raise UnsafeModelError(
                f"layer '{name}' ({class_name}) reads its {key} from the path "
                f"'{config[key]}'; expected the values stored in the model file"
            )
    if class_name in MODEL_CLASSES:  # its layers are checked one by one, by their own name
        config = {k: v for k, v in config.items() if k != "layers"}
    _check_values(config, name, class_name)
    if "build_config" in entry:
        check_builtin(entry["build_config"], f"layer '{clip(name)}' build_config", "build config")


def _kind(key: str) -> str:
    suffix = next(s for s in TRAINING_ONLY_SUFFIXES if key.endswith(s))
    return "built-in " + suffix.strip("_")


KERAS_ROOTS = ("keras", "tf_keras", "builtins", "tensorflow")
TF_KERAS_NAME = re.compile(r"^Custom>[A-Za-z_]\w*$")
DOTTED = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+$")


def check_builtin(value, where: str, kind: str = "built-in Keras object") -> None:
    """Refuse anything but plain JSON and built-in Keras objects (initializers, losses,
    optimizers...): no lambdas, no object from a module outside Keras, no custom
    registered names, no dotted paths to functions. Nothing is looked up or imported."""

    def refuse(found: str, path: str):
        raise UnsafeModelError(
            f"{path}: expected a {kind}, found {found} (kerascheck never imports or runs "
            "code from a model file)"
        )

    def walk(item, path: str):
        if isinstance(item, str):
            if DOTTED.match(item) and item.split(".")[0] not in KERAS_ROOTS:
                refuse(f"the function path '{clip(item)}'", path)
        elif isinstance(item, dict):
            class_name = item.get("class_name")
            if class_name == "__lambda__" or "__lambda__" in item:
                refuse("a serialized Python lambda", path)
            module = item.get("module")
            if module is not None and (
                not isinstance(module, str) or module.split(".")[0] not in KERAS_ROOTS
            ):
                refuse(f"module '{clip(module)}' ({clip(repr(class_name))})", path)
            # tf_keras names its own optimizers `Custom>Adam`: a registry key, not code
            for field in ("registered_name", "class_name"):
                named = item.get(field)
                if isinstance(named, str) and ">" in named and not TF_KERAS_NAME.match(named):
                    refuse(f"the custom object '{clip(named)}'", path)
            for key, inner in item.items():
                walk(inner, f"{path}.{clip(key, 40)}")
        elif isinstance(item, list):
            for index, inner in enumerate(item):
                walk(inner, f"{path}[{index}]")

    walk(value, where)


def _check_tf_function(name: str, class_name: str, function) -> None:
    """Only allow-listed TensorFlow names, checked by name: nothing is looked up or imported.

    The allow-list is the engine's table of reimplementations, imported here lazily so
    there is one list (loading is imported by the engine, not the other way round).
    """
    from ..engine.layers.tf_ops import TF_FUNCTIONS

    if not isinstance(function, str) or function not in TF_FUNCTIONS:
        shown = f"tf.{function}" if isinstance(function, str) else repr(function)
        raise UnsafeModelError(
            f"layer '{name}' is a {class_name} calling {shown}, which is not on kerascheck's "
            "allow-list of TensorFlow functions (kerascheck never looks up TensorFlow "
            "symbols by name); `kerascheck layers --family 'tf functions'` lists the "
            f"{len(TF_FUNCTIONS)} allowed"
        )


def _is_keras_module(module: str) -> bool:
    return module.split(".")[0] in ("keras", "tf_keras") or module == "builtins"


def _check_values(value, name: str, class_name: str) -> None:
    """Walk nested config values looking for serialized functions or classes."""
    if isinstance(value, dict):
        inner_class = value.get("class_name")
        if inner_class == "__lambda__" or "__lambda__" in value:
            raise UnsafeModelError(
                f"layer '{name}' ({class_name}) contains a serialized Python lambda; "
                "expected built-in functions only (kerascheck never executes model code)"
            )
        module = value.get("module")
        if isinstance(module, str) and inner_class and not _is_keras_module(module):
            raise UnsafeModelError(
                f"layer '{name}' ({class_name}) refers to '{inner_class}' from module "
                f"'{module}'; expected built-in Keras objects only (kerascheck never imports "
                "custom code)"
            )
        registered = value.get("registered_name")
        if isinstance(registered, str) and ">" in registered:
            raise UnsafeModelError(
                f"layer '{name}' ({class_name}) refers to the custom object "
                f"'{registered}'; expected built-in Keras objects only (kerascheck never "
                "imports custom code)"
            )
        for key, item in value.items():
            if str(key).endswith(TRAINING_ONLY_SUFFIXES):
                where = f"layer '{clip(name)}' ({clip(class_name)}) config.{clip(key)}"
                check_builtin(item, where, _kind(str(key)))
            else:
                _check_values(item, name, class_name)
    elif isinstance(value, list):
        for item in value:
            _check_values(item, name, class_name)
