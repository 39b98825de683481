"""`coi shell` in the foreground, driven through a real pseudo-terminal: the user lands in the
agent, and poweroff, detach and SIGTERM each end the session the way the README says."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import signal
import struct
import sys
import termios
import time
from pathlib import Path

import pytest

from coi_tui.incus import Incus
from coi_tui.sessions.naming import container_name
from tests.conftest import REPO, CoiRunner

pytestmark = pytest.mark.incus


class PtySession:
    """`coi shell` running on a pty we control, with everything it printed kept."""

    def __init__(self, coi: CoiRunner, *args: str) -> None:
        self.output = b""
        pid, fd = pty.fork()
        if pid == 0:  # child
            os.chdir(REPO)
            os.execve(sys.executable, [sys.executable, "-m", "coi_tui.cli.main", *args], coi.env)
        self.pid, self.fd = pid, fd
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        self.status: int | None = None

    def read_until(self, needle: bytes, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.output:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{needle!r} not seen; output so far:\n{self.text()}")
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready:
                try:
                    chunk = os.read(self.fd, 65536)
                except OSError:
                    chunk = b""
                if not chunk:
                    raise AssertionError(f"exited before {needle!r}:\n{self.text()}")
                self.output += chunk

    def send(self, data: bytes) -> None:
        os.write(self.fd, data)

    def wait(self, timeout: float = 60) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done, status = os.waitpid(self.pid, os.WNOHANG)
            if done:
                self.drain()
                self.status = os.waitstatus_to_exitcode(status)
                return self.status
            self.drain(0.2)
        raise AssertionError(f"coi shell did not exit; output:\n{self.text()}")

    def drain(self, timeout: float = 0.0) -> None:
        while True:
            ready, _, _ = select.select([self.fd], [], [], timeout)
            if not ready:
                return
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:
                return
            if not chunk:
                return
            self.output += chunk

    def text(self) -> str:
        return self.output.decode("utf-8", "replace")

    def close(self) -> None:
        if self.status is None:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        os.close(self.fd)


@pytest.fixture
def shell_session(coi: CoiRunner, workspace: Path):  # type: ignore[no-untyped-def]
    sessions: list[PtySession] = []

    def start(*extra: str) -> PtySession:
        session = PtySession(coi, "shell", "--tool", "dummy", "-w", str(workspace), *extra)
        sessions.append(session)
        return session

    yield start
    for session in sessions:
        session.close()


def test_poweroff_inside_ends_the_session(
    shell_session,
    coi: CoiRunner,
    workspace: Path,
    incus: Incus,  # type: ignore[no-untyped-def]
) -> None:
    session = shell_session()
    session.read_until(b"dummy> ")
    session.send(b"hello\r")
    session.read_until(b"You said: hello")
    session.send(b"!sudo poweroff\r")
    assert session.wait() == 0, session.text()[-2000:]
    assert "Container removed (session data saved for --resume)" in session.text(), session.text()[
        -1000:
    ]
    name = container_name(coi.prefix, str(workspace), 1)
    assert not incus.instance_exists(name)
    saved = json.loads(coi.ok("list", "--all", "--json").stdout)["saved_sessions"]
    assert [s["Workspace"] for s in saved] == [str(workspace)]


def test_detach_keeps_the_container_running(
    shell_session,
    coi: CoiRunner,
    workspace: Path,
    incus: Incus,  # type: ignore[no-untyped-def]
) -> None:
    session = shell_session()
    session.read_until(b"dummy> ")
    session.send(b"\x02d")  # tmux prefix (ctrl+b) then d: detach
    assert session.wait() == 0
    name = container_name(coi.prefix, str(workspace), 1)
    assert f"Container kept running - use 'coi attach {name}'" in session.text()
    assert incus.status(name) == "Running"


def test_exit_from_the_shell_keeps_the_container_running(
    shell_session,
    coi: CoiRunner,
    workspace: Path,
    incus: Incus,  # type: ignore[no-untyped-def]
) -> None:
    """The agent exits, then its shell: the tmux session is over but the container is not
    shutting down, so coi says at once that it runs on (it must not wait for a stop that
    is not coming, nor take it for one)."""
    session = shell_session()
    session.read_until(b"dummy> ")
    session.send(b"exit\r")
    session.read_until(b"code@")  # the shell the agent leaves behind (`; exec bash`)
    session.send(b"exit\r")
    ended = time.monotonic()
    assert session.wait() == 0
    took = time.monotonic() - ended
    name = container_name(coi.prefix, str(workspace), 1)
    assert f"Container kept running - use 'coi attach {name}'" in session.text()
    assert incus.status(name) == "Running"
    assert took < 12, f"coi shell took {took:.1f}s to see that the container runs on"


def test_sigterm_saves_the_session_and_leaves_it_running(
    shell_session,
    coi: CoiRunner,
    workspace: Path,
    incus: Incus,  # type: ignore[no-untyped-def]
) -> None:
    session = shell_session()
    session.read_until(b"dummy> ")
    session.send(b"keep me\r")
    session.read_until(b"You said: keep me")
    os.kill(session.pid, signal.SIGTERM)
    assert session.wait() == 143
    assert "Session data saved successfully" in session.text()
    name = container_name(coi.prefix, str(workspace), 1)
    assert incus.status(name) == "Running"
    logs = list((coi.home / "sessions-dummy").glob("*/.claude/projects/-workspace/*.jsonl"))
    assert logs and "keep me" in logs[0].read_text()


def test_resume_of_a_running_session_attaches_to_it(
    shell_session,
    coi: CoiRunner,
    workspace: Path,
    incus: Incus,  # type: ignore[no-untyped-def]
) -> None:
    started = coi.ok("shell", "--background", "--tool", "dummy", "-w", str(workspace))
    session_id = next(
        x for x in started.stderr.splitlines() if x.startswith("Session ID: ")
    ).split()[2]
    name = container_name(coi.prefix, str(workspace), 1)
    coi.ok("tmux", "send", name, "said in the background")
    session = shell_session(f"--resume={session_id}")
    # The same agent, with what it already said on screen: attached, not restarted.
    session.read_until(b"You said: said in the background")
    session.send(b"and in the foreground\r")
    session.read_until(b"You said: and in the foreground")
    session.send(b"\x02d")
    assert session.wait() == 0
    assert "Container already running, reusing..." in session.text()
    assert [i.name for i in incus.list_instances(coi.prefix)] == [name]
    assert incus.status(name) == "Running"
