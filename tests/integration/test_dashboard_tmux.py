"""End to end, the way an operator runs it: the real `coi-tui` binary inside a detached tmux
session on the host, against the real Incus daemon, with two background dummy sessions and the
threat monitor on. The test types with `tmux send-keys` and reads the screen with
`tmux capture-pane -p`, always waiting on what the screen shows (no fixed sleeps).

Network safety: the only threat triggered is a local one (reading a fake SSH key inside a
session container); nothing is sent anywhere."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import pytest

from coi_tui.incus import Incus
from coi_tui.sessions.naming import container_name
from tests.conftest import CoiRunner

pytestmark = [
    pytest.mark.incus,
    pytest.mark.skipif(os.geteuid() != 0, reason="the threat monitor daemon needs root"),
]

COLUMNS, LINES = 160, 45
COI_TUI = Path(sys.executable).with_name("coi-tui")


class TmuxScreen:
    """coi-tui in a detached session on a private tmux server."""

    def __init__(self, command: list[str], env: dict[str, str]) -> None:
        self.socket = f"coitest{uuid.uuid4().hex[:8]}"
        self.target = "coitui"
        self.env = env
        self.tmux(
            "new-session",
            "-d",
            "-s",
            self.target,
            "-x",
            str(COLUMNS),
            "-y",
            str(LINES),
            *command,
        )
        # Keep the pane (and its last screen) if coi-tui exits, so a failure shows why.
        self.tmux("set-option", "-t", self.target, "remain-on-exit", "on")

    def tmux(self, *args: str) -> str:
        result = subprocess.run(
            ["tmux", "-u", "-f", "/dev/null", "-L", self.socket, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=15,
        )
        assert result.returncode == 0, f"tmux {args[0]}: {result.stderr.strip()}"
        return result.stdout

    def text(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", self.target)

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", self.target, *keys)

    def type(self, text: str) -> None:
        self.tmux("send-keys", "-t", self.target, "-l", text)

    def wait(self, check: str | Callable[[str], object], timeout: float, what: str) -> float:
        """Poll the screen until check (a regex, or a function of the text) holds; returns
        the time (time.time()) it was first seen."""
        deadline = time.monotonic() + timeout
        while True:
            screen = self.text()
            ok = re.search(check, screen) if isinstance(check, str) else check(screen)
            if ok:
                return time.time()
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:g}s waiting for {what}:\n{screen}")
            time.sleep(0.02)

    def kill(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, timeout=15)
        tmpdir = os.environ.get("TMUX_TMPDIR", "/tmp")
        Path(tmpdir, f"tmux-{os.getuid()}", self.socket).unlink(missing_ok=True)


def tui_command(
    coi: CoiRunner, workspace: Path, *args: str, env: dict[str, str] | None = None
) -> tuple[list[str], dict[str, str]]:
    """coi-tui on `workspace` with the test's COI home and prefix, refreshing every second
    (`args`: more flags; `env`: more variables, given to coi-tui too), and tmux's environment."""
    extra = env or {}
    tmux_env = {**coi.env, **extra, "LANG": "C.UTF-8", "TERM": "xterm-256color"}
    tmux_env.pop("TMUX", None)
    command = [
        "env",
        f"COI_HOME={coi.home}",
        f"COI_CONTAINER_PREFIX={coi.prefix}",
        f"PYTHONPATH={tmux_env.get('PYTHONPATH', '')}",
        *(f"{k}={v}" for k, v in extra.items()),
        "LANG=C.UTF-8",
        str(COI_TUI),
        "-w",
        str(workspace),
        "--refresh",
        "1",
        *args,
    ]
    return command, tmux_env


@pytest.fixture
def monitored(coi: CoiRunner) -> Iterator[CoiRunner]:
    """The test's COI_HOME with the monitor on (sessions start it); stopped afterwards."""
    (coi.home / "config.toml").write_text("[monitoring]\nenabled = true\nidle_exit_sec = 60\n")
    try:
        yield coi
    finally:
        coi("monitor", "--stop")


def slot_row(number: int, state: str) -> str:
    return rf"\b{number} dummy +{state}\b"


def test_coi_tui_in_tmux_drives_real_sessions(monitored: CoiRunner, tmp_path: Path) -> None:
    coi = monitored
    workspace = tmp_path / "ws"
    workspace.mkdir()
    with ThreadPoolExecutor(2) as pool:
        results = list(
            pool.map(
                lambda _: coi("shell", "--background", "--tool", "dummy", "-w", str(workspace)),
                range(2),
            )
        )
    for result in results:
        assert result.returncode == 0, result.stderr
    first, second = (container_name(coi.prefix, str(workspace), n) for n in (1, 2))
    assert (coi.home / "monitor.pid").exists(), "the session hook started the monitor"

    command, env = tui_command(coi, workspace)
    screen = TmuxScreen(command, env)
    try:
        # Both slots, running.
        screen.wait(
            lambda s: re.search(slot_row(1, "RUNNING"), s) and re.search(slot_row(2, "RUNNING"), s),
            30,
            "both slots RUNNING",
        )
        # The agent's output in the embedded terminal; what we type reaches it and echoes.
        screen.wait("dummy>", 30, "the agent's prompt in the terminal pane")
        screen.keys("t")
        screen.wait(r"\^\] Leave terminal", 10, "the terminal pane focused")
        screen.type("hello from tmux")
        screen.keys("Enter")
        screen.wait("You said: hello from tmux", 15, "the agent's echo")
        screen.keys("C-]")
        screen.wait(lambda s: "Leave terminal" not in s, 10, "keys back to the dashboard")

        # Pause: FROZEN on screen and in Incus; resume: RUNNING again.
        screen.keys("p")
        screen.wait(slot_row(1, "FROZEN"), 20, "slot 1 FROZEN")
        assert Incus().status(first) == "Frozen"
        screen.keys("p")
        screen.wait(slot_row(1, "RUNNING"), 20, "slot 1 RUNNING again")
        assert Incus().status(first) == "Running"

        # A threat inside the second container shows in the feed within a second. The
        # container's clock is the host's: each run stamps the moment just before the read
        # (through the adapter, which retries Incus's transient exec failure; a retry must not
        # move the reference, so the earliest stamp counts).
        incus = Incus()
        # (the command line only: a real key opened is HIGH and would pause the container)
        script = (
            "date +%s.%N >> /root/trigger-times && "
            "cat /root/.ssh/id_ed25519 > /dev/null 2>&1; sleep 1"
        )
        with ThreadPoolExecutor(1) as pool:
            run = pool.submit(incus.exec_capture, second, ["bash", "-c", script], timeout=30)
            seen = screen.wait("SSH key access", 15, "the threat in the feed")
            assert run.result(timeout=40).exit_code == 0
        stamps = incus.exec_capture(second, ["cat", "/root/trigger-times"], timeout=30).stdout
        triggered = min(float(line) for line in stamps.split())
        assert second in screen.text()
        # The monitor's own share, from its audit record (to tell a slow detection from a slow
        # dashboard if this ever fails).
        records = [
            json.loads(line)
            for line in (coi.home / "audit" / f"{second}.jsonl").read_text().splitlines()
        ]
        stamp = next(r["timestamp"] for r in records if r.get("title") == "SSH key access")
        detected = datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
        # The monitor may judge the script at bash's exec, a little before its `date` ran.
        triggered = min(triggered, detected)
        timing = (
            f"detected {detected - triggered:.3f}s and on screen {seen - triggered:.3f}s "
            "after the trigger"
        )
        print(timing)
        assert seen - triggered < 1.0, timing

        # Kill the selected slot (the first: pause and resume acted on it) through the
        # confirmation. Cancel is focused: tab to Kill.
        screen.keys("1")
        screen.keys("k")
        screen.wait(rf"Kill {first}\b(.|\n)*Cancel +Kill", 10, "the confirmation")
        screen.keys("Tab", "Enter")
        # The dialog closes (it covered the tree), the container goes, and so does its row.
        # (A listing taken while it is being deleted may already leave it out: the row alone
        # does not prove the kill finished.)
        screen.wait(
            lambda s: (
                "Cancel" not in s
                and not re.search(r"\b1 dummy\b", s)
                and not incus.instance_exists(first)
            ),
            60,
            "slot 1 gone from the screen and from Incus",
        )
        screen.wait(slot_row(2, "RUNNING"), 10, "the other slot still running")
    finally:
        screen.kill()


ENDED = re.compile(r"Session \S+ ended|Cannot open the terminal")


def test_new_slot_shows_the_agent_without_a_second_key(coi: CoiRunner, tmp_path: Path) -> None:
    """`n`, then Start with the default tool: the new slot's pane shows the agent's output by
    itself. The pane must never say the session ended on the way (it attached before the
    agent's tmux session existed, and only a later key press or poll brought it back)."""
    workspace = tmp_path / "ws"
    workspace.mkdir()
    # COI_USE_DUMMY: the default tool's session, run by the offline stand-in
    command, env = tui_command(coi, workspace, "--local-only", env={"COI_USE_DUMMY": "1"})
    name = container_name(coi.prefix, str(workspace), 1)
    screen = TmuxScreen(command, env)
    try:
        screen.wait("press n to start one", 30, "the empty dashboard")
        screen.keys("n")
        screen.wait(r"New slot(.|\n)*Cancel +Start", 10, "the new-slot dialog")
        # Focus starts on the tool picker, which holds the default tool; tab to Start.
        assert re.search(r"\bclaude\b", screen.text()), "claude is the default tool"
        screen.keys("Tab", "Tab", "Tab")
        screen.wait(lambda s: "Cancel" in s, 5, "the dialog still open")
        screen.keys("Enter")

        seen_ended: list[str] = []
        waited: list[bool] = []

        def agent_shown(text: str) -> bool:
            waited.append("Waiting for the agent's session" in text)
            if ENDED.search(text):
                seen_ended.append(text)
                raise AssertionError(f"the pane said the session ended:\n{text}")
            return "dummy> " in text and "Dummy agent" in text

        screen.wait(lambda s: re.search(r"\b1 claude +RUNNING\b", s), 120, "the new slot")
        screen.wait(agent_shown, 120, "the agent's output in the pane, with no key pressed")
        assert not seen_ended
        print("the pane waited for the agent's tmux session:", any(waited))
        # The session panel names the container (the start notice that also names it fades).
        assert re.search(rf"3 Session · {name}\b", screen.text())
        assert Incus().status(name) == "Running"
    finally:
        screen.kill()
