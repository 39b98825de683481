"""Detectors that need no I/O: command lines, packets and counters in, Threats out.

Every rule has a stable id (`<area>.<name>`); the behavioural reverse-shell rules, which
need the process graph, live in behaviour.py.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import struct
from collections import Counter, deque
from dataclasses import dataclass

from coi_tui.monitor.config import MonitorConfig
from coi_tui.monitor.events import Threat

SHELLS = {"sh", "bash", "dash", "zsh", "ksh", "mksh", "ash", "busybox", "fish", "tcsh", "csh"}
INTERPRETERS = {
    "python",
    "python2",
    "python3",
    "perl",
    "ruby",
    "php",
    "node",
    "nodejs",
    "lua",
    "awk",
    "gawk",
    "mawk",
    "tclsh",
    "irb",
    "bun",
    "deno",
    "java",
    "pwsh",
    "rscript",
    "julia",
}
NETCATS = {"nc", "ncat", "netcat", "nc.traditional", "nc.openbsd", "busybox"}
SEARCHERS = {"grep", "egrep", "fgrep", "rg", "ag", "ack", "git", "find", "sed", "awk"}
READERS = {
    "cat",
    "less",
    "more",
    "head",
    "tail",
    "strings",
    "xxd",
    "hexdump",
    "od",
    "base64",
    "cp",
    "tar",
    "zip",
    "scp",
    "rsync",
    "curl",
    "wget",
    "nl",
    "vi",
    "vim",
    "nano",
}
SSH_TOOLS = {"ssh", "sshd", "scp", "sftp", "ssh-agent", "ssh-add", "ssh-keygen", "ssh-keyscan"}
CLOUD_FILES = (
    ".aws/credentials",
    ".aws/config",
    ".config/gcloud/",
    ".azure/",
    ".docker/config.json",
    ".kube/config",
    ".netrc",
    ".git-credentials",
    ".pgpass",
    ".npmrc",
    ".pypirc",
)
SECRET_PATTERNS = re.compile(
    r"begin (rsa |dsa |ec |openssh )?private|aws_access_key_id|aws_secret_access_key|"
    r"aws_session_token|secretaccesskey|accesskeyid|id_rsa|id_ed25519|id_ecdsa|id_dsa",
    re.IGNORECASE,
)
BROAD_SECRET_WORDS = re.compile(r"password|passwd|secret|api[_-]?key|token|credential", re.I)
ENV_DUMP = re.compile(r"(^|[;&|(]\s*)(env|printenv)\s*($|[;&|>)])", re.M)
LOCAL_NAMES = ("localhost", "127.", "0.0.0.0", "::1", "[::1]")
PRIVATE = [
    ipaddress.ip_network(n)
    for n in (
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",
        "169.254.0.0/16",
        "198.18.0.0/15",
        "fc00::/7",
        "fe80::/10",
    )
]


def base(path: str) -> str:
    return os.path.basename(path or "")


def is_shell(name: str) -> bool:
    return name in SHELLS


def is_interpreter(name: str) -> bool:
    stripped = re.sub(r"[\d.]+$", "", name)
    return name in INTERPRETERS or stripped in INTERPRETERS


def threat(
    rule: str,
    level: str,
    category: str,
    title: str,
    description: str,
    evidence: dict[str, object],
    key: str,
) -> Threat:
    return Threat(rule, level, category, title, description, evidence, dedup_key=f"{rule}:{key}")


# --------------------------------------------------------------------------- command lines
def _inline_code(argv: list[str], flags: tuple[str, ...]) -> str:
    for i, arg in enumerate(argv[1:], 1):
        if arg in flags and i + 1 < len(argv):
            return argv[i + 1]
        for flag in flags:
            if arg.startswith(flag) and len(arg) > len(flag) and not arg.startswith("--"):
                return arg[len(flag) :]
    return ""


def _remote_target(text: str) -> bool:
    """/dev/tcp/HOST/PORT with HOST not local."""
    for match in re.finditer(r"/dev/(tcp|udp)/([^/\s]+)/", text):
        if not match.group(2).startswith(LOCAL_NAMES):
            return True
    return False


def cmdline_threats(pid: int, argv: list[str], exe: str) -> list[Threat]:
    """Rules on one exec: the complement of the behavioural reverse-shell check."""
    if not argv:
        return []
    name = base(argv[0])
    exe_name = base(exe)
    command = " ".join(argv)[:300]
    evidence = {"process": {"pid": pid, "command": command}}
    out: list[Threat] = []

    def hit(rule: str, level: str, category: str, title: str, why: str) -> None:
        ev = {"process": {**evidence["process"], "pattern": why}}
        out.append(threat(rule, level, category, title, why, ev, f"{pid}:{command[:80]}"))

    lowered = [a.lower() for a in argv]
    # netcat/socat wiring a program to the network
    attach_flags = ("-e", "-c", "--exec", "--sh-exec", "--lua-exec")
    if (name in NETCATS or exe_name in NETCATS) and any(a in attach_flags for a in lowered):
        hit(
            "proc.netcat-exec",
            "critical",
            "process",
            "Reverse shell detected",
            f"{name} started with a program attached to the connection",
        )
    socat_exec = any(a.startswith(("exec:", "system:")) or ",exec:" in a for a in lowered)
    if "socat" in (name, exe_name) and socat_exec:
        hit(
            "proc.socat-exec",
            "critical",
            "process",
            "Reverse shell detected",
            "socat connecting a program to a socket",
        )
    script = _inline_code(argv, ("-c",)) if is_shell(name) or is_shell(exe_name) else ""
    if script:
        if _remote_target(script) and re.search(r"[<>]", script):
            hit(
                "proc.dev-tcp",
                "critical",
                "process",
                "Reverse shell detected",
                "shell redirecting to /dev/tcp or /dev/udp of a remote host",
            )
        if re.search(r"mkfifo|mknod\s+\S+\s+p\b", script) and re.search(
            r"\|\s*(/bin/)?(ba|z|da)?sh\b|\b(nc|ncat|netcat|telnet|openssl)\b", script
        ):
            hit(
                "proc.fifo-shell",
                "critical",
                "process",
                "Reverse shell detected",
                "named pipe looping a shell through a network tool",
            )
        if re.search(r"base64\s+(-d|--decode)\b.*\|\s*(/bin/)?(ba|z|da)?sh\b", script):
            hit(
                "proc.decode-to-shell",
                "warning",
                "process",
                "Decoded payload piped to a shell",
                "base64-decoded text executed by a shell",
            )
    if is_interpreter(name) or is_interpreter(exe_name):
        code = _inline_code(argv, ("-c", "-e", "-r", "-E", "--eval"))
        if code and interpreter_socket_oneliner(code):
            hit(
                "proc.interpreter-socket",
                "critical",
                "process",
                "Reverse shell detected",
                f"{name} one-liner opening a socket and wiring it to a shell or stdio",
            )
    out.extend(credential_threats(pid, name, argv, command))
    return out


def interpreter_socket_oneliner(code: str) -> bool:
    """Sigma's interpreter rules, all parts required: a socket, a connect, and a way to hand
    it to a shell or to the standard streams."""
    low = code.lower()
    sock = re.search(r"socket|fsockopen|tcpsocket|net\.connect|net\.socket|/inet/tcp", low)
    connect = re.search(r"connect|fsockopen|tcpsocket|new\(|/inet/tcp", low)
    wiring = re.search(
        r"dup2|pty|spawn|subprocess|popen|exec|system\(|fdopen|stdin|/bin/(ba|z|da)?sh|"
        r"child_process|proc_open|shell_exec|passthru",
        low,
    )
    return bool(sock and connect and wiring)


def credential_threats(pid: int, name: str, argv: list[str], command: str) -> list[Threat]:
    out: list[Threat] = []
    evidence = {"process": {"pid": pid, "command": command}}

    def hit(rule: str, title: str, why: str) -> None:
        ev = {"process": {**evidence["process"], "pattern": why}}
        out.append(
            threat(rule, "warning", "credential_access", title, why, ev, f"{pid}:{command[:80]}")
        )

    args = argv[1:]
    dump = name in ("env", "printenv") and all(a.startswith("-") for a in args)
    # a shell's script too: `env` alone is over within a millisecond, its script is not
    script = _inline_code(argv, ("-c",)) if is_shell(name) else ""
    if dump or ENV_DUMP.search(script):
        hit("cred.env-dump", "Environment variable scanning detected", "environment dumped")
    for arg in args:
        if "/proc/" in arg and "environ" in arg and "/proc/self/" not in arg:
            hit(
                "cred.proc-environ",
                "Environment variable scanning detected",
                "another process's environment read through /proc",
            )
            break
    if name not in SSH_TOOLS and not is_shell(name):  # a shell's script: judged per command
        for arg in args:
            if re.search(r"\.ssh/(id_|.*_key$|authorized_keys)|^/etc/ssh/ssh_host_.*_key$", arg):
                hit("cred.ssh-key", "SSH key access", f"{name} on {arg[:120]}")
                break
    if is_shell(name) and script:
        # the shell's script, because `cat ~/.ssh/id_rsa` itself may be gone before we look:
        # a reading command and a secret store within one simple command
        for command in re.split(r"[;&|\n]+", script):
            words = command.split()
            if words and base(words[0]) in SEARCHERS and SECRET_PATTERNS.search(command):
                # `grep -r 'BEGIN ... PRIVATE' ~` is as short-lived as a `cat`
                hit(
                    "cred.secret-search",
                    "Searching for private keys or credentials",
                    f"{command.strip()[:120]}",
                )
                continue
            if not words or base(words[0]) not in READERS:
                continue
            rest = " ".join(words[1:])
            if re.search(r"\.ssh/(id_|\S*_key\b)", rest):
                hit("cred.ssh-key", "SSH key access", f"{command.strip()[:120]}")
            elif any(marker in rest for marker in CLOUD_FILES):
                hit("cred.cloud-file", "Credential file access", f"{command.strip()[:120]}")
    if name in READERS or name in SEARCHERS:
        for arg in args:
            if any(marker in arg for marker in CLOUD_FILES) or re.search(r"(^|/)\.env$", arg):
                hit("cred.cloud-file", "Credential file access", f"{name} on {arg[:120]}")
                break
    if name in SEARCHERS:
        joined = " ".join(args)
        if SECRET_PATTERNS.search(joined):
            hit(
                "cred.secret-search",
                "Searching for private keys or credentials",
                f"{name} searching for key material",
            )
        elif (
            BROAD_SECRET_WORDS.search(joined)
            and any(
                a.startswith("-") and ("r" in a or "R" in a) for a in args if not a.startswith("--")
            )
            and any(
                a in ("/", "~", "/home", "/root", "/etc") or a.startswith("/home") for a in args
            )
        ):
            hit(
                "cred.secret-search",
                "Searching for credentials",
                f"{name} recursively searching system or home directories for secrets",
            )
    return out


# --------------------------------------------------------------------------- network
@dataclass(frozen=True)
class Packet:
    src: str
    dst: str
    proto: str  # tcp | udp | icmp | other
    sport: int
    dport: int
    dns_name: str = ""
    dns_type: int = 0


def parse_packet(payload: bytes) -> Packet | None:
    """An IPv4 packet from the network header (what NFLOG hands us)."""
    if len(payload) < 20 or payload[0] >> 4 != 4:
        return None
    ihl = (payload[0] & 0x0F) * 4
    proto_num = payload[9]
    src = ".".join(str(b) for b in payload[12:16])
    dst = ".".join(str(b) for b in payload[16:20])
    proto = {6: "tcp", 17: "udp", 1: "icmp"}.get(proto_num, "other")
    sport = dport = 0
    if proto in ("tcp", "udp") and len(payload) >= ihl + 4:
        sport, dport = struct.unpack_from(">HH", payload, ihl)
    name, qtype = "", 0
    if proto == "udp" and dport == 53:
        name, qtype = dns_question(payload[ihl + 8 :])
    return Packet(src, dst, proto, sport, dport, name, qtype)


def dns_question(msg: bytes) -> tuple[str, int]:
    """The first question's name and type (no compression in questions from a client)."""
    if len(msg) < 12:
        return "", 0
    offset, labels = 12, []
    while offset < len(msg):
        length = msg[offset]
        if length == 0 or length & 0xC0:
            offset += 1
            break
        labels.append(msg[offset + 1 : offset + 1 + length].decode("ascii", "replace"))
        offset += 1 + length
    qtype = struct.unpack_from(">H", msg, offset)[0] if offset + 2 <= len(msg) else 0
    return ".".join(labels), qtype


def in_private(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in PRIVATE)


def entropy(text: str) -> float:
    if not text:
        return 0.0
    counts = Counter(text)
    return -sum(c / len(text) * math.log2(c / len(text)) for c in counts.values())


def packet_threats(pkt: Packet, config: MonitorConfig, gateway: str) -> list[Threat]:
    """First-packet rules (TCP SYN, UDP): C2 ports, metadata, private networks, DNS server."""
    conn = {
        "protocol": pkt.proto,
        "local_addr": f"{pkt.src}:{pkt.sport}",
        "remote_addr": f"{pkt.dst}:{pkt.dport}",
    }

    def make(rule: str, level: str, title: str, reason: str) -> Threat:
        evidence = {"network": {"connection": conn, "reason": reason, "remote_host": pkt.dst}}
        return threat(
            rule,
            level,
            "network",
            title,
            f"{title}: {pkt.dst}:{pkt.dport} ({reason})",
            evidence,
            # per connection (SYN retransmits share the source port)
            f"{pkt.sport}->{pkt.dst}:{pkt.dport}",
        )

    if pkt.dst in config.metadata_addresses:
        return [
            make("net.metadata", "critical", "Metadata endpoint access", "cloud metadata service")
        ]
    if pkt.proto in ("tcp", "udp") and pkt.dport in config.c2_ports:
        return [
            make(
                "net.c2-port",
                "critical",
                "Connection to suspicious port",
                f"port {pkt.dport} is a common C2/backdoor port",
            )
        ]
    if pkt.dport == 53 and pkt.proto in ("udp", "tcp"):
        if pkt.dst != gateway:
            return [
                make(
                    "dns.nonstandard-server",
                    "warning",
                    "DNS query to non-standard server",
                    "only the bridge resolver is expected",
                )
            ]
        return []
    if pkt.dst == gateway:  # the bridge host serves DHCP/DNS (COI excludes it too)
        return []
    if in_private(pkt.dst) and pkt.proto != "other":
        return [
            make(
                "net.private",
                "high",
                "Connection to private network",
                "RFC1918/link-local destination",
            )
        ]
    return []


class DnsWatch:
    """Per container: query rate per minute and suspicious labels (tunnelling heuristics)."""

    def __init__(self, config: MonitorConfig) -> None:
        self.config = config
        self.times: deque[float] = deque()

    def feed(self, pkt: Packet, now: float) -> list[Threat]:
        out: list[Threat] = []
        self.times.append(now)
        while self.times and self.times[0] < now - 60:
            self.times.popleft()
        name = pkt.dns_name
        evidence = {
            "dns": {
                "query": name[:255],
                "type": pkt.dns_type,
                "server": pkt.dst,
                "queries_last_minute": len(self.times),
            }
        }
        if len(self.times) > self.config.dns_rate_per_min:
            out.append(
                threat(
                    "dns.rate",
                    "warning",
                    "network",
                    "High DNS query volume",
                    f"{len(self.times)} DNS queries in the last minute (potential DNS tunnelling)",
                    evidence,
                    "rate",
                )
            )
        labels = name.split(".")
        subdomain = labels[:-2]
        longest = max(subdomain, key=len, default="")
        joined = "".join(subdomain)
        bits = entropy(joined)
        if len(longest) > self.config.dns_label_max and bits > self.config.dns_entropy_bits:
            out.append(
                threat(
                    "dns.tunnel-label",
                    "high",
                    "network",
                    "DNS tunnelling suspected",
                    f"label of {len(longest)} chars with entropy {bits:.2f} bits",
                    evidence,
                    ".".join(labels[-2:]),
                )
            )
        elif len(name) > self.config.dns_name_max or "==." in name:
            out.append(
                threat(
                    "dns.long-name",
                    "warning",
                    "network",
                    "Unusual DNS query",
                    f"query name of {len(name)} chars",
                    evidence,
                    ".".join(labels[-2:]),
                )
            )
        return out


# --------------------------------------------------------------------------- volumes, spawns
class RateWatch:
    """Counter samples -> bytes (or events) within a sliding window."""

    def __init__(self, window: float) -> None:
        self.window = window
        self.samples: deque[tuple[float, int]] = deque()

    def add(self, now: float, total: int) -> int:
        """Record a cumulative total; return the increase over the window."""
        self.samples.append((now, total))
        # keep the newest sample at or before the window's start as the baseline
        while len(self.samples) > 1 and self.samples[1][0] <= now - self.window:
            self.samples.popleft()
        return max(0, total - self.samples[0][1])


def volume_threats(
    kind: str, amount: int, window: float, threshold_mb: float, evidence_key: str
) -> list[Threat]:
    mb = amount / (1 << 20)
    if mb <= threshold_mb:
        return []
    if kind == "read":
        evidence = {
            "filesystem": {
                "read_bytes_mb": round(mb, 2),
                "read_rate_mb_per_sec": round(mb / window, 2),
                "threshold_mb": threshold_mb,
                "duration": f"{window:g}s",
            }
        }
        return [
            threat(
                "fs.large-read",
                "high",
                "filesystem",
                "Large read detected",
                f"Read {mb:.1f} MB within {window:g} s (threshold {threshold_mb:g} MB)",
                evidence,
                evidence_key,
            )
        ]
    evidence = {
        "network_volume": {
            "sent_mb": round(mb, 2),
            "window_sec": window,
            "threshold_mb": threshold_mb,
        }
    }
    return [
        threat(
            "net.exfil-volume",
            "high",
            "network",
            "Large upload detected",
            f"Sent {mb:.1f} MB within {window:g} s (threshold {threshold_mb:g} MB)",
            evidence,
            evidence_key,
        )
    ]


def spawn_threat(count: int, threshold: int) -> list[Threat]:
    if threshold <= 0 or count <= threshold:
        return []
    evidence = {"process_count": {"count": count, "threshold": threshold, "delta": count}}
    return [
        threat(
            "proc.spawn-storm",
            "high",
            "process",
            "Process spawn rate spike detected",
            f"{count} processes started within one second (threshold {threshold})",
            evidence,
            "spawn",
        )
    ]
