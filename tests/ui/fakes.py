"""A scripted Backend for pilot tests: records every call, fails on demand."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from coi_tui.dashboard.attach import SessionState
from coi_tui.dashboard.backend import SlotInfo, SnapshotInfo
from coi_tui.dashboard.threats import PushSource, ThreatEvent
from coi_tui.terminal.transport import FakeTransport

WORKSPACE = "/home/dev/project"
OTHER = "/home/dev/other"


def slot(
    name: str,
    workspace: str = WORKSPACE,
    number: int = 1,
    state: str = "RUNNING",
    tool: str = "dummy",
    persistent: bool = False,
) -> SlotInfo:
    return SlotInfo(
        name=name,
        workspace=workspace,
        slot=number,
        tool=tool,
        state=state,
        persistent=persistent,
        uptime_s=125.0,
        cpu_pct=3.0,
        mem_bytes=50 * 1024 * 1024,
        ipv4="10.0.0.5",
    )


def threat(
    id: str, container: str, level: str = "high", title: str = "Reverse shell detected"
) -> ThreatEvent:
    return ThreatEvent(
        id=id,
        timestamp="2026-05-01T10:20:30.123Z",
        level=level,
        category="process",
        title=title,
        container=container,
        action="alerted",
    )


class FakeBackend:
    prefix = "coi-"

    def __init__(self, slots: list[SlotInfo] | None = None, read_only: bool = False) -> None:
        self.slots = list(slots or [])
        self.snaps: dict[str, list[SnapshotInfo]] = {}
        self.read_only = read_only
        self.calls: list[tuple[Any, ...]] = []
        self.fail: dict[str, Exception] = {}
        self.transports: dict[str, FakeTransport] = {}
        # Scripted terminals: a slot's tmux session state (READY when not set), and the
        # attaches that end at once (each open_terminal of a listed slot takes one).
        self.sessions: dict[str, SessionState] = {}
        self.failing_attaches: dict[str, int] = {}
        self.events_callback: Callable[[dict[str, Any]], None] | None = None
        self.events_ready = threading.Event()
        self._lock = threading.Lock()

    def _call(self, *call: Any) -> None:
        with self._lock:
            self.calls.append(call)
        error = self.fail.get(call[0])
        if error is not None:
            raise error

    def called(self, op: str) -> list[tuple[Any, ...]]:
        with self._lock:
            return [c for c in self.calls if c[0] == op]

    def _replace(self, name: str, **changes: Any) -> None:
        from dataclasses import replace

        self.slots = [replace(s, **changes) if s.name == name else s for s in self.slots]

    def list_slots(self) -> list[SlotInfo]:
        self._call("list_slots")
        return list(self.slots)

    def list_snapshots(self, name: str) -> list[SnapshotInfo]:
        self._call("list_snapshots", name)
        return list(self.snaps.get(name, []))

    def pause(self, name: str) -> None:
        self._call("pause", name)
        self._replace(name, state="FROZEN")

    def resume(self, name: str) -> None:
        self._call("resume", name)
        self._replace(name, state="RUNNING")

    def kill(self, name: str) -> None:
        self._call("kill", name)
        self.slots = [s for s in self.slots if s.name != name]

    def snapshot(self, name: str) -> str:
        self._call("snapshot", name)
        snaps = self.snaps.setdefault(name, [])
        snap = SnapshotInfo(name, f"snap{len(snaps)}", "2026-05-01T10:00:00Z")
        snaps.append(snap)
        return snap.name

    def restore(self, name: str, snapshot: str) -> None:
        self._call("restore", name, snapshot)

    def branch(self, name: str, snapshot: str) -> str:
        self._call("branch", name, snapshot)
        source = next(s for s in self.slots if s.name == name)
        new = slot(name[:-1] + "9", source.workspace, 9)
        self.slots.append(new)
        return new.name

    def new_slot(self, workspace: str, tool: str, profile: str) -> str:
        self._call("new_slot", workspace, tool, profile)
        new = slot("coi-newslot0-1", workspace, 1, tool=tool)
        self.slots.append(new)
        return new.name

    def processes(self, name: str) -> str:
        self._call("processes", name)
        return "PID USER COMMAND\n1 root /sbin/init\n42 code dummy"

    def tools(self) -> list[str]:
        return ["aider", "claude", "dummy", "opencode"]

    def profiles(self) -> list[str]:
        return ["fast"]

    def session_state(self, name: str) -> SessionState:
        self._call("session_state", name)
        return self.sessions.get(name, SessionState.READY)

    def open_terminal(self, name: str, columns: int, lines: int, read_only: bool) -> FakeTransport:
        self._call("open_terminal", name, columns, lines, read_only)
        transport = FakeTransport()
        missing = self.sessions.get(name, SessionState.READY) is not SessionState.READY
        if missing or self.failing_attaches.get(name, 0) > 0:
            # `tmux attach` that exits at once (no such session, a lost exec): EOF, nothing else.
            if not missing:
                self.failing_attaches[name] -= 1
            transport.close()
            self.transports[name] = transport
            return transport
        transport.emit(f"dummy> hello from {name}\r\n".encode())
        self.transports[name] = transport
        return transport

    def attach(self, name: str) -> int:
        self._call("attach", name)
        return 0

    def watch_events(
        self, callback: Callable[[dict[str, Any]], None], stop: threading.Event
    ) -> None:
        self.events_callback = callback
        self.events_ready.set()
        stop.wait()


__all__ = ["OTHER", "WORKSPACE", "FakeBackend", "PushSource", "slot", "threat"]
