"""Backpropagation through an engine Graph: a forward that keeps each call's backward,
and a reverse walk that adds gradients up over fan-out and over a shared layer's calls.

Two ways to run it, mirroring `diff`:

- **carried**: `forward` on the engine's own values, then `backward` from the
  loss gradient: the engine's chain end to end.
- **own**: `forward(feed=...)` gives every call Keras' forward values as inputs,
  and `own_backward` feeds every call Keras' upstream gradient, so each call's
  backward is judged alone.

No TensorFlow here: `feed` and the upstream gradients are plain arrays.
"""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass, field

import numpy as np

from ..errors import KerascheckError
from ..loading.spec import TensorRef, tensor_refs
from .base import frozen
from .graph import Graph, _pick


@dataclass
class Tape:
    """A training-mode forward: outputs, every call's output and backward."""

    outputs: list
    per_call: dict  # {call name: output}
    backwards: dict  # {call name: backward}
    values: dict  # {(layer, call index): output}


@dataclass
class Gradients:
    """What a backward walk produced."""

    d_outputs: dict = field(default_factory=dict)  # {call name: dL/d output (list if several)}
    d_inputs: dict = field(default_factory=dict)  # {call name: [this call's dL/d each input]}
    weights: dict = field(default_factory=dict)  # {layer name: {weight name: dL/dw}}
    model_inputs: list = field(default_factory=list)  # dL/d each model input


def forward(
    graph: Graph,
    inputs: list[np.ndarray],
    training: bool = True,
    noise: dict | None = None,
    feed: dict | None = None,
    input_masks: list | None = None,
) -> Tape:
    """Run every call through `Layer.vjp`.

    `noise` maps call names to the `(scale, shift)` Keras realized in its
    dropout and noise layers. With `feed` ({call name: Keras' output}) each call
    reads Keras' values instead of the engine's, for own errors. `input_masks`:
    the masks entering a nested model from its caller.
    """
    noise = noise or {}
    values = {(spec.name, 0): array for spec, array in zip(graph.spec.inputs, inputs)}
    entering = input_masks or [None] * len(graph.spec.inputs)
    masks = {(spec.name, 0): mask for spec, mask in zip(graph.spec.inputs, entering)}
    fed = dict(values)
    per_call, backwards = {}, {}
    constant = constant_calls(graph)
    for call in graph.spec.calls:
        source = fed if feed is not None else values
        if call.name in constant:  # preprocessing in front of every weight: no backward
            output, mask = graph.run_call(call, source, masks)
            back = None
        else:
            output, mask, back = graph.vjp_call(call, source, masks, training, noise.get(call.name))
        values[(call.layer, call.index)] = output
        masks[(call.layer, call.index)] = mask
        if feed is not None:
            fed[(call.layer, call.index)] = feed[call.name]
        per_call[call.name] = output
        backwards[call.name] = back
    outputs = [_pick(values, ref) for ref in graph.spec.outputs]
    return Tape(outputs, per_call, backwards, values)


def constant_calls(graph: Graph) -> set[str]:
    """Calls without a backward of their own that no trainable weight lies behind
    (Rescaling, Normalization, Resizing in front of the network): their output is a
    constant of the weights, so the chain stops there instead of being refused."""
    from .base import Layer

    behind = weights_behind(graph)
    constant = set()
    for call in graph.spec.calls:
        layer = graph.layers[call.layer]
        upstream = any(behind.get((ref.layer, ref.call), False) for ref in call.refs)
        if not upstream and not layer.trainable_names() and type(layer).vjp is Layer.vjp:
            constant.add(call.name)
    return constant


def weights_behind(graph: Graph) -> dict[tuple, bool]:
    """{(layer, call index): whether a trainable weight feeds that call's output}."""
    behind: dict[tuple, bool] = {}
    for call in graph.spec.calls:
        upstream = any(behind.get((ref.layer, ref.call), False) for ref in call.refs)
        has_weights = bool(graph.layers[call.layer].trainable_names())  # built at load
        behind[(call.layer, call.index)] = upstream or has_weights
    return behind


_INPUT_GRADIENTS = contextvars.ContextVar("kerascheck_input_gradients", default=True)


@contextlib.contextmanager
def weight_gradients_only():
    """Within this block `backward` may skip the input gradient of a call whose inputs
    no trainable weight lies behind (the model's first convolution: its dL/dx, the
    costliest part of its backward, is dL/d model input, which a training step never
    uses). Such a call's `d_inputs` and `model_inputs` are then None. `grad` reports
    dL/d input, so only `train-step` uses this."""
    token = _INPUT_GRADIENTS.set(False)
    try:
        yield
    finally:
        _INPUT_GRADIENTS.reset(token)


def backward(
    graph: Graph,
    tape: Tape,
    d_outputs: list,
    pre_activation: dict | None = None,
    extra: dict | None = None,
):
    """The engine's chain from the loss gradient with respect to each model output.

    `pre_activation` maps an output call's name to dL/d(its pre-activation)
    when the loss was computed from logits; that call then skips its activation.
    `extra` maps call names to gradients added to their output's (activity
    regularizers, which put a term of the loss on an inner tensor).
    """
    pending: dict[tuple, np.ndarray] = {}
    for ref, grad in zip(graph.spec.outputs, d_outputs):
        if grad is not None:
            _add(pending, ref, grad)
    calls = {call.name: call for call in graph.spec.calls}
    for name, grad in (extra or {}).items():
        call = calls[name]
        grads = grad if isinstance(grad, list) else [grad]
        for index, g in enumerate(grads):
            _add(pending, TensorRef(call.layer, call.index, index), g)
    pre_activation = pre_activation or {}
    behind = None if _INPUT_GRADIENTS.get() else weights_behind(graph)
    result = Gradients()
    for call in reversed(graph.spec.calls):
        d_out = _gathered(pending, call, tape.per_call[call.name])
        if d_out is None and call.name not in pre_activation:
            continue
        result.d_outputs[call.name] = d_out
        needed = behind is None or any(behind.get((r.layer, r.call), False) for r in call.refs)
        d_inputs, d_weights, routed = _apply(
            graph, tape, call, d_out, pre_activation.get(call.name), needed
        )
        result.d_inputs[call.name] = d_inputs
        _add_weights(result.weights, graph, call, d_weights)
        for ref, grad in [*zip(call.inputs, d_inputs), *routed]:
            if grad is not None:
                _add(pending, ref, grad)
    result.model_inputs = [pending.get((i.name, 0, 0)) for i in graph.spec.inputs]
    return result


def own_backward(graph: Graph, tape: Tape, keras_d_outputs: dict, pre_activation: dict | None):
    """Every call's backward fed Keras' upstream gradient (and, via `tape`, Keras' inputs)."""
    pre_activation = pre_activation or {}
    result = Gradients()
    for call in reversed(graph.spec.calls):
        d_out = keras_d_outputs.get(call.name)
        if _empty(d_out) and call.name not in pre_activation:
            continue
        d_out = _zeros_for_missing(d_out, tape.per_call[call.name])
        d_inputs, d_weights, _ = _apply(graph, tape, call, d_out, pre_activation.get(call.name))
        result.d_inputs[call.name] = d_inputs
        _add_weights(result.weights, graph, call, d_weights)
    return result


def _skip(call):
    """No backward: nothing flows to the inputs (see `constant_calls`)."""
    return [None] * len(call.inputs), {}, []


def _apply(graph, tape, call, d_out, d_pre, inputs_needed=True):
    """(dL/d each first-argument input, weight gradients, [(ref, grad)] for tensors
    passed in further arguments).

    Without `inputs_needed`, a backward with a `weights_only` variant (convolutions)
    computes the weight gradients alone and the inputs get None.

    A layer whose call reads tensors beyond its first argument (attention's
    `value`, an RNN's `initial_state`) returns a third item from its backward:
    `{"args": [grad or None per positional argument], "kwargs": {name: grad}}`,
    with a list for an argument that holds a list of tensors.
    """
    back = tape.backwards[call.name]
    if back is None:
        return _skip(call)
    if d_pre is not None:
        step = getattr(back, "pre_activation", None)
        if step is None:
            raise KerascheckError(
                f"layer '{call.layer}': the loss was taken from logits, but the layer has "
                "no pre-activation backward"
            )
        result = _call_backward(step, d_pre, inputs_needed)
    else:
        result = _call_backward(back, d_out, inputs_needed)
    d_inputs, d_weights = result[0], result[1]
    if d_inputs is None and call.as_list:
        d_inputs = [None] * len(call.inputs)
    extra = result[2] if len(result) > 2 else None
    if call.first is not None and tensor_refs(call.first):
        raise KerascheckError(
            f"layer '{call.layer}' ({graph.layers[call.layer].class_name}) is called with "
            "constants in its first argument; kerascheck's backward does not cover such "
            "calls yet"
        )
    routed = _route_extra(graph, tape, call, extra)
    d_inputs = list(d_inputs) if call.as_list else [d_inputs]
    return d_inputs, ({} if frozen(graph.layers[call.layer]) else d_weights), routed


def _call_backward(back, grad, inputs_needed):
    weights_only = None if inputs_needed else getattr(back, "weights_only", None)
    return back(grad) if weights_only is None else weights_only(grad)


def _route_extra(graph, tape, call, extra):
    """Pair the gradients of further tensor arguments with their refs; a floating-point
    tensor argument the layer gives no gradient for is refused, never dropped."""
    pairs = []
    given_args = (extra or {}).get("args", [])
    given_kwargs = (extra or {}).get("kwargs", {})
    sources = [
        (value, given_args[i] if i < len(given_args) else None) for i, value in enumerate(call.args)
    ]
    sources += [(value, given_kwargs.get(name)) for name, value in call.kwargs.items()]
    for value, grad in sources:
        refs = value if isinstance(value, (list, tuple)) else [value]
        grads = grad if isinstance(grad, (list, tuple)) else [grad] * len(refs)
        for ref, g in zip(refs, grads):
            if not isinstance(ref, TensorRef):
                continue
            if g is not None:
                pairs.append((ref, g))
            elif np.issubdtype(np.asarray(_pick(tape.values, ref)).dtype, np.floating):
                raise KerascheckError(
                    f"layer '{call.layer}' ({graph.layers[call.layer].class_name}) reads the "
                    f"tensor '{ref.layer}' in a further argument, and kerascheck's backward "
                    "gives it no gradient yet"
                )
    return pairs


def _is_ref(value):
    return isinstance(value, TensorRef) or (
        isinstance(value, (list, tuple)) and any(isinstance(v, TensorRef) for v in value)
    )


def _add(pending, ref: TensorRef, grad):
    key = (ref.layer, ref.call, ref.tensor)
    pending[key] = grad if key not in pending else pending[key] + grad


def _gathered(pending, call, output):
    """dL/d this call's output(s), None where nothing downstream used it."""
    if isinstance(output, (list, tuple)):
        grads = [pending.pop((call.layer, call.index, i), None) for i in range(len(output))]
        if all(g is None for g in grads):
            return None
        return [np.zeros_like(o) if g is None else g for g, o in zip(grads, output)]
    return pending.pop((call.layer, call.index, 0), None)


def _empty(value):
    if isinstance(value, (list, tuple)):
        return all(v is None for v in value)
    return value is None


def _zeros_for_missing(value, output):
    if isinstance(value, (list, tuple)):
        return [np.zeros_like(o) if v is None else v for v, o in zip(value, output)]
    return value


def _add_weights(weights, graph, call, d_weights):
    if not d_weights:
        return
    into = weights.setdefault(call.layer, {})
    for name, grad in d_weights.items():
        into[name] = grad if name not in into else into[name] + grad
