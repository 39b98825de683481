"""Protected paths (files and directories, git placeholders) and secret masking on the real
daemon: what the agent can read and write inside."""

from __future__ import annotations

from pathlib import Path

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
        'echo env=$(cat .env | wc -c); echo secrets=$(ls -A secrets | wc -l);'
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
