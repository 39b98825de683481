"""Pilot tests for the first coi-tui dashboard, driven by a fake instance source."""

from __future__ import annotations

import asyncio
import threading

import pytest
from textual.message import Message
from textual.widgets import DataTable

from coi_tui.app import CoiApp, InstancesFailed, InstancesLoaded, parse_args
from coi_tui.incus import DaemonUnavailable, Instance
from coi_tui.widgets import SessionTable, session_rows
from coi_tui.widgets.session_table import EMPTY_MESSAGE, workspace_hash

WORKSPACE = "/home/dev/project"
OTHER = "/home/dev/other"
SIZE = (140, 30)


def instance(
    name: str,
    status: str = "Running",
    workspace: str = OTHER,
    persistent: bool = False,
    tool: str = "claude",
    ipv4: str = "10.0.0.5",
) -> Instance:
    config = {"user.coi.workspace": workspace, "user.coi.tool": tool}
    if persistent:
        config["user.coi.persistent"] = "true"
    state = {
        "network": {
            "lo": {"addresses": [{"family": "inet", "address": "127.0.0.1", "scope": "local"}]},
            "eth0": {"addresses": [{"family": "inet", "address": ipv4, "scope": "global"}]},
        }
    }
    return Instance(
        name=name,
        status=status,
        created_at="2026-05-01T10:20:30.123456789Z",
        config=config,
        state=state,
    )


class FakeSource:
    """Scripted stand-in for Incus: set `instances` or `error` between refreshes."""

    def __init__(self, instances: list[Instance] | None = None) -> None:
        self.instances = list(instances or [])
        self.error: Exception | None = None
        self.calls: list[tuple[str, bool]] = []
        self._lock = threading.Lock()  # called from worker threads

    def list_instances(self, prefix: str, with_state: bool) -> list[Instance]:
        with self._lock:
            self.calls.append((prefix, with_state))
            if self.error is not None:
                raise self.error
            return [i for i in self.instances if i.name.startswith(prefix)]


def make_app(source: FakeSource, refresh_interval: float = 60) -> CoiApp:
    # A long interval keeps the automatic refresh out of tests that do not test it.
    return CoiApp(source, workspace=WORKSPACE, prefix="coi-", refresh_interval=refresh_interval)


def row_names(app: CoiApp) -> list[str]:
    table = app.query_one(SessionTable).query_one(DataTable)
    return [str(table.get_row_at(i)[0]) for i in range(table.row_count)]


@pytest.fixture
def source() -> FakeSource:
    mine = f"coi-{workspace_hash(WORKSPACE)}-1"
    return FakeSource(
        [
            instance("coi-aaaaaaaa-1", workspace=OTHER, persistent=True),
            instance(mine, workspace=WORKSPACE, status="Stopped", tool="opencode", ipv4=""),
            instance("other-container"),  # not ours: filtered by the prefix
        ]
    )


async def test_rows_appear_with_this_workspace_first(source: FakeSource) -> None:
    app = make_app(source)
    async with app.run_test(size=SIZE) as pilot:
        await app.workers.wait_for_complete()
        await pilot.pause()
        mine = f"coi-{workspace_hash(WORKSPACE)}-1"
        assert row_names(app) == [mine, "coi-aaaaaaaa-1"]
        assert source.calls[0] == ("coi-", True)
        table = app.query_one(SessionTable).query_one(DataTable)
        first = [str(cell) for cell in table.get_row_at(0)]
        assert first[1:7] == ["1", "Stopped", "ephemeral", WORKSPACE, "opencode", "-"]
        second = [str(cell) for cell in table.get_row_at(1)]
        assert second[3] == "persistent"
        assert second[6] == "10.0.0.5"
        assert app.query_one(SessionTable).message == ""
        assert app.sub_title == WORKSPACE
        assert app.theme == "coi"


async def test_empty_state(source: FakeSource) -> None:
    source.instances = []
    app = make_app(source)
    async with app.run_test(size=SIZE) as pilot:
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert app.query_one(SessionTable).message == EMPTY_MESSAGE
        assert row_names(app) == []


async def test_ctrl_r_picks_up_a_new_instance(source: FakeSource) -> None:
    app = make_app(source)
    async with app.run_test(size=SIZE) as pilot:
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert "coi-bbbbbbbb-2" not in row_names(app)
        source.instances.append(instance("coi-bbbbbbbb-2"))
        await pilot.press("ctrl+r")
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert "coi-bbbbbbbb-2" in row_names(app)


async def test_refresh_keeps_the_cursor_on_the_same_container(source: FakeSource) -> None:
    app = make_app(source)
    async with app.run_test(size=SIZE) as pilot:
        await app.workers.wait_for_complete()
        await pilot.pause()
        await pilot.press("down")
        table = app.query_one(SessionTable).query_one(DataTable)
        assert str(table.get_row_at(table.cursor_row)[0]) == "coi-aaaaaaaa-1"
        # A new container sorted before it must not move the cursor off it.
        source.instances.append(instance("coi-00000000-1"))
        await pilot.press("ctrl+r")
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert str(table.get_row_at(table.cursor_row)[0]) == "coi-aaaaaaaa-1"


async def test_automatic_refresh_picks_up_a_new_instance(source: FakeSource) -> None:
    seen = asyncio.Event()

    def hook(message: Message) -> None:
        if isinstance(message, InstancesLoaded) and any(
            i.name == "coi-bbbbbbbb-2" for i in message.instances
        ):
            seen.set()

    app = make_app(source, refresh_interval=0.05)
    async with app.run_test(size=SIZE, message_hook=hook) as pilot:
        await app.workers.wait_for_complete()
        await pilot.pause()
        source.instances.append(instance("coi-bbbbbbbb-2"))
        # No key press: only the poll timer can deliver it.
        await asyncio.wait_for(seen.wait(), timeout=10)
        await pilot.pause()
        assert "coi-bbbbbbbb-2" in row_names(app)


async def test_default_refresh_interval_is_two_seconds() -> None:
    assert CoiApp(FakeSource()).refresh_interval == 2.0


async def test_daemon_down_shows_message_and_keeps_running(source: FakeSource) -> None:
    source.error = DaemonUnavailable("/x")
    messages: list[Message] = []
    app = make_app(source)
    async with app.run_test(size=SIZE, message_hook=messages.append) as pilot:
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert app.is_running
        assert "Incus is not running" in app.query_one(SessionTable).message
        assert "/x" in app.query_one(SessionTable).message
        assert any(isinstance(m, InstancesFailed) for m in messages)
        assert [n.title for n in app._notifications] == ["Cannot list containers"]

        # Repeated failures do not pile up notifications.
        await pilot.press("ctrl+r")
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert len(app._notifications) == 1

        # Once Incus answers again the rows come back and the error goes away.
        source.error = None
        await pilot.press("ctrl+r")
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert len(row_names(app)) == 2
        assert app.query_one(SessionTable).message == ""


async def test_error_after_success_keeps_the_last_rows(source: FakeSource) -> None:
    app = make_app(source)
    async with app.run_test(size=SIZE) as pilot:
        await app.workers.wait_for_complete()
        await pilot.pause()
        source.error = DaemonUnavailable("/x")
        await pilot.press("ctrl+r")
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert len(row_names(app)) == 2
        assert "showing the last known list" in app.query_one(SessionTable).message


async def test_unexpected_exception_does_not_crash(source: FakeSource) -> None:
    source.error = RuntimeError("boom")
    app = make_app(source)
    async with app.run_test(size=SIZE) as pilot:
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert app.is_running
        assert "RuntimeError: boom" in app.query_one(SessionTable).message


@pytest.mark.parametrize("key", ["q", "ctrl+q"])
async def test_quit_keys(source: FakeSource, key: str) -> None:
    app = make_app(source)
    async with app.run_test(size=SIZE) as pilot:
        await app.workers.wait_for_complete()
        await pilot.pause()
        await pilot.press(key)
        await pilot.pause()
        assert not app.is_running
    assert app.return_code == 0


async def test_footer_shows_bindings(source: FakeSource) -> None:
    app = make_app(source)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        shown = {b.description for (_, b, enabled, _) in app.screen.active_bindings.values()}
        assert {"Quit", "Refresh"} <= shown


async def test_theme_change_keeps_rows(source: FakeSource) -> None:
    app = make_app(source)
    async with app.run_test(size=SIZE) as pilot:
        await app.workers.wait_for_complete()
        await pilot.pause()
        app.theme = "textual-light"
        await pilot.pause()
        assert len(row_names(app)) == 2


def test_prefix_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COI_CONTAINER_PREFIX", "dev-")
    assert CoiApp(FakeSource()).prefix == "dev-"
    monkeypatch.delenv("COI_CONTAINER_PREFIX")
    assert CoiApp(FakeSource()).prefix == "coi-"


def test_parse_args(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(str(tmp_path))
    assert parse_args([]).workspace == str(tmp_path)
    assert parse_args(["-w", str(tmp_path)]).workspace == str(tmp_path)
    with pytest.raises(SystemExit):
        parse_args(["--workspace", "/no/such/dir"])


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_args(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.startswith("coi-tui ")


def test_session_rows_match_workspace_by_name_hash() -> None:
    # Containers without a workspace key still count as ours when the name hash matches.
    bare = Instance(name=f"coi-{workspace_hash(WORKSPACE)}-3", status="Frozen")
    rows = session_rows([instance("coi-aaaaaaaa-1"), bare], "coi-", WORKSPACE)
    assert [(r.name, r.slot, r.current, r.workspace) for r in rows] == [
        (bare.name, "3", True, "-"),
        ("coi-aaaaaaaa-1", "1", False, OTHER),
    ]
