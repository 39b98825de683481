"""The fire drill from the dashboard (`f`): runs health/drill.py in a thread worker and shows
its progress, then the per-detector table. Escape closes; a drill still running finishes
(and deletes its container) in the background."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Label, Static

from coi_tui.config import load_settings
from coi_tui.dashboard.poller import one_line
from coi_tui.health.drill import DETECTED, MISSED, DrillReport, Progress, run_drill
from coi_tui.incus import Incus
from coi_tui.screens.messages import DrillDone, DrillProgress

DrillRunner = Callable[[Progress], DrillReport]


def local_drill(progress: Progress) -> DrillReport:
    """The drill on this machine, for the user's COI home (what `coi health --drill` runs)."""
    settings = load_settings()
    return run_drill(settings, Incus(settings.socket or None, settings.project), progress)


class DrillScreen(ModalScreen[None]):
    DEFAULT_CSS = """
    DrillScreen { align: center middle; }
    DrillScreen > Vertical {
        width: 110; max-width: 100%; height: auto; max-height: 90%; padding: 1 2;
        border: thick $accent; background: $panel;
    }
    DrillScreen #drill-title { text-style: bold; margin-bottom: 1; }
    DrillScreen #drill-status { margin-bottom: 1; }
    DrillScreen DataTable { height: auto; max-height: 20; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "close", "Close", id="drill.close"),
    ]

    def __init__(self, runner: DrillRunner | None = None) -> None:
        super().__init__()
        self.runner = runner or local_drill
        self.report: DrillReport | None = None

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label("Fire drill: one harmless probe per threat detector", id="drill-title")
            yield Static("starting...", id="drill-status", markup=False)
            yield DataTable(id="drill-table", cursor_type="row", zebra_stripes=True)

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        table.add_columns("Detector", "Probe", "Detected", "Rule", "Latency")
        self.run_drill()

    @work(thread=True, exclusive=True, exit_on_error=False, group="drill")
    def run_drill(self) -> None:
        # never touches widgets: everything goes back as messages
        def progress(line: str) -> None:
            self.post_message(DrillProgress(line))

        try:
            report = self.runner(progress)
        except Exception as exc:  # a CoiError's one line; anything else must not crash the app
            self.post_message(DrillDone(None, one_line(exc)))
            return
        self.post_message(DrillDone(report))

    @on(DrillProgress)
    def _progress(self, message: DrillProgress) -> None:
        self.query_one("#drill-status", Static).update(message.line.strip())

    @on(DrillDone)
    def _done(self, message: DrillDone) -> None:
        status = self.query_one("#drill-status", Static)
        if message.report is None:
            status.update(f"The drill could not run: {message.error}")
            return
        self.report = report = message.report
        table = self.query_one(DataTable)
        for r in report.results:
            detected = {DETECTED: "yes", MISSED: "NO"}.get(r.status, f"skipped: {r.note}")
            latency = f"{r.latency_ms:.0f} ms" if r.latency_ms is not None else "-"
            table.add_row(r.detector, r.probe, detected, r.rule_id or "-", latency)
        ran = [r for r in report.results if r.status in (DETECTED, MISSED)]
        found = sum(r.status == DETECTED for r in ran)
        verdict = "PASS" if report.ok else "FAIL"
        missed = [f"{r.detector}: {r.note}" for r in report.results if r.status == MISSED]
        status.update(
            f"{verdict}: {found} of {len(ran)} probes detected in {report.duration_sec:.1f}s"
            + "".join(f"\n{line}" for line in missed)
        )

    def action_close(self) -> None:
        self.dismiss(None)
