"""The one way from (profile, the starter's choices) to a session's settings, and the
dashboard's profile picker, which must offer exactly the profiles that way accepts."""

from __future__ import annotations

from pathlib import Path

import pytest

from coi_tui.config.settings import SessionOverrides, session_settings
from coi_tui.core.errors import CoiError
from coi_tui.dashboard.backend import profile_names


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path, dict[str, str]]:
    home, project = tmp_path / "home", tmp_path / "project"
    (project / ".coi").mkdir(parents=True)
    home.mkdir()
    return home, project, {"COI_HOME": str(home)}


def test_the_profile_picker_lists_every_profile_a_session_can_start_with(
    dirs: tuple[Path, Path, dict[str, str]],
) -> None:
    home, project, env = dirs
    write(home / "profiles" / "team" / "config.toml", '[limits.cpu]\ncount = "2"\n')
    write(project / ".coi" / "profiles" / "dev" / "config.toml", 'inherits = "team"\n')
    # A repository's "hardened" is ignored (it may not replace the built-in): listed once.
    write(project / ".coi" / "profiles" / "hardened" / "config.toml", "")
    # The picker used to offer [profiles.*] tables of config.toml, which the loader rejects.
    write(home / "config.toml", '[profiles.fast]\nimage = "x"\n')
    assert profile_names(project, env) == ["default", "hardened", "dev", "team"]
    with pytest.raises(CoiError, match="profiles"):
        session_settings("", cwd=project, env=env)
    (home / "config.toml").unlink()
    for name in profile_names(project, env):  # each one offered starts a session
        assert session_settings(name, cwd=project, env=env).profile == name


def test_session_settings_apply_the_profile_below_env_and_overrides(
    dirs: tuple[Path, Path, dict[str, str]],
) -> None:
    home, project, env = dirs
    write(
        home / "profiles" / "small" / "config.toml",
        '[limits.cpu]\ncount = "1"\n[limits.memory]\nlimit = "512MiB"\n'
        '[environment]\nPROFILE_MARK = "small"\n[tool]\nname = "aider"\n',
    )
    settings = session_settings("small", cwd=project, env=env)
    assert (settings.limit_cpu_count, settings.limit_memory) == ("1", "512MiB")
    assert settings.environment["PROFILE_MARK"] == "small"
    assert settings.tool == "aider" and settings.profile == "small"
    chosen = session_settings(
        "small",
        SessionOverrides(tool="dummy", persistent=True),
        cwd=project,
        env={**env, "COI_LIMIT_MEMORY": "1GiB"},
    )
    assert (chosen.tool, chosen.persistent, chosen.limit_memory) == ("dummy", True, "1GiB")
    assert chosen.source("tool.name") == "--tool"
    # No profile named: the [defaults] profile, as `coi shell` without --profile.
    write(home / "config.toml", '[defaults]\nprofile = "small"\n')
    assert session_settings("", cwd=project, env=env).limit_memory == "512MiB"
