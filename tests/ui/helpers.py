"""Shared helpers for pilot tests: wait on a condition (never a bare sleep), and read the
screen as plain text (snapshot-like assertions on what is rendered)."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Callable
from typing import Any

from rich.console import Console
from textual.app import App
from textual.pilot import Pilot


def screen_text(app: App[Any]) -> str:
    """What the terminal would show, as text (same path as App.export_screenshot)."""
    width, height = app.size
    console = Console(
        width=width,
        height=height,
        file=io.StringIO(),
        force_terminal=True,
        color_system="truecolor",
        record=True,
        legacy_windows=False,
        safe_box=False,
    )
    console.print(
        app.screen._compositor.render_update(full=True, screen_stack=app._background_screens)
    )
    return console.export_text(styles=False)


def screen_styles(app: App[Any]) -> str:
    """The screen with ANSI styles (to compare themes)."""
    width, height = app.size
    console = Console(
        width=width,
        height=height,
        file=io.StringIO(),
        force_terminal=True,
        color_system="truecolor",
        record=True,
        legacy_windows=False,
        safe_box=False,
    )
    console.print(
        app.screen._compositor.render_update(full=True, screen_stack=app._background_screens)
    )
    return console.export_text(styles=True)


async def wait_for(
    pilot: Pilot[Any], condition: Callable[[], object], timeout: float = 5.0, what: str = ""
) -> None:
    """Let the app run until condition() is true; fail after timeout seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        await pilot.pause(0.02)


LONG_RUNNING = frozenset({"events", "threats"})


async def settle(app: App[Any], timeout: float = 10.0) -> None:
    """Wait until every worker except the long-running stream watchers has finished."""
    from textual.worker import WorkerState

    busy = (WorkerState.PENDING, WorkerState.RUNNING)
    deadline = time.monotonic() + timeout
    while any(w.state in busy for w in app.workers if w.group not in LONG_RUNNING):
        if time.monotonic() > deadline:
            raise AssertionError("workers did not finish")
        await asyncio.sleep(0.01)
