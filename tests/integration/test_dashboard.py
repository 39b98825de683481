"""End to end: coi-tui against the real Incus daemon with two background dummy sessions.

The app runs headless (App.run_test) with the real backend: real listings, the real events
stream, a real `incus exec -t ... tmux attach` on a pty feeding the pyte pane."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from coi_tui.app import CoiApp
from coi_tui.dashboard.threats import AuditTail
from coi_tui.incus import Incus
from coi_tui.sessions.naming import container_name
from coi_tui.widgets import SlotTree, TerminalView
from tests.conftest import CoiRunner
from tests.ui.helpers import screen_text, wait_for

pytestmark = pytest.mark.incus


async def test_dashboard_drives_real_sessions(
    coi: CoiRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    # Both sessions start at once: their boot waits overlap (slot choice is locked).
    with ThreadPoolExecutor(2) as pool:
        results = list(
            pool.map(
                lambda _: coi("shell", "--background", "--tool", "dummy", "-w", str(workspace)),
                range(2),
            )
        )
    for result in results:
        assert result.returncode == 0, result.stderr
    first, second = (container_name(coi.prefix, str(workspace), n) for n in (1, 2))

    monkeypatch.setenv("COI_CONTAINER_PREFIX", coi.prefix)
    monkeypatch.setenv("COI_HOME", str(coi.home))
    audit = coi.home / "audit"
    audit.mkdir(exist_ok=True)
    app = CoiApp(
        threats=AuditTail(audit),
        workspace=str(workspace),
        keymap={},
        remember_theme=False,
        refresh_interval=1.0,
    )
    async with app.run_test(size=(150, 40)) as pilot:
        tree = app.main.query_one(SlotTree)
        view = app.main.query_one(TerminalView)
        await wait_for(pilot, lambda: {first, second} <= set(tree.slots), 30, "both slots")
        assert all("RUNNING" in tree.label_text(n) for n in (first, second))
        assert tree.selected == first

        # The agent's prompt shows up in the embedded terminal...
        await wait_for(pilot, lambda: "dummy>" in view.text(), 30, "agent output")
        # ...and what we type reaches it and comes back.
        await pilot.press("t")
        assert app.focused is view
        await pilot.press(*"hello dashboard", "enter")
        await wait_for(pilot, lambda: "You said: hello dashboard" in view.text(), 15, "echo")
        await pilot.press("ctrl+right_square_bracket")
        assert app.focused is tree

        # Pause shows FROZEN (Incus agrees), resume brings it back.
        await pilot.press("p")
        await wait_for(pilot, lambda: "FROZEN" in tree.label_text(first), 20, "FROZEN")
        assert Incus().status(first) == "Frozen"
        await pilot.press("p")
        await wait_for(pilot, lambda: "RUNNING" in tree.label_text(first), 20, "RUNNING")

        # A threat written to the audit log shows in the feed.
        line = (
            '{"id":"e2e-1","timestamp":"2026-05-01T10:00:00Z","level":"high",'
            '"category":"process","title":"Reverse shell detected","description":"nc -e",'
            '"evidence":{},"action":"alerted"}\n'
        )
        with open(audit / f"{second}.jsonl", "a") as handle:
            handle.write(line)
        await wait_for(pilot, lambda: "Reverse shell detected" in screen_text(app), 2, "threat")

        # Kill the second slot through the confirmation dialog.
        tree.select(second)
        await wait_for(pilot, lambda: app.main.selected == second)
        await pilot.press("k")
        await wait_for(pilot, lambda: app.focused is not None and app.focused.id == "cancel")
        await pilot.press("tab", "enter")
        await wait_for(pilot, lambda: second not in tree.slots, 60, "slot removed")
        assert not Incus().instance_exists(second)
        assert first in tree.slots


async def test_terminal_pane_shows_the_right_screen_after_a_flood(
    coi: CoiRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The agent prints ~2 MB at once through `incus exec … tmux attach`. Whatever the pane
    had to drop to keep up (and tmux repainted), the final screen is exact: the last numbers
    in order, the end marker, the agent's prompt; and what is drawn is what pyte holds."""
    import re

    workspace = tmp_path / "ws"
    workspace.mkdir()
    coi.ok("shell", "--background", "--tool", "dummy", "-w", str(workspace))
    monkeypatch.setenv("COI_CONTAINER_PREFIX", coi.prefix)
    monkeypatch.setenv("COI_HOME", str(coi.home))
    app = CoiApp(
        threats=AuditTail(coi.home / "audit"),
        workspace=str(workspace),
        keymap={},
        remember_theme=False,
        refresh_interval=1.0,
    )
    last = 300000
    async with app.run_test(size=(150, 40)) as pilot:
        view = app.main.query_one(TerminalView)
        await wait_for(pilot, lambda: "dummy>" in view.text(), 30, "agent output")
        await pilot.press("t")
        # `!cmd` makes the dummy agent run cmd and print its output in one go.
        view.send(f"!seq 1 {last}; echo FLOOD-DONE\r".encode())
        done = re.compile(rf"^{last - 1}\s*\n{last}\s*\nFLOOD-DONE\s*\n.*dummy>", re.M)
        await wait_for(pilot, lambda: done.search(view.text()), 60, "the end of the flood")
        text = view.text()
        numbers = [int(line) for line in text.splitlines() if line.strip().isdigit()]
        assert numbers == list(range(last - len(numbers) + 1, last + 1)), text
        assert len(numbers) >= 20  # the pane's rows above the marker are all numbers, in order
        # The rows drawn on screen are the rows pyte holds (nothing left half-rendered).
        await wait_for(
            pilot,
            lambda: view.rendered_text().rstrip() == view.text().rstrip(),
            10,
            "rendered rows up to date",
        )
        feeder = view.feeder
        assert feeder is not None
        print(f"flood: {feeder.stats}")

        # The repaint path through `incus exec` (a helper running tmux refresh-client in the
        # container): blank our copy of the screen, ask, and get the exact screen back.
        transport = view.transport
        assert transport is not None and transport.can_redraw
        with feeder.lock:
            view.emulator.feed(b"\x1b[H\x1b[2J")
        assert "FLOOD-DONE" not in view.text()
        transport.redraw()
        # (The last row is tmux's status line, whose clock may have moved meanwhile.)
        await wait_for(
            pilot,
            lambda: view.text().splitlines()[:-1] == text.splitlines()[:-1],
            30,
            "tmux's repaint",
        )
