"""What a session hook is given and may define: the launch request, the session, the context
of one launch, and the part of the session manager a hook may use (`SessionHost`).

The manager (sessions/manager.py) runs the hooks; the hook modules import only this module,
never the manager, and sessions/hooks.py lists them, so the three stay free of import circles.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from coi_tui.config import Settings
from coi_tui.incus import ExecResult, Incus, Instance
from coi_tui.sessions.naming import tmux_session
from coi_tui.sessions.store import SessionMeta
from coi_tui.tools import Tool
from coi_tui.tools.base import WORKSPACE

Say = Callable[[str], None]


class SessionHost(Protocol):
    """The session manager as hooks see it."""

    incus: Incus
    settings: Settings
    say: Say

    def wait_ready(self, name: str) -> None: ...
    def storage_pool(self) -> str: ...
    def exec_as_code(self, name: str, argv: list[str]) -> ExecResult: ...
    def coi_instances(
        self, with_state: bool = False, addresses: bool = False
    ) -> list[Instance]: ...


@dataclass
class LaunchRequest:
    workspace: str
    tool: Tool
    slot: int = 0
    persistent: bool = False
    image: str = "coi-default"
    resume: str | None = None  # None, "auto" or a session id
    profile: str = ""
    debug: bool = False
    allow_home: bool = False  # --force: mount a workspace that is, or holds, the home directory


@dataclass
class LaunchContext:
    manager: SessionHost
    request: LaunchRequest
    session: Session
    # For a new container: the config and devices it is created with (hooks may edit them).
    config: dict[str, str] = field(default_factory=dict)
    devices: dict[str, dict[str, str]] = field(default_factory=dict)
    interactive: bool = True  # False for `coi run`


@dataclass
class Session:
    container: str
    session_id: str
    slot: int
    workspace: str
    persistent: bool
    tool: Tool
    reused: bool = False
    running: bool = False  # reused while already running (resume of a live session)
    resume_meta: SessionMeta | None = None
    notes: list[str] = field(default_factory=list)
    context: LaunchContext | None = None
    mounted: str = WORKSPACE  # the workspace's path in the container

    @property
    def tmux(self) -> str:
        return tmux_session(self.container)


class SessionHook:
    """Every method is optional; this base class documents them and does nothing."""

    def prepare_instance(self, ctx: LaunchContext) -> None:
        """Before a new container is created: edit ctx.config / ctx.devices."""

    def before_start(self, ctx: LaunchContext) -> None:
        """Before the container (new or reused) starts, e.g. install firewall rules."""

    def agent_env(self, ctx: LaunchContext, env: dict[str, str]) -> None:
        """Add or remove environment variables for the agent (or the `coi run` command)."""

    def before_agent(self, ctx: LaunchContext) -> None:
        """The container is up; the agent is about to start (push files, write context)."""

    def after_start(self, ctx: LaunchContext) -> None:
        """The agent (or command) is running."""

    def container_ended(self, manager: SessionHost, name: str, removed: bool) -> None:
        """The container stopped for good (removed=True) or was stopped and kept."""
