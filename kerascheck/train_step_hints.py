"""`train-step --against`: the user's weights after one step, judged by their update, and
the optimizer mistakes that explain a wrong one.

People who port a training loop get the optimizer formulas subtly different from
Keras'. Each alternative below is Keras' step with one thing changed, run by
the engine's own optimizer on Keras' gradient and the same starting state:
the textbook (PyTorch) Adam epsilon, RMSprop's epsilon outside the root,
weight decay coupled into the gradient or applied after the step, per-tensor
vs global clipping, Nesterov's first step, bias correction restarted instead
of continued from the file's step count, and, when the optimizer is right, a
gradient scaled by the usual factors (the batch size, 2 or 1/2, the sign).
"""

from __future__ import annotations

from .engine.optimizers import copy_state, get_optimizer

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


def alternatives(config, flavor, weights, grads, state, batch: int) -> dict:
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
    for factor, why in (
        (batch, "summed over the batch where Keras averages"),
        (1.0 / batch, "averaged where Keras sums"),
        (0.5, "with the 1/2 convention"),
        (2.0, "twice Keras' (e.g. a missing 1/2)"),
        (-1.0, "of the wrong sign"),
    ):
        if factor == 1.0:
            continue
        scaled = {k: g * factor for k, g in grads.items()}
        run(f"the right optimizer applied to a gradient {why} (x{factor:g})", g=scaled)
    return found


def explain(user_new, key, before, found, tolerance, stats_of) -> str | None:
    """The first alternative whose update for `key` matches the user's."""
    for label, new in found.items():
        if key in new and stats_of(user_new - before, new[key] - before, tolerance).ok:
            return label
    return None
