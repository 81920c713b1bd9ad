"""Keras' built-in optimizers: one `apply_gradients` step, in NumPy, as Keras computes it.

One class per Keras optimizer class, named exactly as Keras names it, registered
in `REGISTRY`; `get_optimizer(config, flavor)` turns what a model file stores (a
serialized optimizer in either Keras dialect, or a plain name such as `"adam"`)
into an instance. Nothing named in a config is imported or executed: names are
looked up in the tables below. The sources this mirrors are
`keras/src/optimizers/` (flavor `"keras3"`), `tf_keras/src/optimizers/*.py`
(`"tf_keras"`, the optimizers tf_keras >= 2.11 compiles with, written
`Custom>Adam` in `.h5` files) and `tf_keras/src/optimizers/legacy/` plus TF's
fused kernels in `tensorflow/core/kernels/training_ops.cc` (`"tf_keras_legacy"`).

Every step follows Keras' `apply`: drop weights without a gradient, clip the
gradients, apply decoupled weight decay `w -= w * wd * lr` to every weight,
update each weight, apply constraints, then count the iteration. Learning-rate
schedules see the iteration count *before* the step.

State is `{"iterations": int, "slots": {weight key: {slot name: array}}}`, slot
names being Keras 3's variable names (`momentum`, `velocity`, ...); Nadam adds
`"u_product"` (Keras' running product of the momentum schedule; tf_keras legacy
calls it `momentum_cache`). `file_slot_names` maps each slot to the name the
flavor's own files use (`m`, `v`, `rms`, ...).

Facts a reimplementation gets wrong (each is tested against Keras):

- The flavors agree on the algorithms, not on the float32 arithmetic: Keras 3
  and tf_keras compute `1 - beta` in Python float64 then round it (0.001 for
  beta_2 = 0.999), TF's legacy kernels compute `float32(1) - float32(beta)`
  (0.00099998713), 1.3e-5 apart. Keras 3's own Nadam and Lion cast beta first.
- Legacy RMSprop without momentum and legacy Adagrad put epsilon *outside* the
  square root (`g / (sqrt(v) + eps)`); with momentum legacy RMSprop, and every
  Keras 3 / tf_keras RMSprop and Adagrad, put it inside (`g / sqrt(v + eps)`).
- Legacy optimizers replace `epsilon=0` by 1e-7 (`epsilon or backend.epsilon()`)
  and scale the learning rate by `1 / (1 + decay * iterations)`; legacy Nadam
  ignores the configured `decay` (it is forced to `schedule_decay`, 0.004) and
  uses it in its momentum schedule `0.96 ** (0.004 * t)` instead of `0.96 ** t`.
- Legacy optimizers apply clipvalue, then clipnorm, then global_clipnorm (all
  that are set); Keras 3 allows one of them; tf_keras applies the first set of
  clipnorm, global_clipnorm, clipvalue and silently ignores the rest.
- tf_keras' SGD always keeps a momentum slot (it holds `-lr * g` when
  momentum is 0); Keras 3 and legacy SGD only create it for momentum > 0.
- tf_keras' Lion defaults to learning_rate 1e-4, Keras 3's to 1e-3.
- tf_keras' Nadam advances `u_product` inside the per-weight update, guarded by
  a Python counter: once per step in an eager `apply_gradients`, but once per
  *weight* after a reload (product and counter restart at 1, neither is saved)
  and inside `tf.function`/`fit` (the guard is frozen at trace time). A state
  without `"u_product"`/`"u_product_counter"` behaves like a fresh or reloaded
  optimizer; `"u_product_counter": None` gives the `fit` behavior.

Scalars are rounded to the weight's dtype exactly where Keras rounds them, and
array arithmetic runs in that dtype in Keras' order, so float32 results agree
with Keras to a few ulps.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from ..errors import KerascheckError
from .row_gradient import RowGradient

FLAVORS = ("keras3", "tf_keras", "tf_keras_legacy")
KERAS3, TF_KERAS, LEGACY = FLAVORS
EPSILON = 1e-7  # backend.epsilon() in both Keras flavors

# Arguments every optimizer of a flavor accepts, with Keras' defaults.
COMMON = {
    KERAS3: {
        "name": None,
        "weight_decay": None,
        "clipnorm": None,
        "clipvalue": None,
        "global_clipnorm": None,
        "use_ema": False,
        "ema_momentum": 0.99,
        "ema_overwrite_frequency": None,
        "loss_scale_factor": None,
        "gradient_accumulation_steps": None,
    },
    TF_KERAS: {
        "name": None,
        "weight_decay": None,
        "clipnorm": None,
        "clipvalue": None,
        "global_clipnorm": None,
        "use_ema": False,
        "ema_momentum": 0.99,
        "ema_overwrite_frequency": None,
    },
    LEGACY: {
        "name": None,
        "clipnorm": None,
        "clipvalue": None,
        "global_clipnorm": None,
        "decay": 0.0,
    },
}
# Keys Keras accepts and drops without effect on the step: Keras 3 warns about
# and ignores `decay`; tf_keras warns about and ignores `lr`.
IGNORED = {
    KERAS3: {"decay"},
    TF_KERAS: {"jit_compile", "is_legacy_optimizer", "lr"},
    LEGACY: {"is_legacy_optimizer", "lr"},
}
NOT_NUMBERS = {"name", "nesterov", "amsgrad", "centered", "use_ema", "adaptive_epsilon"}


def _f(dtype) -> Callable:
    """Round a Python float to `dtype`, as TF does when a float meets a tensor."""
    return np.dtype(dtype).type


# -- learning-rate schedules (keras/src/optimizers/schedules, same in tf_keras) -------------


class Schedule:
    """A learning rate as a function of the iteration count, computed in float32."""

    required: tuple = ("initial_learning_rate", "decay_steps")

    def __init__(self, config: dict, float_step: bool):
        missing = [k for k in self.required if not _is_number(config.get(k))]
        if missing:
            raise KerascheckError(
                f"schedule {type(self).__name__}: expected numbers for {', '.join(missing)}, "
                f"found {config}"
            )
        self.config = config
        # Legacy optimizers pass `float32(iterations)`; the others the int64 counter.
        self.float_step = float_step

    def __call__(self, step: int) -> np.float32:
        raise NotImplementedError


class Constant(Schedule):
    required = ("learning_rate",)

    def __call__(self, step):
        return np.float32(self.config["learning_rate"])


class ExponentialDecay(Schedule):
    required = ("initial_learning_rate", "decay_steps", "decay_rate")

    def __call__(self, step):
        c, f = self.config, np.float32
        p = f(step) / f(c["decay_steps"])
        if c.get("staircase", False):
            p = np.floor(p)
        return f(c["initial_learning_rate"]) * f(c["decay_rate"]) ** p


class InverseTimeDecay(Schedule):
    required = ("initial_learning_rate", "decay_steps", "decay_rate")

    def __call__(self, step):
        c, f = self.config, np.float32
        p = f(step) / f(c["decay_steps"])
        if c.get("staircase", False):
            p = np.floor(p)
        return f(c["initial_learning_rate"]) / (f(1) + f(c["decay_rate"]) * p)


class PiecewiseConstantDecay(Schedule):
    required = ()

    def __init__(self, config, float_step):
        super().__init__(config, float_step)
        bounds, values = config.get("boundaries"), config.get("values")
        if not (
            isinstance(bounds, list)
            and isinstance(values, list)
            and len(values) == len(bounds) + 1
            and all(_is_number(x) for x in bounds + values)
        ):
            raise KerascheckError(
                "schedule PiecewiseConstantDecay: expected number lists with one more value "
                f"than boundaries, found boundaries={bounds!r}, values={values!r}"
            )

    def __call__(self, step):
        """`values[i]` for `boundaries[i-1] < step <= boundaries[i]`.

        Keras casts the boundaries to the step's dtype: truncated to integers for
        the int64 counter, compared as float32 for legacy optimizers.
        """
        c = self.config
        if self.float_step:
            step, bounds = np.float32(step), [np.float32(b) for b in c["boundaries"]]
        else:
            bounds = [int(b) for b in c["boundaries"]]
        index = sum(step > b for b in bounds)
        return np.float32(c["values"][index])


class PolynomialDecay(Schedule):
    def __call__(self, step):
        c, f = self.config, np.float32
        step, decay_steps = f(step), f(c["decay_steps"])
        if c.get("cycle", False):
            multiplier = f(1) if step == 0 else np.ceil(step / decay_steps)
            decay_steps = decay_steps * multiplier
        else:
            step = min(step, decay_steps)
        p = step / decay_steps
        lr0, end = f(c["initial_learning_rate"]), f(c.get("end_learning_rate", 0.0001))
        return (lr0 - end) * (f(1) - p) ** f(c.get("power", 1.0)) + end


class CosineDecay(Schedule):
    def __call__(self, step):
        """Cosine decay from the initial rate, or a linear warmup to `warmup_target` first."""
        c, f = self.config, np.float32
        lr0, decay_steps, step = f(c["initial_learning_rate"]), f(c["decay_steps"]), f(step)
        alpha = c.get("alpha", 0.0)
        target = c.get("warmup_target")
        if target is None:
            return self._decay(min(step, decay_steps), decay_steps, lr0, alpha)
        target, warmup = f(target), f(c.get("warmup_steps", 0))
        step = min(step, decay_steps + warmup)
        if step < warmup:
            return (target - lr0) * (step / warmup) + lr0
        return self._decay(step - warmup, decay_steps, target, alpha)

    @staticmethod
    def _decay(step, decay_steps, start, alpha):
        f = np.float32
        cosine = f(0.5) * (f(1) + np.cos(f(math.pi) * (step / decay_steps)))
        return start * (f(1 - alpha) * cosine + f(alpha))


SCHEDULES = {
    cls.__name__: cls
    for cls in (
        ExponentialDecay,
        InverseTimeDecay,
        PiecewiseConstantDecay,
        PolynomialDecay,
        CosineDecay,
    )
}
REFUSED_SCHEDULES = ("CosineDecayRestarts", "LinearCosineDecay", "NoisyLinearCosineDecay")


def _schedule(value, flavor: str, owner: str) -> Schedule:
    """The optimizer's `learning_rate`: a number, or a serialized built-in schedule."""
    float_step = flavor == LEGACY
    if _is_number(value):
        return Constant({"learning_rate": float(value)}, float_step)
    if not isinstance(value, dict) or not isinstance(value.get("class_name"), str):
        raise KerascheckError(
            f"optimizer {owner}: expected a number or a serialized schedule for "
            f"'learning_rate', found {value!r}"
        )
    name = value["class_name"]
    module, registered = value.get("module"), value.get("registered_name")
    custom = (
        ">" in name
        or registered not in (None, name)
        or (module is not None and not _is_keras_module(module))
    )
    if custom or name not in SCHEDULES:
        reason = "custom" if custom or name not in REFUSED_SCHEDULES else "unsupported"
        raise KerascheckError(
            f"optimizer {owner}: expected a built-in learning-rate schedule, found the "
            f"{reason} schedule {name!r}; supported: a float, {', '.join(SCHEDULES)}"
        )
    config = value.get("config")
    if not isinstance(config, dict):
        raise KerascheckError(f"optimizer {owner}: schedule {name!r} has no config dict")
    return SCHEDULES[name](dict(config), float_step)


# -- gradient clipping ---------------------------------------------------------------------


def _clip_by_norm(g: np.ndarray, clipnorm: float) -> np.ndarray:
    """`tf.clip_by_norm`: `g * c / max(||g||, c)`; a zero gradient stays zero (the norm
    of an Embedding's gradient is that of its rows as read, see row_gradient.py)."""
    c = _f(g.dtype)(clipnorm)
    norm = np.sqrt(np.sum(g * g))
    return g * c / np.maximum(norm, c)


def _clip_by_global_norm(grads: dict, clipnorm: float) -> dict:
    """`clip_by_global_norm`: every gradient times `c * min(1/||all||, 1/c)`."""
    dtype = next(iter(grads.values())).dtype
    f = _f(dtype)
    norm = np.sqrt(sum(np.sum(g * g) for g in grads.values()))
    c = f(clipnorm)
    with np.errstate(divide="ignore"):
        scale = c * np.minimum(f(1) / norm, f(1) / c)
    # `v * scale` turns Keras 3's sparse rows dense.
    return {k: np.asarray(g * scale.astype(g.dtype)) for k, g in grads.items()}


def _clip_by_value(g: np.ndarray, clipvalue: float) -> np.ndarray:
    v = _f(g.dtype)(clipvalue)
    if isinstance(g, RowGradient):  # tf.clip_by_value clips each row as read
        return RowGradient.of(g.indices, np.clip(g.rows, -v, v), g.shape)
    return np.clip(g, -v, v)


# -- the optimizers ------------------------------------------------------------------------


class Optimizer:
    """The step scaffolding Keras' base optimizer shares: clipping, decay, constraints.

    Subclasses give their hyperparameters (`hyper`, per-flavor changes in
    `hyper_by_flavor`), their slots (`_slots`, `file_slots`) and `_update`,
    one weight's update from its gradient, slots and learning rate.
    """

    hyper: dict = {}
    hyper_by_flavor: dict = {}
    flavors: tuple = FLAVORS
    # Keras 3 slot name -> the name tf_keras' new and legacy optimizers give it.
    file_slots: dict = {}
    # Initial slot values other than zero: slot name -> the config key holding it.
    slot_init: dict = {}
    # Legacy optimizers read the old `lr` argument in place of `learning_rate`.
    legacy_lr_alias = True

    def __init__(self, config: dict, flavor: str):
        self.flavor = flavor
        self.name = type(self).__name__
        self.config = self._normalize(config)
        self.learning_rate = _schedule(self.config["learning_rate"], flavor, self.name)
        self._refuse()
        self.slot_names = self._slots()
        names = self.file_slots.get(flavor, {})
        self.file_slot_names = {n: names.get(n, n) for n in self.slot_names}

    # -- config --------------------------------------------------------------------------

    def _normalize(self, config: dict) -> dict:
        """Keras' defaults overlaid with the file's values, numbers as floats."""
        defaults = {
            **COMMON[self.flavor],
            **self.hyper,
            **self.hyper_by_flavor.get(self.flavor, {}),
        }
        config = dict(config)
        if self.flavor == LEGACY and "lr" in config and self.legacy_lr_alias:
            config["learning_rate"] = config["lr"]  # `kwargs.get("lr", learning_rate)`
        unknown = sorted(set(config) - set(defaults) - IGNORED[self.flavor])
        if unknown:
            raise KerascheckError(
                f"optimizer {self.name} ({self.flavor}): expected arguments among "
                f"{', '.join(sorted(defaults))}, found {', '.join(map(repr, unknown))}"
            )
        out = {}
        for key, default in defaults.items():
            value = config.get(key, default)
            if key == "learning_rate" or value is None:
                out[key] = value
            elif key in NOT_NUMBERS:
                out[key] = value if key == "name" else bool(value)
            elif _is_number(value):
                out[key] = float(value)
            else:
                raise KerascheckError(
                    f"optimizer {self.name}: expected a number for '{key}', found {value!r}"
                )
        if self.flavor == LEGACY and "epsilon" in out:
            out["epsilon"] = out["epsilon"] or EPSILON  # `epsilon or backend.epsilon()`
        return out

    def _refuse(self):
        """One line for what Keras would reject and for what the engine does not model."""
        c = self.config
        clips = [k for k in ("clipnorm", "clipvalue", "global_clipnorm") if c.get(k) is not None]
        if self.flavor == KERAS3 and len(clips) > 1:
            raise KerascheckError(
                f"optimizer {self.name}: expected at most one of clipnorm, clipvalue and "
                f"global_clipnorm (Keras 3 refuses more), found {', '.join(clips)}"
            )
        if {"clipnorm", "global_clipnorm"} <= set(clips):
            raise KerascheckError(
                f"optimizer {self.name}: expected clipnorm or global_clipnorm, found both"
            )
        refused = {
            "use_ema": "an exponential moving average of the weights (use_ema=True)",
            "gradient_accumulation_steps": "gradient accumulation",
            "loss_scale_factor": "mixed-precision loss scaling (loss_scale_factor)",
        }
        for key, what in refused.items():
            if c.get(key):
                raise KerascheckError(
                    f"optimizer {self.name}: {key}={c[key]!r} asks for {what}, which "
                    "kerascheck's engine does not implement"
                )

    def _slots(self) -> list[str]:
        return []

    # -- state ---------------------------------------------------------------------------

    def init_state(self, weights: dict) -> dict:
        """The state of a freshly built Keras optimizer: zero (or initial) slots, step 0."""
        slots = {}
        for key, w in weights.items():
            w = _weight(key, w)
            slots[key] = {
                n: np.full(w.shape, self.slot_init_value(n), dtype=w.dtype) for n in self.slot_names
            }
        return {"iterations": 0, "slots": slots, **self._init_globals(weights)}

    def slot_init_value(self, slot: str) -> float:
        return self.config[self.slot_init[slot]] if slot in self.slot_init else 0.0

    def _init_globals(self, weights: dict) -> dict:
        return {}

    # -- the step ------------------------------------------------------------------------

    def step(self, weights: dict, grads: dict, state: dict, constraints: dict | None = None):
        """One `apply_gradients(zip(grads, weights))`: returns (new weights, new state)."""
        extra = sorted(set(grads) - set(weights))
        if extra:
            raise KerascheckError(
                f"optimizer {self.name}: expected gradients for known weights, found "
                f"gradients for {', '.join(map(repr, extra))}"
            )
        keys = [k for k in weights if grads.get(k) is not None]
        if not keys:
            raise KerascheckError(
                f"optimizer {self.name}: expected a gradient for at least one weight, "
                "found none (Keras raises 'No gradients provided for any variable')"
            )
        t = int(state["iterations"])
        ws = {k: _weight(k, weights[k]) for k in keys}
        gs = {k: _gradient(k, grads[k], ws[k]) for k in keys}
        gs = self._clip(gs)
        if self.flavor != KERAS3:  # tf_keras adds up repeated rows after clipping them
            gs = {k: np.asarray(g) for k, g in gs.items()}
        lr = self._learning_rate(t)
        wd = self.config.get("weight_decay")
        if wd is not None:  # decoupled, before the update, with the same learning rate
            for k, w in ws.items():
                f = _f(w.dtype)
                ws[k] = w - w * f(wd) * f(lr)
        shared = self._prepare(t, state, ws[keys[0]].dtype)
        new_weights = dict(weights)
        new_slots = {k: dict(v) for k, v in state.get("slots", {}).items()}
        for k in keys:
            w = ws[k]
            slots = self._read_slots(k, state, w)
            w = self._update(w, gs[k], slots, _f(w.dtype)(lr), t, shared)
            if constraints and constraints.get(k) is not None:
                w = np.asarray(constraints[k](w), dtype=ws[k].dtype)
            new_weights[k] = w
            new_slots[k] = slots
        new_state = {**state, "iterations": t + 1, "slots": new_slots, **self._globals(shared)}
        return new_weights, new_state

    def _read_slots(self, key: str, state: dict, w: np.ndarray) -> dict:
        stored = state.get("slots", {}).get(key, {})
        slots = {}
        for n in self.slot_names:
            if n not in stored:
                raise KerascheckError(
                    f"optimizer {self.name}: expected slot '{n}' for weight '{key}' in the "
                    f"state, found {sorted(stored) or 'none'}"
                )
            value = np.asarray(stored[n], dtype=w.dtype)
            if value.shape != w.shape:
                raise KerascheckError(
                    f"optimizer {self.name}: slot '{n}' of weight '{key}' has shape "
                    f"{value.shape}, expected the weight's shape {w.shape}"
                )
            slots[n] = value
        return slots

    def _learning_rate(self, t: int) -> np.float32:
        """The schedule at the pre-step count; legacy adds `lr / (1 + decay * t)`."""
        lr = self.learning_rate(t)
        decay = self.config.get("decay") or 0.0
        if self.flavor == LEGACY and decay > 0.0:
            f = np.float32
            lr = lr / (f(1) + f(decay) * f(t))
        return np.float32(lr)

    def _clip(self, gs: dict) -> dict:
        c = self.config
        if self.flavor == LEGACY:  # every transform that is set, in this order
            if c["clipvalue"] is not None:
                gs = {k: _clip_by_value(g, c["clipvalue"]) for k, g in gs.items()}
            if c["clipnorm"] is not None:
                gs = {k: _clip_by_norm(g, c["clipnorm"]) for k, g in gs.items()}
            if c["global_clipnorm"] is not None:
                gs = _clip_by_global_norm(gs, c["global_clipnorm"])
            return gs
        if c["clipnorm"] and c["clipnorm"] > 0:  # the first one set wins
            return {k: _clip_by_norm(g, c["clipnorm"]) for k, g in gs.items()}
        if c["global_clipnorm"] and c["global_clipnorm"] > 0:
            return _clip_by_global_norm(gs, c["global_clipnorm"])
        if c["clipvalue"] and c["clipvalue"] > 0:
            return {k: _clip_by_value(g, c["clipvalue"]) for k, g in gs.items()}
        return gs

    def _prepare(self, t: int, state: dict, dtype) -> dict:
        """Per-step values shared by all weights (`_update` may advance them)."""
        return {}

    def _globals(self, shared: dict) -> dict:
        """State entries besides iterations and slots, after the step."""
        return {}

    def _update(self, w, g, slots: dict, lr, t: int, shared: dict) -> np.ndarray:
        """One weight's new value; writes its new slot arrays into `slots`."""
        raise NotImplementedError

    @property
    def legacy(self) -> bool:
        return self.flavor == LEGACY

    def _one_minus(self, beta: float, f):
        """`1 - beta` rounded like Keras: Python float64 first, or float32 in TF's kernels."""
        return f(1) - f(beta) if self.legacy else f(1 - beta)

    def __repr__(self):
        return f"{self.name}({self.flavor}, {self.config})"


class SGD(Optimizer):
    hyper = {"learning_rate": 0.01, "momentum": 0.0, "nesterov": False}
    file_slots = {TF_KERAS: {"momentum": "m"}}

    def _slots(self):
        # tf_keras builds the momentum slot even for momentum 0.
        has = self.config["momentum"] > 0 or self.flavor == TF_KERAS
        return ["momentum"] if has else []

    def _update(self, w, g, slots, lr, t, shared):
        """`m = mu*m - lr*g; w += m`, Nesterov `w += mu*m - lr*g` with the new m."""
        if "momentum" not in slots:
            return w - g * lr
        mu = _f(w.dtype)(self.config["momentum"])
        m = slots["momentum"] * mu - g * lr
        slots["momentum"] = m
        return w + (m * mu - g * lr) if self.config["nesterov"] else w + m


class Adam(Optimizer):
    hyper = {
        "learning_rate": 0.001,
        "beta_1": 0.9,
        "beta_2": 0.999,
        "epsilon": 1e-7,
        "amsgrad": False,
    }
    hyper_by_flavor = {TF_KERAS: {"adaptive_epsilon": False}}
    file_slots = {
        TF_KERAS: {"momentum": "m", "velocity": "v", "velocity_hat": "vhat"},
        LEGACY: {"momentum": "m", "velocity": "v", "velocity_hat": "vhat"},
    }

    def _slots(self):
        return ["momentum", "velocity"] + (["velocity_hat"] if self.config["amsgrad"] else [])

    def _update(self, w, g, slots, lr, t, shared):
        """Keras' epsilon-hat form: `w -= alpha * m / (sqrt(v) + eps)` with the bias
        corrections folded into `alpha = lr * sqrt(1 - b2^t) / (1 - b1^t)`."""
        c, f = self.config, _f(w.dtype)
        step = f(t + 1)
        b1_power, b2_power = f(c["beta_1"]) ** step, f(c["beta_2"]) ** step
        alpha = lr * np.sqrt(f(1) - b2_power) / (f(1) - b1_power)
        # `old + (new - old) * (1 - beta)`, each step into the temporary it made.
        m = _into(np.multiply, g - slots["momentum"], self._one_minus(c["beta_1"], f))
        m = _into(np.add, m, slots["momentum"])
        v = _into(np.subtract, g * g, slots["velocity"])
        v = _into(np.multiply, v, self._one_minus(c["beta_2"], f))
        v = _into(np.add, v, slots["velocity"])
        slots["momentum"], slots["velocity"] = m, v
        if c["amsgrad"]:
            v = slots["velocity_hat"] = np.maximum(slots["velocity_hat"], v)
        eps = f(c["epsilon"])
        if c.get("adaptive_epsilon"):  # tf_keras only
            eps = eps * np.sqrt(f(1) - b2_power)
        return w - _into(np.divide, m * alpha, _into(np.add, np.sqrt(v), eps))


class AdamW(Adam):
    """Adam with decoupled weight decay on by default (0.004); no legacy version."""

    hyper = {**Adam.hyper, "weight_decay": 0.004}
    hyper_by_flavor = {}
    flavors = (KERAS3, TF_KERAS)

    def _refuse(self):
        if self.config["weight_decay"] is None:
            raise KerascheckError(
                "optimizer AdamW: expected a float weight_decay (Keras requires one), found None"
            )
        super()._refuse()


class Adamax(Optimizer):
    hyper = {"learning_rate": 0.001, "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7}
    file_slots = {
        TF_KERAS: {"momentum": "m", "norm": "u"},
        LEGACY: {"momentum": "m", "norm": "v"},
    }

    def _slots(self):
        return ["momentum", "norm"]

    def _update(self, w, g, slots, lr, t, shared):
        """Infinity-norm Adam: `u = max(b2*u, |g|)`, `w -= lr*m / ((1 - b1^t)(u + eps))`."""
        c, f = self.config, _f(w.dtype)
        b1_power = f(c["beta_1"]) ** f(t + 1)
        m = slots["momentum"] + (g - slots["momentum"]) * self._one_minus(c["beta_1"], f)
        u = np.maximum(f(c["beta_2"]) * slots["norm"], np.abs(g))
        slots["momentum"], slots["norm"] = m, u
        eps = f(c["epsilon"])
        if self.legacy:  # ApplyAdaMax's order
            return w - lr / (f(1) - b1_power) * (m / (u + eps))
        return w - (lr * m) / ((f(1) - b1_power) * (u + eps))


class Nadam(Optimizer):
    hyper = {"learning_rate": 0.001, "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7}
    hyper_by_flavor = {LEGACY: {"schedule_decay": 0.004}}
    file_slots = {
        TF_KERAS: {"momentum": "m", "velocity": "v"},
        LEGACY: {"momentum": "m", "velocity": "v"},
    }

    def __init__(self, config, flavor):
        super().__init__(config, flavor)
        if self.legacy:
            if not isinstance(self.learning_rate, Constant):
                raise KerascheckError(
                    "optimizer Nadam (legacy): expected a float learning_rate, found a "
                    "schedule (tf_keras' legacy Nadam refuses schedules)"
                )
            # Legacy Nadam overwrites `decay` with `schedule_decay` before OptimizerV2 sees it.
            self.config["decay"] = self.config["schedule_decay"]

    def _slots(self):
        return ["momentum", "velocity"]

    def _init_globals(self, weights):
        dtype = next(iter(weights.values())).dtype if weights else np.float32
        start = {"u_product": np.asarray(1.0, dtype=dtype)[()]}
        return {**start, "u_product_counter": 1} if self.flavor == TF_KERAS else start

    def _learning_rate(self, t):
        """Legacy Nadam uses its `decay` for the momentum schedule, never for the rate."""
        return np.float32(self.learning_rate(t))

    def _mu(self, step, f):
        """The momentum schedule `beta_1 * (1 - 0.5 * 0.96^(d*t))`; d = 1 except legacy."""
        if self.legacy:
            step = f(self.config["schedule_decay"]) * step
        return f(self.config["beta_1"]) * (f(1) - f(0.5) * f(0.96) ** step)

    def _prepare(self, t, state, dtype):
        """Advance the running product of the momentum schedule, once per step.

        tf_keras instead advances it inside each weight's update unless a Python
        counter says this step already did (`_u_product_counter == iterations + 2`);
        see `_tf_keras_u_product`.
        """
        f = _f(dtype)
        u_product = f(state.get("u_product", 1.0))
        if self.flavor == TF_KERAS:
            return {"u_product": u_product, "u_product_counter": state.get("u_product_counter", 1)}
        if self.flavor == KERAS3:  # `u_product * beta_1 * (1 - 0.5 * 0.96^t)`
            factor = f(1) - f(0.5) * f(0.96) ** f(t + 1)
            u_product = u_product * f(self.config["beta_1"]) * factor
        else:
            u_product = u_product * self._mu(f(t + 1), f)
        return {"u_product": u_product}

    def _globals(self, shared):
        return dict(shared)

    def _tf_keras_u_product(self, shared, t, f):
        """tf_keras' eager counter logic, bug for bug.

        A fresh optimizer's counter (1) matches `iterations + 2` after the first
        weight of each step, so the product advances once per step. A reloaded
        optimizer restarts counter and product at 1 and advances the product once
        per weight until the counter catches up. (Inside `tf.function`, as in
        `fit`, the comparison is frozen at trace time and the product advances
        for nearly every weight; pass a state with `u_product_counter: None`
        to get that: it never matches.)
        """
        counter = shared["u_product_counter"]
        if counter is None or counter != t + 2:
            shared["u_product"] = f(shared["u_product"]) * self._mu(f(t + 1), f)
            shared["u_product_counter"] = None if counter is None else counter + 1
        return shared["u_product"]

    def _update(self, w, g, slots, lr, t, shared):
        """Nesterov-accelerated Adam with Dozat's momentum schedule."""
        c, f = self.config, _f(w.dtype)
        b1, b2, eps = f(c["beta_1"]), f(c["beta_2"]), f(c["epsilon"])
        mu_t, mu_next = self._mu(f(t + 1), f), self._mu(f(t + 2), f)
        if self.flavor == TF_KERAS:
            u_product = self._tf_keras_u_product(shared, t, f)
        else:
            u_product = f(shared["u_product"])
        u_product_next = u_product * mu_next
        b2_power = b2 ** f(t + 1)
        m, v = slots["momentum"], slots["velocity"]
        if self.legacy:  # legacy/nadam.py's _resource_apply_dense
            g_prime = g / (f(1) - u_product)
            m = b1 * m + (f(1) - b1) * g
            v = b2 * v + (f(1) - b2) * (g * g)
            m_bar = (f(1) - mu_t) * g_prime + mu_next * (m / (f(1) - u_product_next))
            slots["momentum"], slots["velocity"] = m, v
            return w - lr * m_bar / (np.sqrt(v / (f(1) - b2_power)) + eps)
        m = m + (g - m) * (f(1) - b1)
        v = v + (g * g - v) * (f(1) - b2)
        slots["momentum"], slots["velocity"] = m, v
        m_hat = (mu_next * m) / (f(1) - u_product_next) + ((f(1) - mu_t) * g) / (f(1) - u_product)
        v_hat = v / (f(1) - b2_power)
        return w - (m_hat * lr) / (np.sqrt(v_hat) + eps)


class RMSprop(Optimizer):
    hyper = {
        "learning_rate": 0.001,
        "rho": 0.9,
        "momentum": 0.0,
        "epsilon": 1e-7,
        "centered": False,
    }
    file_slots = {LEGACY: {"velocity": "rms", "momentum": "momentum", "average_gradient": "mg"}}

    def _slots(self):
        c = self.config
        return (
            ["velocity"]
            + (["momentum"] if c["momentum"] > 0 else [])
            + (["average_gradient"] if c["centered"] else [])
        )

    def _update(self, w, g, slots, lr, t, shared):
        """`v = rho*v + (1-rho)*g²`, `w -= lr*g / sqrt(v + eps)` (centered: v - mean(g)²)."""
        if self.legacy:
            return self._update_legacy(w, g, slots, lr)
        c, f = self.config, _f(w.dtype)
        rho, one_minus_rho = f(c["rho"]), f(1 - c["rho"])
        v = slots["velocity"] = rho * slots["velocity"] + one_minus_rho * (g * g)
        denominator = v + f(c["epsilon"])
        if c["centered"]:
            a = slots["average_gradient"] = rho * slots["average_gradient"] + one_minus_rho * g
            denominator = v - a * a + f(c["epsilon"])
        if self.flavor == TF_KERAS:  # `lr * g * rsqrt(d)`
            increment = lr * g * (f(1) / np.sqrt(denominator))
        else:
            increment = (lr * g) / np.sqrt(denominator)
        if c["momentum"] > 0:
            increment = slots["momentum"] = f(c["momentum"]) * slots["momentum"] + increment
        return w - increment

    def _update_legacy(self, w, g, slots, lr):
        """With momentum TF's fused kernels (epsilon inside the root); without, Python
        with epsilon *outside* the root: `w -= lr*g / (sqrt(v) + eps)`."""
        c, f = self.config, _f(w.dtype)
        rho, eps = f(c["rho"]), f(c["epsilon"])
        one_minus_rho = f(1) - rho
        if c["momentum"] > 0:  # ApplyRMSProp / ApplyCenteredRMSProp
            v = slots["velocity"] = slots["velocity"] + (g * g - slots["velocity"]) * one_minus_rho
            denominator = v + eps
            if c["centered"]:
                a = slots["average_gradient"]
                a = slots["average_gradient"] = a + (g - a) * one_minus_rho
                denominator = (v - a * a) + eps
            mom = slots["momentum"] * f(c["momentum"]) + (g * lr) / np.sqrt(denominator)
            slots["momentum"] = mom
            return w - mom
        v = slots["velocity"] = rho * slots["velocity"] + one_minus_rho * (g * g)
        denominator = v
        if c["centered"]:
            a = slots["average_gradient"] = rho * slots["average_gradient"] + one_minus_rho * g
            denominator = v - a * a
        return w - lr * g / (np.sqrt(denominator) + eps)


class Adagrad(Optimizer):
    hyper = {"learning_rate": 0.001, "initial_accumulator_value": 0.1, "epsilon": 1e-7}
    slot_init = {"accumulator": "initial_accumulator_value"}

    def _slots(self):
        return ["accumulator"]

    def _update(self, w, g, slots, lr, t, shared):
        """`acc += g²`, `w -= lr*g / sqrt(acc + eps)`; legacy `g*lr / (sqrt(acc) + eps)`."""
        eps = _f(w.dtype)(self.config["epsilon"])
        acc = slots["accumulator"] = slots["accumulator"] + g * g
        if self.legacy:  # ApplyAdagradV2
            return w - g * lr / (np.sqrt(acc) + eps)
        return w - (lr * g) / np.sqrt(acc + eps)


class Adadelta(Optimizer):
    hyper = {"learning_rate": 0.001, "rho": 0.95, "epsilon": 1e-7}
    file_slots = {LEGACY: {"accumulated_grad": "accum_grad", "accumulated_delta_var": "accum_var"}}

    def _slots(self):
        return ["accumulated_grad", "accumulated_delta_var"]

    def _update(self, w, g, slots, lr, t, shared):
        """`delta = -g * sqrt(E[dx²] + eps) / sqrt(E[g²] + eps)`, `w += lr * delta`."""
        c, f = self.config, _f(w.dtype)
        rho, eps = f(c["rho"]), f(c["epsilon"])
        acc_g, acc_d = slots["accumulated_grad"], slots["accumulated_delta_var"]
        if self.legacy:  # ApplyAdadelta
            one_minus_rho = f(1) - rho
            acc_g = acc_g * rho + (g * g) * one_minus_rho
            update = np.sqrt(acc_d + eps) * (f(1) / np.sqrt(acc_g + eps)) * g
            slots["accumulated_grad"] = acc_g
            slots["accumulated_delta_var"] = acc_d * rho + (update * update) * one_minus_rho
            return w - update * lr
        one_minus_rho = f(1 - c["rho"])
        if self.flavor == TF_KERAS:  # `(1 - rho) * g * g`
            acc_g = rho * acc_g + one_minus_rho * g * g
        else:
            acc_g = rho * acc_g + one_minus_rho * (g * g)
        delta = -(np.sqrt(acc_d + eps) * g) / np.sqrt(acc_g + eps)
        if self.flavor == TF_KERAS:
            acc_d = rho * acc_d + one_minus_rho * delta * delta
        else:
            acc_d = rho * acc_d + one_minus_rho * (delta * delta)
        slots["accumulated_grad"], slots["accumulated_delta_var"] = acc_g, acc_d
        return w + lr * delta


class Ftrl(Optimizer):
    hyper = {
        "learning_rate": 0.001,
        "learning_rate_power": -0.5,
        "initial_accumulator_value": 0.1,
        "l1_regularization_strength": 0.0,
        "l2_regularization_strength": 0.0,
        "l2_shrinkage_regularization_strength": 0.0,
        "beta": 0.0,
    }
    slot_init = {"accumulator": "initial_accumulator_value"}
    legacy_lr_alias = False  # legacy Ftrl reads `learning_rate` only

    def _slots(self):
        return ["accumulator", "linear"]

    def _update(self, w, g, slots, lr, t, shared):
        """Follow-the-regularized-leader: `w = (clip(z, ±l1) - z) / (n^-p / lr + 2*l2)`."""
        c, f = self.config, _f(w.dtype)
        power = c["learning_rate_power"]
        l1 = f(c["l1_regularization_strength"])
        l2 = f(c["l2_regularization_strength"]) + f(c["beta"]) / (f(2.0) * lr)
        accum, linear = slots["accumulator"], slots["linear"]
        new_accum = accum + g * g
        if self.legacy and f(power) == f(-0.5):  # the kernels' sqrt special case
            root_new, root_old = np.sqrt(new_accum), np.sqrt(accum)
        else:
            root_new, root_old = new_accum ** f(-power), accum ** f(-power)
        if self.legacy:
            shrink = f(2) * f(c["l2_shrinkage_regularization_strength"])
        else:
            shrink = f(2 * c["l2_shrinkage_regularization_strength"])
        grad = g + shrink * w
        linear = linear + (grad - (root_new - root_old) / lr * w)
        quadratic = root_new / lr + f(2) * l2
        slots["accumulator"], slots["linear"] = new_accum, linear
        return (np.clip(linear, -l1, l1) - linear) / quadratic


class Lion(Optimizer):
    hyper = {"learning_rate": 0.001, "beta_1": 0.9, "beta_2": 0.99}
    hyper_by_flavor = {TF_KERAS: {"learning_rate": 0.0001}}
    flavors = (KERAS3, TF_KERAS)
    file_slots = {TF_KERAS: {"momentum": "m"}}

    def _slots(self):
        return ["momentum"]

    def _update(self, w, g, slots, lr, t, shared):
        """`w -= lr * sign(b1*m + (1-b1)*g)`, then `m = b2*m + (1-b2)*g`."""
        c, f = self.config, _f(w.dtype)
        b1, b2, m = f(c["beta_1"]), f(c["beta_2"]), slots["momentum"]
        w = w - lr * np.sign(m * b1 + g * (f(1.0) - b1))
        slots["momentum"] = m * b2 + g * (f(1.0) - b2)
        return w


class Lamb(Optimizer):
    """Adam's direction rescaled by the trust ratio `||w|| / ||update||`; Keras 3 only."""

    hyper = {"learning_rate": 0.001, "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7}
    flavors = (KERAS3,)

    def _slots(self):
        return ["momentum", "velocity"]

    def _update(self, w, g, slots, lr, t, shared):
        c, f = self.config, _f(w.dtype)
        step = f(t + 1)
        b1_power, b2_power = f(c["beta_1"]) ** step, f(c["beta_2"]) ** step
        m = slots["momentum"] + (g - slots["momentum"]) * f(1 - c["beta_1"])
        v = slots["velocity"] + (g * g - slots["velocity"]) * f(1 - c["beta_2"])
        slots["momentum"], slots["velocity"] = m, v
        update = (m / (f(1) - b1_power)) / (np.sqrt(v / (f(1) - b2_power)) + f(c["epsilon"]))
        w_norm, u_norm = np.sqrt(np.sum(w * w)), np.sqrt(np.sum(update * update))
        ratio = w_norm / u_norm if w_norm > 0 and u_norm > 0 else f(1)
        return w - ratio * lr * update


OPTIMIZERS = (SGD, Adam, AdamW, Adamax, Nadam, RMSprop, Adagrad, Adadelta, Ftrl, Lion, Lamb)
REGISTRY: dict[str, type[Optimizer]] = {cls.__name__: cls for cls in OPTIMIZERS}
REFUSED = {
    "LossScaleOptimizer": "mixed-precision loss scaling",
    "LossScaleOptimizerV3": "mixed-precision loss scaling",
    "LossScaleOptimizerV1": "mixed-precision loss scaling",
    "Adafactor": "not implemented by kerascheck's engine",
    "Muon": "not implemented by kerascheck's engine",
    "ScheduleFreeAdamW": "not implemented by kerascheck's engine",
    "MultiOptimizer": "not implemented by kerascheck's engine",
}


def supported_optimizers(flavor: str | None = None) -> list[str]:
    return sorted(n for n, cls in REGISTRY.items() if flavor is None or flavor in cls.flavors)


def copy_state(state: dict) -> dict:
    """An independent copy of an optimizer state (slots are updated in place by `step`'s
    caller otherwise sharing them)."""
    slots = {k: {n: np.array(v) for n, v in s.items()} for k, s in state.get("slots", {}).items()}
    return {**state, "slots": slots}


def _canonical(name: str) -> str:
    """Keras looks optimizer names up case-insensitively (`"adam"`, `"Adam"`)."""
    matches = [n for n in REGISTRY if n.lower() == name.lower()]
    return matches[0] if matches else name


def get_optimizer(config, flavor: str) -> Optimizer:
    """The optimizer a model file stores, computed as Keras `flavor` computes it.

    `config`: Keras 3's `{"module", "class_name", "config", "registered_name"}`,
    tf_keras' `{"class_name": "Adam" | "Custom>Adam", "config"}`, or a name such as
    `"adam"` (Keras' defaults). `flavor`: "keras3", "tf_keras" or "tf_keras_legacy".
    """
    if flavor not in FLAVORS:
        raise KerascheckError(
            f"expected an optimizer flavor among {', '.join(FLAVORS)}, found {flavor!r}"
        )
    if isinstance(config, str):
        name, values = _canonical(config), {}
    elif isinstance(config, dict) and isinstance(config.get("class_name"), str):
        name, values = _canonical(config["class_name"]), config.get("config") or {}
        module, registered = config.get("module"), config.get("registered_name")
        if name.startswith("Custom>"):  # tf_keras registers its new optimizers so
            name = name[len("Custom>") :]
        if (module is not None and not _is_keras_module(module)) or registered not in (
            None,
            config["class_name"],
            name,
        ):
            raise _unknown(f"the custom optimizer {registered or name!r} from module {module!r}")
        if not isinstance(values, dict):
            raise _unknown(f"optimizer {name!r} with a config that is not a dict")
    else:
        raise _unknown(f"the optimizer {config!r}")
    if name in REFUSED:
        raise KerascheckError(f"optimizer '{name}' is not supported: {REFUSED[name]}")
    _check_flavor(config, values, flavor)
    cls = REGISTRY.get(name)
    if cls is None:
        raise _unknown(f"the optimizer {name!r}")
    if flavor not in cls.flavors:
        raise KerascheckError(
            f"optimizer '{name}' does not exist in {flavor}; expected one of "
            f"{', '.join(supported_optimizers(flavor))}"
        )
    return cls(values, flavor)


def _check_flavor(config, values: dict, flavor: str):
    """Refuse a config that says it belongs to the other tf_keras optimizer family."""
    module = config.get("module") if isinstance(config, dict) else None
    says_legacy = values.get("is_legacy_optimizer")
    if isinstance(module, str) and module.endswith(".legacy"):
        says_legacy = True
    if says_legacy is None or bool(says_legacy) == (flavor == LEGACY):
        return
    found = "a tf_keras legacy optimizer" if says_legacy else "a new (non-legacy) optimizer"
    raise KerascheckError(
        f"optimizer config: expected one for flavor {flavor!r}, found {found} "
        f"(module {module!r}, is_legacy_optimizer={values.get('is_legacy_optimizer')!r})"
    )


def _unknown(found: str) -> KerascheckError:
    return KerascheckError(
        f"expected a built-in Keras optimizer, found {found} (kerascheck never imports "
        f"custom code); supported: {', '.join(supported_optimizers())}"
    )


def _is_keras_module(module) -> bool:
    return isinstance(module, str) and (
        module in ("keras", "tf_keras") or module.startswith(("keras.", "tf_keras."))
    )


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.number)) and not isinstance(value, bool)


def _into(ufunc, a, b):
    """`ufunc(a, b)`, written into `a` when `a` is a plain temporary array the caller just
    made and the result has its dtype and shape: the same values, one allocation fewer.
    Never pass a weight, a gradient or a slot as `a`."""
    if (
        type(a) is np.ndarray
        and a.base is None
        and a.ndim
        and np.result_type(a, b) == a.dtype
        and np.broadcast_shapes(a.shape, np.shape(b)) == a.shape
    ):
        return ufunc(a, b, out=a)
    return ufunc(a, b)


def _weight(key: str, w) -> np.ndarray:
    w = np.asarray(w)
    if w.dtype.kind != "f":
        raise KerascheckError(f"weight '{key}': expected a floating-point array, found {w.dtype}")
    return w


def _gradient(key: str, g, w: np.ndarray) -> np.ndarray:
    """The gradient in the weight's dtype (Keras casts it in every update step); an
    Embedding's stays a `RowGradient`, the rows as read."""
    if isinstance(g, RowGradient) and g.shape == w.shape:
        return g.astype_rows(w.dtype)
    g = np.asarray(g)
    if g.shape != w.shape:
        raise KerascheckError(
            f"weight '{key}': expected a gradient of shape {w.shape}, found {g.shape}"
        )
    return g.astype(w.dtype, copy=False)


# -- weight constraints (keras/src/constraints/constraints.py, same in tf_keras) -----------


class Constraint:
    """A projection Keras applies to a weight after each optimizer update."""

    def __init__(self, config: dict):
        self.config = config
        axis = config.get("axis", 0)
        self.axis = tuple(axis) if isinstance(axis, (list, tuple)) else axis

    def _norms(self, w):
        return np.sqrt(np.sum(w * w, axis=self.axis, keepdims=True))

    def _rescale(self, w, norms, desired):
        return w * (desired / (_f(w.dtype)(EPSILON) + norms))


class MaxNorm(Constraint):
    def __call__(self, w):
        w = np.asarray(w)
        norms = self._norms(w)
        max_value = _f(w.dtype)(self.config.get("max_value", 2))
        return self._rescale(w, norms, np.clip(norms, 0, max_value))


class NonNeg(Constraint):
    def __call__(self, w):
        w = np.asarray(w)
        return np.maximum(w, _f(w.dtype)(0))


class UnitNorm(Constraint):
    def __call__(self, w):
        w = np.asarray(w)
        return w / (_f(w.dtype)(EPSILON) + self._norms(w))


class MinMaxNorm(Constraint):
    def __call__(self, w):
        """`rate * clip(norm, min, max) + (1 - rate) * norm` as the target norm."""
        w = np.asarray(w)
        c, f = self.config, _f(w.dtype)
        norms = self._norms(w)
        rate = c.get("rate", 1.0)
        clipped = np.clip(norms, f(c.get("min_value", 0.0)), f(c.get("max_value", 1.0)))
        desired = f(rate) * clipped + f(1 - rate) * norms
        return self._rescale(w, norms, desired)


CONSTRAINTS = {cls.__name__: cls for cls in (MaxNorm, NonNeg, UnitNorm, MinMaxNorm)}
CONSTRAINT_ALIASES = {
    "max_norm": "MaxNorm",
    "maxnorm": "MaxNorm",
    "non_neg": "NonNeg",
    "nonneg": "NonNeg",
    "unit_norm": "UnitNorm",
    "unitnorm": "UnitNorm",
    "min_max_norm": "MinMaxNorm",
    "minmaxnorm": "MinMaxNorm",
}


def get_constraint(config) -> Constraint | None:
    """A layer's `kernel_constraint` (etc.) as stored: None, a name, or a serialized dict."""
    if config is None:
        return None
    if isinstance(config, str):
        name, values = CONSTRAINT_ALIASES.get(config, config), {}
    elif isinstance(config, dict) and isinstance(config.get("class_name"), str):
        name, values = config["class_name"], config.get("config") or {}
        module, registered = config.get("module"), config.get("registered_name")
        if (module is not None and not _is_keras_module(module)) or registered not in (
            None,
            name,
        ):
            name = f"custom {registered or name}"
    else:
        name, values = repr(config), {}
    if name not in CONSTRAINTS:
        raise KerascheckError(
            f"expected a built-in Keras constraint, found {name!r} (kerascheck never imports "
            f"custom code); supported: {', '.join(CONSTRAINTS)}"
        )
    return CONSTRAINTS[name](dict(values))
