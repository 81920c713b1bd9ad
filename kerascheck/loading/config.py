"""Turn a Keras model config (either dialect) into a ModelSpec without weights.

Keras 2 and Keras 3 write the same graph differently:

- inbound nodes: Keras 2 writes `[[layer, node, tensor, kwargs], ...]`,
  Keras 3 writes `{"args": [...], "kwargs": {...}}` with `__keras_tensor__`s;
- node indices of a nested model: Keras 2 counts the model's own built-in
  node first (so every reference is one higher), Keras 3 does so only in
  `input_layers`/`output_layers` and only for Functional models;
- InputLayer: `batch_input_shape` vs `batch_shape`; dtypes: strings vs
  `DTypePolicy` dicts.

All of that is resolved here, once.
"""

from __future__ import annotations

import math

from ..errors import KerascheckError
from ..limits import MAX_CONFIG_DEPTH, clip
from .safety import APPLICATION_LAYERS, MODEL_CLASSES, TF_OP_LAYERS, check_layer_entry
from .spec import CallSpec, InputSpec, LayerSpec, ModelSpec, TensorRef, tensor_refs


def parse_model_config(model_config, keras_version: str, source: str = "") -> ModelSpec:
    """Parse a `{"class_name": ..., "config": ...}` model entry into a ModelSpec."""
    if not isinstance(model_config, dict) or not isinstance(model_config.get("class_name"), str):
        raise KerascheckError(
            f"{source}: expected a Keras model config with a 'class_name', "
            f"found {_describe(model_config)}"
        )
    check_layer_entry(model_config, source)
    class_name = model_config["class_name"]
    config = model_config.get("config") or {}
    keras2 = str(keras_version).split(".")[0] in ("1", "2")
    if class_name == "Sequential":
        return _parse_sequential(config, keras_version, source)
    if class_name in ("Functional", "Model"):
        if not isinstance(config, dict):
            raise KerascheckError(
                f"{source}: expected a dict config for a Functional model, "
                f"found {_describe(config)}"
            )
        return _parse_functional(config, keras_version, keras2, source)
    raise KerascheckError(
        f"{source}: expected a Sequential or Functional model, found a '{class_name}' "
        "(subclassed models cannot be rebuilt without their Python code)"
    )


def _describe(value) -> str:
    return "nothing" if value is None else f"a {type(value).__name__}"


def normalize_layer_config(entry: dict) -> dict:
    """Config values in one dialect: dtype policy dicts become their name, InputLayer shapes
    become `batch_shape`, and a bare-list Sequential config becomes `{"layers": [...]}`."""
    raw = entry.get("config")
    if isinstance(raw, list) and entry.get("class_name") == "Sequential":
        raw = {"layers": raw}
    if raw is not None and not isinstance(raw, dict):
        raise KerascheckError(
            f"expected a dict config for {entry.get('class_name')} layer "
            f"'{entry.get('name', '?')}', found {_describe(raw)}"
        )
    config = dict(raw or {})
    dtype = config.get("dtype")
    if isinstance(dtype, dict):
        inner = dtype.get("config")
        config["dtype"] = inner.get("name", "float32") if isinstance(inner, dict) else "float32"
    if entry.get("class_name") == "InputLayer":
        shape = config.get("batch_shape") or config.get("batch_input_shape")
        if shape is None and isinstance(config.get("shape"), (list, tuple)):
            shape = [None, *config["shape"]]
        config["batch_shape"] = tuple(shape) if isinstance(shape, (list, tuple)) else None
        config.pop("batch_input_shape", None)
    return config


def check_depth(value, where: str) -> None:
    """Refuse JSON nested deeper than any Keras file, before recursive code meets it."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_CONFIG_DEPTH:
            raise KerascheckError(
                f"{where}: expected a config nested at most {MAX_CONFIG_DEPTH} levels deep, "
                "found deeper"
            )
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)


# Config keys holding sizes: each an int (never a bool, NaN or Infinity), or a list of them.
# Sizes that stride or dilate must be at least 1; none may exceed MAX_SIZE.
POSITIVE_KEYS = ("kernel_size", "strides", "dilation_rate", "pool_size", "depth_multiplier")
SIZE_KEYS = (
    "units", "filters", "size", "num_heads", "key_dim", "value_dim", "input_dim",
    "output_dim", "groups", "cropping", "target_shape", "dims", "n", "batch_shape",
    "output_padding", "num_tokens", "max_tokens", "height", "width",
)  # fmt: skip
MAX_SIZE = 2**31


def check_numbers(config: dict, where: str) -> None:
    for key in (*POSITIVE_KEYS, *SIZE_KEYS, "padding"):
        value = config.get(key)
        if value is None or isinstance(value, str):
            continue
        low = 1 if key in POSITIVE_KEYS else (-1 if key in ("target_shape", "dims") else 0)
        bad = _bad_size(value, low)
        if bad is not _OK:
            whole = list(value) if isinstance(value, tuple) else value
            kind = "a bool" if isinstance(bad, bool) else clip(repr(bad))
            if isinstance(bad, float) and not math.isfinite(bad):
                kind = f"the non-finite number {bad!r}"
            raise KerascheckError(
                f"{where}: expected sizes or None in '{key}' (integers from {low} to "
                f"{MAX_SIZE}), found {kind} in {clip(repr(whole))}"
            )


_OK = object()


def _bad_size(value, low: int):
    """The first entry of `value` that is not a size from `low` to MAX_SIZE, else _OK."""
    for item in value if isinstance(value, (list, tuple)) else [value]:
        if isinstance(item, (list, tuple)):
            bad = _bad_size(item, low)
            if bad is not _OK:
                return bad
        elif item is not None and not (
            isinstance(item, int) and not isinstance(item, bool) and low <= item <= MAX_SIZE
        ):
            return item
    return _OK


def _make_layer(entry, keras_version: str, source: str) -> LayerSpec:
    if not isinstance(entry, dict) or not isinstance(entry.get("class_name"), str):
        raise KerascheckError(
            f"{source}: expected each layer entry to be a dict with a 'class_name', "
            f"found {_describe(entry)}"
        )
    check_layer_entry(entry, source)
    config = normalize_layer_config(entry)
    name = config.get("name") or entry.get("name")
    if not isinstance(name, str) or not name:
        raise KerascheckError(
            f"{source}: expected a name for every layer, found a {clip(entry['class_name'])} "
            f"named {clip(repr(name))}"
        )
    check_numbers(config, f"{source}: layer '{clip(name)}' ({clip(entry['class_name'])})")
    layer = LayerSpec(name=name, class_name=_class_name(entry), config=config)
    if entry["class_name"] in MODEL_CLASSES:
        layer.model = parse_model_config({**entry, "config": config}, keras_version, source)
        layer.model.name = name
    return layer


# Keras 3 operation classes (module `keras.src.ops.*`) named like a layer class, whose
# calls and configs differ from the layer's (`ops.add(x, y)` vs `Add()([x, y])`).
# (`Identity` is the identity either way, so its op node runs as the layer.)
OP_NAMES_OF_LAYERS = {
    "Add", "Subtract", "Multiply", "Maximum", "Minimum", "Average", "Concatenate", "Dot",
    "Reshape", "Softmax",
}  # fmt: skip


def _class_name(entry: dict) -> str:
    """The engine class: a Keras 3 operation node sharing a layer's name gets an `Op`
    suffix (`keras.src.ops.numpy.Add` -> `AddOp`), so the two never meet."""
    name, module = entry["class_name"], entry.get("module")
    if name in APPLICATION_LAYERS:  # tf_keras' `Custom>CustomScaleLayer`
        return APPLICATION_LAYERS[name]
    if (
        name in OP_NAMES_OF_LAYERS
        and isinstance(module, str)
        and module.startswith("keras.src.ops.")
    ):
        return f"{name}Op"
    return name


def _input_spec(layer: LayerSpec, source: str) -> InputSpec:
    shape = layer.config.get("batch_shape")
    if not isinstance(shape, (list, tuple)) or not shape:
        raise KerascheckError(
            f"{source}: expected a batch shape on input layer '{layer.name}', found {shape!r}"
        )
    dims = tuple(shape[1:])
    if not all(d is None or (isinstance(d, int) and d >= 0) for d in dims):
        raise KerascheckError(
            f"{source}: expected sizes or None in the shape of input layer '{layer.name}', "
            f"found {list(shape)}"
        )
    return InputSpec(layer.name, dims, str(layer.config.get("dtype") or "float32"))


def _parse_sequential(config, keras_version: str, source: str) -> ModelSpec:
    """A chain of layers. Before Keras 2.2.3 the config is a bare list of layers, and old
    Keras 2 files have no InputLayer entry: the first layer carries `batch_input_shape`."""
    if isinstance(config, list):
        config = {"layers": config}
    if not isinstance(config, dict):
        raise KerascheckError(
            f"{source}: expected a Sequential config (a dict or a list of layers), "
            f"found {type(config).__name__}"
        )
    entries = config.get("layers")
    if not isinstance(entries, list) or not entries:
        raise KerascheckError(f"{source}: expected layers in the Sequential model, found none")
    layers = [_make_layer(e, keras_version, source) for e in entries]
    if layers[0].class_name != "InputLayer":
        layers.insert(0, _implicit_input(entries[0], layers[0], config, source))
    _check_unique_names(layers, source)
    calls = []
    previous = TensorRef(layers[0].name)
    for layer in layers[1:]:
        if layer.class_name == "InputLayer":
            raise KerascheckError(
                f"{source}: expected an InputLayer only first in a Sequential model, "
                f"found '{layer.name}' later"
            )
        calls.append(CallSpec(layer.name, 0, [previous]))
        previous = TensorRef(layer.name)
    return ModelSpec(
        name=config.get("name") or "sequential",
        class_name="Sequential",
        layers={layer.name: layer for layer in layers},
        calls=calls,
        inputs=[_input_spec(layers[0], source)],
        outputs=[previous],
        keras_version=keras_version,
        source=source,
    )


def _implicit_input(entry: dict, first: LayerSpec, config: dict, source: str) -> LayerSpec:
    """The InputLayer Keras creates for a Sequential built from a shape, named as Keras 2
    names it (`<first layer>_input`)."""
    first_config = entry.get("config") if isinstance(entry.get("config"), dict) else {}
    shape = first_config.get("batch_input_shape") or first_config.get("batch_shape")
    if shape is None and first_config.get("input_shape") is not None:
        shape = [None, *first_config["input_shape"]]
    if shape is None:
        shape = config.get("build_input_shape")
    if not isinstance(shape, (list, tuple)) or len(shape) < 1:
        raise KerascheckError(
            f"{source}: expected an input shape for the Sequential model (an InputLayer, "
            f"'batch_input_shape' on its first layer or 'build_input_shape'), found none "
            "(the model was saved before it was built)"
        )
    dtype = first.config.get("dtype")
    return LayerSpec(
        name=f"{first.name}_input",
        class_name="InputLayer",
        config={"batch_shape": tuple(shape), "dtype": dtype if isinstance(dtype, str) else None},
    )


def _check_unique_names(layers: list[LayerSpec], source: str) -> None:
    seen = set()
    for layer in layers:
        if not isinstance(layer.name, str) or not layer.name:
            raise KerascheckError(
                f"{source}: expected every layer to have a name, found a "
                f"{layer.class_name} without one"
            )
        if layer.name in seen:
            raise KerascheckError(
                f"{source}: expected unique layer names, found two '{layer.name}'"
            )
        seen.add(layer.name)


def _parse_functional(config: dict, keras_version: str, keras2: bool, source: str) -> ModelSpec:
    entries = config.get("layers") or []
    if not isinstance(entries, list):
        raise KerascheckError(
            f"{source}: expected a list of layers in the Functional model, "
            f"found {_describe(entries)}"
        )
    made = [_make_layer(entry, keras_version, source) for entry in entries]
    _check_unique_names(made, source)
    layers = {layer.name: layer for layer in made}

    def ref(history, endpoint: bool, caller: str = "") -> TensorRef:
        """A `[layer, node, tensor]` reference; nested models' node indices are shifted
        by the model's own built-in node in Keras 2 (everywhere) and in Keras 3 (only
        in `input_layers`/`output_layers`, only for Functional) — see Keras 3
        models/functional.py `get_config` and tf_keras engine/functional.py."""
        if (
            not isinstance(history, (list, tuple))
            or len(history) < 3
            or not isinstance(history[0], str)
            or not all(isinstance(i, int) for i in history[1:3])
        ):
            raise KerascheckError(
                f"{source}: expected a [layer, node, tensor] reference{caller}, found {history!r}"
            )
        layer, node, tensor = history[0], history[1], history[2]
        if layer not in layers:
            raise KerascheckError(
                f"{source}: expected a layer of the model{caller}, found a reference to "
                f"'{layer}', which the model does not define"
            )
        nested = layers[layer].class_name in MODEL_CLASSES
        shifted = nested and (keras2 or (endpoint and layers[layer].class_name != "Sequential"))
        return TensorRef(layer, node - 1 if shifted else node, tensor)

    calls = []
    for layer, entry in zip(made, entries):
        nodes = entry.get("inbound_nodes") or []
        if not isinstance(nodes, list):
            raise KerascheckError(
                f"{source}: expected a list of inbound nodes for layer '{layer.name}', "
                f"found {_describe(nodes)}"
            )
        for index, node in enumerate(nodes):
            inputs, as_list, kwargs, extra, first = _parse_node(node, ref, layer, source)
            calls.append(CallSpec(layer.name, index, inputs, as_list, kwargs, extra, first))

    inputs = [ref(v, endpoint=True) for v in _endpoint_list(config.get("input_layers"))]
    outputs = [ref(v, endpoint=True) for v in _endpoint_list(config.get("output_layers"))]
    if not inputs or not outputs:
        raise KerascheckError(
            f"{source}: expected model inputs and outputs in the Functional config, "
            f"found {len(inputs)} input(s) and {len(outputs)} output(s)"
        )
    input_specs = []
    for call in calls:
        if not call.refs:
            layer = layers[call.layer]
            lost = ""
            if layer.class_name == "TFOpLambda":
                lost = (
                    f" (tf_keras saves only tf.{layer.config.get('function')}'s first argument "
                    "and keyword arguments, so its positional tensors were lost; tf_keras "
                    "cannot reload this file either)"
                )
            raise KerascheckError(
                f"{source}: expected at least one input tensor for call {call.index} of layer "
                f"'{call.layer}', found none{lost}"
            )
    for r in inputs:
        if layers[r.layer].class_name != "InputLayer":
            raise KerascheckError(
                f"{source}: expected model input '{r.layer}' to be an InputLayer, "
                f"found a {layers[r.layer].class_name}"
            )
        input_specs.append(_input_spec(layers[r.layer], source))
    return ModelSpec(
        name=config.get("name") or "model",
        class_name="Functional",
        layers=layers,
        calls=_topological(calls, {r.layer for r in inputs}, outputs, source),
        inputs=input_specs,
        outputs=outputs,
        keras_version=keras_version,
        source=source,
    )


def _endpoint_list(value) -> list:
    """`input_layers`/`output_layers` leaves in Keras' flattening order: one
    `[layer, node, tensor]`, a list of them, or (Keras 3) a dict, by sorted key."""
    if value is None:
        return []
    if isinstance(value, list) and len(value) == 3 and isinstance(value[0], str):
        return [value]
    if isinstance(value, dict):
        return [leaf for key in sorted(value) for leaf in _endpoint_list(value[key])]
    if isinstance(value, (list, tuple)):
        return [leaf for item in value for leaf in _endpoint_list(item)]
    return [value]  # reported as a bad reference by `ref`


# Keyword arguments that are not part of what a call computes at inference:
# masks are recomputed by propagation (Keras 3 even records them as references
# to ops such as `not_equal` that are not layers of the model).
DROPPED_KWARGS = {"mask", "training"}


def _parse_node(node, ref, layer: LayerSpec, source: str):
    """Return (first-argument refs, passed-as-list, kwargs, extra args) for one node."""
    caller = f" in the inputs of layer '{layer.name}' ({layer.class_name})"
    if isinstance(node, dict):  # Keras 3
        args = node.get("args") or []
        kwargs = node.get("kwargs") or {}
        if not isinstance(args, list) or not isinstance(kwargs, dict):
            raise KerascheckError(f"{source}: layer '{layer.name}' has an unreadable inbound node")
        kwargs = {
            key: _with_refs(value, ref, caller)
            for key, value in kwargs.items()
            if key not in DROPPED_KWARGS
        }
        extra = [_with_refs(value, ref, caller) for value in args[1:]]
        first = _with_refs(args[0], ref, caller) if args else []
        refs = tensor_refs(first)
        plain = isinstance(first, TensorRef) or (
            isinstance(first, list) and all(isinstance(r, TensorRef) for r in first)
        )
        return refs, isinstance(first, list), kwargs, extra, None if plain else first
    if isinstance(node, list):  # Keras 2: [[layer, node, tensor, kwargs], ...]
        # TFOpLambda keeps its first argument's structure: a bare reference for one tensor,
        # a list for a list (tf_keras engine/node.py `serialize`, `_preserve_input_structure`).
        bare = bool(node) and isinstance(node[0], str)
        items = [node] if bare else list(_legacy_entries(node))
        inputs, kwargs, template = [], {}, []
        for item in items:
            if isinstance(item, list) and item and item[0] == "_CONSTANT_VALUE":
                # tf_keras writes a constant first argument (`2.0 - x`) in place of a tensor
                template.append(item[2] if len(item) > 2 else None)
            else:
                inputs.append(ref(item, endpoint=False, caller=caller))
                template.append(inputs[-1])
            extra = item[3] if len(item) > 3 and isinstance(item[3], dict) else {}
            for key, value in extra.items():
                if key not in DROPPED_KWARGS:
                    kwargs[key] = _legacy_with_refs(value, ref, caller)
        as_list = len(template) > 1 or (layer.class_name in TF_OP_LAYERS and not bare)
        first = None
        if len(inputs) < len(template):  # some constants: keep the argument's structure
            first = template if as_list else template[0]
        return inputs, as_list, kwargs, [], first
    raise KerascheckError(f"{source}: layer '{layer.name}' has an unreadable inbound node")


def _legacy_entries(node: list):
    """Keras 2 node entries, flattened: nested initial states of stacked RNN cells are
    written as nested lists (`[[x...], [h1...], [[h2...], [c2...]]]`)."""
    for item in node:
        if isinstance(item, list) and item and isinstance(item[0], list):
            yield from _legacy_entries(item)
        else:
            yield item


def _with_refs(value, ref, caller: str):
    """A Keras 3 argument with `__keras_tensor__` entries turned into TensorRefs."""
    if isinstance(value, dict) and value.get("class_name") == "__keras_tensor__":
        history = (value.get("config") or {}).get("keras_history")
        return ref(history, endpoint=False, caller=caller)
    if isinstance(value, dict) and value.get("class_name") == "__slice__":
        inner = value.get("config") or {}
        parts = (inner.get(k) for k in ("start", "stop", "step"))
        return slice(*(_with_refs(part, ref, caller) for part in parts))
    if _is_ellipsis(value):
        return Ellipsis
    if isinstance(value, dict):
        return {key: _with_refs(item, ref, caller) for key, item in value.items()}
    if isinstance(value, list):
        return [_with_refs(item, ref, caller) for item in value]
    return value


def _legacy_with_refs(value, ref, caller: str):
    """A Keras 2 keyword argument: tensors are written as `[layer, node, tensor]`."""
    if _is_legacy_ref(value):
        return ref(value, endpoint=False, caller=caller)
    if _is_ellipsis(value):  # what tf_keras' json_utils decodes to `...` on loading
        return Ellipsis
    if isinstance(value, list):
        return [_legacy_with_refs(item, ref, caller) for item in value]
    if isinstance(value, dict):
        return {key: _legacy_with_refs(item, ref, caller) for key, item in value.items()}
    return value


def _is_ellipsis(value) -> bool:
    return isinstance(value, dict) and value.get("class_name") == "__ellipsis__"


def _is_legacy_ref(value) -> bool:
    return (
        isinstance(value, list)
        and len(value) in (3, 4)
        and isinstance(value[0], str)
        and all(isinstance(i, int) and not isinstance(i, bool) for i in value[1:3])
    )


def _tensor_refs(value, ref, caller: str) -> list[TensorRef]:
    if isinstance(value, dict) and value.get("class_name") == "__keras_tensor__":
        history = (value.get("config") or {}).get("keras_history")
        return [ref(history, endpoint=False, caller=caller)]
    if isinstance(value, (list, tuple)):
        return [r for item in value for r in _tensor_refs(item, ref, caller)]
    return []


def _topological(
    calls: list[CallSpec], input_layers: set[str], outputs: list[TensorRef], source: str
) -> list[CallSpec]:
    """Order calls so each comes after its producers, keeping config order otherwise, and
    check that every model output is produced."""
    available = {(name, 0) for name in input_layers}
    ordered, pending = [], list(calls)
    while pending:  # config order is already topological in files Keras writes: O(n) then
        position = next(
            (
                i
                for i, c in enumerate(pending)
                if all((r.layer, r.call) in available for r in c.refs)
            ),
            None,
        )
        if position is None:
            stuck = pending[0]
            waiting = [
                f"{r.layer}[{r.call}]" for r in stuck.refs if (r.layer, r.call) not in available
            ]
            raise KerascheckError(
                f"{source}: expected every layer input to be produced by a call, found layer "
                f"'{stuck.layer}' waiting for {waiting}, which no call produces"
            )
        call = pending.pop(position)
        ordered.append(call)
        available.add((call.layer, call.index))
    missing = [f"{r.layer}[{r.call}]" for r in outputs if (r.layer, r.call) not in available]
    if missing:
        raise KerascheckError(
            f"{source}: expected the model outputs to be produced by its layers, found "
            f"{missing} produced by no call"
        )
    return ordered
