"""Walks a ModelSpec's calls in order and computes every call's output."""

from __future__ import annotations

import numpy as np

from ..errors import KerascheckError
from ..loading.spec import CallSpec, ModelSpec, TensorRef
from .base import Context
from .registry import create_layer


class Graph:
    """The engine's executable form of one (possibly nested) model."""

    def __init__(self, spec: ModelSpec, context: Context):
        self.spec = spec
        self.context = context
        self.layers = {
            name: _create(layer, context)
            for name, layer in spec.layers.items()
            if layer.class_name != "InputLayer"
        }

    def run(self, inputs: list[np.ndarray], keep: bool = True):
        """Return (model outputs, {call name: output}) for one batch.

        With `keep=False` the per-call dict is empty and intermediate values are
        dropped as soon as nothing else needs them.
        """
        values: dict[tuple[str, int], object] = {
            (spec.name, 0): array for spec, array in zip(self.spec.inputs, inputs)
        }
        per_call = {}
        needed = self._last_use() if not keep else {}
        for position, call in enumerate(self.spec.calls):
            args = [self._tensor(values, ref) for ref in call.inputs]
            output = self.run_call(call, args)
            values[(call.layer, call.index)] = output
            if keep:
                per_call[call.name] = output
            else:
                for key in [k for k, last in needed.items() if last == position]:
                    values.pop(key, None)
        outputs = [self._tensor(values, ref) for ref in self.spec.outputs]
        return outputs, per_call

    def run_call(self, call: CallSpec, args: list[np.ndarray]):
        """Compute one call from its input arrays (used for "own" layer errors too)."""
        layer = self.layers[call.layer]
        inputs = args if call.as_list else args[0]
        shapes = [a.shape for a in args] if call.as_list else args[0].shape
        try:
            if not layer.built:
                layer.build(shapes)
            return layer.call(inputs)
        except KerascheckError:
            raise
        except Exception as exc:  # numpy's own message, tied to the layer
            raise KerascheckError(
                f"layer '{call.layer}' ({layer.class_name}) cannot compute an output for "
                f"input shape {shapes}: {exc}"
            ) from exc

    @staticmethod
    def _tensor(values: dict, ref: TensorRef):
        value = values[(ref.layer, ref.call)]
        if isinstance(value, (list, tuple)):
            return value[ref.tensor]
        return value

    def _last_use(self) -> dict[tuple[str, int], int]:
        """For each produced value, the position of the last call that reads it."""
        last = {}
        for position, call in enumerate(self.spec.calls):
            for ref in call.inputs:
                last[(ref.layer, ref.call)] = position
        for ref in self.spec.outputs:
            last[(ref.layer, ref.call)] = len(self.spec.calls)
        return last

    def param_count(self) -> int:
        return sum(layer.param_count() for layer in self.layers.values())


def _create(spec, context: Context):
    """A layer config no Keras writes (e.g. `units: "abc"`) is the file's fault: name it."""
    try:
        return create_layer(spec, context)
    except KerascheckError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        raise KerascheckError(
            f"layer '{spec.name}' ({spec.class_name}): expected a config Keras writes, "
            f"found one it cannot be built from ({type(exc).__name__}: {exc})"
        ) from exc
