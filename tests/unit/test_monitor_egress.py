"""The monitor's reading of the egress proxy's log (monitor/egress.py): the records the proxy
writes, judged; benign shapes stay quiet."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from coi_tui.monitor.egress import UPLOAD_BYTES, EgressWatch


def log(home: Path, name: str, *records: dict[str, Any]) -> None:
    path = home / "egress" / "logs" / f"{name}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")


def connection(name: str, sent: int = 100, at: float = 0, lasted_ms: float = 5) -> dict[str, Any]:
    stamp = datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds")
    return {"type": "connection", "domain": name, "port": 443, "decision": "allowed",
            "bytes_out": sent, "time": stamp.replace("+00:00", "Z"),
            "duration_ms": lasted_ms}  # fmt: skip


def test_a_new_destination_after_a_secret_read_and_a_large_upload(tmp_path: Path) -> None:
    watch = EgressWatch("c1", since=0)
    log(tmp_path, "c1", connection("api.github.com", at=1000))
    log(tmp_path, "c1", {"type": "dns", "domain": "x.example", "decision": "allowed"})
    assert watch.read(tmp_path, 50) == []  # (DNS is judged from the packets, not here)
    watch.secret_at = 1100
    # opened before the read, logged after it (a record is written when it closes): not it
    log(tmp_path, "c1", connection("early.example", at=1101, lasted_ms=3000))
    log(tmp_path, "c1", connection("api.github.com", at=1120), connection("paste.evil", at=1130))
    found = watch.read(tmp_path, 130)
    assert [(t.rule_id, t.evidence["egress"]["domain"]) for t in found] == [
        ("egress.new-domain-after-secret", "paste.evil")
    ]
    assert found[0].level == "high"
    log(tmp_path, "c1", connection("other.example", UPLOAD_BYTES + 1, at=1500))
    found = watch.read(tmp_path, 500)  # long after the read: only the upload
    assert [(t.rule_id, t.level) for t in found] == [("egress.large-upload", "warning")]


def test_a_hostile_log_is_skipped_not_followed(tmp_path: Path) -> None:
    folder = tmp_path / "egress" / "logs"
    folder.mkdir(parents=True)
    (folder / "c1.jsonl").symlink_to("/etc/shadow")
    assert EgressWatch("c1", since=0).read(tmp_path, 1) == []
    (folder / "c1.jsonl").unlink()
    (folder / "c1.jsonl").write_text('not json\n{"type": "dns"}\n[1, 2]\n')
    assert EgressWatch("c1", since=0).read(tmp_path, 1) == []
