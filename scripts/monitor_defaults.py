"""Writes coi_tui/monitor/defaults.py: the monitor's defaults, taken from the one place they
are declared (coi_tui/config/schema.py and the Settings dataclass).

The root daemon imports nothing of the package but the monitor's own modules and core/
(tests/unit/test_daemon_stdlib.py), and `coi_tui.config` brings the whole settings loader
with it, so the values are copied here as plain literals. tests/unit/test_monitor_defaults.py
fails when the copy and the schema differ: run `python3 scripts/monitor_defaults.py`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TARGET = REPO / "coi_tui" / "monitor" / "defaults.py"
# MonitorConfig field <- [monitoring] key of the same name
MONITORING = (
    "dedup_window_sec",
    "scan_interval_sec",
    "idle_exit_sec",
    "nflog_group",
    "c2_ports",
    "metadata_addresses",
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
)
LEVELS = ("info", "warning", "high", "critical")


def values() -> dict[str, Any]:
    sys.path.insert(0, str(REPO))
    from coi_tui.config.schema import BY_PATH, MONITOR_ACTIONS
    from coi_tui.config.settings import Settings

    out: dict[str, Any] = {
        "CONTAINER_PREFIX": Settings().container_prefix,
        "BRIDGE": BY_PATH["network.bridge"].default,
        "LEVELS": LEVELS,
        "ACTIONS": MONITOR_ACTIONS,
        "LEVEL_ACTIONS": {
            level: BY_PATH[f"monitoring.actions.{level}"].default for level in LEVELS
        },
        "SIGMA_DIR": BY_PATH["detection.sigma_dir"].default,
        "GTFOBINS_DIR": BY_PATH["detection.gtfobins_dir"].default,
    }
    monitoring = {}
    for name in MONITORING:
        default = BY_PATH[f"monitoring.{name}"].default
        monitoring[name] = tuple(default) if isinstance(default, list) else default
    out["MONITORING"] = monitoring
    return out


def literal(value: Any) -> str:
    """A value as ruff formats it (double quotes)."""
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, tuple):
        return "(" + ", ".join(literal(item) for item in value) + ")"
    return repr(value)


def render() -> str:
    lines = [
        '"""The monitor\'s defaults, generated from coi_tui/config/schema.py by',
        "scripts/monitor_defaults.py: do not edit (tests/unit/test_monitor_defaults.py checks",
        'it). Plain literals, so the root daemon reads them without the settings loader."""',
        "",
        "from typing import Any",
        "",
    ]
    for name, value in values().items():
        if isinstance(value, dict):
            if name == "MONITORING":
                lines.append("# [monitoring] key -> default (lists as tuples)")
            kind = "Any" if name == "MONITORING" else "str"
            lines.append(f"{name}: dict[str, {kind}] = {{")
            lines += [f"    {literal(key)}: {literal(item)}," for key, item in value.items()]
            lines.append("}")
        else:
            lines.append(f"{name} = {literal(value)}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    TARGET.write_text(render())
    print(f"wrote {TARGET.relative_to(REPO)}")
