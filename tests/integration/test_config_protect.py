"""Protected paths (files and directories, git placeholders) and secret masking on the real
daemon: what the agent can read and write inside."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CoiRunner

pytestmark = pytest.mark.incus


def test_protected_files_placeholders_and_secret_masks(coi: CoiRunner, workspace: Path) -> None:
    (workspace / ".git").mkdir()
    (workspace / ".git" / "config").write_text("[core]\n")
    (workspace / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (workspace / ".claude").mkdir()
    (workspace / ".claude" / "settings.json").write_text("{}\n")
    (workspace / ".env").write_text("TOKEN=secret\n")
    (workspace / "secrets").mkdir()
    (workspace / "secrets" / "key.pem").write_text("PRIVATE\n")
    (workspace / ".coi").mkdir()
    (workspace / ".coi" / "config.toml").write_text(
        '[security]\nsecret_paths = [".env", "secrets/**"]\n'
    )
    script = (
        "echo '{\"hooks\":1}' > .claude/settings.json; echo settings=$?;"
        "echo evil > .git/hooks/pre-commit; echo hooks=$?;"
        "echo x >> .git/info/attributes; echo attributes=$?;"
        "echo x > .coi/config.toml; echo coi=$?;"
        "echo env=$(cat .env | wc -c); echo secrets=$(ls -A secrets | wc -l);"
        "echo y > .env; echo envwrite=$?;"
        "echo ok > notes.txt; echo source=$?"
    )
    result = coi("run", "-w", str(workspace), "--", "sh", "-c", script, cwd=workspace)
    assert result.returncode == 0, result.stderr
    codes = dict(line.split("=", 1) for line in result.stdout.split())
    assert codes["settings"] != "0" and codes["hooks"] != "0"
    assert codes["attributes"] != "0" and codes["coi"] != "0"
    assert codes["env"] == "0" and codes["secrets"] == "0"  # masked: empty inside
    assert codes["envwrite"] != "0" and codes["source"] == "0"
    assert (workspace / ".claude" / "settings.json").read_text() == "{}\n"
    assert (workspace / ".env").read_text() == "TOKEN=secret\n"
    assert (workspace / ".git" / "hooks").is_dir()  # placeholders created on the host
    assert not (workspace / ".git" / "hooks" / "pre-commit").exists()
    assert (workspace / ".git" / "info" / "attributes").read_text() == ""


@pytest.fixture
def two_images(incus: Any, run_prefix: str) -> Iterator[tuple[str, str]]:
    aliases = (f"{run_prefix}all-a", f"{run_prefix}all-b")
    yield aliases
    for alias in aliases:
        if incus.image_exists(alias):
            incus.delete_image(alias)


def test_build_all_builds_every_profile_with_a_recipe_and_compression(
    coi: CoiRunner, two_images: tuple[str, str], incus: Any
) -> None:
    first, second = two_images
    profiles = coi.home / "profiles"
    (profiles / "a").mkdir(parents=True)
    (profiles / "a" / "config.toml").write_text(
        f'[container]\nimage = "{first}"\n[container.build]\ncommands = ["touch /etc/a"]\n'
        'compression = "gzip"\n'
    )
    (profiles / "b").mkdir()
    (profiles / "b" / "config.toml").write_text(f'[container]\nimage = "{second}"\n')
    (profiles / "b" / "build.sh").write_text("#!/bin/sh\ntouch /etc/b\n")
    (profiles / "plain").mkdir()
    (profiles / "plain" / "config.toml").write_text("[container]\npersistent = true\n")
    built = coi("build", "--all")
    assert built.returncode == 0, built.stderr
    assert f"Image {first} ready" in built.stdout and f"Image {second} ready" in built.stdout
    assert "plain" not in built.stdout
    assert incus.image_exists(first) and incus.image_exists(second)
    again = coi.ok("build", "--all")
    assert again.stdout.count("is up to date") == 2
