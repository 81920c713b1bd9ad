"""Plain data describing a saved model, independent of the Keras dialect.

Everything downstream (engine, oracle, reports) reads these classes only, so
Keras 2 vs Keras 3 and `.keras` vs `.h5` differences end in `loading/`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class TensorRef:
    """One tensor in a model graph: output `tensor` of call `call` of `layer`."""

    layer: str
    call: int = 0
    tensor: int = 0

    @property
    def name(self) -> str:
        """`layer`, `layer#1` for a layer's second call, `layer[1]` for its second output
        (the names reports and `.npz` keys use)."""
        name = self.layer if self.call == 0 else f"{self.layer}#{self.call}"
        return name if self.tensor == 0 else f"{name}[{self.tensor}]"


@dataclass
class CallSpec:
    """One call of a layer (a Keras "node").

    `inputs` are the tensors of the first positional argument; `as_list` tells
    whether that argument was a list (merge layers) or a single tensor. Further
    positional arguments (`args`) and keyword arguments (`kwargs`) keep their
    structure, with tensors written as TensorRef. `mask` and `training` are not
    kept: masks are recomputed by propagation, and every run is inference.
    """

    layer: str
    index: int
    inputs: list[TensorRef]
    as_list: bool = False
    kwargs: dict = field(default_factory=dict)
    args: list = field(default_factory=list)
    # The first argument's template when it holds constants (`2.0 - x`); None when
    # it is exactly `inputs` (one tensor, or a list of tensors).
    first: object = None

    @property
    def name(self) -> str:
        """Row name in reports: `layer` for the first call, `layer#1` after."""
        return self.layer if self.index == 0 else f"{self.layer}#{self.index}"

    @property
    def refs(self) -> list[TensorRef]:
        """Every tensor the call reads, the first argument's first."""
        return [*self.inputs, *tensor_refs(self.args), *tensor_refs(self.kwargs)]


def tensor_refs(value) -> list[TensorRef]:
    """TensorRefs inside nested lists, tuples and dicts, in order."""
    if isinstance(value, TensorRef):
        return [value]
    if isinstance(value, dict):
        return [r for item in value.values() for r in tensor_refs(item)]
    if isinstance(value, (list, tuple)):
        return [r for item in value for r in tensor_refs(item)]
    return []


def release_schedule(spec: ModelSpec) -> list[list[tuple[str, int]]]:
    """For each call position, the values (layer, call index) no later call reads and
    that are not model outputs: what a walk over the calls can drop after that call.
    A call's output that nothing reads is dropped right after the call."""
    last = {}
    for position, call in enumerate(spec.calls):
        for ref in call.refs:
            last[(ref.layer, ref.call)] = position
        last.setdefault((call.layer, call.index), position)
    for ref in spec.outputs:
        last[(ref.layer, ref.call)] = len(spec.calls)
    schedule = [[] for _ in spec.calls]
    for key, position in last.items():
        if position < len(schedule):
            schedule[position].append(key)
    return schedule


def resolve(value, lookup):
    """`value` with every TensorRef replaced by `lookup(ref)`, structure kept."""
    if isinstance(value, TensorRef):
        return lookup(value)
    if isinstance(value, dict):
        return {key: resolve(item, lookup) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [resolve(item, lookup) for item in value]
    return value


@dataclass
class LayerSpec:
    """A layer: its Keras class name, normalized config and weights in Keras order."""

    name: str
    class_name: str
    config: dict
    weights: list[np.ndarray] = field(default_factory=list)
    model: ModelSpec | None = None  # set for a nested model used as a layer


@dataclass
class InputSpec:
    name: str
    shape: tuple  # without the batch dimension; None for variable sizes
    dtype: str = "float32"


@dataclass
class ModelSpec:
    name: str
    class_name: str
    layers: dict[str, LayerSpec]
    calls: list[CallSpec]  # in execution (topological) order, input layers excluded
    inputs: list[InputSpec]
    outputs: list[TensorRef]
    keras_version: str = "3"
    source: str = ""
    # How the file was compiled, when it was: {"loss", "loss_weights", "optimizer",
    # "where"}, read as plain JSON (nothing in it is deserialized or run here).
    training: dict | None = None
    # False when read with `read_model(values=False)`: weights are zeros of the
    # stored shapes, good for shapes and counts, never for running.
    values: bool = True

    @property
    def output_names(self) -> list[str]:
        return [ref.name for ref in self.outputs]

    @property
    def keras_major(self) -> int:
        try:
            return int(str(self.keras_version).split(".")[0])
        except ValueError:
            return 3
