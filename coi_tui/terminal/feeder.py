"""Parses a transport's output into an Emulator on a thread of its own, off the UI's event loop.

The backlog is bounded by *time*, not bytes: the feeder measures pyte's parse rate and keeps
what is queued to about `max_lag_s` worth of parsing, so what the user types is echoed within
that lag however fast the child writes.

- A child that can repaint (a tmux client, `Transport.can_redraw`): when the queue holds more
  than `max_lag_s` of work, everything queued is stale. It is dropped, the terminal modes it
  set are kept (alternate screen, cursor keys, bracketed paste, scroll region...), and tmux is
  asked to redraw. The next `protect` bytes, where that redraw arrives, are never dropped. tmux
  does the same for its own slow clients (`tty_block_maybe`): discard, then repaint whole.
  On a busy machine a repaint can arrive after those bytes and be cut by the next drop, so
  once the output has been quiet for `SETTLE_S` after any drop, one more repaint is asked
  for: nothing drops it, and the screen ends exact.
- Any other child: nothing is ever dropped (there would be no way to repair the screen).
  Instead the queue's byte limit follows the parse rate, so the reader thread blocks, the
  pty fills and the child's writes block: backpressure, with about `max_lag_s` in our queue.

The UI takes `lock` (without waiting) while it reads the screen; the feeder holds it only while
pyte parses one small chunk. Both are Python, so they also share the GIL: after each frame the
UI sets `ui_until`, and the feeder sleeps at its next chunk boundary until then, so the frame's
rendering is not sliced up by a parser that always has work during a flood."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from coi_tui.terminal.emulator import Emulator
from coi_tui.terminal.transport import ByteQueue

MAX_LAG_S = 0.025  # queued work (at the measured parse rate) before output counts as stale
CHUNK = 1024  # bytes parsed per lock hold: about 1-2 ms of pyte
INITIAL_RATE = 500_000.0  # bytes/s until measured
MIN_QUEUE_BYTES = 4096  # backpressure floor for children that cannot repaint
SETTLE_S = 0.1  # quiet output after a drop before the repairing repaint

# Sequences in dropped output whose effect outlives the screen contents: DEC private modes
# (alternate screen, cursor keys, bracketed paste, cursor visibility, autowrap, mouse), ANSI
# modes (insert, newline), the scroll region and charset designations. Replayed after a drop.
KEPT_SEQUENCES = re.compile(rb"\x1b\[\??[0-9;]*[hlr]|\x1b[()][0AB]")


@dataclass
class FeedStats:
    bytes_parsed: int = 0
    bytes_dropped: int = 0
    drops: int = 0
    redraws_requested: int = 0
    parse_s: float = 0.0
    worst_chunk_s: float = 0.0
    rate: float = INITIAL_RATE  # bytes/s, moving average


class Feeder:
    """Owns the thread that moves bytes from `queue` into `emulator`."""

    def __init__(
        self,
        emulator: Emulator,
        queue: ByteQueue,
        *,
        can_redraw: bool = False,
        redraw: Callable[[], None] | None = None,
        redraw_interval_s: float = 0.05,
        max_lag_s: float = MAX_LAG_S,
        chunk: int = CHUNK,
    ) -> None:
        self.emulator = emulator
        self.queue = queue
        self.can_redraw = can_redraw and redraw is not None
        self._redraw = redraw
        self.redraw_interval_s = redraw_interval_s
        self.max_lag_s = max_lag_s
        self.chunk = chunk
        self.lock = threading.Lock()
        self.stats = FeedStats()
        # Bumped after every parsed chunk: the UI skips its work while it has not changed.
        self.generation = 0
        self.finished = threading.Event()
        self._stop = threading.Event()
        self._consumed = 0  # bytes taken from the queue: parsed or dropped
        self._protect_until = 0  # queue offset below which nothing is dropped
        self._last_redraw = float("-inf")
        self._repair_due = False  # output was dropped: repaint once more when it settles
        self.ui_until = 0.0  # time.monotonic() until which the UI thread has the CPU to itself
        self._thread = threading.Thread(target=self._run, name="terminal-feeder", daemon=True)

    def start(self) -> None:
        self._apply_limit()
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to end (it does within one chunk); never blocks."""
        self._stop.set()
        self.queue.close()

    @property
    def repair_pending(self) -> bool:
        """Output was dropped and the repaint after it settles is still to be asked for."""
        return self._repair_due

    @property
    def idle(self) -> bool:
        return not len(self.queue)

    # ------------------------------------------------------------------ the thread
    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                if not self.queue.wait(SETTLE_S):
                    self._repair_if_settled()
                    continue
                if not len(self.queue):
                    if self.queue.closed:
                        break
                    continue
                pause = self.ui_until - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                if self.can_redraw:
                    self._drop_if_stale()
                    self._parse(self.queue.get(self.chunk))
                else:
                    oldest = self.queue.oldest()
                    self._parse(self.queue.get(self.chunk))
                    if oldest is not None:
                        self._adjust_limit(time.monotonic() - oldest)
        finally:
            self.finished.set()

    def _parse(self, data: bytes) -> None:
        if not data:
            return
        started = time.perf_counter()
        with self.lock:
            self.emulator.feed(data)
            self.generation += 1
        elapsed = time.perf_counter() - started
        self._consumed += len(data)
        stats = self.stats
        stats.bytes_parsed += len(data)
        stats.parse_s += elapsed
        stats.worst_chunk_s = max(stats.worst_chunk_s, elapsed)
        if elapsed > 0 and len(data) >= 256:
            # Clamped so one chunk stalled by the GIL or a busy machine cannot swing it far.
            sample = min(max(len(data) / elapsed, 50_000.0), 20_000_000.0)
            stats.rate = 0.9 * stats.rate + 0.1 * sample

    def _apply_limit(self) -> None:
        if not self.can_redraw:
            self.queue.limit = max(MIN_QUEUE_BYTES, int(self.stats.rate * self.max_lag_s))

    def _adjust_limit(self, age: float) -> None:
        """Backpressure by time: the bytes just parsed waited `age` in the queue. Over the
        allowed lag, the byte limit shrinks; well under it, it grows back (both gently: the
        pty and the reader's read add their own share, which the ages already include)."""
        limit = self.queue.limit
        if age > self.max_lag_s:
            limit = int(limit * 0.8)
        elif age < self.max_lag_s / 2:
            limit = int(limit * 1.05) + 1
        self.queue.limit = min(max(limit, MIN_QUEUE_BYTES), 1 << 20)

    def lag_s(self, now: float | None = None) -> float:
        """How long the newest queued byte will wait: its age plus the work ahead of it."""
        oldest = self.queue.oldest()
        if oldest is None:
            return 0.0
        now = time.monotonic() if now is None else now
        return (now - oldest) + len(self.queue) / self.stats.rate

    def _drop_if_stale(self) -> None:
        if self._consumed < self._protect_until or len(self.queue) <= self.chunk:
            return
        now = time.monotonic()
        if self.lag_s(now) <= self.max_lag_s:
            return
        if now - self._last_redraw < self.redraw_interval_s:
            return  # a repaint was just asked for: keep parsing until the next may be
        dropped = self.queue.take_all()
        self._consumed += len(dropped)
        kept = b"".join(KEPT_SEQUENCES.findall(dropped))
        with self.lock:
            self.emulator.reset_parser()
            if kept:
                self.emulator.feed(kept)
            self.generation += 1
        self.stats.drops += 1
        self.stats.bytes_dropped += len(dropped)
        # The repaint arrives after whatever the child writes meanwhile: protect room for two
        # screenfuls of cells and their escape sequences (tmux repaints a 200x50 screen of
        # coloured log lines in about 9 KB).
        screen = self.emulator.columns * self.emulator.lines
        self._protect_until = self.queue.total_in + 2 * screen + 4096
        self._last_redraw = now
        self._repair_due = True
        self.stats.redraws_requested += 1
        if self._redraw is not None:
            self._redraw()

    def _repair_if_settled(self) -> None:
        """The output has been quiet for SETTLE_S: after a drop, ask for the repaint that
        nothing will cut (the last one may have been)."""
        if not self._repair_due or self._redraw is None:
            return
        self._repair_due = False
        self._last_redraw = time.monotonic()
        self.stats.redraws_requested += 1
        self._redraw()
