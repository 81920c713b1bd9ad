"""A one-line-per-row table drawn directly, in rich's default box style.

rich lays out a table by measuring and rendering every cell through several
layers of renderables, about 1.5 ms a row; `summary` of ResNet50 (178 rows)
spent more time there than reading the file. When every cell is a single line
and the table fits, the layout is just column widths, so `grid` draws it as
one styled `Text`. It returns None otherwise, and the caller uses a rich
`Table`, which wraps and folds.
"""

from __future__ import annotations

from rich.cells import cell_len
from rich.text import Text

_TOP = ("┏", "━", "┳", "┓")
_RULE = ("┡", "━", "╇", "┩")
_BOTTOM = ("└", "─", "┴", "┘")


def grid(
    headers: list[str], rows: list[list[Text]], right: frozenset[int] = frozenset(), max_width=None
) -> Text | None:
    """The table as Text (bold headers), or None when a cell spans lines or the table is
    wider than `max_width`. Columns in `right` are right-justified, the rest left."""
    if any("\n" in c.plain for row in rows for c in row):
        return None
    widths = [cell_len(h) for h in headers]
    for row in rows:
        widths = [max(w, c.cell_len) for w, c in zip(widths, row)]
    total = sum(widths) + 3 * len(widths) + 1
    if max_width is not None and total > max_width:
        return None
    out = Text()
    out.append(_rule(_TOP, widths))
    out.append_text(_line("┃", [Text(h, style="bold") for h in headers], widths, right))
    out.append(_rule(_RULE, widths))
    for row in rows:
        out.append_text(_line("│", row, widths, right))
    out.append(_rule(_BOTTOM, widths).rstrip("\n"))
    return out


def width_of(text: Text) -> int:
    """The widest line of a drawn grid."""
    return max(cell_len(line) for line in text.plain.split("\n"))


def _rule(chars, widths) -> str:
    left, fill, joint, right = chars
    return left + joint.join(fill * (w + 2) for w in widths) + right + "\n"


def _line(bar: str, cells, widths, right) -> Text:
    line = Text(bar)
    for i, (c, w) in enumerate(zip(cells, widths)):
        pad = " " * (w - c.cell_len)
        line.append(" ")
        if i in right:
            line.append(pad)
        line.append_text(c)
        if i not in right:
            line.append(pad)
        line.append(" " + bar)
    line.append("\n")
    return line
