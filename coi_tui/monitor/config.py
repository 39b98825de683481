"""Monitor knobs, all from the `[monitoring]` section of the main config (config/schema.py;
load_settings). `$COI_HOME/monitor.toml` with a `[monitoring]` table, where the daemon's own
knobs used to live, is still read as a deprecated fallback for keys the main config does not
set."""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from coi_tui.core.paths import coi_home

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
    # a large read is exfiltration-shaped (HIGH) when the container also sent at least this
    # much, and more than it received, within exfil_window_sec
    exfil_correlate_mb: float = 1.0
    dns_rate_per_min: int = 100
    dns_label_max: int = 30
    dns_name_max: int = 52
    dns_entropy_bits: float = 3.5
    spawn_rate_per_sec: int = 100  # new processes within one second
    process_count_threshold: int = 0  # 0: off
    # credential files the session was given on purpose ([[credentials]]): reading them is
    # its own business, not the sensitive-file watcher's
    own_credentials: list[str] = field(default_factory=list)


def extra_config_path() -> Path:
    return coi_home() / "monitor.toml"


# MonitorConfig field <- Settings attribute ([monitoring] key of the same name)
FROM_SETTINGS = {
    "dedup_window_sec": "monitoring_dedup_window_sec",
    "scan_interval_sec": "monitoring_scan_interval_sec",
    "idle_exit_sec": "monitoring_idle_exit_sec",
    "nflog_group": "monitoring_nflog_group",
    "c2_ports": "monitoring_c2_ports",
    "metadata_addresses": "monitoring_metadata_addresses",
    "file_read_threshold_mb": "monitoring_file_read_threshold_mb",
    "file_read_rate_mb_per_sec": "monitoring_file_read_rate_mb_per_sec",
    "exfil_threshold_mb": "monitoring_exfil_threshold_mb",
    "exfil_window_sec": "monitoring_exfil_window_sec",
    "exfil_correlate_mb": "monitoring_exfil_correlate_mb",
    "dns_rate_per_min": "monitoring_dns_rate_per_min",
    "dns_label_max": "monitoring_dns_label_max",
    "dns_name_max": "monitoring_dns_name_max",
    "dns_entropy_bits": "monitoring_dns_entropy_bits",
    "spawn_rate_per_sec": "monitoring_spawn_rate_per_sec",
    "process_count_threshold": "monitoring_process_count_threshold",
}


def load_monitor_config(settings: Any = None, warn: Any = None) -> MonitorConfig:
    """The [monitoring] section of the main config (load_settings), then the deprecated
    $COI_HOME/monitor.toml [monitoring] table for the keys the main config leaves at their
    defaults. `warn` (if given) gets one line about the deprecated file."""
    config = MonitorConfig()
    explicit: set[str] = set()
    if settings is not None:
        config.container_prefix = settings.container_prefix
        config.bridge = settings.bridge
        for name, attr in FROM_SETTINGS.items():
            value = getattr(settings, attr, getattr(config, name))
            setattr(config, name, list(value) if isinstance(value, list) else value)
        for level in LEVELS:
            action = getattr(settings, f"monitoring_actions_{level}", config.actions[level])
            config.actions[level] = action if action in ACTIONS else config.actions[level]
        if not settings.monitoring_auto_pause_on_high and config.actions["high"] == "pause":
            config.actions["high"] = "alert"
        if not settings.monitoring_auto_kill_on_critical and config.actions["critical"] == "kill":
            config.actions["critical"] = "alert"
        sources = getattr(settings, "sources", {})
        explicit = {p[len("monitoring.") :] for p in sources if p.startswith("monitoring.")}
    path = extra_config_path()
    if path.is_file():
        try:
            table = tomllib.loads(path.read_text()).get("monitoring", {})
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ValueError(f"{path}: {exc}") from None
        if warn is not None and table:
            warn(f"{path} is deprecated: move its [monitoring] keys into config.toml")
        actions = table.get("actions")
        if isinstance(actions, dict):
            actions = {k: v for k, v in actions.items() if f"actions.{k}" not in explicit}
            table = {**table, "actions": actions}
        apply_table(config, {k: v for k, v in table.items() if k not in explicit}, str(path))
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


# What a session's own settings (its profile, its project) decide for its container: the
# thresholds and the actions. Stored on the instance at creation (SESSION_KEY, which only
# coi sets: a container cannot change its own config), applied by the daemon when it finds
# the container. The daemon's own knobs (prefix, bridge, scan pace, NFLOG group) stay global.
SESSION_KEY = "user.coi.monitoring"
SESSION_FIELDS = (
    "actions",
    "file_read_threshold_mb",
    "file_read_rate_mb_per_sec",
    "exfil_threshold_mb",
    "exfil_window_sec",
    "exfil_correlate_mb",
    "dns_rate_per_min",
    "dns_label_max",
    "dns_name_max",
    "dns_entropy_bits",
    "spawn_rate_per_sec",
    "process_count_threshold",
    "c2_ports",
    "metadata_addresses",
    "own_credentials",
)


def session_config_text(config: MonitorConfig) -> str:
    return json.dumps({name: getattr(config, name) for name in SESSION_FIELDS}, sort_keys=True)


def for_session(config: MonitorConfig, text: str) -> MonitorConfig:
    """`config` with a session's own values (session_config_text) applied; raises
    ValueError for anything malformed."""
    if not text:
        return config
    try:
        table = json.loads(text)
    except ValueError:
        raise ValueError("not JSON") from None
    if not isinstance(table, dict) or not set(table) <= set(SESSION_FIELDS):
        raise ValueError("unknown keys")
    merged = replace(config, actions=dict(config.actions))
    apply_table(merged, table, SESSION_KEY)
    return merged
