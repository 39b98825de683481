"""A live terminal pane: bytes from a Transport -> pyte -> cached strips (Line API).

The transport's reader thread fills a bounded queue; a UI tick feeds pyte for at most a few
milliseconds, collects the dirty rows and refreshes only those. Keys typed while the pane has
focus go to the child, bindings included, except ctrl+] which leaves the pane."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import ClassVar

from rich.segment import Segment
from textual import events
from textual.binding import Binding, BindingType
from textual.cache import LRUCache
from textual.geometry import Region, Size
from textual.message import Message
from textual.strip import Strip
from textual.timer import Timer
from textual.widget import Widget

from coi_tui.terminal.emulator import Emulator
from coi_tui.terminal.keys import encode_paste, translate_key
from coi_tui.terminal.render import Renderer
from coi_tui.terminal.transport import Transport

LEAVE_KEY = "ctrl+right_square_bracket"
FEED_BUDGET_S = 0.008  # pyte parses ~0.8 MB/s: ~6 KB per tick keeps frames short
FEED_CHUNK = 2048


@dataclass
class TerminalStats:
    bytes_fed: int = 0
    ticks: int = 0
    feed_s: float = 0.0
    worst_tick_s: float = 0.0
    rows_refreshed: int = 0
    full_refreshes: int = 0
    lines_rendered: int = 0
    cache_hits: int = 0


class TerminalView(Widget, can_focus=True):
    """Shows one child terminal. `connect()` a transport; `disconnect()` closes it."""

    DEFAULT_CSS = """
    TerminalView {
        width: 1fr;
        height: 1fr;
        background: $surface;
        color: $foreground;
        overflow: hidden;
    }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding(
            LEAVE_KEY,
            "leave",
            "Leave terminal",
            priority=True,
            id="terminal.leave",
            tooltip="Give the keys back to the dashboard",
            key_display="^]",
        ),
    ]

    class Left(Message):
        """ctrl+] was pressed: the app moves focus elsewhere."""

    class Ended(Message):
        """The child went away (tmux session ended, container stopped)."""

        def __init__(self, view: TerminalView, name: str) -> None:
            super().__init__()
            self.view = view
            self.name = name

    def __init__(self, *, fps: int = 30, name: str | None = None, id: str | None = None) -> None:
        super().__init__(name=name, id=id)
        self.emulator = Emulator(80, 24)
        self.renderer = Renderer()
        self.transport: Transport | None = None
        self.session_name = ""
        self.placeholder = "No session selected"
        self.fps = fps
        self.stats = TerminalStats()
        self._strip_cache: LRUCache[tuple[int, int, int, int | None, int], Strip] = LRUCache(1024)
        self._size_timer: Timer | None = None
        self._style_generation = 0
        # When each session's child last went away (set at once, before any message).
        self.ended_at: dict[str, float] = {}

    # ------------------------------------------------------------------ connection
    def connect(self, transport: Transport, session_name: str) -> None:
        self.disconnect()
        columns, lines = self.content_size.width or 80, self.content_size.height or 24
        self.emulator = Emulator(columns, lines, reply=transport.write)
        self.transport = transport
        self.session_name = session_name
        self._strip_cache.clear()
        self.refresh()

    def disconnect(self, placeholder: str | None = None) -> None:
        if self.transport is not None:
            self.transport.close()
        self.transport = None
        self.session_name = ""
        if placeholder is not None:
            self.placeholder = placeholder
        self._strip_cache.clear()
        self.refresh()

    @property
    def connected(self) -> bool:
        return self.transport is not None

    def text(self) -> str:
        """The visible screen as plain text (tests, debugging)."""
        return self.emulator.text() if self.transport is not None else self.placeholder

    # ------------------------------------------------------------------ feeding
    def on_mount(self) -> None:
        self.set_interval(1 / self.fps, self.tick)

    def tick(self) -> None:
        """Feed queued bytes to pyte within the time budget, then refresh dirty rows."""
        transport = self.transport
        if transport is None:
            return
        started = time.perf_counter()
        deadline = started + FEED_BUDGET_S
        fed = 0
        while time.perf_counter() < deadline:
            data = transport.queue.get(FEED_CHUNK)
            if not data:
                break
            self.emulator.feed(data)
            fed += len(data)
        dirty = self.emulator.take_dirty()
        elapsed = time.perf_counter() - started
        stats = self.stats
        stats.ticks += 1
        stats.bytes_fed += fed
        stats.feed_s += elapsed
        stats.worst_tick_s = max(stats.worst_tick_s, elapsed)
        if dirty:
            self._refresh_rows(dirty)
        if not fed and not transport.alive and not len(transport.queue):
            name = self.session_name
            self.ended_at[name] = time.monotonic()
            self.disconnect(f"Session {name} ended" if name else None)
            self.post_message(self.Ended(self, name))

    def _refresh_rows(self, rows: set[int]) -> None:
        width = self.size.width
        if len(rows) * 2 > self.emulator.lines:
            self.stats.full_refreshes += 1
            self.refresh()
            return
        self.stats.rows_refreshed += len(rows)
        self.refresh(*(Region(0, y, width, 1) for y in rows))

    # ------------------------------------------------------------------ rendering
    def render_line(self, y: int) -> Strip:
        width = self.size.width
        base = self.rich_style
        if self.transport is None:
            text = self.placeholder if y == self.size.height // 2 else ""
            pad = max(0, (width - len(text)) // 2)
            return Strip([Segment(" " * pad + text, base)]).adjust_cell_length(width, base)
        emulator = self.emulator
        if y >= emulator.lines:
            return Strip.blank(width, base)
        cursor_x = None
        if self.has_focus and emulator.cursor_visible and emulator.cursor[1] == y:
            cursor_x = emulator.cursor[0]
        key = (y, emulator.versions[y], width, cursor_x, self._style_generation)
        strip = self._strip_cache.get(key)
        if strip is not None:
            self.stats.cache_hits += 1
            return strip
        self.stats.lines_rendered += 1
        segments = self.renderer.render_row(emulator.screen, y, width, cursor_x)
        strip = Strip(Segment.apply_style(segments, base)).adjust_cell_length(width, base)
        self._strip_cache[key] = strip
        return strip

    def notify_style_update(self) -> None:
        # A theme change: cached strips hold the old colours.
        super().notify_style_update()
        self._style_generation += 1
        self._strip_cache.clear()
        self.renderer.clear_cache()

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        return container.height

    # ------------------------------------------------------------------ input
    def action_leave(self) -> None:
        self.post_message(self.Left())

    def send(self, data: bytes) -> None:
        if self.transport is not None and data:
            self.transport.write(data)

    async def on_key(self, event: events.Key) -> None:
        if self.transport is None:
            return  # nothing to type into: let the dashboard's keys work
        # Everything goes to the child, including keys the dashboard binds (tab, q, k...).
        event.stop()
        event.prevent_default()
        self.send(translate_key(event.key, event.character, self.emulator.app_cursor))

    def on_paste(self, event: events.Paste) -> None:
        if self.transport is None:
            return
        event.stop()
        event.prevent_default()
        self.send(encode_paste(event.text, self.emulator.bracketed_paste))

    def _refresh_cursor(self) -> None:
        y = self.emulator.cursor[1]
        self.refresh(Region(0, y, self.size.width, 1))

    def on_focus(self) -> None:
        self._refresh_cursor()

    def on_blur(self) -> None:
        self._refresh_cursor()

    # ------------------------------------------------------------------ resize
    def on_resize(self, event: events.Resize) -> None:
        # Dragging gives a burst of resizes; forward only the last one.
        if self._size_timer is not None:
            self._size_timer.stop()
        self._size_timer = self.set_timer(0.1, self.apply_size)

    def apply_size(self) -> None:
        self._size_timer = None
        columns, lines = self.content_size.width, self.content_size.height
        if columns <= 0 or lines <= 0:
            return
        if (columns, lines) == (self.emulator.columns, self.emulator.lines):
            return
        self.emulator.resize(columns, lines)
        self._strip_cache.clear()
        if self.transport is not None:
            self.transport.resize(columns, lines)
        self.refresh()

    def on_unmount(self) -> None:
        self.disconnect()
