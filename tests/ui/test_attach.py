"""The terminal pane's attach: it waits for the agent's tmux session, and an attach that ends
early is retried (a bounded number of times) instead of showing "ended". Pure policy first,
then the dashboard against a fake backend whose attaches end at once."""

from __future__ import annotations

import itertools

import pytest

import coi_tui.screens.main as main_module
from coi_tui.dashboard.attach import (
    AttachPolicy,
    SessionState,
    plan_reconnect,
    wait_for_session,
)
from coi_tui.screens.new_slot import NewSlotScreen
from coi_tui.widgets import TerminalView
from tests.ui.fakes import FakeBackend, slot
from tests.ui.helpers import screen_text, wait_for
from tests.ui.test_dashboard import SIZE, make_app

A1 = "coi-aaaaaaaa-1"
NEW = "coi-newslot0-1"
FAST = AttachPolicy(poll_first_s=0.01, poll_max_s=0.05, backoff_first_s=0.01, backoff_max_s=0.05)


# ---------------------------------------------------------------------- policy
def test_an_early_end_is_retried_with_a_growing_backoff_then_given_up() -> None:
    policy = AttachPolicy(early_s=3, max_early_ends=3, backoff_first_s=0.2, backoff_max_s=0.5)
    plans = []
    ends = 0
    for _ in range(3):
        plan = plan_reconnect(0.1, ends, policy)
        assert plan is not None
        plans.append(plan.delay_s)
        ends = plan.early_ends
    assert plans == [0.2, 0.4, 0.5]
    assert plan_reconnect(0.1, ends, policy) is None  # the fourth early end in a row


def test_a_late_end_checks_for_the_session_again_and_resets_the_count() -> None:
    policy = AttachPolicy(early_s=3, return_timeout_s=5)
    plan = plan_reconnect(60.0, 4, policy)
    assert plan is not None
    assert (plan.delay_s, plan.timeout_s, plan.early_ends) == (0.0, 5, 0)


def test_wait_for_session_polls_until_ready_and_says_once_that_it_waits() -> None:
    states = iter([SessionState.STARTING] * 3 + [SessionState.READY])
    told: list[bool] = []
    state = wait_for_session(
        lambda: next(states), 10, lambda: False, FAST, lambda: told.append(True)
    )
    assert state is SessionState.READY and told == [True]


def test_wait_for_session_stops_on_gone_timeout_and_cancel() -> None:
    assert wait_for_session(lambda: SessionState.GONE, 10, lambda: False, FAST) is SessionState.GONE
    starting = itertools.repeat(SessionState.STARTING)
    assert (
        wait_for_session(lambda: next(starting), 0.1, lambda: False, FAST) is SessionState.STARTING
    )
    assert wait_for_session(lambda: next(starting), 10, lambda: True, FAST) is None


# ---------------------------------------------------------------------- the dashboard
class Watch:
    """Samples the screen on every wait step: what the pane said on the way."""

    def __init__(self) -> None:
        self.screens: list[str] = []

    def saw(self, text: str) -> bool:
        return any(text in screen for screen in self.screens)


async def live(app, pilot, watch: Watch, name: str, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    def connected() -> bool:
        watch.screens.append(screen_text(app))
        view = app.main.terminal
        return view.connected and f"dummy> hello from {name}" in view.rendered_text()

    await wait_for(pilot, connected, timeout, f"{name}'s live terminal")


@pytest.fixture(autouse=True)
def fast_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(main_module, "DEFAULT_POLICY", FAST)


async def test_an_attach_that_ends_at_once_is_retried_and_the_pane_goes_live() -> None:
    backend = FakeBackend([slot(A1)])
    backend.failing_attaches[A1] = 1  # the first attach ends at once, the second works
    captured: list[object] = []
    app = make_app(backend)
    async with app.run_test(size=SIZE, message_hook=captured.append) as pilot:
        watch = Watch()
        await live(app, pilot, watch, A1)
        assert len(backend.called("open_terminal")) == 2
        assert any(isinstance(m, TerminalView.Ended) for m in captured), "the first one ended"
        assert not watch.saw(f"Session {A1} ended")
        assert f"Session {A1} ended" not in screen_text(app)


async def test_retries_are_bounded_then_the_pane_says_the_session_ended(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(
        main_module, "DEFAULT_POLICY", AttachPolicy(**{**FAST.__dict__, "max_early_ends": 2})
    )
    backend = FakeBackend([slot(A1)])
    backend.failing_attaches[A1] = 100
    app = make_app(backend)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: f"Session {A1} ended" in screen_text(app), what="ended")
        assert len(backend.called("open_terminal")) == 3  # the attach, then two retries
        assert not app.main.terminal.connected
        # It stays ended (no attach loop); t tries again, and now it works.
        backend.failing_attaches[A1] = 0
        app.main.poller.refresh()
        await wait_for(pilot, lambda: len(backend.called("list_slots")) >= 2, what="listing")
        await pilot.pause()
        assert len(backend.called("open_terminal")) == 3
        await pilot.press("t")
        watch = Watch()
        await live(app, pilot, watch, A1)


async def test_a_session_that_does_not_come_back_shows_ended(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(
        main_module, "DEFAULT_POLICY", AttachPolicy(**{**FAST.__dict__, "return_timeout_s": 0.2})
    )
    backend = FakeBackend([slot(A1)])
    app = make_app(backend)
    async with app.run_test(size=SIZE) as pilot:
        await live(app, pilot, Watch(), A1)
        # The agent's tmux session is gone for good; the container still runs.
        backend.sessions[A1] = SessionState.STARTING
        backend.transports[A1].close()
        await wait_for(pilot, lambda: f"Session {A1} ended" in screen_text(app), what="ended")
        assert len(backend.called("open_terminal")) == 1  # never attached to a missing session


async def test_a_session_that_comes_back_is_reattached() -> None:
    backend = FakeBackend([slot(A1)])
    app = make_app(backend)
    async with app.run_test(size=SIZE) as pilot:
        await live(app, pilot, Watch(), A1)
        first = backend.transports[A1]
        await pilot.press("t")
        assert app.focused is app.main.terminal
        app.main.terminal.connected_at -= 60  # it was attached for a while
        first.close()
        await wait_for(pilot, lambda: backend.transports[A1] is not first, what="reattach")
        await live(app, pilot, Watch(), A1)
        # The keys go back to the pane (focus() takes effect on a later turn of the loop).
        await wait_for(pilot, lambda: app.focused is app.main.terminal, what="keys in the pane")


async def test_a_new_slot_attaches_once_its_tmux_session_exists() -> None:
    """n -> Start: the slot is listed RUNNING while it boots; the pane waits for the agent's
    tmux session (an attach before it exists would end at once) and then goes live without
    another key press."""

    class Booting(FakeBackend):
        def new_slot(self, workspace: str, tool: str, profile: str) -> str:
            self.sessions[NEW] = SessionState.STARTING
            return super().new_slot(workspace, tool, profile)

    backend = Booting([])
    app = make_app(backend)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: "press n to start one" in screen_text(app), what="empty")
        await pilot.press("n")
        await wait_for(pilot, lambda: isinstance(app.screen, NewSlotScreen))
        await pilot.click("#start")
        app.main.poller.refresh()
        await wait_for(
            pilot,
            lambda: "Waiting for the agent's session" in screen_text(app),
            what="the pane waiting",
        )
        assert backend.called("open_terminal") == []
        assert backend.called("session_state")
        backend.sessions[NEW] = SessionState.READY  # the session manager started the agent
        watch = Watch()
        await live(app, pilot, watch, NEW)
        assert len(backend.called("open_terminal")) == 1
        assert not watch.saw(f"Session {NEW} ended")
