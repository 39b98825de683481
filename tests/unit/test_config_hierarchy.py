"""Config hierarchy, sources, validation and profiles: pure logic, no daemon."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from coi_tui.config.profiles import MAX_DEPTH, ProfileSet
from coi_tui.config.schema import KEYS, parse_duration
from coi_tui.config.settings import Settings, load_settings, settings_fields
from coi_tui.core.errors import CoiError, UsageError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path, dict[str, str]]:
    """(coi home, project dir, env) with nothing configured."""
    home = tmp_path / "home"
    project = tmp_path / "project"
    (project / ".coi").mkdir(parents=True)
    home.mkdir()
    monkeypatch.setenv("COI_HOME", str(home))
    return home, project, {"COI_HOME": str(home)}


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def profile(base: Path, name: str, text: str) -> Path:
    return write(base / "profiles" / name / "config.toml", text)


def test_every_schema_key_is_a_settings_field_with_the_same_default() -> None:
    defaults = Settings()
    assert {key.attr for key in KEYS} <= settings_fields()
    for key in KEYS:
        assert getattr(defaults, key.attr) == key.default, key.path


def test_same_key_at_every_level_resolves_to_the_highest(
    dirs: tuple[Path, Path, dict[str, str]], tmp_path: Path
) -> None:
    home, project, env = dirs
    user_file = write(home / "config.toml", '[container]\nimage = "user"\n')
    project_file = write(project / ".coi" / "config.toml", '[container]\nimage = "project"\n')
    extra = write(tmp_path / "extra" / "coi.toml", '[container]\nimage = "coi-config"\n')
    profile(home, "p", '[container]\nimage = "profile"\n')
    env = {**env, "COI_CONFIG": str(extra), "COI_IMAGE": "env"}
    flag = {"container.image": ("flag", "--image")}
    levels = [
        ("flag", "--image", dict(profile="p", flags=flag, env=env)),
        ("env", "$COI_IMAGE", dict(profile="p", env=env)),
        (
            "profile",
            f"profile p ({home}/profiles/p/config.toml:2)",
            dict(profile="p", env={k: v for k, v in env.items() if k != "COI_IMAGE"}),
        ),
        (
            "coi-config",
            f"$COI_CONFIG ({extra}:2)",
            dict(env={k: v for k, v in env.items() if k != "COI_IMAGE"}),
        ),
        ("project", f"project config ({project_file}:2)", dict(env=dirs[2])),
    ]
    for value, source, kwargs in levels:
        settings = load_settings(project, **kwargs)  # type: ignore[arg-type]
        assert settings.image == value
        assert settings.source("container.image") == source
    user_only = load_settings(home, dirs[2])
    assert (user_only.image, user_only.source("container.image")) == (
        "user",
        f"user config ({user_file}:2)",
    )
    assert load_settings(tmp_path, {"COI_HOME": str(tmp_path)}).source("image") == "default"


def test_config_show_sources_names_each_origin(
    dirs: tuple[Path, Path, dict[str, str]],
) -> None:
    home, project, _ = dirs
    write(home / "config.toml", '[tool]\npermission_mode = "interactive"\n')
    write(project / ".coi" / "config.toml", '[defaults]\nprofile = "dev"\n')
    profile(project / ".coi", "dev", '[limits.memory]\nlimit = "1GiB"\n')
    # The project config picks a profile, which only a trusted project may do.
    env = {**os.environ, "COI_HOME": str(home), "COI_NETWORK_MODE": "open", "COI_TRUST_ALL": "1"}
    env.pop("COI_CONFIG", None)
    run = subprocess.run(
        [sys.executable, "-m", "coi_tui.cli.main", "config", "show", "--sources"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    lines = run.stdout.splitlines()

    def line_of(prefix: str) -> str:
        return next(x for x in lines if x.startswith(prefix))

    assert "# user config" in line_of('permission_mode = "interactive"')
    assert "# project config" in line_of('profile = "dev"')
    assert "# profile dev" in line_of('limit = "1GiB"')
    assert "# $COI_NETWORK_MODE" in line_of('mode = "open"')
    assert "# default" in line_of('image = "coi-default"')
    shown = json.loads(
        subprocess.run(
            [sys.executable, "-m", "coi_tui.cli.main", "config", "show", "--format", "json"],
            cwd=project,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert shown["config"]["limits"]["memory"]["limit"] == "1GiB"
    assert shown["sources"]["network.mode"] == "$COI_NETWORK_MODE"
    assert shown["profile_chain"] == ["dev"]


def test_three_level_chain_across_user_and_project_merges_per_the_rules(
    dirs: tuple[Path, Path, dict[str, str]],
) -> None:
    home, project, env = dirs
    env = {**env, "COI_TRUST_ALL": "1"}  # project profiles are untrusted otherwise
    profile(
        home,
        "base",
        """\
forward_env = ["BASE_TOKEN"]
[environment]
KEEP = "base"
OVERRIDE = "base"
DROP = "base"
[network]
mode = "allowlist"
allowed_domains = ["a.example", "b.example"]
[limits.memory]
limit = "1GiB"
enforce = "hard"
[[mounts]]
host = "/tmp"
container = "/mnt/base"
""",
    )
    profile(
        home,
        "team",
        """\
inherits = "base"
[environment]
OVERRIDE = "team"
TEAM = "team"
[network]
allowed_domains = ["c.example"]
[limits.memory]
swap = "false"
""",
    )
    profile(
        project / ".coi",
        "dev",
        """\
inherits = "team"
forward_env = ["DEV_TOKEN"]
[environment]
DROP = ""
OVERRIDE = "dev"
[limits.memory]
limit = "2GiB"
[limits.cpu]
count = "2"
""",
    )
    resolved = ProfileSet.discover(project, env).resolve("dev")
    assert resolved.chain == ["dev", "team", "base"]
    # Maps merge, the child wins, "" deletes.
    assert resolved.environment == {"KEEP": "base", "OVERRIDE": "dev", "TEAM": "team"}
    values = resolved.layer.values
    # Arrays are replaced by the child that defines them, otherwise inherited.
    assert values["forward_env"] == ["DEV_TOKEN"]
    assert values["network.allowed_domains"] == ["c.example"]
    assert [m.container for m in values["mounts"]] == ["/mnt/base"]
    # Struct sections deep-merge field by field.
    assert values["limits.memory.limit"] == "2GiB"
    assert values["limits.memory.enforce"] == "hard"
    assert values["limits.memory.swap"] == "false"
    assert values["network.mode"] == "allowlist"
    assert values["limits.cpu.count"] == "2"
    assert "base" in resolved.layer.where("limits.memory.enforce")
    assert "team" in resolved.layer.where("environment.TEAM")

    # Applied onto the config: a user-config DROP is deleted by the profile's "".
    write(home / "config.toml", '[environment]\nDROP = "user"\nUSER = "user"\n')
    settings = load_settings(project, env, profile="dev")
    assert settings.environment == {
        "USER": "user",
        "KEEP": "base",
        "OVERRIDE": "dev",
        "TEAM": "team",
    }
    assert settings.limit_memory == "2GiB" and settings.limit_memory_enforce == "hard"
    assert settings.profile == "dev" and settings.profile_chain == ["dev", "team", "base"]


def test_cycle_and_eleven_levels_fail_with_clear_messages(
    dirs: tuple[Path, Path, dict[str, str]],
) -> None:
    home, project, env = dirs
    profile(home, "a", 'inherits = "b"\n')
    profile(home, "b", 'inherits = "c"\n')
    profile(project / ".coi", "c", 'inherits = "a"\n')
    with pytest.raises(CoiError, match=r'cycle detected involving "a": a -> b -> c -> a$'):
        ProfileSet.discover(project, env).resolve("a")
    for i in range(1, MAX_DEPTH + 2):  # l1 inherits l2 ... l11 (11 levels)
        parent = f'inherits = "l{i + 1}"\n' if i <= MAX_DEPTH else ""
        profile(home, f"l{i}", parent + f'[environment]\nLEVEL{i} = "x"\n')
    profiles = ProfileSet.discover(project, env)
    assert len(profiles.resolve("l2").chain) == MAX_DEPTH  # 10 levels are fine
    with pytest.raises(CoiError, match=r"exceeds maximum depth of 10: l1 -> l2 .* -> l11$"):
        profiles.resolve("l1")
    profile(home, "orphan", 'inherits = "nope"\n')
    with pytest.raises(CoiError, match=r'"orphan" inherits from "nope", but parent profile'):
        ProfileSet.discover(project, env).resolve("orphan")


def test_duplicate_profile_names_and_missing_context_are_errors(
    dirs: tuple[Path, Path, dict[str, str]],
) -> None:
    home, project, env = dirs
    profile(home, "twin", "")
    profile(project / ".coi", "twin", "")
    with pytest.raises(CoiError, match="defined in multiple locations"):
        ProfileSet.discover(project, env).resolve("twin")
    profile(home, "ctx", 'context = "missing.md"\n')
    with pytest.raises(CoiError, match=r"context file .*missing\.md does not exist"):
        ProfileSet.discover(project, env).resolve("ctx")
    write(home / "profiles" / "auto" / "CONTEXT.md", "hello")
    profile(home, "auto", "")
    resolved = ProfileSet.discover(project, env).resolve("auto")
    assert resolved.layer.values["context"].endswith("auto/CONTEXT.md")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[container\nimage=", r"config\.toml: invalid TOML: .*line 1"),
        (
            '[tool]\npermision_mode = "bypass"\n',
            r"config\.toml:2: \[tool\] permision_mode: unknown key \(did you mean \[tool\] "
            r"permission_mode\?\)",
        ),
        ("[limits.memory]\nlimit = 5\n", r":2: \[limits.memory\] limit: expected a string"),
        ('[limits.memory]\nlimit = "lots"\n', r'expected a size like "512MiB"'),
        ("[limits.cpu]\n\npriority = 11\n", r":3: \[limits.cpu\] priority: must be 0-10, got 11"),
        ('[limits.disk]\nread = "10MiB/s"\n', r'without "/s"'),
        ('[limits.runtime]\nmax_duration = "soon"\n', r'duration like "20s"'),
        (
            '[tool]\nname = "cursor"\n',
            r"must be one of aider, claude, codex, dummy, omp, opencode, pi",
        ),
        ('[network]\nmode = "closed"\n', r"must be one of restricted, open, allowlist"),
        ('[timezone]\nmode = "mars"\n', r"\[timezone\] mode: must be one of host, fixed, utc"),
        ('forward_env = ["NOT-A-NAME"]\n', r"forward_env: expected environment variable names"),
        ('[[mounts]]\nhost = "/tmp"\ncontainer = "/workspace"\n', r"cannot mount over or inside"),
        (
            '[[mounts]]\nhost = "/tmp"\ncontainer = "/a"\n[[mounts]]\nhost = "/tmp"\n'
            'container = "/a/b"\n',
            r"nested mount paths detected",
        ),
        ('[[mounts]]\nhost = "/tmp"\ntarget = "/a"\n', r'unknown field "target"'),
        ('[netwrk]\nmode = "open"\n', r"unknown key \(did you mean \[network\]\?\)"),
    ],
)
def test_validation_names_file_line_key_and_what_is_allowed(
    dirs: tuple[Path, Path, dict[str, str]], text: str, message: str
) -> None:
    home, project, env = dirs
    write(home / "config.toml", text)
    with pytest.raises(CoiError, match=message):
        load_settings(project, env)


def test_cli_reports_bad_config_in_one_line_exit_1(
    dirs: tuple[Path, Path, dict[str, str]],
) -> None:
    home, project, _ = dirs
    write(project / ".coi" / "config.toml", "[limits.cpu]\ncount = true\n")
    env = {**os.environ, "COI_HOME": str(home)}
    env.pop("COI_CONFIG", None)
    for argv in (["config", "show"], ["list"], ["run", "--", "true"]):
        run = subprocess.run(
            [sys.executable, "-m", "coi_tui.cli.main", *argv],
            cwd=project,
            env=env,
            capture_output=True,
            text=True,
        )
        assert run.returncode == 1, argv
        assert run.stderr.count("\n") == 1 and "Traceback" not in run.stderr
        assert "config.toml:2: [limits.cpu] count: expected a number or a string" in run.stderr


def test_env_vars_legacy_names_and_flags(dirs: tuple[Path, Path, dict[str, str]]) -> None:
    _, project, env = dirs
    settings = load_settings(
        project,
        {
            **env,
            "CLAUDE_ON_INCUS_PERSISTENT": "1",
            "COI_LIMIT_MEMORY": "512MiB",
            "COI_LIMIT_DURATION": "1h30m",
            "COI_CONTAINER_PREFIX": "x-",
        },
    )
    assert settings.persistent is True and settings.limit_memory == "512MiB"
    assert parse_duration(settings.max_duration) == 5400
    assert settings.container_prefix == "x-"
    assert settings.source("limits.memory.limit") == "$COI_LIMIT_MEMORY"
    with pytest.raises(CoiError, match=r"\$COI_LIMIT_MEMORY: expected a size"):
        load_settings(project, {**env, "COI_LIMIT_MEMORY": "huge"})
    with pytest.raises(UsageError, match="--tool: must be one of"):
        load_settings(project, env, flags={"tool.name": ("cursor", "--tool")})


def test_defaults_profile_applies_only_when_asked(
    dirs: tuple[Path, Path, dict[str, str]],
) -> None:
    home, project, env = dirs
    write(home / "config.toml", '[defaults]\nprofile = "p"\n')
    profile(home, "p", '[tool]\nname = "aider"\n')
    assert load_settings(project, env).tool == "claude"  # e.g. `coi list`
    settings = load_settings(project, env, apply_profile=True)  # shell / run
    assert settings.tool == "aider" and settings.profile_chain == ["p"]


def test_profile_commands_create_show_list_delete(
    dirs: tuple[Path, Path, dict[str, str]],
) -> None:
    home, project, _ = dirs
    env = {**os.environ, "COI_HOME": str(home)}
    env.pop("COI_CONFIG", None)

    def coi(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "coi_tui.cli.main", *argv],
            cwd=project,
            env=env,
            capture_output=True,
            text=True,
        )

    assert coi("profile", "create", "base", "--user", "--image", "img-base").returncode == 0
    made = coi("profile", "create", "dev", "--inherits", "base")
    assert made.returncode == 0, made.stderr
    assert (project / ".coi" / "profiles" / "dev" / "config.toml").is_file()  # project exists
    listed = json.loads(coi("profile", "list", "--format", "json").stdout)
    assert [row["name"] for row in listed] == ["default", "hardened", "base", "dev"]
    shown = coi("profile", "show", "dev", "--sources").stdout
    assert 'image = "img-base"' in shown and "# Chain: dev <- base" in shown
    refused = coi("profile", "delete", "base", "--force")
    assert refused.returncode == 1 and "inherited by dev" in refused.stderr
    assert coi("profile", "delete", "dev", "--force").returncode == 0
    assert not (project / ".coi" / "profiles" / "dev").exists()
    missing = coi("profile", "show", "nope")
    assert missing.returncode == 1 and 'profile "nope" not found' in missing.stderr
