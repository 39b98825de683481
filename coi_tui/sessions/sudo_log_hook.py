"""Session hook: with [monitoring] enabled, ask sudo in the container to write its own log
(`privilege.SUDO_LOG`) through a sudoers drop-in, so the host's threat monitor reads every
sudo attempt, failed ones included, whatever logging the image has. Our image has no syslog
daemon: sudo's syslog lines go to journald's binary journal, which the daemon does not parse.

The drop-in is pushed over the Incus file API as root, mode 0440 (no process runs in the
container). Its text is a constant checked by `visudo -c` in the tests. An image without
sudo (no /etc/sudoers.d) is left alone. The agent, as root, can remove it: what it did
before it was root (a failed sudo) was read already, within a second.
"""

from __future__ import annotations

from coi_tui.incus import Incus, IncusError
from coi_tui.monitor.privilege import SUDOERS_DROP_IN, SUDOERS_TEXT
from coi_tui.sessions.hookspec import LaunchContext, SessionHook


def install_sudo_log(incus: Incus, name: str) -> bool:
    """Install the drop-in in container `name`; False when it has no /etc/sudoers.d."""
    try:
        incus.push_file(name, SUDOERS_DROP_IN, SUDOERS_TEXT.encode(), uid=0, gid=0, mode=0o440)
    except IncusError:
        return False
    return True


class SudoLogHook(SessionHook):
    def before_agent(self, ctx: LaunchContext) -> None:
        if ctx.manager.settings.monitoring_enabled:
            install_sudo_log(ctx.manager.incus, ctx.session.container)


HOOK = SudoLogHook()
