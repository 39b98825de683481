"""Several Incus daemons behind one dashboard: the local socket and every configured remote.

`MultiHostBackend` holds one backend per host and routes each action to the right one. A slot
is keyed like Incus names instances on a remote: `remote:container` (container names cannot
contain ':'), and the plain container name on the local daemon. Listings are per host
(`list_host`) so the dashboard can run each in its own worker: a remote that does not answer
never delays the others. `HostBoard` is the UI-free bookkeeping of what each host last said
(online with its slots, connecting, or offline with a reason). Every method may block and is
only called from worker threads, except `hosts()` and the key helpers."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace

from coi_tui.config import load_settings
from coi_tui.core.errors import CoiError
from coi_tui.dashboard.attach import SessionState
from coi_tui.dashboard.backend import (
    Backend,
    EventCallback,
    IncusBackend,
    SlotInfo,
    SnapshotInfo,
)
from coi_tui.incus import Incus
from coi_tui.incus.client import default_socket_path
from coi_tui.incus.remotes import _config_files, get_remote, load_remotes
from coi_tui.terminal.transport import Transport

LOCAL = ""  # the host key of the local daemon
# Reaching a remote (TCP + TLS) must fail fast: its listing runs beside the local one.
REMOTE_CONNECT_TIMEOUT = 3.0
# A host that answered before is shown offline only after this many failed listings in a row,
# so one lost poll does not make its slots vanish and come back.
OFFLINE_AFTER = 2


def slot_key(host: str, container: str) -> str:
    return f"{host}:{container}" if host else container


def split_key(key: str) -> tuple[str, str]:
    """(host, container) of a slot key."""
    host, sep, container = key.partition(":")
    return (host, container) if sep else (LOCAL, key)


@dataclass(frozen=True)
class Host:
    name: str  # LOCAL or the remote's name
    address: str = ""

    @property
    def label(self) -> str:
        return self.name or "local"


class MultiHostBackend:
    """The Backend protocol over several hosts (ordered: local first, then remotes by name)."""

    def __init__(
        self,
        backends: Mapping[str, Backend],
        *,
        addresses: Mapping[str, str] | None = None,
        read_only: bool = False,
    ) -> None:
        if not backends:
            raise CoiError("no Incus host to show")
        order = sorted(backends, key=lambda h: (h != LOCAL, h))
        self.backends: dict[str, Backend] = {h: backends[h] for h in order}
        self._hosts = [Host(h, (addresses or {}).get(h, "")) for h in order]
        self.read_only = read_only or any(b.read_only for b in self.backends.values())

    @classmethod
    def wrap(cls, backend: Backend) -> MultiHostBackend:
        """One plain backend as a single host (its remote's name, if it has one)."""
        if isinstance(backend, MultiHostBackend):
            return backend
        host = str(getattr(backend, "host", LOCAL) or LOCAL)
        return cls({host: backend}, read_only=backend.read_only)

    @classmethod
    def from_config(
        cls,
        *,
        remotes: Sequence[str] | None = None,
        local: bool = True,
        read_only: bool = False,
        connect_timeout: float = REMOTE_CONNECT_TIMEOUT,
    ) -> MultiHostBackend:
        """The local daemon (unless local=False) and the named remotes (None: every configured
        one). Nothing connects here; the first listing does."""
        settings = load_settings()
        if remotes is None:
            chosen = list(load_remotes(_config_files()).values())
        else:
            chosen = [get_remote(name) for name in remotes]
        backends: dict[str, Backend] = {}
        addresses: dict[str, str] = {}
        if local:
            # An explicit socket: $COI_REMOTE must not turn the local host into a remote.
            socket = settings.socket or default_socket_path()
            backends[LOCAL] = IncusBackend(
                Incus(socket, project=settings.project), settings, read_only=read_only
            )
        for remote in chosen:
            incus = Incus(remote=remote)
            incus.connect_timeout = connect_timeout
            backends[remote.name] = IncusBackend(incus, settings, read_only=read_only)
            addresses[remote.name] = remote.address
        return cls(backends, addresses=addresses, read_only=read_only)

    # ------------------------------------------------------------------ hosts
    def hosts(self) -> list[Host]:
        return list(self._hosts)

    @property
    def grouped(self) -> bool:
        """Show a host level in the tree: more than one host, or a remote at all."""
        return list(self.backends) != [LOCAL]

    @property
    def prefix(self) -> str:
        return str(getattr(next(iter(self.backends.values())), "prefix", ""))

    def backend(self, host: str) -> Backend:
        try:
            return self.backends[host]
        except KeyError:
            raise CoiError(f"no host '{host}' in this dashboard") from None

    def _route(self, key: str) -> tuple[Backend, str]:
        host, container = split_key(key)
        return self.backend(host), container

    # ------------------------------------------------------------------ reading
    def list_host(self, host: str) -> list[SlotInfo]:
        slots = self.backend(host).list_slots()
        if host == LOCAL:
            return slots
        return [replace(s, name=slot_key(host, s.name), host=host) for s in slots]

    def list_slots(self, timeout: float | None = None) -> list[SlotInfo]:
        """Every host at once, each in its own thread; hosts that fail or have not answered
        within `timeout` are left out (an error only when no host answered)."""
        pool = ThreadPoolExecutor(len(self.backends), thread_name_prefix="coi-host")
        futures = {h: pool.submit(self.list_host, h) for h in self.backends}
        wait(futures.values(), timeout=timeout)
        pool.shutdown(wait=False)
        slots: list[SlotInfo] = []
        errors: list[str] = []
        for host, future in futures.items():
            if not future.done():
                errors.append(f"{Host(host).label}: no answer")
            elif future.exception() is not None:
                errors.append(f"{Host(host).label}: {future.exception()}")
            else:
                slots.extend(future.result())
        if errors and len(errors) == len(futures):
            raise CoiError("; ".join(errors))
        return slots

    def list_snapshots(self, name: str) -> list[SnapshotInfo]:
        backend, container = self._route(name)
        return [replace(s, container=name) for s in backend.list_snapshots(container)]

    def processes(self, name: str) -> str:
        backend, container = self._route(name)
        return backend.processes(container)

    def tools(self) -> list[str]:
        return next(iter(self.backends.values())).tools()

    def profiles(self) -> list[str]:
        return next(iter(self.backends.values())).profiles()

    # ------------------------------------------------------------------ actions
    def pause(self, name: str) -> None:
        backend, container = self._route(name)
        backend.pause(container)

    def resume(self, name: str) -> None:
        backend, container = self._route(name)
        backend.resume(container)

    def kill(self, name: str) -> None:
        backend, container = self._route(name)
        backend.kill(container)

    def snapshot(self, name: str) -> str:
        backend, container = self._route(name)
        return backend.snapshot(container)

    def restore(self, name: str, snapshot: str) -> None:
        backend, container = self._route(name)
        backend.restore(container, snapshot)

    def branch(self, name: str, snapshot: str) -> str:
        host, container = split_key(name)
        return slot_key(host, self.backend(host).branch(container, snapshot))

    def new_slot(self, workspace: str, tool: str, profile: str, host: str = LOCAL) -> str:
        if host not in self.backends:
            host = next(iter(self.backends))
        return slot_key(host, self.backend(host).new_slot(workspace, tool, profile))

    # ------------------------------------------------------------------ terminals
    def session_state(self, name: str) -> SessionState:
        backend, container = self._route(name)
        probe = getattr(backend, "session_state", None)
        # A backend that cannot tell (an older or minimal one): attach and see.
        return SessionState.READY if probe is None else SessionState(probe(container))

    def open_terminal(self, name: str, columns: int, lines: int, read_only: bool) -> Transport:
        backend, container = self._route(name)
        return backend.open_terminal(container, columns, lines, read_only)

    def attach(self, name: str) -> int:
        backend, container = self._route(name)
        return backend.attach(container)

    def watch_events(self, callback: EventCallback, stop: threading.Event) -> None:
        """The local daemon's lifecycle events (remotes are polled)."""
        local = self.backends.get(LOCAL)
        if local is None:
            stop.wait()
            return
        local.watch_events(callback, stop)


# ---------------------------------------------------------------------- what each host said
@dataclass
class HostState:
    host: Host
    status: str = "connecting"  # connecting | online | offline
    slots: list[SlotInfo] = field(default_factory=list)
    error: str = ""
    failures: int = 0  # failed listings in a row

    @property
    def detail(self) -> str:
        """The text after the host's name in the tree."""
        if self.status == "offline":
            return f"offline: {self.reason}"
        if self.status == "connecting":
            return "connecting…"
        if self.failures:
            return f"not answering ({self.reason})"
        return self.host.address

    @property
    def reason(self) -> str:
        """The error without the host's name and address, which the row already shows."""
        text = self.error
        for where in (f"remote '{self.host.name}' ({self.host.address}) ", f"{self.host.address} "):
            if self.host.name and text.startswith(where):
                text = text[len(where) :]
                break
        return text.removeprefix("is ")


class HostBoard:
    """The last word of every host. `loaded`/`failed` return a change worth telling the user
    about (or None)."""

    def __init__(self, hosts: Sequence[Host], offline_after: int = OFFLINE_AFTER) -> None:
        self.states = {h.name: HostState(h) for h in hosts}
        self.offline_after = offline_after

    def loaded(self, host: str, slots: list[SlotInfo]) -> str | None:
        state = self.states[host]
        was = state.status
        state.status, state.slots, state.error, state.failures = "online", list(slots), "", 0
        return "online" if was == "offline" else None

    def failed(self, host: str, error: str) -> str | None:
        state = self.states[host]
        state.failures += 1
        changed = error != state.error
        state.error = error
        if state.status != "online" or state.failures >= self.offline_after:
            went = state.status != "offline"
            state.status = "offline"
            return "offline" if went or changed else None
        return None

    def visible_slots(self, hide_offline: bool = True) -> list[SlotInfo]:
        """The slots to show: an offline host's are hidden (kept when hide_offline is False,
        the single-daemon view, where the last listing stays on screen)."""
        out: list[SlotInfo] = []
        for state in self.states.values():
            if state.status != "offline" or not hide_offline:
                out.extend(state.slots)
        return out

    def offline(self) -> list[str]:
        return [h for h, s in self.states.items() if s.status == "offline"]


__all__ = [
    "LOCAL",
    "Host",
    "HostBoard",
    "HostState",
    "MultiHostBackend",
    "slot_key",
    "split_key",
]
