"""`kerascheck summary --explain`: the shape arithmetic of every layer, in sentences.

For the learner who asks why a 28x28 image becomes 26x26x10, why a filter is
3-D, or why 7·7·4 = 196 values reach the Dense layer. Every number comes from
the engine's own layers (their normalized configs) and the shapes of the
tensors they read; each step also gives the output shape its arithmetic
implies, which tests hold against the engine's probed `output_shapes`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .engine.layers import (
    activations,
    conv,
    core,
    merging,
    normalization,
    pooling,
    recurrent,
    reshaping,
)
from .engine.model import EngineModel

AXES = {1: ("steps",), 2: ("rows", "columns"), 3: ("depth", "rows", "columns")}
SINGULAR = {"steps": "step", "rows": "row", "columns": "column", "depth": "depth"}
# Layers whose output has their input's shape (each value from the value at its place).
SAME_SHAPE = (
    activations.ReLU,
    activations.LeakyReLU,
    activations.PReLU,
    activations.ELU,
    activations.ThresholdedReLU,
    activations.Softmax,
    core.Activation,
    core.Identity,
    core.Rescaling,
    core.Masking,
    normalization.BatchNormalization,
    normalization.LayerNormalization,
    normalization.GroupNormalization,
    normalization.UnitNormalization,
)


@dataclass
class Step:
    name: str  # the call's name
    class_name: str
    sentences: list[str] = field(default_factory=list)
    shape: object = None  # the output shape the arithmetic gives (a list for several)
    derived: bool = True  # False: no rule for this class, the shape is the engine's


def walk(model: EngineModel) -> list[Step]:
    steps = [
        Step(
            i.name,
            "InputLayer",
            [
                f"input: {fmt((None, *i.shape))}, {values(i.shape)} per sample (shapes below "
                "are per sample: the batch axis is left out)"
            ],
            (None, *i.shape),
        )
        for i in model.spec.inputs
    ]
    for call in model.spec.calls:
        layer = model.graph.layers[call.layer]
        shapes = [input_shape(model, ref) for ref in call.inputs]
        step = Step(call.name, layer.class_name)
        rule = next((r for cls, r in RULES if isinstance(layer, cls)), None)
        if rule is None and isinstance(layer, SAME_SHAPE) and len(shapes) == 1:
            rule = _same_shape
        found = rule(layer, shapes if call.as_list else shapes[0]) if rule and shapes else None
        if found is None:
            shape = model.output_shapes[call.name]
            step.sentences = [
                f"{fmt_any(shapes)} → {fmt_any(shape)} (no shape rule for "
                f"{layer.class_name}; the shape is the engine's)"
            ]
            step.shape, step.derived = shape, False
        else:
            step.sentences, step.shape = found
        steps.append(step)
    return steps


def input_shape(model: EngineModel, ref):
    for i in model.spec.inputs:
        if i.name == ref.layer:
            return (None, *i.shape)
    shape = model.output_shapes[ref.layer if ref.call == 0 else f"{ref.layer}#{ref.call}"]
    return shape[ref.tensor] if isinstance(shape, list) else shape


# -- formatting ---------------------------------------------------------------


def fmt(shape) -> str:
    """A shape per sample: the batch axis is left out, as a learner writes it."""
    return "(" + ", ".join("None" if d is None else str(d) for d in shape[1:]) + ")"


def fmt_any(shape) -> str:
    if isinstance(shape, list):
        return ", ".join(fmt_any(s) for s in shape)
    return fmt(shape)


def product(dims) -> str:
    """`7·7·4 = 196`, or `variable` when a size is unknown."""
    dims = list(dims)
    if any(d is None for d in dims):
        return "a variable number of"
    return "·".join(map(str, dims)) + (f" = {math.prod(dims)}" if len(dims) > 1 else "")


def values(dims) -> str:
    return f"{product(dims)} values"


def xs(sizes) -> str:
    return "x".join(map(str, sizes))


def split(shape, data_format):
    """(spatial sizes, channels) of a (batch, ...) shape."""
    if data_format == "channels_first":
        return list(shape[2:]), shape[1]
    return list(shape[1:-1]), shape[-1]


def join(spatial, channels, data_format) -> tuple:
    if data_format == "channels_first":
        return (None, channels, *spatial)
    return (None, *spatial, channels)


def order(rank: int, data_format: str) -> str:
    names = (
        [SINGULAR[a] for a in AXES[rank]] if rank in AXES else [f"axis {i}" for i in range(rank)]
    )
    names = ["channel", *names] if data_format == "channels_first" else [*names, "channel"]
    return "(" + ", ".join(names) + ")"


def per_axis(rank: int, parts: list[str]) -> str:
    """One arithmetic for all axes when they agree, else one per axis."""
    names = AXES.get(rank, tuple(f"axis {i}" for i in range(rank)))
    if len(set(parts)) == 1:
        return parts[0] if rank == 1 else f"{' and '.join(names)} each: {parts[0]}"
    return "; ".join(f"{n}: {p}" for n, p in zip(names, parts))


# -- window arithmetic ----------------------------------------------------------


def window_length(n, k, s, d, padding, pool=False):
    """(output length, the arithmetic) of a convolution or pooling window along one axis."""
    if n is None:
        return None, "variable"
    span = d * (k - 1) + 1
    if padding in ("same", "causal"):
        out = -(-n // s)
        what = "causal pads the start" if padding == "causal" else "same pads"
        return out, f"{what}: ceil({n}/{s}) = {out}" if s > 1 else f"{what}, keeps {n}"
    out = (n - span) // s + 1
    if pool and k == s:
        return out, f"{n} // {k} = {out}"
    exact = (n - span) % s == 0
    arithmetic = f"({n} − {span})/{s} + 1" if exact else f"⌊({n} − {span})/{s}⌋ + 1"
    return out, f"{arithmetic} = {out}"


def transposed_length(n, k, s, d, padding, output_padding):
    """Keras' `deconv_output_length`."""
    if n is None:
        return None, "variable"
    span = d * (k - 1) + 1
    if output_padding is None:
        if padding == "valid":
            out = n * s + max(span - s, 0)
            return out, f"{n}·{s} + max({span} − {s}, 0) = {out}"
        return n * s, f"{n}·{s} = {n * s}"
    pad = {"same": span // 2, "valid": 0, "full": span - 1}[padding]
    out = (n - 1) * s + span - 2 * pad + output_padding
    return out, f"({n} − 1)·{s} + {span} − 2·{pad} + {output_padding} = {out}"


def _conv(layer, shape):
    fmt_ = layer.data_format
    spatial, channels = split(shape, fmt_)
    rank = len(spatial)
    transposed = isinstance(layer, conv._ConvTranspose)
    lengths = [
        transposed_length(n, k, s, d, layer.padding, p)
        if transposed
        else window_length(n, k, s, d, layer.padding)
        for n, k, s, d, p in zip(
            spatial,
            layer.kernel_size,
            layer.strides,
            layer.dilation,
            getattr(layer, "output_padding", (None,) * rank),
        )
    ]
    kernel = xs(layer.kernel_size)
    stride = xs(layer.strides) if len(set(layer.strides)) > 1 else str(layer.strides[0])
    dilated = (
        f", dilation {xs(layer.dilation)} (the kernel spans "
        f"{xs(d * (k - 1) + 1 for k, d in zip(layer.kernel_size, layer.dilation))})"
        if any(d > 1 for d in layer.dilation)
        else ""
    )
    if isinstance(layer, conv._SeparableConv):
        out_channels = layer.filters
        depth = channels * layer.multiplier
        how = (
            f"each of the {channels} input channels is convolved on its own with "
            f"{layer.multiplier} {kernel} filter(s) ({channels}·{layer.multiplier} = {depth} "
            f"channels), then a 1x1 pointwise kernel {xs((1,) * rank)}x{depth}x{layer.filters} "
            f"mixes those {depth} into {layer.filters}"
        )
    elif isinstance(layer, conv._DepthwiseConv):
        out_channels = channels * layer.multiplier
        how = (
            f"each of the {channels} input channels is convolved on its own with "
            f"{layer.multiplier} {kernel} filter(s): {channels}·{layer.multiplier} = "
            f"{out_channels} output channels (input channel c gives outputs "
            f"c·{layer.multiplier} + m)"
        )
    elif transposed:
        out_channels = layer.filters
        how = (
            f"each input position adds a {kernel}x{layer.filters} patch of the kernel "
            f"(kernel shape {kernel}x{layer.filters}x{channels}) into the output, "
            f"{stride} apart; each filter reads all {channels} input channels"
        )
    else:
        out_channels = layer.filters
        per = channels // layer.groups
        how = (
            f"each of the {layer.filters} filters is {kernel}x{per} — a filter spans all "
            f"{channels} input channel(s): the {channels} feature map(s) coming in are one "
            f"input of depth {channels}, and each filter gives one output channel"
            if layer.groups == 1
            else f"groups={layer.groups}: each of the {layer.filters} filters is {kernel}x{per}, "
            f"spanning only its group's {per} of the {channels} input channels"
        )
    out = join([n for n, _ in lengths], out_channels, fmt_)
    kind = "transposed " if transposed else ""
    sentence = (
        f"{fmt(shape)} → {kernel} {kind}kernel, stride {stride}, {layer.padding}{dilated}: "
        f"{per_axis(rank, [a for _, a in lengths])} → {fmt(out)}; {how}"
    )
    return [sentence + _layout_note(fmt_, rank)], out


def _layout_note(data_format, rank) -> str:
    return (
        f" (channels_first: axes are {order(rank, data_format)})"
        if data_format == "channels_first"
        else ""
    )


def _pool(layer, shape):
    spatial, channels = split(shape, layer.data_format)
    rank = len(spatial)
    lengths = [
        window_length(n, k, s, 1, layer.padding, pool=True)
        for n, k, s in zip(spatial, layer.pool_size, layer.strides)
    ]
    out = join([n for n, _ in lengths], channels, layer.data_format)
    kind = "max" if isinstance(layer, pooling._MaxPooling) else "average"
    stride = xs(layer.strides) if len(set(layer.strides)) > 1 else str(layer.strides[0])
    note = ""
    if kind == "average" and layer.padding == "same":
        note = "; border windows average only their real cells (padding is not counted)"
    elif kind == "max" and layer.padding == "same":
        note = "; padded cells never win (they count as −inf)"
    sentence = (
        f"{fmt(shape)} → {xs(layer.pool_size)} {kind} pool, stride {stride}, {layer.padding}: "
        f"{per_axis(rank, [a for _, a in lengths])} → {fmt(out)}; each of the {channels} "
        f"channels is pooled on its own, so channels stay {channels}{note}"
    )
    return [sentence + _layout_note(layer.data_format, rank)], out


def _global_pool(layer, shape):
    spatial, channels = split(shape, layer.data_format)
    kind = "max" if isinstance(layer, pooling._GlobalMaxPooling) else "mean"
    kept = [1] * len(spatial)
    out = join(kept, channels, layer.data_format) if layer.keepdims else (None, channels)
    where = f"all {product(spatial)} positions" if spatial else "all positions"
    return [
        f"{fmt(shape)} → the {kind} over {where} of each of the {channels} channels → {fmt(out)}"
        + (" (keepdims keeps the pooled axes as 1)" if layer.keepdims else "")
    ], out


def _flatten(layer, shape):
    inner = shape[1:]
    total = None if any(d is None for d in inner) else math.prod(inner)
    out = (None, total)
    if len(inner) <= 1:
        return [f"{fmt(shape)} → {fmt(out)}: already flat"], out
    rank = len(inner) - 1
    if layer.data_format == "channels_first":
        spatial, channels = list(inner[1:]), inner[0]
        moved = (*spatial, channels)
        how = (
            f"the input is channels-first {order(rank, 'channels_first')}; Keras moves the "
            f"channels last first, so the {product(moved)} values are in "
            f"{order(rank, 'channels_last')} order, not the (channel, ...) order of a "
            "plain reshape"
        )
    else:
        how = (
            f"{product(inner)} values, in channels-last order {order(rank, 'channels_last')}: "
            "the channel changes fastest"
        )
    return [f"{fmt(shape)} → {fmt(out)}: {how}"], out


def _reshape(layer, shape):
    total = None if any(d is None for d in shape[1:]) else math.prod(shape[1:])
    target = list(layer.target_shape)
    if -1 in target and total is not None:
        known = math.prod(d for d in target if d != -1)
        target[target.index(-1)] = total // known
    out = (None, *target)
    return [
        f"{fmt(shape)} → {fmt(out)}: the {product(shape[1:])} values of a sample regrouped as "
        f"{fmt(out)} ({product(target)}), same values in the same (row-major) order"
    ], out


def _dense(layer, shape):
    inputs = shape[-1]
    out = (*shape[:-1], layer.units)
    bias = f" + bias {layer.units}" if layer.use_bias else ""
    formula = f"{inputs}·{layer.units}" + (f" + {layer.units}" if layer.use_bias else "")
    count = inputs * layer.units + (layer.units if layer.use_bias else 0)
    where = (
        "each sample"
        if len(shape) == 2
        else f"each of the {product(shape[1:-1])} positions (Dense contracts the last axis only)"
    )
    return [
        f"{fmt(shape)} → {fmt(out)}: {where} gives {inputs} inputs, so the kernel is "
        f"{inputs}x{layer.units}{bias} ({formula} = {count:,} parameters); each of the "
        f"{layer.units} units is one weighted sum of all {inputs} inputs"
    ], out


def _embedding(layer, shape):
    out = (*shape, layer.output_dim)
    return [
        f"{fmt(shape)} → {fmt(out)}: each integer index (0..{layer.input_dim - 1}) picks one row "
        f"of {layer.output_dim} values from the {layer.input_dim}x{layer.output_dim} table"
    ], out


def _rnn(layer, shape):
    steps, features = shape[1], shape[2]
    units = layer.cell.units
    if layer.return_sequences:
        out = (None, steps, units)
        what = f"return_sequences=True: one {units}-vector per step, for all {steps} steps"
    else:
        out = (None, units)
        what = f"return_sequences=False: only the last step's {units}-vector"
    sentence = (
        f"{fmt(shape)} → {fmt(out)}: {steps} steps of {features} features each; every step "
        f"updates a state of {units} units; {what}"
    )
    if layer.return_state:
        states = 2 if isinstance(layer, recurrent.LSTM) else 1
        sentence += f"; return_state adds {states} final state(s) of ({units},)"
        out = [out] + [(None, units)] * states
    return [sentence], out


def _bidirectional(layer, shape):
    if layer.return_state:
        return None
    sentences, one = _rnn(layer.forward_layer, shape)
    units = one[-1]
    if layer.merge_mode == "concat":
        out = (*one[:-1], 2 * units)
        merge = f"concatenated: {units} + {units} = {2 * units}"
    elif layer.merge_mode is None:
        return [f"{sentences[0]}; forward and backward returned as two outputs"], [one, one]
    else:
        out = one
        merge = f"merged by {layer.merge_mode}: stays {units}"
    return [f"a forward and a backward copy: {sentences[0]}; the two are {merge} → {fmt(out)}"], out


def _concatenate(layer, shapes):
    rank = len(shapes[0])
    axis = layer.axis % rank
    sizes = [s[axis] for s in shapes]
    total = None if None in sizes else sum(sizes)
    out = tuple(total if i == axis else shapes[0][i] for i in range(rank))
    joined = " + ".join("None" if s is None else str(s) for s in sizes)
    return [
        f"{', '.join(fmt(s) for s in shapes)} → {fmt(out)}: stacked along axis {layer.axis}: "
        f"{joined} = {total}; every other axis must match"
    ], out


def _elementwise(layer, shapes):
    rank = max(len(s) for s in shapes)
    aligned = [(s[0], *(1,) * (rank - len(s)), *s[1:]) for s in shapes]
    out = [None]
    for axis in range(1, rank):
        sizes = {s[axis] for s in aligned} - {1}
        out.append(sizes.pop() if len(sizes) == 1 else 1 if not sizes else None)
    out = tuple(out)
    what = layer.class_name.lower()
    broadcast = (
        ""
        if len(set(shapes)) == 1
        else " (size-1 axes broadcast, Keras aligns ranks after the batch axis)"
    )
    return [
        f"{', '.join(fmt(s) for s in shapes)} → {fmt(out)}: {what} of the {len(shapes)} inputs "
        f"element by element{broadcast}"
    ], out


def _padding(layer, shape):
    spatial, channels = split(shape, layer.data_format)
    grow = isinstance(layer, reshaping.ZeroPadding)
    pairs = layer.pads if grow else layer.crops
    sign = "+" if grow else "−"
    sizes, parts = [], []
    for n, (b, a) in zip(spatial, pairs):
        size = None if n is None else (n + b + a if grow else n - b - a)
        sizes.append(size)
        parts.append(f"{n} {sign} {b} {sign} {a} = {size}")
    out = join(sizes, channels, layer.data_format)
    return [f"{fmt(shape)} → {fmt(out)}: {per_axis(len(spatial), parts)}"], out


def _upsampling(layer, shape):
    spatial, channels = split(shape, layer.data_format)
    sizes = [None if n is None else n * f for n, f in zip(spatial, layer.size)]
    parts = [f"{n}·{f} = {m}" for n, f, m in zip(spatial, layer.size, sizes)]
    out = join(sizes, channels, layer.data_format)
    return [f"{fmt(shape)} → {fmt(out)}: each value repeated: {per_axis(len(spatial), parts)}"], out


def _repeat(layer, shape):
    out = (None, layer.n, *shape[1:])
    return [f"{fmt(shape)} → {fmt(out)}: the vector repeated {layer.n} times"], out


def _permute(layer, shape):
    out = tuple(shape[a] for a in layer.axes)
    dims = ", ".join(map(str, layer.axes[1:]))
    return [f"{fmt(shape)} → {fmt(out)}: axes reordered as ({dims}) (1-based, batch kept)"], out


def _same_shape(layer, shape):
    if isinstance(layer, normalization.BatchNormalization):
        what = "normalizes each feature with its own statistics"
    else:
        what = "element-wise: each output value comes from the input value at its place"
    return [f"{fmt(shape)} → shape unchanged; {what}"], tuple(shape)


RULES = (
    (conv._Convolution, _conv),
    (pooling._Pooling, _pool),
    (pooling._GlobalPooling, _global_pool),
    (core.Flatten, _flatten),
    (core.Reshape, _reshape),
    (core.Dense, _dense),
    (core.Embedding, _embedding),
    (core.RepeatVector, _repeat),
    (core.Permute, _permute),
    (recurrent.Bidirectional, _bidirectional),
    (recurrent.ConvLSTM2D, None),
    (recurrent.RNN, _rnn),
    (merging.Concatenate, _concatenate),
    (merging.ElementwiseMerge, _elementwise),
    (reshaping.ZeroPadding, _padding),
    (reshaping.Cropping, _padding),
    (reshaping.UpSampling, _upsampling),
)
