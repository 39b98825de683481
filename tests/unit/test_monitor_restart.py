"""A fault in the daemon's loop starts it again instead of ending the watch of every
container (daemon.run_restarting); a fault that keeps coming back ends it."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from coi_tui.monitor import daemon as daemon_mod


class FakeDaemon:
    def __init__(self, faults: int) -> None:
        self.faults_left = faults
        self.runs = 0
        self.lines: list[str] = []
        self.watched: dict[str, Any] = {"c1": SimpleNamespace(identity="u1/ns1")}
        self.forgotten: list[str] = []
        self.interrupted: set[str] = set()
        self.faults = 0
        self.responder = SimpleNamespace(pool=None)

    def run(self) -> None:
        self.runs += 1
        if self.faults_left:
            self.faults_left -= 1
            raise OSError(9, "Bad file descriptor")

    def log(self, line: str) -> None:
        self.lines.append(line)

    def forget(self, watched: Any) -> None:
        self.forgotten.append(watched.identity)
        self.watched = {}


def test_a_fault_starts_the_loop_again_and_marks_the_watch_interrupted() -> None:
    fake = FakeDaemon(faults=1)
    daemon_mod.run_restarting(fake)  # type: ignore[arg-type]
    assert fake.runs == 2 and fake.faults == 1
    assert fake.forgotten == ["u1/ns1"] and fake.interrupted == {"u1/ns1"}
    assert fake.responder.pool is not None  # the old pool was shut down by run's cleanup
    assert "starting again" in fake.lines[0] and "Bad file descriptor" in fake.lines[0]


def test_a_fault_that_keeps_coming_back_ends_the_daemon() -> None:
    fake = FakeDaemon(faults=100)
    with pytest.raises(OSError):
        daemon_mod.run_restarting(fake)  # type: ignore[arg-type]
    assert fake.runs == daemon_mod.RESTARTS_PER_MINUTE + 1
    assert "giving up" in fake.lines[-1]
