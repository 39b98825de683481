"""`coi build --profile NAME` on the real daemon: the profile's build.sh runs on its base, the
result is published as the profile's image (not rebuilt when unchanged), and `--profile` on
`coi run` launches it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CoiRunner

pytestmark = pytest.mark.incus


@pytest.fixture
def profile_image(incus: Any, run_prefix: str) -> Iterator[str]:
    alias = f"{run_prefix}profile-img"
    yield alias
    if incus.image_exists(alias):
        incus.delete_image(alias)


def test_build_profile_image_then_run_with_it(
    coi: CoiRunner, workspace: Path, profile_image: str
) -> None:
    directory = coi.home / "profiles" / "tooling"
    directory.mkdir(parents=True)
    (directory / "config.toml").write_text(f'[container]\nimage = "{profile_image}"\n')
    (directory / "build.sh").write_text("#!/bin/sh\nset -e\necho from-build-sh > /etc/marker\n")
    built = coi("build", "--profile", "tooling")
    assert built.returncode == 0, built.stderr
    assert f"Image {profile_image} ready" in built.stdout
    again = coi.ok("build", "--profile", "tooling")
    assert "is up to date" in again.stdout
    result = coi("run", "--profile", "tooling", "-w", str(workspace), "--", "cat", "/etc/marker")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "from-build-sh\n"
    assert "older than its recipe" not in result.stderr

    # [container] stale_base_check: the recipe changed after the build
    (directory / "build.sh").write_text("#!/bin/sh\nset -e\necho v2 > /etc/marker\n")
    warned = coi("run", "--profile", "tooling", "-w", str(workspace), "--", "true")
    assert warned.returncode == 0, warned.stderr  # "warn", the default, still runs
    assert f"Warning: image '{profile_image}' is older than its recipe" in warned.stderr
    assert "coi build --profile tooling" in warned.stderr
    for mode, code in (("error", 1), ("off", 0)):
        (directory / "config.toml").write_text(
            f'[container]\nimage = "{profile_image}"\nstale_base_check = "{mode}"\n'
        )
        checked = coi("run", "--profile", "tooling", "-w", str(workspace), "--", "true")
        assert checked.returncode == code, checked.stderr
        assert ("older than its recipe" in checked.stderr) == (mode == "error"), checked.stderr
    (directory / "build.sh").write_text("#!/bin/sh\nexit 3\n")
    failed = coi("build", "--profile", "tooling")
    assert failed.returncode == 1 and "failed with exit 3" in failed.stderr
