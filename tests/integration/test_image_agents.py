"""The real agent CLIs: fetched from their registries into a staging tree and copied over the
stand-ins; the default image carries them (claude, opencode from npm; aider from PyPI) when
those registries answered at build time, and a registry that does not answer leaves a
stand-in, named in one line, instead of a failed build."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path
from typing import Any, ClassVar

import pytest

from coi_tui.core.errors import UsageError
from coi_tui.images.agents import (
    AGENTS,
    DEFAULT_AGENTS,
    AgentStager,
    parse_agents,
    parse_installed,
    registry_answers,
)
from coi_tui.images.build import AGENTS_PROPERTY, ImageBuilder, recipe_hash
from tests.conftest import CoiRunner


def test_parse_agents_and_recipe_hash() -> None:
    assert parse_agents("aider, claude") == ["aider", "claude"]
    assert parse_agents("all") == ["aider", "claude", "codex", "opencode"]
    assert parse_agents("") == parse_agents("none") == []
    with pytest.raises(UsageError, match="unknown agent"):
        parse_agents("claude,cursor")
    with pytest.raises(UsageError, match=r"'pi' cannot go into the image: pi needs Node\.js 20\.6"):
        parse_agents("claude,pi")
    # the full image's default is every agent but the opt-in codex, as in COI
    assert recipe_hash() == recipe_hash(["aider", "claude", "opencode"])
    assert recipe_hash(["claude"]) != recipe_hash() != recipe_hash([])


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_unreachable_registries_leave_stand_ins_in_one_line_each(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dead = f"http://127.0.0.1:{closed_port()}/"
    monkeypatch.setenv("npm_config_registry", dead)
    monkeypatch.setenv("PIP_INDEX_URL", dead)
    assert not any(registry_answers(spec) for spec in AGENTS.values())
    said: list[str] = []
    rootfs = tmp_path / "rootfs"
    stager = AgentStager(sorted(AGENTS), said.append, tmp_path / "stage").start()
    assert stager.finish(rootfs) == {}
    assert not rootfs.exists()  # nothing copied over the stand-ins
    assert sorted(stager.skipped) == sorted(AGENTS)
    for name in AGENTS:
        lines = [line for line in said if f"{name} stays a stand-in" in line]
        assert len(lines) == 1 and "did not answer" in lines[0], said

    class Image:
        properties: ClassVar[dict[str, str]] = {AGENTS_PROPERTY: ""}

    class NoAgentsImage:
        def image_exists(self, alias: str) -> bool:
            return True

        def get_image(self, alias: str) -> Image:
            return Image()

    builder_lines: list[str] = []
    builder = ImageBuilder(NoAgentsImage(), builder_lines.append)  # type: ignore[arg-type]
    builder.agents = sorted(AGENTS)
    builder._note_stand_ins("")
    (note,) = builder_lines
    assert "stand-ins" in note and "'coi build'" in note
    # registries still down: an image without its agents is not rebuilt at every `coi build`
    Image.properties = {"coi.recipe": recipe_hash(), AGENTS_PROPERTY: ""}
    assert builder.up_to_date("coi-default")


@pytest.mark.skipif(not registry_answers(AGENTS["claude"]), reason="npm does not answer")
def test_claude_from_npm_is_a_native_binary_over_the_stand_in(tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    stand_in = rootfs / "usr" / "local" / "bin" / "claude"
    stand_in.parent.mkdir(parents=True)
    stand_in.symlink_to("/usr/local/lib/coi/stand-ins/claude")
    said: list[str] = []
    installed = AgentStager(["claude"], said.append, tmp_path / "stage").start().finish(rootfs)
    assert list(installed) == ["claude"], said
    assert not stand_in.is_symlink()
    version = subprocess.run([str(stand_in), "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and "Claude Code" in version.stdout
    assert installed["claude"] in version.stdout


@pytest.mark.incus
def test_a_session_container_of_the_default_image_runs_the_real_agents(
    coi: CoiRunner, image: str, incus: Any, workspace: Path, tmp_path: Path
) -> None:
    installed = parse_installed(incus.get_image(image).properties.get(AGENTS_PROPERTY, ""))
    plain = tmp_path / "no-stand-ins.toml"  # the user's PATH, not the tests' stand-ins
    plain.write_text("")
    script = 'for a in claude opencode aider codex; do echo "== $a"; $a --version 2>&1; done'
    result = coi.ok(
        "run", "-w", str(workspace), "--", "sh", "-c", script, env={"COI_CONFIG": str(plain)}
    )
    said = {}
    for block in result.stdout.split("== ")[1:]:
        name, _, output = block.partition("\n")
        said[name] = output
    for name in DEFAULT_AGENTS:  # codex is opt-in (a stand-in by default)
        output = said[name]
        if name in installed:
            assert installed[name] in output and "coi fake agent" not in output, output
        else:
            # A stand-in is only acceptable while the registry does not answer: otherwise
            # `coi build` (make setup) would have fetched the real one.
            assert not registry_answers(AGENTS[name]), f"{name}: stand-in, registry answers"
            assert "coi fake agent" in output
    if registry_answers(AGENTS["claude"]):
        assert "(Claude Code)" in said["claude"]
        assert "coi fake agent" not in said["opencode"]
    assert "coi fake agent" in said["codex"]
