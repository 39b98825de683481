"""The host monitor daemon: one per COI home (so one per host in normal use), run as root.

    python -m coi_tui.monitor.daemon [--home DIR] [--foreground]

Event sources, all multiplexed in one select() loop:
- proc connector: every exec (command-line rules, stdio check of the new process) and fork
  (spawn storms), attributed to a container by pid namespace;
- NFLOG from our own nft table `bridge coi_mon_<tag>`: first packets (TCP SYN, UDP) from each
  watched container's host-side veth: C2 ports, metadata, private networks, DNS;
- a /proc pass every scan_interval_sec (behavioural reverse-shell rules, I/O counters, veth
  byte counters), plus extra passes of a container shortly after its exec or SYN events.
Responses go through Responder; records to ~/.coi/audit/<c>.jsonl and ~/.coi/monitor.sock.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import heapq
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coi_tui.monitor import behaviour, procfs, rules
from coi_tui.monitor.config import MonitorConfig, load_monitor_config
from coi_tui.monitor.events import LEVEL_RANK, AuditLog, Broadcaster, Threat
from coi_tui.monitor.netlink import NflogReader, ProcConnector, ProcEvent

LOG_PREFIX = "coimon"


def tag_for(home: Path) -> str:
    return hashlib.sha256(str(home.resolve()).encode()).hexdigest()[:6]


def table_name(home: Path) -> str:
    return f"coi_mon_{tag_for(home)}"


def nflog_group(home: Path, config: MonitorConfig) -> int:
    return config.nflog_group or 1000 + int(tag_for(home), 16) % 30000


def nft(script: str) -> None:
    proc = subprocess.run(["nft", "-f", "-"], input=script, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"nft: {(proc.stderr.strip().splitlines() or ['failed'])[0]}")


class NftWatch:
    """Our own table: a set of watched host-side veths and log rules that copy first packets
    to NFLOG. It never drops or accepts anything (isolation is coi_tui/network's job)."""

    def __init__(self, table: str, group: int) -> None:
        self.table = table
        self.group = group

    def create(self) -> None:
        self.remove()
        log = f'log prefix "{LOG_PREFIX}" group {self.group}'
        nft(
            f"table bridge {self.table} {{\n"
            "  set ports { type ifname; }\n"
            "  chain watch { type filter hook prerouting priority -300; policy accept;\n"
            # limits with bursts: a flood must not starve the daemon, a burst of queries
            # (what DNS tunnels send) must still be seen whole
            f"    iifname @ports ether type ip tcp flags & (syn|ack) == syn "
            f"limit rate 2000/second burst 1000 packets {log}\n"
            f"    iifname @ports ether type ip udp dport 53 "
            f"limit rate 1000/second burst 1000 packets {log}\n"
            f"    iifname @ports ether type ip meta l4proto udp udp dport != 53 "
            f"limit rate 100/second burst 100 packets {log}\n"
            "  }\n}\n"
        )

    def add(self, iface: str) -> None:
        nft(f'add element bridge {self.table} ports {{ "{iface}" }}\n')

    def discard(self, iface: str) -> None:
        with contextlib.suppress(RuntimeError):
            nft(f'delete element bridge {self.table} ports {{ "{iface}" }}\n')

    def remove(self) -> None:
        subprocess.run(["nft", "delete", "table", "bridge", self.table], capture_output=True)


@dataclass
class Watched:
    name: str
    init_pid: int
    pidns: str
    ip: str
    veth: str
    ifindex: int
    home: Path
    status: str = "Running"  # Running | Frozen | Killed
    dns: rules.DnsWatch | None = None
    reads: rules.RateWatch = field(default_factory=lambda: rules.RateWatch(2.0))
    reads_slow: rules.RateWatch = field(default_factory=lambda: rules.RateWatch(5.0))
    sent: rules.RateWatch = field(default_factory=lambda: rules.RateWatch(10.0))
    rchar: dict[int, int] = field(default_factory=dict)
    read_total: int = 0
    forks: deque[float] = field(default_factory=deque)
    pids: set[int] = field(default_factory=set)
    unix_inodes: set[int] = field(default_factory=set)


def cgroup_freeze(name: str) -> bool:
    """Freeze through the cgroup directly (microseconds) before asking Incus (tens of ms,
    sometimes a second): the threat is contained at once, Incus then records the state."""
    # Only the freezer LXC itself uses (v1 on hybrid hosts, else v2), or `incus start` would
    # not thaw it.
    for path, value in (
        (f"/sys/fs/cgroup/freezer/lxc.payload.{name}/freezer.state", "FROZEN"),
        (f"/sys/fs/cgroup/lxc.payload.{name}/cgroup.freeze", "1"),
    ):
        if os.path.exists(path):
            with contextlib.suppress(OSError), open(path, "w") as f:
                f.write(value)
                return True
    return False


class Responder:
    """Level -> action (log, alert, pause, kill), de-duplicated per container and key."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.seen: dict[tuple[str, str], float] = {}
        self.pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="respond")

    def handle(self, watched: Watched, threat: Threat) -> None:
        config = self.daemon.config
        now = time.monotonic()
        if watched.status == "Killed":
            return
        key = (watched.name, threat.dedup_key)
        if now - self.seen.get(key, -1e9) < config.dedup_window_sec:
            return
        self.seen[key] = now
        if len(self.seen) > 1000:  # forget old keys
            self.seen = {k: t for k, t in self.seen.items() if now - t < config.dedup_window_sec}
        threat.container = watched.name
        wanted = config.actions.get(threat.level, "log")
        action = {"log": "logged", "alert": "alerted", "pause": "paused", "kill": "killed"}[wanted]
        extra: dict[str, Any] = {}
        if wanted in ("pause", "kill"):
            if wanted == "pause" and watched.status == "Frozen":
                action = "logged (already paused)"
            else:
                cgroup_freeze(watched.name)
                watched.status = "Killed" if wanted == "kill" else "Frozen"
                self.pool.submit(self._incus_action, watched.name, wanted)
        if threat.detected_at:
            extra["detect_to_action_ms"] = round((time.monotonic() - threat.detected_at) * 1000, 1)
        record = {**threat.record(action), **extra}
        self.daemon.emit(watched, record)

    def _incus_action(self, name: str, wanted: str) -> None:
        incus = self.daemon.incus
        try:
            if wanted == "pause":
                try:
                    incus.freeze(name)
                except Exception:
                    if incus.status(name) != "Frozen":
                        raise
            else:
                self.daemon.kill(name)
        except Exception as exc:
            self.daemon.log(f"{wanted} {name} failed: {exc}")


class Daemon:
    def __init__(self, home: Path, config: MonitorConfig, owner: tuple[int, int] | None) -> None:
        from coi_tui.incus import Incus

        self.home = home
        self.config = config
        self.owner = owner
        self.incus = Incus()
        self.audit = AuditLog(home, owner)
        self.watched: dict[str, Watched] = {}
        self.by_ns: dict[str, Watched] = {}
        self.by_ifindex: dict[int, Watched] = {}
        self.by_ip: dict[str, Watched] = {}
        self.timers: list[tuple[float, str]] = []
        self.pending: set[tuple[str, int]] = set()
        self.proc_queue: deque[tuple[ProcEvent, list[str], str, float]] = deque()
        self.stop = False
        self.gateway = ""
        self.nft = NftWatch(table_name(home), nflog_group(home, config))
        self.responder = Responder(self)
        self.idle_since = time.monotonic()
        self.dropped = 0

    def log(self, message: str) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
        print(f"{stamp} {message}", file=sys.stderr, flush=True)

    # ------------------------------------------------------------------ output
    def emit(self, watched: Watched, record: dict[str, Any]) -> None:
        self.audit.write(watched.name, record)
        self.broadcaster.publish(record)
        if LEVEL_RANK.get(record["level"], 0) >= 1:
            self.log(
                f"{record['level'].upper()} {watched.name} {record['rule_id']}: "
                f"{record['description']} -> {record['action']}"
            )

    def kill(self, name: str) -> None:
        from coi_tui.config.settings import load_settings
        from coi_tui.sessions.manager import SessionManager

        SessionManager(self.incus, load_settings(Path("/")), say=self.log).kill(name)

    # ------------------------------------------------------------------ containers
    def refresh(self) -> None:
        prefix = self.config.container_prefix
        try:
            instances = {i.name: i.status for i in self.incus.list_instances(prefix)}
        except Exception as exc:
            self.log(f"listing instances failed: {exc}")
            return
        for name in list(self.watched):
            status = instances.get(name)
            watched = self.watched[name]
            if status is None or status == "Stopped":
                self.forget(name)
            elif status == "Running" and watched.status == "Frozen":
                watched.status = "Running"  # `coi unfreeze` or `incus start`
                self.broadcaster.publish_event(
                    {"type": "status", "container": name, "status": "Running"}
                )
        for name, status in instances.items():
            if status == "Running" and name not in self.watched:
                self.watch(name)
        if self.watched:
            self.idle_since = time.monotonic()

    def watch(self, name: str) -> None:
        try:
            state = self.incus.instance_state(name)
        except Exception:
            return
        pid = int(state.get("pid") or 0)
        pidns = procfs.pid_ns(pid) if pid else ""
        if not pidns:
            return
        eth = (state.get("network") or {}).get("eth0") or {}
        veth = str(eth.get("host_name", ""))
        ip = next(
            (a["address"] for a in eth.get("addresses") or [] if a.get("family") == "inet"), ""
        )
        watched = Watched(name, pid, pidns, ip, veth, procfs.ifindex(veth), self.home)
        watched.dns = rules.DnsWatch(self.config)
        self.watched[name] = watched
        self.by_ns[pidns] = watched
        if watched.ifindex:
            self.by_ifindex[watched.ifindex] = watched
        if ip:
            self.by_ip[ip] = watched
        if veth:
            try:
                self.nft.add(veth)
            except RuntimeError as exc:
                self.log(f"{name}: {exc}")
        watched.pids = set(self.container_pids(watched))
        for pid in watched.pids:
            watched.rchar[pid] = procfs.io_counters(pid)[0]
        watched.sent.add(time.monotonic(), procfs.net_tx_bytes(veth))
        self.broadcaster.publish_event({"type": "watch", "container": name, "ip": ip})
        self.log(f"watching {name} (init {pid}, {ip or 'no ip'}, {veth or 'no veth'})")

    def forget(self, name: str) -> None:
        watched = self.watched.pop(name, None)
        if watched is None:
            return
        self.by_ns.pop(watched.pidns, None)
        self.by_ifindex.pop(watched.ifindex, None)
        self.by_ip.pop(watched.ip, None)
        if watched.veth:
            self.nft.discard(watched.veth)
        self.broadcaster.publish_event({"type": "unwatch", "container": name})
        self.log(f"stopped watching {name}")

    def container_pids(self, watched: Watched, nsmap: dict[int, str] | None = None) -> list[int]:
        if nsmap is None:
            return [p for p in procfs.all_pids() if procfs.pid_ns(p) == watched.pidns]
        return [p for p, ns in nsmap.items() if ns == watched.pidns]

    def owner_of(self, pid: int) -> Watched | None:
        return self.by_ns.get(procfs.pid_ns(pid)) if self.by_ns else None

    # ------------------------------------------------------------------ event handlers
    def capture_proc_events(self, procs: ProcConnector, wake: int) -> None:
        """Reader thread: takes each exec/fork as it comes and at once snapshots what the
        short-lived processes (env, cat, true) still show, before the main loop judges
        anything: they are gone within a millisecond."""
        while not self.stop:
            events = procs.read()
            if not self.by_ns:
                continue
            seen: list[tuple[ProcEvent, list[str], str, float]] = []
            for event in events:
                if event.kind == "exec":
                    pidns = procfs.pid_ns(event.pid)  # one readlink filters out host noise
                    if pidns not in self.by_ns:
                        continue
                    argv = procfs.read_cmdline(event.pid)
                    seen.append((event, argv, pidns, time.monotonic()))
                elif event.kind == "fork":
                    pidns = procfs.pid_ns(event.parent) or procfs.pid_ns(event.pid)
                    seen.append((event, [], pidns, time.monotonic()))
            if seen:
                self.proc_queue.extend(seen)
                with contextlib.suppress(BlockingIOError):
                    os.write(wake, b"x")

    def on_proc_events(self) -> None:
        while self.proc_queue:
            event, argv, pidns, at = self.proc_queue.popleft()
            watched = self.by_ns.get(pidns)
            if watched is None:
                continue
            if event.kind == "exec":
                self.on_exec(watched, event.pid, argv, at)
            else:
                self.on_fork(watched, event.pid, at)

    def on_exec(self, watched: Watched, pid: int, argv: list[str], now: float) -> None:
        if watched.status == "Killed":
            return
        watched.pids.add(pid)
        proc = procfs.read_proc(pid)
        exe = proc.exe if proc is not None else ""
        found = rules.cmdline_threats(pid, argv or (proc.cmdline if proc else []), exe)
        view = behaviour.ContainerView(watched.init_pid, [pid], known_unix=watched.unix_inodes)
        found += behaviour.analyse(view, only={pid})
        self.respond(watched, found, now)
        # pipes and sockets are often wired up just after the exec: look again shortly
        self.schedule(watched.name, 0.15)

    def on_fork(self, watched: Watched, pid: int, now: float) -> None:
        if watched.status == "Killed":
            return
        watched.pids.add(pid)
        forks = watched.forks
        forks.append(now)
        while forks and forks[0] < now - 1.0:
            forks.popleft()
        self.respond(watched, rules.spawn_threat(len(forks), self.config.spawn_rate_per_sec), now)

    def on_packet(self, payload: bytes, physindev: int, now: float) -> None:
        pkt = rules.parse_packet(payload)
        if pkt is None:
            return
        watched = self.by_ifindex.get(physindev) or self.by_ip.get(pkt.src)
        if watched is None or watched.status == "Killed":
            return
        found = rules.packet_threats(pkt, self.config, self.gateway)
        if pkt.proto == "udp" and pkt.dport == 53 and watched.dns is not None:
            found += watched.dns.feed(pkt, now)
        self.respond(watched, found, now)
        if pkt.proto == "tcp":
            # a new connection: a relay or a dup2 onto stdio may follow within moments
            for delay in (0.03, 0.2, 0.6):
                self.schedule(watched.name, delay)

    def respond(self, watched: Watched, found: list[Threat], now: float) -> None:
        for threat in sorted(found, key=lambda t: -LEVEL_RANK[t.level]):
            threat.detected_at = threat.detected_at or now
            self.responder.handle(watched, threat)

    def schedule(self, name: str, delay: float) -> None:
        due = time.monotonic() + delay
        slot = (name, round(due * 10))  # one extra pass per container per 100 ms at most
        if slot in self.pending:
            return
        self.pending.add(slot)
        heapq.heappush(self.timers, (due, name))

    # ------------------------------------------------------------------ periodic pass
    def scan(self, watched: Watched, full: bool, nsmap: dict[int, str] | None = None) -> None:
        if watched.status == "Killed":
            return
        now = time.monotonic()
        pids = self.container_pids(watched, nsmap)
        watched.pids = set(pids)
        if len(watched.unix_inodes) > 20000:
            watched.unix_inodes.clear()
        view = behaviour.ContainerView(watched.init_pid, pids, known_unix=watched.unix_inodes)
        found = behaviour.analyse(view)
        if full:
            found += self.volumes(watched, pids, now)
            count = self.config.process_count_threshold
            if count and len(pids) > count:
                found.append(
                    rules.threat(
                        "proc.count",
                        "high",
                        "process",
                        "Process count spike detected",
                        f"{len(pids)} processes (threshold {count})",
                        {"process_count": {"count": len(pids), "threshold": count}},
                        "count",
                    )
                )
        self.respond(watched, found, now)

    def volumes(self, watched: Watched, pids: list[int], now: float) -> list[Threat]:
        current = {pid: procfs.io_counters(pid)[0] for pid in pids}
        for pid, rchar in current.items():
            watched.read_total += max(0, rchar - watched.rchar.get(pid, 0))
        watched.rchar = current
        config = self.config
        found = rules.volume_threats(
            "read",
            watched.reads.add(now, watched.read_total),
            2.0,
            config.file_read_threshold_mb,
            "read",
        )
        slow = watched.reads_slow.add(now, watched.read_total)
        if not found and slow / (1 << 20) > config.file_read_rate_mb_per_sec * 5.0:
            found = rules.volume_threats(
                "read", slow, 5.0, config.file_read_rate_mb_per_sec * 5, "read"
            )
        sent = watched.sent.add(now, procfs.net_tx_bytes(watched.veth))
        watched.sent.window = config.exfil_window_sec
        found += rules.volume_threats(
            "send", sent, config.exfil_window_sec, config.exfil_threshold_mb, "send"
        )
        return found

    # ------------------------------------------------------------------ main loop
    def run(self) -> None:
        from coi_tui.config.settings import load_settings

        settings = load_settings(Path("/"))
        network = self.incus.get_network(self.config.bridge) or {}
        self.gateway = str((network.get("config") or {}).get("ipv4.address", "")).split("/")[0]
        self.broadcaster = Broadcaster(self.home / "monitor.sock", self.owner)
        procs = ProcConnector()
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        threading.Thread(target=self.capture_proc_events, args=(procs, wake_w), daemon=True).start()
        self.nft.create()
        nflog = NflogReader(self.nft.group)
        self.log(
            f"monitor started (pid {os.getpid()}, table bridge {self.nft.table}, "
            f"nflog group {self.nft.group}, prefix {settings.container_prefix!r})"
        )
        next_scan = next_refresh = time.monotonic()
        try:
            while not self.stop:
                now = time.monotonic()
                if now >= next_refresh:
                    self.refresh()
                    next_refresh = now + 1.0
                    if not self.watched and now - self.idle_since > self.config.idle_exit_sec:
                        self.log("no coi containers: exiting")
                        break
                if now >= next_scan:
                    # one walk of /proc for every container
                    nsmap = {p: procfs.pid_ns(p) for p in procfs.all_pids()}
                    for watched in list(self.watched.values()):
                        self.scan(watched, full=True, nsmap=nsmap)
                    next_scan = now + self.config.scan_interval_sec
                while self.timers and self.timers[0][0] <= now:
                    due, name = heapq.heappop(self.timers)
                    self.pending.discard((name, round(due * 10)))
                    if name in self.watched:
                        self.scan(self.watched[name], full=False)
                due = min(next_scan, next_refresh, self.timers[0][0] if self.timers else 1e18)
                timeout = max(0.0, due - time.monotonic())
                ready, _, _ = select.select([wake_r, nflog, self.broadcaster], [], [], timeout)
                now = time.monotonic()
                for source in ready:
                    if source is wake_r:
                        with contextlib.suppress(BlockingIOError):
                            os.read(wake_r, 4096)
                        self.on_proc_events()
                    elif source is nflog:
                        for packet in nflog.read():
                            self.on_packet(packet.payload, packet.physindev, now)
                    else:
                        self.broadcaster.accept()
        finally:
            self.nft.remove()
            nflog.close()
            procs.close()
            self.broadcaster.close()
            self.responder.pool.shutdown(wait=True)
            self.log("monitor stopped")


# ---------------------------------------------------------------------- single instance
def lock_path(home: Path) -> Path:
    return home / "monitor.lock"


def pid_path(home: Path) -> Path:
    return home / "monitor.pid"


def running_pid(home: Path) -> int:
    """The pid of the daemon holding this home's lock, or 0."""
    path = lock_path(home)
    if not path.exists():
        return 0
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return 0
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return 0  # nobody holds it
    except BlockingIOError:
        try:
            return int(pid_path(home).read_text().strip() or 0)
        except (OSError, ValueError):
            return -1  # held, pid not written yet
    finally:
        os.close(fd)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="coi-monitor-daemon")
    parser.add_argument("--home", help="the COI home to serve (default $COI_HOME or ~/.coi)")
    parser.add_argument("--owner", help="uid:gid owning the files the daemon writes")
    args = parser.parse_args(argv)
    if args.home:
        os.environ["COI_HOME"] = args.home
    from coi_tui.paths import coi_home

    home = coi_home()
    home.mkdir(parents=True, exist_ok=True)
    owner = tuple(int(x) for x in args.owner.split(":")) if args.owner else None
    if os.geteuid() != 0:
        print("coi-monitor-daemon: needs root (proc connector, NFLOG, nftables)", file=sys.stderr)
        return 1
    fd = os.open(lock_path(home), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return 0  # already running: a second start is a no-op
    pid_path(home).write_text(f"{os.getpid()}\n")
    if owner is not None:  # the user's own home: leave nothing there they cannot remove
        os.fchown(fd, *owner)
        os.chown(pid_path(home), *owner)
    daemon = Daemon(home, load_monitor_config(_settings()), owner)  # type: ignore[arg-type]

    def stop(_signum: int, _frame: object) -> None:
        daemon.stop = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        daemon.run()
    finally:
        with contextlib.suppress(OSError):
            pid_path(home).unlink()
        os.close(fd)
    return 0


def _settings() -> Any:
    from coi_tui.config.settings import load_settings

    return load_settings(Path("/"))


if __name__ == "__main__":
    sys.exit(main())
