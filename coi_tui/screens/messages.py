"""Every message the dashboard's workers and pollers post to its screen (they never touch
widgets; the screen's handlers own every state change). Widgets' own messages stay nested in
their classes (TerminalView.Ended, SlotTree.SlotSelected), as Textual's widgets do."""

from __future__ import annotations

from textual.message import Message

from coi_tui.dashboard.backend import SlotInfo, SnapshotInfo
from coi_tui.dashboard.egress import EgressView
from coi_tui.dashboard.threats import ThreatEvent
from coi_tui.health.drill import DrillReport
from coi_tui.terminal.transport import Transport


class HostSlotsLoaded(Message):
    """One host's listing."""

    def __init__(self, host: str, slots: list[SlotInfo]) -> None:
        super().__init__()
        self.host = host
        self.slots = slots


class HostSlotsFailed(Message):
    """One host could not be listed (one line)."""

    def __init__(self, host: str, error: str) -> None:
        super().__init__()
        self.host = host
        self.error = error


class SnapshotsLoaded(Message):
    def __init__(self, name: str, snapshots: list[SnapshotInfo]) -> None:
        super().__init__()
        self.name = name
        self.snapshots = snapshots


class ProcessesLoaded(Message):
    def __init__(self, name: str, text: str) -> None:
        super().__init__()
        self.name = name
        self.text = text


class ThreatsArrived(Message):
    def __init__(self, events: list[ThreatEvent]) -> None:
        super().__init__()
        self.events = events


class TerminalOpened(Message):
    def __init__(self, name: str, transport: Transport) -> None:
        super().__init__()
        self.name = name
        self.transport = transport


class TerminalWaiting(Message):
    """The slot runs but its tmux session does not exist yet: the pane waits for it."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name


class TerminalGone(Message):
    """No session to attach to: the container is not running (`running` False), or it runs
    but its tmux session did not appear in time."""

    def __init__(self, name: str, running: bool) -> None:
        super().__init__()
        self.name = name
        self.running = running


class OpFinished(Message):
    """An operation on a slot ended; `error` is one line when it failed."""

    def __init__(self, op: str, name: str, result: str = "", error: str = "") -> None:
        super().__init__()
        self.op = op
        self.name = name
        self.result = result
        self.error = error

    @property
    def ok(self) -> bool:
        return not self.error


class DrillProgress(Message):
    """A line of the fire drill's progress."""

    def __init__(self, line: str) -> None:
        super().__init__()
        self.line = line


class DrillDone(Message):
    """The fire drill ended: its report, or the one line it failed with."""

    def __init__(self, report: DrillReport | None, error: str = "") -> None:
        super().__init__()
        self.report = report
        self.error = error


class EgressLoaded(Message):
    """The selected slot's egress view (None: no slot) and the open approvals per slot."""

    def __init__(self, name: str, view: EgressView | None, counts: dict[str, int]) -> None:
        super().__init__()
        self.name = name
        self.view = view
        self.counts = counts
