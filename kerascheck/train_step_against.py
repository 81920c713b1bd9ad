"""`train-step --against MINE.npz`: the user's weights after one step, judged by their update.

Keys: `new/<layer>/<weight>` (trainable weights, and BatchNormalization's
`moving_mean` / `moving_variance`), optionally `loss` and the `grad/...` /
`d/...` arrays of `grad --against`, judged as `grad` judges them. A weight is
judged by its **update** ΔW = W_after - W_before against the reference's
update (Keras', or the engine's with `--reference numpy`): a wrong gradient
behind a large weight hides in the weight, not in its update. With plain SGD
the implied gradient -ΔW / lr gets its own row, judged like a `grad/` key.
A failing update is explained by `train_step_hints`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import KerascheckError
from .grad import CallRow, GradReference, GradTolerance, TensorRow, TensorStats
from .grad_against import Supplied, against_rows


@dataclass
class StepReference:
    """One step of the reference side, and what it started from."""

    name: str  # "keras" or "numpy"
    before: dict  # {layer/weight: value before the step}, trainable and moving statistics
    after: dict  # {layer/weight: the reference's value after the step}
    grads: dict  # {layer/weight: the reference's gradient}
    state: dict  # the optimizer state before the step
    batch_stats: dict  # {layer: (batch mean, batch variance as used, count, unbiased)}
    grad_ref: GradReference  # forward values and gradients, for grad/ and d/ keys and hints


def check_keys(mine: dict, model, trainable, moving, steps: int) -> None:
    """Unknown `new/` keys and more than one step fail in one line; `grad/`, `d/` and
    `loss` are checked as `grad --against` checks them."""
    valid = [f"new/{layer}/{w}" for layer, w in [*trainable, *moving]]
    unknown = [k for k in mine if k.startswith("new/") and k not in valid]
    unknown += [k for k in mine if not k.startswith(("new/", "grad/", "d/")) and k != "loss"]
    if unknown:
        shown = ", ".join(valid[:12]) + (", ..." if len(valid) > 12 else "")
        raise KerascheckError(
            f"--against: expected keys new/<layer>/<weight> ({shown}), loss, grad/..., d/...; "
            f"found unknown {unknown[:5]}"
        )
    if steps != 1:
        raise KerascheckError(f"--against checks one step: use --steps 1, found {steps}")


def rows(mine: dict, model, ref: StepReference, config, optimizer, batch, tolerance) -> list:
    """Rows for the user's updates in layer order, then their gradients in backward order."""
    from .train_step_hints import Hinter

    hinter = Hinter(model, ref, config, optimizer, batch, tolerance)
    found: dict[str, CallRow] = {}
    for layer_name, layer in model.graph.layers.items():
        for weight in layer.w:
            key = f"{layer_name}/{weight}"
            if f"new/{key}" not in mine:
                continue
            row = found.setdefault(layer_name, CallRow(layer_name, layer.class_name))
            row.tensors += _judge(mine[f"new/{key}"], key, weight, model, ref, hinter, tolerance)
    result = list(found.values())
    gradient_keys = {k: v for k, v in mine.items() if k == "loss" or k.startswith(("grad/", "d/"))}
    if gradient_keys:
        result += against_rows(gradient_keys, ref.grad_ref, model, "channels_last", tolerance)
    return result


def _judge(raw, key, weight, model, ref, hinter, tolerance: GradTolerance) -> list[TensorRow]:
    theirs = np.asarray(ref.after[key], np.float64)
    try:
        ours = np.asarray(raw, np.float64)
    except (TypeError, ValueError):
        raise KerascheckError(f"--against: new/{key} must be a numeric array") from None
    if ours.shape != theirs.shape:
        raise KerascheckError(
            f"--against: new/{key} must have shape {theirs.shape}, found {ours.shape}"
        )
    old = np.asarray(ref.before[key], np.float64)
    stats = TensorStats.of(ours - old, theirs - old, tolerance)
    hint = None if stats.ok else hinter.explain(key, ours)
    judged = [
        TensorRow(
            f"Δ{weight}",
            list(theirs.shape),
            float(np.linalg.norm(theirs - old)),
            carried=stats,
            hint=hint,
            judged="carried",
        )
    ]
    implied = hinter.implied_gradient(key, ours)
    if implied is not None:
        judged.append(_implied_row(key, weight, implied, model, ref, tolerance))
    return judged


def _implied_row(key, weight, implied, model, ref, tolerance) -> TensorRow:
    """Plain SGD's implied gradient -ΔW / lr, judged (and explained) as `grad` would."""
    from .grad_against import Explainer

    layer = key.split("/", 1)[0]
    expected = np.asarray(ref.grads[key], np.float64)
    explainer = Explainer(ref.grad_ref, model, tolerance, {}, "channels_last")
    row = explainer.judge(Supplied(f"grad/{key}", "grad", layer, weight, implied), expected)
    row.tensor = f"implied grad {weight}"
    return row
