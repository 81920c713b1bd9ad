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

from .engine.layers import activations, conv, core, merging, normalization, pooling
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


def explain(
    model: EngineModel, inputs, layer: str, index: tuple, batch_size: int | None = None
) -> Explanation:
    calls = [c for c in model.spec.calls if c.name == layer or c.layer == layer]
    if not calls:
        raise KerascheckError(
            f"--layer: expected one of {[c.name for c in model.spec.calls]}, found '{layer}'"
        )
    call = calls[0]
    values = model.run(inputs, batch_size=batch_size)
    engine_layer = model.graph.layers[call.layer]
    output = np.asarray(values[call.name])
    if len(index) != output.ndim or any(not 0 <= i < n for i, n in zip(index, output.shape)):
        raise KerascheckError(
            f"--index: expected {output.ndim} coordinates within {output.shape} "
            f"(batch first), found {tuple(index)}"
        )
    sources = [_tensor(model, values, inputs, ref) for ref in call.inputs]
    result = Explanation(call.name, engine_layer.class_name, tuple(index), float(output[index]))
    rule = next((r for cls, r in RULES if isinstance(engine_layer, cls)), None)
    if rule is None:
        raise KerascheckError(
            f"explain covers {COVERED}; '{call.name}' is a {engine_layer.class_name}"
        )
    rule(engine_layer, sources if call.as_list else sources[0], tuple(index), result)
    return result


def _tensor(model, values, inputs, ref) -> np.ndarray:
    """The value a call reads through `ref`: a model input or an earlier call's output."""
    x = values.get(ref.layer if ref.call == 0 else f"{ref.layer}#{ref.call}")
    if x is None:  # a model input
        position = [i.name for i in model.spec.inputs].index(ref.layer)
        return np.asarray(inputs[position])
    return np.asarray(x[ref.tensor] if isinstance(x, list) else x)


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
    row = lambda: layer.convolve_vjp(x.astype(np.float64))[0][(n, *position)]  # noqa: E731
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


def _split_index(index, data_format):
    """(batch, spatial position, channel) of a user index in the layer's data format."""
    if data_format == "channels_first":
        return index[0], list(index[2:]), index[1]
    return index[0], list(index[1:-1]), index[-1]


def _at(position, channel, n, data_format) -> tuple:
    if data_format == "channels_first":
        return (n, channel, *position)
    return (n, *position, channel)


def _explain_pooling(layer, x, index, result: Explanation) -> None:
    n, position, channel = _split_index(index, layer.data_format)
    spatial = x.shape[2:] if layer.data_format == "channels_first" else x.shape[1:-1]
    pads = layer.pads(spatial)
    ranges = []
    for p, k, s, (before, _), size in zip(position, layer.pool_size, layer.strides, pads, spatial):
        start = p * s - before
        ranges.append((start, start + k, range(max(start, 0), min(start + k, size))))
    cells = list(np.ndindex(*[len(r) for *_, r in ranges]))
    coords = [tuple(r[i] for (*_, r), i in zip(ranges, c)) for c in cells]
    numbers = np.array([x[_at(c, channel, n, layer.data_format)] for c in coords], np.float64)
    window = ", ".join(f"{a}..{b - 1}" for a, b, _ in ranges)
    padded = int(np.prod(layer.pool_size)) - len(coords)
    lines = [
        f"{layer.class_name} '{layer.name}': pool {layer.pool_size}, strides {layer.strides}, "
        f"padding '{layer.padding}' -> (before, after) {pads}; output {tuple(position)} reads "
        f"input positions {window} of channel {channel}"
        + (f"; {padded} of its cells fall on padding" if padded else ""),
        "  cells: " + ", ".join(f"{c}: {v:+.6g}" for c, v in zip(coords, numbers)),
    ]
    if isinstance(layer, pooling._MaxPooling):
        best = int(np.argmax(numbers))
        lines.append(
            f"  max = {numbers[best]:+.6g} at input position {coords[best]}"
            + (" (padding counts as -inf, so it never wins)" if padded else "")
        )
        result.recomputed = float(numbers[best])
    else:
        total = float(numbers.sum())
        lines.append(
            f"  average = {total:+.6g} / {len(coords)} = {total / len(coords):+.6g}"
            + (f" (the {padded} padded cells are not counted)" if padded else "")
        )
        result.recomputed = total / len(coords)
    result.lines = lines


def _explain_global_pooling(layer, x, index, result: Explanation) -> None:
    n, channel = index[0], index[-1] if layer.data_format != "channels_first" else index[1]
    moved = np.moveaxis(x, 1, -1) if layer.data_format == "channels_first" else x
    cells = moved[n, ..., channel].astype(np.float64)
    what = f"{layer.class_name} '{layer.name}': all {cells.size} positions of channel {channel}"
    if isinstance(layer, pooling._GlobalMaxPooling):
        where = np.unravel_index(int(np.argmax(cells)), cells.shape)
        result.lines = [f"{what}; max = {cells.max():+.6g} at position {tuple(map(int, where))}"]
        result.recomputed = float(cells.max())
    else:
        total = float(cells.sum())
        result.lines = [f"{what}; mean = {total:+.6g} / {cells.size} = {total / cells.size:+.6g}"]
        result.recomputed = total / cells.size


def _explain_batch_norm(layer, x, index, result: Explanation) -> None:
    names = ("moving_mean", "moving_variance", "gamma", "beta")
    params = layer.params(x.shape, *names)  # broadcast shapes: 1 outside the feature axes
    at = tuple(0 if size == 1 else i for i, size in zip(index, params[0].shape))
    defaults = {"gamma": 1.0, "beta": 0.0}  # scale=False / center=False
    mean, var, gamma, beta = (
        defaults[name] if p is None else float(p[at]) for name, p in zip(names, params)
    )
    value = float(x[index])
    normalized = (value - mean) / np.sqrt(var + layer.epsilon)
    result.recomputed = normalized * gamma + beta
    result.lines = [
        f"BatchNormalization '{layer.name}' (inference, moving statistics of feature "
        f"{tuple(i for i, s in zip(at, params[0].shape) if s > 1)}):",
        "  (x - moving_mean) / sqrt(moving_var + epsilon) * gamma + beta",
        f"  = ({value:+.6g} - {mean:+.6g}) / sqrt({var:.6g} + {layer.epsilon:g}) * {gamma:+.6g}"
        f" + {beta:+.6g}",
        f"  = {normalized:+.6g} * {gamma:+.6g} + {beta:+.6g} = {result.recomputed:+.6g}",
    ]


def _formula(name: str, v: float, **options):
    """(formula with the number in it, its value) for the element-wise activations."""
    if name in ("relu", "relu6") and not options:
        top = 6.0 if name == "relu6" else None
        y = max(v, 0.0) if top is None else min(max(v, 0.0), top)
        return (f"max({v:+.6g}, 0) = {y:+.6g}" if top is None else
                f"min(max({v:+.6g}, 0), 6) = {y:+.6g}"), y  # fmt: skip
    if name == "sigmoid":
        y = 1.0 / (1.0 + np.exp(-v))
        return f"1 / (1 + exp({-v:+.6g})) = 1 / (1 + {np.exp(-v):.6g}) = {y:.6g}", y
    if name == "tanh":
        return f"tanh({v:+.6g}) = {np.tanh(v):+.6g}", float(np.tanh(v))
    if name == "elu":
        alpha = options.get("alpha", 1.0)
        if v > 0:
            return f"x > 0: x = {v:+.6g}", v
        y = alpha * (np.exp(v) - 1.0)
        return f"x <= 0: alpha * (exp(x) - 1) = {alpha:g} * (exp({v:+.6g}) - 1) = {y:+.6g}", y
    if name == "leaky_relu":
        slope = options["slope"]
        if v >= 0:
            return f"x >= 0: x = {v:+.6g}", v
        return f"x < 0: slope * x = {slope:g} * {v:+.6g} = {slope * v:+.6g}", slope * v
    if name == "linear":
        return f"linear: {v:+.6g}", v
    return None


def _relu_layer(layer, v: float):
    """Keras' general relu: threshold, slope below it, clip at max_value."""
    slope, top, threshold = layer.negative_slope, layer.max_value, layer.threshold
    if not slope and top is None and not threshold:
        return _formula("relu", v)
    y = v if v >= threshold else (slope * (v - threshold) if slope else 0.0)
    text = (
        f"x >= threshold {threshold:g}: x = {v:+.6g}" if v >= threshold
        else f"x < threshold {threshold:g}: negative_slope * (x - threshold) = "
        f"{slope:g} * ({v:+.6g} - {threshold:g}) = {y:+.6g}"
    )  # fmt: skip
    if top is not None and y > float(top):
        y = float(top)
        text += f", clipped at max_value {float(top):g}"
    return text, y


def _explain_activation(layer, x, index, result: Explanation) -> None:
    v = float(x[index])
    if isinstance(layer, activations.Softmax) or (
        isinstance(layer, core.Activation) and layer.fn.__name__ in ROW_ACTIVATIONS
    ):
        axis = layer.axis if isinstance(layer, activations.Softmax) else -1
        if not isinstance(axis, int):
            raise KerascheckError(
                f"explain covers softmax over one axis; '{layer.name}' has {axis}"
            )
        _explain_softmax(layer, x, index, axis % x.ndim, result)
        return
    if isinstance(layer, activations.ReLU):
        found = _relu_layer(layer, v)
    elif isinstance(layer, activations.LeakyReLU):
        found = _formula("leaky_relu", v, slope=layer.slope)
    elif isinstance(layer, activations.ELU):
        found = _formula("elu", v, alpha=layer.alpha)
    else:
        found = _formula(layer.fn.__name__, v)
    if found is None:  # an activation without a spelled-out formula: the engine's own function
        y = float(layer.fn(np.asarray([v], np.float64))[0])
        found = f"{layer.fn.__name__}({v:+.6g}) = {y:+.6g}", y
    text, result.recomputed = found
    result.lines = [f"{layer.class_name} '{layer.name}': input {v:+.6g}", f"  {text}"]


def _explain_softmax(layer, x, index, axis: int, result: Explanation) -> None:
    along = list(index)
    along[axis] = slice(None)
    row = x[tuple(along)].astype(np.float64)
    top = row.max()
    exps = np.exp(row - top)
    total = exps.sum()
    i = index[axis]
    result.recomputed = float(exps[i] / total)
    result.lines = [
        f"{layer.class_name} '{layer.name}': softmax over axis {axis} ({row.size} values), "
        f"max {top:+.6g} subtracted first",
        "  exp(x_j - max): "
        + ", ".join(f"{e:.4g}" for e in exps[:12])
        + (" ..." if row.size > 12 else ""),
        f"  sum = {total:.6g}; exp({row[i]:+.6g} - {top:+.6g}) / sum = {exps[i]:.6g} / "
        f"{total:.6g} = {result.recomputed:.6g}",
    ]


MERGE_SYMBOLS = {"Add": "+", "Subtract": "-", "Multiply": "*"}


def _explain_merge(layer, xs, index, result: Explanation) -> None:
    aligned = merging.align_ranks(list(xs))
    picks = []
    for k, a in enumerate(aligned):
        at = tuple(0 if size == 1 else i for i, size in zip(index, a.shape))
        picks.append((k, at[:1] + at[1 + a.ndim - xs[k].ndim :], float(a[at])))
    numbers = np.array([p[2] for p in picks], np.float64)
    terms = ", ".join(f"input {k}{list(at)} = {v:+.6g}" for k, at, v in picks)
    symbol = MERGE_SYMBOLS.get(layer.class_name)
    if symbol:
        y = numbers[0]
        for v in numbers[1:]:
            y = {"+": y + v, "-": y - v, "*": y * v}[symbol]
        how = f" {symbol} ".join(f"{v:+.6g}" for v in numbers) + f" = {y:+.6g}"
    elif layer.class_name == "Average":
        y = numbers.sum() / len(numbers)
        how = f"({' + '.join(f'{v:+.6g}' for v in numbers)}) / {len(numbers)} = {y:+.6g}"
    else:
        y = numbers.max() if layer.class_name == "Maximum" else numbers.min()
        how = f"{layer.class_name.lower()}({', '.join(f'{v:+.6g}' for v in numbers)}) = {y:+.6g}"
    result.recomputed = float(y)
    result.lines = [f"{layer.class_name} '{layer.name}': {terms}", f"  {how}"]


def _explain_concatenate(layer, xs, index, result: Explanation) -> None:
    axis = layer.axis % xs[0].ndim
    offset, k = index[axis], 0
    while offset >= xs[k].shape[axis]:
        offset -= xs[k].shape[axis]
        k += 1
    source = list(index)
    source[axis] = offset
    sizes = " + ".join(str(x.shape[axis]) for x in xs)
    result.recomputed = float(xs[k][tuple(source)])
    result.lines = [
        f"Concatenate '{layer.name}' along axis {layer.axis} (sizes {sizes}): output position "
        f"{index[axis]} on that axis is position {offset} of input {k}",
        f"  output{list(index)} = input {k}{source} = {result.recomputed:+.6g}",
    ]


ELEMENTWISE_ACTIVATIONS = (
    activations.ReLU,
    activations.LeakyReLU,
    activations.ELU,
    activations.Softmax,
    core.Activation,
)
RULES = (
    (conv._Conv, _explain_conv),
    (core.Dense, _explain_dense),
    (core.Flatten, _explain_flatten),
    (pooling._Pooling, _explain_pooling),
    (pooling._GlobalPooling, _explain_global_pooling),
    (normalization.BatchNormalization, _explain_batch_norm),
    (ELEMENTWISE_ACTIVATIONS, _explain_activation),
    (merging.ElementwiseMerge, _explain_merge),
    (merging.Concatenate, _explain_concatenate),
)
COVERED = (
    "Conv1D/2D/3D, Dense, Flatten, Max/AveragePooling (global too), BatchNormalization, "
    "ReLU/LeakyReLU/ELU/Softmax/Activation and the merge layers"
)
