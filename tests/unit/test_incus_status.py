"""A shutdown from inside makes the instance record say 'Stopped' for a moment, then 'Running'
again, then 'Stopped' (measured under load; Incus's own power record, volatile.last_state.power,
stays RUNNING until the stop is over). The adapter reports such a moment as 'Stopping'."""

from __future__ import annotations

from typing import Any

import pytest

from coi_tui.incus import Incus, IncusError, InstanceNotFound
from coi_tui.incus.errors import NotFound


class RecordedIncus(Incus):
    """An adapter whose HTTP layer answers from a fixed instance record and /state answer."""

    def __init__(self, record: dict[str, Any], state: dict[str, Any] | Exception) -> None:
        super().__init__(socket_path="/nonexistent/unix.socket")
        self.record = record
        self.state = state
        self.state_asked = 0

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        if path.endswith("/instances"):
            return [self.record]
        if path.endswith("/state"):
            self.state_asked += 1
            if isinstance(self.state, Exception):
                raise self.state
            return self.state
        return self.record


def record(status: str, power: str | None) -> dict[str, Any]:
    config = {} if power is None else {"volatile.last_state.power": power}
    return {"name": "c1", "status": status, "config": config}


@pytest.mark.parametrize(
    ("status", "power", "state", "expected"),
    [
        # Mid-shutdown: /state cannot find the init PID.
        ("Stopped", "RUNNING", IncusError("Invalid PID"), "Stopping"),
        ("Stopped", "RUNNING", {"status": "Running", "pid": 12}, "Stopping"),
        # The stop is over.
        ("Stopped", "STOPPED", AssertionError("not asked"), "Stopped"),
        # Never started: no power record.
        ("Stopped", None, AssertionError("not asked"), "Stopped"),
        # A stale power record (the host went down with it running): /state decides.
        ("Stopped", "RUNNING", {"status": "Stopped", "pid": 0}, "Stopped"),
        ("Running", "RUNNING", AssertionError("not asked"), "Running"),
        ("Frozen", "RUNNING", AssertionError("not asked"), "Frozen"),
    ],
)
def test_a_stop_counts_once_it_is_over(
    status: str, power: str | None, state: dict[str, Any] | Exception, expected: str
) -> None:
    incus = RecordedIncus(record(status, power), state)
    assert incus.status("c1") == expected
    assert incus.get_instance("c1").status == expected
    assert [i.status for i in incus.list_instances()] == [expected]


def test_an_instance_deleted_while_its_stop_is_checked_is_gone() -> None:
    incus = RecordedIncus(record("Stopped", "RUNNING"), NotFound("not found"))
    with pytest.raises(InstanceNotFound):
        incus.status("c1")
    assert [i.name for i in incus.list_instances()] == ["c1"]  # as listed
