"""The dashboard over several Incus hosts (local + remotes), with fake backends: slots grouped
by host, an offline host as one row, a slow host never delaying the others, and every action
routed to the host the slot lives on."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any

import pytest

from coi_tui.app import CoiApp
from coi_tui.dashboard.backend import SlotInfo, describe
from coi_tui.dashboard.hosts import HostBoard, MultiHostBackend, slot_key, split_key
from coi_tui.screens.confirm import ConfirmScreen
from coi_tui.screens.new_slot import NewSlotScreen
from coi_tui.widgets import SlotTree
from coi_tui.widgets.slot_tree import display_path
from tests.ui.fakes import OTHER, WORKSPACE, FakeBackend, PushSource, slot
from tests.ui.helpers import screen_text, settle
from tests.ui.helpers import wait_for as _wait_for

SIZE = (140, 40)
LOCAL1 = "coi-aaaaaaaa-1"
BUILD1 = "coi-bbbbbbbb-1"  # on remote "build"
BUILD2 = "coi-bbbbbbbb-2"
GPU1 = "coi-cccccccc-1"  # on remote "gpu"


class GatedBackend(FakeBackend):
    """A host whose listing blocks until `gate` is set (a remote that does not answer)."""

    def __init__(self, slots: list[SlotInfo]) -> None:
        super().__init__(slots)
        self.gate = threading.Event()
        self.listing = threading.Event()

    def list_slots(self) -> list[SlotInfo]:
        self.listing.set()
        self.gate.wait(30)
        return super().list_slots()


def hosts(
    remote_build: FakeBackend | None = None, remote_gpu: FakeBackend | None = None
) -> tuple[MultiHostBackend, FakeBackend, FakeBackend, FakeBackend]:
    local = FakeBackend([slot(LOCAL1)])
    build = remote_build or FakeBackend(
        [slot(BUILD1), slot(BUILD2, OTHER, number=2, state="FROZEN", tool="claude")]
    )
    gpu = remote_gpu or FakeBackend([slot(GPU1)])
    # Given out of order on purpose: local first, then remotes by name.
    multi = MultiHostBackend(
        {"gpu": gpu, "build": build, "": local},
        addresses={"build": "https://10.9.8.7:8443", "gpu": "https://10.9.8.6:8443"},
    )
    return multi, local, build, gpu


async def wait_for(pilot: Any, condition: Callable[[], object], what: str = "") -> None:
    # Generous: other test suites share these two cores.
    await _wait_for(pilot, condition, timeout=20, what=what)


def make_app(backend: MultiHostBackend, **kwargs: object) -> CoiApp:
    kwargs.setdefault("threats", PushSource())
    kwargs.setdefault("keymap", {})
    kwargs.setdefault("remember_theme", False)
    kwargs.setdefault("refresh_interval", 60)
    return CoiApp(backend, workspace=WORKSPACE, **kwargs)  # type: ignore[arg-type]


def tree(app: CoiApp) -> SlotTree:
    return app.main.query_one(SlotTree)


def host_lines(app: CoiApp) -> list[str]:
    return [row for row in tree(app).rows() if not row.startswith(" ")]


# ---------------------------------------------------------------------- pure parts
def test_keys_follow_incus_remote_syntax() -> None:
    assert slot_key("", "coi-x-1") == "coi-x-1"
    assert slot_key("build", "coi-x-1") == "build:coi-x-1"
    assert split_key("build:coi-x-1") == ("build", "coi-x-1")
    assert split_key("coi-x-1") == ("", "coi-x-1")


def test_one_lost_listing_does_not_make_a_host_flap() -> None:
    multi, *_ = hosts()
    board = HostBoard(multi.hosts(), offline_after=2)
    assert board.failed("gpu", "timed out") == "offline"  # never answered: offline at once
    board.loaded("build", [slot("build:" + BUILD1)])
    assert board.failed("build", "timed out") is None  # one miss: slots stay
    assert [s.name for s in board.visible_slots()] == ["build:" + BUILD1]
    assert "not answering" in board.states["build"].detail
    assert board.failed("build", "timed out") == "offline"  # two: offline, slots hidden
    assert board.visible_slots() == [] and board.offline() == ["build", "gpu"]
    assert board.states["build"].detail == "offline: timed out"
    assert board.loaded("build", [slot("build:" + BUILD1)]) == "online"


def test_info_of_a_remote_slot_names_its_host() -> None:
    remote = slot("build:" + BUILD1)
    from dataclasses import replace

    rows = dict(describe(replace(remote, host="build")))
    assert rows["Host"] == "build" and rows["Container"] == BUILD1
    assert rows["Attach"] == f"coi --remote build attach {BUILD1}"
    assert "Host" not in dict(describe(slot(LOCAL1)))


async def test_multi_host_routing_without_ui() -> None:
    multi, local, build, _ = hosts()
    listed = {s.name: s.host for s in multi.list_slots()}
    assert listed == {
        LOCAL1: "",
        f"build:{BUILD1}": "build",
        f"build:{BUILD2}": "build",
        f"gpu:{GPU1}": "gpu",
    }
    multi.snapshot(f"build:{BUILD1}")
    assert build.called("snapshot") == [("snapshot", BUILD1)] and local.called("snapshot") == []
    assert multi.list_snapshots(f"build:{BUILD1}")[0].container == f"build:{BUILD1}"
    assert multi.branch(f"build:{BUILD1}", "snap0") == "build:coi-bbbbbbbb-9"
    assert multi.new_slot(WORKSPACE, "dummy", "", host="build").startswith("build:")


# ---------------------------------------------------------------------- the dashboard
async def test_slots_are_grouped_by_host_local_first() -> None:
    multi, *_ = hosts()
    app = make_app(multi)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: len(tree(app).slots) == 4, what="all hosts listed")
        assert [line.split()[0] for line in host_lines(app)] == ["local", "build", "gpu"]
        rows = tree(app).rows()
        build_at = rows.index(next(r for r in rows if r.startswith("build")))
        assert "https://10.9.8.7:8443" in rows[build_at]
        # host → workspace → slot
        assert rows[build_at + 1] == "  " + display_path(WORKSPACE)
        assert rows[build_at + 2].startswith("    ") and "dummy" in rows[build_at + 2]
        assert tree(app).slots[f"build:{BUILD2}"].host == "build"
        assert "FROZEN" in tree(app).label_text(f"build:{BUILD2}")
        assert tree(app).selected == LOCAL1  # the local slot is first
        text = screen_text(app)
        assert text.index("local") < text.index("build") < text.index("gpu")


async def test_offline_host_is_one_row_and_comes_back() -> None:
    multi, _, _, gpu = hosts()
    gpu.fail["list_slots"] = RuntimeError("remote 'gpu' (https://10.9.8.6:8443) is unreachable")
    app = make_app(multi)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: any("offline" in r for r in tree(app).rows()), what="off")
        await wait_for(pilot, lambda: len(tree(app).slots) == 3, what="the others listed")
        gpu_rows = [r for r in tree(app).rows() if "gpu" in r]
        assert gpu_rows == ["gpu  offline: unreachable"]
        assert f"gpu:{GPU1}" not in tree(app).slots
        assert "1 host offline" in str(tree(app).border_subtitle)
        assert any("gpu is offline" in str(n.title) for n in app._notifications)
        del gpu.fail["list_slots"]
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: f"gpu:{GPU1}" in tree(app).slots, what="gpu back")
        assert not any("offline" in r for r in tree(app).rows())


async def test_a_host_that_misses_one_listing_keeps_its_slots() -> None:
    multi, _, build, _ = hosts()
    app = make_app(multi)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: len(tree(app).slots) == 4, what="listed")
        build.fail["list_slots"] = RuntimeError("timed out")
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: app.main.board.states["build"].failures == 1)
        await settle(app)
        assert f"build:{BUILD1}" in tree(app).slots  # no gone-and-back on one lost poll
        assert any("not answering" in r for r in tree(app).rows())
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: f"build:{BUILD1}" not in tree(app).slots, what="offline")
        assert any(r.startswith("build  offline: timed out") for r in tree(app).rows())


async def test_a_slow_host_does_not_delay_the_others() -> None:
    gated = GatedBackend([slot(BUILD1)])
    multi, local, _, _ = hosts(remote_build=gated)
    app = make_app(multi)
    async with app.run_test(size=SIZE) as pilot:
        try:
            await wait_for(pilot, lambda: {LOCAL1, f"gpu:{GPU1}"} <= set(tree(app).slots))
            assert gated.listing.is_set()  # its listing runs meanwhile, in its own worker
            assert any(r.startswith("build  connecting") for r in tree(app).rows())
            # The UI carries on: the local slot's terminal connects.
            await wait_for(pilot, lambda: app.main.terminal.session_name == LOCAL1, what="term")
            # Polls of a host never overlap: asking again while it hangs queues one listing.
            await pilot.press("ctrl+r")
            await pilot.press("ctrl+r")
            await wait_for(pilot, lambda: len(local.called("list_slots")) >= 3, what="local")
            assert len(gated.called("list_slots")) == 0
            listing_build = [t for t in threading.enumerate() if t.name == "coi-list-build"]
            assert len(listing_build) == 1 and app.main.poller.queued == {"build"}
        finally:
            gated.gate.set()
        await wait_for(pilot, lambda: f"build:{BUILD1}" in tree(app).slots, what="build")
        # The hanging listing, then exactly one queued one.
        await wait_for(pilot, lambda: not app.main.poller.listing, what="listings done")
        assert len(gated.called("list_slots")) == 2


async def test_actions_go_to_the_slots_host() -> None:
    multi, local, build, gpu = hosts()
    app = make_app(multi)
    key = f"build:{BUILD1}"
    suspended: list[bool] = []

    @contextlib.contextmanager
    def fake_suspend():  # type: ignore[no-untyped-def]
        suspended.append(True)
        yield

    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: len(tree(app).slots) == 4, what="listed")
        tree(app).select(key)
        await wait_for(pilot, lambda: app.main.selected == key)
        # The terminal pane attaches through the remote's backend, by container name.
        await wait_for(pilot, lambda: app.main.terminal.session_name == key, what="terminal")
        assert build.called("open_terminal")[0][1] == BUILD1
        assert "hello from " + BUILD1 in app.main.terminal.text()
        assert all(c[1] == LOCAL1 for c in local.called("open_terminal"))

        await pilot.press("p")
        await wait_for(pilot, lambda: "FROZEN" in tree(app).label_text(key), what="frozen")
        await pilot.press("p")
        await wait_for(pilot, lambda: "RUNNING" in tree(app).label_text(key), what="running")
        await pilot.press("s")
        await wait_for(pilot, lambda: build.called("snapshot"), what="snapshot")
        await pilot.press("right_square_bracket", "right_square_bracket")  # Processes tab
        await wait_for(pilot, lambda: build.called("processes"), what="processes")
        app.suspend = fake_suspend  # type: ignore[method-assign]
        await pilot.press("a")
        await wait_for(pilot, lambda: build.called("attach"), what="attach")

        await settle(app)
        assert build.called("pause") == [("pause", BUILD1)]
        assert build.called("resume") == [("resume", BUILD1)]
        assert build.called("snapshot") == [("snapshot", BUILD1)]
        assert build.called("processes") == [("processes", BUILD1)]
        assert build.called("attach") == [("attach", BUILD1)] and suspended == [True]
        for other in (local, gpu):
            for op in ("pause", "resume", "snapshot", "processes", "attach"):
                assert other.called(op) == [], (op, other)

        await pilot.press("k")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        assert BUILD1 in screen_text(app)
        await pilot.press("tab", "enter")
        await wait_for(pilot, lambda: key not in tree(app).slots, what="killed")
        assert build.called("kill") == [("kill", BUILD1)]
        assert local.called("kill") == [] and gpu.called("kill") == []
        assert f"build:{BUILD2}" in tree(app).slots  # the host's other slot stays


async def test_new_slot_starts_on_the_highlighted_host() -> None:
    multi, local, build, gpu = hosts()
    app = make_app(multi)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: len(tree(app).slots) == 4, what="listed")
        tree(app).select(f"gpu:{GPU1}")
        await wait_for(pilot, lambda: app.main.selected == f"gpu:{GPU1}")
        await pilot.press("n")
        await wait_for(pilot, lambda: isinstance(app.screen, NewSlotScreen))
        assert "New slot on gpu" in screen_text(app)
        await pilot.click("#start")
        await wait_for(pilot, lambda: "gpu:coi-newslot0-1" in tree(app).slots, what="new")
        assert gpu.called("new_slot") == [("new_slot", WORKSPACE, "dummy", "")]
        assert local.called("new_slot") == [] and build.called("new_slot") == []


async def test_branch_on_a_remote_slot_lands_on_that_host() -> None:
    multi, local, build, _ = hosts()
    build.snapshot(BUILD1)
    app = make_app(multi)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: len(tree(app).slots) == 4, what="listed")
        tree(app).select(f"build:{BUILD1}")
        await wait_for(pilot, lambda: app.main.snapshots, what="remote snapshots")
        await pilot.press("2", "b")
        await wait_for(pilot, lambda: "build:coi-bbbbbbbb-9" in tree(app).slots, what="branch")
        await pilot.press("2", "r")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await wait_for(pilot, lambda: build.called("restore"), what="restore")
        assert build.called("branch") == [("branch", BUILD1, "snap0")]
        assert build.called("restore") == [("restore", BUILD1, "snap0")]
        assert local.called("branch") == [] and local.called("restore") == []


def test_coi_tui_flags_pick_the_hosts(monkeypatch: pytest.MonkeyPatch) -> None:
    from coi_tui.app import parse_args

    monkeypatch.delenv("COI_REMOTE", raising=False)
    args = parse_args([])
    assert args.remote is None and not args.local_only  # default: local + every remote
    assert parse_args(["--local-only"]).local_only
    with pytest.raises(SystemExit):
        parse_args(["--local-only", "--remote", "x"])
    monkeypatch.setenv("COI_REMOTE", "build")
    assert parse_args([]).remote == "build"  # as for coi, $COI_REMOTE picks one remote


def test_from_config_lists_local_then_configured_remotes(private_coi_home: object) -> None:
    from pathlib import Path

    home = Path(str(private_coi_home))
    (home / "remotes.toml").write_text(
        '[[remotes]]\nname = "zeta"\naddress = "https://127.0.0.1:1"\nfingerprint = "aa"\n'
        '[[remotes]]\nname = "alpha"\naddress = "https://127.0.0.1:2"\nfingerprint = "bb"\n'
    )
    every = MultiHostBackend.from_config()
    assert [h.label for h in every.hosts()] == ["local", "alpha", "zeta"] and every.grouped
    assert every.backends["alpha"].incus.connect_timeout is not None  # type: ignore[attr-defined]
    assert every.backends[""].incus.remote is None  # type: ignore[attr-defined]
    only = MultiHostBackend.from_config(remotes=["zeta"], local=False)
    assert [h.name for h in only.hosts()] == ["zeta"] and only.grouped
    local = MultiHostBackend.from_config(remotes=[])
    assert [h.name for h in local.hosts()] == [""] and not local.grouped
