"""Attack: swap a protected path (or a mount source) for a link between coi's check and
Incus's mount (issue 16, class 12). Another slot's agent turns the workspace's `.vscode` into a
link to a host secret directory at the worst moment: after coi chose what to mount, before the
new container starts. The container must see the original protected content, never the host's
secret; a mount source an agent could swap is refused before anything is created."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from coi_tui.config import Settings
from coi_tui.incus import IncusError
from coi_tui.sessions.hooks import LaunchContext
from coi_tui.sessions.protect_hook import HOOK, copies_dir
from tests.conftest import CoiRunner

pytestmark = pytest.mark.incus


def test_a_link_swapped_in_after_the_check_mounts_nothing_of_the_host(
    incus: Any, image: str, run_prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COI_HOME", str(tmp_path / "coi-home"))
    secret = tmp_path / "host-secrets"
    secret.mkdir()
    (secret / "id_ed25519").write_text("PRIVATE KEY\n")
    workspace = tmp_path / "ws"
    (workspace / ".vscode").mkdir(parents=True)
    (workspace / ".vscode" / "settings.json").write_text("{}\n")
    name = f"{run_prefix}00000000-8"
    ctx = LaunchContext(
        manager=SimpleNamespace(settings=Settings()),  # type: ignore[arg-type]
        request=SimpleNamespace(workspace=str(workspace)),  # type: ignore[arg-type]
        session=SimpleNamespace(container=name),  # type: ignore[arg-type]
        devices={"workspace": {"type": "disk", "source": str(workspace), "path": "/workspace"}},
    )
    HOOK.prepare_instance(ctx)
    sources = [Path(d["source"]) for n, d in ctx.devices.items() if n.startswith("protect-")]
    assert sources, ctx.devices
    # Incus opens what it is given later: nothing it is given may lie where an agent writes
    for source in sources:
        assert source.is_relative_to(copies_dir(name)), source
    # the race, won by the attacker: the checked directory becomes a link to the host's keys
    shutil.rmtree(workspace / ".vscode")
    (workspace / ".vscode").symlink_to(secret)
    incus.create_instance(name, image, devices=ctx.devices)
    try:
        try:
            incus.start(name)
        except IncusError:
            return  # LXC refuses to mount over a link: nothing of the host is mounted either
        seen = incus.exec_capture(
            name, ["sh", "-c", "ls -A /workspace/.vscode; cat /workspace/.vscode/*"]
        )
        assert "PRIVATE KEY" not in seen.stdout and "id_ed25519" not in seen.stdout
        assert "settings.json" in seen.stdout, seen.stdout + seen.stderr
    finally:
        incus.delete_instance(name, force=True)
        HOOK.container_ended(SimpleNamespace(say=print), name, True)  # type: ignore[arg-type]
    assert not copies_dir(name).exists()
    assert (secret / "id_ed25519").read_text() == "PRIVATE KEY\n"


def test_a_mount_source_the_agent_can_swap_is_refused(
    coi: CoiRunner, workspace: Path, tmp_path: Path
) -> None:
    """[[mounts]] from inside the workspace (or another writable mount): one line, no session."""
    (workspace / "data").mkdir()
    shared = tmp_path / "shared"
    (shared / "cache").mkdir(parents=True)
    for source in (workspace / "data", shared / "cache"):
        config = tmp_path / "user.toml"
        config.write_text(
            f'[[mounts]]\nhost = "{shared}"\ncontainer = "/mnt/shared"\n'
            f'[[mounts]]\nhost = "{source}"\ncontainer = "/mnt/data"\n'
        )
        result = coi("run", "-w", str(workspace), "--", "true", env={"COI_CONFIG": str(config)})
        assert result.returncode == 1, result.stdout + result.stderr
        assert "where an agent could swap it" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
