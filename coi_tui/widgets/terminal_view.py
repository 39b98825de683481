"""A live terminal pane: bytes from a Transport -> pyte (on a Feeder thread) -> cached strips.

The transport's reader thread queues the child's output; a Feeder thread parses it into pyte
and keeps the backlog to a few tens of milliseconds (see terminal/feeder.py). A UI tick takes
the feeder's lock once, collects the dirty rows and renders at most a frame budget's worth of
them into segments; render_line only reads those. Keys typed while the pane has focus go
straight to the child's pty (never behind any output), bindings included, except ctrl+] which
leaves the pane."""

from __future__ import annotations

import gc
import sys
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
from coi_tui.terminal.feeder import Feeder
from coi_tui.terminal.keys import encode_paste, translate_key
from coi_tui.terminal.render import Renderer
from coi_tui.terminal.transport import Transport, close_in_background

LEAVE_KEY = "ctrl+right_square_bracket"
_gc_frozen = False
# Rows rendered into segments per tick stop after this long; the rest wait for the next tick
# (about 0.1-0.3 ms per 200-column row, so a whole screen usually fits).
ROW_BUDGET_S = 0.008
# From a tick that renders, the feeder leaves the GIL to the UI thread this long, so the tick
# and the compositor's frame run in one piece (the feeder still gets ~2/3 of each 1/60 s).
UI_SHARE_S = 0.006
RENDER_SHARE_S = 0.002  # the same, renewed by each render_line of a frame
LOCK_WAIT_S = 0.004  # longest a tick waits for the feeder to finish its chunk
# The GIL's hand-over interval while a pane is live: a thread that wants the GIL waits at most
# this long for a busy one (Python's default, 5 ms, would let the parser delay each of the
# UI thread's many GIL re-acquisitions per frame by that much).
SWITCH_INTERVAL_S = 0.001


@dataclass
class TerminalStats:
    bytes_fed: int = 0  # parsed by the feeder (dropped bytes not included)
    ticks: int = 0
    feed_s: float = 0.0  # time ticks spent holding the screen (dirty rows + row rendering)
    worst_tick_s: float = 0.0
    rows_refreshed: int = 0
    full_refreshes: int = 0
    rows_deferred: int = 0  # dirty rows left for a later tick by the frame budget
    lock_skips: int = 0  # ticks that found the feeder mid-chunk and tried again next time
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
        """The child went away (tmux session ended, container stopped, or an attach that
        failed at once); `lived_s` is how long it was connected."""

        def __init__(self, view: TerminalView, name: str, lived_s: float = 0.0) -> None:
            super().__init__()
            self.view = view
            self.name = name
            self.lived_s = lived_s

    def __init__(
        self,
        *,
        fps: int = 60,
        end_placeholder: str = "Session {name} ended",
        name: str | None = None,
        id: str | None = None,
    ) -> None:
        """`end_placeholder` is shown when the child goes away ({name}: the session); an owner
        that reconnects on `Ended` says so there and decides what the pane shows next."""
        super().__init__(name=name, id=id)
        self.end_placeholder = end_placeholder
        self.connected_at = 0.0
        self.emulator = Emulator(80, 24)
        self.renderer = Renderer()
        self.transport: Transport | None = None
        self.feeder: Feeder | None = None
        self.session_name = ""
        self.placeholder = "No session selected"
        self.fps = fps
        self.stats = TerminalStats()
        self._strip_cache: LRUCache[tuple[int, int, int, bool, int], Strip] = LRUCache(1024)
        self._size_timer: Timer | None = None
        self._style_generation = 0
        # What render_line draws, filled by tick() from the screen under the feeder's lock:
        # each row's segments and version, and the cursor row drawn with the cursor.
        self._rows: list[list[Segment] | None] = []
        self._row_versions: list[int] = []
        self._cursor_row: tuple[int, list[Segment]] | None = None
        self._pending: set[int] = set()
        self._seen_generation = -1
        self._version = 0
        # When each session's child last went away (set at once, before any message).
        self.ended_at: dict[str, float] = {}

    # ------------------------------------------------------------------ connection
    def connect(self, transport: Transport, session_name: str) -> None:
        self.disconnect()
        columns, lines = self.content_size.width or 80, self.content_size.height or 24
        self.emulator = Emulator(columns, lines, reply=transport.write)
        self.transport = transport
        self.feeder = Feeder(
            self.emulator,
            transport.queue,
            can_redraw=transport.can_redraw,
            redraw=transport.redraw,
            redraw_interval_s=getattr(transport, "redraw_interval_s", 0.05),
        )
        self.session_name = session_name
        self.connected_at = time.monotonic()
        self._reset_rows(lines)
        if sys.getswitchinterval() > SWITCH_INTERVAL_S:
            sys.setswitchinterval(SWITCH_INTERVAL_S)
        # A live pane allocates fast (cells, segments, strips), so the collector's full passes
        # come often, and each walked the whole app (about 40 ms measured mid-flood). Frozen
        # objects (everything alive at the first connect: the app, its widgets) are skipped
        # by those passes. Once per process: a freeze also pins whatever garbage exists then.
        global _gc_frozen
        if not _gc_frozen:
            gc.freeze()
            _gc_frozen = True
        self.feeder.start()
        self.refresh()

    def disconnect(self, placeholder: str | None = None) -> None:
        if self.feeder is not None:
            self.feeder.stop()
        self.feeder = None
        if self.transport is not None:
            close_in_background(self.transport)  # it may wait for the child: never here
        self.transport = None
        self.session_name = ""
        if placeholder is not None:
            self.placeholder = placeholder
        self._strip_cache.clear()
        self.refresh()

    def _reset_rows(self, lines: int) -> None:
        self._rows = [None] * lines
        self._row_versions = [0] * lines
        self._cursor_row = None
        self._pending = set(range(lines))
        self._seen_generation = -1
        self._strip_cache.clear()

    @property
    def connected(self) -> bool:
        return self.transport is not None

    def text(self) -> str:
        """The visible screen as plain text, as parsed so far (tests, debugging)."""
        if self.transport is None or self.feeder is None:
            return self.placeholder
        with self.feeder.lock:
            return self.emulator.text()

    def rendered_text(self) -> str:
        """What render_line draws now (rows rendered by the last ticks), as plain text."""
        return "\n".join(
            "".join(segment.text for segment in row or ()).rstrip() for row in self._rows
        )

    # ------------------------------------------------------------------ feeding
    def on_mount(self) -> None:
        self.set_interval(1 / self.fps, self.tick)

    def tick(self) -> None:
        """Collect what the feeder changed and render at most a frame budget's worth of rows."""
        transport, feeder = self.transport, self.feeder
        if transport is None or feeder is None:
            return
        generation = feeder.generation
        if generation != self._seen_generation or self._pending:
            started = time.perf_counter()
            rendered = self._take_rows(feeder, started)
            if not rendered:
                feeder.ui_until = 0.0
            elapsed = time.perf_counter() - started
            stats = self.stats
            stats.ticks += 1
            stats.bytes_fed = feeder.stats.bytes_parsed
            stats.feed_s += elapsed
            stats.worst_tick_s = max(stats.worst_tick_s, elapsed)
            if rendered:
                self._refresh_rows(rendered)
            return
        if feeder.finished.is_set() and not transport.alive:
            name = self.session_name
            now = time.monotonic()
            self.ended_at[name] = now
            self.disconnect(self.end_placeholder.format(name=name) if name else None)
            self.post_message(self.Ended(self, name, now - self.connected_at))

    def _take_rows(self, feeder: Feeder, started: float) -> set[int]:
        """Under the lock: new dirty rows join the pending ones; render pending rows (cursor
        row first) until the row budget is spent. Returns the rows rendered."""
        emulator, renderer = self.emulator, self.renderer
        width = self.size.width or emulator.columns
        rendered: set[int] = set()
        # Ask the feeder to pause at its next chunk boundary (about a millisecond away), and
        # wait that long at most: if it is descheduled on a busy machine, this frame skips the
        # pane and the next tick tries again.
        feeder.ui_until = time.monotonic() + UI_SHARE_S
        if not feeder.lock.acquire(timeout=LOCK_WAIT_S):
            self.stats.lock_skips += 1
            return rendered
        try:
            self._seen_generation = feeder.generation
            self._pending |= emulator.take_dirty()
            if len(self._rows) != emulator.lines:
                self._reset_rows(emulator.lines)
            cursor_x, cursor_y = emulator.cursor
            visible = emulator.cursor_visible
            order = sorted(self._pending, key=lambda y: y != cursor_y)
            deadline = started + ROW_BUDGET_S
            for y in order:
                if rendered and time.perf_counter() > deadline:
                    break
                if not 0 <= y < emulator.lines:
                    rendered.add(y)
                    continue
                self._rows[y] = renderer.render_row(emulator.screen, y, width, None)
                if y == cursor_y:
                    self._cursor_row = (
                        (y, renderer.render_row(emulator.screen, y, width, cursor_x))
                        if visible
                        else None
                    )
                rendered.add(y)
            if self._cursor_row is not None and self._cursor_row[0] != cursor_y:
                self._cursor_row = None  # moved: its new row is pending (take_dirty added it)
        finally:
            feeder.lock.release()
        self._pending -= rendered
        self.stats.rows_deferred += len(self._pending)
        self._version += 1
        for y in rendered:
            if 0 <= y < len(self._row_versions):
                self._row_versions[y] = self._version
        return {y for y in rendered if 0 <= y < len(self._rows)}

    def _refresh_rows(self, rows: set[int]) -> None:
        width = self.size.width
        if len(rows) * 2 > len(self._rows):
            self.stats.full_refreshes += 1
            self.refresh()
            return
        self.stats.rows_refreshed += len(rows)
        self.refresh(*(Region(0, y, width, 1) for y in rows))

    # ------------------------------------------------------------------ rendering
    def render_line(self, y: int) -> Strip:
        width = self.size.width
        base = self.rich_style
        feeder = self.feeder
        if feeder is not None:
            # The compositor is drawing this pane: keep the parser off the GIL meanwhile.
            feeder.ui_until = time.monotonic() + RENDER_SHARE_S
        if self.transport is None:
            text = self.placeholder if y == self.size.height // 2 else ""
            pad = max(0, (width - len(text)) // 2)
            return Strip([Segment(" " * pad + text, base)]).adjust_cell_length(width, base)
        if y >= len(self._rows) or self._rows[y] is None:
            return Strip.blank(width, base)
        cursor = self.has_focus and self._cursor_row is not None and self._cursor_row[0] == y
        key = (y, self._row_versions[y], width, cursor, self._style_generation)
        strip = self._strip_cache.get(key)
        if strip is not None:
            self.stats.cache_hits += 1
            return strip
        self.stats.lines_rendered += 1
        segments = self._cursor_row[1] if cursor and self._cursor_row else self._rows[y]
        strip = Strip(Segment.apply_style(segments or [], base)).adjust_cell_length(width, base)
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
        if self._cursor_row is not None:
            self.refresh(Region(0, self._cursor_row[0], self.size.width, 1))

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
        if self.feeder is not None:
            with self.feeder.lock:
                self.emulator.resize(columns, lines)
        else:
            self.emulator.resize(columns, lines)
        self._reset_rows(lines)
        if self.transport is not None:
            self.transport.resize(columns, lines)
        self.refresh()

    def on_unmount(self) -> None:
        self.disconnect()
