"""A pyte screen that answers the child's queries and tracks which rows changed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyte
from pyte import modes as pyte_modes
from pyte.screens import Char

from coi_tui.terminal.keys import APP_CURSOR_MODE, BRACKETED_PASTE_MODE

Reply = Callable[[bytes], None]


class _CharsFor(dict[str, Char]):
    """Interned cells of one attribute set: a character -> its (immutable) pyte Char."""

    def __init__(self, attrs: Char) -> None:
        super().__init__()
        self.attrs = attrs

    def __missing__(self, char: str) -> Char:
        cell = self.attrs._replace(data=char)
        self[char] = cell
        return cell


class ReplyingScreen(pyte.Screen):
    """pyte.Screen that sends DSR/DA replies back to the child and counts what it ignores."""

    def __init__(self, columns: int, lines: int, reply: Reply | None = None) -> None:
        super().__init__(columns, lines)
        self.reply = reply
        self.unhandled = 0
        self._cells: dict[Char, _CharsFor] = {}

    def write_process_input(self, data: str) -> None:
        # pyte's default drops these; programs that query the cursor would hang.
        if self.reply is not None:
            self.reply(data.encode())

    def set_margins(self, *args: Any, **kwargs: Any) -> None:
        # tmux sends DECSTBM with a private flag pyte's signature does not take.
        kwargs.pop("private", None)
        super().set_margins(*args, **kwargs)

    def debug(self, *args: Any, **kwargs: Any) -> None:
        self.unhandled += 1

    def draw(self, data: str) -> None:
        """pyte's draw, with a fast path for plain ASCII in replace mode (most of what a flood
        is): whole runs go into the row with C-level loops over interned cells, instead of a
        namedtuple copy and a wcwidth call per character. Same result as pyte's loop."""
        text = data.translate(self.g1_charset if self.charset else self.g0_charset)
        if not (text.isascii() and text.isprintable()) or pyte_modes.IRM in self.mode:
            super().draw(data)
            return
        cursor = self.cursor
        columns = self.columns
        attrs = cursor.attrs
        cells = self._cells.get(attrs)
        if cells is None:
            if len(self._cells) > 256:
                self._cells.clear()
            cells = self._cells[attrs] = _CharsFor(attrs)
        wrap = pyte_modes.DECAWM in self.mode
        start, end = 0, len(text)
        while start < end:
            if cursor.x >= columns:
                if wrap:
                    self.dirty.add(cursor.y)
                    self.carriage_return()
                    self.linefeed()
                else:
                    # No autowrap: everything left overwrites the last column.
                    self.buffer[cursor.y][columns - 1] = cells[text[end - 1]]
                    break
            x = cursor.x
            run = text[start : start + columns - x]
            row = self.buffer[cursor.y]
            row.update(zip(range(x, x + len(run)), map(cells.__getitem__, run), strict=True))
            cursor.x = x + len(run)
            start += len(run)
        self.dirty.add(cursor.y)


class Emulator:
    """Bytes in, screen state out. Each row has a version that changes whenever it is redrawn,
    so a renderer can cache one strip per (row, version)."""

    def __init__(self, columns: int = 80, lines: int = 24, reply: Reply | None = None) -> None:
        self.screen = ReplyingScreen(columns, lines, reply)
        self.stream = pyte.ByteStream(self.screen)  # keeps split UTF-8 sequences intact
        self.versions: list[int] = [0] * lines
        self._generation = 0
        self._last_cursor = (0, 0)
        self.bytes_fed = 0

    @property
    def columns(self) -> int:
        return int(self.screen.columns)

    @property
    def lines(self) -> int:
        return int(self.screen.lines)

    @property
    def app_cursor(self) -> bool:
        return APP_CURSOR_MODE in self.screen.mode

    @property
    def bracketed_paste(self) -> bool:
        return BRACKETED_PASTE_MODE in self.screen.mode

    @property
    def cursor(self) -> tuple[int, int]:
        return int(self.screen.cursor.x), int(self.screen.cursor.y)

    @property
    def cursor_visible(self) -> bool:
        return not self.screen.cursor.hidden

    def feed(self, data: bytes) -> None:
        self.bytes_fed += len(data)
        self.stream.feed(data)

    def reset_parser(self) -> None:
        """Forget a half-parsed escape or UTF-8 sequence (its rest was dropped)."""
        self.stream.utf8_decoder.reset()
        self.stream._initialize_parser()

    def take_dirty(self) -> set[int]:
        """Rows changed since the last call (cursor moves included), with versions bumped."""
        dirty = {y for y in self.screen.dirty if 0 <= y < self.lines}
        self.screen.dirty.clear()
        cursor = (self.screen.cursor.x, self.screen.cursor.y)
        if cursor != self._last_cursor:
            # Moving the cursor does not dirty a row in pyte, but it is drawn on both rows.
            dirty.update(y for y in (self._last_cursor[1], cursor[1]) if 0 <= y < self.lines)
            self._last_cursor = cursor
        if dirty:
            self._generation += 1
            for y in dirty:
                self.versions[y] = self._generation
        return dirty

    def resize(self, columns: int, lines: int) -> None:
        columns, lines = max(1, columns), max(1, lines)
        if (columns, lines) == (self.columns, self.lines):
            return
        self.screen.resize(lines, columns)  # pyte takes lines first
        self.versions = [0] * lines
        self._generation += 1
        self.versions = [self._generation] * lines
        self.screen.dirty.update(range(lines))

    def row_text(self, y: int) -> str:
        return str(self.screen.display[y])

    def text(self) -> str:
        return "\n".join(line.rstrip() for line in self.screen.display)
