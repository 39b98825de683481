"""The usual set-up: a normal user in the incus-admin group runs coi, and the agent's files are
that user's; a user outside the group gets one clear line about the socket.

The test users run coi with the system Python and a world-readable copy of our site-packages,
because the repo and its venv may sit in a directory only root can enter (CI clones into one).
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import pytest

from coi_tui.incus.provision import SUBID_FILES, subid_allows
from tests.conftest import REPO, CoiRunner

pytestmark = pytest.mark.incus

AGENT_USER = "coi-test-agent"
OUTSIDER = "coi-test-outsider"
SYSTEM_PYTHON = "/usr/bin/python3"


def ensure_user(name: str, groups: list[str]) -> pwd.struct_passwd:
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        cmd = ["useradd", "--create-home", "--shell", "/bin/bash", name]
        if groups:
            cmd += ["--groups", ",".join(groups)]
        subprocess.run(cmd, check=True)
        entry = pwd.getpwnam(name)
    return entry


@pytest.fixture(scope="module")
def shared_python(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    if os.getuid() != 0:
        pytest.fail("these tests create users and must run as root (make test does in CI)")
    root = Path("/var/tmp") / f"coi-test-python-{os.getpid()}"
    site = Path(sysconfig.get_paths()["purelib"])
    shutil.copytree(
        site, root, ignore=shutil.ignore_patterns("__editable__*", "coi_tui*", "__pycache__")
    )
    shutil.copytree(
        REPO / "coi_tui", root / "coi_tui", ignore=shutil.ignore_patterns("__pycache__")
    )
    for path in [root, *root.rglob("*")]:
        path.chmod(path.stat().st_mode | 0o755 if path.is_dir() else path.stat().st_mode | 0o644)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def run_as(
    user: pwd.struct_passwd, python_path: Path, env: dict[str, str], *args: str, cwd: Path
) -> subprocess.CompletedProcess[str]:
    user_env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": user.pw_dir,
        "USER": user.pw_name,
        "PYTHONPATH": str(python_path),
        "COI_CONTAINER_PREFIX": env["COI_CONTAINER_PREFIX"],
        "COI_HOME": str(Path(user.pw_dir) / ".coi-test"),
        "LANG": "C.UTF-8",
    }
    return subprocess.run(
        [
            "runuser",
            "-u",
            user.pw_name,
            "--",
            "env",
            *(f"{k}={v}" for k, v in user_env.items()),
            SYSTEM_PYTHON,
            "-S",
            "-m",
            "coi_tui.cli.main",
            *args,
        ],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=180,
    )


@pytest.fixture(scope="module")
def agent_user() -> Iterator[pwd.struct_passwd]:
    saved = {path: Path(path).read_text() for path in SUBID_FILES}
    user = ensure_user(AGENT_USER, ["incus-admin"])
    yield user
    subprocess.run(["userdel", "--remove", AGENT_USER], check=False, capture_output=True)
    for path, text in saved.items():
        Path(path).write_text(text)


@pytest.fixture(scope="module")
def outsider() -> Iterator[pwd.struct_passwd]:
    saved = {path: Path(path).read_text() for path in SUBID_FILES}
    user = ensure_user(OUTSIDER, [])
    yield user
    subprocess.run(["userdel", "--remove", OUTSIDER], check=False, capture_output=True)
    for path, text in saved.items():
        Path(path).write_text(text)


def test_normal_user_in_incus_admin_runs_coi(
    agent_user: pwd.struct_passwd, shared_python: Path, coi: CoiRunner, tmp_path: Path
) -> None:
    workspace = Path(agent_user.pw_dir) / "project with space"
    workspace.mkdir(exist_ok=True)
    os.chown(workspace, agent_user.pw_uid, agent_user.pw_gid)
    (workspace / "from-host.txt").write_text("host\n")
    os.chown(workspace / "from-host.txt", agent_user.pw_uid, agent_user.pw_gid)
    try:
        # Until an admin runs `coi setup --user`, the user gets a clear line saying so.
        before = run_as(
            agent_user,
            shared_python,
            coi.env,
            "run",
            "-w",
            str(workspace),
            "--",
            "true",
            cwd=workspace,
        )
        if not subid_allows(agent_user.pw_uid, "/etc/subuid"):
            assert before.returncode == 1
            assert f"sudo coi setup --user {AGENT_USER}" in before.stderr
        coi.ok("setup", "--user", AGENT_USER)
        result = run_as(
            agent_user,
            shared_python,
            coi.env,
            "run",
            "-w",
            str(workspace),
            "--",
            "sh",
            "-c",
            "id -u; echo agent > agent.txt; echo more >> from-host.txt",
            cwd=workspace,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "1000"
        made = workspace / "agent.txt"
        assert (made.stat().st_uid, made.stat().st_gid) == (agent_user.pw_uid, agent_user.pw_gid)
        assert (workspace / "from-host.txt").read_text() == "host\nmore\n"

        shell = run_as(
            agent_user,
            shared_python,
            coi.env,
            "shell",
            "--background",
            "--tool",
            "dummy",
            "-w",
            str(workspace),
            cwd=workspace,
        )
        assert shell.returncode == 0, shell.stderr
        listed = run_as(agent_user, shared_python, coi.env, "list", "--json", cwd=workspace)
        containers = json.loads(listed.stdout)["active_containers"]
        assert [c["workspace"] for c in containers] == [str(workspace)]
        killed = run_as(
            agent_user,
            shared_python,
            coi.env,
            "kill",
            "--force",
            containers[0]["name"],
            cwd=workspace,
        )
        assert killed.returncode == 0, killed.stderr
    finally:
        shutil.rmtree(workspace, ignore_errors=True)


def test_user_outside_incus_admin_gets_one_clear_line(
    outsider: pwd.struct_passwd, shared_python: Path, coi: CoiRunner
) -> None:
    result = run_as(outsider, shared_python, coi.env, "list", cwd=Path("/tmp"))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "permission denied" in lines[0] and "incus-admin" in lines[0]
