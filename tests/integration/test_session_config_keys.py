"""Config keys the session acts on inside the container, against real Incus: the git identity
([git] name/email, else the host's with seed_host_identity) and [tool] pre_launch."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import CoiRunner

pytestmark = pytest.mark.incus

IDENTITY = (
    "git config --global user.name; git config --global user.email; "
    "git config --global user.useConfigOnly; true"
)


def host_gitconfig(tmp_path: Path) -> dict[str, str]:
    path = tmp_path / "host.gitconfig"
    path.write_text("[user]\n\tname = Host Person\n\temail = host@example.invalid\n")
    return {"GIT_CONFIG_GLOBAL": str(path)}


def identity(coi: CoiRunner, workspace: Path, config: str, env: dict[str, str]) -> list[str]:
    (coi.home / "config.toml").write_text(config)
    result = coi("run", "-w", str(workspace), "--", "sh", "-c", IDENTITY, env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_the_hosts_identity_is_seeded_unless_pinned_or_off(
    coi: CoiRunner, workspace: Path, tmp_path: Path
) -> None:
    env = host_gitconfig(tmp_path)
    host = ["Host Person", "host@example.invalid", "true"]
    assert identity(coi, workspace, "", env) == host
    pinned = '[git]\nname = "Pinned Bot"\nemail = "bot@example.invalid"\n'
    assert identity(coi, workspace, pinned, env) == ["Pinned Bot", "bot@example.invalid", "true"]
    # none: git refuses to guess one (user.useConfigOnly, as COI)
    assert identity(coi, workspace, "[git]\nseed_host_identity = false\n", env) == ["true"]


def test_pre_launch_runs_in_order_as_code_before_the_command(
    coi: CoiRunner, workspace: Path
) -> None:
    (coi.home / "config.toml").write_text(
        '[tool]\npre_launch = ["echo first > pre.txt", "id -u >> pre.txt"]\n'
    )
    result = coi("run", "-w", str(workspace), "--", "cat", "pre.txt")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["first", "1000"]
    assert "pre_launch: echo first > pre.txt" in result.stderr


def test_a_failing_pre_launch_stops_the_launch_in_one_line(coi: CoiRunner, workspace: Path) -> None:
    (coi.home / "config.toml").write_text('[tool]\npre_launch = ["echo nope >&2; exit 3"]\n')
    result = coi("run", "-w", str(workspace), "--", "touch", "ran.txt")
    assert result.returncode != 0
    assert not (workspace / "ran.txt").exists()
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert errors == ["Error: pre_launch 'echo nope >&2; exit 3' failed (exit 3): nope"], (
        result.stderr
    )


def test_tmpfs_size_makes_tmp_a_sized_ram_disk(coi: CoiRunner, workspace: Path) -> None:
    (coi.home / "config.toml").write_text('[limits.disk]\ntmpfs_size = "256MiB"\n')
    result = coi("run", "-w", str(workspace), "--", "findmnt", "-n", "-o", "FSTYPE,SIZE", "/tmp")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["tmpfs", "256M"]
    (coi.home / "config.toml").write_text("")
    result = coi("run", "-w", str(workspace), "--", "findmnt", "-n", "-o", "FSTYPE", "/tmp")
    assert result.stdout.strip() != "tmpfs"  # unset: /tmp stays on the root disk


def test_network_logging_records_each_sessions_rules(
    coi: CoiRunner, workspace: Path, tmp_path: Path
) -> None:
    """[network.logging]: the rules applied (with the mode) and removed, one line each, in
    the default ~/.coi/logs/network.log (the COI home's) or the configured path; none when
    disabled."""
    default_log = coi.home / "logs" / "network.log"
    assert coi("run", "-w", str(workspace), "--", "true").returncode == 0
    lines = default_log.read_text().splitlines()
    assert any(line.endswith("rules applied mode=restricted") for line in lines), lines
    assert any(line.endswith("rules removed") for line in lines), lines
    elsewhere = tmp_path / "net log.txt"
    (coi.home / "config.toml").write_text(f'[network.logging]\npath = "{elsewhere}"\n')
    assert coi("run", "-w", str(workspace), "--", "true").returncode == 0
    assert "rules applied mode=restricted" in elsewhere.read_text()
    (coi.home / "config.toml").write_text("[network.logging]\nenabled = false\n")
    before = default_log.read_text()
    assert coi("run", "-w", str(workspace), "--", "true").returncode == 0
    assert default_log.read_text() == before
