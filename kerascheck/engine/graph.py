"""Walks a ModelSpec's calls in order and computes every call's output (and mask)."""

from __future__ import annotations

import inspect

import numpy as np

from ..errors import KerascheckError
from ..loading.spec import CallSpec, ModelSpec, TensorRef, release_schedule, resolve
from .base import Context, Layer
from .fusion import folds, in_place
from .registry import create_layer


class Graph:
    """The engine's executable form of one (possibly nested) model.

    Masks travel beside values as Keras propagates them: a layer that computes
    one (Embedding with `mask_zero`, Masking) starts it, layers that support
    masking pass it on (`compute_mask`), layers whose `call` takes `mask` (or
    `<arg>_mask` for several tensor arguments) receive it.
    """

    def __init__(self, spec: ModelSpec, context: Context):
        self.spec = spec
        self.context = context
        self.layers = {
            name: _create(layer, context)
            for name, layer in spec.layers.items()
            if layer.class_name != "InputLayer"
        }
        self._released_after = release_schedule(spec)
        self._folds = folds(spec, self.layers)
        self._in_place = in_place(spec, self.layers)

    def run(self, inputs: list[np.ndarray], keep: bool = True, input_masks=None):
        """Return (model outputs, {call name: output}) for one batch.

        With `keep=False` the per-call dict is empty, intermediate values are
        dropped as soon as nothing else needs them, an inference
        BatchNormalization is folded into the layer before it and an activation
        overwrites an input nothing else reads (`fusion`).
        """
        per_call = {}
        for call, output in self.steps(inputs, keep, input_masks, fold=not keep):
            if keep:
                per_call[call.name] = output
        return self.outputs, per_call

    def steps(self, inputs: list[np.ndarray], keep: bool = False, input_masks=None, fold=False):
        """Yield (call, output) for every call in order, each as soon as it is computed.

        Without `keep`, values no later call reads are dropped as the walk goes
        (with `fold`, masks too). When the walk ends, `outputs`, `output_masks` and
        `masks` hold the model outputs, their masks and every call's mask.
        """
        values: dict[tuple[str, int], object] = {
            (spec.name, 0): array for spec, array in zip(self.spec.inputs, inputs)
        }
        masks: dict[tuple[str, int], object] = {
            (spec.name, 0): mask
            for spec, mask in zip(self.spec.inputs, input_masks or [None] * len(inputs))
        }
        self.masks = masks
        passed_on = {}  # BatchNormalization position -> the folded call's key
        for position, call in enumerate(self.spec.calls):
            layer = None
            if fold and position in self._folds:
                pair, norm_position = self._folds[position]
                first = _pick(values, call.inputs[0]) if call.inputs else None
                layer = pair.layer_for(np.ndim(first)) if first is not None else None
                if layer is not None:
                    passed_on[norm_position] = (call.layer, call.index)
            if position in passed_on:
                key = passed_on.pop(position)
                output, mask = values[key], masks[key]
            elif fold and position in self._in_place and self.layers[call.layer].built:
                key = self._in_place[position]
                output = self.layers[call.layer].call_in_place(values[key])
                mask = masks.get(key)
            else:
                output, mask, _ = self._invoke(call, values, masks, None, layer)
            values[(call.layer, call.index)] = output
            masks[(call.layer, call.index)] = mask
            yield call, output
            del output
            if not keep:
                for key in self._released_after[position]:
                    values.pop(key, None)
                    if fold:
                        masks.pop(key, None)
        self.outputs = [_pick(values, ref) for ref in self.spec.outputs]
        self.output_masks = [_pick(masks, ref) for ref in self.spec.outputs]
        if fold:
            self.masks = {}

    def run_call(self, call: CallSpec, values: dict, masks: dict | None = None):
        """Compute one call from the values (and masks) of the tensors it reads.

        Returns (output, output mask). Also used to feed a layer Keras' own inputs.
        """
        output, out_mask, _ = self._invoke(call, values, masks, None)
        return output, out_mask

    def vjp_call(self, call: CallSpec, values: dict, masks: dict | None, training: bool, noise):
        """(output, output mask, backward) of one call; see `Layer.vjp`."""
        return self._invoke(call, values, masks, (training, noise))

    def _invoke(self, call: CallSpec, values: dict, masks: dict | None, differentiate, layer=None):
        layer = layer or self.layers[call.layer]
        masks = masks or {}
        first = [_pick(values, ref) for ref in call.inputs]
        first_mask = [_pick(masks, ref) for ref in call.inputs]
        if call.first is not None:  # constants in the first argument (`2.0 - x`)
            inputs = resolve(call.first, lambda ref: _pick(values, ref))
            mask = None
        else:
            inputs = first if call.as_list else first[0]
            mask = first_mask if call.as_list else first_mask[0]
        if not any(m is not None for m in first_mask):
            mask = None
        args = resolve(call.args, lambda ref: _pick(values, ref))
        kwargs = resolve(call.kwargs, lambda ref: _pick(values, ref))
        shapes = [np.shape(a) for a in first] if call.as_list or not first else first[0].shape
        self._add_masks(layer, call, kwargs, mask, masks)
        try:
            if not layer.built:
                layer.build(shapes)
            backward = None
            if differentiate is None:
                output = layer.call(inputs, *args, **kwargs)
            else:
                training, noise = differentiate
                output, backward = layer.vjp(
                    inputs, *args, training=training, noise=noise, **kwargs
                )
            out_mask = layer.compute_mask(inputs, mask) if layer.supports_masking else None
            return output, out_mask, backward
        except KerascheckError:
            raise
        except Exception as exc:  # numpy's own message, tied to the layer
            raise KerascheckError(
                f"layer '{call.layer}' ({layer.class_name}) cannot compute an output for "
                f"input shape {shapes}: {exc}"
            ) from exc

    @staticmethod
    def _add_masks(layer: Layer, call: CallSpec, kwargs: dict, mask, masks: dict) -> None:
        """Keras' rule: one tensor argument gets `mask`; several get `<name>_mask` each."""
        params = _parameters(type(layer))
        unknown = [k for k in kwargs if k not in params and not _takes_var_kwargs(type(layer))]
        if unknown:
            raise KerascheckError(
                f"layer '{call.layer}' ({layer.class_name}) is called with {unknown[0]!r}, "
                f"which kerascheck's {layer.class_name} does not accept (it accepts "
                f"{sorted(params)})"
            )
        tensor_params = {}
        positional = [p for p in params if p != "self"]
        if positional:
            tensor_params[positional[0]] = mask
        for name, value in zip(positional[1:], call.args):
            if isinstance(value, TensorRef):
                tensor_params[name] = _pick(masks, value)
        for name, value in call.kwargs.items():
            if isinstance(value, TensorRef):
                tensor_params[name] = _pick(masks, value)
        if len(tensor_params) == 1:
            if "mask" in params and kwargs.get("mask") is None:
                kwargs["mask"] = mask
        else:
            for name, value in tensor_params.items():
                if f"{name}_mask" in params and kwargs.get(f"{name}_mask") is None:
                    kwargs[f"{name}_mask"] = value

    def weights_changed(self) -> None:
        """Forget the folded weights: call after changing weights in place (they are
        folded from the values at the first `run(keep=False)`)."""
        for fold, _ in self._folds.values():
            fold.folded.clear()

    def folded_pairs(self) -> list[tuple[str, str]]:
        """(call, BatchNormalization call) pairs `run(keep=False)` has folded so far."""
        return [
            fold.names
            for fold, _ in self._folds.values()
            if any(layer is not None for layer in fold.folded.values())
        ]

    def in_place_calls(self) -> list[str]:
        """Activation calls `run(keep=False)` computes over their input's memory."""
        return [self.spec.calls[position].name for position in sorted(self._in_place)]

    def param_count(self) -> int:
        return sum(layer.param_count() for layer in self.layers.values())


def _pick(values: dict, ref: TensorRef):
    value = values.get((ref.layer, ref.call))
    if isinstance(value, (list, tuple)):
        return value[ref.tensor]
    return value


_SIGNATURES: dict[type, tuple[list[str], bool]] = {}


def _signature(cls: type) -> tuple[list[str], bool]:
    if cls not in _SIGNATURES:
        parameters = list(inspect.signature(cls.call).parameters.values())
        names = [p.name for p in parameters if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        var_kw = any(p.kind == p.VAR_KEYWORD for p in parameters)
        _SIGNATURES[cls] = (names, var_kw)
    return _SIGNATURES[cls]


def _parameters(cls: type) -> list[str]:
    return _signature(cls)[0]


def _takes_var_kwargs(cls: type) -> bool:
    return _signature(cls)[1]


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
