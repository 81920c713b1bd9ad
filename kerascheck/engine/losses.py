"""Keras' built-in losses, their values and gradients, as `fit` computes them.

One class per Keras loss class, named exactly as Keras names it, registered in
`REGISTRY`; `get_loss` turns what a model file stores (a function alias, a
class name, or a serialized dict in either Keras dialect) into an instance.
Nothing named in an identifier is ever imported or executed: names are looked
up in the tables below.

Each class computes the *per-sample* loss (`_compute`) and its backward; the
base class then applies Keras' reduction, sample weights and masks, which are
the same for every loss. The sources this mirrors are `keras/src/losses/`,
`keras/src/backend/tensorflow/nn.py`, `tf_keras/src/losses.py` and
`tf_keras/src/backend.py`. Facts a reimplementation gets wrong:

- Probabilities are clipped to `[1e-7, 1 - 1e-7]` **in the prediction's dtype**:
  in float32 the upper bound is `1 - 1.19e-7`, so `-log(1 - p)` saturates at
  15.94, not 16.12. TF's `clip_by_value` passes no gradient outside the bounds.
- tf_keras' binary cross-entropy still adds `1e-7` inside both logarithms after
  clipping; Keras 3 does not.
- The logits path: when the prediction comes straight from a softmax/sigmoid,
  Keras takes the loss from that activation's input and never clips
  (`logits_activation`, `value_and_grad(..., logits=z)`). Keras does so even
  when `from_logits=True` (it warns "Was this intended?").
- TF's softmax cross-entropy gradient is `softmax(z) - t`, which is the exact
  derivative only when the targets sum to 1; TF applies it regardless.
- Sparse cross-entropy on probabilities is `log(sum(clip(p))) - log(clip(p)[y])`
  (the clipped probabilities are fed to `sparse_softmax_cross_entropy_with_logits`
  as log-logits), not `-log(clip(p)[y])`.
- Keras 3 serializes neither `Huber`'s `delta` nor `CosineSimilarity`'s `axis`:
  a file rebuilt from its config uses the defaults, and so does this module.

Clipping, renormalization and tie decisions happen in the prediction's dtype
(float32 rounding decides them in Keras too); logarithms, gradients and sums
are computed in float64, which only removes float32 noise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..errors import KerascheckError

F64 = np.float64
EPSILON = 1e-7  # backend.epsilon() in both Keras flavors

REDUCTIONS = {
    3: ("sum_over_batch_size", "sum", "mean", "mean_with_sample_weight"),
    2: ("auto", "sum_over_batch_size", "sum"),
}
# Reductions under which Keras rescales a mask's valid entries by total / valid.
MASK_RESCALED = ("sum_over_batch_size", "mean", "auto")


# -- numeric helpers (each mirrors one TF op and its registered gradient) ------------------


def _native(x, dtype):
    """An array in the prediction's dtype: Keras casts targets and weights to it."""
    return np.asarray(x).astype(dtype)


def _clip(x: np.ndarray, lo: float, hi: float):
    """`tf.clip_by_value` in x's own dtype, upcast, with its gradient mask (bounds included)."""
    lo, hi = x.dtype.type(lo), x.dtype.type(hi)
    return np.clip(x, lo, hi).astype(F64), (x >= lo) & (x <= hi)


def _sigmoid(z):
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _log_softmax(z, axis):
    shifted = z - np.max(z, axis=axis, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))


def _softmax_vjp(p, d_p, axis):
    return p * (d_p - np.sum(d_p * p, axis=axis, keepdims=True))


def _activation_vjp(name: str, y: np.ndarray, d_y: np.ndarray) -> np.ndarray:
    """d_logits from d_output for the activation whose logits a loss would take."""
    y = y.astype(F64)
    return d_y * y * (1.0 - y) if name == "sigmoid" else _softmax_vjp(y, d_y, -1)


def l2_normalize(x: np.ndarray, axis, keras_major: int):
    """(x / ||x||, backward) as Keras normalizes for cosine similarity and orthogonality.

    Keras 3 (`ops.normalize`): `x * minimum(rsqrt(sum x²), 1 / 1e-7)`; tf_keras
    (`tf.math.l2_normalize`): `x * rsqrt(maximum(sum x², 1e-12))`. Where the floor
    wins the scale is a constant and only the `x *` part has a gradient.
    """
    x = x.astype(F64)
    square_sum = np.sum(x * x, axis=axis, keepdims=True)
    with np.errstate(divide="ignore"):
        if keras_major >= 3:
            free = 1.0 / np.sqrt(square_sum) <= 1.0 / EPSILON
            inv = np.where(free, 1.0 / np.sqrt(square_sum), 1.0 / EPSILON)
        else:
            free = square_sum >= 1e-12
            inv = 1.0 / np.sqrt(np.maximum(square_sum, 1e-12))

    def backward(d_n):
        along = np.sum(d_n * x, axis=axis, keepdims=True)
        return d_n * inv - np.where(free, inv**3, 0.0) * x * along

    return x * inv, backward


def _sum_to(d: np.ndarray, shape: tuple) -> np.ndarray:
    """Undo NumPy broadcasting: sum `d` down to `shape`."""
    while d.ndim > len(shape):
        d = d.sum(axis=0)
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and d.shape[i] != 1)
    return d.sum(axis=axes, keepdims=True) if axes else d


def _keras3_same_rank(x1: np.ndarray, x2: np.ndarray):
    """Keras 3 `squeeze_or_expand_to_same_rank`: ranks one apart with a trailing 1 are
    matched by squeezing it, or by expanding the other tensor when that one has rank 1."""
    if x1.ndim == x2.ndim + 1 and x1.shape[-1] == 1:
        return (x1, x2[..., None]) if x2.ndim == 1 else (x1[..., 0], x2)
    if x2.ndim == x1.ndim + 1 and x2.shape[-1] == 1:
        return (x1[..., None], x2) if x1.ndim == 1 else (x1, x2[..., 0])
    return x1, x2


def _tf_keras_weight_rank(values: np.ndarray, weights: np.ndarray):
    """tf_keras `squeeze_or_expand_dimensions(losses, None, sample_weight)`."""
    if weights.ndim and weights.ndim == values.ndim + 1:
        if weights.shape[-1] != 1:
            raise KerascheckError(
                f"expected sample weights of shape {values.shape} (or with a trailing 1) to "
                f"weight the per-sample losses, found {weights.shape}"
            )
        return values, weights[..., 0]
    if weights.ndim and weights.ndim == values.ndim - 1:
        return values, weights[..., None]
    return values, weights


def _smooth(t, label_smoothing: float, num_classes: int):
    return t * (1.0 - label_smoothing) + label_smoothing / num_classes if label_smoothing else t


# -- the base class ------------------------------------------------------------------------


@dataclass
class PerSample:
    """A loss function's output before reduction: the values, their backward to the
    prediction (or logits), and the mask the function attaches (sparse `ignore_class`)."""

    values: np.ndarray
    backward: Callable[[np.ndarray], np.ndarray]
    mask: np.ndarray | None = None


class Loss:
    """One Keras loss class. Subclasses read their config in `setup` and compute the
    per-sample loss in `_compute`; reduction and weighting live here, once."""

    # The activation whose input Keras' backend takes instead of the prediction
    # (`_get_logits` looks for `_keras_logits`, set by Keras' softmax and sigmoid).
    LOGITS: str | None = None

    def __init__(self, config: dict | None = None, keras_major: int = 3):
        config = dict(config or {})
        self.name = type(self).__name__
        self.config = config
        self.keras_major = 3 if keras_major >= 3 else 2
        self.from_logits = bool(config.get("from_logits", False))
        self.reduction = self._reduction(config.get("reduction", "sum_over_batch_size"))
        self.setup(config)

    def setup(self, config: dict) -> None:
        """Normalize the loss's own arguments; called once."""

    def _reduction(self, reduction) -> str:
        allowed = REDUCTIONS[self.keras_major]
        if reduction in (None, "none"):
            raise KerascheckError(
                f"loss {self.name} has reduction {reduction!r}, which returns one loss per "
                f"sample; training needs one number: expected one of {', '.join(allowed)}"
            )
        if reduction not in allowed:
            raise KerascheckError(
                f"loss {self.name} has reduction {reduction!r}; expected one of "
                f"{', '.join(allowed)} (Keras {self.keras_major})"
            )
        return reduction

    @property
    def logits_activation(self) -> str | None:
        """ "softmax" / "sigmoid" when Keras' `fit` takes this loss from the logits of an
        output that comes straight from that activation; None when it never does."""
        return self.LOGITS

    # -- the public computation -----------------------------------------------------------
    def value_and_grad(self, y_true, y_pred, sample_weight=None, logits=None, mask=None):
        """(reduced loss, dL/d y_pred), or dL/d logits when `logits` is given.

        `logits` is the input of the output's softmax/sigmoid (see `logits_activation`):
        Keras then computes the loss from them, unclipped. `mask` is the Keras mask the
        prediction carries (`_keras_mask`), if any: masked entries weigh 0 and, under
        the mean reductions, the valid ones are rescaled by total / valid.
        """
        y_pred = np.asarray(y_pred)
        dtype = y_pred.dtype if y_pred.dtype.kind == "f" else np.dtype("float32")
        if logits is not None and self.logits_activation is None:
            raise KerascheckError(
                f"loss {self.name} never takes Keras' logits path (Keras {self.keras_major}); "
                "expected the prediction without `logits`"
            )
        y_true, pred = self._match_ranks(self._targets(y_true, dtype), y_pred.astype(dtype))
        # Keras loses the logits when it reshapes the prediction to match the targets.
        use_logits = logits is not None and pred.shape == y_pred.shape
        if use_logits:
            logits = np.asarray(logits)
            per = self._compute(y_true, logits.astype(dtype), True)
        else:
            per = self._compute(y_true, pred, self.from_logits)
        loss, d_values = self._reduce(per, sample_weight, mask)
        grad = _sum_to(np.asarray(per.backward(d_values), dtype=F64), pred.shape)
        grad = grad.reshape(y_pred.shape)
        if logits is not None and not use_logits:
            grad = _activation_vjp(self.logits_activation, y_pred, grad)
        return loss, grad.astype(np.asarray(logits).dtype if use_logits else dtype)

    # -- steps shared by every loss ---------------------------------------------------------
    def _targets(self, y_true, dtype):
        """Keras casts the targets to the prediction's dtype before anything else."""
        return _native(y_true, dtype)

    def _match_ranks(self, y_true, y_pred):
        """Targets and predictions one rank apart, matched as `fit` matches them.

        Keras 3: `squeeze_or_expand_to_same_rank` in `LossFunctionWrapper.call`.
        tf_keras: its `LossesContainer` first expands rank-1 targets of a rank-2 output
        (`match_dtype_and_rank`), then the wrapper squeezes a trailing 1 off the larger
        rank (`remove_squeezable_dimensions`).
        """
        if self.keras_major >= 3:
            return _keras3_same_rank(y_true, y_pred)
        if y_true.ndim == 1 and y_pred.ndim == 2:
            y_true = y_true[:, None]
        if y_pred.ndim == y_true.ndim + 1 and y_pred.shape[-1] == 1:
            y_pred = y_pred[..., 0]
        elif y_true.ndim == y_pred.ndim + 1 and y_true.shape[-1] == 1:
            y_true = y_true[..., 0]
        return y_true, y_pred

    def _align(self, values, weights):
        """Per-sample values (or a mask) and weights with ranks matched as Keras matches
        them, checked to broadcast (Keras 3 does not expand (batch,) weights to
        (batch, steps) losses and fails; tf_keras does)."""
        if self.keras_major >= 3:
            values, weights = _keras3_same_rank(values, weights)
        else:
            values, weights = _tf_keras_weight_rank(values, weights)
        try:
            np.broadcast_shapes(values.shape, weights.shape)
        except ValueError:
            raise KerascheckError(
                f"expected sample weights broadcastable to the per-sample losses of shape "
                f"{values.shape} (e.g. one weight per sample), found {weights.shape}"
            ) from None
        return values, weights

    def _reduce(self, per: PerSample, sample_weight, mask):
        """(loss, dloss/dvalues): Keras' `reduce_weighted_values` / `compute_weighted_loss`.

        The mean reductions divide by the number of weighted values, never by the sum of
        the weights (except Keras 3's `mean_with_sample_weight`). A mask (the prediction's,
        and the loss's own) becomes weights, its valid entries rescaled by total / valid
        under the mean reductions.
        """
        weights = None if sample_weight is None else np.asarray(sample_weight, dtype=F64)
        masks = [np.asarray(m, dtype=bool) for m in (mask, per.mask) if m is not None]
        if masks:
            scaled = (masks[0] & masks[-1]).astype(F64)
            if self.reduction in MASK_RESCALED:
                valid = scaled.sum()
                scaled *= scaled.size / valid if valid else 0.0
            if weights is not None:
                scaled, weights = self._align(scaled, weights)
                scaled = weights * scaled
            weights = scaled
        values = per.values
        if weights is not None:
            values, weights = self._align(values, weights)
        weighted = values if weights is None else values * weights
        if self.reduction == "sum":
            divisor = 1.0
        elif self.reduction == "mean_with_sample_weight" and weights is not None:
            divisor = float(np.sum(weights))
        else:
            divisor = float(weighted.size)
        scale = 1.0 / divisor if divisor else 0.0  # Keras' divide_no_nan
        d_weighted = np.full(weighted.shape, scale) * (1.0 if weights is None else weights)
        d_values = _sum_to(d_weighted, values.shape).reshape(per.values.shape)
        return float(np.sum(weighted) * scale), d_values

    def _compute(self, y_true, y_pred, from_logits: bool) -> PerSample:
        raise NotImplementedError


# -- losses that average a pointwise term over an axis -------------------------------------


class _Pointwise(Loss):
    """`mean(f(y_true, y_pred), axis)`: subclasses return f and df/dy_pred."""

    def setup(self, config):
        self.axis = int(config.get("axis", -1))

    def _pointwise(self, t, p, from_logits):
        raise NotImplementedError

    def _compute(self, y_true, y_pred, from_logits):
        elem, d_elem = self._pointwise(y_true.astype(F64), y_pred, from_logits)
        axis, count = self.axis, elem.shape[self.axis]
        return PerSample(elem.mean(axis=axis), lambda g: np.expand_dims(g, axis) * d_elem / count)


class MeanSquaredError(_Pointwise):
    def _pointwise(self, t, p, from_logits):
        p = p.astype(F64)
        return (t - p) ** 2, 2.0 * (p - t)


class MeanAbsoluteError(_Pointwise):
    def _pointwise(self, t, p, from_logits):
        diff = t - p.astype(F64)
        return np.abs(diff), -np.sign(diff)  # TF: abs'(0) = 0


class MeanAbsolutePercentageError(_Pointwise):
    def _pointwise(self, t, p, from_logits):
        scale = np.maximum(np.abs(t), EPSILON)
        ratio = (t - p.astype(F64)) / scale
        return 100.0 * np.abs(ratio), -100.0 * np.sign(ratio) / scale


class MeanSquaredLogarithmicError(_Pointwise):
    def _pointwise(self, t, p, from_logits):
        floor = p.dtype.type(EPSILON)
        kept = p >= floor  # TF's maximum passes the gradient to its first input on ties
        p = np.maximum(p, floor).astype(F64)
        diff = np.log(p + 1.0) - np.log(np.maximum(t, EPSILON) + 1.0)
        return diff**2, np.where(kept, 2.0 * diff / (p + 1.0), 0.0)


class Huber(_Pointwise):
    def setup(self, config):
        super().setup(config)
        self.delta = float(config.get("delta", 1.0))

    def _pointwise(self, t, p, from_logits):
        delta = float(p.dtype.type(self.delta))
        error = p.astype(F64) - t
        small = np.abs(error) <= delta
        elem = np.where(small, 0.5 * error**2, delta * np.abs(error) - 0.5 * delta**2)
        return elem, np.where(small, error, delta * np.sign(error))


class LogCosh(_Pointwise):
    def _pointwise(self, t, p, from_logits):
        x = p.astype(F64) - t
        # x + softplus(-2x) - log 2, differentiated as TF does: 1 - 2 sigmoid(-2x)
        return x + np.logaddexp(0.0, -2.0 * x) - np.log(2.0), 1.0 - 2.0 * _sigmoid(-2.0 * x)


class Poisson(_Pointwise):
    def _pointwise(self, t, p, from_logits):
        p = p.astype(F64)
        return p - t * np.log(p + EPSILON), 1.0 - t / (p + EPSILON)


def _hinge_labels(t):
    """Keras turns targets that are all 0 or 1 into -1 / 1; any other targets stay."""
    return 2.0 * t - 1.0 if np.all((t == 0) | (t == 1)) else t


def _hinge_margin(t, p):
    """1 - t p, computed in the prediction's dtype: `maximum(margin, 0)` passes the
    gradient to the margin on ties, so a margin of exactly 0 must be found as TF finds it."""
    margin = (p.dtype.type(1) - t.astype(p.dtype) * p).astype(F64)
    return margin, margin >= 0


class Hinge(_Pointwise):
    def _pointwise(self, t, p, from_logits):
        t = _hinge_labels(t)
        margin, active = _hinge_margin(t, p)
        return np.maximum(margin, 0.0), np.where(active, -t, 0.0)


class SquaredHinge(_Pointwise):
    def _pointwise(self, t, p, from_logits):
        t = _hinge_labels(t)
        margin, _ = _hinge_margin(t, p)
        kept = np.maximum(margin, 0.0)
        return kept**2, -2.0 * t * kept


def _binary_crossentropy(t, x, from_logits: bool, keras_major: int):
    """Element-wise binary cross-entropy and its derivative w.r.t. x (logits or probabilities).

    From logits: TF's `sigmoid_cross_entropy_with_logits`, `max(z, 0) - z t + log1p(e^-|z|)`,
    gradient `sigmoid(z) - t`. From probabilities: clipped; tf_keras adds 1e-7 inside both
    logarithms after clipping.
    """
    if from_logits:
        z = x.astype(F64)
        elem = np.maximum(z, 0.0) - z * t + np.log1p(np.exp(-np.abs(z)))
        return elem, _sigmoid(z) - t
    p, kept = _clip(x, EPSILON, 1.0 - EPSILON)
    shift = EPSILON if keras_major < 3 else 0.0
    elem = -(t * np.log(p + shift) + (1.0 - t) * np.log(1.0 - p + shift))
    return elem, np.where(kept, -t / (p + shift) + (1.0 - t) / (1.0 - p + shift), 0.0)


class BinaryCrossentropy(_Pointwise):
    LOGITS = "sigmoid"

    def setup(self, config):
        super().setup(config)
        self.label_smoothing = float(config.get("label_smoothing", 0.0) or 0.0)

    def _pointwise(self, t, x, from_logits):
        t = _smooth(t, self.label_smoothing, 2)
        return _binary_crossentropy(t, x, from_logits, self.keras_major)


class BinaryFocalCrossentropy(BinaryCrossentropy):
    """`(1 - p_t)^gamma * bce`, optionally class-balanced. The focal factor always uses
    the probabilities (unclipped); the cross-entropy part takes the sigmoid's logits when
    Keras has them, exactly as `binary_crossentropy` would."""

    def setup(self, config):
        super().setup(config)
        self.gamma = float(config.get("gamma", 2.0))
        self.alpha = float(config.get("alpha", 0.25))
        self.balanced = bool(config.get("apply_class_balancing", False))

    @property
    def logits_activation(self):
        # With from_logits=True on a sigmoid output Keras 3 applies a second sigmoid and
        # tf_keras mixes both; neither is the logits path.
        return None if self.from_logits else "sigmoid"

    def _pointwise(self, t, x, from_logits):
        t = _smooth(t, self.label_smoothing, 2)
        bce, d_bce = _binary_crossentropy(t, x, from_logits, self.keras_major)
        if from_logits:
            p = _sigmoid(x.astype(F64)).astype(x.dtype).astype(F64)  # TF's float32 sigmoid
            dp_dx = p * (1.0 - p)
        else:
            p, dp_dx = x.astype(F64), 1.0
        rest = 1.0 - (t * p + (1.0 - t) * (1.0 - p))
        focal = rest**self.gamma
        with np.errstate(divide="ignore", invalid="ignore"):
            d_focal = -self.gamma * rest ** (self.gamma - 1.0) * (2.0 * t - 1.0) * dp_dx
        weight = t * self.alpha + (1.0 - t) * (1.0 - self.alpha) if self.balanced else 1.0
        return weight * focal * bce, weight * (d_focal * bce + focal * d_bce)


# -- cross-entropies over a class axis ------------------------------------------------------


def _renormalized_clip(p: np.ndarray, axis: int):
    """Keras' probability path: `p / sum(p)`, then clipped, in p's dtype; with backward."""
    total = np.sum(p, axis=axis, keepdims=True)
    clipped, kept = _clip(p / total, EPSILON, 1.0 - EPSILON)
    p64, total = p.astype(F64), total.astype(F64)

    def backward(d_clipped):
        d_ratio = np.where(kept, d_clipped, 0.0)
        return d_ratio / total - np.sum(d_ratio * p64, axis=axis, keepdims=True) / total**2

    return clipped, backward


class CategoricalCrossentropy(Loss):
    LOGITS = "softmax"

    def setup(self, config):
        self.axis = int(config.get("axis", -1))
        self.label_smoothing = float(config.get("label_smoothing", 0.0) or 0.0)

    def _smoothed(self, t):
        # Keras 3 counts the classes on the last axis whatever `axis` is; tf_keras on `axis`.
        classes = t.shape[-1] if self.keras_major >= 3 else t.shape[self.axis]
        return _smooth(t.astype(F64), self.label_smoothing, classes)

    def _compute(self, y_true, x, from_logits):
        t, axis = self._smoothed(y_true), self.axis
        if from_logits:
            z = x.astype(F64)
            values = -np.sum(t * _log_softmax(z, axis), axis=axis)
            # TF's kernel returns softmax - labels, whatever the labels sum to.
            d_z = np.exp(_log_softmax(z, axis)) - t
            return PerSample(values, lambda g: np.expand_dims(g, axis) * d_z)
        clipped, back = _renormalized_clip(x, axis)
        values = -np.sum(t * np.log(clipped), axis=axis)
        return PerSample(values, lambda g: back(-np.expand_dims(g, axis) * t / clipped))


class CategoricalFocalCrossentropy(CategoricalCrossentropy):
    """`sum(alpha (1 - o)^gamma (-t log o))` over the renormalized, clipped probabilities.
    From logits the softmax is applied first; it is never computed from the logits directly."""

    def setup(self, config):
        super().setup(config)
        self.gamma = float(config.get("gamma", 2.0))
        self.alpha = np.asarray(config.get("alpha", 0.25), dtype=F64)  # may be per class

    @property
    def logits_activation(self):
        # tf_keras runs `_get_logits` first (then softmax again); Keras 3 never looks.
        return "softmax" if self.keras_major < 3 else None

    def _smoothed(self, t):
        return _smooth(t.astype(F64), self.label_smoothing, t.shape[-1])

    def _compute(self, y_true, x, from_logits):
        t, axis = self._smoothed(y_true), self.axis
        p = x
        if from_logits:
            p = np.exp(_log_softmax(x.astype(F64), axis)).astype(x.dtype)
        clipped, back = _renormalized_clip(p, axis)
        cce = -t * np.log(clipped)
        modulating = (1.0 - clipped) ** self.gamma
        values = np.sum(self.alpha * modulating * cce, axis=axis)

        def backward(g):
            with np.errstate(divide="ignore", invalid="ignore"):
                d_mod = -self.gamma * (1.0 - clipped) ** (self.gamma - 1.0)
            d_clipped = (
                np.expand_dims(g, axis) * self.alpha * (d_mod * cce - modulating * t / clipped)
            )
            d_p = back(d_clipped)
            return _softmax_vjp(p.astype(F64), d_p, axis) if from_logits else d_p

        return PerSample(values, backward)


class SparseCategoricalCrossentropy(Loss):
    """Integer targets. On probabilities Keras feeds `log(clip(p))` to TF's sparse softmax
    cross-entropy as logits, so the loss is `log(sum(clip(p))) - log(clip(p)[y])`."""

    LOGITS = "softmax"

    def setup(self, config):
        if int(config.get("axis", -1)) != -1:
            raise KerascheckError(
                f"loss {self.name} has axis {config['axis']}; expected -1 (the only axis "
                "Keras' TensorFlow backend supports)"
            )
        ignore = config.get("ignore_class")
        self.ignore_class = None if ignore is None else int(ignore)

    @property
    def logits_activation(self):
        # Keras 3 replaces ignored rows with `where(valid, y_pred, 0)`, a new tensor
        # without the softmax's logits; tf_keras takes the logits before masking.
        if self.keras_major >= 3 and self.ignore_class is not None:
            return None
        return self.LOGITS

    def _targets(self, y_true, dtype):
        return np.asarray(y_true).astype(dtype).astype(np.int64)  # Keras: float, then int64

    def _compute(self, y_true, x, from_logits):
        labels = y_true
        if labels.ndim == x.ndim and labels.shape[-1] == 1:
            labels = labels[..., 0]
        classes = x.shape[-1]
        if labels.shape != x.shape[:-1]:
            raise KerascheckError(
                f"expected integer targets of shape {x.shape[:-1]} for predictions of shape "
                f"{x.shape}, found {np.shape(y_true)}"
            )
        valid = np.ones(labels.shape, bool)
        if self.ignore_class is not None:
            valid = labels != self.ignore_class
            labels = np.where(valid, labels, 0)
        if np.any((labels < 0) | (labels >= classes)):
            bad = labels[(labels < 0) | (labels >= classes)][0]
            raise KerascheckError(
                f"expected class indices in [0, {classes}) for loss {self.name}, found {bad}"
            )
        if from_logits:
            logits = x.astype(F64)
        else:
            clipped, kept = _clip(x, EPSILON, 1.0 - EPSILON)
            logits = np.log(clipped)
        log_sm = _log_softmax(logits, -1)
        picked = np.take_along_axis(log_sm, labels[..., None], axis=-1)[..., 0]
        values = np.where(valid, -picked, 0.0)
        one_hot = np.arange(classes) == labels[..., None]
        d_logits = np.exp(log_sm) - one_hot
        if not from_logits:
            d_logits = np.where(kept, d_logits / clipped, 0.0)
        d_logits = np.where(valid[..., None], d_logits, 0.0)
        mask = valid if self.ignore_class is not None else None
        return PerSample(values, lambda g: g[..., None] * d_logits, mask)


class KLDivergence(Loss):
    def _compute(self, y_true, x, from_logits):
        t, _ = _clip(y_true, EPSILON, 1.0)
        p, kept = _clip(x, EPSILON, 1.0)
        values = np.sum(t * np.log(t / p), axis=-1)
        d_p = np.where(kept, -t / p, 0.0)
        return PerSample(values, lambda g: g[..., None] * d_p)


class CategoricalHinge(Loss):
    """`max(max((1 - t) p) - sum(t p) + 1, 0)`. TF's `reduce_max` splits the gradient
    equally between tied maxima; the outer `maximum` passes it on a tie at 0."""

    def _compute(self, y_true, x, from_logits):
        one = x.dtype.type(1)
        negatives = (one - y_true) * x  # in the prediction's dtype, to find ties as TF does
        margin = np.max(negatives, axis=-1) - np.sum(y_true * x, axis=-1) + one
        t, p = y_true.astype(F64), x.astype(F64)
        values = np.maximum(np.max((1.0 - t) * p, axis=-1) - np.sum(t * p, axis=-1) + 1.0, 0.0)
        ties = negatives == np.max(negatives, axis=-1, keepdims=True)
        share = ties / ties.sum(axis=-1, keepdims=True)
        d_p = np.where((margin >= 0)[..., None], (1.0 - t) * share - t, 0.0)
        return PerSample(values, lambda g: g[..., None] * d_p)


class CosineSimilarity(Loss):
    """`-sum(normalize(t) * normalize(p), axis)`. Keras 3 does not save `axis`, so a
    Keras 3 file always rebuilds it with axis -1."""

    def setup(self, config):
        self.axis = int(config.get("axis", -1))

    def _compute(self, y_true, x, from_logits):
        t, _ = l2_normalize(y_true, self.axis, self.keras_major)
        p, back = l2_normalize(x, self.axis, self.keras_major)
        axis = self.axis
        return PerSample(-np.sum(t * p, axis=axis), lambda g: back(-np.expand_dims(g, axis) * t))


class _Overlap(Loss):
    """Keras 3's segmentation losses: sums over `axis` (None: the whole batch at once)."""

    def setup(self, config):
        axis = config.get("axis")
        self.axis = tuple(axis) if isinstance(axis, (list, tuple)) else axis

    def _sum(self, a):
        return np.sum(a, axis=self.axis, keepdims=True)

    def _compute(self, y_true, x, from_logits):
        t, p = y_true.astype(F64), x.astype(F64)
        num, den, d_num, d_den = self._ratio(t, p)
        values = 1.0 - num / den
        shape = np.sum(t, axis=self.axis).shape
        d_p = -(d_num * den - num * d_den) / den**2
        return PerSample(values.reshape(shape), lambda g: np.reshape(g, den.shape) * d_p)


class Dice(_Overlap):
    def _ratio(self, t, p):
        inter = self._sum(t * p)
        den = self._sum(t) + self._sum(p) + EPSILON
        return 2.0 * inter, den, 2.0 * t, np.ones_like(p)


class Tversky(_Overlap):
    def setup(self, config):
        super().setup(config)
        self.alpha = float(config.get("alpha", 0.5))
        self.beta = float(config.get("beta", 0.5))

    def _ratio(self, t, p):
        inter = self._sum(t * p)
        false_pos, false_neg = self._sum((1.0 - p) * t), self._sum(p * (1.0 - t))
        den = inter + self.alpha * false_pos + self.beta * false_neg + EPSILON
        return inter, den, t, t - self.alpha * t + self.beta * (1.0 - t)


# -- the registry ---------------------------------------------------------------------------

LOSSES = (
    MeanSquaredError,
    MeanAbsoluteError,
    MeanAbsolutePercentageError,
    MeanSquaredLogarithmicError,
    Huber,
    LogCosh,
    Poisson,
    Hinge,
    SquaredHinge,
    CategoricalHinge,
    KLDivergence,
    CosineSimilarity,
    BinaryCrossentropy,
    BinaryFocalCrossentropy,
    CategoricalCrossentropy,
    CategoricalFocalCrossentropy,
    SparseCategoricalCrossentropy,
    Dice,
    Tversky,
)
REGISTRY: dict[str, type[Loss]] = {cls.__name__: cls for cls in LOSSES}
# Function names and short aliases of both flavors (`keras.losses.ALL_OBJECTS_DICT`,
# tf_keras' module-level aliases), each computing what its class computes by default.
ALIASES = {
    "mean_squared_error": "MeanSquaredError",
    "mse": "MeanSquaredError",
    "MSE": "MeanSquaredError",
    "mean_absolute_error": "MeanAbsoluteError",
    "mae": "MeanAbsoluteError",
    "MAE": "MeanAbsoluteError",
    "mean_absolute_percentage_error": "MeanAbsolutePercentageError",
    "mape": "MeanAbsolutePercentageError",
    "MAPE": "MeanAbsolutePercentageError",
    "mean_squared_logarithmic_error": "MeanSquaredLogarithmicError",
    "msle": "MeanSquaredLogarithmicError",
    "MSLE": "MeanSquaredLogarithmicError",
    "huber": "Huber",
    "huber_loss": "Huber",
    "log_cosh": "LogCosh",
    "logcosh": "LogCosh",
    "poisson": "Poisson",
    "hinge": "Hinge",
    "squared_hinge": "SquaredHinge",
    "categorical_hinge": "CategoricalHinge",
    "kl_divergence": "KLDivergence",
    "kullback_leibler_divergence": "KLDivergence",
    "kld": "KLDivergence",
    "KLD": "KLDivergence",
    "cosine_similarity": "CosineSimilarity",
    "binary_crossentropy": "BinaryCrossentropy",
    "bce": "BinaryCrossentropy",
    "BCE": "BinaryCrossentropy",
    "binary_focal_crossentropy": "BinaryFocalCrossentropy",
    "categorical_crossentropy": "CategoricalCrossentropy",
    "categorical_focal_crossentropy": "CategoricalFocalCrossentropy",
    "sparse_categorical_crossentropy": "SparseCategoricalCrossentropy",
    "dice": "Dice",
    "tversky": "Tversky",
}
REFUSED = {
    "CTC": "its dynamic-programming loss over label alignments is not implemented",
    "ctc": "its dynamic-programming loss over label alignments is not implemented",
    "Circle": "its pairwise similarity loss over the batch is not implemented",
    "circle": "its pairwise similarity loss over the batch is not implemented",
    "CategoricalGeneralizedCrossEntropy": "it is not implemented",
    "categorical_generalized_cross_entropy": "it is not implemented",
    "crossentropy": "Keras picks binary, categorical or sparse from the shapes at compile "
    "time; pass the explicit name (e.g. categorical_crossentropy)",
    "ce": "Keras picks binary, categorical or sparse from the shapes at compile time; pass "
    "the explicit name (e.g. categorical_crossentropy)",
}


def supported_names() -> list[str]:
    return sorted(REGISTRY) + sorted(ALIASES)


def get_loss(identifier, keras_major: int) -> Loss:
    """The loss a model file (or `--loss`) names, for the file's Keras major version.

    `identifier`: a function alias or class name (`"mse"`, `"CategoricalCrossentropy"`),
    or a serialized loss: Keras 3's `{"module", "class_name", "config", "registered_name"}`
    (functions as `class_name: "function"`), or tf_keras' `{"class_name", "config"}`.
    """
    cls, config = _resolve(identifier)
    return cls(config, keras_major)


def _resolve(identifier) -> tuple[type[Loss], dict]:
    if isinstance(identifier, str):
        return _by_name(identifier), {}
    if not isinstance(identifier, dict) or "class_name" not in identifier:
        raise _unknown(f"the loss {identifier!r}")
    class_name = identifier.get("class_name")
    config = identifier.get("config")
    module = identifier.get("module")
    registered = identifier.get("registered_name")
    if class_name == "function":  # Keras 3 writes functions as {"config": "mse", ...}
        if module not in (None, "builtins") and not _is_keras_module(module):
            raise _unknown(f"the custom loss function {config!r} from module {module!r}")
        if not isinstance(config, str):
            raise _unknown(f"the loss function {config!r}")
        return _by_name(config, function=True), {}
    if not isinstance(class_name, str) or (module is not None and not _is_keras_module(module)):
        raise _unknown(f"the custom loss class {class_name!r} from module {module!r}")
    if registered not in (None, class_name):
        raise _unknown(f"the custom loss {registered!r}")
    config = dict(config) if isinstance(config, dict) else {}
    if class_name == "LossFunctionWrapper":  # a wrapped function plus its arguments
        fn = config.pop("fn", None)
        if fn is None:
            raise _unknown("a LossFunctionWrapper without its function")
        cls, base = _resolve(fn)
        return cls, {**base, **config}
    if ">" in class_name:  # tf_keras writes registered custom classes as "Package>Class"
        raise _unknown(f"the custom loss class {class_name!r}")
    return _by_name(class_name), config


def _by_name(name: str, function: bool = False) -> type[Loss]:
    if name in REFUSED:
        raise KerascheckError(f"loss '{name}' is not supported: {REFUSED[name]}")
    target = ALIASES.get(name, None if function else name)
    if target not in REGISTRY:
        raise _unknown(f"the loss {name!r}")
    return REGISTRY[target]


def _is_keras_module(module) -> bool:
    return isinstance(module, str) and (
        module in ("keras", "tf_keras") or module.startswith(("keras.", "tf_keras."))
    )


def _unknown(found: str) -> KerascheckError:
    return KerascheckError(
        f"expected a built-in Keras loss, found {found} (kerascheck never imports custom "
        f"code); supported: {', '.join(supported_names())}"
    )
