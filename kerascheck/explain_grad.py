"""`kerascheck explain --grad`: the arithmetic of one gradient element, spelled out.

For a learner writing backpropagation by hand: a convolution kernel tap's
gradient is a sum of input cells times upstream-gradient cells; an input
cell's gradient collects the (180°-rotated) kernel taps that reach it; a max
pooling input cell gets the gradient of the windows whose first maximum it
is. Everything comes from the engine alone (no TensorFlow): the engine's
training-mode forward, its loss and its backward, whose values `grad` checks
against Keras.
"""

from __future__ import annotations

import numpy as np

from .engine import activations
from .engine.layers import conv, core, pooling
from .engine.model import EngineModel
from .engine.windows import padding_amounts, to_channels_last
from .errors import KerascheckError
from .explain import Explanation
from .grad import check_targets, engine_gradients, resolve_loss

MAX_TERMS = 12


def explain_grad(model: EngineModel, inputs, targets, layer: str, index: str, loss=None):
    """Explain `dL/d(tensor)[coordinates]`; `index` is `WEIGHT:i,j,...` or `i,j,...` for
    the layer's input (`d_input`)."""
    loss_fn, _, _ = resolve_loss(model, loss)
    targets = check_targets(model, loss_fn, targets)
    calls = [c for c in model.spec.calls if c.name == layer or c.layer == layer]
    if not calls:
        raise KerascheckError(
            f"--layer: expected one of {[c.name for c in model.spec.calls]}, found '{layer}'"
        )
    call = calls[0]
    tensor, _, coordinates = index.rpartition(":")
    tensor = tensor or "d_input"
    try:
        position = tuple(int(p) for p in coordinates.split(","))
    except ValueError:
        raise KerascheckError(f"--index expects WEIGHT:i,j,... or i,j,..., found '{index}'")
    engine = engine_gradients(model, loss_fn, inputs, targets, None, True, None)
    tape, grads = engine.tape, engine.gradients
    engine_layer = model.graph.layers[call.layer]
    x = _call_input(model, tape, call, inputs)
    back = tape.backwards[call.name]
    if call.name in engine.logits:  # the loss was taken from this call's logits
        dz = engine.d_logits[call.name]
    else:
        dy = grads.d_outputs.get(call.name)
        if dy is None:
            raise KerascheckError(f"no gradient reaches '{call.name}' from the loss")
        fn = getattr(back, "activation", None)
        dz = activations.backward(fn, back.logits, tape.per_call[call.name], dy) if fn else dy
    if tensor == "d_input":
        value = grads.d_inputs[call.name][0]
    elif tensor in engine_layer.w:
        value = grads.weights.get(call.layer, {}).get(tensor)
    else:
        raise KerascheckError(
            f"--index: expected d_input or one of {list(engine_layer.w)} before ':', "
            f"found '{tensor}'"
        )
    if value is None or len(position) != value.ndim:
        raise KerascheckError(
            f"--index: expected {np.ndim(value)} coordinates for {tensor} of shape "
            f"{np.shape(value)}, found {position}"
        )
    if any(not 0 <= i < n for i, n in zip(position, value.shape)):
        raise KerascheckError(f"--index {position} is outside {tensor}'s shape {value.shape}")
    result = Explanation(
        f"{call.name}/{tensor}", engine_layer.class_name, position, float(value[position])
    )
    if isinstance(engine_layer, conv._Conv) and engine_layer.groups == 1:
        _conv(engine_layer, x, dz, tensor, position, result)
    elif isinstance(engine_layer, core.Dense) and x.ndim == 2:
        _dense(engine_layer, x, dz, tensor, position, result)
    elif isinstance(engine_layer, pooling._MaxPooling) and tensor == "d_input":
        _maxpool(engine_layer, x, dy, position, result)
    else:
        raise KerascheckError(
            "explain --grad covers Conv1D/2D/3D (no groups), Dense on 2-D inputs and "
            f"MaxPooling input cells; '{call.name}' is a {engine_layer.class_name}"
        )
    return result


def _call_input(model, tape, call, inputs):
    ref = call.inputs[0]
    value = tape.values.get((ref.layer, ref.call))
    if value is None:
        value = inputs[[i.name for i in model.spec.inputs].index(ref.layer)]
    return np.asarray(value[ref.tensor] if isinstance(value, list) else value, np.float64)


def _terms(lines, terms, total_label):
    """The largest terms, a count of the rest, and their sum."""
    terms.sort(key=lambda t: -abs(t[1]))
    for text, value in terms[:MAX_TERMS]:
        lines.append(f"  {text} = {value:+.6g}")
    if len(terms) > MAX_TERMS:
        rest = sum(v for _, v in terms[MAX_TERMS:])
        lines.append(f"  ... {len(terms) - MAX_TERMS} smaller terms, together {rest:+.6g}")
    total = float(sum(v for _, v in terms))
    lines.append(f"  {total_label} = {total:+.6g}")
    return total


def _conv(layer, x, dz, tensor, position, result):
    first = layer.data_format == "channels_first"
    x, dz = to_channels_last(x, layer.data_format), to_channels_last(dz, layer.data_format)
    kernel = layer.w["kernel"].astype(np.float64)
    sizes = x.shape[1:-1]
    pads = [
        padding_amounts(n, k, s, d, layer.padding)
        for n, k, s, d in zip(sizes, layer.kernel_size, layer.strides, layer.dilation)
    ]
    lines = [
        f"{layer.class_name} '{layer.name}': strides {layer.strides}, dilation "
        f"{layer.dilation}, zero padding (before, after) {pads}; dz = dL/d(pre-activation) "
        "= dL/d(output) * activation'(pre-activation)"
    ]
    out_sizes = dz.shape[1:-1]
    terms = []
    if tensor == "kernel":
        *taps, cin, cout = position
        lines.append(
            f"dL/d kernel[{', '.join(map(str, position))}] = sum over batch and output "
            f"positions p of x_padded[b, p*stride + tap*dilation, {cin}] * dz[b, p, {cout}]"
        )
        for b in range(x.shape[0]):
            for out in np.ndindex(*out_sizes):
                cell = [
                    o * s - pad[0] + t * d
                    for o, s, pad, t, d in zip(out, layer.strides, pads, taps, layer.dilation)
                ]
                if any(not 0 <= c < n for c, n in zip(cell, sizes)):
                    continue  # a padded zero
                term = x[(b, *cell, cin)] * dz[(b, *out, cout)]
                where = ", ".join(map(str, cell))
                terms.append(
                    (f"x[{b}, {where}, {cin}] * dz[{b}, {', '.join(map(str, out))}, {cout}]", term)
                )
        result.recomputed = _terms(lines, terms, "sum")
    elif tensor == "bias":
        (cout,) = position
        lines.append(f"dL/d bias[{cout}] = sum of dz[..., {cout}] over batch and positions")
        for b in range(dz.shape[0]):
            for out in np.ndindex(*out_sizes):
                terms.append((f"dz[{b}, {', '.join(map(str, out))}, {cout}]", dz[(b, *out, cout)]))
        result.recomputed = _terms(lines, terms, "sum")
    else:
        if first:
            b, c, *cell = position
        else:
            b, *cell, c = position
        lines.append(
            f"dL/d x[{', '.join(map(str, position))}]: every output position p and tap t with "
            "p*stride + t*dilation - pad = this cell contributes kernel[t, c, :] . dz[b, p, :] "
            "(the full correlation with the kernel rotated 180 degrees)"
        )
        for taps in np.ndindex(*layer.kernel_size):
            out = []
            for coord, t, s, d, pad, n in zip(
                cell, taps, layer.strides, layer.dilation, pads, out_sizes
            ):
                offset = coord + pad[0] - t * d
                out.append(offset // s if offset % s == 0 and 0 <= offset // s < n else None)
            if any(o is None for o in out):
                continue
            term = float(kernel[(*taps, c, slice(None))] @ dz[(b, *out, slice(None))])
            terms.append(
                (
                    f"kernel[{', '.join(map(str, taps))}, {c}, :] . dz[{b}, "
                    f"{', '.join(map(str, out))}, :]",
                    term,
                )
            )
        result.recomputed = _terms(lines, terms, "sum")
    result.lines = lines


def _dense(layer, x, dz, tensor, position, result):
    lines, terms = [f"Dense '{layer.name}': dz = dL/d(pre-activation)"], []
    if tensor == "kernel":
        i, j = position
        lines.append(f"dL/d kernel[{i}, {j}] = sum over the batch of x[b, {i}] * dz[b, {j}]")
        terms = [(f"x[{b}, {i}] * dz[{b}, {j}]", x[b, i] * dz[b, j]) for b in range(x.shape[0])]
    elif tensor == "bias":
        (j,) = position
        lines.append(f"dL/d bias[{j}] = sum over the batch of dz[b, {j}]")
        terms = [(f"dz[{b}, {j}]", dz[b, j]) for b in range(dz.shape[0])]
    else:
        b, i = position
        kernel = layer.w["kernel"].astype(np.float64)
        lines.append(f"dL/d x[{b}, {i}] = sum over units j of kernel[{i}, j] * dz[{b}, j]")
        terms = [
            (f"kernel[{i}, {j}] * dz[{b}, {j}]", kernel[i, j] * dz[b, j])
            for j in range(kernel.shape[1])
        ]
    result.recomputed = _terms(lines, terms, "sum")
    result.lines = lines


def _maxpool(layer, x, dy, position, result):
    """Which windows' first maximum this cell is (TensorFlow's rule), and their gradients."""
    fmt = layer.data_format
    x, dy = to_channels_last(x, fmt), to_channels_last(np.asarray(dy, np.float64), fmt)
    if fmt == "channels_first":
        b, c, *cell = position
    else:
        b, *cell, c = position
    pads = layer.pads(x.shape[1:-1])
    view = layer.window_view(x, -np.inf)
    lines = [
        f"{layer.class_name} '{layer.name}': each window sends its whole gradient to its "
        "first maximum in row-major order (TensorFlow's rule; ties go to the first)"
    ]
    terms = []
    for out in np.ndindex(*dy.shape[1:-1]):
        start = [o * s - pad[0] for o, s, pad in zip(out, layer.strides, pads)]
        offset = [p - s0 for p, s0 in zip(cell, start)]
        if any(not 0 <= o < k for o, k in zip(offset, layer.pool_size)):
            continue
        window = view[(b, *out, c)]
        first = np.unravel_index(int(np.argmax(window)), window.shape)
        if tuple(first) == tuple(offset):
            terms.append(
                (
                    f"window {out} (max {window.max():+.6g}) sends dL/dy[{b}, "
                    f"{', '.join(map(str, out))}, {c}]",
                    dy[(b, *out, c)],
                )
            )
        else:
            lines.append(
                f"  window {out}: its first maximum is cell {tuple(int(f) for f in first)}"
                f" of the window, not this one: nothing"
            )
    result.recomputed = _terms(lines, terms, "sum") if terms else 0.0
    result.lines = lines
