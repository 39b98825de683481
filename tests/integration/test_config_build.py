"""`coi build --profile NAME` / `--all` on the real daemon: the profile's recipe runs on its
base, the result is published as the profile's image (not rebuilt when unchanged), and
`--profile` on `coi run` launches it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from coi_tui.config.settings import session_settings
from coi_tui.sessions.manager import SessionManager
from tests.conftest import CoiRunner

pytestmark = pytest.mark.incus


@pytest.fixture
def profile_images(incus: Any, run_prefix: str) -> Iterator[tuple[str, str]]:
    aliases = (f"{run_prefix}all-a", f"{run_prefix}all-b")
    yield aliases
    for alias in aliases:
        if incus.image_exists(alias):
            incus.delete_image(alias)


def test_build_all_then_run_a_profile_image(
    coi: CoiRunner, workspace: Path, profile_images: tuple[str, str], incus: Any
) -> None:
    """`coi build --all` builds every profile with a recipe ([container.build] commands, or a
    build.sh), skips one without, and is up to date the second time; `coi run --profile`
    launches the result; [container] stale_base_check warns, errors or stays quiet once the
    recipe changed; a failing recipe fails the build. (One build of two images serves all:
    each publish of the workbench image costs about 16 s.)"""
    first, second = profile_images
    profiles = coi.home / "profiles"
    (profiles / "a").mkdir(parents=True)
    (profiles / "a" / "config.toml").write_text(
        f'[container]\nimage = "{first}"\n[container.build]\ncommands = ["touch /etc/a"]\n'
        'compression = "none"\n'
    )
    tooling = profiles / "tooling"
    tooling.mkdir()
    (tooling / "config.toml").write_text(f'[container]\nimage = "{second}"\n')
    (tooling / "build.sh").write_text("#!/bin/sh\nset -e\necho from-build-sh > /etc/marker\n")
    (profiles / "plain").mkdir()
    (profiles / "plain" / "config.toml").write_text("[container]\npersistent = true\n")
    built = coi("build", "--all", timeout=900)  # two images from the full workbench base
    assert built.returncode == 0, built.stderr
    assert f"Image {first} ready" in built.stdout and f"Image {second} ready" in built.stdout
    assert "plain" not in built.stdout
    assert incus.image_exists(first) and incus.image_exists(second)
    again = coi.ok("build", "--all", timeout=300)
    assert again.stdout.count("is up to date") == 2
    # [container] stale_base_check: the recipe changes after the build. Each run from the
    # new image unpacks it (seconds), so one run shows both the image and the warning.
    (tooling / "build.sh").write_text("#!/bin/sh\nset -e\necho v2 > /etc/marker\n")
    result = coi("run", "--profile", "tooling", "-w", str(workspace), "--", "cat", "/etc/marker")
    assert result.returncode == 0, result.stderr  # "warn", the default, still runs
    assert result.stdout == "from-build-sh\n"
    assert f"Warning: image '{second}' is older than its recipe" in result.stderr
    assert "coi build --profile tooling" in result.stderr
    for mode in ("error", "off"):
        (tooling / "config.toml").write_text(
            f'[container]\nimage = "{second}"\nstale_base_check = "{mode}"\n'
        )
        if mode == "error":  # refused before any container is made
            checked = coi("run", "--profile", "tooling", "-w", str(workspace), "--", "true")
            assert checked.returncode == 1 and "older than its recipe" in checked.stderr
            continue
        said: list[str] = []
        env = {"COI_HOME": str(coi.home)}
        settings = session_settings("tooling", cwd=workspace, env=env, say=said.append)
        SessionManager(incus, settings, said.append).check_stale_base(second)
        assert not any("older than its recipe" in line for line in said), said
    (tooling / "build.sh").write_text("#!/bin/sh\nexit 3\n")
    failed = coi("build", "--profile", "tooling")
    assert failed.returncode == 1 and "failed with exit 3" in failed.stderr
