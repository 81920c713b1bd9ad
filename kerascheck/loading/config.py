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

from ..errors import KerascheckError
from .safety import MODEL_CLASSES, check_layer_entry
from .spec import CallSpec, InputSpec, LayerSpec, ModelSpec, TensorRef


def parse_model_config(model_config: dict, keras_version: str, source: str = "") -> ModelSpec:
    """Parse a `{"class_name": ..., "config": ...}` model entry into a ModelSpec."""
    if not isinstance(model_config, dict) or "class_name" not in model_config:
        raise KerascheckError(
            f"{source}: expected a Keras model config with a 'class_name', "
            f"found {type(model_config).__name__}"
        )
    class_name = model_config["class_name"]
    config = model_config.get("config") or {}
    keras2 = str(keras_version).startswith("2") or str(keras_version).startswith("1")
    if class_name == "Sequential":
        return _parse_sequential(config, keras_version, source)
    if class_name in ("Functional", "Model"):
        return _parse_functional(config, class_name, keras_version, keras2, source)
    raise KerascheckError(
        f"{source}: expected a Sequential or Functional model, found a '{class_name}' "
        "(subclassed models cannot be rebuilt without their Python code)"
    )


def normalize_layer_config(entry: dict) -> dict:
    """Config values in one dialect: dtype policy dicts become their name."""
    config = dict(entry.get("config") or {})
    dtype = config.get("dtype")
    if isinstance(dtype, dict):
        config["dtype"] = (dtype.get("config") or {}).get("name", "float32")
    if entry.get("class_name") == "InputLayer":
        shape = config.get("batch_shape") or config.get("batch_input_shape")
        if shape is None and config.get("shape") is not None:
            shape = [None, *config["shape"]]
        config["batch_shape"] = tuple(shape) if shape is not None else None
        config.pop("batch_input_shape", None)
    return config


def _make_layer(entry: dict, keras_version: str, source: str) -> LayerSpec:
    check_layer_entry(entry)
    config = normalize_layer_config(entry)
    name = config.get("name") or entry.get("name")
    layer = LayerSpec(name=name, class_name=entry["class_name"], config=config)
    if entry["class_name"] in MODEL_CLASSES:
        layer.model = parse_model_config(entry, keras_version, source)
        layer.model.name = name
    return layer


def _input_spec(layer: LayerSpec) -> InputSpec:
    shape = layer.config.get("batch_shape")
    if shape is None:
        raise KerascheckError(f"input layer '{layer.name}' has no shape in its config")
    return InputSpec(layer.name, tuple(shape[1:]), str(layer.config.get("dtype") or "float32"))


def _parse_sequential(config: dict, keras_version: str, source: str) -> ModelSpec:
    entries = config.get("layers") if isinstance(config, dict) else config
    if not entries:
        raise KerascheckError(f"{source}: the Sequential model has no layers")
    layers = [_make_layer(e, keras_version, source) for e in entries]
    if layers[0].class_name != "InputLayer":
        first = entries[0].get("config", {})
        shape = first.get("batch_input_shape") or first.get("batch_shape")
        if shape is None:
            shape = (config.get("build_input_shape") if isinstance(config, dict) else None)
        if shape is None:
            raise KerascheckError(
                f"{source}: the Sequential model has no input shape (it was never built)"
            )
        dtype = first.get("dtype") if isinstance(first.get("dtype"), str) else "float32"
        layers.insert(
            0,
            LayerSpec(
                name=f"{config.get('name', 'sequential')}_input",
                class_name="InputLayer",
                config={"batch_shape": tuple(shape), "dtype": dtype},
            ),
        )
    calls = []
    previous = TensorRef(layers[0].name)
    for layer in layers[1:]:
        calls.append(CallSpec(layer.name, 0, [previous]))
        previous = TensorRef(layer.name)
    return ModelSpec(
        name=config.get("name", "sequential"),
        class_name="Sequential",
        layers={layer.name: layer for layer in layers},
        calls=calls,
        inputs=[_input_spec(layers[0])],
        outputs=[previous],
        keras_version=keras_version,
        source=source,
    )


def _parse_functional(
    config: dict, class_name: str, keras_version: str, keras2: bool, source: str
) -> ModelSpec:
    entries = config.get("layers") or []
    layers = {}
    for entry in entries:
        layer = _make_layer(entry, keras_version, source)
        if layer.name in layers:
            raise KerascheckError(f"{source}: two layers are named '{layer.name}'")
        layers[layer.name] = layer

    def is_nested_model(name: str) -> bool:
        return name in layers and layers[name].class_name in MODEL_CLASSES

    def ref(layer: str, node: int, tensor: int, endpoint: bool) -> TensorRef:
        if layer not in layers:
            raise KerascheckError(
                f"{source}: the model config refers to a layer '{layer}' it does not define"
            )
        shifted = is_nested_model(layer) and (
            keras2 or (endpoint and layers[layer].class_name != "Sequential")
        )
        return TensorRef(layer, node - 1 if shifted else node, tensor)

    calls = []
    for entry in entries:
        name = entry.get("config", {}).get("name") or entry.get("name")
        for index, node in enumerate(entry.get("inbound_nodes") or []):
            inputs, as_list, kwargs = _parse_node(node, ref, name, source)
            calls.append(CallSpec(name, index, inputs, as_list, kwargs))

    def endpoints(key: str) -> list[TensorRef]:
        value = config.get(key) or []
        if value and isinstance(value[0], str):  # a single [layer, node, tensor]
            value = [value]
        return [ref(v[0], v[1], v[2], endpoint=True) for v in value]

    inputs = endpoints("input_layers")
    outputs = endpoints("output_layers")
    input_specs = []
    for r in inputs:
        if layers[r.layer].class_name != "InputLayer":
            raise KerascheckError(f"{source}: model input '{r.layer}' is not an InputLayer")
        input_specs.append(_input_spec(layers[r.layer]))
    return ModelSpec(
        name=config.get("name", "model"),
        class_name="Functional",
        layers=layers,
        calls=_topological(calls, {r.layer for r in inputs}, source),
        inputs=input_specs,
        outputs=outputs,
        keras_version=keras_version,
        source=source,
    )


def _parse_node(node, ref, layer_name: str, source: str):
    """Return (input refs, passed-as-list, constant kwargs) for one inbound node."""
    if isinstance(node, dict):  # Keras 3
        args = node.get("args") or []
        kwargs = {}
        for key, value in (node.get("kwargs") or {}).items():
            if _tensor_refs(value, ref):
                raise KerascheckError(
                    f"layer '{layer_name}' is called with a tensor for '{key}', "
                    "which kerascheck does not support yet"
                )
            kwargs[key] = value
        if len(args) != 1:
            if any(_tensor_refs(a, ref) for a in args[1:]):
                raise KerascheckError(
                    f"layer '{layer_name}' is called with {len(args)} positional tensors; "
                    "expected one tensor or one list of tensors"
                )
        first = args[0] if args else []
        as_list = isinstance(first, list)
        return _tensor_refs(first, ref), as_list, kwargs
    if isinstance(node, list):  # Keras 2
        inputs, kwargs = [], {}
        for item in node:
            inputs.append(ref(item[0], item[1], item[2], endpoint=False))
            if len(item) > 3 and isinstance(item[3], dict):
                kwargs.update(item[3])
        return inputs, len(inputs) > 1, kwargs
    raise KerascheckError(f"{source}: layer '{layer_name}' has an unreadable inbound node")


def _tensor_refs(value, ref) -> list[TensorRef]:
    if isinstance(value, dict) and value.get("class_name") == "__keras_tensor__":
        history = value["config"]["keras_history"]
        return [ref(history[0], history[1], history[2], endpoint=False)]
    if isinstance(value, list):
        return [r for item in value for r in _tensor_refs(item, ref)]
    return []


def _topological(calls: list[CallSpec], input_layers: set[str], source: str) -> list[CallSpec]:
    """Order calls so each comes after its producers, keeping config order otherwise."""
    available = {(name, 0) for name in input_layers}
    ordered, pending = [], list(calls)
    while pending:
        for position, call in enumerate(pending):
            if all((r.layer, r.call) in available for r in call.inputs):
                break
        else:
            stuck = pending[0]
            waiting = [r.layer for r in stuck.inputs if (r.layer, r.call) not in available]
            raise KerascheckError(
                f"{source}: cannot order the model graph; layer '{stuck.layer}' waits for "
                f"{waiting}, which no call produces"
            )
        ordered.append(pending.pop(position))
        available.add((call.layer, call.index))
    return ordered
