"""Monitor knobs, all from the `[monitoring]` section of the main config (config/schema.py;
load_settings). `$COI_HOME/monitor.toml` with a `[monitoring]` table, where the daemon's own
knobs used to live, is still read as a deprecated fallback for keys the main config does not
set.

The root daemon never loads the settings itself (it imports nothing of the package but the
monitor and core/): the user's `coi` resolves them (`load_monitor_config`) and hands them over
in `$COI_HOME/monitor.config.json` (`daemon_settings_text`) right before it starts the daemon,
which reads that file without following a symlink and checks every value
(`parse_daemon_settings`). The defaults come from the schema (`monitor/defaults.py`, generated).
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from coi_tui.core.paths import coi_home
from coi_tui.monitor import defaults

LEVELS = defaults.LEVELS
ACTIONS = defaults.ACTIONS
# On an instance the daemon killed (frozen, then force-stopped): the user's supervisor saves
# its session and deletes it, persistent or not (sessions/supervisor.py).
KILLED_KEY = "user.coi.killed-by"
KILLED_BY_MONITOR = "monitor"
DAEMON_SETTINGS = "monitor.config.json"  # the hand-off, in the COI home
DAEMON_SETTINGS_LIMIT = 64 * 1024
# what a prefix and a bridge name may be (they reach nft scripts and cgroup paths)
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")

D = defaults.MONITORING


@dataclass
class MonitorConfig:
    container_prefix: str = defaults.CONTAINER_PREFIX
    bridge: str = defaults.BRIDGE
    # what each level does: log | alert | pause | kill
    actions: dict[str, str] = field(default_factory=lambda: dict(defaults.LEVEL_ACTIONS))
    dedup_window_sec: float = D["dedup_window_sec"]
    scan_interval_sec: float = D["scan_interval_sec"]  # the /proc pass (behaviour, I/O)
    idle_exit_sec: float = D["idle_exit_sec"]  # no coi container for this long: it exits
    nflog_group: int = D["nflog_group"]  # 0: from the COI home (two homes never share one)
    c2_ports: list[int] = field(default_factory=lambda: list(D["c2_ports"]))
    metadata_addresses: list[str] = field(default_factory=lambda: list(D["metadata_addresses"]))
    file_read_threshold_mb: float = D["file_read_threshold_mb"]  # per scan window (2 s) ...
    file_read_rate_mb_per_sec: float = D["file_read_rate_mb_per_sec"]  # ... or over 5 s
    exfil_threshold_mb: float = D["exfil_threshold_mb"]  # sent within exfil_window_sec
    exfil_window_sec: float = D["exfil_window_sec"]
    # a large read is exfiltration-shaped (HIGH) when the container also sent at least this
    # much, and more than it received, within exfil_window_sec
    exfil_correlate_mb: float = D["exfil_correlate_mb"]
    dns_rate_per_min: int = D["dns_rate_per_min"]
    dns_label_max: int = D["dns_label_max"]
    dns_name_max: int = D["dns_name_max"]
    dns_entropy_bits: float = D["dns_entropy_bits"]
    spawn_rate_per_sec: int = D["spawn_rate_per_sec"]  # new processes within one second
    process_count_threshold: int = D["process_count_threshold"]  # 0: off
    # credential files the session was given on purpose ([[credentials]]): reading them is
    # its own business, not the sensitive-file watcher's
    own_credentials: list[str] = field(default_factory=list)


def extra_config_path(home: Path | None = None) -> Path:
    return (home or coi_home()) / "monitor.toml"


# MonitorConfig field <- Settings attribute ([monitoring] key of the same name)
FROM_SETTINGS = {name: f"monitoring_{name}" for name in D}


def load_monitor_config(
    settings: Any = None, warn: Any = None, home: Path | None = None
) -> MonitorConfig:
    """The [monitoring] section of the main config (load_settings), then the deprecated
    monitor.toml [monitoring] table of `home` (default $COI_HOME) for the keys the main config
    leaves at their defaults. `warn` (if given) gets one line about the deprecated file."""
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
    path = extra_config_path(home)
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
    """Set `table`'s values on `config`, each checked against its field's type (ValueError
    says which key); the prefix, the bridge and unknown keys are left alone."""
    known = {f.name for f in fields(config)}
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
        if isinstance(current, list):
            item_type = int if key == "c2_ports" else str
            good = isinstance(value, list) and all(
                isinstance(item, item_type) and not isinstance(item, bool) for item in value
            )
            if not good:
                raise ValueError(f"{where}: [monitoring] {key} has the wrong type")
            setattr(config, key, list(value))
            continue
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"{where}: [monitoring] {key} has the wrong type")
        if isinstance(current, int) and value != int(value):
            raise ValueError(f"{where}: [monitoring] {key} must be a whole number")
        setattr(config, key, type(current)(value))


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


# ---------------------------------------------------------------------- the daemon's hand-off
@dataclass
class DaemonSettings:
    """What the root daemon runs with: the monitor's knobs, the rule-pack folders
    ([detection] sigma_dir and gtfobins_dir, as written) and lines to log at its start."""

    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    sigma_dir: str = defaults.SIGMA_DIR
    gtfobins_dir: str = defaults.GTFOBINS_DIR
    notes: list[str] = field(default_factory=list)


def daemon_settings_text(settings: DaemonSettings) -> str:
    """The hand-off file's text (`coi` writes it, the daemon reads it)."""
    monitor = {f.name: getattr(settings.monitor, f.name) for f in fields(settings.monitor)}
    del monitor["own_credentials"]  # a session's, never global
    return json.dumps(
        {
            "monitor": monitor,
            "sigma_dir": settings.sigma_dir,
            "gtfobins_dir": settings.gtfobins_dir,
            "notes": settings.notes,
        },
        indent=1,
        sort_keys=True,
    )


def parse_daemon_settings(text: str) -> DaemonSettings:
    """The hand-off file read back, every value checked (ValueError says what is wrong). The
    file is the user's (as config.toml is): a value of the wrong shape is refused, never
    used by root."""
    where = DAEMON_SETTINGS
    try:
        table = json.loads(text)
    except ValueError:
        raise ValueError(f"{where}: not JSON") from None
    if not isinstance(table, dict) or not isinstance(table.get("monitor"), dict):
        raise ValueError(f"{where}: no monitor table")
    out = DaemonSettings()
    monitor = dict(table["monitor"])
    for key in ("container_prefix", "bridge"):
        value = monitor.pop(key, getattr(out.monitor, key))
        if not isinstance(value, str) or not NAME_RE.match(value):
            raise ValueError(f"{where}: {key} {value!r} is not a plain name")
        setattr(out.monitor, key, value)
    unknown = set(monitor) - {f.name for f in fields(out.monitor)} - {"own_credentials"}
    if unknown or "own_credentials" in monitor:
        raise ValueError(f"{where}: unknown keys {sorted(unknown) or ['own_credentials']}")
    apply_table(out.monitor, monitor, where)
    for key in ("sigma_dir", "gtfobins_dir"):
        value = table.get(key, getattr(out, key))
        if not isinstance(value, str):
            raise ValueError(f"{where}: {key} is not a string")
        setattr(out, key, value)
    notes = table.get("notes", [])
    if not isinstance(notes, list) or not all(isinstance(n, str) for n in notes):
        raise ValueError(f"{where}: notes is not a list of strings")
    out.notes = notes[:20]
    return out
