"""coi-tui over several hosts against the real daemon: the local socket plus the same daemon
reached as an HTTPS remote on loopback, and a remote that never answers.

Network: only 127.0.0.1 (the daemon's loopback HTTPS address and a socket this test opens)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from textual.message import Message

from coi_tui.app import CoiApp
from coi_tui.dashboard.hosts import LOCAL, REMOTE_CONNECT_TIMEOUT
from coi_tui.dashboard.threats import PushSource
from coi_tui.incus import Incus
from coi_tui.incus.remotes import ensure_client_certificate
from coi_tui.screens.confirm import ConfirmScreen
from coi_tui.screens.messages import HostSlotsFailed, HostSlotsLoaded
from coi_tui.widgets import SlotTree, TerminalView
from tests.conftest import CoiRunner
from tests.integration.test_remote import https_daemon, trust_token  # noqa: F401
from tests.ui.helpers import wait_for

pytestmark = pytest.mark.incus


def start_session(coi: CoiRunner, workspace: Path) -> str:
    shell = coi.ok("shell", "--background", "--tool", "dummy", "-w", str(workspace))
    return next(
        line.split(": ", 1)[1]
        for line in shell.stderr.splitlines()
        if line.startswith("Container: ")
    )


def dashboard_env(coi: CoiRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COI_CONTAINER_PREFIX", coi.prefix)
    monkeypatch.setenv("COI_HOME", str(coi.home))
    monkeypatch.delenv("COI_REMOTE", raising=False)
    monkeypatch.delenv("COI_CONFIG", raising=False)


def make_app(workspace: Path, **kwargs: Any) -> CoiApp:
    return CoiApp(
        threats=PushSource(),
        workspace=str(workspace),
        keymap={},
        remember_theme=False,
        refresh_interval=kwargs.pop("refresh_interval", 1.0),
        **kwargs,
    )


async def test_dashboard_lists_and_kills_through_the_https_remote(
    coi: CoiRunner,
    https_daemon: tuple[str, str, str],  # noqa: F811
    incus: Incus,
    workspace: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    address, _, trust_name = https_daemon
    coi.ok("remote", "add", "lo", trust_token(incus, trust_name))
    name = start_session(coi, workspace)
    remote_key = f"lo:{name}"
    dashboard_env(coi, monkeypatch)

    app = make_app(workspace)  # no --remote: local + every configured remote
    async with app.run_test(size=(150, 40)) as pilot:
        tree = app.main.query_one(SlotTree)
        view = app.main.query_one(TerminalView)
        await wait_for(pilot, lambda: {name, remote_key} <= set(tree.slots), 30, "both hosts")
        # The same container under both hosts, local first.
        hosts = [row for row in tree.rows() if not row.startswith(" ")]
        assert hosts == ["local", f"lo  {address}"]
        assert tree.slots[name].host == LOCAL and tree.slots[remote_key].host == "lo"
        assert "RUNNING" in tree.label_text(remote_key)

        # Who did what, as the daemon saw it: "unix" (the socket) or "tls" (the remote).
        events: list[dict[str, Any]] = []
        stop = threading.Event()

        def record(event: dict[str, Any]) -> bool:
            if (event.get("metadata") or {}).get("name") == name:
                events.append(event["metadata"])
            return True

        watcher = threading.Thread(
            target=incus.watch_events, args=(record,), kwargs={"stop": stop}, daemon=True
        )
        watcher.start()

        def via(action: str) -> set[str]:
            return {
                str((e.get("requestor") or {}).get("protocol"))
                for e in events
                if e.get("action") == action
            }

        # The remote slot's terminal is an `incus exec lo:NAME` through the HTTPS remote.
        tree.select(remote_key)
        await wait_for(pilot, lambda: view.session_name == remote_key, 30, "remote terminal")
        await wait_for(pilot, lambda: "dummy>" in view.text(), 30, "the agent via the remote")

        # Kill from the remote host's row: gone from the daemon, and from both hosts' rows.
        await pilot.press("k")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("tab", "enter")
        await wait_for(
            pilot, lambda: not ({name, remote_key} & set(tree.slots)), 60, "killed everywhere"
        )
        assert not incus.instance_exists(name)
        assert not any("offline" in row for row in tree.rows())
        await wait_for(pilot, lambda: via("instance-deleted"), 10, "the deletion event")
        stop.set()
        assert via("instance-deleted") == {"tls"}  # the kill went through the remote
        assert "tls" in via("instance-exec")  # and so did the terminal


@pytest.fixture
def blackhole() -> Iterator[str]:
    """https://127.0.0.1:PORT that accepts TCP connections and never says a word (no TLS)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)  # the kernel completes handshakes; nothing ever answers
    try:
        yield f"https://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()


def local_loads(seen: list[tuple[float, Message]]) -> list[float]:
    return [t for t, m in seen if isinstance(m, HostSlotsLoaded) and m.host == LOCAL]


async def test_an_unreachable_remote_does_not_slow_the_local_listing(
    coi: CoiRunner,
    incus: Incus,
    workspace: Path,
    monkeypatch: pytest.MonkeyPatch,
    blackhole: str,
) -> None:
    name = start_session(coi, workspace)
    dashboard_env(coi, monkeypatch)

    # Baseline: the local daemon alone.
    baseline_app = make_app(workspace, remotes=[])
    start = time.monotonic()
    async with baseline_app.run_test(size=(150, 40)) as pilot:
        tree = baseline_app.main.query_one(SlotTree)
        await wait_for(pilot, lambda: name in tree.slots, 30, "the local slot")
        baseline = time.monotonic() - start

    ensure_client_certificate(str(coi.home / "client.crt"), str(coi.home / "client.key"))
    (coi.home / "remotes.toml").write_text(
        f'[[remotes]]\nname = "hole"\naddress = "{blackhole}"\nfingerprint = "{"ab" * 32}"\n'
    )
    seen: list[tuple[float, Message]] = []
    app = make_app(workspace, refresh_interval=60)  # only the listings this test asks for
    start = time.monotonic()
    hook = lambda message: seen.append((time.monotonic(), message))  # noqa: E731
    async with app.run_test(size=(150, 40), message_hook=hook) as pilot:
        tree = app.main.query_one(SlotTree)
        await wait_for(pilot, lambda: name in tree.slots, 30, "the local slot")
        local = time.monotonic() - start
        # The remote is still being waited for while the local slot is on screen.
        assert app.main.board.states["hole"].status == "connecting"
        assert any(row.startswith("hole  connecting") for row in tree.rows())
        print(f"\nlocal slot on screen: {local:.3f}s with a dead remote, {baseline:.3f}s alone")
        assert local < max(1.0, 3 * baseline)
        assert local < REMOTE_CONNECT_TIMEOUT  # what waiting for the remote would cost

        await wait_for(
            pilot,
            lambda: any(row.startswith("hole  offline") for row in tree.rows()),
            REMOTE_CONNECT_TIMEOUT + 10,
            "the dead remote shown offline",
        )
        assert any("hole  offline: unreachable" in row for row in tree.rows())
        failed = next(t for t, m in seen if isinstance(m, HostSlotsFailed) and m.host == "hole")
        print(f"dead remote reported offline after {failed - start:.3f}s")
        assert failed - start >= REMOTE_CONNECT_TIMEOUT * 0.9  # it really hung until the timeout
        assert name in tree.slots and "RUNNING" in tree.label_text(name)

        # Later polls: the local listing keeps its own pace while the remote hangs again.
        await wait_for(pilot, lambda: not app.main.poller.listing, 10, "listings done")
        before = len(local_loads(seen))
        asked = time.monotonic()
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: len(local_loads(seen)) > before, 10, "a local listing")
        again = local_loads(seen)[before] - asked
        assert "hole" in app.main.poller.listing  # the remote's listing still hangs
        print(f"local refresh with the dead remote pending: {again:.3f}s")
        assert again < max(1.0, 3 * baseline)
