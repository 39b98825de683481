"""Saved sessions: atomic metadata, atomic config-dir swap, latest-for-workspace lookup."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from coi_tui.core.errors import CoiError
from coi_tui.sessions.naming import container_name
from coi_tui.sessions.store import SessionMeta, SessionStore
from coi_tui.tools import get_tool


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SessionStore:
    monkeypatch.setenv("COI_HOME", str(tmp_path))
    return SessionStore(get_tool("dummy"))


def fake_pull(content: str):  # type: ignore[no-untyped-def]
    def pull(remote: str, local: Path, **_: object) -> int:
        (local / "projects").mkdir(parents=True)
        (local / "projects" / "s.jsonl").write_text(content)
        return 1

    return pull


def test_save_swaps_the_copy_and_stamps_metadata(store: SessionStore) -> None:
    meta = SessionMeta("sid-1", "coi-aaaaaaaa-1", False, "/ws")
    assert store.save_from(fake_pull("first"), "c", meta)
    assert store.save_from(fake_pull("second"), "c", meta)
    copy = store.config_copy("sid-1")
    assert (copy / "projects" / "s.jsonl").read_text() == "second"
    assert sorted(p.name for p in store.path("sid-1").iterdir()) == [".claude", "metadata.json"]
    saved = json.loads((store.path("sid-1") / "metadata.json").read_text())
    assert saved["saved_at"].endswith("Z")


def test_failed_pull_keeps_the_previous_copy(store: SessionStore) -> None:
    meta = SessionMeta("sid-2", "coi-aaaaaaaa-1", False, "/ws")
    store.save_from(fake_pull("good"), "c", meta)

    def broken(remote: str, local: Path, **_: object) -> int:
        local.mkdir(parents=True)
        raise CoiError("container vanished")

    assert not store.save_from(broken, "c", meta)
    assert (store.config_copy("sid-2") / "projects" / "s.jsonl").read_text() == "good"


def test_latest_for_workspace_and_resume_errors(store: SessionStore) -> None:
    for sid, stamp in (("old", "2026-01-01T00:00:00Z"), ("new", "2026-02-01T00:00:00Z")):
        meta = SessionMeta(sid, container_name("coi-", "/ws", 1), False, "/ws")
        store.save_from(fake_pull(sid), "c", meta)
        meta.saved_at = stamp
        store.write_meta(meta)
    assert store.resolve_resume("auto", "/ws", "coi-").session_id == "new"
    assert store.resolve_resume("old", "/ws", "coi-").session_id == "old"
    with pytest.raises(CoiError, match="no previous session to resume"):
        store.resolve_resume("auto", "/elsewhere", "coi-")
    with pytest.raises(CoiError, match="session 'nope' not found"):
        store.resolve_resume("nope", "/ws", "coi-")


def test_a_saved_session_keeps_no_login_file(store: SessionStore) -> None:
    """claude's .credentials.json (a `[[credentials]] bundle` file) is pushed fresh at each
    start, never kept in ~/.coi/sessions for a resume to bring back."""

    def pull(remote: str, local: Path, **_: object) -> int:
        local.mkdir(parents=True)
        (local / ".credentials.json").write_text('{"token": "t"}')
        (local / "settings.json").write_text("{}")
        return 2

    meta = SessionMeta("sid-3", "coi-aaaaaaaa-1", False, "/ws")
    assert store.save_from(pull, "c", meta)
    assert sorted(p.name for p in store.config_copy("sid-3").iterdir()) == ["settings.json"]
