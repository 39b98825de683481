"""Messages that background workers post to the dashboard (workers never touch widgets)."""

from __future__ import annotations

from typing import Any

from textual.message import Message

from coi_tui.dashboard.backend import SlotInfo, SnapshotInfo
from coi_tui.dashboard.threats import ThreatEvent
from coi_tui.terminal.transport import Transport


class SlotsLoaded(Message):
    def __init__(self, slots: list[SlotInfo]) -> None:
        super().__init__()
        self.slots = slots


class SlotsFailed(Message):
    def __init__(self, error: str) -> None:
        super().__init__()
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


class LifecycleEvent(Message):
    def __init__(self, event: dict[str, Any]) -> None:
        super().__init__()
        self.event = event


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
