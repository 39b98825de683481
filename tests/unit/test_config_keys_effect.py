"""Config keys that no other test proved, each from the key as a user writes it (config.toml)
or a Settings value to what the real code does with it: the Incus config and devices, the
firewall rules, the agent's argv and environment, the image build's steps, the monitor
daemon's settings and verdicts. Pure logic: where the code talks to Incus, a stub stands in
for the transport only. tests/unit/test_schema_walk.py lists which test proves each key."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from coi_tui.cli import build_cmds
from coi_tui.config.build import Builder, build_profile_image
from coi_tui.config.settings import Settings, load_settings
from coi_tui.core.errors import CoiError
from coi_tui.monitor import rules
from coi_tui.monitor.config import (
    FROM_SETTINGS,
    LEVELS,
    SESSION_FIELDS,
    SESSION_KEY,
    MonitorConfig,
    daemon_settings_text,
    for_session,
    load_monitor_config,
    parse_daemon_settings,
)
from coi_tui.monitor.control import daemon_settings
from coi_tui.monitor.daemon import nflog_group
from coi_tui.network import netctl
from coi_tui.network.firewall import iface_for
from coi_tui.network.isolation import policy_for
from coi_tui.network.resolve import Resolved
from coi_tui.sessions import network_hook, protect_hook, supervisor
from coi_tui.sessions.config_hook import ConfigHook
from coi_tui.sessions.host_hook import HostHook, limit_config, root_limits
from coi_tui.sessions.manager import Session, SessionManager
from coi_tui.sessions.monitor_hook import MonitorHook
from coi_tui.tools import get_tool
from coi_tui.tools.base import SANDBOX_CONTEXT
from tests.unit.test_profile_trust import FakeImage, FakeIncus

GATEWAY = "10.1.2.1"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A COI home of the test's own (coi_home() of the code under test points there)."""
    path = tmp_path / "home"
    path.mkdir()
    monkeypatch.setenv("COI_HOME", str(path))
    monkeypatch.delenv("COI_CONFIG", raising=False)
    return path


def configured(home: Path, toml: str) -> Settings:
    """The settings `coi` loads with `toml` as the user's config.toml."""
    (home / "config.toml").write_text(toml)
    project = home.parent / "project"
    project.mkdir(exist_ok=True)
    return load_settings(project, {"COI_HOME": str(home)})


# ---------------------------------------------------------------------- [defaults]
def test_env_command_timeout_bounds_each_env_command(home: Path, tmp_path: Path) -> None:
    """[defaults] env_command_timeout, not the 30 s default, stops a hanging env command."""
    settings = configured(
        home, '[defaults]\nenv_command_timeout = "1s"\n[defaults.env_commands]\nSLOW = "sleep 30"\n'
    )
    ctx = SimpleNamespace(
        manager=SimpleNamespace(settings=settings), request=SimpleNamespace(workspace=str(tmp_path))
    )
    started = time.monotonic()
    with pytest.raises(CoiError, match=r"did not finish within 1s \(\[defaults\] env_command"):
        ConfigHook().agent_env(ctx, {})  # type: ignore[arg-type]
    assert time.monotonic() - started < 10


# ---------------------------------------------------------------------- [container]
class BuildIncus(FakeIncus):
    """Records which image the build container starts from and how the result is published."""

    def create_instance(self, name: str, image: str, **kwargs: Any) -> None:
        self.calls.append(("base", image))

    def publish(self, name: str, alias: str, properties: dict[str, str], **kwargs: Any) -> str:
        self.calls.append(("compression", kwargs.get("compression")))
        return super().publish(name, alias, properties)


class NoNetwork:
    def devices(self) -> dict[str, dict[str, str]]:
        return {}

    def before_start(self) -> None: ...
    def after_start(self) -> None: ...
    def close(self) -> None: ...


def build_calls(settings: Settings) -> dict[str, Any]:
    incus = BuildIncus({settings.build_base: FakeImage("base")})
    build_profile_image(
        incus,  # type: ignore[arg-type]
        settings,
        "tools",
        alias=None,
        force=False,
        builder=Builder("user profile tools", trusted=True),
        network_for=lambda name: NoNetwork(),
        say=lambda line: None,
    )
    calls: dict[str, Any] = {"exec": []}
    for what, value in incus.calls:
        if what == "exec":
            calls["exec"].append(value)
        else:
            calls[what] = value
    return calls


def test_a_profile_build_runs_its_commands_on_its_base_and_compresses_as_asked(
    home: Path,
) -> None:
    """[container.build] base is the build container's image, commands run there in order,
    compression is the published image's (unset: none)."""
    settings = configured(
        home,
        '[container]\nimage = "tools-img"\n[container.build]\nbase = "my-base"\n'
        'commands = ["echo one", "echo two"]\ncompression = "xz"\n',
    )
    calls = build_calls(settings)
    assert calls["base"] == "my-base"
    assert calls["exec"] == [["sh", "-c", "echo one"], ["sh", "-c", "echo two"]]
    assert calls["compression"] == "xz"
    plain = configured(home, '[container]\nimage = "t"\n[container.build]\ncommands = ["id"]\n')
    assert build_calls(plain)["compression"] == "none"


def test_coi_build_fetches_the_configured_agents(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """[container.build] agents is the set `coi build` asks the full image for; --agents (or
    $COI_BUILD_AGENTS) still wins, and the lean image gets none."""
    asked: list[Any] = []

    class RecordingBuilder:
        def __init__(self, incus: object, progress: object) -> None: ...

        def build(self, alias: str, **kwargs: Any) -> SimpleNamespace:
            asked.append(kwargs["agents"])
            return SimpleNamespace(rebuilt=False)

    monkeypatch.setattr("coi_tui.images.build.ImageBuilder", RecordingBuilder)
    monkeypatch.setattr("coi_tui.cli.target.incus_for", lambda s: SimpleNamespace(ping=list))
    monkeypatch.delenv("COI_BUILD_AGENTS", raising=False)
    monkeypatch.chdir(home)
    (home / "config.toml").write_text('[container.build]\nagents = ["opencode", "claude"]\n')

    def build(agents: str | None = None, lean: bool = False) -> None:
        flags = {"bootstrap": False, "remote": False, "force": False, "alias": None}
        build_cmds.build_image(argparse.Namespace(agents=agents, lean=lean, **flags))

    build()
    build(agents="aider")
    build(lean=True)
    assert asked == [["claude", "opencode"], ["aider"], None]


def test_ready_timeout_bounds_the_wait_for_boot() -> None:
    """[container] ready_timeout is how long a container that never finishes booting is
    waited for, and the error names the key."""

    class NeverBooted:
        def exec_capture(self, name: str, argv: list[str]) -> SimpleNamespace:
            return SimpleNamespace(stdout="", ok=False)

    manager = SessionManager(NeverBooted(), Settings(ready_timeout=1), print)  # type: ignore[arg-type]
    started = time.monotonic()
    with pytest.raises(CoiError, match=r"within 1s \(\[container\] ready_timeout\)"):
        manager.wait_ready("coi-0badcafe-1")
    assert 1 <= time.monotonic() - started < 5  # the default would wait 30 s


# ---------------------------------------------------------------------- [tool]
def test_the_agent_argv_follows_binary_and_auto_context(monkeypatch: pytest.MonkeyPatch) -> None:
    """[tool] binary replaces the executable (same argv contract); auto_context = false
    drops the sandbox context the agent would be pointed at."""
    monkeypatch.delenv("COI_USE_DUMMY", raising=False)
    session = Session("coi-0badcafe-1", "S", 1, "/w", False, get_tool("aider"))

    def argv(settings: Settings) -> list[str]:
        return SessionManager(None, settings, print).agent_command(session, debug=False)  # type: ignore[arg-type]

    assert argv(Settings()) == ["aider", "--yes-always", "--read", SANDBOX_CONTEXT]
    assert argv(Settings(tool_binary="/opt/agents/aider")) == [
        "/opt/agents/aider", "--yes-always", "--read", SANDBOX_CONTEXT,
    ]  # fmt: skip
    assert argv(Settings(auto_context=False)) == ["aider", "--yes-always"]


def test_codex_pi_and_omp_start_as_in_coi(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """codex: bypass or workspace-write/on-request, [tool.codex] model and reasoning_effort
    as -m and -c (single tokens only), resume by the newest rollout's id, else --last; pi and
    omp: --continue on resume, sessions in the workspace, permission mode without effect."""
    monkeypatch.delenv("COI_USE_DUMMY", raising=False)

    def argv(tool: str, settings: Settings, resume: Any = None) -> list[str]:
        session = Session("coi-0badcafe-1", "S", 1, "/w", False, get_tool(tool), resume_meta=resume)
        return SessionManager(None, settings, print).agent_command(session, debug=False)  # type: ignore[arg-type]

    assert argv("codex", Settings()) == ["codex", "--dangerously-bypass-approvals-and-sandbox"]
    tuned = configured(
        home,
        '[tool]\npermission_mode = "interactive"\n'
        '[tool.codex]\nmodel = "gpt-5.1-codex"\nreasoning_effort = "high"\n',
    )
    assert argv("codex", tuned) == [
        "codex", "-s", "workspace-write", "-a", "on-request", "-m", "gpt-5.1-codex",
        "-c", "model_reasoning_effort=high",
    ]  # fmt: skip
    with pytest.raises(CoiError, match="must be a single token"):
        configured(home, '[tool.codex]\nmodel = "gpt; rm -rf /"\n')
    for name, variable in (("pi", "PI_CODING_AGENT_SESSION_DIR"), ("omp", "OMP_SESSION_DIR")):
        assert argv(name, tuned) == argv(name, Settings()) == [name]
        assert get_tool(name).env[variable].startswith("/workspace/")

    saved = tmp_path / "saved"
    rollouts = saved / "sessions" / "2026" / "12"
    rollouts.mkdir(parents=True)
    older, newer = "0b1e2d3c-0000-4000-8000-00000000000a", "0b1e2d3c-0000-4000-8000-00000000000b"
    (rollouts / f"rollout-2026-12-01T10-00-00-{older}.jsonl").write_text("{}")
    (rollouts / f"rollout-2026-12-07T09-00-00-{newer}.jsonl").write_text("{}")
    codex = get_tool("codex")
    assert codex.discover_resume_id(saved) == newer
    assert codex.discover_resume_id(tmp_path / "none") is None
    common = {"session_id": "S", "permission_mode": "bypass"}
    assert codex.command(resume=True, resume_id=newer, **common)[:3] == ["codex", "resume", newer]
    assert codex.command(resume=True, resume_id=None, **common)[:3] == ["codex", "resume", "--last"]
    assert get_tool("pi").command(resume=True, resume_id=None, **common) == ["pi", "--continue"]


def test_claude_model_reaches_the_agents_environment(home: Path) -> None:
    """[tool.claude] model is ANTHROPIC_MODEL for claude (and its test double), not for the
    other agents; unset, the variable is not set."""

    def env(settings: Settings, tool: str) -> dict[str, str]:
        ctx = SimpleNamespace(
            manager=SimpleNamespace(settings=settings, say=print),
            session=SimpleNamespace(container="coi-0badcafe-1", tool=get_tool(tool)),
        )
        out: dict[str, str] = {}
        HostHook().agent_env(ctx, out)  # type: ignore[arg-type]
        return out

    settings = configured(home, '[tool.claude]\nmodel = "claude-test-model"\n')
    assert env(settings, "claude")["ANTHROPIC_MODEL"] == "claude-test-model"
    assert env(settings, "dummy")["ANTHROPIC_MODEL"] == "claude-test-model"
    assert "ANTHROPIC_MODEL" not in env(settings, "aider")
    assert "ANTHROPIC_MODEL" not in env(Settings(), "claude")


# ---------------------------------------------------------------------- [network]
class Bridge:
    """What policy_for asks Incus: the bridge's address."""

    remote = None

    def get_network(self, name: str) -> dict[str, Any]:
        return {"config": {"ipv4.address": f"{GATEWAY}/24"}}


def chain(settings: Settings) -> list[str]:
    """The container's nftables chain as coi-netctl builds it from the policy coi sends."""
    policy = policy_for(Bridge(), settings, None, "coi-0badcafe-1")  # type: ignore[arg-type]
    iface, mode, gateway, flags, _ = netctl.parse_apply(policy.argv(iface_for("c"))[1:])
    return netctl.container_rules(mode, gateway, set_name=f"a-{iface}", **flags)


PRIVATE_DROP = f"ip daddr {netctl.elements(list(netctl.PRIVATE))} drop"
METADATA_DROP = f"ip daddr {netctl.METADATA} drop"
GATEWAY_DROP = f"ip daddr {GATEWAY} drop"


def test_the_private_local_and_metadata_switches_shape_the_rules(home: Path) -> None:
    """block_private_networks, allow_local_network_access and block_metadata_endpoint each
    change the container's firewall chain, from the config to coi-netctl's rules."""
    default = chain(configured(home, ""))
    assert PRIVATE_DROP in default and METADATA_DROP in default and GATEWAY_DROP in default
    unblocked = chain(configured(home, "[network]\nblock_private_networks = false\n"))
    assert PRIVATE_DROP not in unblocked and GATEWAY_DROP in unblocked
    local = chain(configured(home, "[network]\nallow_local_network_access = true\n"))
    assert GATEWAY_DROP not in local and PRIVATE_DROP not in local
    assert f"ip daddr {netctl.elements(list(netctl.PRIVATE))} accept" in local
    metadata = chain(configured(home, "[network]\nblock_metadata_endpoint = false\n"))
    assert METADATA_DROP not in metadata and PRIVATE_DROP in metadata


def test_dns_servers_and_extra_hosts_reach_the_rules_and_etc_hosts(home: Path) -> None:
    """[network] dns_servers are the only resolvers besides the bridge; [[network.hosts]]
    opens its address and ports, and its names land in the container's /etc/hosts."""
    settings = configured(
        home,
        '[network]\ndns_servers = ["9.9.9.9"]\n'
        '[[network.hosts]]\nip = "10.0.0.5"\nhostnames = ["db.internal"]\nports = [5432]\n',
    )
    rules_ = chain(settings)
    assert rules_.index("ip daddr { 9.9.9.9 } udp dport 53 accept") < rules_.index(
        "udp dport 53 drop"
    )
    assert rules_.index("ip daddr 10.0.0.5 tcp dport 5432 accept") < rules_.index(PRIVATE_DROP)
    assert not any("9.9.9.9" in r or "10.0.0.5" in r for r in chain(configured(home, "")))

    class Files:
        remote = None

        def __init__(self) -> None:
            self.pushed: dict[str, bytes] = {}

        def pull_file(self, name: str, path: str) -> bytes:
            return b"127.0.0.1\tlocalhost\n"

        def push_file(self, name: str, path: str, data: bytes) -> None:
            self.pushed[path] = data

    incus = Files()
    ctx = SimpleNamespace(
        manager=SimpleNamespace(settings=settings, incus=incus),
        session=SimpleNamespace(container="coi-0badcafe-1"),
    )
    network_hook.NetworkHook().before_agent(ctx)  # type: ignore[arg-type]
    assert "10.0.0.5\tdb.internal" in incus.pushed["/etc/hosts"].decode()


def test_refresh_interval_caps_the_allowlist_refresh(monkeypatch: pytest.MonkeyPatch) -> None:
    """[network] refresh_interval_minutes caps the delay before the allowlist is resolved
    again (a long TTL waits no longer), and 0 starts no refresher."""
    spawned: list[float] = []
    monkeypatch.setattr(
        network_hook, "spawn_refresher", lambda n, w, delay, r: spawned.append(delay)
    )

    def refresh(minutes: int) -> None:
        hook = network_hook.NetworkHook()
        hook.resolved["c"] = Resolved({"a.test": ["203.0.113.7"]}, 86400, [])
        ctx = SimpleNamespace(
            session=SimpleNamespace(container="c", workspace="/w"),
            manager=SimpleNamespace(
                settings=Settings(refresh_interval_minutes=minutes),
                incus=SimpleNamespace(remote=None),
            ),
        )
        hook.after_start(ctx)  # type: ignore[arg-type]

    refresh(2)
    refresh(30)
    refresh(0)
    assert spawned == [120.0, 1800.0]


# ---------------------------------------------------------------------- [security]
def test_protected_paths_replace_the_default_list(home: Path, tmp_path: Path) -> None:
    """[security] protected_paths is the list mounted read-only: set, it replaces the
    default one (.vscode is then the agent's)."""
    workspace = tmp_path / "ws"
    (workspace / ".vscode").mkdir(parents=True)
    (workspace / "deploy.sh").write_text("#!/bin/sh\n")

    def mounted(settings: Settings) -> set[str]:
        ctx = SimpleNamespace(
            request=SimpleNamespace(workspace=str(workspace)),
            devices={"workspace": {}},
            manager=SimpleNamespace(settings=settings, say=print),
            session=SimpleNamespace(container="coitest-unit-keys"),
        )
        protect_hook.HOOK.prepare_instance(ctx)  # type: ignore[arg-type]
        return {d["path"] for n, d in ctx.devices.items() if n.startswith("protect-")}

    assert mounted(configured(home, "")) == {"/workspace/.vscode"}
    only = configured(home, '[security]\nprotected_paths = ["deploy.sh"]\n')
    assert mounted(only) == {"/workspace/deploy.sh"}


# ---------------------------------------------------------------------- [monitoring]
def other_value(default: Any) -> Any:
    """A value unlike the default, within every knob's bounds."""
    if isinstance(default, tuple | list):
        return [7777] if isinstance(default[0], int) else ["192.0.2.77"]
    if isinstance(default, float):
        return default * 2 + 1.0
    return default * 2 + 1


def toml(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(f'"{v}"' if isinstance(v, str) else str(v) for v in value) + "]"
    return str(value)


def session_config(settings: Settings) -> MonitorConfig:
    """What the daemon applies to this session's container: the monitor hook writes it on
    the instance at creation."""
    ctx = SimpleNamespace(config={}, manager=SimpleNamespace(settings=settings, say=print))
    MonitorHook().prepare_instance(ctx)  # type: ignore[arg-type]
    return for_session(MonitorConfig(), ctx.config[SESSION_KEY])


def daemon_config(home: Path) -> MonitorConfig:
    """What the root daemon runs with: the hand-off `coi` writes before it starts it, read
    back as the daemon reads it."""
    return parse_daemon_settings(daemon_settings_text(daemon_settings(home))).monitor


@pytest.mark.parametrize("name", sorted(FROM_SETTINGS))
def test_a_monitoring_knob_reaches_the_daemon_and_the_session(home: Path, name: str) -> None:
    """Each [monitoring] knob of the daemon goes from config.toml into the settings the
    daemon is handed, and a session's own (SESSION_FIELDS) onto its container."""
    default = getattr(MonitorConfig(), name)
    value = other_value(default)
    settings = configured(home, f"[monitoring]\n{name} = {toml(value)}\n")
    assert value != default
    assert getattr(daemon_config(home), name) == value
    if name in SESSION_FIELDS:
        assert getattr(session_config(settings), name) == value
    if name == "nflog_group":  # 0 (the default) derives the group from the COI home
        assert nflog_group(home, daemon_config(home)) == value


def test_level_actions_and_the_auto_switches_decide_what_each_level_does(home: Path) -> None:
    """[monitoring.actions] sets each level's action for the daemon and the session;
    auto_pause_on_high = false (and auto_kill_on_critical = false) turn the default pause
    (kill) into an alert."""
    chosen = {"info": "kill", "warning": "pause", "high": "log", "critical": "alert"}
    table = "".join(f'{level} = "{chosen[level]}"\n' for level in LEVELS)
    settings = configured(home, f"[monitoring.actions]\n{table}")
    assert daemon_config(home).actions == chosen
    assert session_config(settings).actions == chosen
    off = configured(home, "[monitoring]\nauto_pause_on_high = false\n")
    assert daemon_config(home).actions["high"] == "alert"
    assert session_config(off).actions == {
        "info": "log", "warning": "alert", "high": "alert", "critical": "kill",
    }  # fmt: skip


def test_metadata_addresses_decide_what_the_metadata_service_is(home: Path) -> None:
    """A connection to an address of [monitoring] metadata_addresses is CRITICAL
    net.metadata; the default address, once left out, is only a private one."""
    config = load_monitor_config(
        configured(home, '[monitoring]\nmetadata_addresses = ["192.0.2.77"]\n'), home=home
    )

    def found(dst: str) -> list[tuple[str, str]]:
        pkt = rules.Packet("10.199.0.9", dst, "tcp", 40000, 80)
        return [(t.rule_id, t.level) for t in rules.packet_threats(pkt, config, "10.199.0.1")]

    assert found("192.0.2.77") == [("net.metadata", "critical")]
    assert ("net.metadata", "critical") not in found("169.254.169.254")


TUNNEL = "mfrggzdfmztwq2lknnwg23tpobyxe43uov3ho6dzpi.t.example.org"  # a 42-character label


def dns_findings(home: Path, toml_text: str, name: str, queries: int = 1) -> list[str]:
    config = load_monitor_config(configured(home, f"[monitoring]\n{toml_text}"), home=home)
    watch = rules.DnsWatch(config)
    pkt = rules.Packet("10.199.0.9", "10.199.0.1", "udp", 5353, 53, dns_name=name, dns_type=1)
    return [t.rule_id for i in range(queries) for t in watch.feed(pkt, float(i))]


def test_dns_thresholds_decide_the_tunnel_long_name_and_rate_findings(home: Path) -> None:
    """dns_label_max and dns_entropy_bits decide a tunnelling label (HIGH), dns_name_max an
    unusual name, dns_rate_per_min the query volume: each from config.toml."""
    assert dns_findings(home, "", TUNNEL) == ["dns.tunnel-label"]
    assert dns_findings(home, "dns_label_max = 60\n", TUNNEL) == ["dns.long-name"]
    assert dns_findings(home, "dns_entropy_bits = 6.0\n", TUNNEL) == ["dns.long-name"]
    assert dns_findings(home, "dns_label_max = 60\ndns_name_max = 100\n", TUNNEL) == []
    plain = "registry.npmjs.org.very.long.example.org"  # 40 characters, low entropy
    assert dns_findings(home, "", plain) == []
    assert dns_findings(home, "dns_name_max = 30\n", plain) == ["dns.long-name"]
    assert dns_findings(home, "", "www.example.org", queries=4) == []
    assert dns_findings(home, "dns_rate_per_min = 3\n", "www.example.org", 4) == ["dns.rate"]


# ---------------------------------------------------------------------- [limits]
def test_priorities_swap_and_disk_rates_map_to_incus_keys(home: Path) -> None:
    """[limits.cpu] priority, [limits.memory] swap, [limits.disk] priority, write and max
    become the instance's and its root disk's Incus limits."""
    settings = configured(
        home,
        '[limits.cpu]\npriority = 3\n[limits.memory]\nlimit = "1GiB"\nswap = false\n'
        '[limits.disk]\npriority = 7\nwrite = "5MiB"\nmax = "100iops"\n',
    )
    config = limit_config(settings)
    assert config["limits.cpu.priority"] == "3" and config["limits.disk.priority"] == "7"
    assert config["limits.memory.swap"] == "false"
    assert root_limits(settings) == {"limits.write": "5MiB", "limits.max": "100iops"}
    assert (
        limit_config(configured(home, '[limits.memory]\nlimit = "1GiB"\n'))["limits.memory.swap"]
        == "true"
    )


class Instance:
    """The instance as the session created it (its config from limit_config): what the
    supervisor reads, and the stops it asks for."""

    def __init__(self, config: dict[str, str]) -> None:
        self.config = config
        self.states = iter(["Running", "Stopped"])
        self.stops: list[bool] = []

    def get_instance(self, name: str) -> SimpleNamespace:
        return SimpleNamespace(config=self.config)

    def status(self, name: str) -> str:
        return next(self.states)

    def watch_events(self, *args: Any, **kwargs: Any) -> None:
        return None

    def stop(self, name: str, timeout: int, force: bool) -> None:
        self.stops.append(force)


@pytest.mark.parametrize(
    ("toml_text", "stops"),
    [
        ("", [False]),  # graceful, then forced after a few seconds by Incus
        ("stop_graceful = false\n", [True]),
        ("auto_stop = false\n", []),  # the limit is only reported
    ],
)
def test_runtime_limit_stops_as_auto_stop_and_stop_graceful_say(
    home: Path, toml_text: str, stops: list[bool]
) -> None:
    """When max_duration has run out the session's supervisor stops the container
    gracefully, forced with stop_graceful = false, and not at all with auto_stop = false."""
    settings = configured(home, f'[limits.runtime]\nmax_duration = "1m"\n{toml_text}')
    instance = Instance(limit_config(settings))
    supervisor.enforce_runtime_limit(instance, "c", time.monotonic() - 120)  # type: ignore[arg-type]
    assert instance.stops == stops


def test_mount_nesting_follows_coi(tmp_path: Path) -> None:
    """Only a read-only mount may sit inside another; two at one path always conflict;
    `--mount` values are HOST:CONTAINER with an absolute CONTAINER."""
    from coi_tui.config.layers import Mount, check_mounts, parse_mount_flag
    from coi_tui.core.errors import CoiError, UsageError

    check_mounts([Mount("/a", "/app"), Mount("/b", "/app/sub", readonly=True)], sources_exist=False)
    check_mounts([Mount("/b", "/app/sub", readonly=True), Mount("/a", "/app")], sources_exist=False)
    check_mounts([Mount("/a", "/data"), Mount("/b", "/data-backup")], sources_exist=False)
    for pair in (
        [Mount("/a", "/app"), Mount("/b", "/app/sub")],
        [Mount("/a", "/app/sub"), Mount("/b", "/app", readonly=True)],
        [Mount("/a", "/app", readonly=True), Mount("/b", "/app/", readonly=True)],
    ):
        with pytest.raises(CoiError, match=r"nested mount paths detected: .* conflict"):
            check_mounts(pair, sources_exist=False)
    assert parse_mount_flag("rel dir:/x", tmp_path) == Mount(str(tmp_path / "rel dir"), "/x")
    for bad, message in (
        ("nocolon", "invalid mount format 'nocolon': expected HOST:CONTAINER"),
        ("a:b:c", "invalid mount format 'a:b:c'"),
        ("a:rel", "container path must be absolute: rel"),
        ("a:/workspace", "cannot mount over or inside /workspace"),
    ):
        with pytest.raises(UsageError, match=message):
            parse_mount_flag(bad, tmp_path)


def test_credential_bundles_are_known_names_and_secret_env_stays_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    from coi_tui.tools.credentials import host_file_copy

    monkeypatch.setenv("COI_HOME", str(tmp_path))
    (tmp_path / "config.toml").write_text('[[credentials]]\nbundle = "claud"\n')
    with pytest.raises(CoiError, match='unknown bundle "claud" \\(known: claude, codex'):
        load_settings(tmp_path, {"COI_HOME": str(tmp_path)})
    settings = {
        "awsAuthRefresh": "aws sso login",
        "env": {
            "AWS_PROFILE": "p",
            "ANTHROPIC_AUTH_TOKEN": "t",
            "my_api_key": "k",
            "OTEL_EXPORTER_OTLP_HEADERS": "Authorization=Bearer x",
            "GITHUB_PAT": "g",
            "HTTPS_PROXY": "http://me:pw@proxy:3128",
            "NO_PROXY": "localhost",
        },
        "providers": [{"name": "x", "apiKey": "k2", "headers": {"X-Key": "h"}}],
    }
    copy, dropped = host_file_copy(".claude/settings.json", json.dumps(settings))
    assert copy is not None and json.loads(copy) == {
        "awsAuthRefresh": "aws sso login",
        "env": {"AWS_PROFILE": "p", "NO_PROXY": "localhost"},
        "providers": [{"name": "x"}],
    }
    assert len(dropped) == 7 and "providers[0].apiKey" in dropped
    clean = 'model = "gpt-5"\n# mine\n[features]\nweb_search = true\n'
    assert host_file_copy(".codex/config.toml", clean) == (clean, [])
    leaky = clean + '[mcp_servers.gh.env]\nGITHUB_TOKEN = "ghp_x"\n'
    assert host_file_copy(".codex/config.toml", leaky) == (
        None, ["mcp_servers.gh.env.GITHUB_TOKEN"]
    )  # fmt: skip
    assert host_file_copy(".claude/config.yml", "theme: dark\napi_key: s\n") == (None, ["api_key"])
    assert host_file_copy(".claude/CLAUDE.md", "token: talk") == ("token: talk", [])


def test_an_alias_cannot_take_another_workspaces_slot_labels(home: Path) -> None:
    """A repository aliased "web-2" would label its containers like slot 2 of the user's
    "web": refused both ways; the registry gives each NAME and NAME-N one workspace."""
    from coi_tui.sessions import aliases

    aliases.register("web", "/home/u/web")
    aliases.register("web", "/home/u/web", "dev")  # the same workspace again: fine
    for squatter in ("web-2", "web"):
        with pytest.raises(CoiError, match="alias conflict"):
            aliases.register(squatter, "/tmp/evil")
    aliases.register("webx-2", "/tmp/other")
    with pytest.raises(CoiError, match='as "webx-2"'):
        aliases.register("webx", "/tmp/third")
    assert aliases.owner("web-3") == "/home/u/web" and aliases.owner("nope") is None
    assert aliases.lookup("web-3")[1] == 3 and aliases.lookup("web")[0].profile == "dev"


def test_preserve_workspace_path_never_covers_the_containers_system() -> None:
    """The host path is the mount point only where it hides nothing the container runs on,
    and not under a /tmp that tmpfs_size mounts over."""

    def point(path: str, **settings: Any) -> str:
        manager = SessionManager(None, Settings(preserve_workspace_path=True, **settings), print)  # type: ignore[arg-type]
        return manager.mount_point(path)

    assert SessionManager(None, Settings(), print).mount_point("/srv/p") == "/workspace"  # type: ignore[arg-type]
    assert point("/srv/my project/") == "/srv/my project"
    assert point("/tmp/pytest-of-root/ws") == "/tmp/pytest-of-root/ws"
    for path in ("/", "/usr", "/usr/src/app", "/home/code", "/home/code/p", "/etc/x", "/home"):
        with pytest.raises(CoiError, match="would be mounted over the container's"):
            point(path)
    with pytest.raises(CoiError, match="under /tmp"):
        point("/tmp/ws", limit_disk_tmpfs_size="1GiB")
