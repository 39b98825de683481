"""What the dashboard needs from the world, as one blocking, UI-free interface. `IncusBackend`
is the real one (Incus adapter + SessionManager + snapshots); tests pass a fake. Every method
may block and is only called from worker threads."""

from __future__ import annotations

import shlex
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import psutil

from coi_tui.config import Settings, load_settings
from coi_tui.config.profiles import ProfileSet
from coi_tui.config.settings import SessionOverrides
from coi_tui.core.errors import CoiError
from coi_tui.core.timefmt import format_uptime
from coi_tui.dashboard.attach import SessionState
from coi_tui.incus import Incus, IncusError, Instance, InstanceNotFound
from coi_tui.sessions import snapshots
from coi_tui.sessions.manager import CODE_HOME, SessionManager
from coi_tui.sessions.naming import parse_container_name, tmux_session
from coi_tui.sessions.service import SessionService
from coi_tui.terminal.transport import PtyTransport, Transport
from coi_tui.tools import TOOLS

STATES = {"Running": "RUNNING", "Frozen": "FROZEN", "Stopped": "STOPPED"}


@dataclass(frozen=True)
class SlotInfo:
    """One coi container as the dashboard shows it."""

    name: str
    workspace: str
    slot: int
    tool: str
    state: str  # RUNNING, FROZEN, STOPPED, or Incus's status upper-cased
    persistent: bool = False
    uptime_s: float | None = None
    cpu_pct: float | None = None
    mem_bytes: int | None = None
    ipv4: str = ""
    image: str = ""
    created_at: str = ""
    session_id: str = ""
    profile: str = ""
    pid: int = 0
    host: str = ""  # "" = the local daemon, else the remote's name (then name is host:container)
    extra: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    @property
    def mode(self) -> str:
        return "persistent" if self.persistent else "ephemeral"

    @property
    def container(self) -> str:
        """The instance name on its own daemon (name without the 'remote:' part)."""
        return self.name.partition(":")[2] if self.host else self.name


@dataclass(frozen=True)
class SnapshotInfo:
    container: str
    name: str
    created_at: str
    stateful: bool = False


EventCallback = Callable[[dict[str, Any]], None]


class Backend(Protocol):
    read_only: bool

    def list_slots(self) -> list[SlotInfo]: ...
    def list_snapshots(self, name: str) -> list[SnapshotInfo]: ...
    def pause(self, name: str) -> None: ...
    def resume(self, name: str) -> None: ...
    def kill(self, name: str) -> None: ...
    def snapshot(self, name: str) -> str: ...
    def restore(self, name: str, snapshot: str) -> None: ...
    def branch(self, name: str, snapshot: str) -> str: ...
    def new_slot(self, workspace: str, tool: str, profile: str) -> str: ...
    def processes(self, name: str) -> str: ...
    def tools(self) -> list[str]: ...
    def profiles(self) -> list[str]: ...
    def session_state(self, name: str) -> SessionState: ...
    def open_terminal(self, name: str, columns: int, lines: int, read_only: bool) -> Transport: ...
    def attach(self, name: str) -> int: ...
    def watch_events(self, callback: EventCallback, stop: threading.Event) -> None: ...


def slot_state(status: str) -> str:
    return STATES.get(status, status.upper() or "UNKNOWN")


def format_bytes(value: int | None) -> str:
    if value is None:
        return "-"
    size = float(value)
    for unit in ("B", "K", "M", "G"):
        if size < 1024 or unit == "G":
            return f"{size:.0f}{unit}" if unit in ("B", "K") else f"{size:.1f}{unit}"
        size /= 1024
    return f"{size:.1f}G"


def process_start(pid: int) -> float | None:
    """Start time (epoch seconds) of a host pid: the container's init gives its uptime."""
    if pid <= 0:
        return None
    try:
        return float(psutil.Process(pid).create_time())
    except Exception:  # gone, or no permission: uptime is unknown, not an error
        return None


def profile_names(cwd: Path | None = None, env: dict[str, str] | None = None) -> list[str]:
    """The profile picker's choices: every profile `coi shell --profile` accepts here, the
    built-in default and hardened first (as `coi profile list` shows them)."""
    return ProfileSet.discover(cwd or Path.cwd(), env).available()


class IncusBackend:
    """The real backend. CPU% is computed from the difference between two listings."""

    def __init__(
        self,
        incus: Incus | None = None,
        settings: Settings | None = None,
        read_only: bool = False,
    ) -> None:
        self.settings = settings or load_settings()
        self.incus = incus or Incus(self.settings.socket or None, project=self.settings.project)
        self.read_only = read_only
        # The remote this backend talks to ("" = the local socket).
        self.host = self.incus.remote.name if self.incus.remote is not None else ""
        self._cpu: dict[str, tuple[float, int]] = {}  # name -> (monotonic, cpu usage ns)
        self._started: dict[tuple[str, int], float | None] = {}
        # Sessions as the dashboard's own settings shape them (kill, branch, restore). Their
        # progress lines would scribble over the dashboard: they are dropped.
        self.service = SessionService(self.incus, self.settings, say=quiet)

    @property
    def prefix(self) -> str:
        return self.settings.container_prefix

    @property
    def manager(self) -> SessionManager:
        return self.service.manager

    # ------------------------------------------------------------------ reading
    def list_slots(self) -> list[SlotInfo]:
        instances = self.incus.list_instances(self.prefix, running_state=True)
        now = time.monotonic()
        slots = [self._slot(i, now) for i in instances if parse_container_name(self.prefix, i.name)]
        live = {s.name for s in slots}
        self._cpu = {k: v for k, v in self._cpu.items() if k in live}
        return slots

    def _slot(self, instance: Instance, now: float) -> SlotInfo:
        config = instance.config
        parsed = parse_container_name(self.prefix, instance.name)
        state = instance.state or {}
        cpu_ns = int((state.get("cpu") or {}).get("usage") or 0)
        mem = (state.get("memory") or {}).get("usage")
        cpu_pct = None
        if instance.running and cpu_ns:
            previous = self._cpu.get(instance.name)
            if previous is not None and now > previous[0]:
                cpu_pct = max(0.0, (cpu_ns - previous[1]) / 1e9 / (now - previous[0]) * 100)
            self._cpu[instance.name] = (now, cpu_ns)
        pid = instance.pid
        uptime = None
        # A remote's pid is a process on another machine: its start time is not ours to read.
        if pid and not self.host and instance.status in ("Running", "Frozen"):
            key = (instance.name, pid)
            if key not in self._started:
                self._started[key] = process_start(pid)
            started = self._started[key]
            if started is not None:
                uptime = max(0.0, time.time() - started)
        return SlotInfo(
            name=instance.name,
            workspace=config.get("user.coi.workspace", ""),
            slot=parsed[1] if parsed else int(config.get("user.coi.slot", "0") or 0),
            tool=config.get("user.coi.tool", ""),
            state=slot_state(instance.status),
            persistent=config.get("user.coi.persistent") == "true",
            uptime_s=uptime,
            cpu_pct=cpu_pct,
            mem_bytes=int(mem) if mem and instance.status != "Stopped" else None,
            ipv4=instance.ipv4,
            image=config.get("user.coi.image", ""),
            created_at=instance.created_at,
            session_id=config.get("user.coi.session_id", ""),
            profile=config.get("user.coi.profile", ""),
            pid=pid,
        )

    def list_snapshots(self, name: str) -> list[SnapshotInfo]:
        return [
            SnapshotInfo(s.container, s.name, s.created_at, s.stateful)
            for s in snapshots.list_snapshots(self.incus, name)
        ]

    def processes(self, name: str) -> str:
        result = self.incus.exec_capture(
            name, ["ps", "-eo", "pid,user,pcpu,pmem,etime,args", "--sort=pid"], timeout=10
        )
        if not result.ok:
            raise CoiError(f"ps failed in {name}: {result.stderr.strip()}")
        return result.stdout

    def tools(self) -> list[str]:
        return sorted(TOOLS)

    def profiles(self) -> list[str]:
        return profile_names()

    # ------------------------------------------------------------------ actions
    def _writable(self) -> None:
        if self.read_only:
            raise CoiError("the dashboard is read-only (--read-only)")

    def pause(self, name: str) -> None:
        self._writable()
        self.incus.freeze(name)

    def resume(self, name: str) -> None:
        self._writable()
        self.incus.unfreeze(name)

    def kill(self, name: str) -> None:
        self._writable()
        self.service.kill(name)

    def snapshot(self, name: str) -> str:
        self._writable()
        return snapshots.create(self.incus, name).name

    def restore(self, name: str, snapshot: str) -> None:
        self._writable()
        snapshots.restore(self.manager, name, snapshot)

    def branch(self, name: str, snapshot: str) -> str:
        self._writable()
        return self.service.branch(name, snapshot).container

    def new_slot(self, workspace: str, tool: str, profile: str) -> str:
        """What `coi shell --background --tool TOOL --profile PROFILE` does: the profile
        ("" = the configured one) and the tool go into the session's settings, so its
        limits, environment, network policy and image apply; then the session service starts
        it (the container is removed again if the agent cannot start)."""
        self._writable()
        service = SessionService.for_profile(
            self.incus, profile, SessionOverrides(tool=tool), say=quiet
        )
        return service.start(service.request(workspace), interactive=False).container

    # ------------------------------------------------------------------ terminals
    def terminal_argv(self, name: str, read_only: bool) -> list[str]:
        uid = self.settings.code_uid
        # -r: a read-only dashboard must not type into the agent's session.
        attach = ["tmux", "attach", "-t", tmux_session(name)] + (["-r"] if read_only else [])
        env = {
            "HOME": CODE_HOME,
            "USER": self.settings.code_user,
            "LANG": "C.UTF-8",
            "TERM": "xterm-256color",
        }
        return self.incus.exec_argv(
            name, attach, user=uid, group=uid, cwd=self.manager.mounted(name), env=env, tty=True
        )

    def session_state(self, name: str) -> SessionState:
        """Whether the pane can attach: the container runs and its agent's tmux session
        exists. A daemon that does not answer raises (the pane says so and tries later)."""
        try:
            status = self.incus.status(name)
        except InstanceNotFound:
            return SessionState.GONE
        if status != "Running":
            return SessionState.GONE  # stopped, stopping, frozen (an exec would hang)
        if self.manager.tmux_exists(name):
            return SessionState.READY
        return SessionState.STARTING

    def open_terminal(self, name: str, columns: int, lines: int, read_only: bool) -> Transport:
        argv = self.terminal_argv(name, read_only or self.read_only)
        env = self.incus.cli_env()
        env["TERM"] = "xterm-256color"
        return PtyTransport(argv, columns, lines, env=env)

    def attach(self, name: str) -> int:
        with self.manager.attached(name):
            return int(self.manager.attach(name))

    def watch_events(self, callback: EventCallback, stop: threading.Event) -> None:
        if self.host:
            # The events websocket goes through pylxd over the local socket only; a remote's
            # slots are kept current by the poll.
            stop.wait()
            return

        def on_event(event: dict[str, Any]) -> bool:
            callback(event)
            return not stop.is_set()

        self.incus.watch_events(on_event, types=("lifecycle",), stop=stop)


def quiet(_line: str) -> None:
    """The say of the dashboard's sessions: their progress lines have no place on its screen."""


def describe(slot: SlotInfo) -> list[tuple[str, str]]:
    """The Info tab's rows."""
    if slot.host:
        where = [("Host", slot.host), ("Container", slot.container)]
        attach = f"coi --remote {shlex.quote(slot.host)} attach {shlex.quote(slot.container)}"
    else:
        where = [("Container", slot.name)]
        attach = f"coi attach {shlex.quote(slot.name)}"
    return [
        *where,
        ("State", slot.state),
        ("Workspace", slot.workspace or "-"),
        ("Slot", str(slot.slot)),
        ("Tool", slot.tool or "-"),
        ("Mode", slot.mode),
        ("Profile", slot.profile or "-"),
        ("IPv4", slot.ipv4 or "-"),
        ("Image", slot.image or "-"),
        ("Created", slot.created_at or "-"),
        ("Session", slot.session_id or "-"),
        ("Uptime", format_uptime(slot.uptime_s)),
        ("CPU", "-" if slot.cpu_pct is None else f"{slot.cpu_pct:.1f}%"),
        ("Memory", format_bytes(slot.mem_bytes)),
        ("Attach", attach),
    ]


def is_lifecycle_for(event: dict[str, Any], prefix: str) -> bool:
    """A lifecycle event about one of our containers (source /1.0/instances/<name>...)."""
    source = str((event.get("metadata") or {}).get("source", ""))
    marker = "/1.0/instances/"
    if marker not in source:
        return False
    name = source.split(marker, 1)[1].split("/", 1)[0].split("?", 1)[0]
    return name.startswith(prefix)


__all__ = [
    "Backend",
    "IncusBackend",
    "IncusError",
    "SlotInfo",
    "SnapshotInfo",
    "describe",
    "format_bytes",
    "format_uptime",
]
