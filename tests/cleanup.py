"""Remove what tests made: containers with a test prefix, their supervisors, and test users.
Also runnable by hand after an interrupted run: `python -m tests.cleanup`."""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path

from coi_tui.incus import Incus, IncusError


def cleanup_test_leftovers(incus: Incus, prefix: str, home: Path | None = None) -> list[str]:
    removed: list[str] = []
    try:
        instances = incus.list_instances(prefix)
    except IncusError:
        return removed
    for instance in instances:
        with contextlib.suppress(IncusError):
            incus.delete_instance(instance.name, force=True)
            removed.append(instance.name)
    # Supervisors of the removed containers exit on their own; stop any that linger.
    subprocess.run(["pkill", "-f", f"coi_tui.sessions.supervisor {prefix}"], check=False)
    return removed


if __name__ == "__main__":
    gone = cleanup_test_leftovers(Incus(), "coitest")
    print(f"removed {len(gone)} test container(s)")
