"""`train-step --against`: the user's weights after one step, judged by their update, and
the optimizer mistakes that explain a wrong one.

People who port a training loop get the optimizer formulas subtly different from
Keras'. Each alternative below is Keras' step with one thing changed, run by
the engine's own optimizer on Keras' gradient and the same starting state:
the textbook (PyTorch) Adam epsilon, RMSprop's epsilon outside the root,
weight decay coupled into the gradient or applied after the step, per-tensor
vs global clipping, Nesterov's first step, bias correction restarted instead
of continued from the file's step count, the momentum velocity's sign and
PyTorch's momentum buffer continued from Keras' slot; for BatchNormalization's
moving statistics, PyTorch's momentum convention and the biased vs unbiased
batch variance. When the optimizer is right, the wrong gradient behind the
update: the usual constant factors, and each of `grad`'s named mistakes
(grad_hints) run through the optimizer.
"""

from __future__ import annotations

import numpy as np

from .engine.optimizers import copy_state, get_optimizer
from .grad import TensorStats

CLIPPING = ("clipnorm", "clipvalue", "global_clipnorm")

# Hyperparameters every flavor of an optimizer reads the same way.
SHARED = {
    "learning_rate",
    "rho",
    "momentum",
    "epsilon",
    "centered",
    "beta_1",
    "beta_2",
    "amsgrad",
    "nesterov",
    "clipnorm",
    "clipvalue",
    "global_clipnorm",
    "adaptive_epsilon",
}


def alternatives(config, flavor, weights, grads, state, factors: dict) -> dict:
    """{mistake: new weights} for the plausible mistakes of this optimizer."""
    name = config["class_name"]
    options = dict(config.get("config", {}))
    found = {}

    def run(label, options=options, variant=flavor, g=grads, st=state, after=None):
        if variant != flavor:  # another flavor's formula: keep only the shared settings
            options = {k: v for k, v in options.items() if k in SHARED and v is not None}
        try:
            optimizer = get_optimizer({"class_name": name, "config": options}, variant)
            new, _ = optimizer.step(weights, g, copy_state(st))
        except Exception:  # a variant this optimizer cannot express: no such mistake
            return
        found[label] = after(new) if after else new

    if name in ("Adam", "AdamW"):
        run(
            "Adam with the textbook epsilon (PyTorch's sqrt(v_hat) + eps) instead of Keras' "
            "epsilon-hat (eps added to sqrt(v) before the bias correction)",
            {**options, "adaptive_epsilon": True},
            "tf_keras",
        )
    if name == "RMSprop" and not options.get("momentum") and not options.get("centered"):
        run("RMSprop with epsilon outside the square root", variant="tf_keras_legacy")
    decay = options.get("weight_decay")
    if decay:
        coupled = {k: g + decay * weights[k] for k, g in grads.items()}
        run(
            "weight decay coupled into the gradient (L2, g + wd*w) where Keras decouples it",
            {**options, "weight_decay": 0.0},
            g=coupled,
        )
        lr = float(options.get("learning_rate", 0.001))
        run(
            "weight decay applied after the update instead of before it",
            {**options, "weight_decay": 0.0},
            after=lambda new: {k: w - lr * decay * w for k, w in new.items()},
        )
    for mode, other in (("clipnorm", "global_clipnorm"), ("global_clipnorm", "clipnorm")):
        if options.get(mode):
            what = "per tensor" if other == "clipnorm" else "by the global norm"
            run(
                f"gradients clipped {what} where Keras uses {mode}",
                {**{k: v for k, v in options.items() if k != mode}, other: options[mode]},
            )
    if name == "SGD" and options.get("nesterov"):
        run("Nesterov's step taken as plain momentum", {**options, "nesterov": False})
    if name == "SGD" and options.get("momentum"):
        run("momentum left out", {**options, "momentum": 0.0})
    if int(state.get("iterations", 0)) > 0:
        run(
            "bias correction restarted at step 1 instead of continued from the file's step count",
            st={**state, "iterations": 0},
        )
    if name == "SGD" and options.get("momentum") and _has_velocity(state):
        lr = float(options.get("learning_rate", 0.01))
        run(
            "the momentum velocity with the wrong sign: Keras keeps v = momentum*v - lr*g "
            "and adds it to the weight",
            st=_scaled_slot(state, "momentum", -1.0),
        )
        run(
            "PyTorch's momentum buffer (buf = momentum*buf + g; w -= lr*buf) continued from "
            "Keras' slot, which already holds -lr times the velocity",
            st=_scaled_slot(state, "momentum", -lr),
        )
    for phrase, factor in factors.items():
        scaled = {k: g * factor for k, g in grads.items()}
        run(f"the right optimizer applied to a gradient {phrase}", g=scaled)
    run(
        "the right optimizer applied to a gradient of the wrong sign ((y - p) instead of "
        "(p - y)), or the update subtracted where Keras adds it",
        g={k: -g for k, g in grads.items()},
    )
    return found


def _has_velocity(state) -> bool:
    slots = state.get("slots", {}).values()
    return any(np.any(s.get("momentum", 0)) for s in slots)


def _scaled_slot(state, slot, factor):
    changed = copy_state(state)
    for slots in changed["slots"].values():
        if slot in slots:
            slots[slot] = slots[slot] * factor
    return changed


def moving_alternatives(layer, weight, old, stats) -> dict:
    """{mistake: moving statistic after the step} for BatchNormalization's update."""
    mean, variance, count, unbiased = stats
    momentum = float(layer.config.get("momentum", 0.99))
    batch = mean if weight == "moving_mean" else variance
    batch = np.asarray(batch, np.float64).reshape(old.shape)
    found = {
        f"PyTorch's BatchNorm momentum convention: moving = (1 - m)*moving + m*batch, where "
        f"Keras' momentum {momentum:g} weights the old value (PyTorch's momentum is "
        f"1 - {momentum:g})": old * (1 - momentum) + batch * momentum
    }
    if weight == "moving_variance" and count > 1:
        if unbiased:
            other, label = batch * (count - 1) / count, "biased (divided by n)"
            keras = "the unbiased (n - 1) one, as its fused 4-D kernel does"
        else:
            other, label = batch * count / (count - 1), "unbiased (divided by n - 1, PyTorch's)"
            keras = "the biased one (divided by n)"
        found[f"the {label} batch variance in the moving variance, where Keras uses {keras}"] = (
            old * momentum + other * (1 - momentum)
        )
    return found


class Hinter:
    """Names the mistake behind a failing update, computing each kind of alternative once."""

    def __init__(self, model, ref, config, optimizer, batch, tolerance):
        self.model, self.ref, self.config = model, ref, config
        self.optimizer, self.batch, self.tolerance = optimizer, batch, tolerance
        self._found = None
        self._explainer = None

    @property
    def explainer(self):
        from .grad_against import Explainer

        if self._explainer is None:
            self._explainer = Explainer(
                self.ref.grad_ref, self.model, self.tolerance, {}, "channels_last"
            )
        return self._explainer

    def _matches(self, key, user, new) -> bool:
        old = np.asarray(self.ref.before[key], np.float64)
        theirs = np.asarray(self.ref.after[key], np.float64)
        if TensorStats.of(new - old, theirs - old, self.tolerance).ok:
            return False  # the same as the reference: no mistake here
        return TensorStats.of(user - old, np.asarray(new, np.float64) - old, self.tolerance).ok

    def explain(self, key, user) -> str | None:
        try:
            return self._explain(key, user)
        except Exception:  # a hint is best effort: the verdict stands without one
            return None

    def _explain(self, key, user) -> str | None:
        layer_name, weight = key.split("/", 1)
        if key not in self.ref.grads:
            if layer_name not in self.ref.batch_stats:
                return None
            layer = self.model.graph.layers[layer_name]
            old = np.asarray(self.ref.before[key], np.float64)
            found = moving_alternatives(layer, weight, old, self.ref.batch_stats[layer_name])
            return next((lab for lab, new in found.items() if self._matches(key, user, new)), None)
        if self._found is None:
            self._found = alternatives(
                self.config,
                self.optimizer.flavor,
                self._weights(),
                self.ref.grads,
                self.ref.state,
                self.explainer.factors(learning_rate=False),
            )
        for label, new in self._found.items():
            if key in new and self._matches(key, user, new[key]):
                return label
        return self._wrong_gradient(key, layer_name, weight, user)

    def _weights(self) -> dict:
        return {k: self.ref.before[k] for k in self.ref.grads}

    def _wrong_gradient(self, key, layer_name, weight, user) -> str | None:
        """The right optimizer applied to one of `grad`'s named wrong gradients."""
        expected = np.asarray(self.ref.grads[key], np.float64)
        for hint, gradient in self.explainer.weight_alternatives(layer_name, weight, expected):
            grads = {**self.ref.grads, key: gradient}
            new, _ = self.optimizer.step(self._weights(), grads, copy_state(self.ref.state))
            if self._matches(key, user, new[key]):
                return f"the right {self.optimizer.name} step applied to a wrong gradient: {hint}"
        return None

    def implied_gradient(self, key, user) -> np.ndarray | None:
        """-ΔW / lr when the optimizer is plain SGD (no momentum, decay or clipping)."""
        options = self.optimizer.config
        if self.optimizer.name != "SGD" or key not in self.ref.grads:
            return None
        if any(options.get(k) for k in ("momentum", "weight_decay", "decay", *CLIPPING)):
            return None
        rate = options.get("learning_rate")
        if not isinstance(rate, (int, float)) or isinstance(rate, bool) or rate == 0:
            return None
        return -(user - np.asarray(self.ref.before[key], np.float64)) / float(rate)
