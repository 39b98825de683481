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
from coi_tui.terminal.transport import PtyTransport

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


async def _flood_frames(budget_s: float) -> list[Figure]:
    """The real widget in a headless app; a FakeTransport is flooded from a thread."""
    import threading

    from textual.app import App, ComposeResult

    from coi_tui.terminal.transport import FakeTransport
    from coi_tui.widgets.terminal_view import TerminalView

    class FloodApp(App[None]):
        def compose(self) -> ComposeResult:
            yield TerminalView(id="t")

    app = FloodApp()
    frames: list[float] = []
    async with app.run_test(size=(COLUMNS, LINES)) as pilot:
        view = app.query_one(TerminalView)
        transport = FakeTransport()
        view.connect(transport, "bench")
        await pilot.pause(0.2)
        # Time each tick (feed + dirty) plus the render_line calls that follow it.
        original_tick, original_render = view.tick, view.render_line
        state = {"render": 0.0}

        def tick() -> None:
            if state.get("t") is not None:
                frames.append(state["t"] + state["render"])
            t0 = time.perf_counter()
            original_tick()
            state["t"] = time.perf_counter() - t0
            state["render"] = 0.0

        def render_line(y: int) -> Strip:
            t0 = time.perf_counter()
            strip = original_render(y)
            state["render"] += time.perf_counter() - t0
            return strip

        view.tick = tick  # type: ignore[method-assign]
        view.render_line = render_line  # type: ignore[method-assign]
        for timer in list(view._timers):
            timer.stop()
        view.set_interval(1 / view.fps, view.tick)
        stop = threading.Event()
        data = colour_log(2000)

        def flood() -> None:
            while not stop.is_set():
                for k in range(0, len(data), 4096):
                    if not transport.queue.put(data[k : k + 4096], timeout=0.5) or stop.is_set():
                        return

        thread = threading.Thread(target=flood, daemon=True)
        thread.start()
        await asyncio.sleep(min(budget_s, 5.0))
        stop.set()
        transport.close()
        thread.join(2)
        fed = view.stats.bytes_fed
    return [
        figure("terminal_frame_median_s", frames, target="< 0.050", limit=0.050),
        Figure(
            "terminal_frame_worst_s",
            max(frames),
            "s",
            runs=len(frames),
            target="< 0.050",
            met=max(frames) < 0.050,
        ),
        Figure("terminal_flood_bytes_shown", float(fed), "B", extra={"frames": len(frames)}),
    ]


ECHO_CHILD = r"""
import os, sys, threading, tty
tty.setraw(0)
line = ("\x1b[32mINFO\x1b[0m " + "flood " * 20 + "\r\n").encode()
def flood():
    while True:
        os.write(1, line * 20)
threading.Thread(target=flood, daemon=True).start()
while True:
    c = os.read(0, 1)
    if not c:
        break
    os.write(1, b"<ECHO" + c + b">")
"""


def key_to_echo(budget_s: float, queue_bytes: int, via_tmux: bool) -> Figure:
    """Key written to the pty -> its echo parsed by pyte, while the child floods; the reader
    loop below does what the widget's tick does (8 ms feed budget per 1/30 s). With tmux in
    between (as in a real session) tmux drops frames for a slow client."""
    child = [sys.executable, "-c", ECHO_CHILD]
    socket = f"coibench{os.getpid()}"
    if via_tmux:
        child = [
            "tmux",
            "-f",
            "/dev/null",
            "-L",
            socket,
            "new-session",
            "-x",
            str(COLUMNS),
            "-y",
            str(LINES),
            *child,
        ]
    transport = PtyTransport(
        child, COLUMNS, LINES, queue_bytes=queue_bytes, env={**os.environ, "TERM": "xterm-256color"}
    )
    emu = Emulator(COLUMNS, LINES)
    latencies: list[float] = []
    tail = b""
    try:
        started = time.monotonic()
        keys = "abcdefghijklmnopqrstuvwxyz"
        i = 0
        while time.monotonic() - started < budget_s and i < 200:
            key = keys[i % len(keys)]
            marker = f"<ECHO{key}>".encode()
            sent = time.perf_counter()
            transport.write(key.encode())
            deadline = sent + 10
            found = False
            while not found and time.perf_counter() < deadline:
                tick_end = time.perf_counter() + 0.008
                while time.perf_counter() < tick_end:
                    data = transport.queue.get(2048)
                    if not data:
                        break
                    emu.feed(data)
                    window = tail + data
                    if marker in window or (via_tmux and marker.decode() in emu.text()):
                        found = True
                        break
                    tail = window[-16:]
                emu.take_dirty()
                if not found:
                    time.sleep(1 / 30)
            if found:
                latencies.append(time.perf_counter() - sent)
            i += 1
    finally:
        transport.close()
        if via_tmux:
            subprocess.run(["tmux", "-L", socket, "kill-server"], capture_output=True)
    kind = "tmux" if via_tmux else "raw"
    name = f"terminal_key_to_echo_p95_{kind}_q{queue_bytes // 1024}k_s"
    p95 = percentile(latencies, 95) if latencies else float("inf")
    return Figure(
        name,
        p95,
        "s",
        runs=len(latencies),
        min=min(latencies) if latencies else None,
        max=max(latencies) if latencies else None,
        target="< 0.050",
        met=p95 < 0.050,
        extra={"median": statistics.median(latencies) if latencies else None},
    )


async def _dashboard_refresh(budget_s: float) -> list[Figure]:
    from coi_tui.app import CoiApp
    from coi_tui.dashboard.backend import SlotInfo
    from coi_tui.dashboard.threats import PushSource
    from coi_tui.screens.messages import SlotsLoaded

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
            screen._slots_loaded(SlotsLoaded(slots(seed)))  # same slots, new figures
            await pilot.pause()
            update.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            changed = slots(seed)[: 50 - seed % 3]  # a slot gone: the tree is rebuilt
            screen._slots_loaded(SlotsLoaded(changed))
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
    figures += asyncio.run(_flood_frames(per))
    if shutil.which("tmux"):
        figures.append(key_to_echo(per, 256 * 1024, via_tmux=True))
    figures.append(key_to_echo(per, 256 * 1024, via_tmux=False))
    figures += asyncio.run(_dashboard_refresh(per))
    return figures


if __name__ == "__main__":
    for fig in run(float(sys.argv[1]) if len(sys.argv) > 1 else 40):
        print(f"{fig.name:44} {fig.value:12.4g} {fig.unit:4} {fig.target:10} {fig.met}")
