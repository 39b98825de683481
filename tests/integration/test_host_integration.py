"""Host integration on the real daemon: credential isolation, forward_env, [environment],
timezone, profiles applied to `coi run`, limits in the cgroup, SSH agent forwarding, and
max_duration stopping a session."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import CoiRunner

pytestmark = pytest.mark.incus


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.2)


def test_env_isolation_forwarding_timezone_profile_and_memory_limit(
    coi: CoiRunner, workspace: Path, tmp_path: Path
) -> None:
    fake_home = tmp_path / "host-home"
    (fake_home / ".ssh").mkdir(parents=True)
    (fake_home / ".ssh" / "id_ed25519").write_text("HOST-PRIVATE-KEY\n")
    (coi.home / "config.toml").write_text(
        'forward_env = ["FORWARDED_VAR", "UNSET_VAR"]\n'
        "[environment]\n"
        'STATIC_VAR = "from-config"\n'
        "[timezone]\n"
        'mode = "fixed"\n'
        'name = "Asia/Tokyo"\n'
    )
    # A project profile selected by [defaults] profile, inheriting a user profile (a project
    # config may pick a profile only when trusted: COI_TRUST_ALL below).
    (workspace / ".coi").mkdir()
    (workspace / ".coi" / "config.toml").write_text('[defaults]\nprofile = "dev"\n')
    dev = workspace / ".coi" / "profiles" / "dev"
    dev.mkdir(parents=True)
    (dev / "config.toml").write_text(
        'inherits = "base"\n[environment]\nPROFILE_VAR = "dev"\nSTATIC_VAR = ""\n'
    )
    (dev / "CONTEXT.md").write_text("Team rule: run make lint before committing.\n")
    base = coi.home / "profiles" / "base"
    base.mkdir(parents=True)
    (base / "config.toml").write_text(
        '[limits.memory]\nlimit = "256MiB"\nenforce = "hard"\n'
        "[limits.runtime]\nmax_processes = 500\n"
    )
    script = (
        "env; echo TZNAME=$(date +%Z); "
        "echo MEM=$(cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/memory/memory.limit_in_bytes "
        "2>/dev/null | head -1); "
        "echo PIDS=$(cat /sys/fs/cgroup/pids.max /sys/fs/cgroup/pids/pids.max 2>/dev/null "
        "| head -1); "
        f"cat {fake_home}/.ssh/id_ed25519 2>&1; ls -a ~/.ssh 2>&1; "
        "cat ~/SANDBOX_CONTEXT.md"
    )
    result = coi(
        "run",
        "-w",
        str(workspace),
        "--tool",
        "dummy",
        "--",
        "sh",
        "-c",
        script,
        cwd=workspace,
        env={
            "HOME": str(fake_home),
            "SECRET_TOKEN": "host-secret-value",
            "ANTHROPIC_API_KEY": "sk-host-key",
            "FORWARDED_VAR": "forwarded-value",
            "COI_TRUST_ALL": "1",
        },
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    env = dict(line.split("=", 1) for line in out.splitlines() if "=" in line and line[0].isupper())
    # Host secrets never leak; only forwarded names and static values arrive.
    assert "host-secret-value" not in out and "sk-host-key" not in out
    assert "SECRET_TOKEN" not in env and "ANTHROPIC_API_KEY" not in env
    assert env["FORWARDED_VAR"] == "forwarded-value"
    assert "UNSET_VAR" not in env
    assert 'forward_env variable "UNSET_VAR" is not set on host' in result.stderr
    assert env["PROFILE_VAR"] == "dev" and "STATIC_VAR" not in env  # profile "" deleted it
    assert env["TZ"] == "Asia/Tokyo" and env["TZNAME"] == "JST"
    # The host's ~/.ssh is not reachable.
    assert "HOST-PRIVATE-KEY" not in out and "No such file or directory" in out
    # Limits from the inherited profile are in the container's cgroup.
    assert int(env["MEM"]) == 256 * 1024 * 1024
    assert env["PIDS"] == "500"
    # The sandbox context describes the session and carries the profile's context.
    assert "| Profile | dev |" in out and "Asia/Tokyo" in out
    assert "256MiB memory" in out
    assert "# User-Provided Profile Context" in out and "run make lint" in out


@pytest.fixture
def ssh_agent(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A host ssh-agent with one fresh key: (socket path, key fingerprint)."""
    sock = str(tmp_path / "agent.sock")
    started = subprocess.run(
        ["ssh-agent", "-a", sock, "-s"], capture_output=True, text=True, check=True
    ).stdout
    pid = int(started.split("SSH_AGENT_PID=", 1)[1].split(";", 1)[0])
    try:
        key = tmp_path / "id_test"
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "coi-test-key", "-f", str(key)],
            check=True,
        )
        env = {**os.environ, "SSH_AUTH_SOCK": sock}
        subprocess.run(["ssh-add", "-q", str(key)], env=env, check=True, capture_output=True)
        listed = subprocess.run(
            ["ssh-add", "-l"], env=env, capture_output=True, text=True, check=True
        ).stdout
        yield sock, listed.split()[1]
    finally:
        os.kill(pid, signal.SIGTERM)


def test_ssh_agent_forwarding_lists_the_host_key(
    coi: CoiRunner, workspace: Path, ssh_agent: tuple[str, str]
) -> None:
    sock, fingerprint = ssh_agent
    # Off by default: no socket, no variable.
    plain = coi(
        "run",
        "-w",
        str(workspace),
        "--",
        "sh",
        "-c",
        "echo [$SSH_AUTH_SOCK]",
        env={"SSH_AUTH_SOCK": sock},
    )
    assert plain.stdout.strip() == "[]", plain.stderr
    (coi.home / "config.toml").write_text("[ssh]\nforward_agent = true\n")
    result = coi(
        "run",
        "-w",
        str(workspace),
        "--",
        "sh",
        "-c",
        "echo $SSH_AUTH_SOCK; ssh-add -l",
        env={"SSH_AUTH_SOCK": sock},
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "/tmp/ssh-agent.sock"
    assert fingerprint in result.stdout and "coi-test-key" in result.stdout
    missing = coi("run", "-w", str(workspace), "--", "true", env={"SSH_AUTH_SOCK": ""})
    assert missing.returncode == 1 and "SSH_AUTH_SOCK is not set" in missing.stderr


def test_max_duration_stops_the_session_and_saves_it(
    coi: CoiRunner, workspace: Path, incus: object
) -> None:
    (coi.home / "config.toml").write_text('[limits.runtime]\nmax_duration = "10s"\n')
    started = time.monotonic()
    result = coi.ok("shell", "--background", "--tool", "dummy", "-w", str(workspace))
    name = next(x for x in result.stderr.splitlines() if x.startswith("Container: ")).split()[1]
    session_id = next(
        x for x in result.stderr.splitlines() if x.startswith("Session ID: ")
    ).split()[2]
    saved = coi.home / "sessions-dummy" / session_id / ".claude"
    wait_for(
        lambda: not incus.instance_exists(name) and saved.is_dir(),  # type: ignore[attr-defined]
        timeout=60,
        what="the runtime limit to stop and save the session",
    )
    assert time.monotonic() - started >= 9  # it ran until the limit, not less
    logs = (coi.home / "logs" / f"{name}.stdout.log").read_text()
    assert "[limits] Runtime limit reached (10s)" in logs
    # The agent's state was saved for --resume.
    assert list((saved / "projects" / "-workspace").glob("*.jsonl"))
    meta = json.loads((coi.home / "sessions-dummy" / session_id / "metadata.json").read_text())
    assert meta["session_id"] == session_id
