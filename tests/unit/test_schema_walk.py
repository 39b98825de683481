"""The whole config schema, walked (issue 19): every key of config/schema.py KEYS is either
refused at any value but its default (a `refusal`: test_config_reference.py
test_a_fixed_key_at_another_value_is_refused_in_one_line proves it) or enforced, and then
named here with the test that proves its effect. Each named test exists, and each enforced
key's Settings attribute is read by the code that acts on it. A key added to the schema
without either fails here until it gets one."""

from __future__ import annotations

import ast
import inspect
import re
from functools import cache
from pathlib import Path

from coi_tui.config.schema import BY_PATH, KEYS
from coi_tui.monitor import config as monitor_config

REPO = Path(__file__).resolve().parents[2]


def t(file: str, test: str) -> str:
    return f"tests/{file}.py::{test}"


# files holding the tests of several keys
HOST = "integration/test_host_integration"
KEYS_RUN = "integration/test_config_keys_effect"
KEYS_UNIT = "unit/test_config_keys_effect"
NETWORK = "integration/test_network"
PROTECT = "integration/test_config_protect"
GIT_HOOKS = "integration/test_git_hooks"
RESUME = "integration/test_resume_compat"
REFERENCE = "unit/test_config_reference"

EGRESS = t("integration/test_egress", "test_names_decide_egress_through_the_proxy")
NETWORK_LOG = t(
    "integration/test_session_config_keys", "test_network_logging_records_each_sessions_rules"
)
ENV_TZ_PROFILE_LIMITS = t(HOST, "test_env_isolation_forwarding_timezone_profile_and_memory_limit")
PROFILE_BUILD = t("integration/test_config_build", "test_build_all_then_run_a_profile_image")
BUILD_STEPS = t(
    KEYS_UNIT, "test_a_profile_build_runs_its_commands_on_its_base_and_compresses_as_asked"
)
CONTEXT_FILES = t(
    RESUME, "test_custom_context_file_replaces_the_template_and_context_json_can_be_off"
)
AGENT_ARGV = t(KEYS_UNIT, "test_the_agent_argv_follows_binary_and_auto_context")
CODE_USER = t(KEYS_RUN, "test_commands_run_as_the_configured_code_user_and_uid")
NETWORK_MATRIX = t(NETWORK, "test_restricted_open_allowlist_matrix")
NETWORK_SWITCHES = t(KEYS_UNIT, "test_the_private_local_and_metadata_switches_shape_the_rules")
EXTRA_HOSTS = t(KEYS_UNIT, "test_dns_servers_and_extra_hosts_reach_the_rules_and_etc_hosts")
PROTECT_KNOBS = t(REFERENCE, "test_protect_hook_knobs")
GIT_IDENTITY = t(
    "integration/test_session_config_keys", "test_the_hosts_identity_is_seeded_unless_pinned_or_off"
)
ATTRIBUTION = t(GIT_HOOKS, "test_agent_credit_is_stripped_by_default_and_kept_when_off")
MONITOR_KNOBS = t("unit/test_monitor_rules", "test_monitor_knobs_from_the_main_config")
MONITOR_KNOB = t(KEYS_UNIT, "test_a_monitoring_knob_reaches_the_daemon_and_the_session")
LEVEL_ACTIONS = t(KEYS_UNIT, "test_level_actions_and_the_auto_switches_decide_what_each_level_does")
PROFILE_THRESHOLDS = t(
    "unit/test_monitor_session_config", "test_a_profiles_thresholds_are_written_on_the_instance"
)
DNS_THRESHOLDS = t(KEYS_UNIT, "test_dns_thresholds_decide_the_tunnel_long_name_and_rate_findings")
CANARIES = t("security/test_canaries", "test_a_session_plants_its_canaries_and_forgets_them")
LIMITS = t("unit/test_config_agents", "test_limits_map_to_incus_keys")
LIMITS_MORE = t(KEYS_UNIT, "test_priorities_swap_and_disk_rates_map_to_incus_keys")
RUNTIME_STOP = t(KEYS_UNIT, "test_runtime_limit_stops_as_auto_stop_and_stop_graceful_say")
PATTERNS_UPDATE = t(
    "unit/test_rulepacks", "test_update_patterns_and_rules_update_import_validated_packs"
)
RULE_PACKS = t(
    "integration/test_monitor_rulepacks", "test_dropped_rule_files_fire_and_look_alikes_stay_silent"
)
CONFIG_HOOK = t(PROTECT, "test_env_commands_credentials_and_sockets")

# Every key without a refusal -> the test that proves what it does (the key set, or at its
# default where only the default's effect is checked, and that effect asserted).
ENFORCED_BY: dict[str, str] = {
    "defaults.profile": ENV_TZ_PROFILE_LIMITS,
    "defaults.env_command_timeout": t(
        KEYS_UNIT, "test_env_command_timeout_bounds_each_env_command"
    ),
    "defaults.env_commands": CONFIG_HOOK,
    "container.image": PROFILE_BUILD,
    "container.persistent": t(
        RESUME, "test_explicit_persistence_wins_over_the_resumed_sessions_mode"
    ),
    "container.storage_pool": t(
        KEYS_RUN, "test_the_session_is_created_on_the_configured_storage_pool"
    ),
    "container.docker": t(
        "integration/test_image_full", "test_docker_false_drops_the_nesting_keys"
    ),
    "container.shutdown_timeout": t(KEYS_RUN, "test_shutdown_timeout_bounds_a_shutdown_that_hangs"),
    "container.ready_timeout": t(KEYS_UNIT, "test_ready_timeout_bounds_the_wait_for_boot"),
    "container.stale_base_check": PROFILE_BUILD,
    "container.build.base": BUILD_STEPS,
    "container.build.script": PROFILE_BUILD,  # the profile's build.sh is its script
    "container.build.commands": BUILD_STEPS,
    "container.build.compression": BUILD_STEPS,
    "container.build.agents": t(KEYS_UNIT, "test_coi_build_fetches_the_configured_agents"),
    "tool.name": t(KEYS_RUN, "test_the_configured_tool_starts_without_the_tool_flag"),
    "container.alias": t(KEYS_RUN, "test_an_alias_names_a_workspace_from_anywhere"),
    "tool.codex.model": t(KEYS_UNIT, "test_codex_pi_and_omp_start_as_in_coi"),
    "tool.codex.reasoning_effort": t(KEYS_UNIT, "test_codex_pi_and_omp_start_as_in_coi"),
    "paths.preserve_workspace_path": t(
        KEYS_RUN, "test_preserve_workspace_path_mounts_the_workspace_at_its_host_path"
    ),
    "shell.use_tmux": t(KEYS_RUN, "test_use_tmux_false_runs_the_agent_attached_without_tmux"),
    "tool.permission_mode": t(
        "integration/test_agents", "test_agent_flags_settings_and_context_over_two_sessions"
    ),
    "tool.auto_context": AGENT_ARGV,
    "tool.binary": AGENT_ARGV,
    "tool.pre_launch": t(
        "integration/test_session_config_keys",
        "test_pre_launch_runs_in_order_as_code_before_the_command",
    ),
    "tool.context_file": CONTEXT_FILES,
    "tool.context_json": CONTEXT_FILES,
    "tool.context_json_file": t(KEYS_RUN, "test_a_context_json_file_replaces_the_generated_facts"),
    "tool.claude.model": t(KEYS_UNIT, "test_claude_model_reaches_the_agents_environment"),
    "tool.claude.effort_level": t(
        RESUME, "test_configured_effort_level_reaches_settings_and_environment"
    ),
    "incus.project": t(
        "integration/test_snapshots_health",
        "test_privileged_profile_fails_health_and_refuses_shell",
    ),
    "incus.code_uid": CODE_USER,
    "incus.code_user": CODE_USER,
    "network.mode": NETWORK_MATRIX,
    "network.bridge": NETWORK_MATRIX,  # $COI_BRIDGE: the test bridge, its routes asserted
    "network.allowed_domains": NETWORK_MATRIX,
    "network.egress": EGRESS,
    "network.denied_domains": EGRESS,
    "network.egress_hold_sec": t(
        "integration/test_egress", "test_a_held_request_goes_through_once_approved"
    ),
    "network.allow_local_network_access": NETWORK_SWITCHES,
    "network.block_private_networks": NETWORK_SWITCHES,
    "network.block_metadata_endpoint": NETWORK_SWITCHES,
    "network.refresh_interval_minutes": t(
        KEYS_UNIT, "test_refresh_interval_caps_the_allowlist_refresh"
    ),
    "network.use_sudo": t(
        "integration/test_network_user", "test_normal_user_isolates_through_the_helper_only"
    ),
    "network.dns_servers": EXTRA_HOSTS,
    "network.allowed_ports": t(NETWORK, "test_allowed_ports_cap_every_destination"),
    "network.hosts": EXTRA_HOSTS,
    "security.protected_paths": t(KEYS_UNIT, "test_protected_paths_replace_the_default_list"),
    "security.additional_protected_paths": PROTECT_KNOBS,
    "security.disable_protection": PROTECT_KNOBS,
    "security.writable_paths": PROTECT_KNOBS,
    "security.secret_paths": t(REFERENCE, "test_secret_paths_are_masked_outermost_only"),
    "security.host_immutable": t(
        "security/test_host_immutable", "test_container_root_cannot_write_the_protected_paths"
    ),
    "security.reduce_kernel_surface": t(
        "security/test_kernel_surface", "test_reduce_kernel_surface_denies_them_to_code_and_root"
    ),
    "security.reduce_kernel_surface_strict": t(
        "security/test_kernel_surface", "test_strict_also_denies_perf_events"
    ),
    "git.writable_hooks": PROTECT_KNOBS,
    "git.name": GIT_IDENTITY,
    "git.email": GIT_IDENTITY,
    "git.seed_host_identity": GIT_IDENTITY,
    "git.readonly": t(GIT_HOOKS, "test_readonly_pins_the_identity_for_every_commit"),
    "git.strip_attribution": ATTRIBUTION,
    "git.strip_attribution_patterns": ATTRIBUTION,
    "git.protected_branches": t(
        GIT_HOOKS, "test_a_protected_branch_takes_upstream_but_no_commit_made_here"
    ),
    "monitoring.enabled": t("integration/test_monitor", "test_session_hook_starts_one_daemon"),
    "monitoring.auto_pause_on_high": LEVEL_ACTIONS,
    "monitoring.auto_kill_on_critical": MONITOR_KNOBS,
    "monitoring.file_read_threshold_mb": MONITOR_KNOB,
    "monitoring.file_read_rate_mb_per_sec": MONITOR_KNOB,
    "monitoring.process_count_threshold": PROFILE_THRESHOLDS,
    "monitoring.actions.info": LEVEL_ACTIONS,
    "monitoring.actions.warning": LEVEL_ACTIONS,
    "monitoring.actions.high": MONITOR_KNOBS,
    "monitoring.actions.critical": LEVEL_ACTIONS,
    "monitoring.dedup_window_sec": MONITOR_KNOBS,
    "monitoring.scan_interval_sec": MONITOR_KNOB,
    "monitoring.idle_exit_sec": MONITOR_KNOB,
    "monitoring.nflog_group": MONITOR_KNOB,
    # a C2 port of the test's choosing in config.toml: the real daemon kills on it
    "monitoring.c2_ports": t(
        "integration/test_monitor_kill_owner",
        "test_session_data_saved_by_a_kill_belongs_to_the_user",
    ),
    "monitoring.metadata_addresses": t(
        KEYS_UNIT, "test_metadata_addresses_decide_what_the_metadata_service_is"
    ),
    "monitoring.exfil_threshold_mb": MONITOR_KNOB,
    "monitoring.exfil_window_sec": MONITOR_KNOB,
    "monitoring.exfil_correlate_mb": MONITOR_KNOBS,
    "monitoring.dns_rate_per_min": DNS_THRESHOLDS,
    "monitoring.dns_label_max": DNS_THRESHOLDS,
    "monitoring.dns_name_max": DNS_THRESHOLDS,
    "monitoring.dns_entropy_bits": DNS_THRESHOLDS,
    "monitoring.spawn_rate_per_sec": PROFILE_THRESHOLDS,
    "monitoring.canaries": CANARIES,
    "monitoring.canary_kinds": CANARIES,
    "monitoring.nft.enabled": t(
        REFERENCE, "test_asking_for_the_reference_network_monitor_turns_the_monitor_on"
    ),
    "limits.cpu.count": LIMITS,
    "limits.cpu.allowance": LIMITS,
    "limits.cpu.priority": LIMITS_MORE,
    "limits.memory.limit": ENV_TZ_PROFILE_LIMITS,  # the cgroup's memory.max
    "limits.memory.enforce": LIMITS,
    "limits.memory.swap": LIMITS_MORE,
    "limits.disk.read": LIMITS,
    "limits.disk.write": LIMITS_MORE,
    "limits.disk.max": LIMITS_MORE,
    "limits.disk.priority": LIMITS_MORE,
    "limits.disk.size": LIMITS,
    "network.logging.enabled": NETWORK_LOG,
    "network.logging.path": NETWORK_LOG,
    "monitoring.audit_log_retention_days": t(
        "unit/test_audit_retention", "test_old_audit_files_go_and_the_rest_stay"
    ),
    "limits.disk.tmpfs_size": t(
        "integration/test_session_config_keys", "test_tmpfs_size_makes_tmp_a_sized_ram_disk"
    ),
    "limits.runtime.max_duration": t(HOST, "test_max_duration_stops_the_session_and_saves_it"),
    "limits.runtime.max_processes": ENV_TZ_PROFILE_LIMITS,  # the cgroup's pids.max
    "limits.runtime.auto_stop": RUNTIME_STOP,
    "limits.runtime.stop_graceful": RUNTIME_STOP,
    "ssh.forward_agent": t(HOST, "test_ssh_agent_forwarding_lists_the_host_key"),
    "timezone.mode": ENV_TZ_PROFILE_LIMITS,
    "timezone.name": ENV_TZ_PROFILE_LIMITS,
    "detection.gtfobins_source": PATTERNS_UPDATE,
    "detection.gtfobins_dir": RULE_PACKS,
    "detection.sigma_source": PATTERNS_UPDATE,
    "detection.sigma_dir": RULE_PACKS,
    "ports.map": t(PROTECT, "test_ports_map_publishes_a_container_port_on_the_host"),
    "sockets": CONFIG_HOOK,
    "credentials": CONFIG_HOOK,
    "prompts": t(KEYS_RUN, "test_a_named_prompt_from_the_config_is_what_the_agent_gets"),
}

# Keys the schema accepts (any valid value loads) that nothing in coi_tui acts on: their
# Settings attribute is set and never read. Listed, with what was found, so the walk above
# stays exact; test_no_key_is_accepted_and_ignored fails until each is enforced (and moved
# to ENFORCED_BY) or refused (schema R, with the reason).
NOT_READ = "Settings.{} is never read outside the loader"
ACCEPTED_AND_IGNORED: dict[str, str] = {}


def refused(path: str) -> bool:
    return bool(BY_PATH[path].refusal)


def test_every_key_is_refused_or_enforced_by_a_named_test() -> None:
    unaccounted = [
        key.path
        for key in KEYS
        if not key.refusal and key.path not in ENFORCED_BY and key.path not in ACCEPTED_AND_IGNORED
    ]
    assert unaccounted == [], "name the test that proves each key in ENFORCED_BY, or refuse it"
    for listed in (ENFORCED_BY, ACCEPTED_AND_IGNORED):
        unknown = [path for path in listed if path not in BY_PATH]
        assert unknown == [], "not keys of the schema"
        fixed = [path for path in listed if refused(path)]
        assert fixed == [], "refused keys are proven by test_config_reference.py"
    assert set(ENFORCED_BY).isdisjoint(ACCEPTED_AND_IGNORED)


def test_no_key_is_accepted_and_ignored() -> None:
    """Fails while ACCEPTED_AND_IGNORED names a key: enforce it (and name its test in
    ENFORCED_BY) or refuse it in config/schema.py with R(..., why=...)."""
    ignored = [f"{path}: {why}" for path, why in ACCEPTED_AND_IGNORED.items()]
    assert ignored == [], "accepted and ignored:\n" + "\n".join(ignored)


@cache
def top_level_tests(file: str) -> frozenset[str]:
    tree = ast.parse((REPO / file).read_text())
    return frozenset(
        node.name
        for node in tree.body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.name.startswith("test_")
    )


def test_every_named_test_exists() -> None:
    missing = []
    for path, test_id in ENFORCED_BY.items():
        file, _, name = test_id.partition("::")
        assert re.fullmatch(r"tests/[\w/]+\.py", file) and name, f"{path}: {test_id!r}"
        if not (REPO / file).is_file() or name not in top_level_tests(file):
            missing.append(f"{path}: {test_id}")
    assert missing == []


# ---------------------------------------------------------------------- who reads each key
@cache
def sources() -> dict[str, str]:
    return {
        str(path.relative_to(REPO)): path.read_text() for path in (REPO / "coi_tui").rglob("*.py")
    }


def acting_code() -> dict[str, str]:
    """coi_tui outside config/, where the loader, the schema and profiles live."""
    return {f: text for f, text in sources().items() if not f.startswith("coi_tui/config/")}


def reads(attr: str, text: str) -> bool:
    """`settings.<attr>` (self.settings, ctx.manager.settings...) or getattr(settings, "<attr>")."""
    return bool(
        re.search(rf"settings\.{attr}\b", text)
        or re.search(rf"getattr\(\s*[\w.]*settings\s*,\s*[\"']{attr}[\"']", text)
    )


# Keys read by code that lives in config/ but acts, rather than loads: `coi build --profile`'s
# image builder (config/build.py builds and publishes the profile's image), and the loader's
# one key that turns another on ([monitoring.nft] enabled turns [monitoring] enabled on).
ACTING_IN_CONFIG = {
    "container.build.base": "coi_tui/config/build.py",
    "container.build.script": "coi_tui/config/build.py",
    "container.build.commands": "coi_tui/config/build.py",
    "container.build.compression": "coi_tui/config/build.py",
    "monitoring.nft.enabled": "coi_tui/config/settings.py",
}
# The monitor daemon's files (the daemon and its rules), where a MonitorConfig field is used.
DAEMON_FILES = ("coi_tui/monitor/daemon.py", "coi_tui/monitor/rules.py")


def read_through_the_monitor_config(attr: str) -> bool:
    """The [monitoring] knobs the daemon uses reach it without naming their attribute:
    monitor/config.py load_monitor_config copies every FROM_SETTINGS attribute
    (f"monitoring_{name}") onto the MonitorConfig field `name`, and each level's action from
    f"monitoring_actions_{level}". Such a key counts as read only when it is one of those and
    the daemon really uses the field (`config.<name>`, `config.actions`)."""
    loader = inspect.getsource(monitor_config.load_monitor_config)
    daemon = "".join(sources()[f] for f in DAEMON_FILES)
    names = {value: name for name, value in monitor_config.FROM_SETTINGS.items()}
    if attr in names and "FROM_SETTINGS.items()" in loader:
        return bool(re.search(rf"config\.{names[attr]}\b", daemon))
    levels = {f"monitoring_actions_{level}" for level in monitor_config.LEVELS}
    if attr in levels and 'f"monitoring_actions_{level}"' in loader:
        return bool(re.search(r"config\.actions\b", daemon))
    return False


def read_by_acting_code(path: str) -> bool:
    attr = BY_PATH[path].attr
    if path in ACTING_IN_CONFIG:
        return reads(attr, sources()[ACTING_IN_CONFIG[path]])
    return any(reads(attr, text) for text in acting_code().values()) or (
        read_through_the_monitor_config(attr)
    )


def test_every_enforced_key_is_read_by_the_code_that_acts() -> None:
    unread = [path for path in ENFORCED_BY if not read_by_acting_code(path)]
    assert unread == [], "no code outside the loader reads these keys' Settings attributes"


def test_the_ignored_keys_are_indeed_never_read() -> None:
    """Keeps ACCEPTED_AND_IGNORED true: a key that gets read has an effect to prove."""
    read = [path for path in ACCEPTED_AND_IGNORED if read_by_acting_code(path)]
    assert read == [], "now read: move them to ENFORCED_BY with their test"
