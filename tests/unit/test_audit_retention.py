"""[monitoring] audit_log_retention_days: audit files (rotated parts too) last written longer
ago are deleted when a monitored session starts; newer ones, other files and links stay."""

from __future__ import annotations

import os
import time
from pathlib import Path

from coi_tui.monitor.control import prune_audit


def test_old_audit_files_go_and_the_rest_stay(tmp_path: Path) -> None:
    audit = tmp_path / "audit"
    audit.mkdir()
    now = time.time()
    old, rotated, fresh = audit / "a.jsonl", audit / "a.jsonl.1", audit / "b.jsonl"
    other, link = audit / "notes.txt", audit / "c.jsonl"
    for path in (old, rotated, fresh, other):
        path.write_text("{}\n")
    link.symlink_to(fresh)
    for path in (old, rotated, other):
        os.utime(path, (now - 40 * 86400, now - 40 * 86400))
    os.utime(link, (now - 40 * 86400, now - 40 * 86400), follow_symlinks=False)
    assert prune_audit(0, tmp_path, now) == []  # 0 keeps everything
    assert sorted(prune_audit(30, tmp_path, now)) == ["a.jsonl", "a.jsonl.1"]
    assert sorted(p.name for p in audit.iterdir()) == ["b.jsonl", "c.jsonl", "notes.txt"]
