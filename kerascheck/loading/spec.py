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


@dataclass
class CallSpec:
    """One call of a layer (a Keras "node").

    `inputs` are the tensors passed positionally; `as_list` tells whether they
    were passed as one list (merge layers) or as a single tensor.
    """

    layer: str
    index: int
    inputs: list[TensorRef]
    as_list: bool = False
    kwargs: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        """Row name in reports: `layer` for the first call, `layer#1` after."""
        return self.layer if self.index == 0 else f"{self.layer}#{self.index}"


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

    @property
    def keras_major(self) -> int:
        try:
            return int(str(self.keras_version).split(".")[0])
        except ValueError:
            return 3
