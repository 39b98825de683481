"""Monitor knobs. The basic ones come from the main settings ([monitoring] in config.toml via
load_settings); the extra ones below are not in the config schema yet, so they are read from
an optional `[monitoring]` table in $COI_HOME/monitor.toml (to be merged into the schema)."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from coi_tui.paths import coi_home

LEVELS = ("info", "warning", "high", "critical")
ACTIONS = ("log", "alert", "pause", "kill")


@dataclass
class MonitorConfig:
    container_prefix: str = "coi-"
    bridge: str = "coibr0"
    # what each level does: log | alert | pause | kill
    actions: dict[str, str] = field(
        default_factory=lambda: {
            "info": "log",
            "warning": "alert",
            "high": "pause",
            "critical": "kill",
        }
    )
    dedup_window_sec: float = 30.0
    scan_interval_sec: float = 1.0  # the /proc pass (behavioural checks, I/O counters)
    idle_exit_sec: float = 120.0  # no coi container for this long: the daemon exits
    nflog_group: int = 0  # 0: derived from the COI home, so two homes never share a group
    c2_ports: list[int] = field(
        default_factory=lambda: [4444, 5555, 1234, 1337, 31337, 12345, 6666, 6667, 6697, 9001]
    )
    metadata_addresses: list[str] = field(
        default_factory=lambda: ["169.254.169.254", "169.254.170.2", "100.100.100.200"]
    )
    file_read_threshold_mb: float = 50.0  # per scan window (2 s) ...
    file_read_rate_mb_per_sec: float = 10.0  # ... or sustained over 5 s
    exfil_threshold_mb: float = 20.0  # bytes the container sent within exfil_window_sec
    exfil_window_sec: float = 10.0
    dns_rate_per_min: int = 100
    dns_label_max: int = 30
    dns_name_max: int = 52
    dns_entropy_bits: float = 3.5
    spawn_rate_per_sec: int = 100  # new processes within one second
    process_count_threshold: int = 0  # 0: off


def extra_config_path() -> Path:
    return coi_home() / "monitor.toml"


def load_monitor_config(settings: Any = None) -> MonitorConfig:
    """Settings (if given) first, then $COI_HOME/monitor.toml [monitoring] on top."""
    config = MonitorConfig()
    if settings is not None:
        config.container_prefix = settings.container_prefix
        config.bridge = settings.bridge
        if not settings.monitoring_auto_pause_on_high:
            config.actions["high"] = "alert"
        if not settings.monitoring_auto_kill_on_critical:
            config.actions["critical"] = "alert"
        config.file_read_threshold_mb = settings.monitoring_file_read_threshold_mb
        config.file_read_rate_mb_per_sec = settings.monitoring_file_read_rate_mb_per_sec
        config.process_count_threshold = settings.monitoring_process_count_threshold
    path = extra_config_path()
    if path.is_file():
        try:
            table = tomllib.loads(path.read_text()).get("monitoring", {})
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ValueError(f"{path}: {exc}") from None
        apply_table(config, table, str(path))
    return config


def apply_table(config: MonitorConfig, table: dict[str, Any], where: str) -> None:
    known = {f.name: f for f in fields(config)}
    for key, value in table.items():
        if key == "actions" and isinstance(value, dict):
            for level, action in value.items():
                if level not in LEVELS or action not in ACTIONS:
                    raise ValueError(f"{where}: [monitoring.actions] {level} = {action!r}")
                config.actions[level] = action
            continue
        if key not in known or key in ("container_prefix", "bridge"):
            continue  # keys of the main config (or unknown ones) are not ours to judge here
        current = getattr(config, key)
        same_list = isinstance(current, list) and isinstance(value, list)
        wrong = isinstance(current, bool) or not isinstance(value, type(current) | int | float)
        if wrong and not same_list:
            raise ValueError(f"{where}: [monitoring] {key} has the wrong type")
        setattr(config, key, type(current)(value) if not isinstance(current, list) else value)
