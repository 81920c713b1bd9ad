"""`kerascheck explain`: the arithmetic of one output element, spelled out.

For people matching Keras by hand: which input cells a convolution output reads
(padding included), the kernel taps, the bias and the activation; which input
element a Flatten output comes from; the dot product behind a Dense output.
Values come from the engine's own run, so the explanation and the number it
explains cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .engine.layers import conv, core
from .engine.model import EngineModel
from .engine.windows import padding_amounts
from .errors import KerascheckError


@dataclass
class Explanation:
    layer: str
    class_name: str
    index: tuple
    value: float
    lines: list[str] = field(default_factory=list)
    recomputed: float | None = None  # the value rebuilt from the lines' arithmetic


def explain(model: EngineModel, inputs, layer: str, index: tuple) -> Explanation:
    calls = [c for c in model.spec.calls if c.name == layer or c.layer == layer]
    if not calls:
        raise KerascheckError(
            f"--layer: expected one of {[c.name for c in model.spec.calls]}, found '{layer}'"
        )
    call = calls[0]
    values = model.run(inputs)
    engine_layer = model.graph.layers[call.layer]
    output = np.asarray(values[call.name])
    if len(index) != output.ndim or any(not 0 <= i < n for i, n in zip(index, output.shape)):
        raise KerascheckError(
            f"--index: expected {output.ndim} coordinates within {output.shape} "
            f"(batch first), found {tuple(index)}"
        )
    source = call.inputs[0]
    x = values.get(source.layer if source.call == 0 else f"{source.layer}#{source.call}")
    if x is None:  # a model input
        position = [i.name for i in model.spec.inputs].index(source.layer)
        x = np.asarray(inputs[position])
    elif isinstance(x, list):
        x = x[source.tensor]
    result = Explanation(call.name, engine_layer.class_name, tuple(index), float(output[index]))
    if isinstance(engine_layer, conv._Conv):
        _explain_conv(engine_layer, np.asarray(x), tuple(index), result)
    elif isinstance(engine_layer, core.Dense):
        _explain_dense(engine_layer, np.asarray(x), tuple(index), result)
    elif isinstance(engine_layer, core.Flatten):
        _explain_flatten(engine_layer, np.asarray(x), tuple(index), result)
    else:
        raise KerascheckError(
            f"explain covers Conv1D/2D/3D, Dense and Flatten; '{call.name}' is a "
            f"{engine_layer.class_name}"
        )
    return result


def _explain_conv(layer, x, index, result: Explanation) -> None:
    first = layer.data_format == "channels_first"
    if first:  # user coordinates (n, c, *spatial) -> channels-last (n, *spatial, c)
        x = np.moveaxis(x, 1, -1)
        n, channel, *position = index
    else:
        n, *position, channel = index
    kernel = layer.w["kernel"]
    sizes = x.shape[1:-1]
    per_group = kernel.shape[-2]
    group = channel // (layer.filters // layer.groups)
    lines, total, padded = [], 0.0, 0
    pads = [
        padding_amounts(size, k, s, d, layer.padding)
        for size, k, s, d in zip(sizes, layer.kernel_size, layer.strides, layer.dilation)
    ]
    lines.append(
        f"{layer.class_name} '{layer.name}': kernel {layer.kernel_size}, strides {layer.strides}, "
        f"dilation {layer.dilation}, padding '{layer.padding}' -> zero padding (before, after) "
        f"per axis {pads}; {layer.data_format}; output channel {channel} reads input channels "
        f"{group * per_group}..{(group + 1) * per_group - 1}"
    )
    for taps in np.ndindex(*layer.kernel_size):
        coords = [
            p * s - pad[0] + t * d
            for p, s, pad, t, d in zip(position, layer.strides, pads, taps, layer.dilation)
        ]
        if any(not 0 <= c < size for c, size in zip(coords, sizes)):
            padded += 1
            continue
        cells = x[(n, *coords, slice(group * per_group, (group + 1) * per_group))]
        weights = kernel[(*taps, slice(None), channel)]
        part = float(np.dot(cells.astype(np.float64), weights.astype(np.float64)))
        total += part
        where = (
            f"x[{n}, {', '.join(map(str, coords))}, :]"
            if not first
            else (f"x[{n}, :, {', '.join(map(str, coords))}]")
        )
        lines.append(
            f"  tap {taps}: {where} . kernel[{', '.join(map(str, taps))}, :, {channel}]"
            f" = {part:+.6g}"
        )
    if padded:
        lines.append(f"  {padded} taps fall on zero padding and add nothing")
    row = lambda: layer.convolve(x.astype(np.float64))[(n, *position)]  # noqa: E731
    _finish(layer, total, channel, lines, result, row)


def _explain_dense(layer, x, index, result: Explanation) -> None:
    *rows, unit = index
    vector = x[tuple(rows)].astype(np.float64)
    column = layer.w["kernel"][:, unit].astype(np.float64)
    total = float(np.dot(vector, column))
    lines = [
        f"Dense '{layer.name}': sum over {vector.size} inputs of "
        f"x[{', '.join(map(str, rows))}, i] * kernel[i, {unit}] = {total:+.6g}",
        "  largest terms: "
        + ", ".join(
            f"i={i}: {vector[i]:+.4g}*{column[i]:+.4g}"
            for i in np.argsort(-np.abs(vector * column))[:5]
        ),
    ]
    row = lambda: vector @ layer.w["kernel"].astype(np.float64)  # noqa: E731
    _finish(layer, total, unit, lines, result, row)


# Activations of a whole row (the channel axis), not of one element.
ROW_ACTIVATIONS = ("softmax", "log_softmax")


def _finish(layer, total, channel, lines, result: Explanation, row) -> None:
    """Bias and activation; `row()` gives every channel's sum for row-wise activations."""
    bias = layer.w["bias"].astype(np.float64) if layer.use_bias else None
    if bias is not None:
        lines.append(
            f"  + bias[{channel}] = {bias[channel]:+.6g}  ->  {total + bias[channel]:+.6g}"
        )
        total += bias[channel]
    else:
        lines.append("  no bias (use_bias=False)")
    name = layer.activation.__name__
    if name in ROW_ACTIVATIONS:
        pre = row() + (bias if bias is not None else 0.0)
        activated = float(layer.activation(pre)[channel])
        lines.append(
            f"  {name} over all {pre.size} channels of this position "
            f"(max {pre.max():+.6g}), channel {channel}: {activated:+.6g}"
        )
    else:
        activated = float(layer.activation(np.asarray([total], dtype=np.float64))[0])
        lines.append(f"  {name}({total:+.6g}) = {activated:+.6g}")
    result.lines = lines
    result.recomputed = activated


def _explain_flatten(layer, x, index, result: Explanation) -> None:
    n, j = index
    if layer.data_format == "channels_first" and x.ndim > 2:
        moved = np.moveaxis(x, 1, -1)
        last = np.unravel_index(j, moved.shape[1:])
        source = (n, last[-1], *last[:-1])
        note = "channels_first input: moved to channels-last, then flattened row by row"
    else:
        source = (n, *np.unravel_index(j, x.shape[1:]))
        note = "flattened row by row with the channel innermost (C order on (H, W, C))"
    result.lines = [
        f"Flatten '{layer.name}': output[{n}, {j}] = input{tuple(int(i) for i in source)} ({note})"
    ]
    result.recomputed = float(x[tuple(int(i) for i in source)])
