"""A saved model used as a layer inside another model."""

from __future__ import annotations

from ..base import Layer


class Functional(Layer):
    """Runs the nested model's own graph; its weights are checked layer by layer."""

    def setup(self, config):
        from ..graph import Graph  # a nested graph builds layers through the registry

        self.graph = Graph(self.spec_model, self.context)

    def __init__(self, spec, context):
        self.spec_model = spec.model
        super().__init__(spec, context)

    def build(self, input_shape):
        self.built = True

    def call(self, inputs):
        arrays = inputs if isinstance(inputs, list) else [inputs]
        outputs, _ = self.graph.run(arrays, keep=False)
        return outputs[0] if len(outputs) == 1 else outputs

    def param_count(self):
        return self.graph.param_count()


class Sequential(Functional):
    pass


LAYERS = (Functional, Sequential)
