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
        return outputs[0] if len(outputs) == 1 else outputs

    def compute_mask(self, inputs, mask):
        masks = self._output_masks
        return masks[0] if len(masks) == 1 else masks

    def param_count(self):
        return self.graph.param_count()


class Sequential(Functional):
    pass


LAYERS = (Functional, Sequential)
