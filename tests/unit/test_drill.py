"""The fire drill's pure parts: the report table and JSON, the probes' parameters and skip
reasons, and the daemon's test for a drill container (health/drill.py, Responder.is_drill).
The drill itself runs in tests/integration/test_health_drill.py."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from coi_tui.health.drill import (
    DETECTED,
    MISSED,
    PROBES,
    SKIPPED,
    DrillReport,
    ProbeResult,
    c2_port_order,
    format_table,
    probe_values,
    skip_reason,
)
from coi_tui.monitor.config import MonitorConfig
from coi_tui.monitor.daemon import DRILL_KEY, Responder, Watched

LISTENER_PORTS = {"shell_port", "sink_port", "c2_port", "scan_ports"}  # bound by the drill


def report(*results: ProbeResult) -> DrillReport:
    return DrillReport("coi-drill-0000aaaa", "coi-default", list(results), duration_sec=3.21)


def test_table_has_a_row_per_probe_aligned_and_a_verdict() -> None:
    lines = format_table(
        report(
            ProbeResult(
                "reverse shell (command line)",
                "bash-dev-tcp",
                DETECTED,
                "proc.dev-tcp",
                "critical",
                41.26,
            ),
            ProbeResult("spawn storm", "fork-and-hold", DETECTED, "proc.spawn-storm", "high", 380),
            ProbeResult("process count", "hold-processes", SKIPPED, note="threshold is 0 (off)"),
        )
    )
    assert lines[0].split() == ["DETECTOR", "PROBE", "DETECTED", "RULE", "LATENCY"]
    assert lines[1].split("  ")[0] == "reverse shell (command line)"
    # every column starts at the same offset in every row
    starts = [lines[0].index(h) for h in ("PROBE", "DETECTED", "RULE", "LATENCY")]
    assert [lines[1].index(c) for c in ("bash-dev-tcp", "yes", "proc.dev-tcp", "41 ms")] == starts
    assert [lines[2].index(c) for c in ("fork-and-hold", "yes", "proc.spawn", "380 ms")] == starts
    assert lines[3].split()[-3:] == ["skipped", "-", "-"]
    assert "process count: skipped: threshold is 0 (off)" in lines
    assert lines[-1] == "PASS: 2 of 2 probes detected, 1 skipped"


def test_a_missed_probe_fails_the_drill_and_says_why() -> None:
    drill = report(
        ProbeResult("C2 port", "connect-c2-port", DETECTED, "net.c2-port", "critical", 60),
        ProbeResult("DNS tunnelling", "long-random-label", MISSED, note="no dns.tunnel-label"),
    )
    lines = format_table(drill)
    assert lines[2].split()[-3:] == ["no", "-", "-"]
    assert "DNS tunnelling: missed: no dns.tunnel-label" in lines
    assert lines[-1] == "FAIL: 1 of 2 probes detected"
    assert drill.ok is False


def test_json_shape() -> None:
    drill = report(
        ProbeResult("environment dump", "env", DETECTED, "cred.env-dump", "warning", 24.5),
        ProbeResult("process count", "hold-processes", SKIPPED, note="off"),
    )
    data = drill.as_dict()
    assert data == {
        "ok": True,
        "container": "coi-drill-0000aaaa",
        "image": "coi-default",
        "duration_sec": 3.21,
        "probes": [
            {
                "detector": "environment dump",
                "probe": "env",
                "status": "detected",
                "rule_id": "cred.env-dump",
                "level": "warning",
                "latency_ms": 24.5,
                "note": "",
            },
            {
                "detector": "process count",
                "probe": "hold-processes",
                "status": "skipped",
                "rule_id": "",
                "level": "",
                "latency_ms": None,
                "note": "off",
            },
        ],
        "summary": {"detected": 1, "missed": 0, "skipped": 1},
    }


def test_a_drill_where_nothing_ran_is_not_a_pass() -> None:
    assert report(ProbeResult("a", "b", SKIPPED, note="off")).ok is False
    assert report().ok is False


def test_every_probe_placeholder_has_a_value_or_a_reason() -> None:
    """A probe added to the table with a misspelt placeholder fails here, not in a drill."""
    config = MonitorConfig(process_count_threshold=300)
    values, reasons = probe_values(config, "10.199.0.1", "incus", "/home/code")
    assert reasons == {}
    names = {p.name for p in PROBES}
    assert len(names) == len(PROBES), "probe names must be unique"
    for probe in PROBES:
        assert probe.placeholders() <= set(values) | LISTENER_PORTS, probe.name
        assert probe.rules and probe.min_level in ("info", "warning", "high", "critical")
        probe.command.format(**values, **dict.fromkeys(LISTENER_PORTS, "1"))
        probe.setup.format(**values)


def test_probes_are_sized_from_the_thresholds() -> None:
    config = MonitorConfig(spawn_rate_per_sec=400, file_read_threshold_mb=80, dns_label_max=45)
    values, _ = probe_values(config, "10.199.0.1", "lab", "/home/code")
    assert int(values["spawn_count"]) > 400
    assert int(values["read_mb"]) > 80
    label, rest = values["dns_name"].split(".", 1)
    assert len(label) > 45 and len(label) <= 63 and rest == "drill.lab"
    names = values["dns_random_names"].split()
    assert len(set(names)) >= 30 and all(12 <= len(n.split(".")[0]) <= 45 for n in names)
    assert len(values["dns_burst_names"].split()) > config.dns_rate_per_min
    # the default live-process floor of a spawn storm (rules.SPAWN_LIVE_MIN) is met too
    values, _ = probe_values(MonitorConfig(), "10.199.0.1", "incus", "/home/code")
    assert int(values["spawn_count"]) > 250


@pytest.mark.parametrize(
    ("config", "placeholder", "reason"),
    [
        (MonitorConfig(spawn_rate_per_sec=0), "spawn_count", "spawn_rate_per_sec is 0"),
        (MonitorConfig(spawn_rate_per_sec=9000), "spawn_count", "needs over"),
        (MonitorConfig(), "process_count", "process_count_threshold is 0"),
        (MonitorConfig(dns_label_max=63), "dns_name", "no room under 63"),
        (MonitorConfig(dns_label_max=10), "dns_random_names", "below 12"),
        (MonitorConfig(dns_rate_per_min=5000), "dns_burst_names", "too big"),
        (MonitorConfig(file_read_threshold_mb=5000), "read_mb", "too big"),
    ],
)
def test_a_probe_that_cannot_run_is_skipped_with_the_reason(
    config: MonitorConfig, placeholder: str, reason: str
) -> None:
    values, reasons = probe_values(config, "10.199.0.1", "incus", "/home/code")
    assert placeholder not in values and reason in reasons[placeholder]
    probe = next(p for p in PROBES if placeholder in p.placeholders())
    assert reason in skip_reason(probe, values, reasons)


def test_no_gateway_skips_the_network_probes() -> None:
    values, reasons = probe_values(MonitorConfig(), "", "incus", "/home/code")
    skipped = {p.name for p in PROBES if skip_reason(p, values, reasons)}
    assert {"bash-dev-tcp", "connect-c2-port", "long-random-label", "query-burst"} <= skipped
    assert "env" not in skipped


def test_c2_ports_prefer_the_critical_ones() -> None:
    assert c2_port_order([8080, 4444, 4444, 0, 70000, 1337]) == [4444, 1337, 8080]
    assert c2_port_order([]) == []


# ---------------------------------------------------------------------------- Responder
class FakeIncus:
    def __init__(self, config: dict[str, str] | None) -> None:
        self.config = config
        self.asked = 0

    def instance_config(self, name: str) -> dict[str, str]:
        self.asked += 1
        if self.config is None:
            raise OSError("Incus is down")
        return self.config


def responder(incus: FakeIncus) -> Responder:
    daemon = SimpleNamespace(config=MonitorConfig(container_prefix="coi-"), incus=incus)
    return Responder(daemon)  # type: ignore[arg-type]


def watched(name: str, uuid: str = "u-1") -> Watched:
    return Watched(name, 100, "pid:[1]", "", "", 0, Path("/tmp"), uuid)


@pytest.mark.parametrize(
    ("name", "config", "expected"),
    [
        ("coi-drill-0a1b2c3d", {DRILL_KEY: "true", "volatile.uuid": "u-1"}, True),
        ("coi-0a1b2c3d-1", {DRILL_KEY: "true", "volatile.uuid": "u-1"}, False),  # label only
        ("coi-drill-0a1b2c3d", {"volatile.uuid": "u-1"}, False),  # name only
        ("coi-drill-0a1b2c3d", {DRILL_KEY: "yes", "volatile.uuid": "u-1"}, False),
        ("coi-drill-0a1b2c3d", {DRILL_KEY: "true", "volatile.uuid": "u-2"}, False),  # successor
        ("other-drill-0a1b2c3d", {DRILL_KEY: "true", "volatile.uuid": "u-1"}, False),
    ],
)
def test_a_drill_container_needs_its_name_and_the_label_on_that_instance(
    name: str, config: dict[str, str], expected: bool
) -> None:
    incus = FakeIncus(config)
    judge = responder(incus)
    assert judge.is_drill(watched(name)) is expected
    assert judge.is_drill(watched(name)) is expected
    assert incus.asked <= 1  # once per container


def test_a_drill_container_incus_cannot_confirm_is_acted_on() -> None:
    incus = FakeIncus(None)
    judge = responder(incus)
    assert judge.is_drill(watched("coi-drill-0a1b2c3d")) is False
    incus.config = {DRILL_KEY: "true", "volatile.uuid": "u-1"}
    assert judge.is_drill(watched("coi-drill-0a1b2c3d")) is True  # asked again, not cached
    assert judge.is_drill(watched("coi-drill-0a1b2c3d", uuid="")) is False


# ---------------------------------------------------------------------------- leftovers
class ListingIncus:
    def __init__(self, instances: list[Any]) -> None:
        self.instances = instances
        self.deleted: list[str] = []

    def list_instances(self, prefix: str = "") -> list[Any]:
        return [i for i in self.instances if i.name.startswith(prefix)]

    def delete_instance(self, name: str, *, force: bool = False) -> None:
        self.deleted.append(name)


def test_drill_containers_left_by_a_killed_drill_are_removed(tmp_path: Path) -> None:
    from datetime import UTC, datetime, timedelta

    from coi_tui.config.settings import Settings
    from coi_tui.core.paths import home_tag
    from coi_tui.health.drill import Drill

    def stamp(age: timedelta) -> str:
        return (datetime.now(UTC) - age).strftime("%Y-%m-%dT%H:%M:%S.%f123Z")

    ours = {DRILL_KEY: "true", "user.coi.home": home_tag(tmp_path)}
    old, new = timedelta(hours=2), timedelta(minutes=1)
    incus = ListingIncus(
        [
            SimpleNamespace(name="coi-drill-00000001", config=ours, created_at=stamp(old)),
            SimpleNamespace(name="coi-drill-00000002", config=ours, created_at=stamp(new)),
            SimpleNamespace(  # another COI home's drill
                name="coi-drill-00000003",
                config={**ours, "user.coi.home": "ffffff"},
                created_at=stamp(old),
            ),
            SimpleNamespace(  # named like one, not labelled
                name="coi-drill-00000004",
                config={"user.coi.home": ours["user.coi.home"]},
                created_at=stamp(old),
            ),
            SimpleNamespace(name="coi-0a1b2c3d-1", config=ours, created_at=stamp(old)),
        ]
    )
    lines: list[str] = []
    drill = Drill(Settings(), incus, MonitorConfig(), tmp_path, lines.append)  # type: ignore[arg-type]
    drill.remove_stale()
    assert incus.deleted == ["coi-drill-00000001"]
    assert lines == ["deleting coi-drill-00000001, left by an earlier drill"]


def test_a_probe_whose_tool_the_image_lacks_is_skipped(tmp_path: Path) -> None:
    from coi_tui.config.settings import Settings
    from coi_tui.health.drill import Drill

    drill = Drill(Settings(), None, MonitorConfig(), tmp_path)  # type: ignore[arg-type]
    drill.missing = {"python3"}
    values, reasons = probe_values(MonitorConfig(), "10.199.0.1", "incus", "/home/code")
    values.update(dict.fromkeys(LISTENER_PORTS, "1"))
    probe = next(p for p in PROBES if p.name == "socket-on-stdio")
    result = drill.run_probe(probe, values, reasons, None, [])  # type: ignore[arg-type]
    assert (result.status, result.note) == (SKIPPED, "python3 not in the image")
    assert all("python3" in p.tools for p in PROBES if "python3" in p.command + p.setup)
