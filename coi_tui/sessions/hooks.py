"""Extension points in a session's life, so features (host integration, network isolation,
monitoring, protected paths...) plug in without editing the session manager.

A hook module listed in HOOK_MODULES defines `HOOK`, an object with any of the methods of
`SessionHook`. Hooks run in list order; a hook that raises CoiError aborts the launch.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING, Any

from coi_tui.core.timing import span

if TYPE_CHECKING:
    from coi_tui.sessions.manager import LaunchRequest, Session, SessionManager

# Modules whose HOOK takes part in every session, in this order.
HOOK_MODULES: tuple[str, ...] = (
    "coi_tui.sessions.host_hook",
    "coi_tui.sessions.protect_hook",
    "coi_tui.sessions.guard_hook",
    "coi_tui.sessions.config_hook",
    "coi_tui.sessions.canary_hook",  # after config_hook: a pushed real credential wins
    "coi_tui.network.hook",
    "coi_tui.monitor.hook",
    "coi_tui.monitor.sudo_log_hook",
    "coi_tui.sessions.docker_hook",
)


@dataclass
class LaunchContext:
    manager: SessionManager
    request: LaunchRequest
    session: Session
    # For a new container: the config and devices it is created with (hooks may edit them).
    config: dict[str, str] = field(default_factory=dict)
    devices: dict[str, dict[str, str]] = field(default_factory=dict)
    interactive: bool = True  # False for `coi run`


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

    def container_ended(self, manager: SessionManager, name: str, removed: bool) -> None:
        """The container stopped for good (removed=True) or was stopped and kept."""


@cache
def loaded_hooks(modules: tuple[str, ...] = HOOK_MODULES) -> tuple[Any, ...]:
    return tuple(importlib.import_module(name).HOOK for name in modules)


def run_hooks(method: str, *args: Any) -> None:
    for hook in loaded_hooks(HOOK_MODULES):
        function = getattr(hook, method, None)
        if function is not None:
            with span("hook", f"{type(hook).__module__.rsplit('.', 1)[-1]}.{method}"):
                function(*args)
