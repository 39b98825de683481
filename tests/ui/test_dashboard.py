"""Pilot tests of the dashboard against a fake backend: every key, layout, themes,
read-only, keymap, workers and failures."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
from textual.command import CommandPalette
from textual.widgets import DataTable, Input

from coi_tui.app import CoiApp, parse_args
from coi_tui.dashboard.attach import SessionState
from coi_tui.dashboard.prefs import load_keymap
from coi_tui.dashboard.threats import AuditTail, PushSource
from coi_tui.screens.confirm import ConfirmScreen
from coi_tui.screens.new_slot import NewSlotScreen
from coi_tui.widgets import SlotTree, TerminalView, ThreatFeed
from tests.ui.fakes import OTHER, WORKSPACE, FakeBackend, slot, threat
from tests.ui.helpers import screen_styles, screen_text, settle, wait_for

SIZE = (150, 40)
A1, A2, B1 = "coi-aaaaaaaa-1", "coi-aaaaaaaa-2", "coi-bbbbbbbb-1"


def make_backend() -> FakeBackend:
    return FakeBackend(
        [
            slot(A1),
            slot(A2, number=2, state="FROZEN", tool="claude"),
            slot(B1, OTHER, state="STOPPED", persistent=True),
        ]
    )


def make_app(backend: FakeBackend, **kwargs: object) -> CoiApp:
    kwargs.setdefault("threats", PushSource())
    kwargs.setdefault("keymap", {})
    kwargs.setdefault("remember_theme", False)
    kwargs.setdefault("refresh_interval", 60)  # tests that poll say so
    return CoiApp(backend, workspace=WORKSPACE, **kwargs)  # type: ignore[arg-type]


async def started(app: CoiApp, pilot: object) -> None:
    """Slots listed and the first slot's terminal connected."""
    await wait_for(pilot, lambda: app.main.slots and app.main.terminal.connected, what="start")  # type: ignore[arg-type]


def tree(app: CoiApp) -> SlotTree:
    return app.main.query_one(SlotTree)


@pytest.fixture
def backend() -> FakeBackend:
    return make_backend()


async def test_layout_lists_workspaces_slots_terminal_and_threats(backend: FakeBackend) -> None:
    source = PushSource()
    app = make_app(backend, threats=source)
    async with app.run_test(size=SIZE) as pilot:
        await started(app, pilot)
        source.push(threat("t1", A1, "critical", "Reverse shell detected"))
        await wait_for(pilot, lambda: "Reverse shell" in screen_text(app))
        text = screen_text(app)
        for title in ("1 Workspaces", "2 Snapshots", "3 Session", "4 Threats"):
            assert title in text
        for tab in ("Terminal", "Info", "Processes", "Audit"):
            assert tab in text
        rows = tree(app).rows()
        # The current workspace first, then the others; each slot with its state and mode.
        assert rows[0] == WORKSPACE and rows[3] == OTHER
        assert "RUNNING" in rows[1] and "dummy" in rows[1] and "ephem" in rows[1]
        assert "FROZEN" in rows[2] and "claude" in rows[2]
        assert "STOPPED" in rows[4] and "persi" in rows[4]
        assert "2m" in rows[1] and "3%" in rows[1] and "50.0M" in rows[1]
        assert f"dummy> hello from {A1}" in text
        assert "CRITICAL" in text and A1 in text
        # Contextual footer: slot keys while the slot list has focus (the footer is redrawn
        # after focus settles, so wait for it rather than reading the first frame).
        await wait_for(pilot, lambda: "p Pause/Resume" in screen_text(app), what="slot footer")
        text = screen_text(app)
        assert "k Kill" in text and "r Restore" not in text


async def test_both_themes_render_and_differ(backend: FakeBackend) -> None:
    app = make_app(backend)
    async with app.run_test(size=SIZE) as pilot:
        await started(app, pilot)
        assert app.theme == "coi"
        await wait_for(pilot, lambda: "q Quit" in screen_text(app), what="footer")
        dark = screen_styles(app)
        dark_text = screen_text(app)
        await pilot.press("ctrl+t")
        await wait_for(pilot, lambda: app.theme == "coi-light")
        await pilot.pause()
        light = screen_styles(app)
        assert screen_text(app) == dark_text  # same content...
        assert light != dark  # ...other colours
        assert app.main.terminal.connected  # a theme change keeps the session


async def test_theme_is_remembered(backend: FakeBackend, private_coi_home: Path) -> None:
    app = make_app(backend, remember_theme=True)
    async with app.run_test(size=SIZE) as pilot:
        await started(app, pilot)
        app.theme = "coi-light"
        await pilot.pause()
    state = json.loads((private_coi_home / "tui-state.json").read_text())
    assert state["theme"] == "coi-light"
    assert make_app(make_backend(), remember_theme=True).theme == "coi-light"


async def test_p_pauses_and_resumes(backend: FakeBackend) -> None:
    app = make_app(backend)
    async with app.run_test(size=SIZE) as pilot:
        await started(app, pilot)
        await pilot.press("p")
        await wait_for(pilot, lambda: "FROZEN" in tree(app).label_text(A1), what="FROZEN")
        assert backend.called("pause") == [("pause", A1)]
        await pilot.press("p")
        await wait_for(pilot, lambda: "RUNNING" in tree(app).label_text(A1), what="RUNNING")
        assert backend.called("resume") == [("resume", A1)]


async def test_k_asks_with_cancel_focused_and_kills_on_confirm(backend: FakeBackend) -> None:
    app = make_app(backend)
    async with app.run_test(size=SIZE) as pilot:
        await started(app, pilot)
        await pilot.press("k")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        assert app.focused is not None and app.focused.id == "cancel"
        assert A1 in screen_text(app)
        await pilot.press("enter")  # Enter on the focused Cancel: nothing happens
        await wait_for(pilot, lambda: not isinstance(app.screen, ConfirmScreen))
        await settle(app)
        assert backend.called("kill") == []
        await pilot.press("k")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("tab", "enter")  # Tab to the Kill button, then Enter
        await wait_for(pilot, lambda: A1 not in tree(app).slots, what="slot removed")
        assert backend.called("kill") == [("kill", A1)]
        assert A1 not in "\n".join(tree(app).rows())


async def test_k_escape_cancels(backend: FakeBackend) -> None:
    app = make_app(backend)
    async with app.run_test(size=SIZE) as pilot:
        await started(app, pilot)
        await pilot.press("k")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("escape")
        await wait_for(pilot, lambda: not isinstance(app.screen, ConfirmScreen))
        assert backend.called("kill") == []


async def test_s_snapshots_and_the_pane_lists_it(backend: FakeBackend) -> None:
    app = make_app(backend)
    async with app.run_test(size=SIZE) as pilot:
        await started(app, pilot)
        await pilot.press("s")
        table = app.main.query_one("#snapshots", DataTable)
        await wait_for(pilot, lambda: table.row_count == 1, what="snapshot row")
        assert backend.called("snapshot") == [("snapshot", A1)]
        assert "snap0" in screen_text(app)


async def test_r_restores_after_confirm_and_b_branches(backend: FakeBackend) -> None:
    backend.snapshot(A1)
    app = make_app(backend)
    async with app.run_test(size=SIZE) as pilot:
        await started(app, pilot)
        table = app.main.query_one("#snapshots", DataTable)
        await wait_for(pilot, lambda: table.row_count == 1)
        await pilot.press("r")  # not in the slot list: restore is a snapshot-pane key
        await pilot.pause()
        assert not isinstance(app.screen, ConfirmScreen)
        await pilot.press("2")
        assert app.focused is table
        assert "r Restore" in screen_text(app)
        await pilot.press("r")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        assert "snap0" in screen_text(app)
        await pilot.press("y")
        await wait_for(pilot, lambda: backend.called("restore") == [("restore", A1, "snap0")])
        await pilot.press("b")
        await wait_for(pilot, lambda: "coi-aaaaaaaa-9" in tree(app).slots, what="branch")
        assert backend.called("branch") == [("branch", A1, "snap0")]


async def test_n_starts_a_slot_with_the_picked_tool(backend: FakeBackend) -> None:
    app = make_app(backend)
    async with app.run_test(size=SIZE) as pilot:
        await started(app, pilot)
        await pilot.press("n")
        await wait_for(pilot, lambda: isinstance(app.screen, NewSlotScreen))
        screen = app.screen
        assert isinstance(screen, NewSlotScreen)
        assert screen.query_one("#workspace", Input).value == WORKSPACE
        assert "fast" in screen.profiles
        screen.query_one("#tool").value = "claude"  # type: ignore[attr-defined]
        screen.query_one("#profile").value = "fast"  # type: ignore[attr-defined]
        await pilot.click("#start")
        await wait_for(pilot, lambda: "coi-newslot0-1" in tree(app).slots, what="new slot")
        assert backend.called("new_slot") == [("new_slot", WORKSPACE, "claude", "fast")]


async def test_a_hands_the_terminal_over(backend: FakeBackend) -> None:
    app = make_app(backend)
    suspended: list[bool] = []

    @contextlib.contextmanager
    def fake_suspend():  # type: ignore[no-untyped-def]
        suspended.append(True)
        yield

    async with app.run_test(size=SIZE) as pilot:
        await started(app, pilot)
        app.suspend = fake_suspend  # type: ignore[method-assign]
        await pilot.press("a")
        await pilot.pause()
        assert suspended == [True]
        assert backend.called("attach") == [("attach", A1)]
        assert app.is_running


async def test_a_without_a_real_terminal_is_a_notification(backend: FakeBackend) -> None:
    app = make_app(backend)
    async with app.run_test(size=SIZE) as pilot:
        await started(app, pilot)
        await pilot.press("a")
        await pilot.pause()
        assert app.is_running
        assert any("real terminal" in n.message for n in app._notifications)


async def test_t_and_enter_focus_the_terminal_and_keys_reach_the_child(
    backend: FakeBackend,
) -> None:
    app = make_app(backend)
    async with app.run_test(size=SIZE) as pilot:
        await started(app, pilot)
        transport = backend.transports[A1]
        await pilot.press("t")
        assert isinstance(app.focused, TerminalView)
        # Dashboard keys and tab are typed into the shell while it has focus.
        await pilot.press("k", "q", "tab", "p", "1", "ctrl+p", "ctrl+q", "up", "enter")
        await pilot.pause()
        assert transport.data == b"kq\tp1\x10\x11\x1b[A\r"
        assert app.is_running and not isinstance(app.screen, (ConfirmScreen, CommandPalette))
        assert backend.called("kill") == [] and backend.called("pause") == []
        assert "Leave terminal" in screen_text(app)
        await pilot.press("ctrl+right_square_bracket")
        assert isinstance(app.focused, SlotTree)
        await pilot.press("enter")  # Enter on a slot row goes back into its terminal
        assert isinstance(app.focused, TerminalView)


async def test_terminal_output_dsr_paste_and_resize(backend: FakeBackend) -> None:
    app = make_app(backend)
    async with app.run_test(size=SIZE) as pilot:
        await started(app, pilot)
        view = app.main.terminal
        transport = backend.transports[A1]
        transport.emit(b"\x1b[2;1H\x1b[32mgreen text\x1b[0m\x1b[6n\x1b[?2004h\x1b[?1h")
        await wait_for(pilot, lambda: "green text" in view.text())
        assert transport.written[0] == b"\x1b[2;11R"  # the cursor position report
        await pilot.press("t", "up")
        await pilot.pause()
        assert transport.written[-1] == b"\x1bOA"  # application cursor mode
        app.post_message  # noqa: B018
        from textual import events

        view.post_message(events.Paste("echo hi\n"))
        await wait_for(pilot, lambda: transport.written[-1] == b"\x1b[200~echo hi\r\x1b[201~")
        before = (view.emulator.columns, view.emulator.lines)
        await pilot.resize_terminal(120, 30)
        await wait_for(pilot, lambda: transport.sizes, what="resize forwarded")
        assert transport.sizes[-1] == (view.emulator.columns, view.emulator.lines)
        assert transport.sizes[-1] != before
        # Only changed rows are re-rendered: a one-row update renders at most a row or two.
        await pilot.pause()
        rendered = view.stats.lines_rendered
        transport.emit(b"\x1b[5;1Hx")
        await wait_for(pilot, lambda: "x" in view.emulator.row_text(4))
        await pilot.pause(0.1)
        assert 0 < view.stats.lines_rendered - rendered <= 3


async def test_terminal_end_shows_a_placeholder(backend: FakeBackend) -> None:
    app = make_app(backend)
    async with app.run_test(size=SIZE) as pilot:
        await started(app, pilot)
        # The container stopped: the session really ended, no reconnect.
        backend.sessions[A1] = SessionState.GONE
        backend.transports[A1].close()
        await wait_for(pilot, lambda: f"Session {A1} ended" in screen_text(app), what="ended")
        assert not app.main.terminal.connected
        assert len(backend.called("open_terminal")) == 1


async def test_number_keys_focus_panes(backend: FakeBackend) -> None:
    app = make_app(backend)
    async with app.run_test(size=SIZE) as pilot:
        await started(app, pilot)
        await pilot.press("4")
        assert isinstance(app.focused, ThreatFeed)
        assert "k Kill" not in screen_text(app)  # the feed's footer has no slot keys
        await pilot.press("2")
        assert app.focused is app.main.query_one("#snapshots")
        await pilot.press("1")
        assert isinstance(app.focused, SlotTree)
        await pilot.press("3")
        assert isinstance(app.focused, TerminalView)


async def test_tab_switching_and_details(backend: FakeBackend) -> None:
    app = make_app(backend)
    async with app.run_test(size=SIZE) as pilot:
        await started(app, pilot)
        await pilot.press("right_square_bracket")
        await pilot.pause()
        text = screen_text(app)
        assert "Container" in text and A1 in text and "ephemeral" in text
        await pilot.press("right_square_bracket")
        await wait_for(pilot, lambda: "/sbin/init" in screen_text(app), what="processes")
        assert backend.called("processes") == [("processes", A1)]
        await pilot.press("right_square_bracket")
        await pilot.pause()
        assert f"No threat events for {A1}" in screen_text(app)


async def test_slash_filters_slots_and_escape_clears(backend: FakeBackend) -> None:
    app = make_app(backend)
    async with app.run_test(size=SIZE) as pilot:
        await started(app, pilot)
        await pilot.press("slash")
        assert isinstance(app.focused, Input)
        await pilot.press(*"other")
        await wait_for(pilot, lambda: list(tree(app).slots) == [B1])
        await pilot.press("escape")
        await wait_for(pilot, lambda: len(tree(app).slots) == 3)
        assert isinstance(app.focused, SlotTree)
        await pilot.press("slash", "!", "f", "r", "o", "z", "enter")
        await wait_for(pilot, lambda: A2 not in tree(app).slots and A1 in tree(app).slots)
        assert isinstance(app.focused, SlotTree)


async def test_slash_filters_the_threat_feed(backend: FakeBackend) -> None:
    source = PushSource()
    app = make_app(backend, threats=source)
    async with app.run_test(size=SIZE) as pilot:
        await started(app, pilot)
        source.push(threat("t1", A1, "warning", "Environment scanning"))
        source.push(threat("t2", A2, "critical", "Reverse shell detected"))
        feed = app.main.query_one(ThreatFeed)
        await wait_for(pilot, lambda: len(feed.shown) == 2)
        await pilot.press("4", "slash", *"reverse", "enter")
        await wait_for(pilot, lambda: [e.id for e in feed.shown] == ["t2"])
        assert "Environment scanning" not in screen_text(app)


async def test_question_mark_shows_help(backend: FakeBackend) -> None:
    app = make_app(backend)
    async with app.run_test(size=SIZE) as pilot:
        await started(app, pilot)
        await pilot.press("question_mark")
        await pilot.pause()
        assert app.screen.query("HelpPanel")
        await pilot.press("question_mark")
        await pilot.pause()
        assert not app.screen.query("HelpPanel")


async def test_ctrl_p_palette_offers_every_action(backend: FakeBackend) -> None:
    app = make_app(backend)
    async with app.run_test(size=SIZE) as pilot:
        await started(app, pilot)
        titles = [c.title for c in app.get_system_commands(app.screen)]
        for wanted in ("slot: Kill", "slot: Pause/Resume", "slot: Snapshot", "slot: New"):
            assert wanted in titles
        assert "theme: coi-light" in titles
        await pilot.press("ctrl+p")
        await wait_for(pilot, lambda: isinstance(app.screen, CommandPalette))
        await pilot.press(*"pause")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await wait_for(pilot, lambda: backend.called("pause") == [("pause", A1)])


async def test_q_quits_after_asking_when_a_terminal_is_attached(backend: FakeBackend) -> None:
    app = make_app(backend)
    async with app.run_test(size=SIZE) as pilot:
        await started(app, pilot)
        await pilot.press("q")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        assert A1 in screen_text(app)
        await pilot.press("n")
        await pilot.pause()
        assert app.is_running
        await pilot.press("q", "y")
        await pilot.pause()
        assert not app.is_running


async def test_q_quits_at_once_without_terminals() -> None:
    app = make_app(FakeBackend([]))
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.main.loaded)
        assert "press n to start one" in screen_text(app)
        await pilot.press("q")
        await pilot.pause()
        assert not app.is_running


async def test_read_only_greys_out_mutations(backend: FakeBackend) -> None:
    backend.read_only = True
    app = make_app(backend, read_only=True)
    async with app.run_test(size=SIZE) as pilot:
        await started(app, pilot)
        assert backend.called("open_terminal")[0][-1] is True  # tmux attach -r
        for key in ("p", "s", "n", "a"):
            await pilot.press(key)
        await pilot.press("k")
        await pilot.pause()
        assert not isinstance(app.screen, (ConfirmScreen, NewSlotScreen))
        await settle(app)
        for op in ("pause", "snapshot", "new_slot", "attach", "kill"):
            assert backend.called(op) == []
        enabled = {b.action: ok for (_, b, ok, _) in app.screen.active_bindings.values()}
        assert enabled["kill"] is False and enabled["toggle_pause"] is False
        assert enabled["focus_terminal"] is True
        titles = [c.title for c in app.get_system_commands(app.screen)]
        assert "slot: Kill" not in titles
        assert "[read-only]" in app.sub_title


async def test_keymap_remaps_by_binding_id(backend: FakeBackend) -> None:
    app = make_app(backend, keymap={"slot.pause": "z"})
    async with app.run_test(size=SIZE) as pilot:
        await started(app, pilot)
        await pilot.press("p")
        await pilot.pause()
        await settle(app)
        assert backend.called("pause") == []
        await pilot.press("z")
        await wait_for(pilot, lambda: backend.called("pause") == [("pause", A1)])


def test_keymap_is_read_from_config(private_coi_home: Path) -> None:
    (private_coi_home / "config.toml").write_text(
        '[tui.keymap]\n"slot.kill" = "ctrl+k"\n"slot.pause" = "z"\n'
    )
    assert load_keymap() == {"slot.kill": "ctrl+k", "slot.pause": "z"}
    assert CoiApp(FakeBackend(), threats=PushSource(), remember_theme=False)  # loads it


async def test_failed_operation_is_a_notification(backend: FakeBackend) -> None:
    backend.fail["pause"] = RuntimeError("freeze failed: cgroup busy")
    app = make_app(backend)
    async with app.run_test(size=SIZE) as pilot:
        await started(app, pilot)
        await pilot.press("p")
        await wait_for(pilot, lambda: app._notifications, what="notification")
        note = list(app._notifications)[-1]
        assert "cgroup busy" in note.message and note.severity == "error"
        assert app.is_running


async def test_listing_failure_keeps_running_and_recovers(backend: FakeBackend) -> None:
    backend.fail["list_slots"] = RuntimeError("Incus is not running")
    app = make_app(backend)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app._notifications)
        assert "cannot list" in screen_text(app)
        del backend.fail["list_slots"]
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: len(tree(app).slots) == 3)


async def test_lifecycle_event_triggers_a_listing(backend: FakeBackend) -> None:
    app = make_app(backend)
    async with app.run_test(size=SIZE) as pilot:
        await started(app, pilot)
        await wait_for(pilot, backend.events_ready.is_set)
        backend.slots.append(slot("coi-cccccccc-1", "/srv/x"))
        callback = backend.events_callback
        assert callback is not None
        callback({"type": "lifecycle", "metadata": {"source": "/1.0/instances/coi-cccccccc-1"}})
        await wait_for(pilot, lambda: "coi-cccccccc-1" in tree(app).slots, what="event")


async def test_poll_is_rearmed(backend: FakeBackend) -> None:
    app = make_app(backend, refresh_interval=0.05)
    async with app.run_test(size=SIZE) as pilot:
        await started(app, pilot)
        backend.slots.append(slot("coi-dddddddd-1", "/srv/y"))
        await wait_for(pilot, lambda: "coi-dddddddd-1" in tree(app).slots, what="poll")
        assert len(backend.called("list_slots")) >= 2


async def test_audit_file_line_appears_in_the_feed(
    backend: FakeBackend, private_coi_home: Path
) -> None:
    audit = private_coi_home / "audit"
    audit.mkdir()
    app = make_app(backend, threats=AuditTail(audit))
    async with app.run_test(size=SIZE) as pilot:
        await started(app, pilot)
        record = {
            "id": "e1",
            "timestamp": "2026-05-01T10:20:30.5Z",
            "level": "critical",
            "category": "network",
            "title": "Unexpected network connection",
            "description": "Suspicious port: 4444",
            "evidence": {"network": {}},
            "action": "alerted",
            "rule_id": "net.port",
        }
        with open(audit / f"{A1}.jsonl", "a") as handle:
            handle.write(json.dumps(record) + "\n")
        await wait_for(pilot, lambda: "Suspicious port: 4444" in screen_text(app), timeout=2)
        await pilot.press("right_square_bracket", "right_square_bracket", "right_square_bracket")
        await wait_for(
            pilot,
            lambda: "Unexpected network connection" in app.main.query_one("#audit").render().plain,
        )  # type: ignore[attr-defined]


def test_parse_args(tmp_path: Path) -> None:
    args = parse_args(["-w", str(tmp_path), "--read-only"])
    assert args.workspace == str(tmp_path) and args.read_only
    with pytest.raises(SystemExit):
        parse_args(["--workspace", "/no/such/dir"])
