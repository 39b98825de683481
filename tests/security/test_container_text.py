"""Attack (issue 16, class 9, and the lows on the audit log and root file handling): the
agent runs processes whose command lines carry terminal escapes (an OSC 52 clipboard write,
a CSI that clears the screen), a C1 control, a bidi override and Textual markup, and makes
the monitor quote them (a credential read). What `coi audit --format text`, `coi audit`
(json), `coi monitor` and `coi top --procs` print must hold none of those characters raw:
they are shown as visible escapes. The audit file itself stays ASCII.

The root daemon serves a COI home where symlinks were planted first (the audit log, the event
socket and monitor.log pointing at a file outside): it writes, chmods and chowns none of
their targets.

The container gets no network traffic from this test (a file read triggers the rule)."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.cleanup import cleanup_test_leftovers

pytestmark = [
    pytest.mark.incus,
    pytest.mark.skipif(os.geteuid() != 0, reason="the monitor daemon needs root"),
]

REPO = Path(__file__).resolve().parents[2]
BRIDGE = "coibr0"
# printf escapes (run in the container): OSC 52 clipboard write ended by BEL, a CSI clearing
# the screen, U+202E (bidi override) and U+009B (C1 CSI) as UTF-8, and Textual markup
PAYLOAD = (
    r"\033]52;c;cm0gLXJmIH4=\007\033[2J\033[1;1H\342\200\256gnp.exe"
    r"[link=https://evil.example]x[/link][b]y[/b][/]\302\233"
)
RAW = [b"\x1b", b"\x07", b"\xc2\x9b", b"\xe2\x80\xae"]


@dataclass
class Daemon:
    home: Path
    env: dict[str, str]
    outside: Path
    messages: list[dict[str, Any]] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)

    def coi(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [sys.executable, "-m", "coi_tui.cli.main", *args],
            env=self.env,
            cwd=REPO,
            capture_output=True,
            timeout=60,
        )

    def listen(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(str(self.home / "monitor.sock"))
        buffer = b""
        while True:
            try:
                data = sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            buffer += data
            *lines, buffer = buffer.split(b"\n")
            with self.cond:
                self.messages.extend(json.loads(line) for line in lines if line)
                self.cond.notify_all()

    def wait(self, match: Any, timeout: float, what: str) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                found = next((m for m in self.messages if match(m)), None)
                if found is not None:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {what} within {timeout:g}s: {self.messages[-5:]}")
                self.cond.wait(left)


def planted_home(base: Path, prefix: str) -> tuple[Path, Path, dict[str, Path]]:
    """A COI home whose audit log, event socket and monitor.log are symlinks to files
    outside it (what a user could plant for the root daemon)."""
    home = base / "home"
    outside = base / "outside"
    for path in (home / "audit", home / "logs", outside):
        path.mkdir(parents=True)
    targets = {}
    for name in ("audit", "sock", "log"):
        target = outside / name
        target.write_text("untouched\n")
        target.chmod(0o600)
        targets[name] = target
    (home / "monitor.sock").symlink_to(targets["sock"])
    (home / "logs" / "monitor.log").symlink_to(targets["log"])
    (home / "config.toml").write_text("[monitoring]\nidle_exit_sec = 60\n")
    return home, outside, targets


@pytest.fixture(scope="module")
def daemon(
    run_prefix: str, incus: Any, image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Daemon, str, dict[str, Path]]]:
    prefix = f"{run_prefix}t"
    home, outside, targets = planted_home(tmp_path_factory.mktemp("container-text"), prefix)
    name = f"{prefix}{uuid.uuid4().hex[:8]}-1"  # a coi name: `coi top` lists it
    (home / "audit" / f"{name}.jsonl").symlink_to(targets["audit"])
    env = {
        **os.environ,
        "COI_HOME": str(home),
        "COI_CONTAINER_PREFIX": prefix,
        "PYTHONPATH": str(REPO),
    }
    env.pop("COI_CONFIG", None)
    mon = Daemon(home, env, outside)
    try:
        started = mon.coi("monitor", "--daemon")
        assert started.returncode == 0, started.stderr
        sock = home / "monitor.sock"
        deadline = time.monotonic() + 30
        while not (sock.exists() and stat.S_ISSOCK(sock.lstat().st_mode)):
            assert time.monotonic() < deadline, "the daemon did not bind its socket"
            time.sleep(0.05)
        threading.Thread(target=mon.listen, daemon=True).start()
        nic = {"type": "nic", "network": BRIDGE, "name": "eth0"}
        incus.create_instance(name, image, devices={"eth0": nic}, start=True)
        mon.wait(lambda m: m.get("type") == "watch" and m.get("container") == name, 60, "watch")
        yield mon, name, targets
    finally:
        mon.coi("monitor", "--stop")
        cleanup_test_leftovers(incus, prefix)


def assert_inert(output: bytes, what: str) -> None:
    for raw in RAW:
        assert raw not in output, f"{what} printed {raw!r} raw:\n{output[-2000:]!r}"


def test_hostile_command_lines_are_printed_inert(
    daemon: tuple[Daemon, str, dict[str, Path]], incus: Any
) -> None:
    mon, name, _ = daemon
    # a long-lived process named by the payload (for the process lists), then a credential
    # read whose argument carries it (for the audit record); `sleep |` keeps `cat` alive
    # so its command line is read for sure
    script = (
        f"P=$(printf '{PAYLOAD}'); "
        'setsid bash -c \'exec -a "$0" sleep 300\' "$P" </dev/null >/dev/null 2>&1 & '
        'sleep 2 | cat "/root/.ssh/id_$P" - >/dev/null 2>&1; true'
    )
    result = incus.exec_capture(name, ["bash", "-c", script], timeout=60)
    assert result.exit_code == 0, result.stderr
    record = mon.wait(
        lambda m: (
            m.get("type") == "threat"
            and m.get("container") == name
            and "\x1b]52;c;" in str(m.get("description"))
        ),
        30,
        "a credential threat quoting the payload",
    )
    assert "\u202e" in record["description"]  # the record keeps what the container did

    audit_file = mon.home / "audit" / f"{name}.jsonl"
    assert audit_file.read_bytes().isascii()  # `cat` of the log is safe too

    text = mon.coi("audit", name, "--format", "text")
    assert text.returncode == 0, text.stderr
    assert_inert(text.stdout, "coi audit --format text")
    assert b"\\x1b]52;c;cm0gLXJmIH4=\\x07\\x1b[2J" in text.stdout
    assert b"\\u202egnp.exe[link=https://evil.example]x[/link]" in text.stdout
    assert b"\\x9b" in text.stdout

    as_json = mon.coi("audit", name)
    assert_inert(as_json.stdout, "coi audit (json)")
    assert any("\x1b]52" in json.loads(line)["description"] for line in as_json.stdout.splitlines())

    snapshot = mon.coi("monitor", name)
    assert snapshot.returncode == 0, snapshot.stderr
    assert_inert(snapshot.stdout + snapshot.stderr, "coi monitor")
    assert b"\\x1b]52;c;" in snapshot.stdout  # in the threats and the process list
    assert b"PROCESSES" in snapshot.stdout

    top = mon.coi("top", name, "--procs", "-i", "0.2")
    assert top.returncode == 0, top.stderr
    assert_inert(top.stdout, "coi top --procs")
    assert b"\\x1b]52;c;" in top.stdout


def test_the_root_daemon_follows_no_planted_symlink(
    daemon: tuple[Daemon, str, dict[str, Path]], incus: Any
) -> None:
    mon, name, targets = daemon
    # a record to write (the audit log's planted link is met on the first one)
    script = "sleep 1 | cat /root/.ssh/id_rsa - >/dev/null 2>&1; true"
    assert incus.exec_capture(name, ["bash", "-c", script], timeout=60).exit_code == 0
    mon.wait(lambda m: m.get("type") == "threat" and m.get("container") == name, 30, "a threat")
    # the daemon started, served its socket, wrote its log and a record, all in place of
    # the planted links
    for target in targets.values():
        info = target.stat()
        assert target.read_text() == "untouched\n", target
        assert (info.st_uid, info.st_mode & 0o777) == (0, 0o600), target
    assert sorted(p.name for p in mon.outside.iterdir()) == ["audit", "log", "sock"]
    assert not (mon.home / "monitor.sock").is_symlink()
    assert not (mon.home / "logs" / "monitor.log").is_symlink()
    assert (mon.home / "logs" / "monitor.log").read_text()  # the daemon's own log
    audit = mon.home / "audit" / f"{name}.jsonl"
    assert not audit.is_symlink() and audit.read_text().count("cred.ssh-key")
