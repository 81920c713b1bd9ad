"""A saved model used as a layer inside another model."""

from __future__ import annotations

from ...loading.spec import resolve
from ..base import Layer


def propagate_masks(graph, values: dict, input_masks=None) -> dict:
    """{(layer, call index): the Keras mask of that call's output}, recomputed from a
    forward's values (`Tape.values`) with the rules `Graph._invoke` applies; a nested
    model's masks come from its own graph."""
    from ..graph import _pick

    inputs = graph.spec.inputs
    masks = {(i.name, 0): m for i, m in zip(inputs, input_masks or [None] * len(inputs))}
    for call in graph.spec.calls:
        layer = graph.layers[call.layer]
        first = [_pick(values, ref) for ref in call.inputs]
        first_mask = [_pick(masks, ref) for ref in call.inputs]
        mask = first_mask if call.as_list else (first_mask[0] if first_mask else None)
        if call.first is not None or not any(m is not None for m in first_mask):
            mask = None
        if call.first is not None:
            argument = resolve(call.first, lambda ref: _pick(values, ref))
        else:
            argument = first if call.as_list else (first[0] if first else None)
        out = None
        if isinstance(layer, Functional):
            arrays = argument if isinstance(argument, list) else [argument]
            nested = mask if isinstance(mask, list) else [mask] * len(arrays)
            out = layer.output_masks_for(arrays, nested)
        elif layer.supports_masking:
            out = layer.compute_mask(argument, mask)
        masks[(call.layer, call.index)] = out
    return masks


class Functional(Layer):
    """Runs the nested model's own graph; its weights are checked layer by layer.

    Masks cross the boundary as in Keras: the caller's mask enters at the
    nested model's inputs and the nested outputs' masks come back out.
    """

    supports_masking = True

    def __init__(self, spec, context):
        self.spec_model = spec.model
        super().__init__(spec, context)

    def setup(self, config):
        from ..graph import Graph  # a nested graph builds layers through the registry

        self.graph = Graph(self.spec_model, self.context)

    def build(self, input_shape):
        self.built = True

    def call(self, inputs, mask=None):
        arrays = inputs if isinstance(inputs, list) else [inputs]
        masks = mask if isinstance(mask, list) else [mask] * len(arrays)
        outputs, _ = self.graph.run(arrays, keep=False, input_masks=masks)
        self._output_masks = self.graph.output_masks
        self._bind_weights()
        return outputs[0] if len(outputs) == 1 else outputs

    def _bind_weights(self):
        """The inner layers' weights as this layer's, `inner/weight`, in Keras' order (the
        nested model's `weights`): the same arrays, so an update reaches the inner layers."""
        if not self.w:
            self.w = {
                f"{name}/{weight}": array
                for name, layer in self.graph.layers.items()
                for weight, array in layer.w.items()
            }

    def trainable_names(self) -> list[str]:
        if self.config.get("trainable", True) is False:
            return []
        return [
            f"{name}/{weight}"
            for name, layer in self.graph.layers.items()
            for weight in layer.trainable_names()
        ]

    def output_masks_for(self, arrays, input_masks) -> list:
        """The nested outputs' masks for these inputs (an inference pass when masked)."""
        if not any(m is not None for m in input_masks) and not _starts_masks(self.graph):
            return self._single([None] * len(self.spec_model.outputs))
        self.graph.run(arrays, keep=False, input_masks=input_masks)
        return self._single(self.graph.output_masks)

    @staticmethod
    def _single(masks):
        return masks[0] if len(masks) == 1 else masks

    def vjp(self, inputs, training=False, noise=None, mask=None):
        """The nested graph's own backward; its weights come back as `inner/weight`."""
        from .. import backprop

        arrays = inputs if isinstance(inputs, list) else [inputs]
        # `noise`: {inner call name: what Keras realized} (the oracle's `_nested_call`)
        masks = mask if isinstance(mask, list) else [mask] * len(arrays)
        tape = backprop.forward(self.graph, arrays, training, noise, input_masks=masks)
        computed = propagate_masks(self.graph, tape.values, masks)
        from ..graph import _pick

        self._output_masks = [_pick(computed, ref) for ref in self.spec_model.outputs]
        self._bind_weights()

        def backward(d_output):
            grads = d_output if isinstance(d_output, list) else [d_output]
            result = backprop.backward(self.graph, tape, grads)
            weights = {
                f"{name}/{weight}": grad
                for name, layer_grads in result.weights.items()
                for weight, grad in layer_grads.items()
            }
            d_inputs = result.model_inputs
            return (d_inputs if isinstance(inputs, list) else d_inputs[0]), weights

        outputs = tape.outputs
        return (outputs[0] if len(outputs) == 1 else outputs), backward

    def compute_mask(self, inputs, mask):
        masks = self._output_masks
        return masks[0] if len(masks) == 1 else masks

    def param_count(self):
        return self.graph.param_count()


def _starts_masks(graph) -> bool:
    """Whether a layer of the graph (or of a graph nested in it) can start a mask."""
    for layer in graph.layers.values():
        if isinstance(layer, Functional):
            if _starts_masks(layer.graph):
                return True
        elif type(layer).compute_mask is not Layer.compute_mask:
            return True
    return False


class Sequential(Functional):
    pass


LAYERS = (Functional, Sequential)
