"""The base class every engine layer derives from.

A layer reads its Keras config once in `setup` (into plain tuples and
strings), declares the weights it expects in Keras order in `weight_shapes`,
and computes its output in `call`. `build` checks the file's weights against
the declaration so a wrong file fails by name, before any arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import KerascheckError
from ..loading.spec import LayerSpec


@dataclass(frozen=True)
class Context:
    """What layers need to know about the model as a whole."""

    keras_major: int = 3
    dtype: np.dtype = np.dtype("float32")


class Layer:
    """One Keras layer class. Subclasses are named exactly as Keras names them.

    `supports_masking` mirrors Keras: when True the layer's output carries a
    mask from `compute_mask` (by default the input's mask, unchanged); when
    False any incoming mask stops here. A layer that *uses* a mask takes a
    `mask` argument in `call`.
    """

    supports_masking = False

    def __init__(self, spec: LayerSpec, context: Context):
        self.name = spec.name
        self.class_name = spec.class_name
        self.config = spec.config
        self.context = context
        self.raw_weights = spec.weights
        self.w: dict[str, np.ndarray] = {}
        self.built = False
        self.setup(spec.config)

    # -- to override -------------------------------------------------------
    def setup(self, config: dict) -> None:
        """Normalize the config into attributes; called once."""

    def weight_shapes(self, input_shape) -> list[tuple[str, tuple]]:
        """(name, shape) of each weight in Keras order, given the input shape(s)."""
        return []

    def call(self, inputs):
        raise NotImplementedError

    def compute_mask(self, inputs, mask):
        """The output's mask; Keras' default passes the input's mask through."""
        return mask

    def vjp(self, inputs, *args, training: bool = False, noise=None, **kwargs):
        """The call's output and its backward (vector-Jacobian product).

        Returns `(output, backward)`; `backward(d_output)` returns
        `(d_inputs, d_weights)`: `d_inputs` shaped like `inputs` (an array, or a
        list for list inputs; None for an input without a gradient, such as
        integer indices), `d_weights` a dict of the *trainable* weights'
        gradients by weight name. `training=True` computes what `fit` computes
        (batch statistics, active dropout); `noise` is the dropout mask Keras
        realized, for the layers that draw one (`uses_noise`).

        A layer with an `activation` composes its pre-activation backward with
        `activations.backward` via `with_activation`; the returned `backward`
        then has a `pre_activation` attribute the loss may call directly (the
        logits path of cross-entropy).
        """
        raise self.error(
            "kerascheck has no backward pass for this layer class yet; "
            f"`grad` cannot differentiate through {self.class_name}"
        )

    uses_noise = False  # True for layers whose training-mode output draws a random mask
    # Weights Keras never trains (statistics kept by the layer itself).
    non_trainable = ("moving_mean", "moving_variance")

    def trainable_names(self) -> list[str]:
        """The weights an optimizer updates (none for a layer saved `trainable: false`)."""
        if frozen(self):
            return []
        return [name for name in self.w if name not in self.non_trainable]

    # -- shared machinery --------------------------------------------------
    def build(self, input_shape) -> None:
        """Check the stored weights against the config and bind them by name."""
        expected = self.weight_shapes(input_shape)
        found = [tuple(w.shape) for w in self.raw_weights]
        wanted = [tuple(shape) for _, shape in expected]
        if found != wanted:
            described = ", ".join(f"{n}{tuple(s)}" for n, s in expected) or "no weights"
            raise KerascheckError(
                f"layer '{self.name}' ({self.class_name}): config implies {described}, "
                f"but the file holds {found or 'no weights'}"
            )
        self.w = {
            name: np.asarray(array, dtype=self.context.dtype)
            for (name, _), array in zip(expected, self.raw_weights)
        }
        self.built = True

    def param_count(self) -> int:
        return int(sum(np.prod(w.shape) for w in self.raw_weights))

    def error(self, message: str) -> KerascheckError:
        return KerascheckError(f"layer '{self.name}' ({self.class_name}): {message}")


def with_activation(activation, z, backward_z):
    """`activation(z)` and a backward through it and then `backward_z`.

    The backward keeps `backward_z` as `pre_activation` (with `activation` and
    the pre-activation `logits`), so a caller holding the gradient with respect
    to `z` itself (cross-entropy computed from the logits) can skip the
    activation.
    """
    from . import activations

    y = activations.apply(activation, z)

    def backward(d_output):
        return backward_z(activations.backward(activation, z, y, d_output))

    backward.pre_activation = backward_z
    backward.activation = activation
    backward.logits = z
    return y, backward


def frozen(layer: Layer) -> bool:
    """Keras gives no weight gradients for a layer saved with `trainable: false`."""
    return layer.config.get("trainable", True) is False


def as_tuple(value, rank: int) -> tuple:
    """Keras accepts an int or a sequence for sizes; this gives a tuple of `rank`."""
    if isinstance(value, (int, float)):
        return (int(value),) * rank
    value = tuple(int(v) for v in value)
    if len(value) == 1 and rank > 1:
        return value * rank
    return value


def data_format(config: dict) -> str:
    """`channels_last` unless the config says otherwise (None means the default)."""
    return config.get("data_format") or "channels_last"
