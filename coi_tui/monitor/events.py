"""Threats, the per-container JSONL audit log and the live event stream.

Audit record (COI's schema plus rule_id and container): id, timestamp (RFC 3339, UTC), level
(info|warning|high|critical), category, title, description, evidence (one key), action,
rule_id, container. Each line is fsynced before the responder acts on it.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from coi_tui.paths import coi_home

LEVEL_RANK = {"info": 0, "warning": 1, "high": 2, "critical": 3}


@dataclass
class Threat:
    rule_id: str
    level: str
    category: str
    title: str
    description: str
    evidence: dict[str, Any]
    dedup_key: str = ""  # what makes two threats "the same" for the de-duplication window
    detected_at: float = 0.0  # time.monotonic() when the signal reached the daemon
    container: str = ""
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    timestamp: str = field(
        default_factory=lambda: datetime.now(UTC).isoformat().replace("+00:00", "Z")
    )

    def record(self, action: str) -> dict[str, Any]:
        return {
            "id": self.id,
            "timestamp": self.timestamp,
            "level": self.level,
            "category": self.category,
            "title": self.title,
            "description": self.description,
            "evidence": self.evidence,
            "action": action,
            "rule_id": self.rule_id,
            "container": self.container,
        }


def audit_dir(home: Path | None = None) -> Path:
    return (home or coi_home()) / "audit"


def audit_path(container: str, home: Path | None = None) -> Path:
    return audit_dir(home) / f"{container}.jsonl"


class AuditLog:
    """Append-only JSONL per container; one write + fsync per event."""

    def __init__(self, home: Path, owner: tuple[int, int] | None = None) -> None:
        self.dir = audit_dir(home)
        self.owner = owner  # a root daemon writes files the user can read and rotate
        self.lock = threading.Lock()

    def write(self, container: str, record: dict[str, Any]) -> None:
        line = (json.dumps(record, sort_keys=False) + "\n").encode()
        with self.lock:
            self.dir.mkdir(parents=True, exist_ok=True)
            path = self.dir / f"{container}.jsonl"
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            try:
                os.write(fd, line)
                os.fsync(fd)
                if self.owner is not None:
                    os.fchown(fd, *self.owner)
            finally:
                os.close(fd)


class Broadcaster:
    """A unix socket (~/.coi/monitor.sock) that sends every record as one JSON line to each
    connected client. Clients only read; a slow or dead client is dropped, never waited on."""

    def __init__(self, path: Path, owner: tuple[int, int] | None = None) -> None:
        self.path = path
        self.clients: list[socket.socket] = []
        self.lock = threading.Lock()
        if path.exists() or path.is_symlink():
            path.unlink()
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        os.chmod(path, 0o660)
        if owner is not None:
            os.chown(path, *owner)
        self.server.listen(16)
        self.server.setblocking(False)

    def fileno(self) -> int:
        return self.server.fileno()

    def accept(self) -> None:
        try:
            client, _ = self.server.accept()
        except OSError:
            return
        client.setblocking(False)
        with self.lock:
            self.clients.append(client)
        self._send(client, {"type": "hello", "pid": os.getpid()})

    def publish(self, record: dict[str, Any]) -> None:
        self.publish_event({"type": "threat", **record})

    def publish_event(self, message: dict[str, Any]) -> None:
        with self.lock:
            clients = list(self.clients)
        for client in clients:
            self._send(client, message)

    def _send(self, client: socket.socket, message: dict[str, Any]) -> None:
        try:
            client.sendall((json.dumps(message) + "\n").encode())
        except OSError:  # gone or its buffer is full: drop it
            with self.lock:
                if client in self.clients:
                    self.clients.remove(client)
            client.close()

    def close(self) -> None:
        with self.lock:
            for client in self.clients:
                client.close()
            self.clients.clear()
        self.server.close()
        with contextlib.suppress(OSError):
            self.path.unlink()
