"""`coi schema profile` and `coi validate profile`: the schema comes from the key table, and
validation reports what the loader would refuse."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def coi(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "coi_tui.cli.main", *args],
        cwd=home,
        env={"COI_HOME": str(home), "HOME": str(home), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )


def profile(home: Path, name: str, text: str) -> None:
    directory = home / "profiles" / name
    directory.mkdir(parents=True)
    (directory / "config.toml").write_text(text)


def test_schema_covers_every_key(tmp_path: Path) -> None:
    from coi_tui.config.schema import KEYS

    schema = json.loads(coi(tmp_path, "schema", "profile").stdout)
    for key in KEYS:
        node = schema
        for part in key.path.split("."):
            node = node["properties"][part]
        if key.choices:
            assert node["enum"] == list(key.choices)
    assert schema["properties"]["container"]["additionalProperties"] is False
    assert schema["properties"]["network"]["properties"]["mode"]["default"] == "restricted"


def test_validate_profiles(tmp_path: Path) -> None:
    profile(tmp_path, "good", "[container]\npersistent = true\n")
    profile(tmp_path, "bad", "[container]\npersistnt = true\n")
    profile(tmp_path, "child", 'inherits = "missing"\n')
    result = coi(tmp_path, "validate", "profile")
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert any(line.startswith("✓ good") for line in lines)
    bad = next(line for line in lines if line.startswith("✗ bad"))
    assert "config.toml:2" in bad and "did you mean [container] persistent" in bad
    assert any(line.startswith("✗ child") and "parent profile not found" in line for line in lines)
    only_good = coi(tmp_path, "validate", "profile", "good", "--json")
    assert only_good.returncode == 0
    assert [(r["name"], r["valid"]) for r in json.loads(only_good.stdout)] == [("good", True)]
    unknown = coi(tmp_path, "validate", "profile", "nope", "--json")
    assert unknown.returncode == 1 and "not found" in json.loads(unknown.stdout)[0]["error"]
