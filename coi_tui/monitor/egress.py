"""The egress proxy's log (coi_tui/network/egress writes `<home>/egress/logs/<name>.jsonl`),
judged by the monitor on each full pass. Only the standard library and the monitor's own
modules (the daemon stands alone):

- `egress.new-domain-after-secret` (HIGH): a connection to a name the container never reached
  before, shortly after it read a secret (a credential-access threat);
- `egress.large-upload` (WARNING): one connection that sent a lot out.

What only the proxy knows is judged here: the name inside TLS and the bytes of a connection.
DNS tunnelling is judged from the queries themselves (rules.DnsWatch, on the packets), with
or without the proxy.

The log is the user's file, read like the auth logs (privilege.read_new: a regular file only,
from where it was left, a bounded chunk per pass); a line it cannot parse is skipped.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from coi_tui.monitor.events import Threat
from coi_tui.monitor.privilege import LogTail, read_new

SECRET_WINDOW_SEC = 120.0
UPLOAD_BYTES = 50 * 1024 * 1024
SEEN_KEPT = 10000


def record_time(record: dict[str, Any]) -> float:
    """Its "time" (ISO 8601, UTC) as epoch seconds; 0 when it has none."""
    try:
        stamp = str(record["time"]).replace("Z", "+00:00")
        return datetime.fromisoformat(stamp).timestamp()
    except (KeyError, ValueError):
        return 0.0


@dataclass
class EgressWatch:
    container: str
    since: float  # a log first seen is read from its start only if it changed after this
    tail: LogTail | None = None
    seen: set[str] = field(default_factory=set)  # names it connected to
    secret_at: float = -1e18  # when it last read a secret (wall clock, as the log's times)

    def read(self, home: Path, now: float | None = None) -> list[Threat]:
        now = time.monotonic() if now is None else now
        try:
            folder = os.open(home / "egress" / "logs", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError:
            return []
        try:
            self.tail, lines = read_new(folder, f"{self.container}.jsonl", self.tail, self.since)
        finally:
            os.close(folder)
        found: list[Threat] = []
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                found += self.judge(record, now)
        return found

    def judge(self, record: dict[str, Any], now: float) -> list[Threat]:
        kind = record.get("type")
        name = str(record.get("domain") or "")[:253]
        if kind != "connection" or record.get("decision") != "allowed" or not name:
            return []
        found = []
        sent = int(record.get("bytes_out") or 0)
        if sent >= UPLOAD_BYTES:
            found.append(
                Threat(
                    "egress.large-upload",
                    "warning",
                    "exfiltration",
                    "A large upload through the egress proxy",
                    f"{sent} bytes to {name}:{record.get('port')}",
                    {"egress": {"domain": name, "port": record.get("port"), "bytes_out": sent}},
                    dedup_key=f"egress.large-upload:{name}",
                )
            )
        if name not in self.seen:
            if len(self.seen) >= SEEN_KEPT:
                self.seen.clear()
            self.seen.add(name)
            # the record is written when its connection closes: judged by when it opened
            opened = record_time(record) - float(record.get("duration_ms") or 0) / 1000
            if 0 <= opened - self.secret_at < SECRET_WINDOW_SEC:
                found.append(
                    Threat(
                        "egress.new-domain-after-secret",
                        "high",
                        "exfiltration",
                        "A new destination right after a secret was read",
                        f"first connection to {name}:{record.get('port')} "
                        f"{opened - self.secret_at:.1f} s after a credential access",
                        {"egress": {"domain": name, "port": record.get("port"), "bytes_out": sent}},
                        dedup_key=f"egress.new-domain-after-secret:{name}",
                    )
                )
        return found
