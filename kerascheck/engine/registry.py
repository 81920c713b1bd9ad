"""Every supported Keras class name, mapped to the engine class that computes it."""

from __future__ import annotations

from ..errors import UnsupportedLayerError
from ..loading.spec import LayerSpec
from .base import Context, Layer
from .layers import (
    activations,
    adaptive_pooling,
    applications,
    attention,
    conv,
    core,
    locally_connected,
    merging,
    model,
    normalization,
    pooling,
    preprocessing,
    recurrent,
    reshaping,
    tf_ops,
    wrappers,
)

FAMILIES = (
    core,
    activations,
    attention,
    applications,
    conv,
    locally_connected,
    pooling,
    adaptive_pooling,
    normalization,
    reshaping,
    merging,
    model,
    recurrent,
    wrappers,
    tf_ops,
    preprocessing,
)

REGISTRY: dict[str, type[Layer]] = {
    cls.__name__: cls for family in FAMILIES for cls in family.LAYERS
}
# Keras writes some classes under older or alternative names.
ALIASES = {"Model": "Functional"}


def supported_classes() -> list[str]:
    return sorted(REGISTRY)


def supported_by_family() -> dict[str, list[str]]:
    """{family (the engine module's name): its classes}, for `kerascheck layers`; last,
    the TensorFlow functions a tf_keras TFOpLambda layer may call."""
    families = {
        family.__name__.rsplit(".", 1)[-1].replace("_", " "): sorted(
            cls.__name__ for cls in family.LAYERS
        )
        for family in FAMILIES
    }
    families["tf functions"] = sorted(f"tf.{name}" for name in tf_ops.TF_FUNCTIONS)
    return families


def create_layer(spec: LayerSpec, context: Context) -> Layer:
    cls = REGISTRY.get(ALIASES.get(spec.class_name, spec.class_name))
    if cls is None:
        raise UnsupportedLayerError(
            f"layer '{spec.name}' has class '{spec.class_name}', which kerascheck does not "
            "support; `kerascheck layers` lists the supported classes by family"
        )
    return cls(spec, context)
