from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def private_coi_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Dashboard tests never read or write the real ~/.coi (theme state, keymap, audit)."""
    home = tmp_path / "coi-home"
    home.mkdir()
    monkeypatch.setenv("COI_HOME", str(home))
    monkeypatch.delenv("COI_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    return home
