"""Snapshots of a session's container: create, list, restore, delete. Branching (a new slot of
the same workspace started from a snapshot, to try an experiment in parallel) starts a
session, so it is the session service's (sessions/service.py).

A snapshot holds the whole container, /home/code and the agent's state included. The workspace
is a host mount and is not part of it.
"""

from __future__ import annotations

import shutil
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from coi_tui.core.errors import CoiError
from coi_tui.incus import Incus
from coi_tui.sessions.manager import Session, SessionManager
from coi_tui.sessions.naming import parse_container_name
from coi_tui.tools import get_tool


@dataclass(frozen=True)
class Snapshot:
    container: str
    name: str
    created_at: str
    stateful: bool
    size: int = 0

    @classmethod
    def from_api(cls, container: str, data: dict[str, Any]) -> Snapshot:
        return cls(
            container=container,
            name=str(data.get("name", "")).split("/")[-1],
            created_at=str(data.get("created_at", "")),
            stateful=bool(data.get("stateful", False)),
            size=int(data.get("size") or 0),
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "container": self.container,
            "name": self.name,
            "created_at": self.created_at,
            "stateful": self.stateful,
            "size": self.size,
        }


def auto_name() -> str:
    return "snap-" + datetime.now(UTC).strftime("%Y%m%d-%H%M%S")


def list_snapshots(incus: Incus, container: str) -> list[Snapshot]:
    incus.get_instance(container)  # clear error when the container is missing
    items = [Snapshot.from_api(container, s) for s in incus.list_snapshots(container)]
    return sorted(items, key=lambda s: s.created_at)


def get_snapshot(incus: Incus, container: str, name: str) -> Snapshot:
    for snap in list_snapshots(incus, container):
        if snap.name == name:
            return snap
    raise CoiError(
        f"snapshot '{name}' not found for container '{container}' (see 'coi snapshot list')"
    )


def create(
    incus: Incus, container: str, name: str | None = None, stateful: bool = False
) -> Snapshot:
    name = name or auto_name()
    existing = {s.name for s in list_snapshots(incus, container)}
    if name in existing:
        raise CoiError(f"snapshot '{name}' already exists for container '{container}'")
    if stateful:
        require_stateful(incus, container)
    incus.create_snapshot(container, name, stateful=stateful)
    return get_snapshot(incus, container, name)


def require_stateful(incus: Incus, container: str) -> None:
    """Stateful snapshots need CRIU on the host and migration.stateful on the container."""
    instance = incus.get_instance(container)
    if instance.expanded_config.get("migration.stateful") != "true":
        raise CoiError(
            f"stateful snapshots need migration.stateful=true on '{container}' "
            f"('incus config set {container} migration.stateful=true', then restart it) and "
            "CRIU on the host; or take a plain snapshot (without --stateful)"
        )
    if shutil.which("criu") is None:
        raise CoiError(
            "stateful snapshots need CRIU on the host (not installed); take a plain snapshot"
        )


def delete(incus: Incus, container: str, name: str) -> None:
    get_snapshot(incus, container, name)
    incus.delete_snapshot(container, name)


def session_of_container(manager: SessionManager, name: str) -> Session:
    """Rebuild the Session of an existing coi container from its config."""
    instance = manager.incus.get_instance(name)
    parsed = parse_container_name(manager.settings.container_prefix, name)
    config = instance.config
    return Session(
        container=name,
        session_id=config.get("user.coi.session_id") or str(uuid.uuid4()),
        slot=parsed[1] if parsed else int(config.get("user.coi.slot", "0") or 0),
        workspace=config.get("user.coi.workspace", ""),
        persistent=config.get("user.coi.persistent") == "true",
        tool=get_tool(config.get("user.coi.tool") or manager.settings.tool),
    )


def restore(manager: SessionManager, container: str, name: str, stateful: bool = False) -> None:
    """Roll the container back to the snapshot; a running one is stopped, restored, restarted
    and its agent started again. --stateful restores the memory state of a stateful snapshot
    (the container comes back running as it was)."""
    incus = manager.incus
    snap = get_snapshot(incus, container, name)
    if stateful:
        if not snap.stateful:
            raise CoiError(f"snapshot '{name}' is not stateful: restore it without --stateful")
        if incus.status(container) != "Stopped":
            incus.stop(container, timeout=manager.settings.shutdown_timeout)
        incus.restore_snapshot(container, name, stateful=True)
        return
    was_running = incus.status(container) in ("Running", "Frozen")
    if incus.status(container) == "Frozen":
        incus.unfreeze(container)
    if was_running:
        incus.stop(container, timeout=manager.settings.shutdown_timeout)
    incus.restore_snapshot(container, name)
    if was_running:
        incus.start(container)
        session = session_of_container(manager, container)
        manager.wait_ready(container)
        manager.start_agent(session)
