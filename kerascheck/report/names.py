"""Names from a model file are data: shown literally, never as markup or terminal control.

A layer may be named `[link=http://e]dense_2[/link]`, hold ANSI/OSC escapes, newlines,
bidi overrides, lone surrogates (which no encoder accepts) or 10,000 characters.
Every name (and class name, path or message echoing them) passes through here before
it reaches a terminal or a report file:

- `safe_text`: control, format and separator characters and lone surrogates as
  backslash escapes (`\\x1b`, `\\n`, `\\udcff`), so the text encodes as UTF-8, stays
  on one line and cannot drive the terminal;
- `display`: `safe_text` capped in length with an ellipsis, for terminal tables;
- `cell`: `display` as a rich `Text`, which rich never parses as markup or emoji;
- `markdown_cell`: `display` with Markdown's active characters backslash-escaped;
  `markdown_code`: `display` as a code span (its fence outruns any backticks
  inside; `|` escaped, which GFM tables honour inside code spans too).
"""

from __future__ import annotations

import re

from rich.text import Text

NAME_LIMIT = 40
PATH_LIMIT = 200
MESSAGE_LIMIT = 300  # an error line
ELLIPSIS = "…"

# C0/C1 controls, DEL, zero-width and bidi format characters, line/paragraph
# separators, the BOM and interlinear annotations, and every surrogate code point.
_UNSAFE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u00ad\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u206f"
    "\ufeff\ufff9-\ufffb\ud800-\udfff]"
)
_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_MARKDOWN = re.compile(r"([\\`*_{}\[\]<>|#!~])")


def _escape(match: re.Match) -> str:
    char = match.group()
    if char in _SHORT:
        return _SHORT[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def safe_text(value) -> str:
    """`value` as text that encodes as UTF-8 and has no control or invisible characters."""
    return _UNSAFE.sub(_escape, value if isinstance(value, str) else str(value))


def cap(text: str, limit: int | None = NAME_LIMIT) -> str:
    if limit is None or len(text) <= limit:
        return text
    return text[: limit - 1] + ELLIPSIS


def display(value, limit: int | None = NAME_LIMIT) -> str:
    """Plain text for a terminal: escaped and capped (never markup-parsed if put in a Text)."""
    return cap(safe_text(value), limit)


def cell(value, limit: int | None = NAME_LIMIT, style: str = "") -> Text:
    """A table cell or title that rich shows literally."""
    return Text(display(value, limit), style=style)


def path_cell(value, style: str = "") -> Text:
    return cell(value, PATH_LIMIT, style)


def message(value) -> str:
    """An error message echoing names, as one line of at most MESSAGE_LIMIT characters:
    whitespace runs collapsed, control characters escaped."""
    return display(" ".join(str(value).split()), MESSAGE_LIMIT)


def markdown_cell(value, limit: int | None = NAME_LIMIT) -> str:
    """Text for a Markdown table cell: `|`, backticks and other active characters escaped."""
    return _MARKDOWN.sub(r"\\\1", display(value, limit))


def markdown_code(value, limit: int | None = NAME_LIMIT) -> str:
    text = display(value, limit).replace("|", "\\|")
    fence = "`" * (1 + max((len(run) for run in re.findall("`+", text)), default=0))
    pad = " " if text[:1] in ("`", " ") or text[-1:] in ("`", " ") else ""
    return f"{fence}{pad}{text}{pad}{fence}"
