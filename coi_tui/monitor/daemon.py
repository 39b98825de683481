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
import ctypes
import errno
import fcntl
import functools
import heapq
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
import traceback
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coi_tui.core import nofollow
from coi_tui.core.cgroups import PAYLOAD, payload_cgroups
from coi_tui.core.paths import coi_home, home_tag
from coi_tui.core.text import clean
from coi_tui.monitor import behaviour, filewatch, membership, mounts, procfs, rulepacks, rules
from coi_tui.monitor.canary import PAYLOAD_BYTES, NetworkMatcher, canary_paths, mid_stream
from coi_tui.monitor.config import (
    DAEMON_SETTINGS,
    DAEMON_SETTINGS_LIMIT,
    KILLED_BY_MONITOR,
    KILLED_KEY,
    SESSION_KEY,
    DaemonSettings,
    MonitorConfig,
    for_session,
    parse_daemon_settings,
)
from coi_tui.monitor.egress import EgressWatch
from coi_tui.monitor.events import LEVEL_RANK, AuditLog, Broadcaster, Threat
from coi_tui.monitor.incus_socket import IncusFailed, IncusSocket
from coi_tui.monitor.netlink import NflogReader, ProcConnector, ProcEvent, parse_proc_events
from coi_tui.monitor.pidfile import open_log
from coi_tui.monitor.privilege import STARTED, PrivilegeWatch, id_detail, parse_id_detail

LOG_PREFIX = "coimon"
# Spawn storms: live processes are counted (one /proc walk) at most this often during a fork
# burst, and a burst is still judged this long after its rate last exceeded the threshold.
SPAWN_CHECK_SEC = 0.5
SPAWN_BURST_LINGER_SEC = 1.0
# What is kept of each exec for pipeline correlation and the stats dump (rules see the whole
# command line at the exec; a container chooses its argv, up to megabytes each).
RECENT_EXECS = 1024
RECENT_ARGS = 64
RECENT_BYTES = 4096
# Command-line rules of queued execs run at most this long per loop turn, so a flood of
# huge command lines never holds back intake, the behavioural checks, timers or scans; at
# most RULE_BACKLOG execs wait (the oldest are then judged by behaviour only, and counted).
RULE_BUDGET_SEC = 0.05
RULE_YIELD_SEC = 0.005  # after this long, they also stop as soon as new execs are waiting
RULE_BACKLOG = 256
# What the capture process forwards of a command line (the rules' input): all of it up to
# RULE_ARGV_BYTES; beyond, the first arguments up to RULE_HEAD_BYTES and the last up to the
# rest, each argument longer than RULE_ARG_BYTES cut to its first 3/4 and last 1/4 of that
# (a payload at either end of a padded `sh -c` is kept).
RULE_ARGV_BYTES = 65536
RULE_HEAD_BYTES = 49152
RULE_ARG_BYTES = 16384
# A fire-drill container (`coi health --drill`, health/drill.py): its threats are logged, never
# acted on. Trusted only with the drill's own name shape and this key set at creation (no coi
# config writes user.* keys, and a container cannot set its own config).
DRILL_KEY = "user.coi.drill"
EXES_KEPT = 4096  # programs of recent execs kept per container (file events name them)
EXEC_RECORD_WAIT_SEC = 0.1  # how long a file event waits for its gone process's exec record
EXEC_WAIT_BUDGET_SEC = 0.2  # ... and all such waits within a second
DRILL_INFIX = "drill-"


def bound_argv(argv: list[str]) -> list[str]:
    """A command line cut to the rules' input bounds (see RULE_ARGV_BYTES)."""
    if sum(len(a) + 1 for a in argv) <= RULE_ARGV_BYTES:
        return argv

    def cut(arg: str) -> str:
        if len(arg) <= RULE_ARG_BYTES:
            return arg
        head = RULE_ARG_BYTES * 3 // 4
        return arg[:head] + "\n" + arg[-(RULE_ARG_BYTES - head) :]

    head: list[str] = []
    room = RULE_HEAD_BYTES
    index = 0
    while index < len(argv) and room > 0:
        head.append(cut(argv[index])[:room])
        room -= len(head[-1]) + 1
        index += 1
    tail: list[str] = []
    room = RULE_ARGV_BYTES - RULE_HEAD_BYTES
    last = len(argv) - 1
    while last >= index and room > 0:
        arg = cut(argv[last])
        tail.insert(0, arg[-room:])
        room -= len(tail[0]) + 1
        last -= 1
    return head + tail


def clip_argv(argv: list[str]) -> list[str]:
    """At most RECENT_ARGS arguments and RECENT_BYTES characters of them."""
    out: list[str] = []
    room = RECENT_BYTES
    for arg in argv[:RECENT_ARGS]:
        if room <= 0:
            break
        out.append(arg[:room])
        room -= len(out[-1]) + 1
    return out


def tag_for(home: Path) -> str:
    return home_tag(home)


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
            # connections whose first data segments were logged (canary.py)
            "  set flows { typeof ip saddr . ip daddr . tcp sport . tcp dport; "
            "size 65535; flags dynamic,timeout; timeout 30s; }\n"
            "  chain watch { type filter hook prerouting priority -300; policy accept;\n"
            # limits with bursts: a flood must not starve the daemon, a burst of queries
            # (what DNS tunnels send) must still be seen whole
            f"    iifname @ports ether type ip tcp flags & (syn|ack) == syn "
            f"limit rate 2000/second burst 1000 packets {log}\n"
            # the first data of each connection, where a canary's value sent in clear
            # shows: 6 segments, then 1 a second, per connection; 200 a second in all
            f"    iifname @ports ether type ip meta l4proto tcp tcp flags & (syn|rst) == 0 "
            f"ip length > 52 add @flows {{ ip saddr . ip daddr . tcp sport . tcp dport "
            f"limit rate 1/second burst 6 packets }} limit rate 200/second burst 200 packets "
            f"{log}\n"
            f"    iifname @ports ether type ip udp dport 53 "
            f"limit rate 1000/second burst 1000 packets {log}\n"
            f"    iifname @ports ether type ip meta l4proto udp udp dport != 53 "
            f"limit rate 100/second burst 100 packets {log}\n"
            # pings: a sweep of the bridge is discovery, as a port scan is
            f"    iifname @ports ether type ip icmp type echo-request "
            f"limit rate 50/second burst 50 packets {log}\n"
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
    """One container as it was when it was discovered: its identity is its Incus instance
    id (volatile.uuid) and its init's pid namespace, never its name (a slot killed and
    started again gets the same name and is another container)."""

    name: str
    init_pid: int
    pidns: str
    ip: str
    veth: str
    ifindex: int
    home: Path
    uuid: str = ""
    status: str = "Running"  # Running | Frozen | Killed
    dns: rules.DnsWatch | None = None
    canaries: NetworkMatcher | None = None  # its decoy credentials' values on the wire
    reads: rules.RateWatch = field(default_factory=lambda: rules.RateWatch(2.0))
    reads_slow: rules.RateWatch = field(default_factory=lambda: rules.RateWatch(5.0))
    sent: rules.RateWatch = field(default_factory=lambda: rules.RateWatch(10.0))
    received: rules.RateWatch = field(default_factory=lambda: rules.RateWatch(10.0))
    rchar: dict[int, int] = field(default_factory=dict)
    read_total: int = 0  # bytes read from files (not pipes, devices or the network)
    received_total: int = 0
    large_read: tuple[float, float, float, float, str] | None = None  # when, MB, window,
    # threshold MB, reader
    scans: rules.ScanWatch = field(default_factory=rules.ScanWatch)
    privilege: PrivilegeWatch | None = None  # uid changes, setuid baseline, auth logs
    # recent execs (monotonic time, pid, parent, argv clipped by clip_argv, stdin, stdout
    # link targets): pipeline correlation and a debugging record
    recent: deque[tuple[float, int, int, list[str], str, str]] = field(
        default_factory=lambda: deque(maxlen=RECENT_EXECS)
    )
    scripts: dict[int, tuple[str, list[str], float]] = field(default_factory=dict)
    live: int = 0  # processes alive at the last check during a fork burst
    live_checked: float = -1e9
    burst_peak: int = 0  # the most forks within one second during the current burst
    burst_seen: float = -1e9  # when the fork rate was last above the threshold
    execs: int = 0
    execs_without_argv: int = 0
    unjudged: int = 0  # execs whose command-line rules were dropped from a full queue
    unjudged_reported: float = -1e9
    forks: deque[float] = field(default_factory=deque)
    pids: set[int] = field(default_factory=set)
    local_sockets: set[int] = field(default_factory=set)  # inodes the kernel named unix
    files: filewatch.ContainerFiles | None = None  # its sensitive-file marks
    egress: EgressWatch | None = None  # its egress proxy log (monitor/egress.py)
    mount_table: mounts.MountWatch | None = None  # its init's mounts, compared each pass
    files_lost: int = 0  # file events the kernel dropped (queue overflow), reported
    # pid -> its program (path, and device:inode) as read at its exec
    exes: dict[int, tuple[str, str]] = field(default_factory=dict)
    # the daemon's config with this session's own thresholds and actions (SESSION_KEY)
    config: MonitorConfig = field(default_factory=MonitorConfig)

    def remember_exe(self, pid: int, exe: str, ident: str) -> None:
        if len(self.exes) >= EXES_KEPT:
            del self.exes[next(iter(self.exes))]  # the oldest
        self.exes.pop(pid, None)
        self.exes[pid] = (exe, ident)

    @property
    def identity(self) -> str:
        return f"{self.uuid}/{self.pidns}"

    def alive(self) -> bool:
        """Whether the container this record describes still runs (its init is alive in
        its own pid namespace): after a kill or a stop its name may already be another's."""
        return procfs.pid_ns(self.init_pid) == self.pidns


def cgroup_freeze(name: str) -> bool:
    """Freeze through the cgroup directly (microseconds) before asking Incus (tens of ms,
    sometimes a second): the threat is contained at once, Incus then records the state."""
    # Only the freezer LXC itself uses (v1 on hybrid hosts, else v2), or `incus start` would
    # not thaw it.
    for folder, file, value in (
        (f"/sys/fs/cgroup/freezer/{PAYLOAD}{name}", "freezer.state", b"FROZEN"),
        (f"/sys/fs/cgroup/{PAYLOAD}{name}", "cgroup.freeze", b"1"),
    ):
        if os.path.exists(f"{folder}/{file}"):
            with contextlib.suppress(OSError):
                nofollow.write_existing(folder, file, value)
                return True
    return False


# Cgroup folders LXC makes for a running container (core/cgroups.payload_cgroups): whether one
# appeared, went or was made again tells refresh() when asking Incus is worth it.
INCUS_LIST_BACKSTOP_SEC = 10.0  # Incus is still asked this often when no cgroup changed
FULL_SWEEP_SEC = 5.0  # every check of every container at least this often (the backstop)


def cgroup_thawed(name: str) -> bool:
    """Whether the freezer cgroup_freeze writes says `name` runs (True when unknown: then
    Incus is asked)."""
    for path, frozen in (
        (f"/sys/fs/cgroup/freezer/{PAYLOAD}{name}/freezer.state", ("FROZEN", "FREEZING")),
        (f"/sys/fs/cgroup/{PAYLOAD}{name}/cgroup.freeze", ("1",)),
    ):
        try:
            with open(path) as f:
                return f.read().strip() not in frozen
        except FileNotFoundError:
            continue
        except OSError:
            return True
    return True


class Responder:
    """Level -> action (log, alert, pause, kill), de-duplicated per container and key."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.seen: dict[tuple[str, str], float] = {}
        self.pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="respond")
        self.drills: dict[str, bool] = {}  # instance identity -> a fire-drill container

    def is_drill(self, watched: Watched) -> bool:
        """Named `<prefix>drill-...` (never a session slot's shape) and labelled DRILL_KEY on
        this very instance (its volatile.uuid); asked of Incus once per container."""
        if not watched.uuid or not watched.name.startswith(
            self.daemon.config.container_prefix + DRILL_INFIX
        ):
            return False
        if watched.identity not in self.drills:
            try:
                config = self.daemon.incus.instance_config(watched.name)
            except Exception:
                return False  # asked again at the next threat
            labelled = config.get(DRILL_KEY) == "true"
            self.drills[watched.identity] = labelled and config.get("volatile.uuid") == watched.uuid
        return self.drills[watched.identity]

    def handle(self, watched: Watched, threat: Threat) -> None:
        config = self.daemon.config
        now = time.monotonic()
        if watched.status == "Killed":
            return
        key = (watched.identity, threat.dedup_key)
        if now - self.seen.get(key, -1e9) < config.dedup_window_sec:
            return
        self.seen[key] = now
        if len(self.seen) > 1000:  # forget old keys
            self.seen = {k: t for k, t in self.seen.items() if now - t < config.dedup_window_sec}
        threat.container = watched.name
        if threat.category == "credential_access" and watched.egress is not None:
            watched.egress.secret_at = time.time()  # a new destination soon after: HIGH
        wanted = watched.config.actions.get(threat.level, "log")
        if wanted in ("pause", "kill") and self.is_drill(watched):
            wanted = "log"  # the drill's probes must be seen, not stopped
        action = {"log": "logged", "alert": "alerted", "pause": "paused", "kill": "killed"}[wanted]
        extra: dict[str, Any] = {}
        if wanted in ("pause", "kill"):
            if wanted == "pause" and watched.status == "Frozen":
                action = "logged (already paused)"
            else:
                if watched.alive():  # else the name may already be a successor's
                    cgroup_freeze(watched.name)
                watched.status = "Killed" if wanted == "kill" else "Frozen"
                self.pool.submit(self._incus_action, watched, wanted)
        if threat.detected_at:
            extra["detect_to_action_ms"] = round((time.monotonic() - threat.detected_at) * 1000, 1)
        record = {**threat.record(action), **extra}
        self.daemon.emit(watched, record)

    def _incus_action(self, watched: Watched, wanted: str) -> None:
        """Runs in a worker, maybe seconds later: acts only on the container that was
        judged (same instance id, init still alive), never on a successor of that name."""
        incus = self.daemon.incus
        name = watched.name
        try:
            if not self.daemon.same_container(watched):
                self.daemon.log(f"{wanted} {name}: the container judged is gone; not acting")
                return
            if wanted == "pause":
                try:
                    incus.freeze(name)
                except Exception:
                    if incus.status(name) != "Frozen":
                        raise
            else:
                self.daemon.kill(name, expect_id=watched.uuid)
        except Exception as exc:
            self.daemon.log(f"{wanted} {name} failed: {exc}")


class Daemon:
    def __init__(
        self,
        home: Path,
        config: MonitorConfig,
        owner: tuple[int, int] | None,
        packs: rulepacks.PackSet | None = None,
    ) -> None:
        self.home = home
        self.config = config
        self.owner = owner
        self.incus = IncusSocket()
        self.audit = AuditLog(home, owner, say=self.log)
        self.watched: dict[str, Watched] = {}
        self.by_ns: dict[str, Watched] = {}  # by the pid namespace of the container's init
        self.by_ifindex: dict[int, Watched] = {}
        self.by_ip: dict[str, Watched] = {}
        self.timers: list[tuple[float, str]] = []
        self.pending: set[tuple[str, int]] = set()
        self.proc_queue: deque[tuple[ProcEvent, list[str], str, float, int, tuple[str, str]]] = (
            deque()
        )
        # execs whose command-line rules are still to run (see RULE_BUDGET_SEC)
        self.rule_queue: deque[tuple[Watched, int, int, list[str], str, float]] = deque()
        self.rules_skipped = 0
        self.lost_logged_at = -1e9  # see capture_lost
        self.capture_r = -1
        self.capture_buffer = b""
        self.capture_ctl = -1
        self.dump_requested = False
        self.exec_wait_since = self.exec_wait_spent = 0.0  # see await_exec_record
        self.faults = 0  # times the loop was started again after a fault (run_restarting)
        self.interrupted: set[str] = set()  # containers whose watch a fault interrupted
        self.package_managers: dict[str, tuple[float, bool]] = {}  # identity -> (when, found)
        self.wake_w = -1
        self.stop = False
        self.gateway = ""
        self.nft = NftWatch(table_name(home), nflog_group(home, config))
        self.responder = Responder(self)
        self.idle_since = time.monotonic()
        self.dropped = 0
        # refresh(): the cgroups as they were when Incus last left nothing to retry (None:
        # ask again), when it was asked, and the names it said were another home's
        self.settled: dict[str, int] | None = None
        self.listed_at = -1e9
        self.foreign: set[str] = set()
        # the periodic pass: per container identity, what its last pass saw (pid -> pid
        # namespace, exec count) and the containers with a packet or file event since then
        self.passed: dict[str, tuple[dict[int, str], int]] = {}
        self.stirred: set[str] = set()
        self.mount_polls: dict[str, tuple[int, select.poll]] = {}  # see mounts_changed
        # loaded once (main: the folders the settings name); the bundled rules alone here
        self.packs = packs if packs is not None else rulepacks.load_packs(None, None)

    def log(self, message: str) -> None:
        log_line(message)

    # ------------------------------------------------------------------ output
    def emit(self, watched: Watched, record: dict[str, Any]) -> None:
        failures = self.audit.failures
        if not self.audit.write(watched.name, record) and self.audit.failures == failures:
            # rate-limited (counted in the audit log's summary record): a flood is not sent
            # to the dashboards nor logged either. A record the log failed to write still is.
            return
        self.broadcaster.publish(record)
        if LEVEL_RANK.get(record["level"], 0) >= 1:
            self.log(  # the description quotes the container's command lines: one line
                f"{record['level'].upper()} {watched.name} {record['rule_id']}: "
                f"{clean(record['description'])} -> {record['action']}"
            )

    def same_container(self, watched: Watched) -> bool:
        """Whether `watched.name` still names the container `watched` describes."""
        if not watched.alive():
            return False
        if not watched.uuid:
            return True
        try:
            current = self.incus.instance_config(watched.name).get("volatile.uuid", "")
        except Exception:
            return False
        return current == watched.uuid

    def kill(self, name: str, expect_id: str = "") -> None:
        """Kill `name` if it is still the instance `expect_id` (its volatile.uuid): tag it
        KILLED_KEY, then force-stop it (the cgroup was frozen already). Nothing is saved or
        deleted here, as root: the session's supervisor, running as the user, sees the stop,
        saves the session and deletes the container (persistent or not) because of the tag."""
        try:
            current = self.incus.instance_config(name).get("volatile.uuid", "")
        except IncusFailed:
            self.log(f"kill {name}: gone by now; not acting")
            return
        if expect_id and current != expect_id:
            self.log(f"kill {name}: another container by now; not acting")
            return
        try:
            self.incus.tag(name, KILLED_KEY, KILLED_BY_MONITOR)
        except IncusFailed as exc:  # stopped all the same: its supervisor then keeps it
            self.log(f"kill {name}: tag not set ({exc})")
        try:
            self.incus.force_stop(name)
        except IncusFailed:
            if self.incus.status(name) != "Stopped":
                raise

    # ------------------------------------------------------------------ containers
    def refresh(self) -> None:
        """Every second: ask Incus which containers run only when their cgroups changed
        (one started, stopped or was made again), something is left to retry, a watched
        one restarted or was thawed, or INCUS_LIST_BACKSTOP_SEC passed."""
        prefix = self.config.container_prefix
        own = tag_for(self.home)
        now = time.monotonic()
        cgroups = payload_cgroups(prefix)
        if not self.incus_list_due(cgroups, now):
            if self.watched:
                self.idle_since = now
            return
        self.listed_at = now
        self.settled = None  # until this listing was acted on
        try:
            instances_all = self.incus.list_instances(prefix)
            listed = {
                i.name: (i.status, i.config.get("volatile.uuid", ""), i.config.get(SESSION_KEY, ""))
                for i in instances_all
                # Sessions of another COI home belong to that home's daemon (no tag: older).
                if i.config.get("user.coi.home", own) == own
            }
        except Exception as exc:
            self.log(f"listing instances failed: {exc}")
            return
        self.foreign = {i.name for i in instances_all} - listed.keys()
        instances = {name: entry[0] for name, entry in listed.items()}
        for name in list(self.watched):
            status, uuid, _session = listed.get(name, (None, "", ""))
            watched = self.watched[name]
            if status is None or status == "Stopped":
                self.forget(watched)
            elif (uuid and watched.uuid and uuid != watched.uuid) or not watched.alive():
                # another container under the same name (a slot killed and started again),
                # or the same one restarted: what was known of the old one does not apply
                self.forget(watched)
            elif status == "Running" and watched.status == "Frozen":
                watched.status = "Running"  # `coi unfreeze` or `incus start`
                self.broadcaster.publish_event(
                    {"type": "status", "container": name, "status": "Running"}
                )
        for name, status in instances.items():
            if status == "Running" and name not in self.watched:
                self.watch(name, listed[name][1], listed[name][2])
        if self.watched:
            self.idle_since = time.monotonic()
        # settled when every cgroup is a watched container's or another home's and every
        # watched container has one; else (one not watched yet: frozen, still starting, its
        # watch failed) Incus is asked again in a second
        known = self.watched.keys() | self.foreign
        if cgroups.keys() <= known and self.watched.keys() <= cgroups.keys():
            self.settled = cgroups

    def incus_list_due(self, cgroups: dict[str, int], now: float) -> bool:
        if not self.watched:
            return True  # nothing to save, and the first container is seen even where
            # LXC names its cgroups in another way
        if self.settled is None or cgroups != self.settled:
            return True
        if now - self.listed_at >= INCUS_LIST_BACKSTOP_SEC:
            return True
        for watched in self.watched.values():
            if not watched.alive():
                return True  # restarted, or stopped with its cgroup not yet removed
            if watched.status == "Frozen" and cgroup_thawed(watched.name):
                return True  # `coi unfreeze`, `incus start`
        return False

    def watch(self, name: str, uuid: str = "", session: str = "") -> None:
        """Start watching a running container (`uuid`: its instance id as listed; a container
        replaced meanwhile is caught by the next refresh; `session`: its SESSION_KEY, the
        thresholds and actions of its session's settings), and judge at once the processes,
        descriptors and sockets it already has."""
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
        watched = Watched(name, pid, pidns, ip, veth, procfs.ifindex(veth), self.home, uuid)
        try:
            watched.config = for_session(self.config, session)
        except ValueError as exc:
            self.log(f"{name}: its session's monitor settings refused ({exc}); using the defaults")
            watched.config = self.config
        watched.dns = rules.DnsWatch(watched.config)
        watched.privilege = PrivilegeWatch.start(pid)  # its setuid programs, as they are now
        watched.mount_table = mounts.MountWatch.start(pid)  # a mount over a watched path: CRITICAL
        watched.egress = EgressWatch(name, STARTED)
        self.watched[name] = watched
        self.by_ns[pidns] = watched
        self.tell_capture()
        if watched.ifindex:
            self.by_ifindex[watched.ifindex] = watched
        if ip:
            self.by_ip[ip] = watched
        if veth:
            try:
                self.nft.add(veth)
            except RuntimeError as exc:
                self.log(f"{name}: {exc}")
        try:
            watched.files = filewatch.ContainerFiles(
                pid, self.canary_paths(watched), watched.config.own_credentials
            )
        except OSError as exc:
            self.log(f"{name}: sensitive-file watcher unavailable: {exc}")
        watched.pids = set(self.container_pids(watched))
        for member in watched.pids:
            watched.rchar[member] = procfs.io_counters(member)[0]
        watched.sent.add(time.monotonic(), procfs.net_tx_bytes(veth))
        watched.received_total = procfs.net_rx_bytes(veth)
        watched.received.add(time.monotonic(), watched.received_total)
        self.broadcaster.publish_event({"type": "watch", "container": name, "ip": ip})
        self.log(
            f"watching {name} (init {pid}, {ip or 'no ip'}, {veth or 'no veth'}, "
            f"id {uuid or 'unknown'})"
        )
        if watched.identity in self.interrupted:
            self.interrupted.discard(watched.identity)
            gap = rules.threat(
                "monitor.interrupted",
                "warning",
                "evasion",
                "The monitor's watch of this container was interrupted",
                "the daemon met a fault and started again; events in between were not seen",
                {"faults": self.faults},
                f"{name}:{self.faults}",
            )
            self.respond(watched, [gap], time.monotonic())
        # what ran before the watch began (behavioural rules: a live connection on stdio,
        # a relay; an idle container has none of these)
        self.scan(watched, full=False)

    def forget(self, watched: Watched) -> None:
        """Stop watching this record (only the mappings that still point at it: a successor
        of the same name may have its own by now)."""
        if self.watched.get(watched.name) is not watched:
            return
        del self.watched[watched.name]
        for table, key in (
            (self.by_ns, watched.pidns),
            (self.by_ifindex, watched.ifindex),
            (self.by_ip, watched.ip),
        ):
            if table.get(key) is watched:  # type: ignore[attr-defined]
                del table[key]  # type: ignore[attr-defined]
        self.tell_capture()
        if watched.veth:
            self.nft.discard(watched.veth)
        if watched.files is not None:
            watched.files.close()
            watched.files = None
        self.rule_queue = deque(e for e in self.rule_queue if e[0] is not watched)
        self.broadcaster.publish_event({"type": "unwatch", "container": watched.name})
        self.log(f"stopped watching {watched.name} (id {watched.uuid or 'unknown'})")

    @functools.cached_property
    def owners(self) -> membership.PidnsOwners:
        """Which watched container a pid namespace nested in one belongs to."""
        return membership.PidnsOwners()

    def container_pids(self, watched: Watched, nsmap: dict[int, str] | None = None) -> list[int]:
        """The container's processes, those of pid namespaces nested in its own included
        (`nsmap`: pid -> its pid namespace, read once for a pass over every container)."""
        if nsmap is None:
            nsmap = {p: procfs.pid_ns(p) for p in procfs.all_pids()}
        owner, by_ns = self.owners.owner, self.by_ns
        return [p for p, ns in nsmap.items() if owner(p, ns, by_ns) == watched.pidns]

    def owner_of(self, pid: int) -> Watched | None:
        if not self.by_ns:
            return None
        return self.by_ns.get(self.owners.owner(pid, procfs.pid_ns(pid), self.by_ns))

    # ------------------------------------------------------------------ event handlers
    def tell_capture(self) -> None:
        """Send the capture process the namespaces worth forwarding (events of other
        containers on the host then never cross the pipe)."""
        if self.capture_ctl < 0:
            return
        line = json.dumps(sorted(self.by_ns)).encode() + b"\n"
        with contextlib.suppress(OSError):  # a full pipe: the next change resends it all
            os.write(self.capture_ctl, line)

    def on_capture(self, fd: int) -> bool:
        """Lines from the capture process: one exec or fork each (see capture_main). False
        when it has exited."""
        try:
            data = os.read(fd, 4 << 20)
        except BlockingIOError:
            return True
        if not data:
            return False
        lines = (self.capture_buffer + data).split(b"\n")
        self.capture_buffer = lines.pop()
        for line in lines:
            try:
                kind, pid, parent, pidns, argv, at, fd0, fd1, *exe = json.loads(line)
            except ValueError:
                continue
            if kind == "lost":
                self.capture_lost(int(argv[0]))
            elif pidns in self.by_ns and kind in ("uid", "gid", "exit"):
                self.on_privilege(self.by_ns[pidns], kind, pid, parent, argv, at)
            elif pidns in self.by_ns:
                if kind == "exec" and exe and exe[0]:
                    ident = str(exe[1]) if len(exe) > 1 else ""
                    self.by_ns[pidns].remember_exe(pid, str(exe[0]), ident)
                event = ProcEvent(kind, pid, parent)
                self.proc_queue.append((event, argv, pidns, at, parent, (fd0, fd1)))
        self.on_proc_events()
        self.run_rules()
        return True

    def capture_lost(self, total: int) -> None:
        """The capture process lost process events (the kernel dropped them, or the daemon
        was too far behind): logged, at most once a minute, with the running total. The
        periodic /proc pass still sees what lives on."""
        now = time.monotonic()
        if now - self.lost_logged_at >= 60:
            self.lost_logged_at = now
            self.log(f"process events lost so far: {total} (the periodic pass covers them)")

    def on_proc_events(self) -> None:
        while self.proc_queue:
            event, argv, pidns, at, parent, stdio = self.proc_queue.popleft()
            watched = self.by_ns.get(pidns)
            if watched is None:
                continue
            if event.kind == "exec":
                self.on_exec(watched, event.pid, argv, at, parent, stdio)
            else:
                self.on_fork(watched, event.pid, at)

    def on_exec(
        self,
        watched: Watched,
        pid: int,
        argv: list[str],
        now: float,
        parent: int,
        stdio: tuple[str, str] = ("", ""),
    ) -> None:
        if watched.status == "Killed":
            return
        watched.pids.add(pid)
        watched.execs += 1
        proc = procfs.read_proc(pid)
        exe = proc.exe if proc is not None else ""
        argv = argv or bound_argv(proc.cmdline if proc else [])
        if not argv:
            watched.execs_without_argv += 1
        watched.recent.append((now, pid, parent, clip_argv(argv), *stdio))
        # behaviour first (bounded work, whatever the command line), the command-line rules
        # (work grows with the argv the container chose) queued behind it
        view = behaviour.ContainerView(watched.init_pid, [pid], known_local=watched.local_sockets)
        self.respond(watched, behaviour.analyse(view, only={pid}), now)
        if len(self.rule_queue) >= RULE_BACKLOG:
            dropped = self.rule_queue.popleft()
            self.rules_skipped += 1
            if self.rules_skipped in (1, 100) or self.rules_skipped % 10000 == 0:
                self.log(f"command-line rules behind: {self.rules_skipped} execs left unjudged")
            self.report_unjudged(dropped[0], now)
        self.rule_queue.append((watched, pid, parent, argv, exe, now))
        # pipes and sockets are often wired up just after the exec: look again shortly
        self.schedule(watched.name, 0.15)

    def on_privilege(
        self, watched: Watched, kind: str, pid: int, parent: int, detail: list[str], at: float
    ) -> None:
        """A uid or gid change (detail: privilege.id_detail) or the exit of a process that
        changed uid (detail: [wait status]); see monitor/privilege.py."""
        state = watched.privilege
        if state is None or watched.status == "Killed":
            return

        def argv_of(of: int) -> list[str]:
            argv = next((e[3] for e in reversed(watched.recent) if e[1] == of), None)
            return list(argv) if argv is not None else procfs.read_cmdline(of)

        def command(of: int) -> str:
            return " ".join(argv_of(of))

        change = parse_id_detail(detail) if kind != "exit" else None
        if kind == "uid":
            found = state.on_uid(pid, parent, change, command) if change else []
        elif kind == "gid":
            found = state.on_gid(pid, parent, change) if change else []
        else:
            found = state.on_exit(pid, int(detail[0]) if detail else 0, command, argv_of)
        self.respond(watched, found, at)

    def report_unjudged(self, watched: Watched, now: float) -> None:
        """Never drop silently: a container whose command lines come faster than the rules
        can judge them gets an audit record (WARNING, once a minute): a flood of costly
        command lines may be hiding one that matters. Not HIGH: a big build's long compiler
        lines can do this too."""
        watched.unjudged += 1
        if now - watched.unjudged_reported < 60:
            return
        watched.unjudged_reported = now
        found = rules.threat(
            "monitor.rules-behind",
            "warning",
            "evasion",
            "Command lines arrive faster than the monitor can judge them",
            f"{watched.unjudged} execs judged by behaviour only (their command lines were not)",
            {"unjudged": watched.unjudged},
            f"{watched.name}:{int(now // 60)}",
        )
        self.respond(watched, [found], now)

    def run_rules(self, budget: float = RULE_BUDGET_SEC) -> None:
        """Command-line rules of queued execs, for at most `budget` seconds (at least one),
        or RULE_YIELD_SEC once new execs wait in the capture pipe."""
        started = time.monotonic()
        while self.rule_queue:
            watched, pid, parent, argv, exe, at = self.rule_queue.popleft()
            if watched.status != "Killed" and self.watched.get(watched.name) is watched:
                found = rules.cmdline_threats(pid, argv, exe)
                found += self.packs.match(pid, argv, exe, parent)
                found += self.correlate(watched, pid, parent, argv, at)
                script = rules.script_file(argv, exe)
                if script:
                    watched.scripts[pid] = (script, clip_argv(argv), at)
                    found += self.read_scripts(watched)
                    if watched.scripts:
                        self.schedule(watched.name, 0.03)
                self.respond(watched, found, at)
            spent = time.monotonic() - started
            if spent >= budget or (spent >= RULE_YIELD_SEC and self.capture_ready()):
                break  # intake first: the next exec may be a reverse shell

    def capture_ready(self) -> bool:
        if self.capture_r < 0:
            return False
        with contextlib.suppress(OSError, ValueError):
            return bool(select.select([self.capture_r], [], [], 0)[0])
        return False

    def read_scripts(self, watched: Watched) -> list[Threat]:
        """Shell scripts run from a file: judged from the shell's open descriptor of the
        file (it opens it just after the exec, so pending ones are retried shortly)."""
        found: list[Threat] = []
        now = time.monotonic()
        for pid, (path, argv, since) in list(watched.scripts.items()):
            text = procfs.script_text(pid, path)
            if text is None and now - since < 1.0 and procfs.pid_ns(pid):
                continue
            del watched.scripts[pid]
            if text:
                command = " ".join(argv)[:300]
                found += rules.script_threats(pid, text, command, with_credentials=True)
        return found

    def correlate(
        self, watched: Watched, pid: int, parent: int, argv: list[str], now: float
    ) -> list[Threat]:
        found = correlate_pipeline(watched.recent, pid, parent, now)
        return found or rules.dump_then_send(watched.recent, pid, argv, now)

    def on_fork(self, watched: Watched, pid: int, at: float) -> None:
        """`at`: when the capture process saw the fork (the rate is the container's, not how
        fast we read). Above the rate, the live processes are counted at most once per
        SPAWN_CHECK_SEC; when the last count is younger than that, a pass is scheduled for
        when it is due, because a bounded storm (`for i in $(seq 600); do sleep 60 & done`)
        can be over before then and no later fork would ever count its processes."""
        if watched.status == "Killed":
            return
        watched.pids.add(pid)
        forks = watched.forks
        forks.append(at)
        while forks and forks[0] < at - 1.0:
            forks.popleft()
        rate = watched.config.spawn_rate_per_sec
        if rate <= 0 or len(forks) <= rate:
            return
        now = time.monotonic()
        if now - watched.burst_seen > SPAWN_BURST_LINGER_SEC:
            watched.burst_peak = 0  # a new burst
        watched.burst_peak = max(watched.burst_peak, len(forks))
        watched.burst_seen = now
        wait = watched.live_checked + SPAWN_CHECK_SEC - now
        if wait <= 0:
            self.judge_spawns(watched, len(self.container_pids(watched)), now)
        else:
            self.schedule(watched.name, wait)  # its pass counts them (see scan)

    def canaries(self, watched: Watched) -> NetworkMatcher:
        if watched.canaries is None:  # its registry is read when first needed
            home, owner = self.home, self.owner
            watched.canaries = NetworkMatcher(home, watched.name, watched.uuid, owner, self.log)
        return watched.canaries

    def planted(self, watched: Watched, path: str, now: float) -> bool:
        """Whether this container's session planted a canary at `path` (its registry
        says so): a file there in another container may be a real credential."""
        matcher = self.canaries(watched)
        if matcher.index is None:
            matcher.tried = -1e9  # rare events: look now, whatever the reload pace
        matcher.load(now)
        return path in matcher.paths.values()

    def canary_paths(self, watched: Watched) -> tuple[str, ...]:
        """Where decoy credentials go in any container (monitor/canary.py): all of them,
        since a session plants its canaries after the daemon has found its container."""
        return canary_paths()

    def on_file_events(self, watched: Watched, now: float) -> None:
        """Opens and writes of sensitive files (monitor/filewatch.py), judged by who did them."""
        files = watched.files
        if files is None or watched.status == "Killed":
            return
        try:
            events = files.events()
        except Exception as exc:  # a bug here must not end the watch of every container
            self.log(f"{watched.name}: sensitive-file events failed: {exc!r}")
            files.overflowed += 1  # reported as lost events (HIGH): fail closed
            events = []
        found: list[Threat] = []
        for event in events:
            canary = self.planted(watched, event.path, now) if files.is_canary(event) else False
            if (event.spec.rule == "canary.open") != canary:
                continue  # a decoy speaks only as one; a real file there by its own rules
            opener = self.opener(watched, files, event.pid)
            if opener is None:
                continue  # a host process (Incus pushing a file), not the container
            spec = event.spec
            if spec.package_managed and not opener.under(filewatch.PACKAGE_MANAGERS):
                opener.package_manager = self.package_manager_running(watched, files)
            verdict = filewatch.judge(event, opener, canary)
            if verdict is None:
                continue
            level, why = verdict
            if spec.rule == "file.startup-write" and event.access == "write":
                change = files.startup_change(event.path)  # (its snapshot kept up to date)
                if change == "skel" and LEVEL_RANK[level] >= 1:
                    level, why = "info", f"{event.path} is now the copy of /etc/skel's"
                elif change == "settings" and LEVEL_RANK[level] >= 2:
                    level, why = "warning", f"{event.path}: only plain settings appended"
            if (
                spec.rule == "file.systemd-unit-write"
                and LEVEL_RANK[level] >= 2
                and opener.runs(frozenset({"systemd"}))
                and files.link_target(event.path).startswith(filewatch.PACKAGED_UNITS)
            ):
                # `systemctl enable` of a unit a package installed (systemd makes the link)
                level, why = "warning", f"{event.path}: a packaged unit enabled"
            evidence: dict[str, Any] = {
                "sensitive_file": {"path": event.path, "access": event.access, "pid": event.pid},
                "process": {
                    "pid": opener.pid,
                    "command": clean(opener.command),
                    "exe": clean(opener.exe),
                },
            }
            if spec.judge_content and event.access == "write":
                # what a start-up file, crontab or unit now runs (whoever wrote it, a package
                # manager too): a reverse shell there is one
                content = rules.script_threats(event.pid, files.read(event.path), event.path)
                worst = max(content, key=lambda t: LEVEL_RANK[t.level], default=None)
                if worst is not None and LEVEL_RANK[worst.level] > LEVEL_RANK[level]:
                    level = worst.level
                    why += f"; it now runs: {worst.title.lower()}"
                    evidence["content_rule"] = worst.rule_id
            # the level too: a write seen first half-done (MODIFY) and judged again complete
            # (CLOSE_WRITE) must not have its worse verdict dropped as a repeat
            key = f"{watched.name}:{event.path}:{opener.exe or opener.command[:60]}:{level}"
            found.append(
                rules.threat(spec.rule, level, spec.category, spec.title, why, evidence, key)
            )
        if files.overflowed > watched.files_lost:
            watched.files_lost = files.overflowed
            # no workload floods these directories; one that does may be hiding a write
            found.append(
                rules.threat(
                    "monitor.file-events-lost",
                    "high",
                    "evasion",
                    "Sensitive-file events were lost",
                    f"the kernel's fanotify queue overflowed {files.overflowed} time(s): "
                    "the container flooded directories that hold start-up or account files",
                    {"overflows": files.overflowed},
                    f"{watched.name}:{int(now // 60)}",
                )
            )
        if found:
            self.respond(watched, found, now)

    def opener(
        self, watched: Watched, files: filewatch.ContainerFiles, pid: int
    ) -> filewatch.Opener | None:
        """Who caused a file event: None for a process outside the container; a gone one
        keeps the command line the exec capture saw."""
        if pid <= 0:
            return filewatch.Opener(0, False)
        proc = procfs.read_proc(pid)
        if proc is None or not proc.exe:
            # gone: its program as the exec capture read it; its record may still be on its
            # way (the capture reads it as the process starts), so wait for it a little,
            # within a budget a stream of such processes cannot stretch
            self.await_exec_record(watched, pid)
            argv = next((r[3] for r in reversed(watched.recent) if r[1] == pid), [])
            exe, ident = watched.exes.get(pid, ("", ""))
            genuine = files.genuine([(exe, identity(ident))])
            return filewatch.Opener(pid, bool(exe), exe, list(argv), genuine=genuine)
        if self.owner_of(pid) is not watched:
            return None
        ident = identity(exe_link(pid)[1])
        if ident is None:
            # gone since /proc was read (ssh-keygen -y lives a millisecond): its program as
            # the exec capture read it
            self.await_exec_record(watched, pid)
            if watched.exes.get(pid, ("", ""))[0] == proc.exe:
                ident = identity(watched.exes[pid][1])
        programs = [(proc.exe, ident)]
        ancestors: list[str] = []
        parent = proc.ppid
        for _ in range(16):
            above = procfs.read_proc(parent) if parent > 1 else None
            if above is None or self.owner_of(parent) is not watched:
                break
            ancestors.append(above.exe)
            programs.append((above.exe, identity(exe_link(parent)[1])))
            parent = above.ppid
        genuine = files.genuine(programs)
        opener = filewatch.Opener(pid, True, proc.exe, proc.cmdline, ancestors, genuine=genuine)
        opener.debconf = self.runs_debconf(files, opener)
        return opener

    def runs_debconf(self, files: filewatch.ContainerFiles, opener: filewatch.Opener) -> bool:
        """The genuine perl running one of debconf's genuine scripts (apt runs
        dpkg-preconfigure on every install), with no perl options injected through its
        environment (sudo passes them with SETENV)."""
        if opener.exe != filewatch.PERL or filewatch.PERL not in opener.genuine:
            return False
        script = next((a for a in opener.argv[1:] if not a.startswith("-")), "")
        if script not in filewatch.DEBCONF_SCRIPTS:
            return False
        if files.identity_now(script) != files.tools.get(script):
            return False
        try:
            with open(f"/proc/{opener.pid}/environ", "rb") as f:
                environ = f.read(1 << 20)
        except OSError:
            return False
        return not any(entry.startswith(filewatch.PERL_INJECTION) for entry in environ.split(b"\0"))

    def await_exec_record(self, watched: Watched, pid: int) -> None:
        now = time.monotonic()
        if now - self.exec_wait_since > 1.0:
            self.exec_wait_since, self.exec_wait_spent = now, 0.0
        while pid not in watched.exes and self.capture_r >= 0:
            left = min(EXEC_RECORD_WAIT_SEC, EXEC_WAIT_BUDGET_SEC - self.exec_wait_spent)
            if left <= 0:
                return
            started = time.monotonic()
            with contextlib.suppress(OSError, ValueError):
                select.select([self.capture_r], [], [], left)
            if not self.on_capture(self.capture_r):
                return  # the capture process is gone (the loop restarts it)
            spent = time.monotonic() - started
            self.exec_wait_spent += spent
            if spent >= left:
                return

    def package_manager_running(self, watched: Watched, files: filewatch.ContainerFiles) -> bool:
        """Whether the genuine dpkg or apt runs in the container now (its maintainer scripts
        enable units and write cron files; the writer itself may be gone)."""
        now = time.monotonic()
        cached = self.package_managers.get(watched.identity)
        if cached is not None and now - cached[0] < 0.5:
            return cached[1]  # a stream of writes walks /proc at most twice a second
        running = False
        for pid in self.container_pids(watched):
            exe, ident = exe_link(pid)
            if filewatch.system_tool(exe, filewatch.PACKAGE_MANAGERS) and files.genuine(
                [(exe, identity(ident))]
            ):
                running = True
                break
        self.package_managers[watched.identity] = (now, running)
        return running

    def judge_spawns(self, watched: Watched, live: int, now: float) -> None:
        """A fork burst that ended at most SPAWN_BURST_LINGER_SEC ago, judged with `live`
        processes counted now: what a fork bomb forked is still alive, what a build forked
        has exited."""
        if not watched.burst_peak or now - watched.burst_seen > SPAWN_BURST_LINGER_SEC:
            return
        watched.live_checked, watched.live = now, live
        rate = watched.config.spawn_rate_per_sec
        self.respond(watched, rules.spawn_threat(watched.burst_peak, rate, live), now)

    def on_packet(self, payload: bytes, physindev: int, now: float) -> None:
        pkt = rules.parse_packet(payload)
        if pkt is None:
            return
        watched = self.by_ifindex.get(physindev) or self.by_ip.get(pkt.src)
        if watched is None or watched.status == "Killed":
            return
        self.respond(watched, self.canaries(watched).threats(pkt, payload, now), now)
        if mid_stream(payload):
            return  # logged for the canary match only: its SYN was judged
        found = rules.packet_threats(pkt, watched.config, self.gateway)
        if pkt.proto == "udp" and pkt.dport == 53 and watched.dns is not None:
            found += watched.dns.feed(pkt, now)
        elif pkt.proto in ("tcp", "udp", "icmp"):
            found += watched.scans.feed(pkt, now)
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
    def pids_by_container(self) -> dict[str, dict[int, str]]:
        """One walk of /proc shared out to every watched container (nested pid namespaces
        included): its init's pid namespace -> {pid: the pid's own namespace}."""
        groups: dict[str, dict[int, str]] = {}
        owner, by_ns = self.owners.owner, self.by_ns
        for pid in procfs.all_pids():
            pidns = procfs.pid_ns(pid)
            mine = owner(pid, pidns, by_ns)
            if mine:
                groups.setdefault(mine, {})[pid] = pidns
        return groups

    def quiet(self, watched: Watched) -> bool:
        """No exec, fork, packet or file event since its last pass: no new process, nothing
        new on its descriptors that an event would not have announced."""
        last = self.passed.get(watched.identity)
        return (
            last is not None
            and watched.name not in self.stirred
            and watched.execs == last[1]
            and watched.pids <= last[0].keys()
        )

    def mounts_changed(self, watched: Watched) -> bool:
        """Whether the mount table of the container's init changed since the last call (the
        kernel flags a held /proc/<pid>/mountinfo with POLLPRI; no read, no parse). True
        when it cannot be told: its table is then read."""
        held = self.mount_polls.get(watched.identity)
        if held is None:
            try:
                fd = os.open(
                    f"/proc/{watched.init_pid}/mountinfo", os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY
                )
            except OSError:
                return True
            poller = select.poll()
            poller.register(fd, select.POLLPRI)
            self.mount_polls[watched.identity] = held = (fd, poller)
            return True  # changes before the open are not flagged on it
        try:
            return bool(held[1].poll(0))
        except OSError:
            return True

    def periodic_pass(self, sweep: bool) -> None:
        """Every scan_interval_sec: volumes, auth logs and counts of every container; the
        behavioural checks (every descriptor of every process) only for containers where
        something happened, and for all of them on a `sweep` (every FULL_SWEEP_SEC, the
        backstop behind the events). /proc is walked only when some container stirred; a
        quiet one's processes are its last pass's that are still there (a new one would have
        come with a fork event)."""
        stirred = {
            w.identity
            for w in self.watched.values()
            # the mount poll first: it is also reset by the call
            if self.mounts_changed(w) or sweep or not self.quiet(w)
        }
        groups = self.pids_by_container() if stirred else None
        for watched in list(self.watched.values()):
            if groups is not None:
                pids = groups.get(watched.pidns, {})
            else:
                last = self.passed[watched.identity][0]
                pids = {p: ns for p, ns in last.items() if procfs.pid_ns(p) == ns}
            self.scan(watched, True, pids=list(pids), behave=watched.identity in stirred)
            self.passed[watched.identity] = (pids, watched.execs)
        self.stirred.clear()
        if len(self.passed) > len(self.watched) or len(self.mount_polls) > len(self.watched):
            live = {w.identity for w in self.watched.values()}
            self.passed = {k: v for k, v in self.passed.items() if k in live}
            for identity in [k for k in self.mount_polls if k not in live]:
                os.close(self.mount_polls.pop(identity)[0])

    def scan(
        self,
        watched: Watched,
        full: bool,
        nsmap: dict[int, str] | None = None,
        pids: list[int] | None = None,
        behave: bool = True,
    ) -> None:
        """`full`: volumes, auth logs, mounts and the process count too; `pids`: its
        processes if already known; `behave`: False skips the behavioural and mount-table
        checks (a quiet container whose mount table did not change)."""
        if watched.status == "Killed":
            return
        now = time.monotonic()
        if pids is None:
            pids = self.container_pids(watched, nsmap)
        watched.pids = set(pids)
        self.judge_spawns(watched, len(pids), now)
        if len(watched.local_sockets) > 20000:
            watched.local_sockets.clear()
        found: list[Threat] = []
        if behave:
            known = watched.local_sockets
            found = behaviour.analyse(behaviour.ContainerView(watched.init_pid, pids, known))
        if watched.scripts:
            found += self.read_scripts(watched)
        if full:
            if watched.privilege is not None:
                found += watched.privilege.read_logs()  # auth logs, from where they were left
            if watched.egress is not None:
                found += watched.egress.read(self.home, now)  # what its proxy logged
            if behave and watched.mount_table is not None:
                found += watched.mount_table.check()
            found += self.volumes(watched, pids, now)
            count = watched.config.process_count_threshold
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
        """Read volume counts only processes reading regular files (rchar also counts pipes,
        sockets and /dev/zero); it is HIGH only when the container also sends more than it
        receives (read-then-send), else an INFO record: tar, cp -r, rg, builds read a lot."""
        current = {pid: procfs.io_counters(pid)[0] for pid in pids}
        received_total = procfs.net_rx_bytes(watched.veth)
        came_in = max(0, received_total - watched.received_total)  # since the last pass
        watched.received_total = received_total
        top, top_bytes = 0, 0
        for pid, rchar in current.items():
            delta = max(0, rchar - watched.rchar.get(pid, 0))
            if delta < (1 << 20):
                continue
            source = procfs.read_source(pid)
            if source == "stream":
                continue  # pipes and devices: the bytes were counted where they were read
            if source == "socket":
                delta = max(0, delta - came_in)  # a download is not a file read
            watched.read_total += delta
            if delta > top_bytes:
                top, top_bytes = pid, delta
        watched.rchar = current
        config = watched.config
        mib = 1 << 20
        fast = watched.reads.add(now, watched.read_total)
        slow = watched.reads_slow.add(now, watched.read_total)
        tripped: tuple[int, float, float] | None = None  # bytes, window, threshold MB
        if fast / mib > config.file_read_threshold_mb:
            tripped = (fast, 2.0, config.file_read_threshold_mb)
        elif slow / mib > config.file_read_rate_mb_per_sec * 5.0:
            tripped = (slow, 5.0, config.file_read_rate_mb_per_sec * 5.0)
        found: list[Threat] = []
        if tripped:
            proc = procfs.read_proc(top) if top else None
            reader = proc.command if proc else ""
            found = rules.volume_threats("read", tripped[0], tripped[1], tripped[2], "read-local")
            for threat in found:
                threat.evidence["filesystem"]["reader"] = reader[:200]  # type: ignore[index]
            watched.large_read = (now, tripped[0] / mib, tripped[1], tripped[2], reader)
        watched.sent.window = watched.received.window = config.exfil_window_sec
        sent = watched.sent.add(now, procfs.net_tx_bytes(watched.veth))
        received = watched.received.add(now, received_total)
        found += rules.volume_threats(
            "send", sent, config.exfil_window_sec, config.exfil_threshold_mb, "send"
        )
        large = watched.large_read
        if large and now - large[0] <= config.exfil_window_sec:
            sent_mb, received_mb = sent / mib, received / mib
            if sent_mb >= config.exfil_correlate_mb and sent > received:
                found.append(
                    rules.read_then_send_threat(
                        large[1],
                        large[2],
                        large[3],
                        sent_mb,
                        received_mb,
                        config.exfil_window_sec,
                        large[4],
                    )
                )
        return found

    def dump_stats(self) -> None:
        """SIGUSR1: write monitor.stats.json (exec capture counts and recent command lines
        per container; bench/bench_monitor.py reads it)."""
        stats = {
            name: {
                "execs": w.execs,
                "execs_without_argv": w.execs_without_argv,
                "recent": [entry[3] for entry in w.recent],
                "recent_detail": [
                    {"pid": e[1], "parent": e[2], "stdin": e[4], "stdout": e[5]} for e in w.recent
                ],
            }
            for name, w in self.watched.items()
        }
        try:  # in the user's ~/.coi: a symlink there is replaced, never written through
            nofollow.write_file(
                self.home, "monitor.stats.json", json.dumps(stats).encode(), 0o644, self.owner
            )
        except OSError as exc:
            self.log(f"monitor.stats.json: {exc}")

    def request_dump(self, _signum: int, _frame: object) -> None:
        self.dump_requested = True
        if self.wake_w >= 0:
            with contextlib.suppress(OSError):
                os.write(self.wake_w, b"d")

    # ------------------------------------------------------------------ main loop
    def run(self) -> None:
        network = self.incus.network_config(self.config.bridge)
        self.gateway = str(network.get("ipv4.address", "")).split("/")[0]
        self.broadcaster = Broadcaster(self.home / "monitor.sock", self.owner)
        capture_r, capture_pid, self.capture_ctl = start_capture()
        self.capture_r = capture_r
        wake_r, wake_w = os.pipe()
        self.wake_w = wake_w
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        self.nft.create()
        nflog = NflogReader(self.nft.group, PAYLOAD_BYTES)
        self.log(
            f"monitor started (pid {os.getpid()}, table bridge {self.nft.table}, "
            f"nflog group {self.nft.group}, prefix {self.config.container_prefix!r})"
        )
        next_scan = next_refresh = next_sweep = time.monotonic()
        try:
            while not self.stop:
                now = time.monotonic()
                if self.dump_requested:
                    # asked before the wake pipe existed (a signal right after the socket)
                    self.dump_requested = False
                    self.dump_stats()
                if now >= next_refresh:
                    self.refresh()
                    self.audit.flush()  # a flood's summary record, once the flood stopped
                    next_refresh = now + 1.0
                    if not self.watched and now - self.idle_since > self.config.idle_exit_sec:
                        self.log("no coi containers: exiting")
                        break
                if now >= next_scan:
                    self.periodic_pass(sweep=now >= next_sweep)
                    if now >= next_sweep:
                        next_sweep = now + FULL_SWEEP_SEC
                    next_scan = now + self.config.scan_interval_sec
                walked: dict[str, dict[int, str]] | None = None  # one walk for all timers due
                while self.timers and self.timers[0][0] <= now:
                    due, name = heapq.heappop(self.timers)
                    self.pending.discard((name, round(due * 10)))
                    if name in self.watched:
                        watched = self.watched[name]
                        if walked is None:
                            walked = self.pids_by_container()
                        pids = list(walked.get(watched.pidns, {}))
                        self.scan(watched, full=False, pids=pids)
                if self.rule_queue:
                    self.run_rules()
                due = min(next_scan, next_refresh, self.timers[0][0] if self.timers else 1e18)
                timeout = 0.0 if self.rule_queue else max(0.0, due - time.monotonic())
                groups = {w.files.fileno(): w for w in self.watched.values() if w.files}
                ready, _, _ = select.select(
                    [capture_r, wake_r, nflog, self.broadcaster, *groups], [], [], timeout
                )
                now = time.monotonic()
                for source in ready:
                    if isinstance(source, int) and source in groups:
                        self.stirred.add(groups[source].name)
                        self.on_file_events(groups[source], now)
                    elif source is capture_r and not self.on_capture(capture_r):
                        self.log("exec capture process exited: restarting it")
                        os.close(capture_r)
                        with contextlib.suppress(ChildProcessError):
                            os.waitpid(capture_pid, 0)
                        os.close(self.capture_ctl)
                        capture_r, capture_pid, self.capture_ctl = start_capture()
                        self.capture_r = capture_r
                        self.tell_capture()
                    elif source is wake_r:
                        with contextlib.suppress(BlockingIOError):
                            os.read(wake_r, 4096)
                        if self.dump_requested:
                            self.dump_requested = False
                            self.dump_stats()
                    elif source is nflog:
                        for packet in nflog.read():
                            sender = self.by_ifindex.get(packet.physindev)
                            if sender is None:  # no bridge port known: any of them
                                self.stirred.update(self.watched)
                            else:
                                self.stirred.add(sender.name)
                            self.on_packet(packet.payload, packet.physindev, now)
                    else:
                        self.broadcaster.accept()
        finally:
            self.nft.remove()
            nflog.close()
            with contextlib.suppress(OSError):
                os.kill(capture_pid, signal.SIGTERM)
                os.waitpid(capture_pid, 0)
            self.broadcaster.close()
            self.responder.pool.shutdown(wait=True)
            self.log("monitor stopped")


# ---------------------------------------------------------------------- exec capture
# Capture output the daemon has not read yet, held by the capture process (beyond the pipe's
# 1 MiB): a daemon busy with a boot storm catches up instead of the kernel dropping events.
CAPTURE_BACKLOG_BYTES = 64 << 20


def start_capture() -> tuple[int, int, int]:
    """Fork the exec capture process; returns (read end of its output pipe, its pid, write
    end of its control pipe, where the watched namespaces go). Forked before any thread
    starts. A process of its own, so no GIL is shared with the rules: a
    short-lived process (`env`, `cat`, `true`) lives about a millisecond after its exec and
    its command line must be read within that."""
    read_end, write_end = os.pipe()
    ctl_read, ctl_write = os.pipe()
    with contextlib.suppress(OSError):
        fcntl.fcntl(write_end, 1031, 1 << 20)  # F_SETPIPE_SZ: room for bursts
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        os.close(ctl_write)
        code = 1
        try:
            capture_main(write_end, ctl_read)
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    os.close(ctl_read)
    os.set_blocking(read_end, False)
    os.set_blocking(ctl_write, False)
    return read_end, pid, ctl_write


def capture_main(out: int, ctl: int = -1) -> None:
    """The capture process: proc connector events in, one JSON line per exec/fork of a
    process of a watched container out, attributed to the container's pid namespace (its
    init's) also when it runs in a namespace nested in it (PidnsOwners). The command line is
    read before anything else; a process already gone is attributed through its parent
    (from fork events)."""
    with contextlib.suppress(Exception):  # die with the daemon (PR_SET_PDEATHSIG)
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    # real-time priority: woken the moment an event arrives, ahead of the busy build that
    # forks the processes (it only blocks in recv or reads a few /proc files, and the
    # kernel's RT throttling bounds it anyway); a nicer fallback where that is refused
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
    except (OSError, AttributeError):
        with contextlib.suppress(OSError):
            os.nice(-10)
    if os.getppid() == 1:
        return
    owners = membership.PidnsOwners()
    if ctl >= 0:
        os.set_blocking(ctl, False)
    watched: set[str] | None = None  # None: no list yet, forward every container's events
    ctl_buffer = b""
    procs = ProcConnector()
    parents: dict[int, int] = {}
    changed_uid: set[int] = set()  # processes whose exit status is forwarded (privilege.py)
    # (kind, pid, parent, argv, when, (stdin, stdout[, program, its device:inode]), the pid
    # namespace read at the event: the process's (an exit's too), a fork's parent's)
    pending: list[tuple[str, int, int, list[str], float, tuple[str, ...], str]] = []
    # Output the daemon has not read yet. The capture never blocks on the pipe: while it
    # waited there, the kernel's events piled up in the socket and were dropped (ENOBUFS),
    # and short-lived processes exited before their program was read.
    backlog = bytearray()
    fork_ns: dict[int, str] = {}  # a parent -> its pid namespace, until it exits
    lost = 0  # events the kernel dropped (ENOBUFS) or the backlog had no room for
    lost_told = 0
    os.set_blocking(out, False)
    while True:
        if backlog:
            try:
                wait = 0 if pending else None  # a batch waits for no pipe
                readable, _, _ = select.select([procs.sock], [out], [], wait)
            except InterruptedError:
                continue
            backlog = flush_backlog(out, backlog)
            if backlog and not readable:
                continue
        # one datagram (one event) at a time, its command line read at once; everything
        # else (attribution, output) waits until the socket is empty or the batch is big
        try:
            data = procs.sock.recv(65536, socket.MSG_DONTWAIT if pending or backlog else 0)
        except BlockingIOError:
            data = b""
        except OSError:  # ENOBUFS: events were lost; the periodic /proc pass covers them
            lost += 1
            continue
        for event in parse_proc_events(data):
            if event.kind == "exec":
                argv = bound_argv(procfs.read_cmdline(event.pid))
                # its program too, while it lives: what opened a sensitive file after its exec
                # is judged by it (monitor/filewatch.py), never by an argv[0] it chose
                stdio = (fd_link(event.pid, 0), fd_link(event.pid, 1), *exe_link(event.pid))
                at = time.monotonic()
                parent = parents.get(event.pid, 0)
                # gone already (a millisecond's `echo`): its parent's, read at its fork
                pidns = procfs.pid_ns(event.pid) or fork_ns.get(parent, "")
                pending.append(("exec", event.pid, parent, argv, at, stdio, pidns))
            elif event.kind == "fork":
                if len(parents) > 65536:
                    parents.clear()
                parents[event.pid] = event.parent
                at = time.monotonic()
                # the parent's namespace, read at its first fork while it surely lives
                pidns = fork_ns.get(event.parent)
                if pidns is None:
                    if len(fork_ns) > 65536:
                        fork_ns.clear()
                    pidns = fork_ns[event.parent] = procfs.pid_ns(event.parent)
                pending.append(("fork", event.pid, event.parent, [], at, ("", ""), pidns))
            elif event.kind in ("uid", "gid"):  # its program read at once, as an exec's argv
                parent = parents.get(event.pid, 0)
                detail = id_detail(event.pid, parent, event.real, event.effective)
                pidns = procfs.pid_ns(event.pid) or fork_ns.get(parent, "")
                if len(changed_uid) > 65536:
                    changed_uid.clear()
                if event.kind == "uid":
                    changed_uid.add(event.pid)
                at = time.monotonic()
                pending.append((event.kind, event.pid, parent, detail, at, ("", ""), pidns))
            else:
                parent = parents.pop(event.pid, 0)
                if event.pid in changed_uid:
                    changed_uid.discard(event.pid)
                    # read now, while it is a zombie (its parent may reap it before the
                    # batch: su run by `incus exec` has a host process for a parent)
                    pidns = procfs.pid_ns(event.pid) or fork_ns.get(parent, "")
                    at = time.monotonic()
                    status = [str(event.status)]
                    pending.append(("exit", event.pid, parent, status, at, ("", ""), pidns))
                fork_ns.pop(event.pid, None)  # its pid may be another process's next
        if data and len(pending) < 256:
            continue
        lines = []
        while ctl >= 0:  # the daemon's latest list of watched namespaces
            try:
                chunk = os.read(ctl, 65536)
            except BlockingIOError:
                break
            if not chunk:
                ctl = -1
                break
            ctl_buffer += chunk
            *complete, ctl_buffer = ctl_buffer.split(b"\n")
            if complete:
                with contextlib.suppress(ValueError):
                    watched = set(json.loads(complete[-1]))
        # a fork's container is its parent's, looked up once per parent and batch (a build
        # forks hundreds of times from one make); an exec's is always read
        by_parent: dict[int, str] = {}
        now = time.monotonic()
        for kind, pid, parent, argv, at, (fd0, fd1, *exe), seen_ns in pending:
            if kind != "fork":  # exec, uid, gid, exit: the process's own (else its parent's)
                pidns = capture_owner(owners, (pid, parent), watched, now, seen_ns)
            else:
                pidns = by_parent.get(parent, "")
                if not pidns:
                    pidns = by_parent[parent] = capture_owner(
                        owners, (parent, pid), watched, now, seen_ns
                    )
            if pidns:
                record = [kind, pid, parent, pidns, argv, at, fd0, fd1, *exe]
                lines.append(json.dumps(record, separators=(",", ":")))
        pending.clear()
        if lost != lost_told:  # said to the daemon, which logs it (no container's event)
            lines.append(json.dumps(["lost", 0, 0, "", [str(lost)], now, "", ""]))
            lost_told = lost
        if not lines:
            continue
        out_data = ("\n".join(lines) + "\n").encode()
        if len(backlog) + len(out_data) > CAPTURE_BACKLOG_BYTES:
            lost += len(lines)  # the daemon is far behind: this batch is dropped, and said
            continue
        backlog += out_data
        backlog = flush_backlog(out, backlog)


def flush_backlog(out: int, backlog: bytearray) -> bytearray:
    """Write what the pipe takes now; the rest, to write when it has room."""
    try:
        written = os.write(out, backlog)
    except BlockingIOError:
        return backlog
    del backlog[:written]
    return backlog


def capture_owner(
    owners: membership.PidnsOwners,
    pids: tuple[int, int],
    watched: set[str] | None,
    now: float,
    seen_ns: str = "",
) -> str:
    """The watched container's pid namespace of the first of `pids` still there (an exec's
    process, else its parent), "" when neither is a watched container's. `seen_ns`: the
    first one's namespace as read at its event (it may have exited since)."""
    if seen_ns:
        owner = owners.owner(pids[0], seen_ns, watched, now)
        if owner:
            return owner
    for pid in pids:
        pidns = procfs.pid_ns(pid) if pid else ""
        if pidns:
            owner = owners.owner(pid, pidns, watched, now)
            if owner:
                return owner
    return ""


def correlate_pipeline(
    recent: deque[tuple[float, int, int, list[str], str, str]], pid: int, parent: int, now: float
) -> list[Threat]:
    """A secret source piped into a network tool by one shell (typed at an interactive
    shell: no script to read). The stages of a pipeline are siblings joined by pipes;
    their execs arrive in any order, so each new one rebuilds the chain it is part of
    from the siblings recorded so far (started within 2 s)."""
    if not parent:
        return []
    siblings = [e for e in recent if e[2] == parent and now - e[0] <= 2.0]
    me = next((e for e in reversed(siblings) if e[1] == pid), None)
    if me is None:
        return []
    chain = [me]
    for upstream in (True, False):
        current = me
        for _ in range(4):
            link = current[4] if upstream else current[5]
            if not link.startswith("pipe:"):
                break
            other = next(
                (e for e in siblings if e is not current and (e[5] if upstream else e[4]) == link),
                None,
            )
            if other is None or other in chain:
                break
            if upstream:
                chain.insert(0, other)
            else:
                chain.append(other)
            current = other
    roles = [rules.pipeline_role(e[3]) for e in chain]
    if "source" not in roles:
        return []
    first = roles.index("source")
    if "send" not in roles[first + 1 :]:
        return []
    sender = chain[roles.index("send", first + 1)]
    return [rules.sibling_exfil_threat(pid, chain[first][3], sender[3])]


def exe_link(pid: int) -> tuple[str, str]:
    """A process's program: its path and "device:inode" (what file it really is)."""
    try:
        path = os.readlink(f"/proc/{pid}/exe")
        info = os.stat(f"/proc/{pid}/exe")
    except OSError:
        return "", ""
    return path, f"{info.st_dev}:{info.st_ino}"


def identity(text: str) -> filewatch.Identity | None:
    dev, _, ino = text.partition(":")
    return (int(dev), int(ino)) if dev.isdigit() and ino.isdigit() else None


def fd_link(pid: int, num: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/fd/{num}")
    except OSError:
        return ""


# ---------------------------------------------------------------------- single instance
def open_lock(home_fd: int, owner: tuple[int, int] | None) -> int:
    """monitor.lock in the home, never through a symlink: one planted there (or a FIFO, a
    hard link, another user's file) is removed and a fresh file made, handed to `owner`."""
    flags = os.O_RDWR | os.O_CREAT
    try:
        return nofollow.open_nofollow(home_fd, "monitor.lock", flags, 0o644, owner)
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.EINVAL, errno.EMLINK, errno.EPERM, errno.ENXIO):
            raise
    nofollow.unlink(home_fd, "monitor.lock")
    return nofollow.open_nofollow(home_fd, "monitor.lock", flags | os.O_EXCL, 0o644, owner)


def detach() -> None:
    """Leave the caller's session and never lead one. A session leader without a controlling
    terminal that opens a terminal without O_NOCTTY gets it as its controlling terminal: a
    container's root can bind-mount a pty over a file this daemon reads, and ^C, ^\\ or ^Z
    typed on its master would then signal the daemon. Fork, new session (no terminal kept
    from the caller, e.g. through sudo), fork again: the daemon is the second child, in a
    session whose leader has exited, and no process of it can acquire a terminal. Before
    the lock and the pid file: both are the daemon's own."""
    if os.fork() > 0:
        os._exit(0)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)


def launch(argv: list[str]) -> int:
    """The launcher's entry point (root, `python3 -I`, monitor/control.py LAUNCHER_TEXT): the
    daemon's stdout and stderr go to the user's monitor.log, opened here without following a
    symlink (the launcher used to let the shell open it as root with `>>`), then the daemon
    runs with `argv`."""
    home = Path(argv[argv.index("--home") + 1]) if "--home" in argv else coi_home()
    owner = None
    if "--owner" in argv:
        uid, _, gid = argv[argv.index("--owner") + 1].partition(":")
        owner = (int(uid), int(gid))
    try:
        fd = open_log(home, owner)
    except (OSError, ValueError) as exc:
        print(f"coi-monitor-daemon: cannot open {home}/logs/monitor.log: {exc}", file=sys.stderr)
    else:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
    return main(argv)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="coi-monitor-daemon")
    parser.add_argument("--home", help="the COI home to serve (default $COI_HOME or ~/.coi)")
    parser.add_argument("--owner", help="uid:gid owning the files the daemon writes")
    args = parser.parse_args(argv)
    if args.home:
        os.environ["COI_HOME"] = args.home
    home = coi_home()
    owner: tuple[int, int] | None = None
    if args.owner:
        uid, _, gid = args.owner.partition(":")
        owner = (int(uid), int(gid))
    if os.geteuid() != 0:
        print("coi-monitor-daemon: needs root (proc connector, NFLOG, nftables)", file=sys.stderr)
        return 1
    detach()
    # The user's ~/.coi, walked and kept open without following a symlink they planted;
    # what root creates there is handed to them (they can remove it).
    home_fd = nofollow.open_dir(home, create=True, owner=owner)
    try:
        fd = open_lock(home_fd, owner)
    except BaseException:
        os.close(home_fd)
        raise
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        os.close(home_fd)
        return 0  # already running: a second start is a no-op
    pid = f"{os.getpid()}\n".encode()
    nofollow.write_file(home_fd, "monitor.pid", pid, 0o644, owner)
    settings = read_settings(home_fd, owner)
    packs = rulepacks.load_for_daemon(
        home, owner, log_line, settings.sigma_dir, settings.gtfobins_dir
    )
    daemon = Daemon(home, settings.monitor, owner, packs)

    def stop(_signum: int, _frame: object) -> None:
        daemon.stop = True

    signal.signal(signal.SIGTERM, stop)  # `coi monitor --stop`
    # what only a terminal sends (the daemon has none; see detach): never a way to stop it
    for name in ("SIGINT", "SIGQUIT", "SIGTSTP", "SIGTTIN", "SIGTTOU", "SIGHUP"):
        signal.signal(getattr(signal, name), signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, daemon.request_dump)
    try:
        run_restarting(daemon)
    finally:
        with contextlib.suppress(OSError):
            nofollow.unlink(home_fd, "monitor.pid")
        os.close(fd)
        os.close(home_fd)
    return 0


RESTARTS_PER_MINUTE = 5  # a fault that comes back faster ends the daemon


def log_line(message: str) -> None:
    """A line of the daemon's log (its stderr: the user's monitor.log)."""
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {message}", file=sys.stderr, flush=True)


def read_settings(home_fd: int, owner: tuple[int, int] | None) -> DaemonSettings:
    """What `coi` handed over in the home (monitor/config.py, DAEMON_SETTINGS), read without
    following a symlink; the defaults when it is missing or refused (said in the log)."""
    try:
        text = nofollow.read_file(home_fd, DAEMON_SETTINGS, DAEMON_SETTINGS_LIMIT, owner)
        settings = parse_daemon_settings(text.decode("utf-8"))
    except FileNotFoundError:
        log_line(f"no {DAEMON_SETTINGS} (not started by coi): the default settings")
        return DaemonSettings()
    except (OSError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
        log_line(f"{DAEMON_SETTINGS} refused ({clean(str(exc))}): the default settings")
        return DaemonSettings()
    for note in settings.notes:
        log_line(clean(note))
    return settings


def run_restarting(daemon: Daemon) -> None:
    """The daemon's loop, started again after a fault (an exception in any handler would
    otherwise end the watch of every container of this home, whatever caused it): what it
    knew of each container is dropped, and the next listing watches them all anew, with a
    record for each saying the watch was interrupted."""
    faults: deque[float] = deque()
    while True:
        try:
            daemon.run()
            return
        except Exception as exc:
            now = time.monotonic()
            faults.append(now)
            while faults and faults[0] < now - 60:
                faults.popleft()
            where = traceback.extract_tb(exc.__traceback__)[-1]
            daemon.log(
                f"fault: {exc!r} at {Path(where.filename).name}:{where.lineno}; "
                + ("giving up" if len(faults) > RESTARTS_PER_MINUTE else "starting again")
            )
            if len(faults) > RESTARTS_PER_MINUTE:
                raise
            for watched in list(daemon.watched.values()):
                daemon.interrupted.add(watched.identity)
                daemon.forget(watched)
            daemon.responder.pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="respond")
            daemon.faults += 1


if __name__ == "__main__":
    sys.exit(main())
