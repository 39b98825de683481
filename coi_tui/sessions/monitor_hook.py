"""Session hook: make sure the host monitor daemon runs once a session's agent is up, when
[monitoring] enabled = true."""

from __future__ import annotations

from coi_tui.core.errors import CoiError
from coi_tui.core.paths import home_tag
from coi_tui.monitor import control
from coi_tui.monitor.config import SESSION_KEY, load_monitor_config, session_config_text
from coi_tui.sessions.hookspec import LaunchContext, SessionHook

OWNER_KEY = "user.coi.home"  # which COI home (so which monitor daemon) a session belongs to


class MonitorHook(SessionHook):
    def prepare_instance(self, ctx: LaunchContext) -> None:
        # One daemon per COI home watches that home's sessions only: another user's (or
        # another test's) daemon never freezes or kills them.
        ctx.config[OWNER_KEY] = home_tag()
        # this session's thresholds and actions (its profile's, its project's), for the
        # daemon, whose own config is the user's global one
        try:
            config = load_monitor_config(ctx.manager.settings)
        except ValueError as exc:
            ctx.manager.say(f"warning: monitor settings of this session not applied: {exc}")
            return
        config.own_credentials = sorted(
            str(entry["container"])
            for entry in getattr(ctx.manager.settings, "credentials", [])
            if entry.get("container")
        )
        ctx.config[SESSION_KEY] = session_config_text(config)

    def after_start(self, ctx: LaunchContext) -> None:
        if not ctx.manager.settings.monitoring_enabled:
            return
        control.prune_audit(ctx.manager.settings.monitoring_audit_log_retention_days)
        try:
            control.start(use_sudo=ctx.manager.settings.use_sudo)
        except CoiError as exc:  # the session runs; the user must know it is unwatched
            ctx.manager.say(f"warning: threat monitor not running: {exc}")


HOOK = MonitorHook()
