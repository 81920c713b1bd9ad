"""`report.grid`: one-line tables drawn without rich's layout engine look exactly like
rich's own, and anything that needs rich's wrapping is left to it."""

from __future__ import annotations

import io

from rich.cells import cell_len
from rich.console import Console
from rich.table import Table
from rich.text import Text

from kerascheck.report.grid import grid, width_of

HEADERS = ["layer", "class", "params"]
ROWS = [
    ["conv2d", "Conv2D", "4·4·1·10 + 10 = 170"],
    ["[bold]x[/bold]", "Dense 字", "0"],  # markup stays literal; wide characters count twice
    ["", "-", "12,345"],
]


def _plain(renderable, width: int = 200) -> str:
    console = Console(file=io.StringIO(), width=width)
    console.print(renderable)
    return console.file.getvalue()


def test_grid_draws_what_rich_draws():
    table = Table()
    for name in HEADERS:
        table.add_column(name, justify="right" if name == "params" else "left")
    for row in ROWS:
        table.add_row(*(Text(c) for c in row))
    drawn = grid(HEADERS, [[Text(c) for c in row] for row in ROWS], right=frozenset({2}))
    assert _plain(drawn) == _plain(table)
    assert "[bold]x[/bold]" in drawn.plain
    assert width_of(drawn) == max(cell_len(line) for line in _plain(table).splitlines())


def test_grid_keeps_cell_styles_and_bold_headers():
    drawn = grid(["a"], [[Text("red", style="red")]])
    styles = {str(span.style) for span in drawn.spans}
    assert {"red", "bold"} <= styles


def test_grid_leaves_multiline_and_too_wide_tables_to_rich():
    rows = [[Text(c) for c in row] for row in ROWS]
    assert grid(HEADERS, [[Text("two\nlines"), Text("b"), Text("c")]]) is None
    width = width_of(grid(HEADERS, rows))
    assert grid(HEADERS, rows, max_width=width) is not None
    assert grid(HEADERS, rows, max_width=width - 1) is None
