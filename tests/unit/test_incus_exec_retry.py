"""The adapter retries Incus's transient "Failed to retrieve PID" exec failure wherever it
surfaces (the POST, or the operation's result), and nothing else."""

from __future__ import annotations

from typing import Any

import pytest

from coi_tui.incus import Incus, IncusError
from coi_tui.incus import client as client_module

PID_ERROR = "Failed to retrieve PID of executing child process"


class ScriptedIncus(Incus):
    """An adapter whose HTTP layer replays a script of operation results."""

    def __init__(self, results: list[dict[str, Any]]) -> None:
        super().__init__(socket_path="/nonexistent/unix.socket")
        self.results = results
        self.posts = 0

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        if method == "POST" and path.endswith("/exec"):
            self.posts += 1
            return {"id": f"op{self.posts}"}
        if path.endswith("/wait"):
            return self.results.pop(0)
        raise AssertionError(f"unexpected request {method} {path}")


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client_module.time, "sleep", lambda _seconds: None)


def test_pid_failure_in_the_operation_result_is_retried() -> None:
    incus = ScriptedIncus(
        [
            {"status": "Failure", "err": PID_ERROR},
            {"status": "Failure", "err": PID_ERROR},
            {"status": "Success", "metadata": {"return": 3, "output": {}}},
        ]
    )
    assert incus.exec_capture("c1", ["true"]).exit_code == 3
    assert incus.posts == 3


def test_other_failures_are_not_retried() -> None:
    incus = ScriptedIncus([{"status": "Failure", "err": "Instance is not running"}])
    with pytest.raises(IncusError, match="not running"):
        incus.exec_capture("c1", ["true"])
    assert incus.posts == 1


def test_retries_are_bounded() -> None:
    failures = [{"status": "Failure", "err": PID_ERROR}] * (
        len(client_module.EXEC_RETRY_DELAYS) + 1
    )
    incus = ScriptedIncus(list(failures))
    with pytest.raises(IncusError, match="retrieve PID"):
        incus.exec_capture("c1", ["true"])
    assert incus.posts == len(client_module.EXEC_RETRY_DELAYS) + 1
