"""Effective settings, lowest to highest precedence: built-in defaults < ~/.coi/config.toml <
./.coi/config.toml < $COI_CONFIG < the profile (--profile, or [defaults] profile) < environment
(COI_*, legacy CLAUDE_ON_INCUS_* / COI_LIMIT_*) < CLI flags.

Each source becomes a validated Layer (config/layers.py; a profile's, config/profiles.py);
`load_settings` merges them, and each value remembers where it came from (`sources`).
`session_settings(profile, overrides)` is what every session starts with (coi shell/run, the
dashboard, a branch). Nothing here prints: notes go to a `say` callback.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from coi_tui.config import trust
from coi_tui.config.layers import (
    FileParser,
    Layer,
    Mount,
    Say,
    check_mounts,
    env_layer,
    flags_layer,
    home_dir,
)
from coi_tui.config.profiles import ProfileSet
from coi_tui.config.schema import (
    BY_PATH,
    DEFAULT_ALLOWED_DOMAINS,
    DEFAULT_BRIDGE,
    DEFAULT_IMAGE,
    DEFAULT_POOL,
    DEFAULT_PROTECTED_PATHS,
    ENVIRONMENT,
    FORWARD_ENV,
    GTFOBINS_SOURCE,
    MONITOR_C2_PORTS,
    MONITOR_CANARY_KINDS,
    MONITOR_METADATA_ADDRESSES,
    MOUNTS,
    SIGMA_SOURCE,
    expand_presets,
)
from coi_tui.core.errors import CoiError
from coi_tui.images.agents import DEFAULT_AGENTS

__all__ = ["DEFAULT_BRIDGE", "DEFAULT_IMAGE", "DEFAULT_POOL", "Mount", "Settings", "load_settings"]


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
    # Reference keys (schema.KEYS); those with a `refusal` only ever hold their default.
    env_command_timeout: str = "30s"
    env_commands: dict[str, str] = field(default_factory=dict)
    alias: str = ""
    session_name: str = ""
    stale_base_check: str = "warn"
    build_compression: str = ""  # "" = ours: none (a local image imports faster)
    build_agents: list[str] = field(default_factory=lambda: list(DEFAULT_AGENTS))
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
    egress: str = "addresses"  # or "proxy": web traffic filtered by name (network/egress)
    denied_domains: list[str] = field(default_factory=list)
    egress_hold_sec: int = 0  # a name outside the allowlist waits for the operator
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
    git_protected_branches: list[str] = field(default_factory=list)
    limit_disk_tmpfs_size: str = ""
    monitoring_nft_enabled: bool = False
    monitoring_nft_rate_limit: int = 100
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
            if layer.label == "flag":  # `--mount` replaces a config mount at the same path
                taken = {os.path.normpath(m.container) for m in value}
                settings.mounts = [
                    m for m in settings.mounts if os.path.normpath(m.container) not in taken
                ]
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


def load_settings(
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    *,
    profile: str | None = None,
    apply_profile: bool = False,
    flags: dict[str, tuple[Any, str]] | None = None,
    say: Say | None = None,
) -> Settings:
    """The effective settings. `profile` (the --profile flag) or, with apply_profile, the
    [defaults] profile is applied above the files and below env and flags. `say` gets the
    one-line deprecation notes (old spellings in a file); without it they are not shown."""
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
        project = label == "project config"
        may_set = trust.project_may_set if project else None
        layer = FileParser(path, label, say=say, project_may_set=may_set).parse()
        if project:  # comes with the repository: see config/trust.py
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
        resolved = ProfileSet.discover(cwd, env, say=say).resolve(wanted)
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
    settings.allowed_domains = expand_presets(settings.allowed_domains)
    if settings.egress != "proxy":
        by_name = [e for e in settings.allowed_domains if "*" in e]
        if by_name:
            raise CoiError(
                f"{settings.source('network.allowed_domains')}: [network] allowed_domains: "
                f"wildcards ({by_name[0]}) are matched by name, which needs "
                '[network] egress = "proxy"'
            )
        if settings.denied_domains:
            raise CoiError(
                f"{settings.source('network.denied_domains')}: [network] denied_domains "
                'needs [network] egress = "proxy"'
            )
    if settings.monitoring_nft_enabled and not settings.monitoring_enabled:
        # the reference's network monitor is part of ours: asking for it turns the monitor on
        settings.monitoring_enabled = True
        settings.sources["monitoring.enabled"] = settings.source("monitoring.nft.enabled")
    return settings


def settings_fields() -> set[str]:
    return {f.name for f in fields(Settings)}


@dataclass(frozen=True)
class SessionOverrides:
    """What the person starting a session chose over the config: `coi shell/run --tool
    --image --persistent/--ephemeral`, or the dashboard's new-slot form. Empty/None: not
    chosen."""

    tool: str = ""
    image: str = ""
    persistent: bool | None = None
    environment: dict[str, str] = field(default_factory=dict)  # `coi run -e VAR=value`
    mounts: list[Mount] = field(default_factory=list)  # `--mount HOST:CONTAINER`, `--storage`

    def flags(self) -> dict[str, tuple[Any, str]]:
        """As a flags layer: key path -> (value, the flag that names it in errors/sources)."""
        flags: dict[str, tuple[Any, str]] = {}
        if self.environment:
            flags[ENVIRONMENT] = (dict(self.environment), "-e")
        if self.mounts:
            flags[MOUNTS] = (list(self.mounts), "--mount")
        if self.tool:
            flags["tool.name"] = (self.tool, "--tool")
        if self.image:
            flags["container.image"] = (self.image, "--image")
        if self.persistent is not None:
            flag = "--persistent" if self.persistent else "--ephemeral"
            flags["container.persistent"] = (self.persistent, flag)
        return flags


def session_settings(
    profile: str = "",
    overrides: SessionOverrides | None = None,
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    say: Say | None = None,
) -> Settings:
    """The settings a session starts with, for every way of starting one (coi shell/run, the
    dashboard, a branch): config files < the profile (`profile`, else $COI_PROFILE, else
    [defaults] profile) < environment < the overrides. The profile's limits, environment,
    network policy, mounts and image all land here, so what starts from these settings
    applies them."""
    return load_settings(
        cwd,
        env,
        profile=profile or None,
        apply_profile=True,
        flags=(overrides or SessionOverrides()).flags(),
        say=say,
    )
