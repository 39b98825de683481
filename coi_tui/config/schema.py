"""Every configuration key coi understands: its dotted path, the Settings attribute it sets, its
type, default and allowed values. Loading, validation, `coi config show` and profiles all read
this one table, so adding a key is one line here plus a Settings field."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

DEFAULT_IMAGE = "coi-default"
DEFAULT_BRIDGE = "coibr0"
DEFAULT_POOL = "coi"
DEFAULT_ALLOWED_DOMAINS = (
    "registry.npmjs.org",
    "npm.pkg.github.com",
    "api.anthropic.com",
    "platform.claude.com",
)
DEFAULT_PROTECTED_PATHS = (".git/hooks", ".git/config", ".husky", ".vscode")


class Invalid(ValueError):
    """A value that does not fit its key; the message says what is allowed."""


@dataclass(frozen=True)
class Key:
    path: str  # dotted TOML path, e.g. "limits.memory.limit"
    attr: str  # Settings attribute
    kind: str  # see CHECKS
    default: Any
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None

    @property
    def section(self) -> str:
        return self.path.rpartition(".")[0]

    @property
    def name(self) -> str:
        return self.path.rpartition(".")[2]


# ---------------------------------------------------------------------- value checks
SIZE_RE = re.compile(r"^\d+(\.\d+)?(B|kB|KB|KiB|MB|MiB|GB|GiB|TB|TiB|PB|PiB|EB|EiB)?$")
DURATION_RE = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
CPUSET_RE = re.compile(r"^(\d+|\d+-\d+)(,(\d+|\d+-\d+))*$")
ALLOWANCE_RE = re.compile(r"^(\d{1,3}%|\d+ms/\d+ms)$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def describe(value: Any) -> str:
    return repr(value) if not isinstance(value, str) else f'"{value}"'


def check_bool(key: Key, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off", ""):
            return False
    raise Invalid(f"expected true or false, got {describe(value)}")


def check_int(key: Key, value: Any) -> int:
    if isinstance(value, bool):
        raise Invalid(f"expected a whole number, got {describe(value)}")
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise Invalid(f"expected a whole number, got {describe(value)}") from None
    if not isinstance(value, int):
        raise Invalid(f"expected a whole number, got {describe(value)}")
    check_range(key, value)
    return value


def check_float(key: Key, value: Any) -> float:
    if isinstance(value, bool):
        raise Invalid(f"expected a number, got {describe(value)}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise Invalid(f"expected a number, got {describe(value)}") from None
    check_range(key, number)
    return number


def check_range(key: Key, value: float) -> None:
    low, high = key.minimum, key.maximum
    if (low is not None and value < low) or (high is not None and value > high):
        if low is not None and high is not None:
            allowed = f"{low:g}-{high:g}"
        elif low is not None:
            allowed = f"at least {low:g}"
        else:
            allowed = f"at most {high:g}"
        raise Invalid(f"must be {allowed}, got {value:g}")


def check_str(key: Key, value: Any) -> str:
    if not isinstance(value, str):
        raise Invalid(f"expected a string, got {describe(value)}")
    return value


def check_enum(key: Key, value: Any) -> str:
    text = check_str(key, value)
    if text not in key.choices:
        raise Invalid(f"must be one of {', '.join(key.choices)}, got {describe(value)}")
    return text


def check_tool(key: Key, value: Any) -> str:
    from coi_tui.tools import TOOLS  # the registry is the one list of agents

    text = check_str(key, value)
    if text not in TOOLS:
        raise Invalid(f"must be one of {', '.join(sorted(TOOLS))}, got {describe(value)}")
    return text


def check_list(key: Key, value: Any) -> list[str]:
    if isinstance(value, str):  # environment variables: comma separated
        return [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise Invalid(f"expected a list of strings, got {describe(value)}")
    return list(value)


def check_env_names(key: Key, value: Any) -> list[str]:
    names = check_list(key, value)
    for name in names:
        if not ENV_NAME_RE.match(name):
            raise Invalid(f"expected environment variable names, got {describe(name)}")
    return names


def pattern_check(regex: re.Pattern[str], allowed: str) -> Callable[[Key, Any], str]:
    def check(key: Key, value: Any) -> str:
        text = check_str(key, value).strip()
        if text and not regex.match(text):
            raise Invalid(f"expected {allowed}, got {describe(value)}")
        return text

    return check


def check_memory(key: Key, value: Any) -> str:
    text = check_str(key, value).strip()
    if text and not (SIZE_RE.match(text) or re.match(r"^\d{1,3}%$", text)):
        raise Invalid(f'expected a size like "512MiB" or "2GiB", or a percentage, got "{text}"')
    return text


def check_swap(key: Key, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    text = check_str(key, value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return "true"
    if text in ("false", "0", "no", "off"):
        return "false"
    if text and not SIZE_RE.match(str(value).strip()):
        raise Invalid(f'expected true, false or a size like "1GiB", got {describe(value)}')
    return str(value).strip()


def check_disk_rate(key: Key, value: Any) -> str:
    text = check_str(key, value).strip()
    if text.endswith("/s"):
        raise Invalid(f'give bytes per second without "/s" (e.g. "10MiB"), got "{text}"')
    if text and not (SIZE_RE.match(text) or re.match(r"^\d+iops$", text)):
        raise Invalid(f'expected a rate like "10MiB" or "1000iops", got "{text}"')
    return text


def check_duration(key: Key, value: Any) -> str:
    text = check_str(key, value).strip()
    if text and (not DURATION_RE.match(text) or parse_duration(text) <= 0):
        raise Invalid(f'expected a duration like "20s", "30m" or "1h30m", got "{text}"')
    return text


def parse_duration(text: str) -> int:
    """Seconds in "1h30m20s" (0 for "")."""
    match = DURATION_RE.match(text.strip())
    if not text.strip() or not match:
        return 0
    hours, minutes, seconds = (int(part or 0) for part in match.groups())
    return hours * 3600 + minutes * 60 + seconds


CHECKS: dict[str, Callable[[Key, Any], Any]] = {
    "bool": check_bool,
    "int": check_int,
    "float": check_float,
    "str": check_str,
    "enum": check_enum,
    "tool": check_tool,
    "list": check_list,
    "env_names": check_env_names,
    "memory": check_memory,
    "swap": check_swap,
    "disk_rate": check_disk_rate,
    "size": pattern_check(SIZE_RE, 'a size like "10GiB"'),
    "duration": check_duration,
    "cpuset": pattern_check(CPUSET_RE, 'a CPU count ("2") or set ("0-3", "0,1,3")'),
    "allowance": pattern_check(ALLOWANCE_RE, 'a share like "50%" or "25ms/100ms"'),
}


def K(path: str, attr: str, kind: str, default: Any, *choices: str, **limits: float) -> Key:
    return Key(path, attr, kind, default, tuple(choices), limits.get("min"), limits.get("max"))


# Order is the order of `coi config show`.
KEYS: tuple[Key, ...] = (
    K("defaults.profile", "profile", "str", ""),
    K("container.image", "image", "str", DEFAULT_IMAGE),
    K("container.persistent", "persistent", "bool", False),
    K("container.storage_pool", "storage_pool", "str", ""),
    K("container.docker", "docker", "bool", True),
    K("container.shutdown_timeout", "shutdown_timeout", "int", 60, min=0, max=3600),
    K("container.ready_timeout", "ready_timeout", "int", 30, min=1, max=3600),
    K("container.build.base", "build_base", "str", DEFAULT_IMAGE),
    K("container.build.script", "build_script", "str", ""),
    K("container.build.commands", "build_commands", "list", []),
    K("tool.name", "tool", "tool", "claude"),
    K("tool.permission_mode", "permission_mode", "enum", "bypass", "bypass", "interactive"),
    K("tool.auto_context", "auto_context", "bool", True),
    K("tool.binary", "tool_binary", "str", ""),
    K("tool.claude.model", "claude_model", "str", ""),
    K("incus.project", "project", "str", "default"),
    K("incus.code_uid", "code_uid", "int", 1000, min=1, max=65535),
    K("incus.code_user", "code_user", "str", "code"),
    K("network.mode", "network_mode", "enum", "restricted", "restricted", "open", "allowlist"),
    K("network.bridge", "bridge", "str", DEFAULT_BRIDGE),
    K("network.allowed_domains", "allowed_domains", "list", list(DEFAULT_ALLOWED_DOMAINS)),
    K("network.allow_local_network_access", "allow_local_network_access", "bool", False),
    K("network.block_private_networks", "block_private_networks", "bool", True),
    K("network.block_metadata_endpoint", "block_metadata_endpoint", "bool", True),
    K("network.refresh_interval_minutes", "refresh_interval_minutes", "int", 30, min=1),
    K("network.logging.enabled", "network_logging_enabled", "bool", True),
    K("network.logging.path", "network_logging_path", "str", "~/.coi/logs/network.log"),
    K("security.protected_paths", "protected_paths", "list", list(DEFAULT_PROTECTED_PATHS)),
    K("security.additional_protected_paths", "additional_protected_paths", "list", []),
    K("security.disable_protection", "disable_protection", "bool", False),
    K("monitoring.enabled", "monitoring_enabled", "bool", False),
    K("monitoring.auto_pause_on_high", "monitoring_auto_pause_on_high", "bool", True),
    K("monitoring.auto_kill_on_critical", "monitoring_auto_kill_on_critical", "bool", True),
    K("monitoring.poll_interval_sec", "monitoring_poll_interval_sec", "int", 2, min=1, max=3600),
    K(
        "monitoring.file_read_threshold_mb",
        "monitoring_file_read_threshold_mb",
        "float",
        50.0,
        min=0,
    ),
    K(
        "monitoring.file_read_rate_mb_per_sec",
        "monitoring_file_read_rate_mb_per_sec",
        "float",
        10.0,
        min=0,
    ),
    K(
        "monitoring.audit_log_retention_days",
        "monitoring_audit_log_retention_days",
        "int",
        30,
        min=0,
    ),
    K("monitoring.process_count_threshold", "monitoring_process_count_threshold", "int", 0, min=0),
    K(
        "monitoring.reverse_shell_one_liners",
        "monitoring_reverse_shell_one_liners",
        "enum",
        "critical",
        "critical",
        "warn",
        "off",
    ),
    K("monitoring.forensics_on_kill", "monitoring_forensics_on_kill", "bool", False),
    K("limits.cpu.count", "limit_cpu_count", "cpuset", ""),
    K("limits.cpu.allowance", "limit_cpu_allowance", "allowance", ""),
    K("limits.cpu.priority", "limit_cpu_priority", "int", 0, min=0, max=10),
    K("limits.memory.limit", "limit_memory", "memory", ""),
    K("limits.memory.enforce", "limit_memory_enforce", "enum", "soft", "soft", "hard"),
    K("limits.memory.swap", "limit_memory_swap", "swap", "true"),
    K("limits.disk.read", "limit_disk_read", "disk_rate", ""),
    K("limits.disk.write", "limit_disk_write", "disk_rate", ""),
    K("limits.disk.max", "limit_disk_max", "disk_rate", ""),
    K("limits.disk.priority", "limit_disk_priority", "int", 0, min=0, max=10),
    K("limits.disk.size", "limit_disk_size", "size", ""),
    K("limits.runtime.max_duration", "max_duration", "duration", ""),
    K("limits.runtime.max_processes", "max_processes", "int", 0, min=0, max=4194304),
    K("limits.runtime.auto_stop", "auto_stop", "bool", True),
    K("limits.runtime.stop_graceful", "stop_graceful", "bool", True),
    K("ssh.forward_agent", "ssh_forward_agent", "bool", False),
    K("timezone.mode", "timezone_mode", "enum", "host", "host", "fixed", "utc"),
    K("timezone.name", "timezone_name", "str", ""),
)

BY_PATH: dict[str, Key] = {key.path: key for key in KEYS}

# Older spellings still read (0.7-era `[defaults] image/persistent`).
ALIASES: dict[str, str] = {
    "defaults.image": "container.image",
    "defaults.persistent": "container.persistent",
}

# Keys with their own merge rules (see settings.apply_layer and profiles.inherit).
FORWARD_ENV = "forward_env"
ENVIRONMENT = "environment"
MOUNTS = "mounts"
SPECIAL_SPELLINGS: dict[str, str] = {
    "forward_env": FORWARD_ENV,
    "defaults.forward_env": FORWARD_ENV,
    "environment": ENVIRONMENT,
    "defaults.environment": ENVIRONMENT,
    "mounts": MOUNTS,
}
# Root keys only a profile has.
PROFILE_ROOT_KEYS = ("inherits", "context")
MOUNT_FIELDS = ("host", "container", "readonly", "shift")

# Environment variables -> key path (or a Settings-only attribute, prefixed "attr:").
ENV_VARS: dict[str, str] = {
    "COI_CONTAINER_PREFIX": "attr:container_prefix",
    "INCUS_SOCKET": "attr:socket",
    "COI_PROFILE": "defaults.profile",
    "COI_IMAGE": "container.image",
    "COI_PERSISTENT": "container.persistent",
    "COI_STORAGE_POOL": "container.storage_pool",
    "COI_TOOL": "tool.name",
    "COI_PERMISSION_MODE": "tool.permission_mode",
    "COI_PROJECT": "incus.project",
    "COI_BRIDGE": "network.bridge",
    "COI_NETWORK_MODE": "network.mode",
    "COI_DOCKER": "container.docker",
    # Legacy names (the original removed them in 0.10; we still read them).
    "CLAUDE_ON_INCUS_IMAGE": "container.image",
    "CLAUDE_ON_INCUS_PERSISTENT": "container.persistent",
    "COI_LIMIT_CPU": "limits.cpu.count",
    "COI_LIMIT_CPU_ALLOWANCE": "limits.cpu.allowance",
    "COI_LIMIT_MEMORY": "limits.memory.limit",
    "COI_LIMIT_MEMORY_SWAP": "limits.memory.swap",
    "COI_LIMIT_DISK_READ": "limits.disk.read",
    "COI_LIMIT_DISK_WRITE": "limits.disk.write",
    "COI_LIMIT_DURATION": "limits.runtime.max_duration",
}


def known_paths(profile: bool) -> list[str]:
    """Every spelling a file may use (for "did you mean")."""
    paths = [*BY_PATH, *ALIASES, *SPECIAL_SPELLINGS]
    if profile:
        paths += list(PROFILE_ROOT_KEYS)
    return paths


def sections() -> set[str]:
    """Tables that may appear as [a.b] headers."""
    out: set[str] = {"defaults.environment", "environment"}
    for path in (*BY_PATH, *ALIASES, *SPECIAL_SPELLINGS):
        parts = path.split(".")
        for i in range(1, len(parts)):
            out.add(".".join(parts[:i]))
    return out
