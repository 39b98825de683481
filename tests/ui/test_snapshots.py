"""SVG snapshots of the main screen in the dark ("coi") and light ("coi-light") themes.

Fixed data only: the fake backend's slots have fixed uptimes, CPU and memory, the threats fixed
timestamps, and the terminal pane shows fixed bytes (plain, ANSI-coloured, bold, reverse). The
screenshot is taken once every row of the pane is rendered and every one-shot worker is done.
Review `snapshot_report.html` before `pytest tests/ui/test_snapshots.py --snapshot-update`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from textual.pilot import Pilot

from coi_tui.app import CoiApp
from coi_tui.dashboard.threats import PushSource
from tests.ui.fakes import OTHER, WORKSPACE, FakeBackend, slot, threat
from tests.ui.helpers import screen_text, settle, wait_for

SIZE = (150, 40)
A1, A2, B1 = "coi-aaaaaaaa-1", "coi-aaaaaaaa-2", "coi-bbbbbbbb-1"

# What the agent's terminal shows: each of the 8 ANSI colours, bright, 256-colour, bold, reverse.
TERMINAL = (
    b"\x1b[2J\x1b[H"
    b"dummy> hello from the agent\r\n"
    b"\x1b[30m black \x1b[31m red \x1b[32m green \x1b[33m yellow \x1b[34m blue "
    b"\x1b[35m magenta \x1b[36m cyan \x1b[37m white \x1b[0m\r\n"
    b"\x1b[91m bright red \x1b[92m bright green \x1b[0m \x1b[38;5;208m 208 \x1b[0m "
    b"\x1b[1mbold\x1b[0m \x1b[7mreverse\x1b[0m \x1b[42;30m on green \x1b[0m\r\n"
    b"$ "
)


def make_app() -> tuple[CoiApp, PushSource]:
    backend = FakeBackend(
        [
            slot(A1),
            slot(A2, number=2, state="FROZEN", tool="claude"),
            slot(B1, OTHER, state="STOPPED", persistent=True),
        ]
    )
    source = PushSource()
    app = CoiApp(
        backend,  # type: ignore[arg-type]
        threats=source,
        workspace=WORKSPACE,
        keymap={},
        remember_theme=False,
        refresh_interval=3600,  # no poll during the test: the first listing is the picture
    )
    return app, source


def prepared(theme: str, source: PushSource) -> Callable[[Pilot[Any]], Any]:
    async def run_before(pilot: Pilot[Any]) -> None:
        app = pilot.app
        assert isinstance(app, CoiApp)
        app.theme = theme
        main = app.main
        await wait_for(pilot, lambda: main.slots and main.terminal.connected, what="start")
        view = main.terminal
        transport = view.transport
        assert transport is not None
        transport.queue.put(TERMINAL)
        await wait_for(
            pilot,
            lambda: "bright green" in view.rendered_text() and "$" in view.rendered_text(),
            what="terminal rendered",
        )
        source.push(threat("t1", A1, "critical", "Reverse shell detected"))
        source.push(threat("t2", A2, "warning", "Large read from /etc"))
        await wait_for(pilot, lambda: "Large read" in screen_text(app), what="threats shown")
        await settle(app)
        # Every dirty row drawn, nothing pending in the pane.
        await wait_for(pilot, lambda: not view._pending, what="pane idle")
        await pilot.pause()

    return run_before


@pytest.mark.parametrize("theme", ["coi", "coi-light"])
def test_main_screen(theme: str, snap_compare: Any) -> None:
    app, source = make_app()
    assert snap_compare(app, terminal_size=SIZE, run_before=prepared(theme, source))
