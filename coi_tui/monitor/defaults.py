"""The monitor's defaults, generated from coi_tui/config/schema.py by
scripts/monitor_defaults.py: do not edit (tests/unit/test_monitor_defaults.py checks
it). Plain literals, so the root daemon reads them without the settings loader."""

from typing import Any

CONTAINER_PREFIX = "coi-"
BRIDGE = "coibr0"
LEVELS = ("info", "warning", "high", "critical")
ACTIONS = ("log", "alert", "pause", "kill")
LEVEL_ACTIONS: dict[str, str] = {
    "info": "log",
    "warning": "alert",
    "high": "pause",
    "critical": "kill",
}
SIGMA_DIR = "~/.coi/sigma"
GTFOBINS_DIR = "~/.coi/gtfobins"
# [monitoring] key -> default (lists as tuples)
MONITORING: dict[str, Any] = {
    "dedup_window_sec": 30.0,
    "scan_interval_sec": 1.0,
    "idle_exit_sec": 120.0,
    "nflog_group": 0,
    "c2_ports": (4444, 5555, 1234, 31337, 12345, 6666, 6667, 6697, 8080),
    "metadata_addresses": ("169.254.169.254", "169.254.170.2", "100.100.100.200"),
    "file_read_threshold_mb": 50.0,
    "file_read_rate_mb_per_sec": 10.0,
    "exfil_threshold_mb": 20.0,
    "exfil_window_sec": 10.0,
    "exfil_correlate_mb": 1.0,
    "dns_rate_per_min": 100,
    "dns_label_max": 30,
    "dns_name_max": 52,
    "dns_entropy_bits": 3.5,
    "spawn_rate_per_sec": 100,
    "process_count_threshold": 0,
}
