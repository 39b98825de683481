"""Effective settings: built-in defaults < ~/.coi/config.toml < ./.coi/config.toml < $COI_CONFIG
< environment (COI_*, legacy CLAUDE_ON_INCUS_*) < CLI flags (applied by the caller).

This module reads the keys the session layer needs; full validation and profiles build on it.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from coi_tui.errors import CoiError
from coi_tui.paths import coi_home

DEFAULT_IMAGE = "coi-default"
DEFAULT_BRIDGE = "coibr0"
DEFAULT_POOL = "coi"


@dataclass
class Settings:
    image: str = DEFAULT_IMAGE
    persistent: bool = False
    storage_pool: str = ""
    bridge: str = DEFAULT_BRIDGE
    tool: str = "claude"
    permission_mode: str = "bypass"
    container_prefix: str = "coi-"
    code_uid: int = 1000
    code_user: str = "code"
    project: str = "default"
    socket: str = ""
    shutdown_timeout: int = 60
    ready_timeout: int = 30
    # [network]
    network_mode: str = "restricted"
    allowed_domains: list[str] = field(
        default_factory=lambda: [
            "registry.npmjs.org",
            "npm.pkg.github.com",
            "api.anthropic.com",
            "platform.claude.com",
        ]
    )
    allow_local_network_access: bool = False
    block_private_networks: bool = True
    block_metadata_endpoint: bool = True
    refresh_interval_minutes: int = 30
    # [security]
    protected_paths: list[str] = field(
        default_factory=lambda: [
            ".git/hooks",
            ".git/config",
            ".husky",
            ".vscode",
        ]
    )
    additional_protected_paths: list[str] = field(default_factory=list)
    disable_protection: bool = False
    # [monitoring]
    monitoring_enabled: bool = False
    sources: dict[str, str] = field(default_factory=dict)

    def set(self, key: str, value: Any, source: str) -> None:
        setattr(self, key, value)
        self.sources[key] = source


# (toml section, key) -> settings attribute
TOML_KEYS: dict[tuple[str, str], str] = {
    ("container", "image"): "image",
    ("container", "persistent"): "persistent",
    ("container", "storage_pool"): "storage_pool",
    ("container", "shutdown_timeout"): "shutdown_timeout",
    ("container", "ready_timeout"): "ready_timeout",
    ("defaults", "image"): "image",
    ("defaults", "persistent"): "persistent",
    ("tool", "name"): "tool",
    ("tool", "permission_mode"): "permission_mode",
    ("incus", "project"): "project",
    ("incus", "code_uid"): "code_uid",
    ("incus", "code_user"): "code_user",
    ("network", "bridge"): "bridge",
    ("network", "mode"): "network_mode",
    ("network", "allowed_domains"): "allowed_domains",
    ("network", "allow_local_network_access"): "allow_local_network_access",
    ("network", "block_private_networks"): "block_private_networks",
    ("network", "block_metadata_endpoint"): "block_metadata_endpoint",
    ("network", "refresh_interval_minutes"): "refresh_interval_minutes",
    ("security", "protected_paths"): "protected_paths",
    ("security", "additional_protected_paths"): "additional_protected_paths",
    ("security", "disable_protection"): "disable_protection",
    ("monitoring", "enabled"): "monitoring_enabled",
}

ENV_KEYS: dict[str, str] = {
    "COI_CONTAINER_PREFIX": "container_prefix",
    "COI_IMAGE": "image",
    "COI_PERSISTENT": "persistent",
    "COI_TOOL": "tool",
    "COI_BRIDGE": "bridge",
    "COI_STORAGE_POOL": "storage_pool",
    "COI_PROJECT": "project",
    "COI_NETWORK_MODE": "network_mode",
    "INCUS_SOCKET": "socket",
    "CLAUDE_ON_INCUS_IMAGE": "image",
    "CLAUDE_ON_INCUS_PERSISTENT": "persistent",
}


def _coerce(name: str, value: Any, where: str) -> Any:
    kinds = {f.name: f.type for f in fields(Settings)}
    kind = kinds[name]
    if kind == "bool":
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off", ""):
            return False
        raise CoiError(f"{where}: expected true or false, got {value!r}")
    if kind == "list[str]":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise CoiError(f"{where}: expected a list of strings, got {value!r}")
        return list(value)
    if kind == "int":
        try:
            return int(value)
        except (TypeError, ValueError):
            raise CoiError(f"{where}: expected a whole number, got {value!r}") from None
    if not isinstance(value, str):
        raise CoiError(f"{where}: expected a string, got {value!r}")
    return value


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise CoiError(f"{path}: invalid TOML: {exc}") from None
    except OSError as exc:
        raise CoiError(f"{path}: cannot read: {exc.strerror}") from None


def config_files(cwd: Path) -> list[Path]:
    files = [coi_home() / "config.toml", cwd / ".coi" / "config.toml"]
    if os.environ.get("COI_CONFIG"):
        files.append(Path(os.environ["COI_CONFIG"]).expanduser())
    return files


def load_settings(cwd: Path | None = None, env: dict[str, str] | None = None) -> Settings:
    env = dict(os.environ if env is None else env)
    cwd = cwd or Path.cwd()
    settings = Settings()
    for path in config_files(cwd):
        if not path.is_file():
            if path == Path(env.get("COI_CONFIG", "")).expanduser():
                raise CoiError(f"COI_CONFIG names {path}, which does not exist")
            continue
        data = read_toml(path)
        for (section, key), attr in TOML_KEYS.items():
            table = data.get(section)
            if isinstance(table, dict) and key in table:
                where = f"{path}: [{section}] {key}"
                settings.set(attr, _coerce(attr, table[key], where), str(path))
    for var, attr in ENV_KEYS.items():
        if env.get(var):
            settings.set(attr, _coerce(attr, env[var], f"${var}"), f"${var}")
    if env.get("COI_USE_DUMMY", "").lower() in ("1", "true", "yes"):
        settings.set("tool", "dummy", "$COI_USE_DUMMY")
    return settings
