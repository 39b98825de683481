"""The threat feed's sources. The monitor writes ~/.coi/audit/<container>.jsonl (one JSON
object per threat, see the audit schema); `AuditTail` follows those files. A monitor living in
the same process can instead push events into a `PushSource`. The dashboard only sees the
`ThreatSource` protocol."""

from __future__ import annotations

import json
import os
import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from coi_tui.core.paths import coi_home
from coi_tui.core.text import clean

LEVELS = ("info", "warning", "high", "critical")
TEXT_FIELDS = {
    "id": 64,
    "timestamp": 40,
    "level": 16,
    "category": 64,
    "title": 200,
    "description": 2000,
    "container": 128,
    "action": 64,
    "rule_id": 128,
}


@dataclass(frozen=True)
class ThreatEvent:
    id: str
    timestamp: str
    level: str
    category: str
    title: str
    description: str = ""
    container: str = ""
    action: str = ""
    rule_id: str = ""
    evidence: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        # Every text field may quote the container (its argv, its process names): control,
        # bidi and zero-width characters become visible escapes here, once, so no widget,
        # notification or filter ever sees them raw. Widgets still show these as plain text,
        # never as markup.
        for name, limit in TEXT_FIELDS.items():
            value = getattr(self, name)
            cleaned = clean(value, limit)
            if cleaned != value:
                object.__setattr__(self, name, cleaned)

    @classmethod
    def from_record(cls, record: dict[str, Any], container: str = "") -> ThreatEvent:
        level = str(record.get("level", "info")).lower()
        return cls(
            id=str(record.get("id", "")),
            timestamp=str(record.get("timestamp", "")),
            level=level if level in LEVELS else "info",
            category=str(record.get("category", "")),
            title=str(record.get("title", "")),
            description=str(record.get("description", "")),
            container=str(record.get("container") or container),
            action=str(record.get("action", "")),
            rule_id=str(record.get("rule_id", "")),
            evidence=dict(record.get("evidence") or {}),
        )

    @property
    def time(self) -> str:
        """HH:MM:SS from the RFC 3339 timestamp (what the feed shows)."""
        if "T" in self.timestamp:
            return self.timestamp.split("T", 1)[1][:8]
        return self.timestamp[:8]

    def matches(self, text: str) -> bool:
        haystack = " ".join(
            (self.level, self.category, self.title, self.description, self.container, self.action)
        )
        return text.lower() in haystack.lower()


class ThreatSource(Protocol):
    """Anything that yields new threat events without blocking."""

    def read_new(self) -> list[ThreatEvent]: ...


def audit_dir() -> Path:
    return coi_home() / "audit"


def container_of(path: Path) -> str:
    stem = path.stem
    return stem[: -len("-nft")] if stem.endswith("-nft") else stem


READ_LIMIT = 4 << 20  # per file and poll: a huge log is read in slices, never whole


class AuditTail:
    """Follows every *.jsonl file in the audit directory: complete lines only, new files
    picked up as they appear. The first read returns at most `history` old events."""

    def __init__(self, directory: Path | None = None, history: int = 200) -> None:
        self.directory = directory or audit_dir()
        self.history = history
        self._offsets: dict[Path, int] = {}
        self._inodes: dict[Path, int] = {}
        self._partial: dict[Path, bytes] = {}
        self._started = False
        self.bad_lines = 0

    def read_new(self) -> list[ThreatEvent]:
        try:
            paths = sorted(self.directory.glob("*.jsonl"))
        except OSError:
            return []
        events: list[ThreatEvent] = []
        for path in paths:
            events.extend(self._read_file(path))
        events.sort(key=lambda e: e.timestamp)
        if not self._started and self.history and len(events) > self.history:
            events = events[-self.history :]
        self._started = True
        return events

    def _read_file(self, path: Path) -> list[ThreatEvent]:
        offset = self._offsets.get(path, 0)
        try:
            with open(path, "rb") as handle:
                info = os.fstat(handle.fileno())
                size = info.st_size
                if size < offset or info.st_ino != self._inodes.get(path, info.st_ino):
                    offset = 0  # truncated or rotated (<c>.jsonl.1): start over
                    self._partial.pop(path, None)
                self._inodes[path] = info.st_ino
                if size == offset:
                    return []
                handle.seek(offset)
                data = handle.read(min(size - offset, READ_LIMIT))
        except OSError:
            return []
        self._offsets[path] = offset + len(data)
        data = self._partial.pop(path, b"") + data
        lines = data.split(b"\n")
        if lines[-1]:
            self._partial[path] = lines[-1]  # a line still being written
        container = container_of(path)
        events = []
        for raw in lines[:-1]:
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except ValueError:
                self.bad_lines += 1
                continue
            if isinstance(record, dict):
                events.append(ThreatEvent.from_record(record, container))
        return events


class PushSource:
    """For an in-process producer: `push()` from any thread, the dashboard drains."""

    def __init__(self, maxlen: int = 10000) -> None:
        self._events: deque[ThreatEvent] = deque(maxlen=maxlen)
        self._lock = threading.Lock()

    def push(self, event: ThreatEvent) -> None:
        with self._lock:
            self._events.append(event)

    def read_new(self) -> list[ThreatEvent]:
        with self._lock:
            events = list(self._events)
            self._events.clear()
        return events
