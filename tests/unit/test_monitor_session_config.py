"""A session's own [monitoring] thresholds and actions (its profile's) reach the daemon
through the instance it is created with (monitor/config.SESSION_KEY)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from coi_tui.config.settings import load_settings
from coi_tui.monitor.config import SESSION_KEY, MonitorConfig, for_session, session_config_text
from coi_tui.sessions.monitor_hook import MonitorHook


def test_a_profiles_thresholds_are_written_on_the_instance(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    profile = home / "profiles" / "strict"
    profile.mkdir(parents=True)
    (profile / "config.toml").write_text(
        "[monitoring]\nprocess_count_threshold = 25\nspawn_rate_per_sec = 40\n"
        '[monitoring.actions]\nhigh = "kill"\n'
    )
    monkeypatch.setenv("COI_HOME", str(home))
    settings = load_settings(tmp_path, profile="strict", apply_profile=True)
    ctx = SimpleNamespace(config={}, manager=SimpleNamespace(settings=settings, say=print))
    MonitorHook().prepare_instance(ctx)  # type: ignore[arg-type]
    applied = for_session(MonitorConfig(), ctx.config[SESSION_KEY])
    assert applied.process_count_threshold == 25 and applied.spawn_rate_per_sec == 40
    assert applied.actions["high"] == "kill" and applied.actions["critical"] == "kill"


def test_session_values_are_checked_and_leave_the_daemons_own_knobs_alone() -> None:
    daemon = MonitorConfig(container_prefix="coi-", scan_interval_sec=1.0)
    assert for_session(daemon, "") is daemon
    mine = for_session(daemon, session_config_text(MonitorConfig(dns_rate_per_min=7)))
    assert mine.dns_rate_per_min == 7 and mine.container_prefix == "coi-"
    assert daemon.dns_rate_per_min == 100  # the daemon's config is not changed
    for bad in ("{", "[]", '{"scan_interval_sec": 9}', '{"actions": {"high": "explode"}}',
                '{"process_count_threshold": "many"}'):  # fmt: skip
        with pytest.raises(ValueError):
            for_session(daemon, bad)


def test_credentials_the_session_was_given_are_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A credential pushed on purpose ([[credentials]]) is read by its tools all day (pip
    reads ~/.netrc on every request): the file watcher leaves it alone."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text(
        '[[credentials]]\nhost = "/etc/hostname"\ncontainer = "/home/code/.netrc"\n'
    )
    monkeypatch.setenv("COI_HOME", str(home))
    settings = load_settings(tmp_path)
    ctx = SimpleNamespace(config={}, manager=SimpleNamespace(settings=settings, say=print))
    MonitorHook().prepare_instance(ctx)  # type: ignore[arg-type]
    applied = for_session(MonitorConfig(), ctx.config[SESSION_KEY])
    assert applied.own_credentials == ["/home/code/.netrc"]
