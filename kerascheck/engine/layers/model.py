"""A saved model used as a layer inside another model."""

from __future__ import annotations

from ..base import Layer


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

    def vjp(self, inputs, training=False, noise=None, mask=None):
        """The nested graph's own backward; its weights come back as `inner/weight`."""
        from .. import backprop

        arrays = inputs if isinstance(inputs, list) else [inputs]
        tape = backprop.forward(self.graph, arrays, training)
        self._output_masks = [None] * len(tape.outputs)
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


class Sequential(Functional):
    pass


LAYERS = (Functional, Sequential)
