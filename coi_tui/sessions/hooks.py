"""Extension points in a session's life, so features (host integration, network isolation,
monitoring, protected paths...) plug in without editing the session manager.

Each hook module defines `HOOK`, an object with any of the methods of `SessionHook`
(sessions/hookspec.py). SESSION_HOOKS lists them; they run in list order, and a hook that
raises CoiError aborts the launch.
"""

from __future__ import annotations

from typing import Any

from coi_tui.core.timing import span
from coi_tui.sessions import (
    canary_hook,
    config_hook,
    git_hook,
    guard_hook,
    host_hook,
    kernel_hook,
    monitor_hook,
    network_hook,
    protect_hook,
    sudo_log_hook,
)
from coi_tui.sessions.hookspec import LaunchContext as LaunchContext
from coi_tui.sessions.hookspec import SessionHook

# The hooks of every session, in this order.
SESSION_HOOKS: tuple[SessionHook, ...] = (
    host_hook.HOOK,
    protect_hook.HOOK,
    guard_hook.HOOK,
    git_hook.HOOK,
    config_hook.HOOK,  # after git_hook: pre_launch commands may commit
    canary_hook.HOOK,  # after config_hook: a pushed real credential wins
    network_hook.HOOK,
    monitor_hook.HOOK,
    sudo_log_hook.HOOK,
    kernel_hook.HOOK,
)


def run_hooks(method: str, *args: Any) -> None:
    for hook in SESSION_HOOKS:
        if getattr(type(hook), method) is getattr(SessionHook, method):
            continue  # the base class's no-op: no timing span for it
        function = getattr(hook, method)
        with span("hook", f"{type(hook).__module__.rsplit('.', 1)[-1]}.{method}"):
            function(*args)
