"""Network isolation against the real daemon, on a private test topology (NETWORK SAFETY):

- a test bridge coitnet<r> (NAT off, no IPv6) with its own dnsmasq that forwards nowhere;
- a "neighbor" netns on that bridge at a private address (10.x.y.250 and fe80::250);
- an "outside" netns behind a veth routed by the host, holding two TEST-NET "internet" hosts, a
  172.31.x.10 "LAN" host and 169.254.169.254 (host routes for those /32s point at the veth);
- an HTTP server on the test gateway, and a dnsmasq on loopback for the allowlist's names.

Every target is one of these, and every test asserts the route to it before sending a packet.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import random
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from coi_tui.incus import Incus
from coi_tui.network import netctl
from coi_tui.network.firewall import iface_for
from coi_tui.network.isolation import clean_orphans
from tests.conftest import CoiRunner

pytestmark = pytest.mark.incus

# Runs in the container: waits for DHCP, then probes TCP targets and DNS servers in parallel.
PROBE = r"""
import json, socket, struct, subprocess, sys, threading, time
spec = json.loads(sys.argv[1])
end = time.time() + 20
while time.time() < end:
    out = subprocess.run(["ip", "-4", "-o", "addr", "show", "dev", "eth0"],
                         capture_output=True, text=True).stdout
    if " inet " in out:
        break
    time.sleep(0.1)
res = {"routes": {}}
if spec.get("ipv6"):  # the image has no IPv6 address; an agent with sudo could add one
    subprocess.run(["ip", "-6", "addr", "add", "fe80::77/64", "dev", "eth0", "nodad"])
for t in spec.get("routes", []):
    res["routes"][t] = subprocess.run(["ip", "route", "get", t], capture_output=True,
                                      text=True).stdout.strip()
def tcp(label, host, port):
    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        s = socket.socket(info[0], socket.SOCK_STREAM)
        s.settimeout(spec["timeout"])
        s.connect(info[4])
        s.sendall(b"GET /ok HTTP/1.0\r\n\r\n")
        res[label] = s.recv(64).startswith(b"HTTP/")
        s.close()
    except OSError:
        res[label] = False
def dns(label, server, name):
    q = struct.pack("!HHHHHH", 7, 0x100, 1, 0, 0, 0)
    q += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0\0\1\0\1"
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(spec["timeout"])
    try:
        s.sendto(q, (server, 53))
        res[label] = struct.unpack("!H", s.recv(512)[6:8])[0] > 0
    except OSError:
        res[label] = False
ts = [threading.Thread(target=tcp, args=t) for t in spec.get("tcp", [])]
ts += [threading.Thread(target=dns, args=d) for d in spec.get("dns", [])]
for t in ts:
    t.start()
for t in ts:
    t.join()
print(json.dumps(res))
"""


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(argv)}: {result.stderr.strip()}")
    return result


def wait_for(what: str, condition: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def can_connect(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=0.5).close()
        return True
    except OSError:
        return False


def used_networks() -> list[ipaddress.IPv4Network]:
    routes = json.loads(sh("ip", "-j", "-4", "route", "show", "table", "all").stdout or "[]")
    found = []
    for route in routes:
        dst = route.get("dst", "")
        if dst and dst != "default":
            found.append(ipaddress.IPv4Network(dst, strict=False))
    return found


def free_network(candidates: list[str]) -> ipaddress.IPv4Network:
    used = used_networks()
    random.shuffle(candidates)
    for text in candidates:
        net = ipaddress.IPv4Network(text)
        if not any(net.overlaps(u) for u in used):
            return net
    raise AssertionError("no free test subnet")


@dataclass
class Topology:
    bridge: str
    gateway: str
    neighbor: str  # private host on the test bridge
    neighbor6: str  # its link-local IPv6
    internet: str  # TEST-NET host routed via the host
    internet2: str  # a second one, never allowlisted
    lan: str  # a private host routed via the host
    metadata: str
    outside_dev: str
    dns_port: int
    dns_restart: Callable[..., None]  # (address of allowed.test, *"name,address" records)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def assert_routes(self) -> None:
        """Safety: every target stays on the test bridge or the test veth."""
        on_bridge = sh("ip", "route", "get", self.neighbor).stdout
        assert f"dev {self.bridge} " in on_bridge, on_bridge
        for target in (self.internet, self.internet2, self.lan, self.metadata):
            out = sh("ip", "route", "get", target).stdout
            assert f"dev {self.outside_dev} " in out, out

    def tcp_targets(self) -> list[list[object]]:
        return [
            ["internet", self.internet, 8080],
            ["internet2", self.internet2, 8080],
            ["neighbor", self.neighbor, 8080],
            ["neighbor6", f"{self.neighbor6}%eth0", 8080],
            ["lan", self.lan, 8080],
            ["metadata", self.metadata, 8080],
            ["gateway", self.gateway, 8081],
        ]


@pytest.fixture(scope="module")
def topology(tmp_path_factory: pytest.TempPathFactory, incus: Incus) -> Iterator[Topology]:
    if os.geteuid() != 0:
        pytest.fail("network tests build netns and veths and must run as root")
    r = uuid.uuid4().hex[:5]
    bridge, near_ns, near_dev = f"coitnet{r}", f"coitp{r}", f"coitpv{r}"
    out_ns, out_dev = f"coito{r}", f"coitov{r}"
    subnet = free_network([f"10.{a}.{b}.0/24" for a in range(200, 250) for b in (7, 77, 177)])
    outside = free_network(
        [f"{p}.{n * 8}/29" for p in ("203.0.113", "198.51.100") for n in range(1, 31)]
    )
    lan_net = free_network([f"172.31.{n}.10/32" for n in range(1, 250)])
    hosts = list(subnet.hosts())
    gateway, neighbor = str(hosts[0]), str(hosts[249])
    out_hosts = [str(h) for h in outside.hosts()]
    metadata, lan = "169.254.169.254", str(lan_net.network_address)
    www = tmp_path_factory.mktemp("www")
    (www / "ok").write_text("ok\n")
    topo = Topology(
        bridge, gateway, neighbor, "fe80::250", out_hosts[1], out_hosts[2], lan, metadata,
        out_dev, random.randint(20000, 60000), lambda ip: None,
    )  # fmt: skip
    undo: list[list[str]] = []
    dns_proc: list[subprocess.Popen[bytes]] = []
    try:
        assert not sh("ip", "route", "show", f"{metadata}/32").stdout.strip(), "metadata in use"
        incus.create_network(
            bridge,
            {
                "ipv4.address": f"{gateway}/24",
                "ipv4.nat": "false",
                "ipv6.address": "none",
                "ipv4.dhcp.ranges": f"{hosts[99]}-{hosts[199]}",
                # The bridge's DNS answers one name itself and forwards nothing.
                "raw.dnsmasq": f"no-resolv\nhost-record=gw.test,{gateway}",
            },
            description="coi network test",
        )
        # Neighbor: a private host on the test bridge.
        sh("ip", "netns", "add", near_ns)
        undo.append(["ip", "netns", "del", near_ns])
        sh("ip", "link", "add", near_dev, "type", "veth", "peer", "name", "eth0", "netns", near_ns)
        undo.append(["ip", "link", "del", near_dev])
        sh("ip", "link", "set", near_dev, "master", bridge, "up")
        nx = ["ip", "netns", "exec", near_ns]
        sh(*nx, "ip", "addr", "add", f"{neighbor}/24", "dev", "eth0")
        sh(*nx, "ip", "addr", "add", "fe80::250/64", "dev", "eth0", "nodad")
        sh(*nx, "ip", "link", "set", "eth0", "up")
        sh(*nx, "ip", "link", "set", "lo", "up")
        # Outside: internet, LAN and metadata hosts behind the host's routing.
        sh("ip", "netns", "add", out_ns)
        undo.append(["ip", "netns", "del", out_ns])
        sh("ip", "link", "add", out_dev, "type", "veth", "peer", "name", "eth0", "netns", out_ns)
        undo.append(["ip", "link", "del", out_dev])
        sh("ip", "addr", "add", f"{out_hosts[0]}/29", "dev", out_dev)
        sh("ip", "link", "set", out_dev, "up")
        ox = ["ip", "netns", "exec", out_ns]
        for address in (f"{out_hosts[1]}/29", f"{out_hosts[2]}/29", f"{lan}/32", f"{metadata}/32"):
            sh(*ox, "ip", "addr", "add", address, "dev", "eth0")
        sh(*ox, "ip", "link", "set", "eth0", "up")
        sh(*ox, "ip", "link", "set", "lo", "up")
        sh(*ox, "ip", "route", "add", "default", "via", out_hosts[0])
        for target in (lan, metadata):
            sh("ip", "route", "add", f"{target}/32", "dev", out_dev)
            undo.append(["ip", "route", "del", f"{target}/32", "dev", out_dev])
        topo.assert_routes()
        server = ["python3", "-m", "http.server", "8080", "--bind", "::", "--directory", str(www)]
        for ns in (near_ns, out_ns):
            topo.procs.append(
                subprocess.Popen(
                    ["ip", "netns", "exec", ns, *server],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        topo.procs.append(
            subprocess.Popen(
                [
                    "python3",
                    "-m",
                    "http.server",
                    "8081",
                    "--bind",
                    gateway,
                    "--directory",
                    str(www),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        for host, port in ((neighbor, 8080), (out_hosts[1], 8080), (gateway, 8081)):
            wait_for(f"test server {host}:{port}", lambda h=host, p=port: can_connect(h, p))

        def dns_restart(address: str, *records: str) -> None:
            for proc in dns_proc:
                proc.terminate()
                proc.wait(timeout=10)
            dns_proc.clear()
            dns_proc.append(
                subprocess.Popen(
                    ["dnsmasq", "-k", "-C", "/dev/null", "--no-resolv", "--no-hosts",
                     "--listen-address=127.0.0.1", "--bind-interfaces", f"--port={topo.dns_port}",
                     "--pid-file=", f"--host-record=allowed.test,{address},30",
                     *(f"--host-record={r},30" for r in records)],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )  # fmt: skip
            from coi_tui.network.resolve import query_a

            os.environ["COI_NETWORK_RESOLVER"] = f"127.0.0.1:{topo.dns_port}"

            def answers() -> bool:
                try:
                    return query_a("allowed.test", timeout=0.3)[0] == [address]
                except OSError:
                    return False

            wait_for("test dnsmasq", answers)

        topo.dns_restart = dns_restart
        dns_restart(topo.internet)
        yield topo
    finally:
        os.environ.pop("COI_NETWORK_RESOLVER", None)
        for proc in [*topo.procs, *dns_proc]:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        for argv in reversed(undo):
            sh(*argv, check=False)
        for instance in incus.list_instances():
            if any(d.get("network") == bridge for d in instance.expanded_devices.values()):
                incus.delete_instance(instance.name, force=True)
        # Rules of containers deleted behind coi's back (a failed test's cleanup).
        clean_orphans(incus, dry_run=False)
        if incus.get_network(bridge) is not None:
            incus.delete_network(bridge)


# ---------------------------------------------------------------------- helpers
def net_env(topo: Topology, mode: str) -> dict[str, str]:
    return {
        "COI_BRIDGE": topo.bridge,
        "COI_NETWORK_MODE": mode,
        "COI_NETWORK_RESOLVER": f"127.0.0.1:{topo.dns_port}",
    }


def write_allowlist(coi: CoiRunner) -> None:
    (coi.home / "config.toml").write_text('[network]\nallowed_domains = ["allowed.test"]\n')


def start(coi: CoiRunner, topo: Topology, mode: str, workspace: Path, *extra: str) -> str:
    result = coi.ok(
        "shell", "--background", "--tool", "dummy", "-w", str(workspace), *extra,
        env=net_env(topo, mode),
    )  # fmt: skip
    return next(
        line.split(":", 1)[1].strip()
        for line in result.stderr.splitlines()
        if line.startswith("Container:")
    )


def probe(
    incus: Incus, name: str, topo: Topology, tcp: list[list[object]], dns: bool = True
) -> dict[str, object]:
    topo.assert_routes()
    spec = {
        "timeout": 2,
        "tcp": tcp,
        "dns": [["dns", topo.gateway, "gw.test"]] if dns else [],
        "ipv6": any(t[0] == "neighbor6" for t in tcp),
        "routes": [topo.internet, topo.metadata, topo.lan, topo.neighbor],
    }
    result = incus.exec_capture(name, ["python3", "-c", PROBE, json.dumps(spec)], timeout=60)
    assert result.ok, result.stderr
    data: dict[str, object] = json.loads(result.stdout)
    routes = data.pop("routes")
    assert isinstance(routes, dict)
    # Off-link targets go through our gateway; the neighbor is on the test bridge.
    for target in (topo.internet, topo.metadata, topo.lan):
        assert f"via {topo.gateway} dev eth0" in routes[target], routes[target]
    assert "via" not in routes[topo.neighbor] and "dev eth0" in routes[topo.neighbor]
    return data


def rules_for(name: str) -> bool:
    return iface_for(name) in netctl.interfaces(netctl.table_state())


# ---------------------------------------------------------------------- tests
def test_restricted_open_allowlist_matrix(
    coi: CoiRunner, topology: Topology, incus: Incus, workspace: Path
) -> None:
    write_allowlist(coi)
    expected = {
        "restricted": {"internet": True, "internet2": True, "dns": True},
        "open": {
            "internet": True, "internet2": True, "dns": True, "neighbor": True,
            "neighbor6": True, "lan": True, "metadata": True, "gateway": True,
        },
        # allowed.test is the internet host: reachable by name and address, nothing else.
        "allowlist": {"allowed": True, "internet": True},
    }  # fmt: skip
    names = {mode: start(coi, topology, mode, workspace) for mode in expected}
    for mode, name in names.items():
        assert rules_for(name)
        tcp = topology.tcp_targets()
        if mode == "allowlist":
            tcp.append(["allowed", "allowed.test", 8080])
        got = probe(incus, name, topology, tcp)
        want = {label: expected[mode].get(label, False) for label in got}
        assert got == want, f"{mode}: {got}"
        if mode == "allowlist":
            hosts = incus.pull_file(name, "/etc/hosts").decode()
            assert f"{topology.internet}\tallowed.test" in hosts
    coi.ok("kill", "--force", *names.values())
    assert not any(rules_for(n) for n in names.values())


def test_allowlist_refresh_follows_dns(
    coi: CoiRunner,
    topology: Topology,
    incus: Incus,
    workspace: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from coi_tui.config import load_settings
    from coi_tui.network.isolation import refresh_allowlist

    write_allowlist(coi)
    name = start(coi, topology, "allowlist", workspace)
    try:
        topology.dns_restart(topology.internet2)
        for key, value in {**coi.env, **net_env(topology, "allowlist")}.items():
            monkeypatch.setenv(key, value)
        settings = load_settings(workspace)
        assert settings.allowed_domains == ["allowed.test"]
        # TTL 30 s is below the floor: the next refresh is in 60 s.
        assert refresh_allowlist(incus, settings, name) == 60
        tcp = [["allowed", "allowed.test", 8080], ["old", topology.internet, 8080]]
        assert probe(incus, name, topology, tcp, dns=False) == {"allowed": True, "old": False}
    finally:
        topology.dns_restart(topology.internet)
        coi.ok("kill", "--force", name)


def test_changing_ip_or_mac_gains_nothing(
    coi: CoiRunner, topology: Topology, incus: Incus, workspace: Path
) -> None:
    opened = start(coi, topology, "open", workspace)
    name = start(coi, topology, "restricted", workspace)
    tcp = [t for t in topology.tcp_targets() if t[0] in ("internet", "neighbor", "metadata")]
    before = probe(incus, name, topology, tcp, dns=False)
    assert before == {"internet": True, "neighbor": False, "metadata": False}
    # Take the open container's address and MAC: rules follow the port, not the address.
    other = incus.get_instance(opened, with_state=True)
    ip, mac = other.ipv4, other.state["network"]["eth0"]["hwaddr"]
    assert ip
    script = (
        f"ip link set eth0 down && ip link set eth0 address {mac} && ip link set eth0 up && "
        f"ip addr flush dev eth0 && ip addr add {ip}/24 dev eth0 && "
        f"ip route add default via {topology.gateway}"
    )
    assert incus.exec_capture(name, ["sh", "-c", script]).ok
    after = probe(incus, name, topology, tcp, dns=False)
    assert not after["neighbor"] and not after["metadata"]
    assert set(k for k, v in after.items() if v) <= set(k for k, v in before.items() if v)
    coi.ok("kill", "--force", opened, name)


def supervisor_pids(name: str) -> list[int]:
    out = sh("pgrep", "-f", f"coi_tui.sessions.supervisor {name}$", check=False).stdout
    return [int(p) for p in out.split()]


def test_no_rule_survives_any_ending(
    coi: CoiRunner, topology: Topology, incus: Incus, tmp_path: Path
) -> None:
    workspaces = []
    for index in range(4):
        path = tmp_path / f"ws{index}"
        path.mkdir()
        workspaces.append(path)
    killed, shut, powered, crashed = (start(coi, topology, "restricted", ws) for ws in workspaces)
    for name in (killed, shut, powered, crashed):
        assert rules_for(name)
    coi.ok("kill", "--force", killed)
    assert not rules_for(killed)
    coi.ok("shutdown", "--timeout", "5", shut)
    assert not rules_for(shut)
    # Poweroff from inside: the session supervisor ends the session.
    incus.exec_capture(powered, ["sh", "-c", "poweroff &"])
    wait_for("poweroff cleanup", lambda: not rules_for(powered), timeout=60)
    # A crash: coi's processes die and the container is deleted behind coi's back.
    for pid in supervisor_pids(crashed):
        os.kill(pid, signal.SIGKILL)
    incus.delete_instance(crashed, force=True)
    assert rules_for(crashed)
    # Plant stale rules for a container that never existed.
    stale = iface_for(f"{coi.prefix}never-existed")
    netctl.run(["apply", stale, "restricted", topology.gateway])
    live = start(coi, topology, "restricted", workspaces[0])
    dry = coi.ok("clean", "--orphans", "--dry-run")
    assert iface_for(crashed) in dry.stdout and stale in dry.stdout
    assert iface_for(live) not in dry.stdout
    assert rules_for(crashed)
    coi.ok("clean", "--orphans")
    state = netctl.interfaces(netctl.table_state())
    assert iface_for(crashed) not in state and stale not in state
    assert iface_for(live) in state
    coi.ok("kill", "--force", live)
    assert not rules_for(live)


def test_mode_switch_on_persistent_container(
    coi: CoiRunner, topology: Topology, incus: Incus, workspace: Path
) -> None:
    tcp = [t for t in topology.tcp_targets() if t[0] in ("internet", "neighbor")]
    spec = json.dumps({"timeout": 2, "tcp": tcp})
    seen = {}
    try:
        for mode in ("restricted", "open", "restricted"):
            topology.assert_routes()
            result = coi(
                "run", "--persistent", "--tool", "dummy", "-w", str(workspace), "--",
                "python3", "-c", PROBE, spec, env=net_env(topology, mode),
            )  # fmt: skip
            assert result.returncode == 0, result.stderr
            seen[mode] = json.loads(result.stdout.strip().splitlines()[-1])
            names = [i.name for i in incus.list_instances(coi.prefix)]
            assert len(names) == 1 and not rules_for(names[0])
            assert incus.status(names[0]) == "Stopped"
            assert seen[mode]["neighbor"] is (mode == "open")
            assert seen[mode]["internet"] is True
    finally:
        for instance in incus.list_instances(coi.prefix):
            coi("kill", "--force", instance.name)


def test_hosts_open_one_private_address_for_the_session(
    coi: CoiRunner, topology: Topology, incus: Incus, workspace: Path
) -> None:
    """`coi hosts add` names a private host and opens exactly it (and its ports) in
    restricted mode; `remove` closes it again; entries die with the session."""
    name = start(coi, topology, "restricted", workspace)
    lan = topology.lan
    assert probe(incus, name, topology, [["lan", lan, 8080]], dns=False) == {"lan": False}

    coi.ok("hosts", "add", name, lan, "lan.test", "--ports", "9")  # named, wrong port
    assert probe(incus, name, topology, [["lan", "lan.test", 8080]], dns=False) == {"lan": False}
    coi.ok("hosts", "add", name, lan, "lan.test", "--ports", "8080")  # replaces the entry
    got = probe(
        incus, name, topology, [["by_name", "lan.test", 8080], ["by_ip", lan, 8080],
                                ["internet", topology.internet, 8080],
                                ["neighbor", topology.neighbor, 8080]], dns=False,
    )  # fmt: skip
    assert got == {"by_name": True, "by_ip": True, "internet": True, "neighbor": False}
    listed = json.loads(coi.ok("hosts", "list", name, "--json").stdout)
    assert listed == [
        {"ip": lan, "hostnames": ["lan.test"], "ports": ["8080"], "source": "session"}
    ]
    assert f"{lan}\tlan.test" in incus.pull_file(name, "/etc/hosts").decode()

    coi.ok("hosts", "remove", name, "lan.test")
    assert probe(incus, name, topology, [["lan", lan, 8080]], dns=False) == {"lan": False}
    assert "lan.test" not in incus.pull_file(name, "/etc/hosts").decode()
    assert coi("hosts", "remove", name, "lan.test").returncode == 1
    bad = coi("hosts", "add", name, "not-an-ip", "x.test")
    assert bad.returncode == 1 and "IPv4" in bad.stderr
    coi.ok("hosts", "add", name, lan, "again.test")
    coi.ok("kill", "--force", name)
    assert not (coi.home / "hosts" / f"{name}.json").exists()
    gone = coi("hosts", "add", name, lan, "late.test")
    assert gone.returncode == 1 and "not found" in gone.stderr


def test_allowed_ports_cap_every_destination(
    coi: CoiRunner, topology: Topology, incus: Incus, workspace: Path
) -> None:
    (coi.home / "config.toml").write_text("[network]\nallowed_ports = [9]\n")
    capped = start(coi, topology, "restricted", workspace)
    got = probe(incus, capped, topology, [["internet", topology.internet, 8080]])
    assert got == {"internet": False, "dns": True}  # the bridge's DNS is not capped
    (coi.home / "config.toml").write_text("[network]\nallowed_ports = [8080]\n")
    opened = start(coi, topology, "restricted", workspace)
    got = probe(incus, opened, topology, [["internet", topology.internet, 8080]])
    assert got == {"internet": True, "dns": True}
