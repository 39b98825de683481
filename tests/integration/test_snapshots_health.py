"""Snapshots, health, the privileged guard and protected paths on the real daemon."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from coi_tui.incus import Incus, IncusError
from tests.conftest import CoiRunner
from tests.integration.test_sessions import capture, start_background, wait_for

pytestmark = pytest.mark.incus


def in_container(coi: CoiRunner, name: str, script: str, user: str = "1000") -> dict:
    result = coi.ok(
        "container", "exec", name, "--user", user, "--capture", "--", "sh", "-c", script
    )
    return json.loads(result.stdout)


def test_snapshot_restore_undoes_changes_and_branch_runs_beside(
    coi: CoiRunner, workspace: Path, incus: Incus
) -> None:
    name = start_background(coi, workspace, "--persistent")  # kept when stopped to restore
    in_container(coi, name, "echo before > /home/code/state.txt")
    created = coi.ok("snapshot", "create", "base", "-c", name)
    assert f"Created snapshot 'base' for container '{name}'" in created.stderr
    auto = coi.ok("snapshot", "create", "-w", str(workspace))  # resolved from the workspace
    assert "Created snapshot 'snap-" in auto.stderr
    duplicate = coi("snapshot", "create", "base", "-c", name)
    assert duplicate.returncode == 1 and "already exists" in duplicate.stderr

    listed = json.loads(coi.ok("snapshot", "list", "-c", name, "--json").stdout)
    assert listed["container"] == name
    assert next(s["name"] for s in listed["snapshots"]) == "base"
    assert "\nTotal: 2 snapshots\n" in coi.ok("snapshot", "list", "-c", name).stdout

    in_container(coi, name, "echo after > /home/code/state.txt; touch /home/code/new.txt")
    refused = coi("snapshot", "restore", "base", "-c", name, "--force")  # as COI: running
    assert refused.returncode == 1 and "must be stopped before restore" in refused.stderr
    coi.ok("container", "stop", name)
    unanswered = coi("snapshot", "restore", "base", "-c", name)  # no terminal, no --force
    assert unanswered.returncode == 0 and "Aborted" in unanswered.stderr
    restored = coi.ok("snapshot", "restore", "base", "-c", name, "--force")
    assert f"Restored container '{name}' from snapshot 'base'" in restored.stderr
    coi.ok("shell", "--background", "--container", name)  # the agent again, in its tmux
    state = in_container(coi, name, "cat /home/code/state.txt; ls /home/code/new.txt")
    assert state["stdout"] == "before\n" and state["exit_code"] != 0
    wait_for(lambda: "dummy>" in capture(coi, name), what="the agent after restore")

    branched = coi.ok("snapshot", "branch", "base", "-c", name)
    new_name = name[:-1] + "2"
    assert new_name in branched.stderr
    assert incus.status(name) == "Running" and incus.status(new_name) == "Running"
    assert in_container(coi, new_name, "cat /home/code/state.txt")["stdout"] == "before\n"
    wait_for(lambda: "dummy>" in capture(coi, new_name), what="the agent in the branch")
    listed = json.loads(coi.ok("list", "--json").stdout)["active_containers"]
    assert {c["name"] for c in listed} == {name, new_name}

    assert coi("snapshot", "delete", "-c", name).returncode == 2
    deleted = coi.ok("snapshot", "delete", "base", "-c", name)  # one name: no question
    assert f"Deleted snapshot 'base' from container '{name}'" in deleted.stderr
    missing = coi("snapshot", "info", "base", "-c", name)
    assert missing.returncode == 1 and "not found" in missing.stderr


# The healthy (0), degraded (1) and stopped-daemon (2) cases, the JSON shape and --fix are in
# test_health_monitor_cli.py.
def test_health_fails_on_a_missing_image(coi: CoiRunner) -> None:
    result = coi("health", "--json", env={"COI_IMAGE": "coi-no-such-image"})
    assert result.returncode == 2
    check = json.loads(result.stdout)["checks"]["image"]
    assert check["status"] == "failed" and check["details"]["fix"] == "run 'coi build'"


@pytest.fixture
def privileged_project(incus: Incus) -> Iterator[str]:
    """An Incus project whose default profile is privileged: breaks the check without touching
    the real default profile other sessions use."""
    name = f"coitest-{uuid.uuid4().hex[:6]}"
    incus.request(
        "POST",
        "/1.0/projects",
        body={
            "name": name,
            "config": {
                "features.images": "false",
                "features.profiles": "true",
                "features.storage.volumes": "false",
            },
        },
    )
    try:
        scoped = Incus(project=name)
        profile = scoped.get_profile("default")
        scoped.update_profile("default", {**profile, "config": {"security.privileged": "true"}})
        yield name
    finally:
        scoped = Incus(project=name)
        for instance in scoped.list_instances():
            scoped.delete_instance(instance.name, force=True)
        with contextlib.suppress(IncusError):
            incus.request("DELETE", f"/1.0/projects/{name}")


def test_privileged_profile_fails_health_and_refuses_shell(
    coi: CoiRunner, workspace: Path, privileged_project: str
) -> None:
    env = {"COI_PROJECT": privileged_project}
    health = coi("health", "--json", env=env)
    assert health.returncode == 2
    checks = json.loads(health.stdout)["checks"]
    check = checks["privileged_profile"]
    assert check["status"] == "failed"
    assert "incus profile unset default security.privileged" in check["details"]["fix"]
    posture = checks["security_posture"]
    assert posture["status"] == "failed" and posture["details"]["privileged"] is True
    assert posture["details"]["seccomp"] == "disabled (privileged)"

    shell = coi("shell", "--background", "--tool", "dummy", "-w", str(workspace), env=env)
    assert shell.returncode == 1
    assert "security.privileged" in shell.stderr and "incus profile unset" in shell.stderr
    assert Incus(project=privileged_project).list_instances() == []


def test_protected_paths_are_read_only_inside(coi: CoiRunner, workspace: Path) -> None:
    (workspace / ".git" / "hooks").mkdir(parents=True)
    (workspace / ".git" / "config").write_text("[core]\n")
    (workspace / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (workspace / "main.py").write_text("print('hi')\n")
    result = coi(
        "run",
        "-w",
        str(workspace),
        "--",
        "sh",
        "-c",
        "echo evil > .git/hooks/pre-commit; echo hooks=$?;"
        "echo '[evil]' >> .git/config; echo config=$?;"
        "echo \"print('changed')\" > main.py; echo source=$?;"
        "echo ok > .git/HEAD; echo head=$?",
    )
    assert result.returncode == 0, result.stderr
    codes = dict(line.split("=") for line in result.stdout.split())
    assert codes["hooks"] != "0" and codes["config"] != "0"
    assert codes["source"] == "0" and codes["head"] == "0"
    assert not (workspace / ".git" / "hooks" / "pre-commit").exists()
    assert (workspace / ".git" / "config").read_text() == "[core]\n"
    assert (workspace / "main.py").read_text() == "print('changed')\n"
