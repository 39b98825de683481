"""The monitor's defaults have one source, the schema: monitor/defaults.py is generated from
it (scripts/monitor_defaults.py) and must say the same; the daemon's settings hand-off
(monitor/config.py) carries every value and refuses one of the wrong shape."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import asdict
from pathlib import Path

import pytest

from coi_tui.config.schema import MONITOR_C2_PORTS
from coi_tui.config.settings import load_settings
from coi_tui.monitor import defaults
from coi_tui.monitor.config import (
    DaemonSettings,
    MonitorConfig,
    daemon_settings_text,
    load_monitor_config,
    parse_daemon_settings,
)

REPO = Path(__file__).resolve().parents[2]


def generator() -> object:
    spec = importlib.util.spec_from_file_location("gen", REPO / "scripts" / "monitor_defaults.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_generated_defaults_are_the_schemas() -> None:
    gen = generator()
    assert (REPO / "coi_tui" / "monitor" / "defaults.py").read_text() == gen.render(), (  # type: ignore[attr-defined]
        "run python3 scripts/monitor_defaults.py"
    )
    for name, value in gen.values().items():  # type: ignore[attr-defined]
        assert getattr(defaults, name) == value, name


def test_the_monitor_config_defaults_are_what_settings_give(tmp_path: Path) -> None:
    settings = load_settings(tmp_path, {"COI_HOME": str(tmp_path / "home")})
    assert load_monitor_config(settings, home=tmp_path / "home") == MonitorConfig()
    assert MonitorConfig().c2_ports == list(MONITOR_C2_PORTS)


def test_the_hand_off_carries_every_value() -> None:
    config = MonitorConfig(container_prefix="t-", bridge="br9", c2_ports=[1, 2])
    config.actions["high"] = "alert"
    config.scan_interval_sec = 0.5
    sent = DaemonSettings(config, "/srv/sigma", "~/g", ["a note"])
    got = parse_daemon_settings(daemon_settings_text(sent))
    assert asdict(got) == asdict(sent)


@pytest.mark.parametrize(
    "change",
    [
        {"container_prefix": ""},
        {"container_prefix": "x; nft flush ruleset"},
        {"bridge": ["coibr0"]},
        {"c2_ports": ["4444"]},
        {"c2_ports": [True]},
        {"dedup_window_sec": "30"},
        {"dns_rate_per_min": 1.5},
        {"actions": {"critical": "rm -rf"}},
        {"own_credentials": ["/etc/shadow"]},
        {"unknown": 1},
    ],
)
def test_the_hand_off_refuses_a_value_of_the_wrong_shape(change: dict[str, object]) -> None:
    table = json.loads(daemon_settings_text(DaemonSettings()))
    table["monitor"].update(change)
    with pytest.raises(ValueError):
        parse_daemon_settings(json.dumps(table))


def test_a_non_finite_number_is_refused() -> None:
    text = daemon_settings_text(DaemonSettings()).replace(
        '"idle_exit_sec": 120.0', '"idle_exit_sec": NaN'
    )
    assert "NaN" in text
    with pytest.raises(ValueError):
        parse_daemon_settings(text)
