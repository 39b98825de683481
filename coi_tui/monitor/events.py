"""Threats, the per-container JSONL audit log and the live event stream.

Audit record (COI's schema plus rule_id and container): id, timestamp (RFC 3339, UTC), level
(info|warning|high|critical), category, title, description, evidence (one key), action,
rule_id, container. Files rotate by size and each rule is rate-limited (see AuditLog).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from coi_tui.core import nofollow
from coi_tui.core.paths import coi_home

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
    """Append-only JSONL per container, safe against a flood and against the user's files.

    - Rate limit: a token bucket per (container, rule, level): `burst` records at once, then
      one per `refill_sec`. What it drops is counted and written as one `audit.rate-limited`
      record (COI's schema, level info) once that key writes again or `summary_sec` passed
      (`flush()`, also run on every write). A flood of one rule cannot hide another rule.
    - Rotation by size: a write that would take the file past `max_bytes` first renames it
      to `<c>.jsonl.1` (older ones shift up to `.{keep}`), so a container's log is bounded.
    - High and critical records are fsynced (the responder acted on them); info and warning
      are written without a sync each.
    - The root daemon writes in the user's ~/.coi: the directory is walked without following
      a user's symlink and the file opened with O_NOFOLLOW (`coi_tui.core.nofollow`); a symlink,
      FIFO or hard link planted at the log's name is replaced, never written through.
    `write()` never raises: a failure is counted, kept in `last_error` and said once.
    """

    def __init__(
        self,
        home: Path,
        owner: tuple[int, int] | None = None,
        *,
        burst: int = 20,
        refill_sec: float = 3.0,
        summary_sec: float = 60.0,
        max_bytes: int = 8 << 20,
        keep: int = 2,
        say: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.dir = audit_dir(home)
        self.owner = owner  # a root daemon writes files the user can read and rotate
        self.lock = threading.Lock()
        self.burst = burst
        self.refill_sec = refill_sec
        self.summary_sec = summary_sec
        self.max_bytes = max_bytes
        self.keep = max(1, keep)
        self.say = say
        self.clock = clock
        self.buckets: dict[tuple[str, str, str], Bucket] = {}
        self.failures = 0
        self.last_error = ""

    def write(self, container: str, record: dict[str, Any]) -> bool:
        """Append the record unless its key is over the rate limit; True when written."""
        key = (container, str(record.get("rule_id", "")), str(record.get("level", "")))
        with self.lock:
            now = self.clock()
            bucket = self.buckets.get(key)
            if bucket is None:
                bucket = self.buckets[key] = Bucket(float(self.burst), now)
                if len(self.buckets) > 4096:
                    self._forget(now)
            bucket.tokens = min(
                float(self.burst), bucket.tokens + (now - bucket.at) / self.refill_sec
            )
            bucket.at = now
            if bucket.tokens < 1.0:
                if not bucket.dropped:
                    bucket.since = now
                bucket.dropped += 1
                self._flush(now, only_due=True)
                return False
            bucket.tokens -= 1.0
            lines = []
            if bucket.dropped:
                lines.append(self._summary(key, bucket))
            lines.append(record)
            self._flush(now, only_due=True)
            return self._append(container, lines, sync=record.get("level") in ("high", "critical"))

    def flush(self) -> None:
        """Write the pending rate-limit summaries whose `summary_sec` has passed."""
        with self.lock:
            self._flush(self.clock(), only_due=True)

    def _flush(self, now: float, only_due: bool) -> None:
        for key, bucket in list(self.buckets.items()):
            if bucket.dropped and (not only_due or now - bucket.since >= self.summary_sec):
                self._append(key[0], [self._summary(key, bucket)], sync=False)

    def _forget(self, now: float) -> None:
        """Drop buckets that are full again and owe no summary (bounded memory)."""
        full = self.burst * self.refill_sec
        self.buckets = {k: b for k, b in self.buckets.items() if b.dropped or now - b.at < full}

    def _summary(self, key: tuple[str, str, str], bucket: Bucket) -> dict[str, Any]:
        container, rule_id, level = key
        count, bucket.dropped = bucket.dropped, 0
        rate = f"{self.burst} at once, then one every {self.refill_sec:g} s"
        threat = Threat(
            "audit.rate-limited",
            "info",
            "monitor",
            "Audit records rate-limited",
            f"{count} more {level} {rule_id} record(s) of this container were not written "
            f"(limit per rule: {rate})",
            {"rate_limited": {"rule_id": rule_id, "level": level, "dropped": count}},
            container=container,
        )
        return threat.record("logged")

    def _append(self, container: str, records: list[dict[str, Any]], sync: bool) -> bool:
        data = b"".join((json.dumps(r, sort_keys=False) + "\n").encode() for r in records)
        name = f"{container}.jsonl"
        try:
            if "/" in container or container.startswith(".") or not container:
                raise OSError(errno.EINVAL, f"not a container name: {container!r}")
            dir_fd = nofollow.open_dir(self.dir, create=True, mode=0o750, owner=self.owner)
            try:
                fd = nofollow.open_append(dir_fd, name, 0o640, self.owner)
                try:
                    size = os.fstat(fd).st_size
                    if size and size + len(data) > self.max_bytes:
                        os.close(fd)
                        fd = -1
                        self._rotate(dir_fd, name)
                        fd = nofollow.open_append(dir_fd, name, 0o640, self.owner)
                    os.write(fd, data)
                    if sync:
                        os.fsync(fd)
                finally:
                    if fd >= 0:
                        os.close(fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            self.failures += 1
            message = f"audit log {self.dir / name}: {exc.strerror or exc}"
            if message != self.last_error and self.say is not None:
                self.say(message)
            self.last_error = message
            return False
        return True

    def _rotate(self, dir_fd: int, name: str) -> None:
        """<c>.jsonl -> <c>.jsonl.1 -> ... -> <c>.jsonl.<keep> (the oldest is replaced);
        renames never follow a symlink."""
        for index in range(self.keep - 1, 0, -1):
            with contextlib.suppress(FileNotFoundError):
                nofollow.rename(dir_fd, f"{name}.{index}", f"{name}.{index + 1}")
        nofollow.rename(dir_fd, name, f"{name}.1")


@dataclass
class Bucket:
    tokens: float
    at: float
    dropped: int = 0
    since: float = 0.0


class Broadcaster:
    """A unix socket (~/.coi/monitor.sock) that sends every record as one JSON line to each
    connected client. Clients only read; a slow or dead client is dropped, never waited on."""

    def __init__(self, path: Path, owner: tuple[int, int] | None = None) -> None:
        self.path = path
        self.clients: list[socket.socket] = []
        self.lock = threading.Lock()
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # mode set at bind, owner without following: a symlink the user plants in ~/.coi
        # never makes root chmod or chown another file
        nofollow.bind_socket(self.server, path.parent, path.name, 0o660, owner)
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
            nofollow.unlink(self.path.parent, self.path.name)
