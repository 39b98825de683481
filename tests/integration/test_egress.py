"""Egress by name (issue 20) against the real daemon, on test_network.py's private topology
(NETWORK SAFETY: the "internet" is two TEST-NET addresses in the test's own outside netns; the
names are answered by the test's own dnsmasq on loopback; nothing else is reached).

In the outside netns one server answers TLS on 443 (a self-signed certificate; it reports
the SNI it was sent and the address it was reached at) and plain HTTP on 80 (the Host).
The containers connect the way an agent's tools do: to an address, with a name in the SNI
or Host, and the redirect takes them to the user's egress proxy on the bridge's gateway."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from coi_tui.incus import Incus
from tests.conftest import CoiRunner
from tests.integration.test_network import (  # noqa: F401
    Topology,
    can_connect,
    net_env,
    start,
    topology,
    wait_for,
)

pytestmark = pytest.mark.incus

SERVER = r"""
import socket, ssl, sys, threading
cert, key = sys.argv[1], sys.argv[2]
seen = threading.local()  # the handshake (and its SNI callback) runs in the serving thread
def on_sni(sock, name, ctx):
    seen.name = name or ""
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
ctx.sni_callback = on_sni
def answer(sock, name):
    here = sock.getsockname()[0].encode()
    sock.sendall(b"HTTP/1.0 200 OK\r\n\r\nserved " + name + b" at " + here)
    sock.close()
def tls_conn(raw):
    seen.name = ""
    try:
        s = ctx.wrap_socket(raw, server_side=True)
        s.recv(4096)
        answer(s, seen.name.encode())
    except Exception:
        raw.close()
def http_conn(raw):
    data = raw.recv(4096)
    lines = data.split(b"\r\n")
    host = [l.split(b":", 1)[1].strip() for l in lines if l.lower().startswith(b"host:")]
    answer(raw, host[0] if host else b"")
def serve(port, handler):
    lst = socket.create_server(("0.0.0.0", port))
    while True:
        conn, _ = lst.accept()
        threading.Thread(target=handler, args=(conn,), daemon=True).start()
def udp_echo():  # QUIC's port: what answers here was not dropped
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("0.0.0.0", 443))
    while True:
        data, peer = u.recvfrom(2048)
        u.sendto(b"echo " + data, peer)
threading.Thread(target=udp_echo, daemon=True).start()
threading.Thread(target=serve, args=(80, http_conn), daemon=True).start()
serve(443, tls_conn)
"""

# Runs in the container: each probe connects to an address with a name of its choosing.
PROBE = r"""
import json, socket, ssl, struct, sys
spec = json.loads(sys.argv[1])
res = {}
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
def dns(server, name, qtype):
    q = struct.pack("!HHHHHH", 7, 0x100, 1, 0, 0, 0)
    q += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    q += struct.pack("!HH", qtype, 1)
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.settimeout(5)
    u.sendto(q, (server, 53))
    data = u.recv(4096)
    rcode, count = data[3] & 0xF, struct.unpack("!H", data[6:8])[0]
    found = [socket.inet_ntoa(data[-4 - 16 * i : len(data) - 16 * i]) for i in range(count)]
    return ("NXDOMAIN" if rcode == 3 else f"rcode {rcode}") if rcode else "NOERROR:" + ",".join(
        sorted(found)
    )
for label, kind, address, name, port in spec:
    if kind == "dns":
        try:
            res[label] = dns(address, name, port)
        except OSError as exc:
            res[label] = "refused: " + type(exc).__name__
        continue
    try:
        raw = socket.create_connection((address, port), timeout=5)
        if kind == "tls":
            s = ctx.wrap_socket(raw, server_hostname=name or None)
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        else:
            s = raw
            s.sendall(b"GET / HTTP/1.1\r\nHost: " + name.encode() + b"\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        res[label] = data.split(b"\r\n\r\n", 1)[-1].decode(errors="replace")
    except (OSError, ssl.SSLError) as exc:
        res[label] = "refused: " + type(exc).__name__
print(json.dumps(res))
"""


# Runs in the container: other.test by name (a DNS query, then a TLS connection), as a tool
# with retries would: glibc gives up on a DNS answer after about 10 s (two tries of 5 s) and
# the hold is then still open, so the next try joins it.
FETCH_OTHER = (
    "import socket, ssl, time\n"
    "end = time.time() + 60\n"
    "while True:\n"
    "    try:\n"
    "        ip = socket.gethostbyname('other.test')\n"
    "        break\n"
    "    except OSError:\n"
    "        if time.time() > end:\n"
    "            raise\n"
    "c = ssl.create_default_context(); c.check_hostname = False; c.verify_mode = ssl.CERT_NONE\n"
    "s = c.wrap_socket(socket.create_connection((ip, 443), timeout=90), "
    "server_hostname='other.test')\n"
    "s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n')\n"
    "print(s.recv(4096).split(b'\\r\\n\\r\\n')[-1].decode())\n"
)


@pytest.fixture(scope="module")
def web(
    topology: Topology,  # noqa: F811 (test_network's fixture, imported above)
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Topology]:
    """The TLS and HTTP server in the outside netns, and the test's names for it."""
    work = tmp_path_factory.mktemp("egress-web")
    cert, key = work / "cert.pem", work / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=allowed.test", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    namespace = f"coito{topology.outside_dev[len('coitov') :]}"
    server = subprocess.Popen(
        ["ip", "netns", "exec", namespace, "python3", "-c", SERVER, str(cert), str(key)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        topology.assert_routes()
        wait_for("the test's web server", lambda: can_connect(topology.internet, 443))
        topology.dns_restart(
            topology.internet,
            f"other.test,{topology.internet}",  # a second name on the allowed name's address
            f"sub.wild.test,{topology.internet}",
            f"denied.wild.test,{topology.internet}",
            f"inside.test,{topology.lan}",  # a listed name that leads into the LAN
            "loop.test,127.0.0.1",  # ... or to the host the proxy runs on
        )
        yield topology
    finally:
        server.terminate()
        server.wait(timeout=10)
        topology.dns_restart(topology.internet)


def probe(incus: Incus, name: str, topo: Topology, spec: list[list[object]]) -> dict[str, str]:
    topo.assert_routes()
    wait_for(
        "the container's address",
        lambda: bool(incus.get_instance(name, with_state=True).ipv4),
        30,
    )
    result = incus.exec_capture(name, ["python3", "-c", PROBE, json.dumps(spec)], timeout=90)
    assert result.ok, result.stderr
    return json.loads(result.stdout)


def egress_log(coi: CoiRunner, name: str) -> list[dict[str, object]]:
    path = coi.home / "egress" / "logs" / f"{name}.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


@contextlib.contextmanager
def proxy_stopped_after(coi: CoiRunner, bridge: str) -> Iterator[None]:
    try:
        yield
    finally:
        state = coi.home / "egress" / f"proxy-{bridge}.json"
        with contextlib.suppress(OSError, ValueError, KeyError):
            os.kill(int(json.loads(state.read_text())["pid"]), signal.SIGTERM)


def test_names_decide_egress_through_the_proxy(
    coi: CoiRunner, web: Topology, incus: Incus, workspace: Path
) -> None:
    topo = web
    (coi.home / "config.toml").write_text(
        '[network]\negress = "proxy"\n'
        'allowed_domains = ["allowed.test", "*.wild.test", "inside.test"]\n'
        'denied_domains = ["denied.wild.test"]\n'
    )
    with proxy_stopped_after(coi, topo.bridge):
        allowlist = start(coi, topo, "allowlist", workspace)
        restricted = start(coi, topo, "restricted", workspace)
        spec: list[list[object]] = [
            ["allowed", "tls", topo.internet, "allowed.test", 443],
            ["same_ip_other_name", "tls", topo.internet, "other.test", 443],
            ["raw_ip", "tls", topo.internet, "", 443],
            ["allowed_name_attacker_ip", "tls", topo.internet2, "allowed.test", 443],
            ["wildcard", "tls", topo.internet, "sub.wild.test", 443],
            ["denied_below_wildcard", "tls", topo.internet, "denied.wild.test", 443],
            ["into_the_lan", "tls", topo.internet, "inside.test", 443],
            ["http_allowed", "http", topo.internet, "allowed.test", 80],
            ["http_other", "http", topo.internet, "other.test", 80],
            ["not_proxied_port", "http", topo.internet, "allowed.test", 8080],
            # DNS, to the bridge's gateway and to an address of the container's choosing:
            # both reach coi's resolver (port: the query type)
            ["dns_allowed", "dns", topo.gateway, "allowed.test", 1],
            ["dns_wildcard", "dns", topo.internet2, "sub.wild.test", 1],
            ["dns_other", "dns", topo.gateway, "other.test", 1],
            ["dns_txt", "dns", topo.gateway, "allowed.test", 16],
            ["dns_lan", "dns", topo.gateway, "inside.test", 1],
        ]
        got = probe(incus, allowlist, topo, spec)
        served = f"served allowed.test at {topo.internet}"
        assert got["allowed"] == served, got
        # the proxy dialed the name's own address, never the one the container chose
        assert got["allowed_name_attacker_ip"] == served, got
        assert got["wildcard"] == f"served sub.wild.test at {topo.internet}", got
        assert got["http_allowed"] == served, got
        for refused in ("same_ip_other_name", "raw_ip", "denied_below_wildcard", "into_the_lan"):
            assert got[refused].startswith("refused"), (refused, got)
        assert "coi egress: other.test is denied" in got["http_other"], got
        assert got["not_proxied_port"].startswith("refused"), got  # by address: nothing
        assert got["dns_allowed"] == f"NOERROR:{topo.internet}", got
        assert got["dns_wildcard"] == f"NOERROR:{topo.internet}", got
        assert got["dns_other"] == "NXDOMAIN", got
        assert got["dns_txt"] == "NOERROR:", got  # no TXT: the wide channel of DNS tunnels
        assert got["dns_lan"] == "NXDOMAIN", got
        # restricted: every public name but the denied ones, other ports by address as before
        open_got = probe(incus, restricted, topo, spec)
        assert open_got["same_ip_other_name"] == f"served other.test at {topo.internet}"
        assert open_got["denied_below_wildcard"].startswith("refused"), open_got
        assert open_got["raw_ip"].startswith("refused"), open_got  # a name is still needed
        assert (
            open_got["not_proxied_port"].startswith("HTTP/1.0 200")
            or "ok" in (open_got["not_proxied_port"])
        ), open_got

        def logged() -> bool:
            return len(egress_log(coi, allowlist)) >= 14

        wait_for("the egress log", logged, 10)
        records = egress_log(coi, allowlist)
        connections = [r for r in records if r["type"] == "connection"]
        by = {(r["protocol"], r["domain"], r["decision"]) for r in connections}
        assert ("tls", "allowed.test", "allowed") in by
        assert ("tls", "other.test", "denied") in by
        assert ("tls", "sub.wild.test", "allowed") in by
        assert ("tls", "denied.wild.test", "denied") in by
        assert ("tls", "", "denied") in by
        assert ("http", "other.test", "denied") in by
        queries = {(r["domain"], r["qtype"], r["decision"]) for r in records if r["type"] == "dns"}
        assert ("other.test", "A", "denied") in queries, queries
        assert ("sub.wild.test", "A", "allowed") in queries, queries
        assert ("allowed.test", "TXT", "allowed") in queries, queries
        lan = next(r for r in connections if r["domain"] == "inside.test")
        assert lan["reason"] == "resolves only to local addresses", lan
        first = next(r for r in connections if r["domain"] == "allowed.test")
        assert first["address"] == topo.internet and first["container"] == allowlist
        assert int(first["bytes_in"]) > 0 and int(first["bytes_out"]) > 0  # type: ignore[call-overload]
        health = coi("health", "--format", "json", env={"COI_BRIDGE": topo.bridge})
        checks = json.loads(health.stdout)["checks"]
        egress = checks["egress"] if isinstance(checks, dict) else None
        assert egress is not None and egress["details"]["running"] is True, egress
        # live policy: open a name and close another for the running container; the very
        # next connection obeys (no restart, no retry)
        coi.ok("egress", "allow", allowlist, "other.test", "--always")
        coi.ok("egress", "deny", allowlist, "allowed.test")
        remembered = tomllib.loads((coi.home / "config.toml").read_text())["network"]
        assert remembered["allowed_domains"][-1] == "other.test", remembered
        assert remembered["egress"] == "proxy"  # the rest of the file as it was
        live = probe(incus, allowlist, topo, [spec[0], spec[1]])
        assert live["same_ip_other_name"] == f"served other.test at {topo.internet}", live
        assert live["allowed"].startswith("refused"), live
        shown = json.loads(coi.ok("egress", "policy", allowlist, "--json").stdout)
        assert "other.test" in shown["allow"] and shown["deny"] == [
            "denied.wild.test",
            "allowed.test",
        ], shown
        assert coi("egress", "allow", allowlist, "other.test:22").returncode == 1  # not proxied
        lines = coi.ok("egress", "log", allowlist, "--json").stdout.splitlines()
        kinds = [json.loads(line)["type"] for line in lines]
        assert kinds.count("policy") == 2 and kinds.count("connection") >= 11, kinds
        assert kinds.count("dns") >= 5, kinds
        summary = json.loads(coi.ok("egress", "log", allowlist, "--summary", "--json").stdout)
        assert summary["other.test"]["allowed"] >= 1 and summary["other.test"]["denied"] >= 2
        policies = coi.home / "egress" / "policies"
        assert (policies / f"{allowlist}.json").exists()
        coi.ok("kill", "--force", allowlist, restricted)
        assert not (policies / f"{allowlist}.json").exists()
        assert not (policies / f"{restricted}.json").exists()
    # fail closed: with the proxy gone, a proxied connection goes nowhere
    state = coi.home / "egress" / f"proxy-{topo.bridge}.json"
    wait_for("the proxy to exit", lambda: not state.exists(), 10)


def test_a_held_request_goes_through_once_approved(
    coi: CoiRunner, web: Topology, incus: Incus, workspace: Path
) -> None:
    """egress_hold_sec: a name outside the allowlist waits for the operator, announced by a
    "pending" record; `coi egress allow` lets that very request through (its DNS query and
    its connection), and a hold nobody answers ends in a refusal."""
    topo = web
    (coi.home / "config.toml").write_text(
        '[network]\negress = "proxy"\negress_hold_sec = 60\nallowed_domains = ["allowed.test"]\n'
    )
    with proxy_stopped_after(coi, topo.bridge):
        name = start(coi, topo, "allowlist", workspace)
        topo.assert_routes()
        waiting = subprocess.Popen(
            ["incus", "exec", name, "--", "python3", "-c", FETCH_OTHER],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:

            def pending() -> list[dict[str, object]]:
                return [r for r in egress_log(coi, name) if r["type"] == "pending"]

            wait_for("a pending approval", lambda: bool(pending()), 30)
            hold = pending()[0]
            assert hold["domain"] == "other.test" and hold["protocol"] == "dns", hold
            coi.ok("egress", "allow", name, "other.test")
            out, err = waiting.communicate(timeout=60)
        finally:
            waiting.kill()
        assert out.strip() == f"served other.test at {topo.internet}", (out, err)
        records = egress_log(coi, name)
        decided = [r for r in records if r.get("hold_id") == hold["hold_id"] and "decision" in r]
        assert decided and decided[0]["decision"] == "allowed", records
        assert any(
            r["type"] == "connection" and r["domain"] == "other.test" and r["decision"] == "allowed"
            for r in records
        ), records
        coi.ok("kill", "--force", name)


def test_the_dashboard_shows_a_held_request_and_y_lets_it_through(
    coi: CoiRunner, web: Topology, incus: Incus, workspace: Path
) -> None:
    """The operator's side of a hold: coi-tui in tmux, a request from inside the slot for an
    unlisted name; the slot gets a badge, the Egress tab lists the request, `y` lets it
    through (the fetch inside the container completes)."""
    from tests.integration.test_dashboard_tmux import TmuxScreen, tui_command

    topo = web
    (coi.home / "config.toml").write_text(
        '[network]\negress = "proxy"\negress_hold_sec = 90\nallowed_domains = ["allowed.test"]\n'
    )
    with proxy_stopped_after(coi, topo.bridge):
        name = start(coi, topo, "allowlist", workspace)
        command, env = tui_command(coi, workspace, "--local-only", env=net_env(topo, "allowlist"))
        screen = TmuxScreen(command, env)
        waiting = None
        try:
            screen.wait(r"\b1 dummy +RUNNING\b", 30, "the slot")
            topo.assert_routes()
            waiting = subprocess.Popen(
                ["incus", "exec", name, "--", "python3", "-c", FETCH_OTHER],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            screen.wait(r"RUNNING +\?1 ", 30, "the slot's approval badge")
            screen.keys("]", "]", "]", "]")
            screen.wait(r"Waiting for approval(.|\n)*other\.test", 10, "the held request")
            screen.keys("y")
            out, err = waiting.communicate(timeout=60)
            assert out.strip() == f"served other.test at {topo.internet}", (out, err)
            screen.wait(lambda s: not re.search(r"RUNNING +\?1 ", s), 10, "the badge gone")
        finally:
            screen.kill()
            if waiting is not None:
                waiting.kill()
        shown = json.loads(coi.ok("egress", "policy", name, "--json").stdout)
        assert "other.test" in shown["allow"], shown
        coi.ok("kill", "--force", name)
