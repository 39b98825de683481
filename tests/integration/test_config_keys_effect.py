"""Config keys whose effect only a real container shows, each set in config.toml: the agent
the session starts, the facts file it finds, whom commands run as, the storage pool, how
long a shutdown may take and the named prompts of `coi run`. tests/unit/test_schema_walk.py
lists which test proves each key."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from coi_tui.incus import Incus
from coi_tui.sessions.naming import container_name
from tests.conftest import CoiRunner
from tests.integration.test_sessions import capture, start_background, wait_for

pytestmark = pytest.mark.incus


def test_the_configured_tool_starts_without_the_tool_flag(
    coi: CoiRunner, workspace: Path, incus: Incus
) -> None:
    """[tool] name is the agent a session starts when no --tool is given."""
    (coi.home / "config.toml").write_text('[tool]\nname = "dummy"\n')
    result = coi.ok("shell", "--background", "-w", str(workspace))
    assert "Tool: dummy" in result.stderr
    name = container_name(coi.prefix, str(workspace), 1)
    assert incus.get_instance(name).config["user.coi.tool"] == "dummy"
    wait_for(lambda: "dummy>" in capture(coi, name), what="the dummy agent's prompt")


def test_a_context_json_file_replaces_the_generated_facts(
    coi: CoiRunner, workspace: Path, incus: Incus, tmp_path: Path
) -> None:
    """[tool] context_json_file is what the agent finds in ~/SANDBOX_CONTEXT.json."""
    facts = tmp_path / "facts.json"
    facts.write_text('{"team": "platform", "on_call": false}\n')
    (coi.home / "config.toml").write_text(f'[tool]\ncontext_json_file = "{facts}"\n')
    name = start_background(coi, workspace)
    found = incus.exec_capture(name, ["cat", "/home/code/SANDBOX_CONTEXT.json"])
    assert found.stdout == facts.read_text(), found.stderr


def test_commands_run_as_the_configured_code_user_and_uid(coi: CoiRunner, workspace: Path) -> None:
    """[incus] code_uid and code_user are whom the agent's commands run as (the image's
    nobody here), and that uid is the one mapped to the workspace's owner."""
    (coi.home / "config.toml").write_text(
        '[incus]\ncode_uid = 65534\ncode_user = "nobody"\n[git]\nseed_host_identity = false\n'
    )
    script = "id -u; id -un; echo $USER; touch made && stat -c %u made"
    result = coi("run", "-w", str(workspace), "--", "sh", "-c", script)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["65534", "nobody", "nobody", "65534"]
    assert (workspace / "made").stat().st_uid == os.getuid()


def test_the_session_is_created_on_the_configured_storage_pool(
    coi: CoiRunner, workspace: Path, incus: Incus
) -> None:
    """[container] storage_pool is the pool the container's root disk is asked for: one
    that does not exist stops the launch (Incus's own error), nothing is left behind."""
    (coi.home / "config.toml").write_text('[container]\nstorage_pool = "coitest-no-such-pool"\n')
    result = coi("run", "-w", str(workspace), "--", "true")
    assert result.returncode == 1
    assert "Storage pool not found" in result.stderr, result.stderr
    assert incus.list_instances(coi.prefix) == []


def test_shutdown_timeout_bounds_a_shutdown_that_hangs(
    coi: CoiRunner, workspace: Path, incus: Incus
) -> None:
    """[container] shutdown_timeout: a service that ignores its stop signal holds the
    graceful shutdown only that long (the default would wait 60 s), then it is forced."""
    (coi.home / "config.toml").write_text("[container]\nshutdown_timeout = 2\n")
    name = start_background(coi, workspace)
    hang = ["systemd-run", "--unit=coi-hang", "-p", "KillSignal=SIGCONT", "-p"]
    assert incus.exec_capture(name, [*hang, "TimeoutStopSec=300", "sleep", "infinity"]).ok
    active = incus.exec_capture(name, ["systemctl", "is-active", "coi-hang"])
    assert active.stdout.strip() == "active", active.stdout + active.stderr
    started = time.monotonic()
    result = coi.ok("shutdown", name)
    assert f"Shutting down container {name} (timeout: 2s)..." in result.stdout
    assert time.monotonic() - started < 30
    assert not incus.instance_exists(name)


def test_a_named_prompt_from_the_config_is_what_the_agent_gets(
    coi: CoiRunner, workspace: Path
) -> None:
    """[prompts] NAME is the text `coi run --prompt-name NAME` gives the agent."""
    (coi.home / "config.toml").write_text('[prompts]\nreview = "look at the diff, then say ok"\n')
    result = coi.ok("run", "-w", str(workspace), "--tool", "claude", "--prompt-name", "review")
    assert "You said: look at the diff, then say ok" in result.stdout


def test_mounts_from_flags_and_config_nest_only_read_only(
    coi: CoiRunner, workspace: Path, tmp_path: Path
) -> None:
    """`--mount HOST:CONTAINER` (repeatable) and `--storage DIR` add writable mounts, and a
    `--mount` at a [[mounts]] path replaces that entry; a read-only mount may sit inside a
    writable one (COI's rule), a writable one may not, in COI's words."""
    dirs = {name: tmp_path / name for name in ("config", "flag", "store", "child", "other")}
    for name, path in dirs.items():
        path.mkdir()
        (path / "f").write_text(f"from-{name}\n")
    (coi.home / "config.toml").write_text(
        f'[[mounts]]\nhost = "{dirs["config"]}"\ncontainer = "/data"\n'
        f'[[mounts]]\nhost = "{dirs["child"]}"\ncontainer = "/data/ro"\nreadonly = true\n'
        f'[[mounts]]\nhost = "{dirs["other"]}"\ncontainer = "/other"\n'
    )
    script = (
        "cat /data/f /data/ro/f /x/f /storage/f; touch /data/new && echo wrote; "
        "touch /data/ro/new || echo refused"
    )
    result = coi(
        "run", "-w", str(workspace), "--mount", f"{dirs['flag']}:/x", "--storage",
        str(dirs["store"]), "--", "sh", "-c", script,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        "from-config", "from-child", "from-flag", "from-store", "wrote", "refused",
    ]  # fmt: skip
    assert (dirs["config"] / "new").exists() and not (dirs["child"] / "new").exists()

    replaced = coi(
        "run", "-w", str(workspace), "--mount", f"{dirs['flag']}:/other", "--", "cat", "/other/f"
    )
    assert (replaced.returncode, replaced.stdout) == (0, "from-flag\n"), replaced.stderr

    nested = coi(
        "run", "-w", str(workspace), "--mount", f"{dirs['flag']}:/data/ro/deeper", "--", "true"
    )
    assert nested.returncode == 1
    assert "nested mount paths detected: '/data' and '/data/ro/deeper' conflict" in (nested.stderr)


def test_the_users_agent_config_comes_in_and_login_files_only_on_request(
    coi: CoiRunner, workspace: Path, tmp_path: Path
) -> None:
    """The host's ~/.claude settings reach a new container with the user's keys kept (COI's
    awsAuthRefresh case) and secret-named env left out; the login files come only with
    `[[credentials]] bundle = "claude"`, mode 0600, ~/.claude.json merged over the image's."""
    import json

    home = tmp_path / "user-home"
    (home / ".claude").mkdir(parents=True)
    settings = {
        "awsAuthRefresh": "aws sso login --profile bedrock-users",
        "env": {"AWS_PROFILE": "bedrock-users", "ANTHROPIC_API_KEY": "sk-never-inside"},
        "userCustomSetting": "should_be_preserved",
    }
    (home / ".claude" / "settings.json").write_text(json.dumps(settings))
    (home / ".claude" / "CLAUDE.md").write_text("my own rules\n")
    (home / ".claude" / ".credentials.json").write_text('{"token": "oauth-secret"}')
    (home / ".claude.json").write_text('{"oauthAccount": {"email": "me@example.org"}}')
    show = (
        "cat ~/.claude/settings.json; echo @@; cat ~/.claude/CLAUDE.md; echo @@; "
        "stat -c '%a %U' ~/.claude/.credentials.json ~/.claude.json 2>&1; echo @@; "
        "cat ~/.claude/.credentials.json ~/.claude.json 2>&1; true"
    )
    env = {"HOME": str(home)}
    plain = coi("run", "-w", str(workspace), "--", "sh", "-c", show, env=env)
    assert plain.returncode == 0, plain.stderr
    settings_text, context, modes, logins = plain.stdout.split("@@\n")
    inside = json.loads(settings_text)
    assert inside["awsAuthRefresh"] == settings["awsAuthRefresh"]
    assert inside["env"]["AWS_PROFILE"] == "bedrock-users"
    assert "ANTHROPIC_API_KEY" not in inside["env"] and "sk-never-inside" not in plain.stdout
    assert inside["userCustomSetting"] == "should_be_preserved"
    assert inside["allowDangerouslySkipPermissions"] is True
    assert "my own rules" in context and "COI Sandbox Context" in context
    assert "No such file" in modes and "oauth-secret" not in logins and "me@" not in logins
    assert "settings.json: without env.ANTHROPIC_API_KEY" in plain.stderr

    (coi.home / "config.toml").write_text('[[credentials]]\nbundle = "claude"\n')
    asked = coi("run", "-w", str(workspace), "--", "sh", "-c", show, env=env)
    assert asked.returncode == 0, asked.stderr
    modes, logins = asked.stdout.split("@@\n")[2:]
    assert modes.split() == ["600", "code", "600", "code"]
    assert logins.startswith('{"token": "oauth-secret"}')
    assert json.loads(logins[len('{"token": "oauth-secret"}') :])["oauthAccount"] == {
        "email": "me@example.org"
    }


def test_use_tmux_false_runs_the_agent_attached_without_tmux(
    coi: CoiRunner, workspace: Path, incus: Incus
) -> None:
    """[shell] use_tmux = false (a project may set it): `coi shell` runs the agent (bash with
    --debug) through a plain exec, no terminal needed, says "Mode: Direct (no tmux)", returns
    its exit code and ends the session; the --tmux flag is gone, as in COI 0.10."""
    (workspace / ".coi").mkdir()
    (workspace / ".coi" / "config.toml").write_text("[shell]\nuse_tmux = false\n")
    result = coi(
        "shell", "--debug", "-w", str(workspace), input="echo direct-$(whoami)-$TMUX.; exit 3\n"
    )
    assert result.returncode == 3, result.stderr
    assert "direct-code-." in result.stdout  # as the code user, outside any tmux
    assert "Mode: Direct (no tmux)" in result.stderr and "(tmux)" not in result.stderr
    assert not incus.instance_exists(container_name(coi.prefix, str(workspace), 1))
    removed = coi("shell", "-w", str(workspace), "--tmux=false")
    assert removed.returncode == 2
    assert "--tmux flag was removed" in removed.stderr and "[shell] use_tmux" in removed.stderr


def test_an_alias_names_a_workspace_from_anywhere(
    coi: CoiRunner, workspace: Path, incus: Incus, tmp_path: Path
) -> None:
    """[container] alias (a project may set it): registered in aliases.json, carried by each
    slot's container (NAME, NAME-2, ...), shown by `coi list`; `coi shell NAME[-N]` starts
    that workspace from any directory and `coi kill NAME-N` finds its slot; another
    workspace's claim and a malformed name are refused, in COI's words."""
    import json

    (workspace / ".coi").mkdir()
    (workspace / ".coi" / "config.toml").write_text('[container]\nalias = "proj-a"\n')
    coi.ok("shell", "--background", "--debug", "-w", str(workspace))
    first = container_name(coi.prefix, str(workspace), 1)
    assert incus.get_instance(first).config["user.coi.alias"] == "proj-a"
    registry = json.loads((coi.home / "aliases.json").read_text())
    assert registry["proj-a"]["workspace"] == str(workspace)
    listed = json.loads(coi.ok("list", "--format", "json").stdout)["active_containers"]
    assert [c["alias"] for c in listed if c["name"] == first] == ["proj-a"]

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    coi.ok("shell", "--background", "--debug", "proj-a", cwd=elsewhere)
    second = container_name(coi.prefix, str(workspace), 2)
    assert incus.get_instance(second).config["user.coi.alias"] == "proj-a-2"
    killed = coi("kill", "proj-a-2")
    assert killed.returncode == 0, killed.stderr
    assert not incus.instance_exists(second) and incus.instance_exists(first)

    other = tmp_path / "other"
    (other / ".coi").mkdir(parents=True)
    (other / ".coi" / "config.toml").write_text('[container]\nalias = "proj-a"\n')
    taken = coi("shell", "--background", "-w", str(other))
    assert taken.returncode == 1 and 'alias "proj-a" is already registered' in taken.stderr
    assert "alias conflict" in taken.stderr
    (other / ".coi" / "config.toml").write_text('[container]\nalias = "9lives"\n')
    bad = coi("shell", "--background", "-w", str(other))
    assert bad.returncode == 1 and "invalid alias" in bad.stderr
    unknown = coi("shell", "--background", "nope", cwd=elsewhere)
    assert unknown.returncode == 1 and 'alias "nope" not found' in unknown.stderr


def test_forwarded_values_stay_out_of_the_process_table(
    coi: CoiRunner, workspace: Path, incus: Incus
) -> None:
    """COI's ps-leak case: a forward_env value reaches the agent's tmux session (new windows
    too) but no process's command line, where `ps auxww` would show it to every process in
    the container (the tmux server keeps the command line of the client that started it)."""
    secret = "SUPER_SECRET_TOKEN_ps_leak_7x9k2m"
    (coi.home / "config.toml").write_text('[defaults]\nforward_env = ["COI_SECRET_TOKEN"]\n')
    name = start_background(coi, workspace, "--debug", env={"COI_SECRET_TOKEN": secret})
    table = incus.exec_capture(name, ["ps", "auxww"])
    assert table.ok and "tmux" in table.stdout and secret not in table.stdout, table.stdout
    session = f"coi-{name}"
    coi.ok("tmux", "send", name, "echo ENV_CHECK_${COI_SECRET_TOKEN}_END")
    wait_for(lambda: f"ENV_CHECK_{secret}_END" in capture(coi, name), what="the value in tmux")
    window = incus.exec_capture(
        name,
        ["tmux", "new-window", "-t", session, "-P", "sh", "-c", "echo $COI_SECRET_TOKEN; sleep 30"],
        user=1000,
        env={"HOME": "/home/code"},
    )
    assert window.ok, window.stderr
    pane = ["tmux", "capture-pane", "-p", "-t", window.stdout.strip()]
    wait_for(
        lambda: secret in incus.exec_capture(name, pane, user=1000).stdout,
        what="the value in a new window",
    )


def test_preserve_workspace_path_mounts_the_workspace_at_its_host_path(
    coi: CoiRunner, workspace: Path, incus: Incus
) -> None:
    """[paths] preserve_workspace_path (a project may set it, as in COI's test): commands and
    the agent start in the workspace at its host path (spaces and all), its protected paths
    are read-only there, and the context says where it is."""
    import json
    import subprocess

    subprocess.run(["git", "init", "-q", str(workspace)], check=True)
    (workspace / ".coi").mkdir()
    (workspace / ".coi" / "config.toml").write_text("[paths]\npreserve_workspace_path = true\n")
    script = (
        "pwd; mountpoint -q /workspace && echo mounted || echo not-mounted; "
        "touch .git/hooks/planted 2>&1; cat ~/SANDBOX_CONTEXT.json"
    )
    result = coi("run", "-w", str(workspace), "--", "sh", "-c", script)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == str(workspace)
    assert lines[1] == "not-mounted" and "Read-only file system" in lines[2], result.stdout
    facts = json.loads("\n".join(lines[3:]))
    assert facts["workspace_path"] == str(workspace)
    assert not (workspace / ".git" / "hooks" / "planted").exists()

    name = start_background(coi, workspace, "--debug")
    assert incus.get_instance(name).devices["workspace"]["path"] == str(workspace)
    coi.ok("tmux", "send", name, "echo at:$(pwd):")
    wait_for(lambda: f"at:{workspace}:" in capture(coi, name), what="the shell's directory")


def host_command_lines() -> str:
    """Every host process's command line, as another user of the host sees them in ps."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                found.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode())
            except OSError:
                continue
    return "\n".join(found)


def test_forwarded_values_stay_off_the_hosts_command_lines(coi: CoiRunner, workspace: Path) -> None:
    """`coi run` (and a use_tmux = false session) hands the command its environment without
    putting a forwarded value on any host process's command line, while the command runs."""
    import subprocess
    import sys

    secret = "HOST_PS_SECRET_q8w7e6"
    (coi.home / "config.toml").write_text('[defaults]\nforward_env = ["COI_SECRET_TOKEN"]\n')
    argv = ["run", "-w", str(workspace), "--", "sh", "-c", 'echo "got:$COI_SECRET_TOKEN"; sleep 1']
    running = subprocess.Popen(
        [sys.executable, "-m", "coi_tui.cli.main", *argv],
        env={**coi.env, "COI_SECRET_TOKEN": secret},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert running.stdout is not None
        assert running.stdout.readline() == f"got:{secret}\n"  # the command has it now
        assert secret not in host_command_lines()
    finally:
        running.wait(timeout=60)
    assert running.returncode == 0
