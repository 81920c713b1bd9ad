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
from .grid import grid, width_of
from .names import cell, display
from .tables import _names, _shape

# At this width and above every detail has its own column.
WIDE = 120


def summary_table(model, width: int | None = None):
    """The table and its footer; `width` is the terminal's (None: a file, any width).

    A table of one-line rows that fits is drawn directly (`grid`); one that does not
    fit a wide terminal, and the stacked layout of a narrow one, are rich Tables."""
    spec = model.spec
    title = cell(
        f"{display(spec.name)} ({display(spec.class_name)}, "
        f"saved by Keras {display(spec.keras_version)})",
        None,
    )
    functional = spec.class_name != "Sequential"
    rows = list(_rows(model, functional))
    footer = Text(
        f"Total params: {model.param_count():,}    Outputs: {_names(r.name for r in spec.outputs)}"
    )
    stateful = stateful_layers(spec)
    if stateful:
        footer.append(f"\nstateful: states reset before the run ({_names(stateful)})")
    if width is None or width >= WIDE:
        headers = [*WIDE_COLUMNS, *(["inputs from"] if functional else [])]
        cells = [[*row.cells, *([row.sources] if functional else [])] for row in rows]
        drawn = grid(
            headers, cells, right=frozenset({WIDE_COLUMNS.index("params")}), max_width=width
        )
        if drawn is not None:
            title.stylize("italic")
            return Group(title, drawn, footer)
        table = Table(title=title, title_justify="left")
        for name in headers:
            no_wrap = name in ("output shape", "window", "weights", "params")
            table.add_column(name, no_wrap=no_wrap, justify="right" if name == "params" else "left")
        for row in cells:
            table.add_row(*row)
        return Group(table, footer)
    table = Table(title=title, title_justify="left", show_lines=True)  # a rule between layers
    table.add_column("layer (class)", overflow="fold")
    table.add_column("output shape", overflow="fold")
    table.add_column("window, weights, params", overflow="fold")
    for row in rows:
        name, class_name, shape, *details, data_format = row.cells
        label = Text.assemble(name, "\n", _dim(class_name.copy()))
        if functional and row.sources.plain != "-":
            label.append(f"\n← {row.sources.plain}", style="dim")
        if data_format.plain == "channels_first":
            details[0] = Text(f"{details[0].plain} channels_first".strip(" -"))
        lines = [d.plain for d in details if d.plain != "-"]
        table.add_row(label, shape, "\n".join(lines))
    return Group(table, footer)


WIDE_COLUMNS = ["layer", "class", "output shape", "window", "weights", "params", "data format"]


class _Row:
    """One line of the summary: the wide columns as Text, and the call's sources."""

    def __init__(self, cells, sources):
        self.cells = [c if isinstance(c, Text) else Text(c) for c in cells]
        self.sources = Text(sources)


def _rows(model, functional):
    spec = model.spec
    for inp in spec.inputs:
        yield _Row(
            [cell(inp.name), "InputLayer", _shape((None, *inp.shape)), "-", "-", "0", "-"], "-"
        )
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
        data_format = layer.config.get("data_format") or "-"
        cells = [cell(call.name), cell(layer.class_name), _shape(model.output_shapes[call.name])]
        cells += [d or "-" for d in details] + [cell(data_format)]
        yield _Row(cells, _names(r.name for r in call.inputs) if functional else "-")


def view_width(view: Group) -> int:
    """The columns a summary view needs to print without wrapping."""
    return max(width_of(part) for part in view.renderables)


def _dim(text: Text) -> Text:
    text.stylize("dim")
    return text


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
