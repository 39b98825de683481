"""pyte rows -> Rich segments: runs of equal attributes become one segment, styles interned."""

from __future__ import annotations

from itertools import groupby, repeat
from operator import itemgetter
from typing import Any

from rich.color import Color
from rich.segment import Segment
from rich.style import Style

# pyte's colour names (it says "brown" for yellow) -> ANSI indexes 0..7.
ANSI_NAMES = {
    "black": 0,
    "red": 1,
    "green": 2,
    "brown": 3,
    "yellow": 3,
    "blue": 4,
    "magenta": 5,
    "cyan": 6,
    "white": 7,
}
HEX = set("0123456789abcdefABCDEF")

StyleKey = tuple[str, str, bool, bool, bool, bool, bool, bool]
# pyte Char fields: data, fg, bg, bold, italics, underscore, strikethrough, reverse, blink.
DATA = itemgetter(0)
ATTRS = itemgetter(1, 2, 3, 4, 5, 6, 7)


def map_color(value: str) -> Color | None:
    """pyte colour -> Rich colour. The 16 base colours stay ANSI (`color(n)`) so the app's
    theme re-tints them; 'default' is None so the widget's own colours show through."""
    if not value or value == "default":
        return None
    if value in ANSI_NAMES:
        return Color.from_ansi(ANSI_NAMES[value])
    if value.startswith("bright") and value[6:] in ANSI_NAMES:
        return Color.from_ansi(ANSI_NAMES[value[6:]] + 8)
    if len(value) == 6 and set(value) <= HEX:
        return Color.parse("#" + value)
    return None


class Renderer:
    """Builds the segments of one screen row. Styles are cached by attribute tuple."""

    def __init__(self) -> None:
        self._styles: dict[StyleKey, Style] = {}

    def clear_cache(self) -> None:
        self._styles.clear()

    def style_for(self, char: Any, cursor: bool = False) -> Style:
        key: StyleKey = (
            char.fg,
            char.bg,
            char.bold,
            char.italics,
            char.underscore,
            char.strikethrough,
            char.reverse != cursor,  # the cursor is drawn as reverse video
            cursor,
        )
        style = self._styles.get(key)
        if style is None:
            style = Style(
                color=map_color(char.fg),
                bgcolor=map_color(char.bg),
                bold=char.bold or None,
                italic=char.italics or None,
                underline=char.underscore or None,
                strike=char.strikethrough or None,
                reverse=key[6] or None,
            )
            self._styles[key] = style
        return style

    def render_row(self, screen: Any, y: int, width: int, cursor_x: int | None) -> list[Segment]:
        """Segments for row y, `width` cells wide; the cursor at cursor_x (None: not drawn)."""
        line = screen.buffer[y]
        columns = min(width, screen.columns)
        # One C-level pass per row: the cells, then runs of equal attributes (groupby), each
        # run's text joined from the cells' characters. Wide-character placeholders are ""
        # and vanish in the join.
        cells = list(map(line.get, range(columns), repeat(screen.default_char, columns)))
        if cursor_x is None or not 0 <= cursor_x < columns:
            return self._runs(cells, False)
        return [
            *self._runs(cells[:cursor_x], False),
            *self._runs(cells[cursor_x : cursor_x + 1], True),
            *self._runs(cells[cursor_x + 1 :], False),
        ]

    def _runs(self, cells: list[Any], cursor: bool) -> list[Segment]:
        segments: list[Segment] = []
        for _, run in groupby(cells, ATTRS):
            group = list(run)
            text = "".join(map(DATA, group))
            if text:
                segments.append(Segment(text, self.style_for(group[0], cursor)))
        return segments
