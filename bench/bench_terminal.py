"""The embedded terminal pane and the dashboard: pyte parse rate, frame times during a flood,
dirty-row rendering vs a whole-screen rebuild per read, key-to-echo latency during a flood
(a local pty child; no container needed), and the dashboard's refresh time with 50 slots."""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import time
from typing import Any

from rich.text import Text
from textual.strip import Strip

from bench.common import Figure, figure, percentile
from coi_tui.terminal.emulator import Emulator
from coi_tui.terminal.render import Renderer, map_color

COLUMNS, LINES = 200, 50


def colour_log(lines: int) -> bytes:
    """A large colourised log, as an agent or a build prints it."""
    out = []
    for i in range(lines):
        level = ("\x1b[32mINFO\x1b[0m", "\x1b[33mWARN\x1b[0m", "\x1b[1;31mERROR\x1b[0m")[i % 3]
        out.append(
            f"\x1b[2m2026-05-01 10:{i % 60:02d}:00\x1b[0m {level} \x1b[36mworker-{i % 7}\x1b[0m "
            f"processed batch {i} of items with \x1b[38;5;208m{i * 7 % 1000}\x1b[0m ms latency\r\n"
        )
    return "".join(out).encode()


def tmux_updates(count: int) -> bytes:
    """tmux-style incremental redraws: a status line and a few cells rewritten per update."""
    out = []
    for i in range(count):
        row = 5 + i % 30
        out.append(
            f"\x1b[{row};10H\x1b[1;32m{i:>8}\x1b[0m items"
            f"\x1b[{LINES};1H\x1b[7m[coi] 0:dummy* {i:>10}\x1b[0m"
        )
    return "".join(out).encode()


def parse_rate(budget_s: float) -> Figure:
    data = colour_log(4000)
    rates = []
    started = time.monotonic()
    while time.monotonic() - started < budget_s or not rates:
        emu = Emulator(COLUMNS, LINES)
        t0 = time.perf_counter()
        emu.feed(data)
        rates.append(len(data) / (time.perf_counter() - t0))
    fig = figure("terminal_parse_bytes_per_s", rates, unit="B/s")
    return fig


def whole_screen_rebuild(emu: Emulator) -> Any:
    """What textual-terminal does per read: every cell of every row into Rich Text."""
    screen = emu.screen
    lines = []
    for y in range(screen.lines):
        text = Text()
        line = screen.buffer[y]
        for x in range(screen.columns):
            char = line[x]
            text.append(char.data)
            if char.fg != "default" or char.bold:
                color = map_color(char.fg)
                text.stylize(
                    f"{'bold ' if char.bold else ''}{color.name if color else ''}".strip()
                    or "none",
                    x,
                    x + 1,
                )
        lines.append(text)
    return lines


def render_ratio(budget_s: float) -> list[Figure]:
    """Per read: render only dirty rows (cached strips) vs rebuild the whole screen."""
    emu = Emulator(COLUMNS, LINES)
    emu.feed(colour_log(LINES))
    emu.take_dirty()
    renderer = Renderer()
    chunks = [tmux_updates(1) for _ in range(200)]
    dirty_times: list[float] = []
    full_times: list[float] = []
    started = time.monotonic()
    i = 0
    while time.monotonic() - started < budget_s or len(dirty_times) < 20:
        emu.feed(chunks[i % len(chunks)])
        i += 1
        t0 = time.perf_counter()
        for y in emu.take_dirty():
            segs = renderer.render_row(emu.screen, y, COLUMNS, None)
            Strip(segs).adjust_cell_length(COLUMNS)
        dirty_times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        whole_screen_rebuild(emu)
        full_times.append(time.perf_counter() - t0)
    dirty = figure("terminal_render_dirty_rows_s", dirty_times)
    full = figure("terminal_render_whole_screen_s", full_times, target="(baseline)")
    ratio = full.value / dirty.value
    return [
        dirty,
        full,
        Figure(
            "terminal_render_speedup_x",
            ratio,
            "x",
            target=">= 10",
            met=ratio >= 10,
            baseline="terminal_render_whole_screen_s",
        ),
    ]


class FrameClock:
    """Wraps a TerminalView's tick and render_line: one frame is a tick plus the render_line
    calls that follow it (what the event loop spends on the pane per frame)."""

    def __init__(self, view: Any) -> None:
        self.frames: list[float] = []
        # The same frames in the UI thread's CPU time: the work itself, without the time the
        # thread waited for the GIL or for a CPU (this machine is shared and often loaded).
        self.cpu: list[float] = []
        self._tick_s: float | None = None
        self._tick_cpu = 0.0
        self._render_s = 0.0
        self._render_cpu = 0.0
        original_tick, original_render = view.tick, view.render_line

        def tick() -> None:
            if self._tick_s is not None:
                self.frames.append(self._tick_s + self._render_s)
                self.cpu.append(self._tick_cpu + self._render_cpu)
            t0, c0 = time.perf_counter(), time.thread_time()
            original_tick()
            self._tick_s = time.perf_counter() - t0
            self._tick_cpu = time.thread_time() - c0
            self._render_s = self._render_cpu = 0.0

        def render_line(y: int) -> Strip:
            t0, c0 = time.perf_counter(), time.thread_time()
            strip = original_render(y)
            self._render_s += time.perf_counter() - t0
            self._render_cpu += time.thread_time() - c0
            return strip

        view.tick = tick
        view.render_line = render_line
        for timer in list(view._timers):
            timer.stop()
        view.set_interval(1 / view.fps, view.tick)


async def _flood_frames(budget_s: float, can_redraw: bool) -> list[Figure]:
    """The real widget in a headless app; a FakeTransport is flooded from a thread as fast as
    it accepts. can_redraw=False: nothing may be dropped (backpressure); True: the feeder drops
    stale output (the FakeTransport's redraw is a no-op here)."""
    import threading

    from textual.app import App, ComposeResult

    from coi_tui.terminal.transport import FakeTransport
    from coi_tui.widgets.terminal_view import TerminalView

    class FloodApp(App[None]):
        def compose(self) -> ComposeResult:
            yield TerminalView(id="t")

    app = FloodApp()
    async with app.run_test(size=(COLUMNS, LINES)) as pilot:
        view = app.query_one(TerminalView)
        try:
            transport = FakeTransport(can_redraw=can_redraw)
        except TypeError:  # the pre-feeder code
            transport = FakeTransport()
        view.connect(transport, "bench")
        await pilot.pause(0.2)
        clock = FrameClock(view)
        stop = threading.Event()
        data = colour_log(2000)

        def flood() -> None:
            # Like a pty reader: a read returns at most 4 KB and then blocks for the next
            # (here: 4 MB/s at most), instead of spinning on the GIL.
            while not stop.is_set():
                for k in range(0, len(data), 4096):
                    while not transport.queue.put(data[k : k + 4096], timeout=0.1):
                        if stop.is_set() or transport.queue.closed:
                            return
                    time.sleep(0.001)

        thread = threading.Thread(target=flood, daemon=True)
        thread.start()
        await asyncio.sleep(budget_s)
        stop.set()
        feeder = getattr(view, "feeder", None)
        parsed = feeder.stats.bytes_parsed if feeder else view.stats.bytes_fed
        dropped = feeder.stats.bytes_dropped if feeder else 0
        transport.close()
        thread.join(2)
    frames = clock.frames
    kind = "drop" if can_redraw else "backpressure"
    return [
        figure(f"terminal_frame_median_{kind}_s", frames, target="< 0.050", limit=0.050),
        Figure(
            f"terminal_frame_worst_{kind}_s",
            max(frames),
            "s",
            runs=len(frames),
            target="< 0.050",
            met=max(frames) < 0.050,
            extra={"worst_cpu_s": max(clock.cpu), "median_cpu_s": statistics.median(clock.cpu)},
        ),
        Figure(
            f"terminal_flood_parsed_{kind}_bytes_per_s",
            parsed / budget_s,
            "B/s",
            extra={"frames": len(frames), "dropped_bytes": dropped},
        ),
    ]


# A child like an agent's TUI: output floods a scroll region while the input line (the last
# row) shows what was typed. One thread, select() on both ends: a key is echoed right after
# the rest of the flood write in progress, never inside one of its escape sequences.
ECHO_CHILD = r"""
import os, select, tty
tty.setraw(0)
columns, lines = os.get_terminal_size(0)
os.set_blocking(1, False)
line = ("\x1b[32mINFO\x1b[0m " + "flood " * 20 + "\r\n").encode()
flood = b"\x1b[%d;1H" % (lines - 1) + line * 20
out = bytearray(b"\x1b[2J\x1b[1;%dr" % (lines - 1))
while True:
    readable, _, _ = select.select([0], [1], [])
    if readable:
        c = os.read(0, 1)
        if not c:
            break
        out += b"\x1b7\x1b[%d;1H\x1b[2Kinput> <ECHO" % lines + c + b">\x1b8"
    if not out:
        out += flood
    try:
        del out[: os.write(1, out)]
    except BlockingIOError:
        pass
"""

ECHO_TIMEOUT_S = 2.0


async def _key_to_echo(budget_s: float, via_tmux: bool) -> list[Figure]:
    """The whole path, in the real widget: a key pressed in the focused pane -> translate ->
    pty -> child (through tmux, as in a session) -> reader -> feeder -> pyte -> tick -> the
    row render_line draws. The child floods its terminal all the while. An echo not seen
    within 2 s counts as 2 s."""
    from textual import events
    from textual.app import App, ComposeResult

    from coi_tui.terminal.transport import PtyTransport
    from coi_tui.widgets.terminal_view import TerminalView

    child = [sys.executable, "-c", ECHO_CHILD]
    socket = f"coibench{os.getpid()}"
    if via_tmux:
        # destroy-unattached: should this process die, its tmux client goes, and so do the
        # session, the flooding child and the server.
        child = ["tmux", "-f", "/dev/null", "-L", socket, "new-session", *child]
        child += [";", "set-option", "destroy-unattached", "on"]

    class EchoApp(App[None]):
        def compose(self) -> ComposeResult:
            yield TerminalView(id="t")

    app = EchoApp()
    latencies: list[float] = []
    upstream: list[float] = []
    pane: list[float] = []
    misses = 0
    env = {**os.environ, "TERM": "xterm-256color"}
    env.pop("TMUX", None)
    try:
        async with app.run_test(size=(COLUMNS, LINES)) as pilot:
            view = app.query_one(TerminalView)
            await pilot.pause(0.2)
            size = view.content_size
            transport = PtyTransport(child, size.width, size.height, env=env)
            # When each echo's bytes reached our reader: splits the latency into the child's
            # side (tmux, the pty, the scheduler) and the pane's (queue, parse, render).
            arrived: dict[bytes, float] = {}
            put = transport.queue.put

            def timed_put(data: bytes, timeout: float | None = None) -> bool:
                at = data.find(b"<ECHO")
                if at >= 0:
                    arrived.setdefault(data[at + 5 : at + 6], time.perf_counter())
                return put(data, timeout)

            transport.queue.put = timed_put  # type: ignore[method-assign]
            view.connect(transport, "bench")
            view.focus()
            clock = FrameClock(view)
            deadline = time.monotonic() + 10
            shown = getattr(view, "rendered_text", view.text)
            while "INFO" not in shown():
                assert time.monotonic() < deadline, "the flood never showed"
                await asyncio.sleep(0.01)
            started = time.monotonic()
            keys = "abcdefghijklmnopqrstuvwxyz"
            i = 0
            while time.monotonic() - started < budget_s:
                key = keys[i % len(keys)]
                i += 1
                marker = f"<ECHO{key}>"
                arrived.clear()
                sent = time.perf_counter()
                # As the driver delivers a key (Pilot.press waits for an idle app, which a
                # flooded pane never is).
                app.post_message(events.Key(key, key))
                while marker not in shown():
                    if time.perf_counter() - sent > ECHO_TIMEOUT_S:
                        break
                    await asyncio.sleep(0.003)
                shown_at = time.perf_counter()
                latency = shown_at - sent
                if latency > ECHO_TIMEOUT_S:
                    misses += 1
                    latency = ECHO_TIMEOUT_S
                latencies.append(latency)
                at = arrived.pop(key.encode(), None)
                if at is not None and latency < ECHO_TIMEOUT_S:
                    upstream.append(at - sent)
                    pane.append(shown_at - at)
                # The next key only once the last one is gone from the input line's marker.
                await asyncio.sleep(0.05)
            feeder = getattr(view, "feeder", None)
            stats = feeder.stats if feeder else None
            view.disconnect()
    finally:
        if via_tmux:
            subprocess.run(["tmux", "-L", socket, "kill-server"], capture_output=True)
    kind = "tmux" if via_tmux else "raw"
    p95 = percentile(latencies, 95)
    frames = clock.frames
    extra: dict[str, Any] = {
        "median": statistics.median(latencies),
        "misses": misses,
        # key -> echo bytes at our reader (the child, tmux, the scheduler: not the pane)
        "upstream_p95_s": percentile(upstream, 95) if upstream else None,
        "upstream_median_s": statistics.median(upstream) if upstream else None,
        # echo bytes at our reader -> drawn by render_line (the pane's own share)
        "pane_p95_s": percentile(pane, 95) if pane else None,
        "pane_median_s": statistics.median(pane) if pane else None,
        "frame_worst_s": max(frames),
        "frame_median_s": statistics.median(frames),
    }
    if stats is not None:
        extra |= {
            "parsed_bytes": stats.bytes_parsed,
            "dropped_bytes": stats.bytes_dropped,
            "drops": stats.drops,
            "redraws": stats.redraws_requested,
        }
    return [
        Figure(
            f"terminal_key_to_echo_p95_{kind}_s",
            p95,
            "s",
            runs=len(latencies),
            min=min(latencies),
            max=max(latencies),
            target="< 0.050",
            met=p95 < 0.050,
            extra=extra,
        ),
        Figure(
            f"terminal_frame_worst_echo_{kind}_s",
            max(frames),
            "s",
            runs=len(frames),
            target="< 0.050",
            met=max(frames) < 0.050,
            extra={
                "median": statistics.median(frames),
                "worst_cpu_s": max(clock.cpu),
                "median_cpu_s": statistics.median(clock.cpu),
            },
        ),
    ]


async def _dashboard_refresh(budget_s: float) -> list[Figure]:
    from coi_tui.app import CoiApp
    from coi_tui.dashboard.backend import SlotInfo
    from coi_tui.dashboard.hosts import LOCAL
    from coi_tui.dashboard.threats import PushSource
    from coi_tui.screens.main import HostSlotsLoaded

    def slots(seed: int) -> list[SlotInfo]:
        return [
            SlotInfo(
                name=f"coi-{w:08x}-{s}",
                workspace=f"/srv/project-{w}",
                slot=s,
                tool="claude",
                state=("RUNNING", "FROZEN", "STOPPED")[(w + s) % 3],
                uptime_s=100.0 + seed,
                cpu_pct=float(seed % 100),
                mem_bytes=1 << 26,
            )
            for w in range(10)
            for s in range(1, 6)
        ]

    class Quiet:
        prefix = "coi-"
        read_only = False

        def list_slots(self) -> list[SlotInfo]:
            return slots(0)

        def list_snapshots(self, name: str) -> list[Any]:
            return []

        def watch_events(self, callback: Any, stop: Any) -> None:
            stop.wait()

        def open_terminal(self, *args: Any) -> Any:
            raise RuntimeError("no terminals in this benchmark")

    app = CoiApp(Quiet(), threats=PushSource(), keymap={}, remember_theme=False)  # type: ignore[arg-type]
    update: list[float] = []
    rebuild: list[float] = []
    async with app.run_test(size=(160, 60)) as pilot:
        await pilot.pause(0.5)
        screen = app.main
        started = time.monotonic()
        seed = 1
        while time.monotonic() - started < budget_s or len(update) < 10:
            t0 = time.perf_counter()
            screen.post_message(HostSlotsLoaded(LOCAL, slots(seed)))  # same slots, new figures
            await pilot.pause()
            update.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            changed = slots(seed)[: 50 - seed % 3]  # a slot gone: the tree is rebuilt
            screen.post_message(HostSlotsLoaded(LOCAL, changed))
            await pilot.pause()
            rebuild.append(time.perf_counter() - t0)
            seed += 1
    return [
        figure("dashboard_refresh_50_slots_s", update, target="< 0.050", limit=0.050),
        figure("dashboard_rebuild_50_slots_s", rebuild, target="< 0.100", limit=0.100),
    ]


def run(budget_s: float = 120) -> list[Figure]:
    per = budget_s / 8
    figures = [parse_rate(per)]
    figures += render_ratio(per)
    figures += asyncio.run(_flood_frames(per, can_redraw=False))
    figures += asyncio.run(_flood_frames(per, can_redraw=True))
    if shutil.which("tmux"):
        figures += asyncio.run(_key_to_echo(per, via_tmux=True))
    figures += asyncio.run(_key_to_echo(per, via_tmux=False))
    figures += asyncio.run(_dashboard_refresh(per))
    return figures


if __name__ == "__main__":
    for fig in run(float(sys.argv[1]) if len(sys.argv) > 1 else 40):
        print(f"{fig.name:44} {fig.value:12.4g} {fig.unit:4} {fig.target:10} {fig.met} {fig.extra}")
