"""`kerascheck summary`: the architecture as the engine sees it, and why each shape is.

Each row shows the layer's window (kernel or pool size, strides, padding,
dilation, compact as `3x3 s2 same d1`), its weight shapes and the arithmetic of
its parameter count (`4·4·10·20 + 20 = 3,220`). Wide terminals and files get
one column each; narrower ones get the three stacked in one folding column, so
the table fits 80 columns. `--explain` adds the shape arithmetic of every layer
in sentences (`kerascheck.shape_walk`).
"""

from __future__ import annotations

from itertools import groupby

from rich.console import Group
from rich.table import Table
from rich.text import Text

from ..engine.layers import conv, pooling
from ..engine.layers.recurrent import stateful_layers
from ..shape_walk import walk
from .names import cell, display
from .tables import _names, _shape

# At this width and above every detail has its own column.
WIDE = 120


def summary_table(model, width: int | None = None) -> Group:
    """The table; `width` is the terminal's (None: a file or a wide terminal)."""
    spec = model.spec
    wide = width is None or width >= WIDE
    table = Table(
        title=cell(
            f"{display(spec.name)} ({display(spec.class_name)}, "
            f"saved by Keras {display(spec.keras_version)})",
            None,
        ),
        title_justify="left",
        show_lines=not wide,  # stacked cells: a rule between layers
    )
    functional = spec.class_name != "Sequential"
    if wide:
        table.add_column("layer")
        table.add_column("class")
        for name in ("output shape", "window", "weights"):
            table.add_column(name, no_wrap=True)
        table.add_column("params", justify="right", no_wrap=True)
        table.add_column("data format")
        if functional:
            table.add_column("inputs from")
    else:
        table.add_column("layer (class)", overflow="fold")
        table.add_column("output shape", overflow="fold")
        table.add_column("window, weights, params", overflow="fold")
    for inp in spec.inputs:
        shape = _shape((None, *inp.shape))
        if wide:
            row = [cell(inp.name), "InputLayer", shape, "-", "-", "0", "-"]
            table.add_row(*(row + ["-"] if functional else row))
        else:
            table.add_row(Text.assemble(cell(inp.name), "\n", ("InputLayer", "dim")), shape, "0")
    owner: dict[str, str] = {}
    for call in spec.calls:
        layer = model.graph.layers[call.layer]
        shared = owner.setdefault(call.layer, call.name)
        shared = shared if shared != call.name else None
        details = [
            window(layer),
            weight_shapes(layer) if shared is None else "",
            param_formula(layer, shared),
        ]
        shape = _shape(model.output_shapes[call.name])
        data_format = layer.config.get("data_format") or "-"
        sources = _names(_ref_name(r) for r in call.inputs)
        if wide:
            row = [cell(call.name), cell(layer.class_name), shape]
            row += [d or "-" for d in details] + [cell(data_format)]
            table.add_row(*(row + [sources] if functional else row))
            continue
        name = Text.assemble(cell(call.name), "\n", _dim(cell(layer.class_name)))
        if functional:
            name.append(f"\n← {sources}", style="dim")
        if data_format == "channels_first":
            details[0] = f"{details[0]} channels_first".strip()
        table.add_row(name, shape, "\n".join(d for d in details if d))
    footer = Text(
        f"Total params: {model.param_count():,}    "
        f"Outputs: {_names(_ref_name(r) for r in spec.outputs)}"
    )
    stateful = stateful_layers(spec)
    if stateful:
        footer.append(f"\nstateful: states reset before the run ({_names(stateful)})")
    return Group(table, footer)


def _dim(text: Text) -> Text:
    text.stylize("dim")
    return text


def _ref_name(ref) -> str:
    name = ref.layer if ref.call == 0 else f"{ref.layer}#{ref.call}"
    return name if ref.tensor == 0 else f"{name}[{ref.tensor}]"


def shape_walk_view(model) -> Group:
    """`summary --explain`: each layer's shape arithmetic, one paragraph per call."""
    parts = [Text("How each shape comes about", style="bold")]
    for step in walk(model):
        parts.append(Text.assemble((f"{display(step.name)} ({step.class_name})", "bold"), ": "))
        for sentence in step.sentences:
            parts.append(Text(f"  {display(sentence, None)}"))
    return Group(*parts)


def _sizes(values) -> str:
    """`3x3`, or `2` when every axis agrees (for strides and dilation)."""
    values = tuple(values)
    return str(values[0]) if len(set(values)) == 1 else "x".join(map(str, values))


def window(layer) -> str:
    """`3x3 s2 same d1` for convolutions, `2x2 s2 valid` for pooling, `global` for global
    pooling; empty for layers without a window."""
    if isinstance(layer, conv._Convolution):
        text = (
            f"{'x'.join(map(str, layer.kernel_size))} s{_sizes(layer.strides)} "
            f"{layer.padding} d{_sizes(layer.dilation)}"
        )
        if getattr(layer, "groups", 1) > 1:
            text += f" g{layer.groups}"
        if isinstance(layer, conv._DepthwiseConv) and layer.multiplier > 1:
            text += f" x{layer.multiplier}"
        padding = getattr(layer, "output_padding", (None,))
        if any(p is not None for p in padding):
            text += f" op{_sizes(padding)}"
        return text
    if isinstance(layer, pooling._Pooling):
        return f"{'x'.join(map(str, layer.pool_size))} s{_sizes(layer.strides)} {layer.padding}"
    if isinstance(layer, pooling._GlobalPooling):
        return "global"
    return ""


def _named_weights(layer) -> list[tuple[str, tuple]]:
    shapes = [tuple(w.shape) for w in layer.raw_weights]
    names = list(layer.w) if len(layer.w) == len(shapes) else [f"w{i}" for i in range(len(shapes))]
    return list(zip(names, shapes))


def weight_shapes(layer) -> str:
    """`kernel 4x4x10x20, bias 20`."""
    return ", ".join(
        f"{name} {'x'.join(map(str, shape)) or 'scalar'}" for name, shape in _named_weights(layer)
    )


def param_formula(layer, shared_with: str | None = None) -> str:
    """`4·4·10·20 + 20 = 3,220`; `4·64 = 256 (128 trainable)` for four equal shapes."""
    if shared_with is not None:
        return f"0 (shared with {display(shared_with)}, counted once)"
    total = layer.param_count()
    weights = _named_weights(layer)
    if not weights:
        return f"{total:,}"
    terms = []
    for shape, same in groupby(shape for _, shape in weights):
        count, factor = len(list(same)), "·".join(map(str, shape)) or "1"
        terms.append(f"{count}·{factor}" if count > 1 else factor)
    text = " + ".join(terms)
    text = f"{total:,}" if text == str(total) else f"{text} = {total:,}"
    if len(layer.w) == len(weights):
        trainable = sum(layer.w[name].size for name in layer.trainable_names())
        if trainable != total:
            text += f" ({trainable:,} trainable)"
    return text
