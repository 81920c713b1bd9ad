"""Keras' own gradients on a saved model: one taped, layer-by-layer training pass.

The model is replayed call by call (as for `diff`) under one `GradientTape`,
with `training=True` in train mode, and the loss is Keras' own
`model.compute_loss` after compiling with the file's (or the user's) loss, so
it is what `fit` minimizes: the logits path, clipping, reductions, sample
weights and the regularization losses included. One `tape.gradient` then
gives, per call, dL/d(output) and dL/d(each input as that call saw it): every
input is passed through its own `tf.identity`, so a tensor read by several
calls yields each reader's contribution separately. Trainable weights come
back by their position in `layer.weights` (the file's order).

Dropout and noise layers: Keras 3 draws from a seed generator, whose state is
saved and restored around two extra calls on ones and zeros, so the exact
`(scale, shift)` Keras applied is known. tf_keras draws from stateful
generators that cannot be replayed: the scale is read as output / input, and
where the input is exactly 0 (after a ReLU) as Keras' own dL/d input over
dL/d output; where both are 0 nothing depends on it.

Dropout inside recurrent layers and on attention weights is recorded while the
layer runs: the cells' mask getters (Keras 3 `get_dropout_mask`, tf_keras
`get_dropout_mask_for_cell`, also on tf_keras' fused LSTM/GRU layer itself)
are wrapped on the instance for the duration of the call and what they return
is kept, in the form Keras applies it (one shared mask, or one per gate). For
attention, Keras 3's draw is replayed on ones from the saved seed-generator
state; tf_keras' generator is wrapped and the mask read from the dropped
weights (where a weight is exactly 0, its mask changes nothing).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

import numpy as np

from ..errors import KerascheckError
from ..loading.spec import ModelSpec, resolve
from . import _flat, _import, _numpy, _operations, keras_message, load_keras_model

ADDITIVE_NOISE = {"GaussianNoise"}
ATTENTION = {
    "Attention",
    "AdditiveAttention",
    "MultiHeadAttention",
    "GroupedQueryAttention",
    "GroupQueryAttention",
}


@dataclass
class KerasGradients:
    loss: float
    outputs: list
    per_call: dict  # {call name: forward output in the chosen mode}
    d_outputs: dict  # {call name: dL/d output (list for several), None if unused}
    d_inputs: dict  # {call name: [dL/d each first-argument input, as this call saw it]}
    weights: dict  # {layer name: {index in layer.weights: dL/dw}}
    # {call name: (scale, shift)} for dropout and noise layers; for a recurrent layer
    # {"sequence": mask or None, "cells": [{"input": m, "recurrent": m}, ...]} (Bidirectional:
    # {"forward": ..., "backward": ...}), for an attention layer the weights' mask
    noise: dict = field(default_factory=dict)
    d_logits: dict = field(default_factory=dict)  # {call name: dL/d logits} (logits path)
    logits: dict = field(default_factory=dict)  # {call name: the logits Keras' loss used}
    output_masks: list = field(default_factory=list)  # each output's Keras mask, or None
    seconds: float = 0.0


class KerasGradientRunner:
    """A model loaded once in the chosen Keras and compiled with the loss to check."""

    def __init__(
        self, path: str, spec: ModelSpec, flavor: str, loss, loss_weights=None, optimizer=None
    ):
        """`optimizer`: None (gradients only), "file" (the file's optimizer and its saved
        state, as `load_model(compile=True)` restores them), or a serialized optimizer
        config to start fresh."""
        self.module = _import(flavor)
        self.flavor = flavor
        self.version = self.module.__version__
        self.spec = spec
        self.model = load_keras_model(path, flavor, compile=optimizer == "file")
        chosen = "sgd"
        if optimizer == "file":
            chosen = self.model.optimizer
        elif optimizer is not None:
            chosen = _deserialize_optimizer(self.module, optimizer)
        try:
            self.model.compile(optimizer=chosen, loss=loss, loss_weights=loss_weights)
        except Exception as exc:
            message = keras_message(exc)
            raise KerascheckError(f"{flavor} cannot compile the loss {loss!r}: {message}")

    def gradients(self, arrays, targets, sample_weight=None, training=True, noise_calls=()):
        start = time.perf_counter()
        result = _taped_pass(self, arrays, targets, sample_weight, training, set(noise_calls))
        result.seconds = time.perf_counter() - start
        return result

    def apply(self, result: KerasGradients) -> None:
        """One optimizer step with the gradients of `result`, as `fit` applies them."""
        pairs = [(g, v) for g, v in zip(*result._raw) if g is not None]
        start = time.perf_counter()
        self.model.optimizer.apply_gradients(pairs)
        result.seconds += time.perf_counter() - start

    def weights(self) -> dict:
        """{layer name: [every weight's value, in the file's order]}."""
        operations = _operations(self.model)
        out = {}
        for name, layer in self.spec.layers.items():
            if layer.class_name == "InputLayer":
                continue
            keras_layer = operations.get(name) or self.model.get_layer(name)
            out[name] = [np.asarray(v) for v in getattr(keras_layer, "weights", [])]
        return out

    def optimizer_slots(self) -> dict:
        """{variable path or name: value} of the optimizer's variables."""
        opt = self.model.optimizer
        variables = opt.variables if self.flavor == "keras" else opt.variables()
        return {getattr(v, "path", None) or v.name: np.asarray(v) for v in variables}


def _taped_pass(runner, arrays, targets, sample_weight, training, noise_calls):
    import tensorflow as tf

    model, spec = runner.model, runner.spec
    operations = _operations(model)
    values = {(i.name, 0): tf.constant(a) for i, a in zip(spec.inputs, arrays)}

    def tensor(ref):
        value = values[(ref.layer, ref.call)]
        return value[ref.tensor] if isinstance(value, (list, tuple)) else value

    seen_inputs, noise = {}, {}
    runner.unknown_masks = {}
    with tf.GradientTape(persistent=False) as tape:
        for value in values.values():
            if value.dtype.is_floating:
                tape.watch(value)  # so the first layers' input gradients are recorded
        for call in spec.calls:
            layer = operations.get(call.layer) or model.get_layer(call.layer)
            first = [_private_copy(tf, tensor(ref)) for ref in call.inputs]
            seen_inputs[call.name] = first
            args = resolve(call.args, tensor)
            kwargs = resolve(call.kwargs, tensor)
            if call.first is not None:
                argument = resolve(call.first, tensor)
            else:
                argument = first if call.as_list else first[0]
            if _takes_training(layer):
                kwargs["training"] = training
            nested = getattr(spec.layers.get(call.layer), "model", None)
            try:
                if nested is not None and training and _noisy_inside(nested):
                    output, noise[call.name] = _nested_call(
                        runner, layer, nested, argument, args, kwargs
                    )
                elif call.name in noise_calls and training:
                    output, noise[call.name] = _noisy_call(runner, layer, argument, args, kwargs)
                else:
                    output = layer(argument, *args, **kwargs)
            except Exception as exc:
                message = keras_message(exc)
                raise KerascheckError(
                    f"Keras failed to run layer '{call.layer}' ({type(layer).__name__}) "
                    f"in {'training' if training else 'inference'} mode: {message}"
                )
            output = _flat(output)
            if isinstance(output, list) and len(output) > 1:
                # Each output its own leaf: one output may be computed from another (the
                # attention scores, an RNN's output that is its state), and dL/d that
                # output must be only what reaches it from outside the call.
                output = [_private_copy(tf, item) for item in output]
            values[(call.layer, call.index)] = output
        y_pred = [tensor(ref) for ref in spec.outputs]
        y = [tf.constant(t) for t in targets]
        weights = None if sample_weight is None else tf.constant(sample_weight)
        try:
            loss = _compute_loss(runner, model, arrays, y, y_pred, weights)
        except Exception as exc:
            message = keras_message(exc)
            raise KerascheckError(f"Keras cannot compute the loss: {message}")

    call_outputs = [values[(c.layer, c.index)] for c in spec.calls]
    logits = {
        c.name: values[(r.layer, r.call)]._keras_logits
        for r in spec.outputs
        for c in spec.calls
        if (c.layer, c.index) == (r.layer, r.call)
        and hasattr(values[(r.layer, r.call)], "_keras_logits")
    }
    variables, owners = [], []
    for name in spec.layers:
        if spec.layers[name].class_name == "InputLayer":
            continue
        layer = operations.get(name) or model.get_layer(name)
        trainable = {id(v) for v in getattr(layer, "trainable_weights", [])}
        for index, variable in enumerate(getattr(layer, "weights", [])):
            if id(variable) in trainable:
                variables.append(variable)
                owners.append((name, index))
    sources = [
        call_outputs,
        [seen_inputs[c.name] for c in spec.calls],
        variables,
        list(logits.values()),
    ]
    try:
        grads = tape.gradient(loss, sources, unconnected_gradients=tf.UnconnectedGradients.NONE)
    except LookupError as exc:
        raise _no_gradient_error(exc, spec) from None
    except Exception as exc:  # a TensorFlow kernel refusing (NCHW MaxPoolGrad on a CPU)
        raise _kernel_error(exc) from None
    out_grads, in_grads, var_grads, logit_grads = grads
    result = KerasGradients(
        loss=float(np.asarray(loss)),
        outputs=_numpy(y_pred),
        per_call={c.name: _numpy(v) for c, v in zip(spec.calls, call_outputs)},
        d_outputs={c.name: _maybe(g) for c, g in zip(spec.calls, out_grads)},
        d_inputs={c.name: [_maybe(g) for g in gs] for c, gs in zip(spec.calls, in_grads)},
        weights={},
        noise=noise,
        d_logits={name: _maybe(g) for name, g in zip(logits, logit_grads)},
        logits={name: np.asarray(v) for name, v in logits.items()},
        output_masks=[_keras_mask(v) for v in y_pred],
    )
    for (name, index), g in zip(owners, var_grads):
        result.weights.setdefault(name, {})[index] = _maybe(g)
    result._raw = (var_grads, variables)
    _refine_read_back_masks(result, runner.unknown_masks, spec)
    return result


# TensorFlow ops without a registered gradient, and how to find the layers that use them.
NO_GRADIENT_OPS = {
    "ResizeArea": lambda layer: layer.config.get("interpolation") == "area",
}


def _no_gradient_error(exc: LookupError, spec) -> KerascheckError:
    """TensorFlow's "gradient registry has no entry for: OP" as one clear line, naming the
    layers that run that op."""
    found = re.search(r"no entry for:?\s*(\w+)", str(exc))
    op = found.group(1) if found else None
    if op is None:
        message = keras_message(exc)
        return KerascheckError(f"Keras cannot compute gradients: {message}")
    test = NO_GRADIENT_OPS.get(op)
    names = [n for n, layer in _all_layers(spec) if test is not None and test(layer)]
    where = ""
    if names:
        quoted = ", ".join(f"'{n}'" for n in names)
        where = f" (layer{'s' if len(names) > 1 else ''} {quoted})"
    return KerascheckError(
        f"Keras cannot compute gradients: TensorFlow has no gradient for {op}{where}; "
        "`grad` and `train-step` need a differentiable model"
    )


def _kernel_error(exc: Exception) -> KerascheckError:
    """A TensorFlow op failing in the backward pass, as one line: its own message without
    the function-node prefix, naming the op (`[Op:MaxPoolGrad]`)."""
    text = keras_message(exc, 10_000)
    op = re.search(r"\[Op:(\w+)\]", text)
    text = re.sub(r"^\{\{[^}]*\}\}\s*", "", re.sub(r"\s*\[Op:.*$", "", text))
    found = f" in {op.group(1)}" if op else ""
    return KerascheckError(
        f"Keras cannot compute gradients: TensorFlow failed{found} ({text[:200]}); "
        "kerascheck needs Keras' own gradients as the reference"
    )


def _all_layers(spec, prefix=""):
    for name, layer in spec.layers.items():
        yield prefix + name, layer
        if getattr(layer, "model", None) is not None:
            yield from _all_layers(layer.model, f"{prefix}{name}/")


def _refine_read_back_masks(result: KerasGradients, unknown_masks: dict, spec) -> None:
    """Where a read-back (tf_keras) multiplicative mask was unknown (input exactly 0),
    Keras' own backward tells it: dL/d input = mask * dL/d output."""
    layer_of = {c.name: c.layer for c in spec.calls}
    for name, value in list(result.noise.items()):
        unknown = unknown_masks.pop(layer_of[name], None)
        if unknown is None:  # also every recurrent and attention layer's masks
            continue
        scale, shift = value
        d_out = result.d_outputs.get(name)
        d_in = (result.d_inputs.get(name) or [None])[0]
        if d_out is None or d_in is None or isinstance(d_out, list):
            continue
        with np.errstate(divide="ignore", invalid="ignore"):
            from_grads = np.where(d_out != 0, d_in / np.where(d_out != 0, d_out, 1), 0.0)
        refined = np.where(unknown, from_grads, scale).astype(scale.dtype)
        result.noise[name] = (refined, shift)


def _deserialize_optimizer(module, config):
    """A built-in optimizer from its config (kerascheck checked the class first)."""
    try:
        return module.optimizers.deserialize(config)
    except Exception as exc:
        message = keras_message(exc)
        raise KerascheckError(f"Keras cannot build the optimizer {config!r}: {message}")


def _private_copy(tf, value):
    """A copy of `value` only this call reads, so its gradient is this call's share.
    The Keras mask travels on the tensor, so it is carried over."""
    if not tf.is_tensor(value) or not value.dtype.is_floating:
        return value
    copy = tf.identity(value)
    mask = getattr(value, "_keras_mask", None)
    if mask is not None:
        try:
            copy._keras_mask = mask
        except AttributeError:
            pass
    return copy


def _takes_training(layer) -> bool:
    import inspect

    call = getattr(layer, "call", None)
    try:
        return call is not None and "training" in inspect.signature(call).parameters
    except (TypeError, ValueError):
        return False


# Noise layers whose draw inside a nested model is recorded (see `_nested_call`); tf_keras
# only for the dropouts, whose generator call can be made on ones.
NESTED_NOISE = {
    "keras": {
        "Dropout",
        "SpatialDropout1D",
        "SpatialDropout2D",
        "SpatialDropout3D",
        "GaussianNoise",
        "GaussianDropout",
        "AlphaDropout",
    },
    "tf_keras": {"Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D"},
}


def _noisy_inside(nested_spec) -> bool:
    """Whether a nested model (or one nested in it) holds a dropout or noise layer."""
    for layer in nested_spec.layers.values():
        inner = getattr(layer, "model", None)
        if inner is not None and _noisy_inside(inner):
            return True
        if layer.class_name in NESTED_NOISE["keras"]:
            return True
    return False


def _nested_call(runner, layer, nested_spec, argument, args, kwargs):
    """Run a nested model and record the (scale, shift) each of its dropout and noise
    layers applied: {inner call name: (scale, shift)}, a dict again for a model nested
    in it. Keras 3: each layer's `call` replays its draw on ones and zeros from the saved
    seed-generator state; tf_keras: each dropout's generator draws on ones and the
    layer's input is multiplied by that mask (the same product TensorFlow computes).
    Layers whose draw cannot be recorded are refused by `grad` before (see
    `kerascheck.grad.check_nested_noise`)."""
    from contextlib import ExitStack

    store: dict = {}
    calls = _Calls(lambda index: store)
    calls.start()
    with ExitStack() as stack:
        _spy_nested(stack, runner, layer, nested_spec, calls)
        output = layer(argument, *args, **kwargs)
    return output, store


class _Calls:
    """Where the draws of a nested model's current call go. A model called several times
    (inside another nested model) runs its calls in order, each with its own store."""

    def __init__(self, store_of):
        self.store_of, self.index, self.counts = store_of, -1, {}

    def start(self):
        self.index += 1
        self.counts = {}

    @property
    def store(self) -> dict:
        return self.store_of(self.index)

    def record(self, layer: str, names: list, value) -> None:
        """The `n`-th draw of `layer` in this call is that of its `n`-th call."""
        index = self.counts.get(layer, 0)
        self.counts[layer] = index + 1
        if index < len(names):
            self.store[names[index]] = value


def _starting(calls):
    def make(original):
        def call(*a, **kw):
            calls.start()
            return original(*a, **kw)

        return call

    return make


def _spy_nested(stack, runner, keras_model, nested_spec, calls):
    for call in nested_spec.calls:
        spec_layer = nested_spec.layers[call.layer]
        if call.index:  # the layer's first call spies on all of them
            continue
        inner = keras_model.get_layer(call.layer)
        names = [c.name for c in nested_spec.calls if c.layer == call.layer]
        if getattr(spec_layer, "model", None) is not None:
            inner_calls = _Calls(
                lambda index, names=names: calls.store.setdefault(
                    names[min(index, len(names) - 1)], {}
                )
            )
            stack.enter_context(_Spy(inner, "call", _starting(inner_calls)))
            _spy_nested(stack, runner, inner, spec_layer.model, inner_calls)
            continue
        if spec_layer.class_name not in NESTED_NOISE[runner.flavor]:
            continue

        def record(value, names=names, key=call.layer):
            calls.record(key, names, value)

        if runner.flavor == "keras":
            stack.enter_context(_Spy(inner, "call", _replaying(inner, record)))
        else:
            generator = inner._random_generator
            stack.enter_context(_Spy(generator, "dropout", _on_ones(record)))


def _replay_draw(state, call, inputs, args, kwargs):
    """Keras 3: `call(inputs)`, then the same random draw replayed on ones and zeros
    (the seed state rewound each time), so the (scale, shift) it applied is read back."""
    import tensorflow as tf

    before = state.numpy()
    output = call(inputs, *args, **kwargs)
    after = state.numpy()
    state.assign(before)
    ones = call(tf.ones_like(inputs), *args, **kwargs)
    state.assign(before)
    zeros = call(tf.zeros_like(inputs), *args, **kwargs)
    state.assign(after)
    shift = np.asarray(zeros)
    return output, (np.asarray(ones) - shift, shift)


def _replaying(layer, record):
    """A Keras 3 layer `call` that also replays its draw on ones and zeros."""

    def make(original):
        def call(inputs, *a, **kw):
            if getattr(layer, "seed_generator", None) is None:  # rate 0: nothing drawn
                record((1.0, 0.0))
                return original(inputs, *a, **kw)
            output, drawn = _replay_draw(layer.seed_generator.state, original, inputs, a, kw)
            record(drawn)
            return output

        return call

    return make


def _on_ones(record):
    """A tf_keras generator `dropout` drawing its mask on ones, applied to the inputs."""
    import tensorflow as tf

    def make(original):
        def dropout(inputs, rate, *a, **kw):
            mask = original(tf.ones_like(inputs), rate, *a, **kw)
            record((np.asarray(mask), 0.0))
            return inputs * mask

        return dropout

    return make


def _noisy_call(runner, layer, argument, args, kwargs):
    """Run a dropout or noise layer and read back the (scale, shift) it applied;
    for recurrent and attention layers, the masks their dropout drew."""

    if hasattr(layer, "cell") or hasattr(layer, "forward_layer"):
        return _recurrent_call(runner, layer, argument, args, kwargs)
    if type(layer).__name__ in ATTENTION:
        return _attention_call(runner, layer, argument, args, kwargs)

    state = getattr(getattr(layer, "seed_generator", None), "state", None)
    if state is not None:  # Keras 3
        return _replay_draw(state, layer, argument, args, kwargs)
    output = layer(argument, *args, **kwargs)
    x, y = np.asarray(argument), np.asarray(output)
    if type(layer).__name__ in ADDITIVE_NOISE:
        return output, (1.0, y - x)
    if type(layer).__name__ == "AlphaDropout":
        raise KerascheckError(
            f"layer '{layer.name}' (AlphaDropout): tf_keras' realized mask cannot be read back "
            "in training mode; use --mode inference"
        )
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(x != 0, y / np.where(x != 0, x, 1), 0.0).astype(x.dtype)
    runner.unknown_masks[layer.name] = x == 0
    return output, (scale, 0.0)


class _Spy:
    """Replace `obj.name` by `make(original)` on the instance, for one call only."""

    def __init__(self, obj, name, make):
        self.obj, self.name, self.make = obj, name, make

    def __enter__(self):
        self.own = self.name in vars(self.obj)
        self.original = getattr(self.obj, self.name)
        object.__setattr__(self.obj, self.name, self.make(self.original))
        return self

    def __exit__(self, *exc):
        if self.own:
            object.__setattr__(self.obj, self.name, self.original)
        else:
            object.__delattr__(self.obj, self.name)
        return False


def _leaf_cells(cell) -> list:
    """A (possibly stacked) cell's own cells, in order."""
    inner = getattr(cell, "cells", None)
    if isinstance(inner, (list, tuple)):
        return [leaf for c in inner for leaf in _leaf_cells(c)]
    return [cell]


def _recording(store, key):
    """A getter wrapper keeping the last mask the getter returned."""

    def make(original):
        def getter(*args, **kwargs):
            value = original(*args, **kwargs)
            if value is not None:
                store[key] = value
            return value

        return getter

    return make


def _as_applied(cell, mask, rate):
    """A recorded cell mask as Keras applies it: None, one array for every gate, or a
    list with one per gate. LSTM/GRU/ConvLSTM cells skip dropout unless 0 < rate < 1
    (SimpleRNN applies any mask it drew); tf_keras' `implementation=2` cells use the
    first of their per-gate masks for the fused kernel."""
    if mask is None:
        return None
    if "SimpleRNN" not in type(cell).__name__ and not 0.0 < float(rate) < 1.0:
        return None
    if isinstance(mask, (list, tuple)):
        if getattr(cell, "implementation", 1) != 1:
            return np.asarray(mask[0])
        return [np.asarray(m) for m in mask]
    return np.asarray(mask)


def _recurrent_call(runner, layer, argument, args, kwargs):
    """Run a recurrent layer (or Bidirectional: each direction on its own) and record
    the dropout masks its cells applied."""
    from contextlib import ExitStack

    directions = (
        {"forward": layer.forward_layer, "backward": layer.backward_layer}
        if hasattr(layer, "forward_layer") and not hasattr(layer, "cell")
        else {None: layer}
    )
    keras3 = runner.flavor == "keras"
    getters = (
        ("get_dropout_mask", "get_recurrent_dropout_mask")
        if keras3
        else ("get_dropout_mask_for_cell", "get_recurrent_dropout_mask_for_cell")
    )
    stores = {}
    with ExitStack() as stack:
        for role, rnn in directions.items():
            store = stores[role] = {}
            for index, cell in enumerate(_leaf_cells(rnn.cell)):
                for kind, getter in zip(("input", "recurrent"), getters):
                    if hasattr(cell, getter):
                        stack.enter_context(_Spy(cell, getter, _recording(store, (index, kind))))
            if not keras3 and hasattr(rnn, getters[0]):  # tf_keras' fused LSTM/GRU
                stack.enter_context(_Spy(rnn, getters[0], _recording(store, "sequence")))
        output = layer(argument, *args, **kwargs)
    noise = {}
    for role, rnn in directions.items():
        store, cells = stores[role], []
        for index, cell in enumerate(_leaf_cells(rnn.cell)):
            cells.append(
                {
                    "input": _as_applied(cell, store.get((index, "input")), cell.dropout),
                    "recurrent": _as_applied(
                        cell, store.get((index, "recurrent")), cell.recurrent_dropout
                    ),
                }
            )
        sequence = store.get("sequence")
        if isinstance(sequence, (list, tuple)):  # count masks drawn, the first applied
            sequence = sequence[0]
        noise[role] = {
            "sequence": None if sequence is None else np.asarray(sequence),
            "cells": cells,
        }
    return output, noise[None] if None in noise else noise


def _attention_call(runner, layer, argument, args, kwargs):
    """Run an attention layer and record the mask its dropout applied to the weights."""
    recorded = []
    if runner.flavor == "keras":
        if hasattr(layer, "_dropout_layer"):  # MultiHeadAttention, GroupedQueryAttention
            target, name = layer._dropout_layer, "call"
            generator = target.seed_generator

            def replay(original, inputs, *a, **kw):
                return original(runner.module.ops.ones_like(inputs), *a, **kw)

        else:  # Attention, AdditiveAttention: backend.random.dropout in `_apply_scores`
            target, name = layer, "_apply_scores"
            generator = layer.seed_generator

            def replay(original, *a, **kw):  # the weights have the scores' shape
                ones = runner.module.ops.ones_like(a[0] if a else kw["scores"])
                return runner.module.random.dropout(ones, layer.dropout, seed=generator)

        def make(original):
            def spy(*a, **kw):
                before = generator.state.numpy()
                out = original(*a, **kw)
                after = generator.state.numpy()
                if not np.array_equal(before, after):  # a draw happened: replay it
                    generator.state.assign(before)
                    recorded.append(np.asarray(replay(original, *a, **kw)))
                    generator.state.assign(after)
                return out

            return spy
    else:
        source = getattr(layer, "_dropout_layer", layer)
        target, name = getattr(source, "_random_generator", None), "dropout"
        if target is None:
            raise KerascheckError(
                f"layer '{layer.name}' ({type(layer).__name__}): tf_keras drew its attention "
                "dropout from no generator kerascheck can observe; use --mode inference"
            )

        def make(original):
            def spy(inputs, rate, *a, **kw):
                out = original(inputs, rate, *a, **kw)
                scale = np.asarray(1.0 / (1.0 - float(rate)), dtype=np.asarray(out).dtype)
                recorded.append(np.where(np.asarray(out) != 0, scale, np.zeros((), scale.dtype)))
                return out

            return spy

    with _Spy(target, name, make):
        output = layer(argument, *args, **kwargs)
    if len(recorded) != 1:
        raise KerascheckError(
            f"layer '{layer.name}' ({type(layer).__name__}): expected one attention dropout "
            f"draw in training mode, found {len(recorded)}; use --mode inference"
        )
    return output, recorded[0]


def _compute_loss(runner, model, arrays, y, y_pred, weights):
    single = len(y_pred) == 1
    x = arrays[0] if len(arrays) == 1 else arrays
    kwargs = dict(
        x=x, y=y[0] if single else y, y_pred=y_pred[0] if single else y_pred, sample_weight=weights
    )
    if runner.flavor == "keras":
        kwargs["training"] = True
    return model.compute_loss(**kwargs)


def _keras_mask(value):
    """The Keras mask a tensor carries (`_keras_mask`), as a NumPy array, or None."""
    mask = getattr(value, "_keras_mask", None)
    return None if mask is None else np.asarray(mask)


def _maybe(value):
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return [_maybe(v) for v in value]
    if hasattr(value, "indices") and hasattr(value, "dense_shape"):  # an Embedding's rows
        import tensorflow as tf

        value = tf.convert_to_tensor(value)
    return np.asarray(value)
