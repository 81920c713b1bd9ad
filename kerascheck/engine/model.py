"""The engine's model: a Graph plus input checks, shape probing and batching."""

from __future__ import annotations

import math
import warnings

import numpy as np

from ..errors import KerascheckError
from ..inputs import check_inputs
from ..limits import check_bytes, clip
from ..loading.spec import ModelSpec
from .allocator import keep_freed_memory
from .base import Context
from .graph import Graph

PROBE_SIZES = (32, 64)


class EngineModel:
    """A saved model rebuilt in NumPy. `predict` and `run` never touch TensorFlow."""

    def __init__(self, spec: ModelSpec, dtype="float32"):
        keep_freed_memory()
        self.spec = spec
        self.context = Context(keras_major=spec.keras_major, dtype=np.dtype(dtype))
        self.graph = Graph(spec, self.context)
        self.output_shapes = self._probe_shapes()

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self.spec.inputs]

    def predict(self, x, batch_size: int | None = None):
        """Model outputs: one array, or a list for a model with several outputs.

        An inference BatchNormalization is folded into the layer before it from the
        weights as they are at the first call; after changing weights in place, call
        `graph.weights_changed()`."""
        outputs = self._batched(x, batch_size, keep=False)[0]
        return outputs[0] if len(outputs) == 1 else outputs

    def run(self, x, batch_size: int | None = None) -> dict:
        """Every layer call's output, keyed by call name (`layer`, `layer#1`, ...)."""
        return self._batched(x, batch_size, keep=True)[1]

    def _batched(self, x, batch_size, keep):
        if not self.spec.values:
            raise KerascheckError(
                f"{self.spec.source or self.spec.name}: read for its weights' shapes only "
                "(values=False); expected a model read with its weights to run it"
            )
        arrays = check_inputs(self.spec, x, self.context.dtype)
        total = arrays[0].shape[0]
        step = batch_size or total or 1
        pieces = [
            self.graph.run([a[start : start + step] for a in arrays], keep=keep)
            for start in range(0, max(total, 1), step)
        ]
        if len(pieces) == 1:
            return pieces[0]
        outputs = [np.concatenate(parts) for parts in zip(*(p[0] for p in pieces))]
        per_call = {name: _concat([p[1][name] for p in pieces]) for name in pieces[0][1]}
        return outputs, per_call

    def _probe_shapes(self) -> dict[str, tuple]:
        """Output shape of every call, batch as None, found by running a probe batch.

        Variable sizes (None in the input spec) are probed with two sizes; the
        dimensions that change with them are reported as None.
        """
        # An empty batch gives every shape without arithmetic (or touching weights that
        # are zero placeholders, with values=False): 0.22 s less for ResNet50 at
        # 224x224. A model with a layer that cannot take one gets a one-sample probe.
        try:
            with warnings.catch_warnings(), np.errstate(all="ignore"):
                warnings.simplefilter("ignore", RuntimeWarning)  # a mean of no samples
                return self._probe_batch(0)
        except KerascheckError:
            return self._probe_batch(1)

    def _probe_batch(self, batch: int) -> dict[str, tuple]:
        variable = any(d is None for i in self.spec.inputs for d in i.shape)
        runs = []
        for size in PROBE_SIZES[: 2 if variable else 1]:
            for i in self.spec.inputs:  # a config can declare any size: check before allocating
                dims = (1, *(size if d is None else d for d in i.shape))
                check_bytes(math.prod(dims) * 4, f"input '{clip(i.name)}'", dims)
            probe = [
                np.zeros(
                    (batch, *(size if d is None else d for d in i.shape)),
                    dtype=_probe_dtype(i.dtype),
                )
                for i in self.spec.inputs
            ]
            runs.append(self.graph.run(probe, keep=True)[1])
        shapes = {}
        for name, value in runs[0].items():
            first = _shapes(value)
            others = [_shapes(run[name]) for run in runs[1:]]
            shapes[name] = _merge(first, others)
        return shapes

    def param_count(self) -> int:
        return self.graph.param_count()


def _probe_dtype(dtype: str):
    if dtype == "string":  # StringLookup inputs: empty strings probe shapes
        return np.str_
    return np.int32 if "int" in dtype else np.float32


def _shapes(value):
    if isinstance(value, (list, tuple)):
        return [tuple(v.shape) for v in value]
    return tuple(value.shape)


def _merge(first, others):
    if isinstance(first, list):
        return [_merge(f, [o[i] for o in others]) for i, f in enumerate(first)]
    dims = [None]
    for axis, size in enumerate(first[1:], start=1):
        same = all(o[axis] == size for o in others)
        dims.append(size if same else None)
    return tuple(dims)


def _concat(values):
    if isinstance(values[0], (list, tuple)):
        return [np.concatenate(parts) for parts in zip(*values)]
    return np.concatenate(values)
