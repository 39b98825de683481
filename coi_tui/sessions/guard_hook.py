"""The workspace guard in a session's life (sessions/workspace_guard.py): the baseline when a
session starts, the check and repair when it ends. Local sessions only: a remote's workspace
lives on its own host."""

from __future__ import annotations

from coi_tui.core.errors import CoiError
from coi_tui.incus import InstanceNotFound
from coi_tui.sessions.hookspec import LaunchContext, SessionHook, SessionHost
from coi_tui.sessions.protect_hook import WORKSPACE, protected_paths
from coi_tui.sessions.workspace_guard import Guard, join, leave

ALIVE = ("Running", "Frozen", "Starting", "Stopping")


class GuardHook(SessionHook):
    def before_start(self, ctx: LaunchContext) -> None:
        manager = ctx.manager
        settings = manager.settings
        if manager.incus.remote is not None or settings.disable_protection:
            return
        mounted = ctx.devices.get("workspace", {}).get("path") or WORKSPACE

        def alive(name: str) -> bool:
            try:
                return manager.incus.status(name) in ALIVE
            except InstanceNotFound:
                return False

        guard = Guard(
            ctx.request.workspace,
            protected_paths(settings),
            manager.say,
            mounted,
            bool(getattr(settings, "git_writable_hooks", False)),
        )
        try:
            join(guard, ctx.session.container, alive)
        except CoiError:
            raise
        except Exception as exc:  # fail closed: an unguarded session must not start
            raise CoiError(f"the workspace guard could not start: {exc}") from None

    def container_ended(self, manager: SessionHost, name: str, removed: bool) -> None:
        if manager.incus.remote is not None:
            return
        try:
            leave(name, manager.settings.container_prefix, manager.say)
        except Exception as exc:  # never keep the other hooks from releasing what they hold
            manager.say(f"workspace guard: the check after {name} failed ({exc})")


HOOK = GuardHook()
