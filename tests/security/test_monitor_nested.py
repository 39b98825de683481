"""Issue 16, class 6: a process in a pid namespace nested in the container's is the
container's. The agent (`code`, passwordless sudo) runs the dup2 reverse shell under
`sudo unshare -pf --mount-proc`: the daemon used to forward and scan only processes whose
pid namespace was exactly the container init's, so the shell answered as root and nothing
was reported. Membership is now the container's namespace among the process's namespace
ancestry (coi_tui/monitor/membership.py), the same for docker containers inside a session.

Real container, real root daemon with auto-kill; the network target is a listener on the
bridge address, as in tests/integration/test_monitor.py, whose harness this module shares.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.test_monitor import (
    GATEWAY,
    PY_DUP2,
    Listener,
    Monitor,
    run_file,
    running_monitor,
    wait_until,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the monitor daemon needs root")

SHELL_TO_FROZEN_SEC = 1.0


@pytest.fixture(scope="module")
def nested_mon(
    run_prefix: str, incus: Any, image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Monitor]:
    with running_monitor(f"{run_prefix}n", incus, image, tmp_path_factory) as monitor:
        yield monitor


def test_a_reverse_shell_in_a_nested_pid_namespace_is_killed(nested_mon: Monitor) -> None:
    mon = nested_mon
    name = mon.container()
    listener = Listener()
    try:
        shell = PY_DUP2.format(host=GATEWAY, port=listener.port)
        runner = "su code -c 'sudo unshare -pf --mount-proc python3 /tmp/p.py' #"
        mon.trigger(name, run_file("/tmp/p.py", shell, runner))
        record = mon.first_critical(name, timeout=20)
        wait_until(lambda: listener.accepted, 5, "the shell's connection")
        assert record["action"] == "killed", record
        assert record["category"] == "process", record
        latency = record["_received"] - listener.accepted[0]
        print(f"\n{name}: {record['rule_id']}, connection->frozen {latency * 1000:.0f} ms")
        assert latency < SHELL_TO_FROZEN_SEC
        mon.assert_status(name, "Gone")
    finally:
        listener.close()
