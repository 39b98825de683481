"""Effective settings, lowest to highest precedence: built-in defaults < ~/.coi/config.toml <
./.coi/config.toml < $COI_CONFIG < the profile (--profile, or [defaults] profile) < environment
(COI_*, legacy CLAUDE_ON_INCUS_* / COI_LIMIT_*) < CLI flags.

Every file is validated against `schema.KEYS`; a problem is one CoiError line naming the file,
line and key path and what is allowed. Each value remembers where it came from (`sources`).
"""

from __future__ import annotations

import difflib
import os
import re
import sys
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from coi_tui.config.schema import (
    ALIASES,
    BY_PATH,
    CHECKS,
    DEFAULT_ALLOWED_DOMAINS,
    DEFAULT_BRIDGE,
    DEFAULT_IMAGE,
    DEFAULT_POOL,
    DEFAULT_PROTECTED_PATHS,
    ENV_NAME_RE,
    ENV_VARS,
    ENVIRONMENT,
    FILE_TYPES,
    FORWARD_ENV,
    GTFOBINS_SOURCE,
    LEGACY_PROFILE,
    MONITOR_C2_PORTS,
    MONITOR_CANARY_KINDS,
    MONITOR_METADATA_ADDRESSES,
    MOUNT_FIELDS,
    MOUNTS,
    PROFILE_ROOT_KEYS,
    SIGMA_SOURCE,
    SPECIAL_SPELLINGS,
    Invalid,
    Key,
    known_paths,
    sections,
)
from coi_tui.core.errors import CoiError, UsageError
from coi_tui.core.paths import coi_home, read_regular_text

__all__ = ["DEFAULT_BRIDGE", "DEFAULT_IMAGE", "DEFAULT_POOL", "Mount", "Settings", "load_settings"]

WORKSPACE = "/workspace"
PROMPT_FILE_LIMIT = 1024 * 1024  # [prompts] { file = ... }: a prompt, not a data set


def _check_remotes(value: Any, where: str) -> None:
    from coi_tui.incus.remotes import _from_table

    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise CoiError(f"{where}: remotes: expected [[remotes]] tables")
    for table in value:
        _from_table(table, where)


def _check_tui(value: Any, where: str) -> None:
    if not isinstance(value, dict):
        raise CoiError(f"{where}: tui: expected a [tui] table")


# Top-level tables whose contents another module owns and validates: [[remotes]]
# (incus/remotes.py) and [tui] (the dashboard, e.g. [tui.keymap]).
OWNED_ELSEWHERE: dict[str, Any] = {"remotes": _check_remotes, "tui": _check_tui}


@dataclass
class Mount:
    host: str
    container: str
    readonly: bool = False
    shift: bool | None = None  # None: like the workspace (idmapped when the uids allow it)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"host": self.host, "container": self.container}
        out["readonly"] = self.readonly
        if self.shift is not None:
            out["shift"] = self.shift
        return out


@dataclass
class Settings:
    # Attribute names are a contract with the rest of coi: never rename one.
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
    docker: bool = True  # [container] docker: the nesting keys Docker-in-container needs
    # [defaults] / profiles
    profile: str = ""
    profile_chain: list[str] = field(default_factory=list)  # child first
    profile_context: str = ""  # host path of the profile's CONTEXT.md
    forward_env: list[str] = field(default_factory=list)
    environment: dict[str, str] = field(default_factory=dict)
    mounts: list[Mount] = field(default_factory=list)
    # [container.build]
    build_base: str = DEFAULT_IMAGE
    build_script: str = ""  # absolute once loaded
    build_commands: list[str] = field(default_factory=list)
    # [tool]
    auto_context: bool = True
    tool_binary: str = ""
    claude_model: str = ""
    # [network]
    network_mode: str = "restricted"
    allowed_domains: list[str] = field(default_factory=lambda: list(DEFAULT_ALLOWED_DOMAINS))
    allow_local_network_access: bool = False
    block_private_networks: bool = True
    block_metadata_endpoint: bool = True
    refresh_interval_minutes: int = 30
    network_logging_enabled: bool = True
    network_logging_path: str = "~/.coi/logs/network.log"
    # [security]
    protected_paths: list[str] = field(default_factory=lambda: list(DEFAULT_PROTECTED_PATHS))
    additional_protected_paths: list[str] = field(default_factory=list)
    disable_protection: bool = False
    # [monitoring]
    monitoring_enabled: bool = False
    monitoring_auto_pause_on_high: bool = True
    monitoring_auto_kill_on_critical: bool = True
    monitoring_poll_interval_sec: int = 2
    monitoring_file_read_threshold_mb: float = 50.0
    monitoring_file_read_rate_mb_per_sec: float = 10.0
    monitoring_audit_log_retention_days: int = 30
    monitoring_process_count_threshold: int = 0
    monitoring_reverse_shell_one_liners: str = "critical"
    monitoring_forensics_on_kill: bool = False
    monitoring_actions_info: str = "log"
    monitoring_actions_warning: str = "alert"
    monitoring_actions_high: str = "pause"
    monitoring_actions_critical: str = "kill"
    monitoring_dedup_window_sec: float = 30.0
    monitoring_scan_interval_sec: float = 1.0
    monitoring_idle_exit_sec: float = 120.0
    monitoring_nflog_group: int = 0
    monitoring_c2_ports: list[int] = field(default_factory=lambda: list(MONITOR_C2_PORTS))
    monitoring_metadata_addresses: list[str] = field(
        default_factory=lambda: list(MONITOR_METADATA_ADDRESSES)
    )
    monitoring_exfil_threshold_mb: float = 20.0
    monitoring_exfil_window_sec: float = 10.0
    monitoring_exfil_correlate_mb: float = 1.0
    monitoring_dns_rate_per_min: int = 100
    monitoring_dns_label_max: int = 30
    monitoring_dns_name_max: int = 52
    monitoring_dns_entropy_bits: float = 3.5
    monitoring_spawn_rate_per_sec: int = 100
    monitoring_canaries: bool = False
    monitoring_canary_kinds: list[str] = field(default_factory=lambda: list(MONITOR_CANARY_KINDS))
    # [limits.*]
    limit_cpu_count: str = ""
    limit_cpu_allowance: str = ""
    limit_cpu_priority: int = 0
    limit_memory: str = ""
    limit_memory_enforce: str = "soft"
    limit_memory_swap: str = "true"
    limit_disk_read: str = ""
    limit_disk_write: str = ""
    limit_disk_max: str = ""
    limit_disk_priority: int = 0
    limit_disk_size: str = ""
    max_duration: str = ""
    max_processes: int = 0
    auto_stop: bool = True
    stop_graceful: bool = True
    # [ssh] / [timezone]
    ssh_forward_agent: bool = False
    timezone_mode: str = "host"
    timezone_name: str = ""
    # Reference keys (schema.KEYS): those with enforced=False are accepted and shown only.
    env_command_timeout: str = "30s"
    env_commands: dict[str, str] = field(default_factory=dict)
    alias: str = ""
    session_name: str = ""
    stale_base_check: str = "warn"
    build_compression: str = ""  # "" = ours: none (a local image imports faster)
    build_agents: list[str] = field(default_factory=lambda: ["claude", "opencode", "pi"])
    build_cloud_init: bool = False
    pre_launch: list[str] = field(default_factory=list)
    context_file: str = ""
    context_json: bool = True
    context_json_file: str = ""
    claude_effort_level: str = ""
    codex_model: str = ""
    codex_reasoning_effort: str = ""
    use_tmux: bool = True
    sessions_dir: str = "~/.coi/sessions"
    storage_dir: str = "~/.coi/storage"
    logs_dir: str = "~/.coi/logs"
    preserve_workspace_path: bool = False
    incus_group: str = "incus-admin"
    disable_shift: bool = False
    use_sudo: bool = True
    dns_servers: list[str] = field(default_factory=list)
    allowed_ports: list[int] = field(default_factory=list)
    network_hosts: list[dict[str, Any]] = field(default_factory=list)
    writable_paths: list[str] = field(default_factory=list)
    secret_paths: list[str] = field(default_factory=list)
    host_immutable: bool = True
    reduce_kernel_surface: bool = False
    reduce_kernel_surface_strict: bool = False
    git_writable_hooks: bool = False
    git_name: str = ""
    git_email: str = ""
    git_seed_host_identity: bool = True
    git_readonly: bool = False
    git_strip_attribution: bool = True
    git_strip_attribution_patterns: list[str] = field(default_factory=list)
    git_protected_branches: list[str] = field(default_factory=lambda: ["main", "master"])
    limit_disk_tmpfs_size: str = ""
    monitoring_nft_enabled: bool = False
    monitoring_nft_rate_limit: int = 100
    monitoring_nft_dns_query_threshold: int = 100
    monitoring_nft_log_dns_queries: bool = True
    monitoring_nft_lima_host: str = ""
    gtfobins_source: str = GTFOBINS_SOURCE
    gtfobins_dir: str = "~/.coi/gtfobins"
    sigma_source: str = SIGMA_SOURCE
    sigma_dir: str = "~/.coi/sigma"
    ports_pool: int = 0
    port_maps: list[dict[str, Any]] = field(default_factory=list)
    sockets: list[dict[str, Any]] = field(default_factory=list)
    credentials: list[dict[str, Any]] = field(default_factory=list)
    prompts: dict[str, str] = field(default_factory=dict)  # name -> text (files already read)
    # key path (or attribute) -> where its value came from
    sources: dict[str, str] = field(default_factory=dict)

    def set(self, key: str, value: Any, source: str) -> None:
        setattr(self, key, value)
        self.sources[key] = source

    def value(self, path: str) -> Any:
        return getattr(self, BY_PATH[path].attr)

    def source(self, path: str) -> str:
        return self.sources.get(path, "default")


# ---------------------------------------------------------------------- one file
@dataclass
class Layer:
    """The validated contents of one config source, flattened to key paths."""

    label: str  # "user config", "profile dev", "env", ...
    origin: str  # file path, or "" for env/flags
    values: dict[str, Any] = field(default_factory=dict)
    lines: dict[str, int] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)  # per-path override (profile chains)
    user_only: list[str] = field(default_factory=list)  # [[remotes]], [tui] seen in a project

    def where(self, path: str) -> str:
        if path in self.labels:
            return self.labels[path]
        line = self.lines.get(path)
        place = f"{self.origin}:{line}" if line and self.origin else self.origin
        return f"{self.label} ({place})" if place else self.label


HEADER_RE = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
KEYLINE_RE = re.compile(r"^\s*([A-Za-z0-9_\-.\"' ]+?)\s*=")


def _clean(dotted: str) -> str:
    return ".".join(part.strip().strip("\"'") for part in dotted.split("."))


def find_line(text: str, dotted: str) -> int | None:
    """Line (1-based) where a dotted key is set, else where its table starts, else None."""
    table = ""
    best: int | None = None
    for number, line in enumerate(text.splitlines(), 1):
        header = HEADER_RE.match(line)
        if header and not KEYLINE_RE.match(line):
            table = _clean(header.group(1))
            if dotted == table or dotted.startswith(table + ".") or table.startswith(dotted + "."):
                best = best or number
            continue
        keyline = KEYLINE_RE.match(line)
        if keyline:
            full = f"{table}.{_clean(keyline.group(1))}" if table else _clean(keyline.group(1))
            if full == dotted:
                return number
            if dotted.startswith(full + "."):  # inline table
                best = best or number
    return best


def show_key(dotted: str) -> str:
    """A key path as users write it: "[limits.memory] limit", "[network]", "forward_env"."""
    if dotted in sections():
        return f"[{dotted}]"
    table, _, name = dotted.rpartition(".")
    return f"[{table}] {name}" if table else name


TYPE_WORDS: dict[tuple[type, ...], str] = {
    (bool,): "true or false",
    (int,): "a whole number",
    (int, float): "a number",
    (list,): "a list",
    (dict,): "a table",
    (str, bool): "true, false or a string",
    (str, int): "a number or a string",
}
_NOTED: set[str] = set()


def deprecated(message: str) -> None:
    """A one-line deprecation note on stderr, once per process."""
    if message not in _NOTED:
        _NOTED.add(message)
        print(f"Warning: {message}", file=sys.stderr)


class FileParser:
    """Validates one TOML file into a Layer. Errors name file:line and the key path."""

    def __init__(self, path: Path, label: str, profile: bool = False) -> None:
        self.path = path
        self.profile = profile
        self.layer = Layer(label, str(path))
        self.text = ""

    def fail(self, dotted: str, message: str) -> CoiError:
        line = find_line(self.text, dotted)
        where = f"{self.path}:{line}" if line else str(self.path)
        return CoiError(f"{where}: {show_key(dotted)}: {message}")

    def parse(self) -> Layer:
        try:
            self.text = self.path.read_text(encoding="utf-8")
        except OSError as exc:
            raise CoiError(f"{self.path}: cannot read: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise CoiError(f"{self.path}: not UTF-8 text") from None
        try:
            data = tomllib.loads(self.text)
        except tomllib.TOMLDecodeError as exc:
            raise CoiError(f"{self.path}: invalid TOML: {exc}") from None
        self.walk(data, "")
        return self.layer

    def record(self, path: str, value: Any, spelled: str) -> None:
        self.layer.values[path] = value
        line = find_line(self.text, spelled)
        if line:
            self.layer.lines[path] = line

    def walk(self, table: dict[str, Any], prefix: str) -> None:
        for name, value in table.items():
            dotted = f"{prefix}{name}"
            if dotted in OWNED_ELSEWHERE and self.layer.label == "project config":
                self.layer.user_only.append(dotted)  # never read from a project: see trust.py
            elif dotted in OWNED_ELSEWHERE:
                OWNED_ELSEWHERE[dotted](value, f"{self.path}:{find_line(self.text, dotted) or 1}")
            elif dotted in SPECIAL_SPELLINGS:
                self.special(SPECIAL_SPELLINGS[dotted], dotted, value)
            elif self.profile and (dotted in LEGACY_PROFILE or dotted == "build"):
                self.legacy(dotted, value)
            elif self.profile and dotted in PROFILE_ROOT_KEYS:
                if not isinstance(value, str) or not value.strip():
                    raise self.fail(dotted, f"expected a non-empty string, got {value!r}")
                if dotted == "context":
                    value = str((self.path.parent / Path(value).expanduser()).resolve())
                self.record(dotted, value.strip(), dotted)
            elif dotted in BY_PATH or dotted in ALIASES:
                key = BY_PATH[ALIASES.get(dotted, dotted)]
                if self.profile and key.path == "defaults.profile":
                    raise self.fail(dotted, "a profile cannot select a profile (use inherits)")
                self.record(key.path, self.check(key, value, dotted), dotted)
                if dotted in ("defaults.image", "defaults.persistent"):  # the pre-0.8 layout
                    deprecated(
                        f"{self.path}:{find_line(self.text, dotted) or 1}: {show_key(dotted)} is "
                        f"the pre-0.8 layout; write {show_key(key.path)} instead"
                    )
            elif isinstance(value, dict) and dotted in sections():
                self.walk(value, dotted + ".")
            else:
                raise self.unknown(dotted, value)

    def legacy(self, dotted: str, value: Any) -> None:
        """The 0.7-era profile shape: root image = "..." and [build] script/base/commands."""
        if dotted == "build":
            if not isinstance(value, dict):
                raise self.fail(dotted, f"expected a table ([build]), got {value!r}")
            for name, item in value.items():
                if f"build.{name}" not in LEGACY_PROFILE:
                    raise self.unknown(f"container.build.{name}", item)
                self.legacy(f"build.{name}", item)
            return
        key = BY_PATH[LEGACY_PROFILE[dotted]]
        self.record(key.path, self.check(key, value, dotted), dotted)
        line = find_line(self.text, dotted)
        deprecated(
            f"{self.path}:{line or 1}: {show_key(dotted)} is the 0.7 profile format; "
            f"write {show_key(key.path)} instead"
        )

    def unknown(self, dotted: str, value: Any) -> CoiError:
        if dotted in sections():
            return self.fail(dotted, f"expected a table ([{dotted}]), got {value!r}")
        candidates = known_paths(self.profile) + sorted(sections())
        close = difflib.get_close_matches(dotted, candidates, n=1, cutoff=0.6)
        if not close:  # a misspelled section: compare the last part within known sections
            leaf = dotted.rpartition(".")[2]
            close = difflib.get_close_matches(
                leaf, [c.rpartition(".")[2] for c in candidates], n=1, cutoff=0.75
            )
            close = (
                [c for c in candidates if c.endswith("." + close[0]) or c == close[0]][:1]
                if (close)
                else []
            )
        hint = f" (did you mean {show_key(close[0])}?)" if close else ""
        return self.fail(dotted, f"unknown key{hint}")

    def check(self, key: Key, value: Any, dotted: str) -> Any:
        # A file has real types: bool must be bool, a number a number (env vars are text).
        types = FILE_TYPES.get(key.kind, (str,))
        if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
            raise self.fail(dotted, f"expected {TYPE_WORDS.get(types, 'a string')}, got {value!r}")
        try:
            checked = CHECKS[key.kind](key, value)
        except Invalid as exc:
            raise self.fail(dotted, str(exc)) from None
        if key.path == "container.build.script" and checked:
            checked = str((self.path.parent / Path(checked).expanduser()).resolve())
        if key.path == "prompts":
            checked = {name: self.prompt_text(dotted, name, v) for name, v in checked.items()}
        return checked

    def prompt_text(self, dotted: str, name: str, value: str | dict[str, str]) -> str:
        """[prompts] name = "text", or { file = "path" } read relative to this file."""
        if isinstance(value, str):
            return value
        path = Path(value["file"]).expanduser()
        path = path if path.is_absolute() else self.path.parent / path
        try:
            return read_regular_text(path, PROMPT_FILE_LIMIT)
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or "not UTF-8 text"
            raise self.fail(f"{dotted}.{name}", f"cannot read {path}: {reason}") from None

    def special(self, kind: str, dotted: str, value: Any) -> None:
        if kind == FORWARD_ENV:
            if not isinstance(value, list):
                raise self.fail(dotted, f'expected a list like ["NAME"], got {value!r}')
            try:
                names = CHECKS["env_names"](BY_PATH["tool.name"], value)
            except Invalid as exc:
                raise self.fail(dotted, str(exc)) from None
            self.record(FORWARD_ENV, names, dotted)
        elif kind == ENVIRONMENT:
            if not isinstance(value, dict):
                raise self.fail(dotted, f'expected a table of NAME = "value", got {value!r}')
            env: dict[str, str] = dict(self.layer.values.get(ENVIRONMENT, {}))
            for name, text in value.items():
                if not ENV_NAME_RE.match(name):
                    raise self.fail(f"{dotted}.{name}", "not a valid environment variable name")
                if isinstance(text, bool) or not isinstance(text, (str, int, float)):
                    raise self.fail(f"{dotted}.{name}", f"expected a string, got {text!r}")
                env[name] = str(text)
                line = find_line(self.text, f"{dotted}.{name}")
                if line:
                    self.layer.lines[f"environment.{name}"] = line
            self.record(ENVIRONMENT, env, dotted)
        elif kind == MOUNTS:
            if isinstance(value, dict) and set(value) == {"default"}:  # [[mounts.default]]
                dotted, value = f"{dotted}.default", value["default"]
            self.record(MOUNTS, self.mounts(dotted, value), dotted)

    def mounts(self, dotted: str, value: Any) -> list[Mount]:
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise self.fail(dotted, f"expected [[{dotted}]] tables with host and container")
        out: list[Mount] = []
        for index, entry in enumerate(value):
            here = f"{dotted}[{index}]"
            for name in entry:
                if name not in MOUNT_FIELDS:
                    close = difflib.get_close_matches(name, MOUNT_FIELDS, n=1)
                    hint = f' (did you mean "{close[0]}"?)' if close else ""
                    raise self.fail(dotted, f'{here}: unknown field "{name}"{hint}')
            host, container = entry.get("host"), entry.get("container")
            if not isinstance(host, str) or not host or not isinstance(container, str):
                raise self.fail(dotted, f'{here}: needs host = "PATH" and container = "/PATH"')
            for flag in ("readonly", "shift"):
                if flag in entry and not isinstance(entry[flag], bool):
                    raise self.fail(dotted, f"{here}: {flag} must be true or false")
            host_path = Path(host).expanduser()
            if not host_path.is_absolute():
                host_path = self.path.parent / host_path
            out.append(
                Mount(
                    str(host_path.resolve()),
                    container,
                    bool(entry.get("readonly", False)),
                    entry.get("shift"),
                )
            )
            try:
                check_mount_target(out[-1])
            except CoiError as exc:
                raise self.fail(dotted, f"{here}: {exc}") from None
        return out


def check_mount_target(mount: Mount) -> None:
    target = mount.container
    if not target.startswith("/"):
        raise CoiError(f'container path must be absolute, got "{target}"')
    norm = os.path.normpath(target)
    if norm == "/":
        raise CoiError("cannot mount over the container's root directory")
    if norm == WORKSPACE or norm.startswith(WORKSPACE + "/"):
        raise CoiError(f'cannot mount over or inside {WORKSPACE} (got "{target}")')


def check_mounts(mounts: list[Mount], *, sources_exist: bool) -> None:
    """No mount inside another, none over /workspace; sources exist (at session start)."""
    seen: list[str] = []
    for mount in mounts:
        check_mount_target(mount)
        target = os.path.normpath(mount.container)
        for other in seen:
            if target == other or target.startswith(other + "/") or other.startswith(target + "/"):
                raise CoiError(f'mounts may not nest or repeat: "{target}" and "{other}" overlap')
        seen.append(target)
        if sources_exist and not os.path.exists(mount.host):
            raise CoiError(f'mount source "{mount.host}" does not exist (for {target})')


# ---------------------------------------------------------------------- merging
def apply_layer(settings: Settings, layer: Layer) -> None:
    """Config-level merge: scalars and lists replace, environment keys merge ("" deletes),
    forward_env is a union, mounts are appended."""
    for path, value in layer.values.items():
        where = layer.where(path)
        if path == ENVIRONMENT:
            for name, text in value.items():
                where = layer.where(f"environment.{name}")
                if text == "":
                    settings.environment.pop(name, None)
                    settings.sources.pop(f"environment.{name}", None)
                else:
                    settings.environment[name] = text
                    settings.sources[f"environment.{name}"] = where
        elif path == FORWARD_ENV:
            for name in value:
                if name not in settings.forward_env:
                    settings.forward_env.append(name)
                    settings.sources[f"forward_env.{name}"] = where
        elif path == MOUNTS:
            for mount in value:
                settings.sources[f"mounts.{mount.container}"] = where
            settings.mounts.extend(value)
        elif path == "context":
            settings.profile_context = value
            settings.sources["context"] = where
        elif path in BY_PATH:
            key = BY_PATH[path]
            setattr(settings, key.attr, merged(key.merge, getattr(settings, key.attr), value))
            settings.sources[path] = where
            settings.sources[key.attr] = where  # older readers look values up by attribute


def merged(how: str, old: Any, new: Any) -> Any:
    """Between config levels: replace; append ([[sockets]], [[credentials]]); union
    (writable/secret paths); by_name ([[ports.map]]); map (keys merge, later wins)."""
    if how == "append":
        return [*old, *new]
    if how == "union":
        return [*old, *(item for item in new if item not in old)]
    if how == "by_name":
        out = {entry["name"]: entry for entry in old}
        out.update({entry["name"]: entry for entry in new})
        return list(out.values())
    if how == "map":
        return {**old, **new}
    return list(new) if isinstance(new, list) else dict(new) if isinstance(new, dict) else new


def env_layer(env: dict[str, str]) -> Layer:
    layer = Layer("env", "")
    for var, path in ENV_VARS.items():
        raw = env.get(var)
        if not raw:
            continue
        if path.startswith("attr:"):
            layer.values[path] = raw
        else:
            try:
                layer.values[path] = CHECKS[BY_PATH[path].kind](BY_PATH[path], raw)
            except Invalid as exc:
                raise CoiError(f"${var}: {exc}") from None
        layer.labels[path] = f"${var}"
    return layer


def flags_layer(flags: dict[str, tuple[Any, str]]) -> Layer:
    layer = Layer("flag", "")
    for path, (value, flag) in flags.items():
        key = BY_PATH[path]
        try:
            layer.values[path] = CHECKS[key.kind](key, value)
        except Invalid as exc:
            raise UsageError(f"{flag}: {exc}") from None
        layer.labels[path] = flag
    return layer


def home_dir(env: dict[str, str]) -> Path:
    return Path(env["COI_HOME"]).expanduser() if env.get("COI_HOME") else coi_home()


def config_files(cwd: Path, env: dict[str, str] | None = None) -> list[Path]:
    """The config files coi reads, lowest precedence first (present or not)."""
    return [path for _label, path in labelled_config_files(cwd, env)]


def labelled_config_files(cwd: Path, env: dict[str, str] | None = None) -> list[tuple[str, Path]]:
    env = dict(os.environ if env is None else env)
    files = [
        ("user config", home_dir(env) / "config.toml"),
        ("project config", cwd / ".coi" / "config.toml"),
    ]
    if env.get("COI_CONFIG"):
        files.append(("$COI_CONFIG", Path(env["COI_CONFIG"]).expanduser()))
    return files


def trusted_config_files(cwd: Path | None = None, env: dict[str, str] | None = None) -> list[Path]:
    """The user's config files, in order (later wins), without the project's: what [[remotes]]
    and [tui] are read from."""
    cwd = (cwd or Path.cwd()).absolute()
    return [path for label, path in labelled_config_files(cwd, env) if label != "project config"]


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise CoiError(f"{path}: invalid TOML: {exc}") from None
    except OSError as exc:
        raise CoiError(f"{path}: cannot read: {exc.strerror}") from None


def load_settings(
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    *,
    profile: str | None = None,
    apply_profile: bool = False,
    flags: dict[str, tuple[Any, str]] | None = None,
) -> Settings:
    """The effective settings. `profile` (the --profile flag) or, with apply_profile, the
    [defaults] profile is applied above the files and below env and flags."""
    env = dict(os.environ if env is None else env)
    cwd = (cwd or Path.cwd()).absolute()
    settings = Settings()
    legacy = cwd / ".coi.toml"
    if legacy.is_file():
        raise CoiError(
            f"{legacy}: old config location; move it: mkdir -p .coi && mv .coi.toml "
            ".coi/config.toml"
        )
    for label, path in labelled_config_files(cwd, env):
        if not path.is_file():
            if label == "$COI_CONFIG":
                raise CoiError(f"COI_CONFIG names {path}, which does not exist")
            continue
        layer = FileParser(path, label).parse()
        if label == "project config":  # comes with the repository: see config/trust.py
            from coi_tui.config import trust

            report = trust.sanitize(layer.values, cwd, env, floor=settings)
            report.ignored += [
                f"[{name}] (only your own config may set it)" for name in layer.user_only
            ]
            trust.REPORTS[str(cwd)] = report
        apply_layer(settings, layer)
    environment = env_layer(env)
    wanted = profile or None
    if wanted is None and "defaults.profile" in environment.values:
        wanted = environment.values["defaults.profile"]
    if wanted is None and apply_profile and settings.profile:
        wanted = settings.profile
    if wanted and (apply_profile or profile):
        from coi_tui.config.profiles import ProfileSet

        resolved = ProfileSet.discover(cwd, env).resolve(wanted)
        apply_layer(settings, resolved.layer)
        settings.profile = wanted
        settings.sources["defaults.profile"] = (
            "--profile" if profile else settings.sources.get("defaults.profile", "default")
        )
        settings.profile_chain = resolved.chain
    for path, value in environment.values.items():
        if path.startswith("attr:"):
            settings.set(path[5:], value, environment.labels[path])
    apply_layer(
        settings,
        Layer(
            "env",
            "",
            {p: v for p, v in environment.values.items() if not p.startswith("attr:")},
            labels=environment.labels,
        ),
    )
    if flags:
        apply_layer(settings, flags_layer(flags))
    check_mounts(settings.mounts, sources_exist=False)
    if bool(settings.git_name) != bool(settings.git_email):
        given = "git.name" if settings.git_name else "git.email"
        raise CoiError(f"{settings.source(given)}: [git] name and email must be set together")
    return settings


def safe_settings(cwd: Path | None = None) -> tuple[Settings, str | None]:
    """Settings for commands that must run even with a broken config (e.g. `coi health`):
    the loaded settings, or the defaults plus the error line."""
    try:
        return load_settings(cwd), None
    except CoiError as exc:
        settings = Settings()
        for key in ("COI_CONTAINER_PREFIX", "INCUS_SOCKET"):
            if os.environ.get(key):
                settings.set(ENV_VARS[key][5:], os.environ[key], f"${key}")
        return settings, str(exc)


def settings_fields() -> set[str]:
    return {f.name for f in fields(Settings)}
