"""The session service's clean-up after a start that fails half-way: one rule for the CLI
and the dashboard (the dashboard used to kill a session it had only joined)."""

from __future__ import annotations

import pytest

from coi_tui.config.settings import Settings
from coi_tui.core.errors import CoiError
from coi_tui.sessions.manager import LaunchRequest, Session
from coi_tui.sessions.service import SessionService
from coi_tui.tools import get_tool

DUMMY = get_tool("dummy")


class AgentWillNotStart:
    """The SessionManager's side of a start whose agent fails; records what is killed."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.killed: list[str] = []
        self.supervised: list[str] = []

    def launch(self, req: LaunchRequest, interactive: bool = True) -> Session:
        return self.session

    def wait_ready(self, name: str) -> None: ...

    def restore_saved_state(self, session: Session) -> None: ...

    def start_agent(self, session: Session, debug: bool = False) -> None:
        raise CoiError("could not start the agent in tmux")

    def spawn_supervisor(self, name: str) -> None:
        self.supervised.append(name)

    def kill(self, name: str, *, expect_id: str = "") -> bool:
        self.killed.append(name)
        return True


def start_failing(session: Session) -> AgentWillNotStart:
    service = SessionService(object(), Settings(), say=lambda line: None)  # type: ignore[arg-type]
    manager = AgentWillNotStart(session)
    service.manager = manager  # type: ignore[assignment]
    with pytest.raises(CoiError, match="agent"):
        service.start(LaunchRequest(workspace="/w", tool=DUMMY))
    assert manager.supervised == []
    return manager


@pytest.mark.parametrize(
    ("persistent", "joined", "killed"),
    [(False, False, True), (True, False, False), (False, True, False)],
)
def test_a_failed_start_removes_only_a_container_it_made_for_nothing(
    persistent: bool, joined: bool, killed: bool
) -> None:
    session = Session("c-1", "id", 1, "/w", persistent, DUMMY, running=joined)
    assert start_failing(session).killed == (["c-1"] if killed else [])
