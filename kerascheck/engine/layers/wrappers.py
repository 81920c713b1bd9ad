"""Wrappers: layers that apply another layer, built from their `layer` sub-config."""

from __future__ import annotations

import numpy as np

from ...loading.config import normalize_layer_config, parse_model_config
from ...loading.safety import MODEL_CLASSES, check_layer_entry
from ...loading.spec import LayerSpec
from ..base import Layer


class TimeDistributed(Layer):
    """The inner layer applied to every time step at once: time is folded into the batch.

    `(batch, time, ...)` becomes `(batch * time, ...)` for one inner call, so
    the inner layer sees what Keras' per-step loop feeds it, and the output is
    unfolded. The flat weight list is the inner layer's. A mask `(batch, time,
    ...)` is folded the same way for an inner layer that takes one. The output
    mask: Keras 3 passes the input mask through (base `Layer.compute_mask`);
    tf_keras (rnn/time_distributed.py `compute_mask`) asks the inner layer and,
    if it gives none, reduces the input mask to `(batch, time)` with `any`.
    """

    supports_masking = True

    def setup(self, config):
        entry = config.get("layer")
        if not isinstance(entry, dict) or not isinstance(entry.get("class_name"), str):
            raise self.error(f"expected a 'layer' entry with a class_name, found {entry!r}")
        check_layer_entry(entry, f"layer '{self.name}'")
        from ..registry import create_layer  # the registry imports this module

        self.inner = create_layer(self.inner_spec(entry), self.context)

    def inner_spec(self, entry: dict) -> LayerSpec:
        config = normalize_layer_config(entry)
        name = f"{self.name}/{config.get('name') or entry['class_name']}"
        if entry["class_name"] not in MODEL_CLASSES:
            return LayerSpec(name, entry["class_name"], config, weights=self.raw_weights)
        source = f"layer '{self.name}' (TimeDistributed)"
        model = parse_model_config(entry, str(self.context.keras_major), source)
        return LayerSpec(name, entry["class_name"], config, model=model)

    def weight_shapes(self, input_shape):
        return self.inner.weight_shapes(child_shape(self, input_shape))

    def build(self, input_shape):
        shape = child_shape(self, input_shape)
        if self.inner.class_name in MODEL_CLASSES:
            feed_nested_weights(self, shape)
        else:
            self.inner.build(shape)
            self.w = self.inner.w  # the inner layer's weights are this layer's
        self.built = True

    def call(self, x, mask=None):
        batch, steps = x.shape[:2]
        kwargs = {}
        if mask is not None and "mask" in _call_parameters(self.inner):
            kwargs["mask"] = fold(mask)
        y = self.inner.call(fold(x), **kwargs)
        return y.reshape(batch, steps, *y.shape[1:])

    def vjp(self, x, training=False, noise=None, mask=None):
        """The inner layer's backward on the folded batch, unfolded; a `pre_activation`
        backward (and its `logits`) of the inner layer is passed on the same way."""
        batch, steps = x.shape[:2]
        kwargs = {}
        if mask is not None and "mask" in _call_parameters(self.inner):
            kwargs["mask"] = fold(mask)
        y, inner_backward = self.inner.vjp(fold(x), training=training, noise=noise, **kwargs)

        def unfolded(step):
            def backward(d_output):
                result = step(fold(d_output))
                if len(result) > 2:
                    raise self.error(
                        "the wrapped layer reads further tensor arguments; kerascheck's "
                        "backward does not cover them inside TimeDistributed"
                    )
                dx, grads = result
                return (None if dx is None else dx.reshape(x.shape)), grads

            return backward

        backward = unfolded(inner_backward)
        if getattr(inner_backward, "pre_activation", None) is not None:
            backward.pre_activation = unfolded(inner_backward.pre_activation)
            backward.activation = inner_backward.activation
            logits = inner_backward.logits
            backward.logits = logits.reshape(batch, steps, *logits.shape[1:])
        return y.reshape(batch, steps, *y.shape[1:]), backward

    def compute_mask(self, inputs, mask):
        if self.context.keras_major >= 3:
            return mask
        folded = fold(mask) if mask is not None else None
        inner = (
            self.inner.compute_mask(fold(inputs), folded) if self.inner.supports_masking else None
        )
        if inner is None:
            if mask is None:
                return None
            return np.any(mask, axis=tuple(range(2, mask.ndim))) if mask.ndim > 2 else mask
        return inner.reshape(*inputs.shape[:2], *inner.shape[1:])


def child_shape(layer: Layer, input_shape) -> tuple:
    """The inner layer's input shape: batch and time merged, as in one inner call."""
    if isinstance(input_shape, list) or len(input_shape) < 3:
        raise layer.error(
            f"expects one input of rank >= 3 (batch, time, ...), found shape {input_shape}"
        )
    return (input_shape[0] * input_shape[1], *input_shape[2:])


def fold(x: np.ndarray) -> np.ndarray:
    return x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])


def _call_parameters(layer: Layer) -> list[str]:
    from ..graph import _parameters  # the graph imports the registry, which imports us

    return _parameters(type(layer))


def feed_nested_weights(layer: TimeDistributed, shape: tuple) -> None:
    """Hand the wrapper's flat weight list to the nested model's layers and build them.

    The loaders give the weights in Keras' per-layer order (each layer's own
    list, layers in model order); how many each layer takes follows from its
    input shape, so the nested graph is run once on zeros, and each layer takes
    its share from the front of the list the moment it is first built.
    """
    graph = layer.inner.graph
    pending = list(layer.raw_weights)
    for inner in graph.layers.values():
        if inner.class_name in MODEL_CLASSES:
            raise layer.error(
                f"wraps a model that contains the model '{inner.name}'; kerascheck supports "
                "one level of models inside TimeDistributed"
            )

    def builder(inner: Layer):
        def build(input_shape):
            count = len(inner.weight_shapes(input_shape))
            inner.raw_weights, pending[:] = pending[:count], pending[count:]
            type(inner).build(inner, input_shape)

        return build

    for inner in graph.layers.values():
        inner.build = builder(inner)
    try:
        graph.run(
            [np.zeros((1, *shape[1:]), dtype=_dtype(i.dtype, layer)) for i in graph.spec.inputs],
            keep=False,
        )
    finally:
        for inner in graph.layers.values():
            del inner.build
    if pending:
        raise layer.error(
            f"the file holds {len(layer.raw_weights)} weights, but the nested model "
            f"'{layer.inner.name}' uses only {len(layer.raw_weights) - len(pending)}"
        )


def _dtype(dtype: str, layer: Layer):
    return np.int32 if "int" in dtype else layer.context.dtype


LAYERS = (TimeDistributed,)
