"""Every key of the reference config (COI §3.2) loads with its reference default and is listed
by `coi config show`; the reference's validation rules; profile shapes; the protect hook's
path handling. Pure logic, no daemon."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from coi_tui.config.profiles import ProfileSet, documented_starter
from coi_tui.config.schema import BY_PATH, KEYS
from coi_tui.config.settings import Settings, load_settings
from coi_tui.core.errors import CoiError
from coi_tui.core.toml import toml_value
from coi_tui.sessions import protect_hook

# A COI user's config: every key of the reference's full key reference, at its default.
REFERENCE_CONFIG = """\
forward_env = []

[container]
image = "coi-default"
persistent = false
storage_pool = ""
alias = ""
session_name = ""
shutdown_timeout = 60
ready_timeout = 30
stale_base_check = "warn"
docker = true

[container.build]
base = "ubuntu:24.04"
script = ""
commands = []
compression = ""
agents = ["claude", "opencode", "pi"]
cloud_init = false

[defaults]
profile = ""
forward_env = []
env_command_timeout = "30s"

[defaults.environment]

[defaults.env_commands]

[paths]
sessions_dir = "~/.coi/sessions"
storage_dir  = "~/.coi/storage"
logs_dir     = "~/.coi/logs"
preserve_workspace_path = false

[incus]
project  = "default"
group    = "incus-admin"
code_uid = 1000
code_user = "code"
disable_shift = false

[network]
mode = "restricted"
block_private_networks = true
block_metadata_endpoint = true
allowed_domains = ["registry.npmjs.org","npm.pkg.github.com",
                   "api.anthropic.com","platform.claude.com"]
allow_local_network_access = false
refresh_interval_minutes = 30
use_sudo = true
dns_servers = []
allowed_ports = []

[[network.hosts]]
ip = "10.0.0.5"
hostnames = ["db.internal"]
ports = [5432]

[network.logging]
enabled = true
path = "~/.coi/logs/network.log"

[tool]
name = "claude"
auto_context = true
permission_mode = "bypass"
binary = ""
pre_launch = []
context_file = ""
context_json = true
context_json_file = ""

[tool.claude]
model = ""
effort_level = ""

[tool.codex]
model = ""
reasoning_effort = ""

[shell]
use_tmux = true

[git]
writable_hooks = false
name = ""
email = ""
seed_host_identity = true
readonly = false
strip_attribution = true
strip_attribution_patterns = []
protected_branches = ["main", "master"]

[ssh]
forward_agent = false

[security]
protected_paths = [".git/hooks",".git/config",".git/config.worktree",".git/info/attributes",
                   ".husky",".vscode",".coi",".claude/settings.json",".claude/settings.local.json"]
host_immutable = true
additional_protected_paths = []
disable_protection = false
writable_paths = []
secret_paths = []
reduce_kernel_surface = false
reduce_kernel_surface_strict = false

[limits.cpu]
count = ""
allowance = ""
priority = 0

[limits.memory]
limit = ""
enforce = "soft"
swap = "true"

[limits.disk]
read = ""
write = ""
max = ""
priority = 0
size = ""
tmpfs_size = ""

[limits.runtime]
max_duration = ""
max_processes = 0
auto_stop = true
stop_graceful = true

[monitoring]
enabled = false
auto_pause_on_high = true
auto_kill_on_critical = true
poll_interval_sec = 2
file_read_threshold_mb = 50.0
file_read_rate_mb_per_sec = 10.0
audit_log_retention_days = 30
process_count_threshold = 0
process_spawn_rate_threshold = 100
reverse_shell_one_liners = "critical"
forensics_on_kill = false

[monitoring.nft]
enabled = false
rate_limit_per_second = 100
dns_query_threshold = 100
log_dns_queries = true
lima_host = ""

[timezone]
mode = "host"
name = "Europe/Warsaw"

[detection]
gtfobins_source = "https://github.com/GTFOBins/GTFOBins.github.io.git"
gtfobins_dir    = "~/.coi/gtfobins"
sigma_source    = "https://github.com/SigmaHQ/sigma.git"
sigma_dir       = "~/.coi/sigma"

[[mounts.default]]
host = "/tmp"
container = "/data"
readonly = false

[[sockets]]
host = "/run/user/1000/bus"
container = "/run/coi/bus"
env = "DBUS_SESSION_BUS_ADDRESS"

[ports]
pool = 0

[[ports.map]]
name = "web"
container = 3000
host = 0
listen = "127.0.0.1"

[[credentials]]
bundle = "ollama"

[[credentials]]
host = "~/.config/tool/token"
container = "/home/code/.config/tool/token"
mode = "0600"

[prompts]
review = "Review the last commit"
plan = { file = "plan.md" }
"""

# Key paths of our table that the reference config above does not spell out (our own knobs).
OURS_ONLY = {"network.bridge", "network.egress", "network.denied_domains"}
OURS_ONLY |= {"network.egress_hold_sec"}
OURS_ONLY |= {k.path for k in KEYS if k.path.startswith("monitoring.")} - {
    "monitoring.enabled",
    "monitoring.auto_pause_on_high",
    "monitoring.auto_kill_on_critical",
    "monitoring.poll_interval_sec",
    "monitoring.file_read_threshold_mb",
    "monitoring.file_read_rate_mb_per_sec",
    "monitoring.audit_log_retention_days",
    "monitoring.process_count_threshold",
    "monitoring.spawn_rate_per_sec",
    "monitoring.reverse_shell_one_liners",
    "monitoring.forensics_on_kill",
    "monitoring.nft.enabled",
    "monitoring.nft.rate_limit_per_second",
    "monitoring.nft.log_dns_queries",
    "monitoring.nft.lima_host",
}


@pytest.fixture
def dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path, dict[str, str]]:
    home = tmp_path / "home"
    project = tmp_path / "project"
    (project / ".coi").mkdir(parents=True)
    home.mkdir()
    monkeypatch.setenv("COI_HOME", str(home))
    monkeypatch.delenv("COI_CONFIG", raising=False)
    return home, project, {"COI_HOME": str(home)}


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def coi(project: Path, home: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COI_HOME": str(home)}
    env.pop("COI_CONFIG", None)
    return subprocess.run(
        [sys.executable, "-m", "coi_tui.cli.main", *argv],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
    )


def flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in table.items():
        path = f"{prefix}{name}"
        if isinstance(value, dict) and path not in BY_PATH:
            out.update(flatten(value, path + "."))
        else:
            out[path] = value
    return out


# ---------------------------------------------------------------------- every key
# The reference's defaults this coi refuses in one line: the agents it cannot install.
REFUSED_REFERENCE_LINES = {
    'agents = ["claude", "opencode", "pi"]': 'agents = ["claude", "opencode"]',
}


def supported_reference() -> str:
    text = REFERENCE_CONFIG
    for line, supported in REFUSED_REFERENCE_LINES.items():
        assert line in text, line
        text = text.replace(line, supported)
    return text


def test_the_reference_config_as_is_fails_on_its_first_refused_key(
    dirs: tuple[Path, Path, dict[str, str]],
) -> None:
    home, project, env = dirs
    write(home / "plan.md", "Plan the work\n")
    write(home / "config.toml", REFERENCE_CONFIG)
    with pytest.raises(CoiError) as caught:
        load_settings(project, env)
    message = str(caught.value)
    assert "\n" not in message
    assert "[container.build] agents" in message and '"pi"' in message, message
    assert "cannot go into the image: pi needs Node.js 20.6" in message


def test_reference_config_with_every_key_loads(dirs: tuple[Path, Path, dict[str, str]]) -> None:
    home, project, env = dirs
    write(home / "plan.md", "Plan the work\n")
    write(home / "config.toml", supported_reference())
    settings = load_settings(project, env)
    assert settings.prompts == {"review": "Review the last commit", "plan": "Plan the work\n"}
    assert settings.mounts[0].container == "/data"
    assert settings.sockets[0]["env"] == "DBUS_SESSION_BUS_ADDRESS"
    assert settings.port_maps == [
        {"name": "web", "container": 3000, "host": 0, "listen": "127.0.0.1"}
    ]
    assert settings.credentials[0] == {"bundle": "ollama", "mode": "0600"}
    assert settings.network_hosts[0]["hostnames"] == ["db.internal"]
    assert settings.monitoring_spawn_rate_per_sec == 100  # process_spawn_rate_threshold
    assert settings.build_base == "ubuntu:24.04" and settings.incus_group == "incus-admin"
    assert settings.protected_paths[-1] == ".claude/settings.local.json"


def test_every_key_of_ours_is_in_the_reference_config_or_our_own() -> None:
    spelled = set(flatten(tomllib.loads(REFERENCE_CONFIG)))
    spelled.discard("monitoring.nft.dns_query_threshold")  # an alias of dns_rate_per_min
    spelled |= {"monitoring.spawn_rate_per_sec", "sockets", "credentials", "prompts"}
    spelled |= {"defaults.env_commands", "network.hosts", "ports.map"}
    missing = {k.path for k in KEYS} - spelled - OURS_ONLY
    assert not missing


def test_config_show_lists_every_key_and_marks_the_fixed(
    dirs: tuple[Path, Path, dict[str, str]],
) -> None:
    home, project, _ = dirs
    write(home / "plan.md", "Plan\n")
    write(home / "config.toml", supported_reference())
    shown = coi(project, home, "config", "show")
    assert shown.returncode == 0, shown.stderr
    data = tomllib.loads(shown.stdout)  # the output is valid TOML
    listed = set(flatten(data))
    for key in KEYS:
        assert key.path in listed, key.path
    assert data["prompts"] == {"review": "Review the last commit", "plan": "Plan\n"}
    assert data["ports"]["map"][0]["name"] == "web"
    lines = shown.stdout.splitlines()
    for key in KEYS:
        line = next(line for line in lines if line.split(" = ")[0] == key.name and "=" in line)
        assert ("fixed here" in line) == bool(key.refusal) or key.name in (
            "enabled",
            "model",
            "priority",
            "name",
        ), key.path
    as_json = json.loads(coi(project, home, "config", "show", "--json").stdout)
    assert "not yet enforced" not in shown.stdout
    assert (
        "container.session_name" in as_json["fixed"]
        and "named sessions" in (as_json["fixed"]["container.session_name"])
    )
    assert "prompts" not in as_json["fixed"]
    assert as_json["config"]["sockets"][0]["host"] == "/run/user/1000/bus"


def test_fixed_keys_are_flagged_in_the_key_table() -> None:
    flagged = {k.path for k in KEYS if k.refusal}
    assert {"container.session_name", "paths.sessions_dir"} <= flagged
    assert {"monitoring.nft.lima_host", "ports.pool"} <= flagged
    for key in KEYS:  # a fixed key's default is the value it is fixed at
        assert not key.refusal or key.supported == (key.default,), key.path
    # implemented ones
    assert not {"prompts", "security.writable_paths", "git.writable_hooks"} & flagged
    assert "security.secret_paths" not in flagged
    assert not {"tool.claude.effort_level", "tool.context_json", "container.build.compression"} & (
        flagged
    )


def test_reference_defaults() -> None:
    settings = Settings()
    assert settings.protected_paths == [
        ".git/hooks",
        ".git/config",
        ".git/config.worktree",
        ".git/info/attributes",
        ".husky",
        ".vscode",
        ".coi",
        ".claude/settings.json",
        ".claude/settings.local.json",
        ".codex/config.toml",
        ".envrc",
        ".claude/hooks",
        ".mcp.json",
        ".devcontainer",
        ".devcontainer.json",
    ]
    assert settings.monitoring_c2_ports == [4444, 5555, 1234, 31337, 12345, 6666, 6667, 6697, 8080]
    assert settings.refresh_interval_minutes == 30 and settings.use_sudo is True


# ---------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[container]\npersistent = "yes"\n', r":2: \[container\] persistent: expected true or"),
        ('forward_env = "FOO"\n', r":1: forward_env: expected a list"),
        ('[defaults]\nforward_env = "FOO"\n', r":2: \[defaults\] forward_env: expected a list"),
        ('[container]\nshutdown_timeout = "60"\n', r"shutdown_timeout: expected a whole number"),
        ("[limits.cpu]\ncount = true\n", r"count: expected a number or a string"),
        ("[limits.cpu]\ncount = 2.5\n", r"count: expected a number or a string"),
        (
            '[network]\nallowed_domains = ["*.example.com"]\n',
            r"allowed_domains: wildcards \(\*\.example\.com\) .* egress = \"proxy\"",
        ),
        ('[network]\ndenied_domains = ["x.com"]\n', r'denied_domains needs .* egress = "proxy"'),
        ('[network]\negress = "socks"\n', r"egress: must be one of addresses, proxy"),
        ("[network]\nrefresh_interval_minutes = -1\n", r"must be at least 0"),
        ('[network]\ndns_servers = ["8.8.8.8", "dns.google"]\n', r"expected IPv4 addresses"),
        ("[network]\nallowed_ports = [0]\n", r"allowed_ports: must be 1-65535"),
        ("[network]\nallowed_ports = [70000]\n", r"allowed_ports: must be 1-65535"),
        ('[[network.hosts]]\nip = "::1"\nhostnames = ["a"]\n', r"ip: expected an IPv4 address"),
        ('[[network.hosts]]\nip = "10.0.0.1"\nhostnames = []\n', r"at least one hostname"),
        ('[[network.hosts]]\nip = "10.0.0.1"\n', r"at least one hostname"),
        (
            '[[network.hosts]]\nip = "10.0.0.1"\nhostnames = ["bad_host!"]\n',
            r"not a valid hostname",
        ),
        (
            '[[network.hosts]]\nip = "10.0.0.1"\nhostnames = ["a"]\nports = [65536]\n',
            r"ports must be 1-65535",
        ),
        ('[[network.hosts]]\nip = "10.0.0.1"\nhostname = ["a"]\n', r'did you mean "hostnames"'),
        ('[container]\nsession_name = "-bad"\n', r"session_name: expected letters, digits"),
        ('[container]\nsession_name = "a b"\n', r"session_name: expected letters"),
        ('[container]\nstale_base_check = "maybe"\n', r"must be one of warn, error, off"),
        ('[container.build]\ncompression = "zstd"\n', r"must be one of , none, gzip, xz"),
        ('[tool.claude]\neffort_level = "huge"\n', r"effort_level: must be one of"),
        ('[tool.codex]\nreasoning_effort = "very high"\n', r"must be a single token"),
        ('[tool]\npermission_mode = "yolo"\n', r"must be one of bypass, interactive"),
        ("[ports]\npool = 11\n", r"\[ports\] pool: must be 0-10"),
        ("[[ports.map]]\ncontainer = 80\n", r"name is required"),
        ('[[ports.map]]\nname = "w"\ncontainer = 80\nlisten = "here"\n', r"expected an IP"),
        (
            '[[ports.map]]\nname = "w"\ncontainer = 80\n'
            '[[ports.map]]\nname = "w"\ncontainer = 81\n',
            r"used twice",
        ),
        ('[[sockets]]\nhost = "/a"\ncontainer = "rel"\n', r"container must be an absolute path"),
        ('[[credentials]]\nhost = "/a"\n', r"container is required"),
        ('[[credentials]]\nbundle = "claude"\nmode = "rw"\n', r'octal mode like "0600"'),
        ("[prompts]\nx = 3\n", r'prompts: x: expected "text"'),
        ('[prompts]\nx = { path = "a" }\n', r'expected \{ file = "path" \}'),
        ('[prompts]\nx = { file = "missing.md" }\n', r"cannot read .*missing\.md"),
        ("[defaults.env_commands]\nTOKEN = 1\n", r"expected a \"command\" string"),
        ('[git]\nname = "Me"\n', r"\[git\] name and email must be set together"),
        ('[limits.disk]\ntmpfs_size = "lots"\n', r'tmpfs_size: expected a size like "10GiB"'),
        ('[monitoring.nft]\nenabled = "on"\n', r"\[monitoring.nft\] enabled: expected true"),
        ("[shell]\nuse_tmux = 1\n", r"use_tmux: expected true or false"),
        ('[pathz]\nlogs_dir = "x"\n', r"unknown key \(did you mean \[paths\]\?\)"),
        ('[[mounts.default]]\nhost = "/tmp"\ntarget = "/a"\n', r'unknown field "target"'),
    ],
)
def test_reference_validation(
    dirs: tuple[Path, Path, dict[str, str]], text: str, message: str
) -> None:
    home, project, env = dirs
    write(home / "config.toml", text)
    with pytest.raises(CoiError, match=message):
        load_settings(project, env)


@pytest.mark.parametrize(
    ("text", "attr", "value"),
    [
        ("[limits.cpu]\ncount = 2\n", "limit_cpu_count", "2"),
        ('[limits.cpu]\ncount = "0-3"\n', "limit_cpu_count", "0-3"),
        ("[limits.memory]\nswap = false\n", "limit_memory_swap", "false"),
        ("[monitoring]\nfile_read_threshold_mb = 5\n", "monitoring_file_read_threshold_mb", 5),
        ("[network]\nrefresh_interval_minutes = 0\n", "refresh_interval_minutes", 0),
        ('[tool]\npermission_mode = ""\n', "permission_mode", "bypass"),
        ('[network]\nallowed_domains = ["10.0.0.0/8", "x.org"]\n', "allowed_domains", None),
        ("[monitoring]\nprocess_spawn_rate_threshold = 7\n", "monitoring_spawn_rate_per_sec", 7),
        ('[git]\nname = "Me"\nemail = "me@x"\n', "git_email", "me@x"),
    ],
)
def test_lenient_where_a_user_would_expect(
    dirs: tuple[Path, Path, dict[str, str]], text: str, attr: str, value: Any
) -> None:
    home, project, env = dirs
    write(home / "config.toml", text)
    got = getattr(load_settings(project, env), attr)
    assert value is None or got == value


def test_env_vars_for_paths_and_lenient_env_text(dirs: tuple[Path, Path, dict[str, str]]) -> None:
    _, project, env = dirs
    env = {
        **env,
        "CLAUDE_ON_INCUS_SESSIONS_DIR": "~/.coi/sessions",
        "COI_PERSISTENT": "yes",  # environment variables are text: yes/1/true work
    }
    settings = load_settings(project, env)
    assert settings.source("paths.sessions_dir") == "$CLAUDE_ON_INCUS_SESSIONS_DIR"
    assert settings.persistent is True
    # a directory elsewhere is refused, as in a file, naming the variable
    with pytest.raises(CoiError, match=r"^\$CLAUDE_ON_INCUS_STORAGE_DIR: .*under its home"):
        load_settings(project, {**env, "CLAUDE_ON_INCUS_STORAGE_DIR": "/srv/storage"})


def test_merge_rules_between_files(dirs: tuple[Path, Path, dict[str, str]], tmp_path: Path) -> None:
    """~/.coi/config.toml, then $COI_CONFIG (both trusted: the project config's trust rules
    are config/trust.py's)."""
    home, project, env = dirs
    extra = tmp_path / "extra" / "coi.toml"
    env = {**env, "COI_CONFIG": str(extra)}
    write(
        home / "config.toml",
        '[[sockets]]\nhost = "/a"\ncontainer = "/a"\n'
        '[[ports.map]]\nname = "web"\ncontainer = 80\n'
        '[[ports.map]]\nname = "db"\ncontainer = 5432\n'
        '[security]\nsecret_paths = [".env"]\nwritable_paths = [".vscode"]\n'
        '[prompts]\na = "user a"\nb = "user b"\n',
    )
    write(
        extra,
        '[[sockets]]\nhost = "/b"\ncontainer = "/b"\n'
        '[[ports.map]]\nname = "web"\ncontainer = 8080\n'
        '[security]\nsecret_paths = ["*.pem", ".env"]\n'
        '[prompts]\nb = "project b"\n',
    )
    settings = load_settings(project, env)
    assert [s["host"] for s in settings.sockets] == ["/a", "/b"]  # appended
    assert {m["name"]: m["container"] for m in settings.port_maps} == {"web": 8080, "db": 5432}
    assert settings.secret_paths == [".env", "*.pem"]  # union
    assert settings.prompts == {"a": "user a", "b": "project b"}


def test_prompt_file_is_relative_to_its_config_file(
    dirs: tuple[Path, Path, dict[str, str]], tmp_path: Path
) -> None:
    _, project, env = dirs
    extra = tmp_path / "elsewhere" / "coi.toml"
    write(extra.parent / "prompts" / "fix.md", "Fix the bug\n")
    write(extra, '[prompts]\nfix = { file = "prompts/fix.md" }\n')
    env = {**env, "COI_CONFIG": str(extra)}
    assert load_settings(project, env).prompts == {"fix": "Fix the bug\n"}


# ---------------------------------------------------------------------- profiles
def test_old_profile_shape_maps_with_a_note(
    dirs: tuple[Path, Path, dict[str, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    home, project, env = dirs
    folder = home / "profiles" / "old"
    write(folder / "build.sh", "#!/bin/sh\n")
    write(folder / "config.toml", 'image = "old-img"\n\n[build]\nscript = "build.sh"\n')
    said: list[str] = []
    settings = load_settings(project, env, profile="old", say=said.append)
    assert settings.image == "old-img"
    assert settings.build_script == str((folder / "build.sh").resolve())
    assert capsys.readouterr().err == ""  # the loader never prints: the notes go to `say`
    err = "\n".join(said)
    assert "config.toml:1: image is the 0.7 profile format; write [container] image" in err
    assert "[build] script is the 0.7 profile format" in err


def test_old_profile_shape_is_still_strict(dirs: tuple[Path, Path, dict[str, str]]) -> None:
    home, project, env = dirs
    write(home / "profiles" / "old" / "config.toml", "[build]\nscrpt = 'x'\n")
    with pytest.raises(CoiError, match=r"unknown key \(did you mean \[container.build\] script"):
        load_settings(project, env, profile="old")
    # the main config does not take the 0.7 profile shape
    write(home / "config.toml", 'image = "x"\n')
    with pytest.raises(CoiError, match=r"image: unknown key"):
        load_settings(project, env)


def test_profile_takes_every_section_and_root_keys(
    dirs: tuple[Path, Path, dict[str, str]],
) -> None:
    home, project, env = dirs
    env = {**env, "COI_TRUST_ALL": "1"}  # project profiles are untrusted otherwise
    write(
        home / "profiles" / "p" / "config.toml",
        'env_command_timeout = "1m"\n[env_commands]\nTOKEN = "echo t"\n'
        '[prompts]\nx = "y"\n[[sockets]]\nhost = "/s"\ncontainer = "/s"\n'
        "[shell]\nuse_tmux = true\n[paths]\npreserve_workspace_path = false\n",
    )
    write(
        home / "profiles" / "child" / "config.toml",
        'inherits = "p"\n[env_commands]\nTOKEN = ""\nOTHER = "echo o"\n',
    )
    settings = load_settings(project, env, profile="child")
    assert settings.env_command_timeout == "1m" and settings.use_tmux is True
    assert settings.env_commands == {"OTHER": "echo o"}  # "" deletes the parent's
    assert settings.prompts == {"x": "y"} and settings.sockets[0]["host"] == "/s"


def test_duplicate_profile_is_an_error_when_used(dirs: tuple[Path, Path, dict[str, str]]) -> None:
    home, project, env = dirs
    write(home / "profiles" / "dup" / "config.toml", "")
    write(project / ".coi" / "profiles" / "dup" / "config.toml", "")
    with pytest.raises(CoiError, match=r'profile "dup" defined in multiple locations: .*Rename'):
        load_settings(project, env, profile="dup")
    run = coi(project, home, "config", "show", "--profile", "dup")
    assert run.returncode == 1 and "defined in multiple locations" in run.stderr
    listed = coi(project, home, "profile", "list")
    assert listed.returncode == 0 and "defined in multiple locations" in listed.stdout


def test_profile_create_default_scaffolds_the_documented_starter(
    dirs: tuple[Path, Path, dict[str, str]],
) -> None:
    home, project, env = dirs
    (project / ".coi").rmdir()
    made = coi(project, home, "profile", "create", "default")
    assert made.returncode == 0, made.stderr
    text = (home / "profiles" / "default" / "config.toml").read_text()
    assert tomllib.loads(text)  # valid TOML, all values commented out
    for key in KEYS:
        if key.path != "defaults.profile":
            assert (
                f"# {key.name} = " in text
                or f"[{key.path}]" in text
                or key.path
                in (
                    "sockets",
                    "credentials",
                    "prompts",
                    "defaults.env_commands",
                )
            ), key.path
    assert "accepted, not yet enforced" not in text
    assert '# session_name = ""' in text and "fixed here: named sessions" in text
    assert coi(project, home, "validate", "profile", "default").returncode == 0
    profiles = ProfileSet.discover(project, env)
    assert profiles.resolve("default").layer.values == {}  # behaves like the built-in
    listed = json.loads(coi(project, home, "profile", "list", "--json").stdout)
    assert [(row["name"], row["source"]) for row in listed if row["name"] == "default"] == [
        ("default", str(home / "profiles" / "default" / "config.toml"))
    ]
    again = coi(project, home, "profile", "create", "default")
    assert again.returncode == 1 and "already exists" in again.stderr


def test_documented_starter_uncommented_is_a_valid_profile(tmp_path: Path) -> None:
    """Uncommenting every `# key = default` line of the starter gives a loadable profile."""
    lines = []
    in_table = False  # inside a real [section] (not a commented example block)
    for line in documented_starter("p", image="img").splitlines():
        if line.startswith("["):
            in_table = True
        elif not line:
            in_table = False
        elif in_table and line.startswith("# ") and " = " in line:
            line = line[2:].split(" # ")[0].rstrip()
        lines.append(line)
    folder = tmp_path / "profiles" / "p"
    write(folder / "config.toml", "\n".join(lines) + "\n")
    profile = ProfileSet([("user", tmp_path / "profiles")]).resolve("p")
    assert profile.layer.values["container.image"] == "img"
    assert profile.layer.values["security.protected_paths"][2] == ".git/config.worktree"


# ---------------------------------------------------------------------- protect hook
def protect_settings(**values: Any) -> Settings:
    settings = Settings()
    for name, value in values.items():
        setattr(settings, name, value)
    return settings


@pytest.fixture(autouse=True)
def coi_home_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COI_HOME", str(tmp_path / "coi-home"))  # the protect hook's copies


def run_hook(workspace: Path, settings: Settings) -> dict[str, dict[str, str]]:
    ctx = SimpleNamespace(
        request=SimpleNamespace(workspace=str(workspace)),
        devices={"workspace": {"shift": "true"}},
        manager=SimpleNamespace(settings=settings),
        session=SimpleNamespace(container="coitest-unit-1"),
    )
    protect_hook.HOOK.prepare_instance(ctx)  # type: ignore[arg-type]
    return {k: v for k, v in ctx.devices.items() if k.startswith(("protect-", "mask-"))}


def test_protect_hook_files_dirs_missing_and_placeholders(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    (ws / ".git" / "worktrees" / "feature").mkdir(parents=True)
    (ws / ".git" / "config").write_text("[core]\n")
    (ws / ".git" / "worktrees" / "feature" / "config.worktree").write_text("")
    (ws / ".claude").mkdir()
    (ws / ".claude" / "settings.json").write_text("{}")
    (ws / ".vscode").mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (ws / ".husky").symlink_to(outside)  # a symlink: never mounted
    devices = run_hook(ws, Settings())
    paths = {d["path"] for d in devices.values()}
    assert paths == {
        "/workspace/.git/hooks",  # placeholders created in a real .git directory
        "/workspace/.git/config",
        "/workspace/.git/config.worktree",
        "/workspace/.git/info/attributes",
        "/workspace/.git/worktrees/feature/config.worktree",
        "/workspace/.vscode",
        "/workspace/.claude/settings.json",  # a file
    }
    assert (ws / ".git" / "hooks").is_dir() and (ws / ".git" / "info" / "attributes").is_file()
    assert (ws / ".git" / "config.worktree").read_text() == ""
    assert not (ws / ".coi").exists() and not (ws / ".claude" / "settings.local.json").exists()
    for device in devices.values():
        assert device["readonly"] == "true" and device["shift"] == "true"
        # a coi-owned copy: Incus never opens a path an agent could swap for a link
        assert not device["source"].startswith(str(ws)) and os.path.exists(device["source"])
    assert all(len(name) <= 60 for name in devices)
    copy = Path(devices["protect-claude-settings-json"]["source"])
    assert copy.read_text() == "{}" and not copy.stat().st_mode & 0o222


def test_protect_hook_no_git_dir_or_git_file_creates_nothing(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    assert run_hook(ws, Settings()) == {}
    assert list(ws.iterdir()) == []
    (ws / ".git").write_text("gitdir: /elsewhere\n")  # a worktree checkout
    assert run_hook(ws, Settings()) == {}
    assert [p.name for p in ws.iterdir()] == [".git"]


def test_protect_hook_knobs(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    (ws / ".git" / "hooks").mkdir(parents=True)
    (ws / ".vscode").mkdir()
    (ws / "secrets").mkdir()
    (ws / "link").symlink_to(tmp_path)
    (ws / "sub").mkdir()
    (ws / "sub" / "escape").symlink_to(tmp_path)
    (ws / "sub" / "escape-file").write_text("")
    settings = protect_settings(
        writable_paths=[".vscode"],
        git_writable_hooks=True,
        additional_protected_paths=["secrets", "../up", "/abs/../secrets", "link/x"],
    )
    assert protect_hook.protected_paths(settings)[:2] == [".git/config", ".git/config.worktree"]
    paths = {d["path"] for d in run_hook(ws, settings).values()}
    assert "/workspace/.git/hooks" not in paths and "/workspace/.vscode" not in paths
    assert "/workspace/secrets" in paths
    assert not any("up" in p or "link" in p for p in paths)
    assert run_hook(ws, protect_settings(disable_protection=True)) == {}


def test_secret_paths_are_masked_outermost_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COI_HOME", str(tmp_path / "home"))
    ws = tmp_path / "ws"
    (ws / "secrets" / "deep").mkdir(parents=True)
    (ws / "secrets" / "deep" / "k.pem").write_text("x")
    (ws / ".env").write_text("TOKEN=1")
    (ws / "a.pem").write_text("x")
    (ws / "sub").mkdir()
    (ws / "sub" / "b.pem").write_text("x")
    (ws / ".coi").mkdir()
    (ws / "x.pem").symlink_to(ws / "a.pem")  # a symlink: never mounted
    settings = protect_settings(secret_paths=[".env", "*.pem", "secrets/**", "../x", ".coi"])
    devices = run_hook(ws, settings)
    masks = {d["path"]: d for name, d in devices.items() if name.startswith("mask-")}
    assert set(masks) == {
        "/workspace/.env",
        "/workspace/a.pem",
        "/workspace/secrets",  # its contents are under the one mask
        "/workspace/.coi",
    }
    home = tmp_path / "home" / "masks"
    assert masks["/workspace/.env"]["source"] == str(home / "empty")
    assert masks["/workspace/secrets"]["source"] == str(home / "empty.d")
    assert all(d["readonly"] == "true" for d in masks.values())
    assert (home / "empty").read_bytes() == b"" and list((home / "empty.d").iterdir()) == []
    # a protected path under a mask is left to the mask
    assert "/workspace/.coi" not in {
        d["path"] for n, d in devices.items() if n.startswith("protect-")
    }
    too_many = protect_settings(secret_paths=["f*"])
    for i in range(protect_hook.MAX_MASKS + 1):
        (ws / f"f{i}").write_text("")
    with pytest.raises(CoiError, match="secret_paths match 65 paths"):
        run_hook(ws, too_many)


def test_pre_08_defaults_image_loads_with_a_note(
    dirs: tuple[Path, Path, dict[str, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    home, project, env = dirs
    write(home / "config.toml", '[defaults]\nimage = "old"\npersistent = true\n')
    said: list[str] = []
    settings = load_settings(project, env, say=said.append)
    assert settings.image == "old" and settings.persistent is True
    assert capsys.readouterr().err == ""  # the loader never prints: the notes go to `say`
    err = "\n".join(said)
    assert "config.toml:2: [defaults] image is the pre-0.8 layout; write [container] image" in err


def test_builtin_hardened_profile(dirs: tuple[Path, Path, dict[str, str]]) -> None:
    home, project, env = dirs
    write(home / "config.toml", '[network]\nmode = "open"\n[security]\nsecret_paths = ["x.txt"]\n')
    settings = load_settings(project, env, profile="hardened")
    assert settings.network_mode == "restricted" and settings.persistent is False
    assert settings.monitoring_enabled and settings.monitoring_nft_enabled
    assert settings.max_duration == "4h" and settings.reduce_kernel_surface
    assert settings.secret_paths[0] == "x.txt" and "secrets/**" in settings.secret_paths
    assert settings.source("network.mode") == "profile hardened (built-in)"
    # a child inherits it; a disk profile of the same name replaces it
    write(home / "profiles" / "strict" / "config.toml", 'inherits = "hardened"\n')
    child = load_settings(project, env, profile="strict")
    assert child.max_duration == "4h" and child.profile_chain == ["strict", "hardened"]
    listed = json.loads(coi(project, home, "profile", "list", "--json").stdout)
    assert [(r["name"], r["persistent"], r["source"]) for r in listed][:2] == [
        ("default", "", "(built-in)"),
        ("hardened", "no", "(built-in)"),
    ]
    shown = coi(project, home, "profile", "show", "hardened")
    assert shown.returncode == 0 and 'max_duration = "4h"' in shown.stdout
    assert "# Source: (built-in)" in shown.stdout
    refused = coi(project, home, "profile", "delete", "hardened", "--force")
    assert refused.returncode == 1 and "built-in profile" in refused.stderr
    write(home / "profiles" / "hardened" / "config.toml", "[limits.runtime]\nmax_duration = '1h'\n")
    replaced = load_settings(project, env, profile="hardened")
    assert replaced.max_duration == "1h" and replaced.network_mode == "open"


def test_profile_edit_opens_the_editor_then_validates(
    dirs: tuple[Path, Path, dict[str, str]], tmp_path: Path
) -> None:
    home, project, _ = dirs
    write(home / "profiles" / "p" / "config.toml", "[container]\n")
    good = write(tmp_path / "good.sh", "#!/bin/sh\necho 'persistent = true' >> \"$1\"\n")
    bad = write(tmp_path / "bad.sh", "#!/bin/sh\necho 'persistnt = true' >> \"$1\"\n")
    good.chmod(0o755)
    bad.chmod(0o755)

    def edit(editor: str, name: str = "p") -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "COI_HOME": str(home), "EDITOR": editor}
        env.pop("VISUAL", None)
        env.pop("COI_CONFIG", None)
        return subprocess.run(
            [sys.executable, "-m", "coi_tui.cli.main", "profile", "edit", name],
            cwd=project,
            env=env,
            capture_output=True,
            text=True,
        )

    done = edit(str(good))
    assert done.returncode == 0 and "Profile p is valid" in done.stdout, done.stderr
    assert load_settings(project, {"COI_HOME": str(home)}, profile="p").persistent is True
    broken = edit(str(bad))
    assert broken.returncode == 1
    assert "config.toml:3: [container] persistnt: unknown key" in broken.stderr
    builtin = edit(str(good), "hardened")
    assert builtin.returncode == 1 and "built-in profile and cannot be edited" in builtin.stderr
    missing = edit(str(good), "nope")
    assert missing.returncode == 1 and 'profile "nope" not found' in missing.stderr


def test_build_all_without_recipes_and_flag_conflicts(
    dirs: tuple[Path, Path, dict[str, str]],
) -> None:
    home, project, _ = dirs
    write(home / "profiles" / "plain" / "config.toml", "[container]\npersistent = true\n")
    nothing = coi(project, home, "build", "--all")
    assert nothing.returncode == 0 and "No profile has anything to build" in nothing.stdout
    both = coi(project, home, "build", "--all", "--profile", "plain")
    assert both.returncode == 2 and "--all and --profile exclude each other" in both.stderr


def test_env_commands_run_on_the_host(tmp_path: Path) -> None:
    from coi_tui.sessions.config_hook import run_env_command

    assert run_env_command("A", "echo '  value  '; pwd >&2", 5, str(tmp_path)) == "value"
    assert run_env_command("B", "pwd", 5, str(tmp_path)) == str(tmp_path)
    with pytest.raises(CoiError, match=r'env_commands C: "echo no >&2; exit 4" failed .*4: no'):
        run_env_command("C", "echo no >&2; exit 4", 5, str(tmp_path))
    with pytest.raises(CoiError, match=r"did not finish within 0.2s"):
        run_env_command("D", "sleep 5", 0.2, str(tmp_path))


def test_session_hooks_include_the_config_hook() -> None:
    from coi_tui.sessions import config_hook, protect_hook
    from coi_tui.sessions.hooks import SESSION_HOOKS

    assert SESSION_HOOKS.index(config_hook.HOOK) > SESSION_HOOKS.index(protect_hook.HOOK)


def test_port_devices() -> None:
    from coi_tui.sessions.config_hook import port_devices

    devices = port_devices(
        [
            {"name": "web", "container": 3000, "host": 8080, "listen": "127.0.0.1"},
            {"name": "api", "container": 4000, "host": 0, "listen": "::1"},
        ]
    )
    assert devices["coi-port-web"] == {
        "type": "proxy",
        "listen": "tcp:127.0.0.1:8080",
        "connect": "tcp:127.0.0.1:3000",
        "bind": "host",
    }
    listen = devices["coi-port-api"]["listen"]
    assert listen.startswith("tcp:[::1]:") and int(listen.rsplit(":", 1)[1]) > 0


def test_protect_hook_follows_the_workspace_mount_path(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    (ws / ".vscode").mkdir(parents=True)
    ctx = SimpleNamespace(
        request=SimpleNamespace(workspace=str(ws)),
        devices={"workspace": {"path": str(ws)}},
        manager=SimpleNamespace(settings=Settings()),
        session=SimpleNamespace(container="coitest-unit-2"),
    )
    protect_hook.HOOK.prepare_instance(ctx)  # type: ignore[arg-type]
    assert ctx.devices["protect-vscode"]["path"] == f"{ws}/.vscode"


@pytest.mark.parametrize("key", [k for k in KEYS if k.refusal], ids=lambda k: k.path)
def test_a_fixed_key_at_another_value_is_refused_in_one_line(
    key: Any, dirs: tuple[Path, Path, dict[str, str]]
) -> None:
    """No key of the reference is accepted and ignored: one this coi does not act on takes
    its default only, and any other value stops the load with the key and the reason."""
    home, project, env = dirs
    if isinstance(key.default, bool):
        other: Any = not key.default
    elif isinstance(key.default, int):
        other = key.default + 1
    elif isinstance(key.default, list):
        other = ["other"]
    elif key.choices:
        other = next(c for c in key.choices if c != key.default)
    else:
        other = "1GiB" if key.kind == "size" else "other"
    section, _, name = key.path.rpartition(".")
    write(home / "config.toml", f"[{section}]\n{name} = {toml_value(other)}\n")
    with pytest.raises(CoiError) as caught:
        load_settings(project, env)
    message = str(caught.value)
    assert "\n" not in message and f"[{section}] {name}" in message, message
    assert "not supported by this coi" in message and key.refusal in message, message
    write(home / "config.toml", f"[{section}]\n{name} = {toml_value(key.default)}\n")
    assert getattr(load_settings(project, env), key.attr) == key.default


def test_asking_for_the_reference_network_monitor_turns_the_monitor_on(
    dirs: tuple[Path, Path, dict[str, str]],
) -> None:
    home, project, env = dirs
    write(home / "config.toml", "[monitoring.nft]\nenabled = true\n")
    settings = load_settings(project, env)
    assert settings.monitoring_enabled is True
    assert settings.source("monitoring.enabled") == settings.source("monitoring.nft.enabled")
    write(home / "config.toml", "[monitoring.nft]\nenabled = false\n")
    assert load_settings(project, env).monitoring_enabled is False
