"""The dashboard's fire drill (`f`): the drill runs in a worker (a fake runner here; the real
drill is tests/integration/test_health_drill.py) and its table replaces the progress."""

from __future__ import annotations

import threading

import pytest

from coi_tui.core.errors import CoiError
from coi_tui.health.drill import DETECTED, MISSED, SKIPPED, DrillReport, ProbeResult, Progress
from coi_tui.screens import drill as drill_screen
from coi_tui.screens.drill import DrillScreen
from tests.ui.helpers import screen_text, wait_for
from tests.ui.test_dashboard import SIZE, make_app, make_backend, started


def fake_report() -> DrillReport:
    return DrillReport(
        "coi-drill-0000aaaa",
        "coi-default",
        [
            ProbeResult(
                "reverse shell (command line)",
                "bash-dev-tcp",
                DETECTED,
                "proc.dev-tcp",
                "critical",
                41.0,
            ),
            ProbeResult("DNS tunnelling", "long-random-label", MISSED, note="no dns.tunnel-label"),
            ProbeResult("process count", "hold-processes", SKIPPED, note="threshold is 0 (off)"),
        ],
        duration_sec=4.2,
    )


async def test_f_runs_the_drill_in_a_worker_and_shows_the_table(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    release = threading.Event()
    threads: list[str] = []

    def runner(progress: Progress) -> DrillReport:
        threads.append(threading.current_thread().name)
        progress("  probe one: detected")
        release.wait(5)
        return fake_report()

    monkeypatch.setattr(drill_screen, "local_drill", runner)
    app = make_app(make_backend())
    async with app.run_test(size=SIZE) as pilot:
        await started(app, pilot)
        assert "health: Fire drill" in [c.title for c in app.get_system_commands(app.screen)]
        await pilot.press("f")
        await wait_for(pilot, lambda: isinstance(app.screen, DrillScreen), what="drill screen")
        await wait_for(pilot, lambda: "probe one: detected" in screen_text(app), what="progress")
        assert threads and threads[0] != threading.main_thread().name
        release.set()
        await wait_for(pilot, lambda: "FAIL: 1 of 2 probes detected" in screen_text(app))
        text = screen_text(app)
        for cell in ("proc.dev-tcp", "41 ms", "NO", "skipped: threshold is 0 (off)"):
            assert cell in text
        assert "DNS tunnelling: no dns.tunnel-label" in text
        await pilot.press("escape")
        await wait_for(pilot, lambda: not isinstance(app.screen, DrillScreen), what="closed")


async def test_a_drill_that_cannot_run_says_why_in_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def runner(progress: Progress) -> DrillReport:
        raise CoiError("image 'coi-default' not found - run 'coi build' first\nmore")

    monkeypatch.setattr(drill_screen, "local_drill", runner)
    app = make_app(make_backend())
    async with app.run_test(size=SIZE) as pilot:
        await started(app, pilot)
        await pilot.press("f")
        await wait_for(pilot, lambda: "could not run: image 'coi-default'" in screen_text(app))
        assert "more" not in screen_text(app)


async def test_read_only_has_no_drill(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(drill_screen, "local_drill", lambda progress: calls.append(1))
    backend = make_backend()
    backend.read_only = True
    app = make_app(backend, read_only=True)
    async with app.run_test(size=SIZE) as pilot:
        await started(app, pilot)
        await pilot.press("f")
        await pilot.pause()
        assert not isinstance(app.screen, DrillScreen) and calls == []
        titles = [c.title for c in app.get_system_commands(app.screen)]
        assert "health: Fire drill" not in titles
