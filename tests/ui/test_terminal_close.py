"""Closing a terminal never blocks the UI: the pane hands the transport to a closing thread,
and a pty child that ignores SIGTERM is killed after a short timeout."""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from coi_tui.app import CoiApp
from coi_tui.dashboard.threats import PushSource
from coi_tui.terminal.transport import FakeTransport, PtyTransport
from coi_tui.widgets import SlotTree
from tests.ui.fakes import WORKSPACE, FakeBackend, slot
from tests.ui.helpers import wait_for

SIZE = (150, 40)
A1, A2 = "coi-aaaaaaaa-1", "coi-aaaaaaaa-2"


class StuckTransport(FakeTransport):
    """A transport whose close blocks until the test releases it (a child that will not die)."""

    def __init__(self) -> None:
        super().__init__()
        self.closing = threading.Event()
        self.release = threading.Event()
        self.finished = threading.Event()

    def close(self) -> None:
        self.closing.set()
        self.release.wait(10)  # bounded, so a close run on the UI thread fails the test
        super().close()
        self.finished.set()


class StuckBackend(FakeBackend):
    def __init__(self) -> None:
        super().__init__([slot(A1), slot(A2, number=2)])
        self.stuck: dict[str, StuckTransport] = {}

    def open_terminal(self, name: str, columns: int, lines: int, read_only: bool) -> FakeTransport:
        self._call("open_terminal", name, columns, lines, read_only)
        transport = self.stuck[name] = StuckTransport()
        transport.emit(f"dummy> hello from {name}\r\n".encode())
        self.transports[name] = transport
        return transport


@pytest.fixture
def backend() -> Iterator[StuckBackend]:
    backend = StuckBackend()
    yield backend
    for transport in backend.stuck.values():
        transport.release.set()  # never leave a closing thread behind


async def test_a_close_that_blocks_does_not_block_the_dashboard(backend: StuckBackend) -> None:
    app = CoiApp(
        backend,  # type: ignore[arg-type]
        workspace=WORKSPACE,
        threats=PushSource(),
        keymap={},
        remember_theme=False,
        refresh_interval=60,
    )
    async with app.run_test(size=SIZE) as pilot:
        terminal = app.main.terminal
        await wait_for(pilot, lambda: terminal.session_name == A1, what="A1's terminal")
        first = backend.stuck[A1]
        # Another slot: the pane lets go of A1's transport (whose close hangs) and attaches
        # to A2, all while that close is still blocked.
        app.main.query_one(SlotTree).select(A2)
        await wait_for(pilot, first.closing.is_set, what="A1's close started")
        await wait_for(pilot, lambda: terminal.session_name == A2, what="A2's terminal")
        assert "hello from " + A2 in terminal.text()
        await pilot.press("2")  # keys are handled meanwhile
        await wait_for(pilot, lambda: app.focused is not None and app.focused.id == "snapshots")
        assert not first.finished.is_set()  # all of that happened during the close
        first.release.set()
        await wait_for(pilot, first.finished.is_set, what="the close ended")
        assert first.closed and not backend.stuck[A2].closing.is_set()


def test_a_child_that_ignores_sigterm_is_killed_after_the_close_timeout() -> None:
    script = (
        "import signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    transport = PtyTransport([sys.executable, "-c", script], 40, 5)
    transport.close_timeout_s = 0.1
    seen = b""
    deadline = time.monotonic() + 10
    while b"ready" not in seen:
        assert time.monotonic() < deadline, seen
        transport.queue.wait(0.1)
        seen += transport.queue.get(4096)
    transport.close()
    assert transport.process.returncode == -signal.SIGKILL
    assert not transport.alive
