"""Remove what tests made: containers with a test prefix and their supervisors.
Also runnable by hand after an interrupted run: `python -m tests.cleanup`."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
from datetime import UTC, datetime, timedelta

from coi_tui.incus import Incus, IncusError

# Leftovers of interrupted runs are removed once they are this old; younger containers with a
# test prefix may belong to another test run going on right now.
STALE_AFTER = timedelta(minutes=45)


def _created(stamp: str) -> datetime:
    try:
        return datetime.fromisoformat(stamp[:26].rstrip("Z") + "+00:00")
    except ValueError:
        return datetime.now(UTC)


def cleanup_test_leftovers(
    incus: Incus, prefix: str, older_than: timedelta | None = None
) -> list[str]:
    removed: list[str] = []
    if older_than is not None:
        remove_stale_netns()
    try:
        instances = incus.list_instances(prefix)
    except IncusError:
        return removed
    now = datetime.now(UTC)
    for instance in instances:
        if older_than is not None and now - _created(instance.created_at) < older_than:
            continue
        with contextlib.suppress(IncusError):
            incus.delete_instance(instance.name, force=True)
            removed.append(instance.name)
    if older_than is None:
        # Supervisors of the removed containers exit on their own; stop any that linger.
        subprocess.run(["pkill", "-f", f"coi_tui.sessions.supervisor {prefix}"], check=False)
    if removed:
        # Containers deleted directly skip coi's hooks: drop their firewall rules too.
        with contextlib.suppress(Exception):
            from coi_tui.network.isolation import clean_orphans

            clean_orphans(incus, dry_run=False)
    return removed


# the monitor harness's network namespace (tests/integration/test_monitor.py running_monitor):
# coimon<pid of the pytest run>-<serial>
MONITOR_NETNS = re.compile(r"coimon(\d+)(-\d+)?")


def remove_stale_netns() -> list[str]:
    """The monitor harness's namespaces whose test run is gone (an interrupted run leaves
    them, and the veth peer on the test bridge with them)."""
    removed: list[str] = []
    try:
        names = os.listdir("/run/netns")
    except OSError:
        return removed
    for name in names:
        match = MONITOR_NETNS.fullmatch(name)
        if match is None or os.path.exists(f"/proc/{match.group(1)}"):
            continue
        done = subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
        if done.returncode == 0:
            removed.append(name)
    return removed


if __name__ == "__main__":
    gone = cleanup_test_leftovers(Incus(), "coitest")
    print(f"removed {len(gone)} test container(s)")
