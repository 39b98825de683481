"""A slot started from the dashboard with a profile is that profile's session: the session
service applies the profile's limits and environment, as `coi shell --profile` does (the
dashboard used to record the profile's name only), and so does a branch of it."""

from __future__ import annotations

from pathlib import Path

import pytest

from coi_tui.dashboard.backend import IncusBackend
from coi_tui.sessions.naming import tmux_session
from tests.conftest import CoiRunner

pytestmark = pytest.mark.incus

PROFILE = """\
[limits.cpu]
count = "1"
[limits.memory]
limit = "512MiB"
[environment]
PROFILE_MARK = "from-the-profile"
"""


def test_a_slot_started_from_the_dashboard_gets_its_profiles_limits_and_environment(
    coi: CoiRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in ("COI_CONTAINER_PREFIX", "COI_HOME", "COI_CONFIG", "PYTHONPATH"):
        monkeypatch.setenv(key, coi.env[key])
    monkeypatch.delenv("COI_USE_DUMMY", raising=False)
    monkeypatch.chdir(tmp_path)  # no project config but this test's
    workspace = tmp_path / "ws"
    workspace.mkdir()
    profile = coi.home / "profiles" / "small" / "config.toml"
    profile.parent.mkdir(parents=True)
    profile.write_text(PROFILE)

    backend = IncusBackend()
    assert "small" in backend.profiles()
    name = backend.new_slot(str(workspace), "dummy", "small")

    assert_profile_applied(backend, name)

    # A branch is started like any session, with its source's profile (it used to skip
    # prepare_instance and start its agent with the dashboard's own settings).
    snapshot = backend.snapshot(name)
    branched = backend.branch(name, snapshot)
    assert branched != name
    assert_profile_applied(backend, branched)
    config = backend.incus.get_instance(branched).config
    assert config.get("user.coi.branched_from") == f"{name}/{snapshot}"


def assert_profile_applied(backend: IncusBackend, name: str) -> None:
    config = backend.incus.get_instance(name).config
    assert config.get("user.coi.profile") == "small"
    assert (config.get("limits.cpu"), config.get("limits.memory")) == ("1", "512MiB")
    # The agent's environment is its tmux session's (set when the agent started).
    shown = backend.manager.exec_as_code(
        name, ["tmux", "show-environment", "-t", tmux_session(name), "PROFILE_MARK"]
    )
    assert shown.stdout.strip() == "PROFILE_MARK=from-the-profile", shown.stderr
