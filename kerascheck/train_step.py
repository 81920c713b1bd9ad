"""One training step checked: the engine's forward, backward and a NumPy optimizer against
Keras applying its own gradients with its own optimizer (the `train-step` command's core).

Both sides run N steps of what `fit` does on the same batches (in order, no
shuffling). Each step, Keras computes its gradients in the taped replay of
`grad` (so dropout masks are Keras' own and the engine replays them) and its
optimizer applies them; the engine does the same with its own gradients and
`engine/optimizers.py`. The optimizer, its hyperparameters, its step count and
its slots come from the file unless flags override them or
`--fresh-optimizer` starts from zero.

One row per trainable weight, in layer order: the weight after the last step,
the **update** ΔW against Keras' update (a wrong gradient behind a large
weight hides in the weight but not in its update), each optimizer slot, and
BatchNormalization's moving statistics. `first_divergence` is the first weight
whose update is out of tolerance.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

import numpy as np

from .engine import backprop
from .engine.layers.recurrent import check_stateful_run
from .engine.model import EngineModel
from .engine.optimizers import copy_state, get_optimizer
from .errors import KerascheckError
from .grad import (
    CANCELLATION_FLOOR,
    CallRow,
    GradTolerance,
    TensorRow,
    TensorStats,
    _engine_reference,
    _keras_reference,
    check_nested_noise,
    check_targets,
    engine_gradients,
    resolve_loss,
)

MOVING_STATISTICS = ("moving_mean", "moving_variance")  # updated by the layer, not trained
# Keras 3 builds some slots in separate passes over the variables; each group is laid
# out variable by variable in `optimizer/vars`, one group after the other.
KERAS3_SLOT_GROUPS = {
    "Adam": [["momentum", "velocity"], ["velocity_hat"]],
    "AdamW": [["momentum", "velocity"], ["velocity_hat"]],
    "RMSprop": [["velocity"], ["momentum"], ["average_gradient"]],
}
# ...and Nadam keeps its running `u_product` after the slots.
KERAS3_TRAILING = {"Nadam": ["u_product"]}


@dataclass
class TrainStepResult:
    model_path: str
    keras_version: str
    oracle: str
    oracle_version: str
    optimizer: str
    optimizer_from: str
    state_from: str
    loss_name: str
    loss_from: str
    steps: int
    batch: int
    losses: dict  # {"keras": [before each step..., after], "engine": [...]}
    rows: list
    tolerance: GradTolerance
    engine_seconds: float = 0.0
    keras_seconds: float = 0.0
    saved: dict | None = None
    subject: str = "engine"  # or "your weights" (--against)

    @property
    def first_divergence(self) -> dict | None:
        for row in self.rows:
            for tensor in row.tensors:
                if tensor.status == "mismatch":
                    return {
                        "layer": row.name,
                        "class_name": row.class_name,
                        "tensor": tensor.tensor,
                    }
        return None

    @property
    def status(self) -> str:
        return "mismatch" if self.first_divergence else "match"


def trainable_keys(model: EngineModel) -> list[tuple[str, str]]:
    """(layer, weight) of every trainable weight, in Keras' trainable-variable order."""
    return [
        (name, w) for name, layer in model.graph.layers.items() for w in layer.trainable_names()
    ]


def flavor_of(model: EngineModel, config) -> str:
    """Whose formulas: tf_keras deserializes a non-empty optimizer config without
    `is_legacy_optimizer` (every `.h5` file's) as a legacy optimizer."""
    if model.spec.keras_major >= 3:
        return "keras3"
    inner = config.get("config", {}) if isinstance(config, dict) else {}
    if inner and inner.get("is_legacy_optimizer", True):
        return "tf_keras_legacy"
    return "tf_keras"


def resolve_optimizer(model: EngineModel, name: str | None, overrides: dict, fresh: bool):
    """(config, engine optimizer, where the optimizer came from, whether file state applies)."""
    training = model.spec.training or {}
    if name:
        config, where = {"class_name": name, "config": {}}, "--optimizer"
    elif training.get("optimizer") is not None:
        config = training["optimizer"]
        where = f"the file's {training.get('where', 'compile config')}"
    else:
        raise KerascheckError(
            "expected an optimizer: the model file was saved without a compiled optimizer; "
            "pass --optimizer NAME (e.g. --optimizer sgd --lr 0.01)"
        )
    if isinstance(config, str):
        config = {"class_name": config, "config": {}}
    flavor = flavor_of(model, config)
    config = {**config, "config": {**config.get("config", {}), **overrides}}
    if flavor != "keras3":  # the same choice on Keras' side, whatever the flags add
        config["config"]["is_legacy_optimizer"] = flavor == "tf_keras_legacy"
    optimizer = get_optimizer(config, flavor)
    keras_config = {"class_name": optimizer.name, "config": dict(config["config"])}
    use_file_state = not fresh and not name and not overrides and training.get("state")
    return keras_config, optimizer, where, bool(use_file_state)


def file_state(model: EngineModel, optimizer, keys) -> dict:
    """The optimizer state the file saved, keyed like the engine's weights."""
    saved = model.spec.training["state"]
    weights = {f"{layer}/{w}": model.graph.layers[layer].w[w] for layer, w in keys}
    state = optimizer.init_state(weights)
    if saved and isinstance(saved[0], tuple):
        return _named_state(saved, optimizer, keys, state)
    return _indexed_state(saved, optimizer, keys, state)


def _indexed_state(arrays, optimizer, keys, state):
    groups = KERAS3_SLOT_GROUPS.get(optimizer.name, [optimizer.slot_names])
    groups = [[s for s in g if s in optimizer.slot_names] for g in groups]
    state["iterations"] = int(np.asarray(arrays[0])) if arrays else 0
    if len(arrays) <= 2:  # compiled but never trained: Keras saved no slots yet
        return state
    trailing = KERAS3_TRAILING.get(optimizer.name, [])
    expected = 2 + sum(len(g) for g in groups) * len(keys) + len(trailing)
    if len(arrays) != expected:
        raise KerascheckError(
            f"expected {expected} optimizer variables for {optimizer.name} over {len(keys)} "
            f"trainable weights in the file, found {len(arrays)}; use --fresh-optimizer"
        )
    state["iterations"] = int(np.asarray(arrays[0]))
    position = 2
    for group in groups:
        for layer, w in keys:
            for slot in group:
                state["slots"][f"{layer}/{w}"][slot] = np.asarray(arrays[position])
                position += 1
    for name in trailing:
        state[name] = np.asarray(arrays[position])
        position += 1
    return state


def _named_state(named, optimizer, keys, state):
    by_file = {file: slot for slot, file in optimizer.file_slot_names.items()}
    found = 0
    for name, array in named:
        base = name.split(":")[0]
        if base.split("/")[-1] in ("iteration", "iter"):
            state["iterations"] = int(np.asarray(array))
            continue
        if base.split("/")[-1] == "momentum_cache":  # legacy Nadam's running product
            state["u_product"] = np.asarray(array)
            continue
        parts = base.split("/")
        match = _match_slot(parts, by_file, keys)
        if match is None:
            raise KerascheckError(
                f"optimizer weight '{name}' in the file names no trainable weight of the "
                "model; use --fresh-optimizer"
            )
        key, slot = match
        state["slots"][key][slot] = np.asarray(array)
        found += 1
    return state


def _match_slot(parts, by_file, keys):
    """`Adam/m/dense/kernel` (tf_keras) or `Adam/dense/kernel/m` (legacy)."""
    names = {f"{layer}/{w}" for layer, w in keys}
    if len(parts) >= 4 and parts[1] in by_file and "/".join(parts[2:]) in names:
        return "/".join(parts[2:]), by_file[parts[1]]
    if len(parts) >= 4 and parts[-1] in by_file and "/".join(parts[1:-1]) in names:
        return "/".join(parts[1:-1]), by_file[parts[-1]]
    return None


def train_step_model(
    path: str,
    model: EngineModel,
    inputs: list[np.ndarray],
    targets: list[np.ndarray],
    loss_option=None,
    sample_weight=None,
    optimizer_name: str | None = None,
    overrides: dict | None = None,
    fresh: bool = False,
    steps: int = 1,
    batch_size: int | None = None,
    oracle: str | None = None,
    tolerance: GradTolerance | None = None,
    save: bool = False,
    against: dict | None = None,
    reference: str = "keras",
) -> TrainStepResult:
    """N steps on both sides; with `against`, the user's one step judged against Keras'
    (or, with `reference="numpy"`, the engine's, and TensorFlow never imported)."""
    from . import train_step_against

    tolerance = tolerance or GradTolerance()
    loss, identifier, loss_from = resolve_loss(model, loss_option)
    targets = check_targets(model, loss, targets)
    keys = trainable_keys(model)
    config, optimizer, optimizer_from, use_state = resolve_optimizer(
        model, optimizer_name, overrides or {}, fresh
    )
    weights = _current(model, keys)
    state = file_state(model, optimizer, keys) if use_state else optimizer.init_state(weights)
    if against is not None:
        train_step_against.check_keys(against, model, keys, moving_keys(model), steps)
    elif reference == "numpy":
        raise KerascheckError("--reference numpy checks your weights: it needs --against")
    start_state = copy_state(state)
    state_from = "the file" if use_state else "zero (a fresh optimizer)"
    runner, flavor, version = None, "numpy", "engine"
    if reference != "numpy":
        from .oracle import choose_oracle
        from .oracle.gradients import KerasGradientRunner

        flavor, _ = choose_oracle(model.spec, oracle)
        check_nested_noise(model.graph, flavor)  # fit trains: masks must be replayable
        runner = KerasGradientRunner(
            path, model.spec, flavor, identifier, optimizer="file" if use_state else config
        )
        version = runner.version
    before_keras = runner.weights() if runner else None
    before_engine = _all_weights(model)
    moving_before = _moving(model)
    noise_calls = [c.name for c in model.spec.calls if model.graph.layers[c.layer].uses_noise]
    total = int(inputs[0].shape[0])
    step_size = batch_size or total
    if check_stateful_run(model.spec, total, step_size) and steps > 1:
        raise KerascheckError(
            "a stateful RNN carries its states from one training step to the next: "
            f"check one step (--steps 1), found --steps {steps}"
        )
    starts = list(range(0, total, step_size))
    losses = {"keras": [], "engine": []}
    engine_seconds = keras_seconds = 0.0
    keras = None
    for number in range(steps):
        offset = starts[number % len(starts)]
        xb = [a[offset : offset + step_size] for a in inputs]
        yb = [t[offset : offset + step_size] for t in targets]
        wb = None if sample_weight is None else sample_weight[offset : offset + step_size]
        if runner is not None:
            keras = runner.gradients(xb, yb, wb, True, noise_calls)
            runner.apply(keras)
            keras_seconds += keras.seconds
            losses["keras"].append(keras.loss)
        start = time.perf_counter()
        step = _engine_gradients(model, loss, xb, yb, wb, keras.noise if keras else {})
        if against is not None:
            grad_ref = (
                _keras_reference(model, keras, xb)
                if keras is not None
                else _engine_reference(
                    model, step.engine.tape, step.engine.gradients, step.value, xb
                )
            )
            grad_ref.layer_weights = {
                n: {w: v.copy() for w, v in ws.items()} for n, ws in grad_ref.layer_weights.items()
            }
        new, state = optimizer.step(_current(model, keys), step.grads, state)
        _assign(model, new)
        _update_moving(model, step.stats)
        engine_seconds += time.perf_counter() - start
        losses["engine"].append(step.value)
    if runner is not None:
        final_keras = runner.gradients(inputs, targets, sample_weight, False, ())
        losses["keras"].append(final_keras.loss)
    losses["engine"].append(_engine_gradients(model, loss, inputs, targets, sample_weight).value)
    if against is not None:
        ref = train_step_against.StepReference(
            name=flavor if runner else "numpy",
            before=before_engine,
            after=_flat(model, runner.weights()) if runner else _all_weights(model),
            grads=_flat_grads(model, keras.weights) if runner else step.grads,
            state=start_state,
            batch_stats={k: _used_stats(model, k, v) for k, v in step.stats.items()},
            grad_ref=grad_ref,
        )
        rows = train_step_against.rows(against, model, ref, config, optimizer, step_size, tolerance)
    else:
        rows = _rows(
            model,
            keys,
            runner.weights(),
            before_keras,
            before_engine,
            moving_before,
            state,
            runner,
            optimizer,
            tolerance,
            (step.grads, keras.weights),
        )
    result = TrainStepResult(
        model_path=path,
        keras_version=model.spec.keras_version,
        oracle=flavor,
        oracle_version=version,
        optimizer=optimizer.name,
        optimizer_from=optimizer_from,
        state_from=state_from,
        loss_name=loss.name,
        loss_from=loss_from,
        steps=steps,
        batch=step_size,
        losses=losses,
        rows=rows,
        tolerance=tolerance,
        engine_seconds=engine_seconds,
        keras_seconds=keras_seconds,
        subject="engine" if against is None else "your weights",
    )
    if save:
        result.saved = _saved(model, keys, runner.weights() if runner else None)
    return result


@dataclass
class EngineStep:
    value: float  # the loss
    grads: dict  # {layer/weight: gradient}
    stats: dict  # {layer: (batch mean, biased batch variance, count, rank)}
    engine: object = None  # grad.EngineGradients


def _engine_gradients(model, loss, xb, yb, wb, noise=None):
    """The loss, the weight gradients and each BatchNormalization's batch statistics;
    with `noise` None, the loss in inference mode only."""
    training = noise is not None
    with backprop.weight_gradients_only():  # no dL/d model input: a step never uses it
        engine = engine_gradients(model, loss, xb, yb, wb, training, noise, backward=training)
    if not training:
        return EngineStep(engine.value, {}, {}, engine)
    flat = {
        f"{layer}/{w}": g for layer, ws in engine.gradients.weights.items() for w, g in ws.items()
    }
    stats = {}
    for call in model.spec.calls:
        back = engine.tape.backwards[call.name]
        mean = getattr(back, "batch_mean", None)
        if mean is not None:
            output = engine.tape.per_call[call.name]
            count = np.size(output) // max(np.size(mean), 1)
            stats[call.layer] = (mean, back.batch_variance, count, np.ndim(output))
    return EngineStep(engine.value, flat, stats, engine)


def _current(model, keys):
    return {f"{layer}/{w}": model.graph.layers[layer].w[w] for layer, w in keys}


def _assign(model, new):
    """Write the new weights in place: composite layers (attention projections, the two
    directions of a Bidirectional) share these arrays with their parts."""
    for key, value in new.items():
        layer, weight = key.split("/", 1)
        model.graph.layers[layer].w[weight][...] = value
    model.graph.weights_changed()


def _moving(model) -> dict:
    return {
        name: {w: layer.w[w].copy() for w in MOVING_STATISTICS if w in layer.w}
        for name, layer in model.graph.layers.items()
        if any(w in layer.w for w in MOVING_STATISTICS)
    }


def _update_moving(model, batch_stats):
    """`moving = momentum * moving + (1 - momentum) * batch` (see `_used_stats`)."""
    for name, stats in batch_stats.items():
        layer = model.graph.layers[name]
        if "moving_mean" not in layer.w or layer.config.get("trainable", True) is False:
            continue
        momentum = float(layer.config.get("momentum", 0.99))
        mean, variance, _, _ = _used_stats(model, name, stats)
        for key, stat in (("moving_mean", mean), ("moving_variance", variance)):
            old = layer.w[key]
            stat = np.asarray(stat, old.dtype).reshape(old.shape)
            old[...] = old * momentum + stat * (1.0 - momentum)
    model.graph.weights_changed()


def _used_stats(model, name, stats):
    """(mean, variance, count, unbiased) as the moving update takes them: the biased batch
    variance in Keras 3, and in tf_keras too except for 4-D inputs, whose fused kernel
    returns the unbiased one (`n / (n - 1)`)."""
    mean, variance, count, rank = stats
    unbiased = model.spec.keras_major < 3 and rank == 4 and count > 1
    if unbiased:
        variance = variance * count / (count - 1)
    return mean, variance, count, unbiased


def moving_keys(model) -> list[tuple[str, str]]:
    return [
        (name, w)
        for name, layer in model.graph.layers.items()
        for w in MOVING_STATISTICS
        if w in layer.w
    ]


def _all_weights(model) -> dict:
    """{layer/weight: a copy} of every trainable weight and moving statistic."""
    keys = [*trainable_keys(model), *moving_keys(model)]
    return {f"{layer}/{w}": model.graph.layers[layer].w[w].copy() for layer, w in keys}


def _flat(model, by_index) -> dict:
    """Keras' {layer: [weights by index]} as {layer/weight: value}."""
    out = {}
    for layer, values in by_index.items():
        for name, value in zip(model.graph.layers[layer].w, values):
            out[f"{layer}/{name}"] = value
    return out


def _flat_grads(model, by_index) -> dict:
    names = {layer: list(model.graph.layers[layer].w) for layer in by_index}
    return {
        f"{layer}/{names[layer][i]}": g
        for layer, grads in by_index.items()
        for i, g in grads.items()
        if g is not None
    }


def _rows(
    model,
    keys,
    after_keras,
    before_keras,
    before_engine,
    moving_before,
    state,
    runner,
    optimizer,
    tolerance,
    gradients,
) -> list[CallRow]:
    ours_grads, keras_grads = gradients
    rows = {}
    for layer, weight in keys:
        index = list(model.graph.layers[layer].w).index(weight)
        theirs_new = after_keras[layer][index]
        theirs_old = before_keras[layer][index]
        ours_new = model.graph.layers[layer].w[weight]
        ours_old = before_engine[f"{layer}/{weight}"]
        row = rows.setdefault(layer, CallRow(layer, model.graph.layers[layer].class_name))
        update_theirs = theirs_new.astype(np.float64) - theirs_old
        update_ours = ours_new.astype(np.float64) - ours_old
        update = TensorStats.of(update_ours, update_theirs, tolerance)
        grad_theirs = keras_grads.get(layer, {}).get(index)
        grad_ours = ours_grads.get(f"{layer}/{weight}")
        grad = None
        if grad_theirs is not None and grad_ours is not None:
            grad = TensorStats.of(grad_ours, grad_theirs, tolerance)
        noise = grad is not None and grad.ok and not update.ok
        row.tensors.append(
            TensorRow(
                f"Δ{weight}",
                list(theirs_new.shape),
                _norm(update_theirs),
                own=None if noise else update,
                carried=update if noise else None,
                hint=(
                    "the last step's gradients agree within tolerance (at float32 noise "
                    "level); the optimizer's normalization amplifies that noise"
                )
                if noise
                else None,
            )
        )
        if grad is not None:
            row.tensors.append(
                TensorRow(f"grad {weight}", list(grad_theirs.shape), _norm(grad_theirs), own=grad)
            )
        row.tensors.append(
            TensorRow(
                weight,
                list(theirs_new.shape),
                _norm(theirs_new),
                carried=TensorStats.of(ours_new, theirs_new, tolerance),
            )
        )
    slots = runner.optimizer_slots()
    for layer, weight in keys:
        for slot, value in state["slots"].get(f"{layer}/{weight}", {}).items():
            file_slot = optimizer.file_slot_names.get(slot, slot)
            theirs = _find_slot(slots, layer, weight, slot, file_slot)
            if theirs is None or theirs.shape != np.shape(value):
                continue
            rows[layer].tensors.append(
                TensorRow(
                    f"{weight}/{slot}",
                    list(theirs.shape),
                    _norm(theirs),
                    carried=TensorStats.of(value, theirs, tolerance),
                )
            )
    for layer, stats in moving_before.items():
        for weight in stats:
            index = list(model.graph.layers[layer].w).index(weight)
            theirs = after_keras[layer][index]
            ours = model.graph.layers[layer].w[weight]
            row = rows.setdefault(layer, CallRow(layer, model.graph.layers[layer].class_name))
            row.tensors.append(
                TensorRow(
                    weight,
                    list(theirs.shape),
                    _norm(theirs),
                    own=TensorStats.of(ours, theirs, tolerance),
                )
            )
    for row in rows.values():
        _judge_noise(row, tolerance)
    return list(rows.values())


def _judge_noise(row, tolerance):
    """A gradient at float32 cancellation level (see grad.CANCELLATION_FLOOR) is judged
    with the floor; an update or slot driven by such a gradient is drift, not a mismatch:
    Adam-like optimizers normalize noise into full-size steps on both sides."""
    grads = [t for t in row.tensors if t.tensor.startswith("grad ")]
    floor = CANCELLATION_FLOOR * max((t.keras_norm for t in grads), default=0.0)
    noisy = set()
    biggest = floor / CANCELLATION_FLOOR
    for tensor in grads:
        stats = tensor.own
        if tensor.keras_norm > 1e-5 * biggest:  # a real gradient: judged relatively
            continue
        if not stats.ok:
            diff = stats.rel_error * tensor.keras_norm
            size = int(np.prod(tensor.shape)) if tensor.shape else 1
            stats.ok = tolerance.allows(diff, tensor.keras_norm, size, floor)
        if stats.ok:
            noisy.add(tensor.tensor[len("grad ") :])
    for tensor in row.tensors:
        name = tensor.tensor.lstrip("Δ")
        weight = next((w for w in noisy if name == w or name.startswith(w + "/")), None)
        if weight is not None and tensor.own is not None and not tensor.own.ok:
            tensor.carried, tensor.own = tensor.own, None
            tensor.hint = (
                f"the gradient of {weight} is float32 cancellation noise on both sides "
                "(zero in exact arithmetic); the optimizer turns that noise into steps"
            )


def _find_slot(slots, layer, weight, slot, file_name):
    """Keras' slot variable: `adam/dense_kernel_momentum` (Keras 3), `m/dense/kernel:0`
    (tf_keras), `dense/kernel/m:0` (legacy)."""
    wanted = [
        re.compile(rf"(^|/|_){re.escape(layer)}_{re.escape(weight)}_{re.escape(slot)}$"),
        re.compile(rf"(^|/){re.escape(file_name)}/{re.escape(layer)}/{re.escape(weight)}(:0)?$"),
        re.compile(rf"(^|/){re.escape(layer)}/{re.escape(weight)}/{re.escape(file_name)}(:0)?$"),
    ]
    for name, value in slots.items():
        if any(p.search(name) for p in wanted):
            return value
    return None


def _norm(value) -> float:
    return float(np.linalg.norm(np.asarray(value, np.float64)))


def _saved(model, keys, after_keras) -> dict:
    arrays = {}
    for layer, weight in keys:
        index = list(model.graph.layers[layer].w).index(weight)
        if after_keras is not None:
            arrays[f"keras/new/{layer}/{weight}"] = after_keras[layer][index]
        arrays[f"numpy/new/{layer}/{weight}"] = model.graph.layers[layer].w[weight]
    return arrays
