"""Weight and activity regularization penalties, and their gradients, as `fit` adds them.

A layer's config names a regularizer per weight (`kernel_regularizer` for
`kernel`, ...); Keras adds each penalty to the loss once per step, undivided,
and each activity penalty (of a layer's output) divided by the batch size,
in both flavors. One class per Keras regularizer class, in `REGISTRY`; a
regularizer is read from its serialized dict (Keras 3 adds `module` and
`registered_name`, tf_keras' legacy dialect has neither) and never imported.

Flavor differences: Keras 3 regularizes only *trainable* weights (a frozen
layer adds nothing); tf_keras adds the penalty of a frozen layer to the loss
all the same (without a gradient, since nothing trains). The orthogonal
regularizer normalizes rows as each flavor's `l2_normalize` does.
"""

from __future__ import annotations

import numpy as np

from ..errors import KerascheckError
from .losses import F64, l2_normalize

# The weight (last component of its name) each config key regularizes.
WEIGHT_REGULARIZERS = {
    "kernel": "kernel_regularizer",
    "bias": "bias_regularizer",
    "depthwise_kernel": "depthwise_regularizer",
    "pointwise_kernel": "pointwise_regularizer",
    "recurrent_kernel": "recurrent_regularizer",
    "gamma": "gamma_regularizer",
    "beta": "beta_regularizer",
    "embeddings": "embeddings_regularizer",
    "alpha": "alpha_regularizer",
}
# Wrappers whose inner layer's config holds the regularizers (Bidirectional, TimeDistributed,
# RNN over a cell); Bidirectional names its weights `forward/...` and `backward/...`.
NESTED_KEYS = ("layer", "cell")


class Regularizer:
    """One Keras regularizer class; `__call__` returns (penalty, d penalty / d w)."""

    def __init__(self, config: dict, keras_major: int):
        self.keras_major = keras_major
        self.setup(config)

    def setup(self, config: dict) -> None:
        pass

    def __call__(self, w: np.ndarray):
        raise NotImplementedError


def _factor(config: dict, key: str, default: float) -> float:
    """A penalty factor; None means the default, and tf_keras' L1 / L2 still accept the
    old single argument `l`."""
    value = config.get(key, config.get("l"))
    return default if value is None else float(value)


class L1L2(Regularizer):
    """`l1 * sum|w| + l2 * sum(w²)`: no ½, not divided by the batch. TF's abs'(0) is 0."""

    def setup(self, config):
        self.l1, self.l2 = float(config.get("l1") or 0.0), float(config.get("l2") or 0.0)

    def __call__(self, w):
        # Keras casts the factors to the weight's dtype (0.01 -> 0.0099999998 in float32)
        l1, l2 = (float(np.asarray(v, w.dtype)) for v in (self.l1, self.l2))
        w = w.astype(F64)
        return l1 * np.sum(np.abs(w)) + l2 * np.sum(w * w), l1 * np.sign(w) + 2.0 * l2 * w


class L1(L1L2):
    def setup(self, config):
        self.l1, self.l2 = _factor(config, "l1", 0.01), 0.0


class L2(L1L2):
    def setup(self, config):
        self.l1, self.l2 = 0.0, _factor(config, "l2", 0.01)


class OrthogonalRegularizer(Regularizer):
    """`factor * 0.5 * sum|N Nᵀ - diag| / num_pairs` over the normalized rows (or columns)
    of a rank-2 weight: it pushes them towards mutual orthogonality."""

    def setup(self, config):
        self.factor = float(config.get("factor", 0.01))
        self.mode = config.get("mode", "rows")
        if self.mode not in ("rows", "columns"):
            raise KerascheckError(
                f"expected OrthogonalRegularizer mode 'rows' or 'columns', found {self.mode!r}"
            )

    def __call__(self, w):
        if w.ndim != 2:
            raise KerascheckError(
                f"expected a rank-2 weight for OrthogonalRegularizer, found shape {w.shape}"
            )
        factor = float(np.asarray(self.factor, w.dtype))
        rows = w if self.mode == "rows" else w.T
        normalized, backward = l2_normalize(rows, 1, self.keras_major)
        product = normalized @ normalized.T
        size = product.shape[0]
        off_diagonal = 1.0 - np.eye(size)
        scale = factor * 0.5 / (size * (size - 1.0) / 2.0)
        penalty = scale * np.sum(np.abs(product * off_diagonal))
        d_product = scale * np.sign(product) * off_diagonal
        d_rows = backward((d_product + d_product.T) @ normalized)
        return penalty, d_rows if self.mode == "rows" else d_rows.T


REGULARIZERS = (L1, L2, L1L2, OrthogonalRegularizer)
REGISTRY: dict[str, type[Regularizer]] = {cls.__name__: cls for cls in REGULARIZERS}
# Names `regularizers.get` accepts as strings (Keras 3 snake-cases its class names;
# tf_keras' `l1_l2` function defaults both factors to 0.01).
STRINGS = {
    "l1": ("L1", {}),
    "l2": ("L2", {}),
    "l1l2": ("L1L2", {}),
    "l1_l2": ("L1L2", {"l1": 0.01, "l2": 0.01}),
    "orthogonal_regularizer": ("OrthogonalRegularizer", {}),
}


def get_regularizer(identifier, keras_major: int = 3, where: str = "") -> Regularizer | None:
    """The regularizer a config entry names (None for none); custom ones are refused."""
    if identifier is None:
        return None
    if isinstance(identifier, str):
        class_name, config = STRINGS.get(identifier, (identifier, {}))
    elif isinstance(identifier, dict):
        class_name, config = identifier.get("class_name"), identifier.get("config") or {}
        module, registered = identifier.get("module"), identifier.get("registered_name")
        if module is not None and not str(module).startswith(("keras", "tf_keras")):
            raise _unknown(f"the custom regularizer {class_name!r} from module {module!r}", where)
        if registered not in (None, class_name):
            raise _unknown(f"the custom regularizer {registered!r}", where)
        class_name = STRINGS.get(class_name, (class_name, {}))[0]
    else:
        raise _unknown(f"the regularizer {identifier!r}", where)
    if class_name not in REGISTRY:
        raise _unknown(f"the regularizer {class_name!r}", where)
    return REGISTRY[class_name](config, keras_major)


def _unknown(found: str, where: str) -> KerascheckError:
    return KerascheckError(
        f"{where}: expected a built-in Keras regularizer, found {found} (kerascheck never "
        f"imports custom code); supported: {', '.join(sorted(REGISTRY))}"
    )


def _config_for(layer_config: dict, weight_name: str) -> dict:
    """The (possibly nested) layer config that declares this weight's regularizer."""
    config, parts = layer_config, weight_name.split("/")
    if parts[0] in ("forward", "backward") and isinstance(config.get("layer"), dict):
        chosen = config.get("backward_layer") if parts[0] == "backward" else None
        config = (chosen or config["layer"]).get("config", {})
    key = WEIGHT_REGULARIZERS.get(parts[-1])
    while key not in config:
        nested = next((config[k] for k in NESTED_KEYS if isinstance(config.get(k), dict)), None)
        if nested is None:
            break
        config = nested.get("config", {})
    return config


def penalty_and_grads(layer_config: dict, weights: dict, keras_major: int = 3):
    """(total weight penalty, {weight name: its gradient}) for one layer.

    A weight is regularized by the config key of its name's last component
    (`kernel`, `forward/kernel` and `query/kernel` all by `kernel_regularizer`), read
    from the layer's config or, for wrappers, from the wrapped layer's.
    """
    name = layer_config.get("name", "?")
    frozen = layer_config.get("trainable", True) is False
    if frozen and keras_major >= 3:
        return 0.0, {}
    total, grads = 0.0, {}
    for weight_name, value in weights.items():
        key = WEIGHT_REGULARIZERS.get(weight_name.split("/")[-1])
        if key is None:
            continue
        where = f"layer '{name}' {key}"
        regularizer = get_regularizer(
            _config_for(layer_config, weight_name).get(key), keras_major, where
        )
        if regularizer is None:
            continue
        value = np.asarray(value)
        penalty, grad = regularizer(value)
        total += float(penalty)
        if not frozen:
            grads[weight_name] = grad.astype(value.dtype)
    return total, grads


def activity_penalty_and_grad(layer_config: dict, output, batch_size: int, keras_major: int = 3):
    """(penalty of the layer's output / batch size, d penalty / d output), or (0.0, None).

    `output` may be a list (a layer with several outputs): Keras regularizes each and
    the gradient comes back as a list. The `ActivityRegularization` layer stores its
    factors as top-level `l1` / `l2` instead of an `activity_regularizer` entry.
    """
    identifier = layer_config.get("activity_regularizer")
    if identifier is None and ("l1" in layer_config or "l2" in layer_config):
        identifier = {
            "class_name": "L1L2",
            "config": {k: layer_config.get(k, 0.0) for k in ("l1", "l2")},
        }
    where = f"layer '{layer_config.get('name', '?')}' activity_regularizer"
    regularizer = get_regularizer(identifier, keras_major, where)
    if regularizer is None:
        return 0.0, None
    outputs = list(output) if isinstance(output, (list, tuple)) else [output]
    scale = 1.0 / batch_size if batch_size else 0.0  # Keras' divide_no_nan
    total, grads = 0.0, []
    for value in outputs:
        value = np.asarray(value)
        penalty, grad = regularizer(value)
        total += float(penalty) * scale
        grads.append((grad * scale).astype(value.dtype))
    return total, grads if isinstance(output, (list, tuple)) else grads[0]
