"""The egress proxy's parts without containers: the name readers (a real ClientHello made by
Python's ssl), the policy patterns, and the proxy itself on loopback, its original
destination given by the test (the real one comes from the redirect, tests/integration/
test_egress.py)."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import struct
from collections.abc import Iterator
from typing import Any

import pytest

from coi_tui.core.errors import CoiError
from coi_tui.network.egress import dns, wire
from coi_tui.network.egress.policy import EgressPolicy, clean_name, parse_pattern
from coi_tui.network.egress.proxy import TLS_ACCESS_DENIED, EgressProxy, dialable


def client_hello(server_name: str | None) -> bytes:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


# ---------------------------------------------------------------------- wire
def test_sni_is_read_from_a_real_client_hello_in_any_split() -> None:
    hello = client_hello("api.example.com")
    assert wire.tls_server_name(hello) == "api.example.com"
    for cut in (1, 4, 5, 40, len(hello) - 1):
        assert wire.tls_server_name(hello[:cut]) == wire.NEED_MORE
    assert wire.tls_server_name(client_hello(None)) == wire.NONE  # no SNI: refused


def test_broken_hellos_are_refused_never_guessed() -> None:
    hello = bytearray(client_hello("api.example.com"))
    assert wire.tls_server_name(b"\x16\x03\x01\xff\xff" + bytes(10)) == wire.NONE  # too long
    assert wire.tls_server_name(b"\x17\x03\x03\x00\x10" + bytes(16)) == wire.NONE  # not hello
    hello[5] = 2  # a ServerHello
    assert wire.tls_server_name(bytes(hello)) == wire.NONE
    # every truncation of the inner lengths: an answer or a refusal, never an exception
    good = client_hello("x.example.com")
    for i in range(5, len(good)):
        broken = bytearray(good)
        broken[i] ^= 0xFF
        assert wire.tls_server_name(bytes(broken)) in ("x.example.com", wire.NONE, wire.NEED_MORE)


def test_http_host_is_one_header_without_its_port() -> None:
    assert wire.http_host(b"GET / HTTP/1.1\r\nHost: a.example.com:8080\r\n\r\n") == "a.example.com"
    assert wire.http_host(b"GET / HTTP/1.1\r\nHost: a.example.com\r\n") == wire.NEED_MORE
    two = b"GET / HTTP/1.1\r\nHost: a.example.com\r\nHost: b.example.com\r\n\r\n"
    assert wire.http_host(two) == wire.NONE
    assert wire.http_host(b"GET / HTTP/1.1\r\n\r\n") == wire.NONE
    assert wire.http_host(b"SSH-2.0-OpenSSH_9.2\r\n") == wire.NONE
    assert wire.http_host(b"GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n") == wire.NONE
    # a tunnel, or an absolute-form target naming another host than Host, is no request for it
    assert (
        wire.http_host(b"CONNECT b.example.com:443 HTTP/1.1\r\nHost: a.example.com\r\n\r\n")
        == wire.NONE
    )
    fronted = b"GET http://b.example.com/ HTTP/1.1\r\nHost: a.example.com\r\n\r\n"
    assert wire.http_host(fronted) == wire.NONE
    same = b"GET http://a.example.com:80/x HTTP/1.1\r\nHost: a.example.com\r\n\r\n"
    assert wire.http_host(same) == "a.example.com"
    assert wire.other_hosts(b"\r\nGET http://b.example.com/ HTTP/1.1\r\n", "a.example.com") == [
        "b.example.com"
    ]
    later = b"x\r\nGET / HTTP/1.1\r\nhost: b.example.com\r\n\r\n"
    assert wire.other_hosts(later, "a.example.com") == ["b.example.com"]
    assert wire.other_hosts(later, "b.example.com") == []


# ---------------------------------------------------------------------- policy
def test_patterns_names_wildcards_and_ports() -> None:
    policy = EgressPolicy(
        "allowlist",
        [parse_pattern(p) for p in ("api.example.com", "*.github.com", "ssh.example.com:22")],
        [parse_pattern("evil.github.com")],
    )
    assert policy.decide("API.Example.com.", 443).allowed
    assert not policy.decide("www.example.com", 443).allowed
    assert policy.decide("raw.github.com", 80).allowed
    assert not policy.decide("github.com", 443).allowed  # a wildcard is below its domain
    assert not policy.decide("evil.github.com", 443).allowed  # deny wins
    assert not policy.decide("api.example.com", 8443).allowed  # no port: the web ports
    assert policy.decide("ssh.example.com", 22).allowed
    assert not policy.decide("203.0.113.5", 443).allowed  # a raw address is never a name
    assert policy.ports() == ["22", "80", "443"]
    ranged = EgressPolicy("allowlist", [parse_pattern("x.example:8000-8100,9000")])
    assert ranged.decide("x.example", 8050).allowed and not ranged.decide("x.example", 443).allowed
    assert ranged.ports() == ["80", "443", "8000-8100", "9000"]
    open_policy = EgressPolicy("restricted", [], [parse_pattern("*.paste.example")])
    assert open_policy.decide("anything.example", 443).allowed
    assert not open_policy.decide("x.paste.example", 443).allowed
    assert clean_name("bücher.example") == "xn--bcher-kva.example"
    assert EgressPolicy.from_json(policy.to_json()).decide("raw.github.com", 443).allowed


@pytest.mark.parametrize("bad", ["*", "*.com", "a*.example.com", "x.com:0", "x.com:http", ""])
def test_bad_patterns_are_one_line_errors(bad: str) -> None:
    with pytest.raises(CoiError, match="egress pattern"):
        parse_pattern(bad)


# ---------------------------------------------------------------------- the proxy on loopback
class Upstream:
    """A TCP server standing for the internet: it records what arrives and answers."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    up = Upstream()
    yield up
    up.listener.close()


async def run_proxy(
    upstream: Upstream,
    policy: EgressPolicy,
    names: dict[str, list[str]],
    sends: list[bytes],
    loopback_is_internet: bool = True,
) -> tuple[list[bytes], list[dict[str, Any]]]:
    records: list[dict[str, Any]] = []

    class One:
        def lookup(self, address: str) -> tuple[str, EgressPolicy] | None:
            return ("c1", policy) if address == "127.0.0.1" else None

        def policy(self, container: str) -> EgressPolicy | None:
            return policy

    proxy = EgressProxy(
        One(),
        lambda name: (names.get(name, []), 30),
        records.append,
        ("127.0.0.1", 0),
        destination=lambda sock: ("203.0.113.9", upstream.port),
        **({"may_dial": lambda address, policy, own: True} if loopback_is_internet else {}),
    )
    await proxy.start()
    loop = asyncio.get_running_loop()
    upstream.listener.setblocking(False)

    async def serve_upstream() -> None:
        while True:
            conn, _ = await loop.sock_accept(upstream.listener)
            data = await loop.sock_recv(conn, 65536)
            upstream.received.append(data)
            await loop.sock_sendall(conn, b"HTTP/1.0 200 OK\r\n\r\nfrom upstream" + bytes(5000))
            conn.close()

    server = asyncio.create_task(serve_upstream())
    answers = []
    for payload in sends:
        reader, writer = await asyncio.open_connection(*proxy.listen)
        writer.write(payload)
        await writer.drain()
        answers.append(await asyncio.wait_for(reader.read(), 10))
        writer.close()
    await asyncio.sleep(0.05)  # the last record is written as its connection closes
    server.cancel()
    proxy.close()
    return answers, records


def test_the_proxy_dials_the_allowed_name_and_refuses_the_rest(upstream: Upstream) -> None:
    port = upstream.port  # the stand-in internet's port: named in each pattern
    policy = EgressPolicy(
        "allowlist",
        [parse_pattern(f"allowed.test:{port}"), parse_pattern(f"*.wild.test:{port}")],
        allow_local=True,  # the stand-in internet is loopback
    )
    names = {"allowed.test": ["127.0.0.1"], "a.wild.test": ["127.0.0.1"], "denied.test": []}
    sends = [
        client_hello("allowed.test"),
        client_hello("denied.test"),
        client_hello(None),  # a raw address: no name
        client_hello("a.wild.test"),
        b"GET / HTTP/1.1\r\nHost: allowed.test\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: denied.test\r\n\r\n",
    ]
    answers, records = asyncio.run(run_proxy(upstream, policy, names, sends))
    assert answers[0].startswith(b"HTTP/1.0 200 OK") and len(answers[0]) > 5000, records
    assert answers[1] == answers[2] == TLS_ACCESS_DENIED
    assert answers[3].startswith(b"HTTP/1.0 200 OK")
    assert answers[4].startswith(b"HTTP/1.0 200 OK")
    assert answers[5].startswith(b"HTTP/1.1 403 Forbidden") and b"denied.test" in answers[5]
    # upstream saw exactly the allowed first bytes, untouched
    assert upstream.received == [sends[0], sends[3], sends[4]]
    by_domain = {(r["domain"], r["protocol"]): r for r in records}
    allowed = by_domain[("allowed.test", "tls")]
    assert allowed["decision"] == "allowed" and allowed["address"] == "127.0.0.1"
    assert allowed["bytes_out"] == len(sends[0]) and allowed["bytes_in"] == len(answers[0])
    assert by_domain[("denied.test", "tls")]["decision"] == "denied"
    assert by_domain[("", "tls")]["reason"].startswith("TLS without a server name")
    assert by_domain[("a.wild.test", "tls")]["reason"] == f"allowed by *.wild.test:{port}"
    assert by_domain[("denied.test", "http")]["decision"] == "denied"


def test_an_allowed_name_that_resolves_into_the_lan_is_refused(upstream: Upstream) -> None:
    allowed = parse_pattern(f"allowed.test:{upstream.port}")
    policy = EgressPolicy("allowlist", [allowed])  # allow_local off
    hello = [client_hello("allowed.test")]
    for local in ("127.0.0.1", "169.254.169.254", "10.1.2.3"):
        answers, records = asyncio.run(
            run_proxy(upstream, policy, {"allowed.test": [local]}, hello, False)
        )
        assert answers == [TLS_ACCESS_DENIED] and upstream.received == []
        assert records[0]["reason"] == "resolves only to local addresses"
    # allow_local opens the private ranges, never this host or the metadata service
    policy.allow_local = True
    own = frozenset({"192.168.7.1"})
    assert dialable("10.1.2.3", policy, own) and not dialable("192.168.7.1", policy, own)
    assert not dialable("127.0.0.1", policy, own) and not dialable("169.254.169.254", policy, own)
    assert dialable("203.0.113.5", policy, own) and not dialable("0.0.0.0", policy, own)


def test_a_kept_alive_http_connection_cannot_switch_host(upstream: Upstream) -> None:
    allowed = parse_pattern(f"allowed.test:{upstream.port}")
    policy = EgressPolicy("allowlist", [allowed], allow_local=True)
    smuggled = (
        b"GET / HTTP/1.1\r\nHost: allowed.test\r\n\r\nGET /x HTTP/1.1\r\nHost: other.test\r\n\r\n"
    )
    answers, records = asyncio.run(
        run_proxy(upstream, policy, {"allowed.test": ["127.0.0.1"]}, [smuggled])
    )
    assert answers[0].startswith(b"HTTP/1.1 403 Forbidden") and b"other.test" in answers[0]
    # the first read carries both requests: refused before anything is sent upstream
    assert upstream.received == []
    assert records[0]["decision"] == "denied" and "other.test" in records[0]["reason"]


# ---------------------------------------------------------------------- the resolver
def dns_query(name: str, qtype: int = 1, ident: int = 7) -> bytes:
    head = struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0)
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split("."))
    return head + labels + b"\0" + struct.pack("!HH", qtype, 1)


def test_queries_are_parsed_strictly() -> None:
    query = dns.parse_query(dns_query("Sub.Example.COM", 28))
    assert query is not None and (query.name, query.qtype, query.ident) == (
        "sub.example.com",
        28,
        7,
    )
    assert dns.parse_query(b"\0" * 11) is None
    response = bytearray(dns_query("a.example"))
    response[2] |= 0x80  # a response, not a query
    assert dns.parse_query(bytes(response)) is None
    pointer = struct.pack("!HHHHHH", 1, 0x100, 1, 0, 0, 0) + b"\xc0\x0c\0\1\0\1"
    assert dns.parse_query(pointer) is None  # no compression in a question
    assert dns.parse_query(dns_query("a\x01b.example")) is None  # control bytes in a label
    answer = dns.reply(query, dns.NOERROR, ["203.0.113.7", "203.0.113.8"])
    assert answer[:2] == b"\0\7" and struct.unpack("!H", answer[6:8])[0] == 2
    assert answer.endswith(socket.inet_aton("203.0.113.8"))


def test_the_resolver_answers_only_what_the_policy_lets_through() -> None:
    policy = EgressPolicy(
        "allowlist",
        [parse_pattern("api.example.com"), parse_pattern("*.cdn.example:8443")],
        [parse_pattern("bad.cdn.example"), parse_pattern("api.example.com:80")],
    )
    names = {"api.example.com": ["203.0.113.7", "10.1.2.3"], "x.cdn.example": ["127.0.0.1"]}
    records: list[dict[str, Any]] = []

    class One:
        def lookup(self, address: str) -> tuple[str, EgressPolicy] | None:
            return ("c1", policy) if address == "10.9.9.9" else None

        def policy(self, container: str) -> EgressPolicy | None:
            return policy

    async def addresses(name: str) -> list[str]:
        return names.get(name, [])

    resolver = dns.Resolver(One(), addresses, records.append)

    def ask(name: str, qtype: int = 1, source: str = "10.9.9.9") -> tuple[int, int] | None:
        answer = asyncio.run(resolver.answer(dns_query(name, qtype), source))
        return None if answer is None else (answer[3] & 0xF, struct.unpack("!H", answer[6:8])[0])

    assert ask("api.example.com") == (dns.NOERROR, 1)  # the private address is left out
    assert ask("api.example.com", 16) == (dns.NOERROR, 0)  # TXT: never
    assert ask("other.example.com") == (dns.NXDOMAIN, 0)
    assert ask("bad.cdn.example") == (dns.NXDOMAIN, 0)  # denied for every port
    assert ask("x.cdn.example") == (dns.NXDOMAIN, 0)  # resolves only into the host
    assert ask("api.example.com", source="10.9.9.10") == (dns.REFUSED, 0)  # not ours
    assert asyncio.run(resolver.answer(b"junk", "10.9.9.9")) is None
    assert [(r["domain"], r["qtype"], r["decision"]) for r in records] == [
        ("api.example.com", "A", "allowed"),
        ("api.example.com", "TXT", "allowed"),
        ("other.example.com", "A", "denied"),
        ("bad.cdn.example", "A", "denied"),
        ("x.cdn.example", "A", "denied"),
    ]
    assert records[0]["answers"] == ["203.0.113.7"]


def test_the_dashboard_reads_open_holds_totals_and_lines(tmp_path: Any, monkeypatch: Any) -> None:
    from coi_tui.dashboard import egress as view_of

    monkeypatch.setenv("COI_HOME", str(tmp_path))
    now = 1_000_000.0
    records = [
        {"type": "pending", "hold_id": "a", "container": "c1", "domain": "x.test", "port": 53,
         "protocol": "dns", "until": now + 30, "time": "2026-12-07T20:00:00.000Z"},
        {"type": "pending", "hold_id": "b", "container": "c1", "domain": "y.test", "port": 443,
         "protocol": "tls", "until": now + 30, "time": "2026-12-07T20:00:01.000Z"},
        {"type": "pending", "hold_id": "c", "container": "c1", "domain": "old.test", "port": 443,
         "protocol": "tls", "until": now - 1, "time": "2026-12-07T20:00:01.000Z"},
        {"type": "connection", "hold_id": "b", "container": "c1", "domain": "y.test",
         "port": 443, "protocol": "tls", "decision": "allowed", "bytes_out": 10, "bytes_in": 90,
         "reason": "allowed by y.test", "time": "2026-12-07T20:00:02.000Z"},
        {"type": "connection", "container": "c1", "domain": "\x1b[31mevil", "port": 443,
         "protocol": "tls", "decision": "denied", "time": "2026-12-07T20:00:03.000Z"},
    ]  # fmt: skip
    path = tmp_path / "egress" / "logs" / "c1.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"broken')
    view = view_of.read_view("c1", now)
    assert view.proxied and [p.domain for p in view.pending] == ["x.test"]  # b decided, c late
    assert view.totals[0][0] == "y.test" and view.totals[0][1:] == (1, 0, 10, 90)
    assert "\x1b" not in "".join(view.lines)  # a container's bytes never reach the screen raw
    assert view_of.pending_counts(["c1", "c2"], now) == {"c1": 1}
    assert not view_of.read_view("c2", now).proxied


def test_presets_expand_by_name_when_the_config_loads(tmp_path: Any, monkeypatch: Any) -> None:
    from coi_tui.config import load_settings

    home, project = tmp_path / "home", tmp_path / "ws"
    home.mkdir()
    project.mkdir()
    monkeypatch.setenv("COI_HOME", str(home))
    (home / "config.toml").write_text(
        '[network]\nallowed_domains = ["@github", "@pypi", "example.org", "pypi.org"]\n'
    )
    domains = load_settings(project).allowed_domains
    assert domains[:2] == ["github.com", "api.github.com"] and "files.pythonhosted.org" in domains
    assert domains.count("pypi.org") == 1 and "example.org" in domains
    (home / "config.toml").write_text('[network]\nallowed_domains = ["@nope"]\n')
    with pytest.raises(CoiError, match="unknown preset"):
        load_settings(project)


def test_always_edits_only_the_network_list_of_the_users_config(tmp_path: Any) -> None:
    import tomllib

    from coi_tui.config.edit import remember_network_entry

    env = {"COI_HOME": str(tmp_path), "HOME": str(tmp_path)}
    config = tmp_path / "config.toml"
    original = (
        "# my config\n[container]\npersistent = true # keep\n\n[network]\n"
        'mode = "allowlist"\negress = "proxy"\n'
        'allowed_domains = [\n  "a.example", # why a\n  "b.example",\n]\n'
        '\n[tool]\nname = "claude"\n'
    )
    config.write_text(original)
    remember_network_entry(env, "allow", "c.example")
    text = config.read_text()
    assert text.startswith("# my config\n[container]\npersistent = true # keep\n")
    assert tomllib.loads(text)["network"]["allowed_domains"] == [
        "a.example",
        "b.example",
        "c.example",
    ]
    assert text.endswith('\n[tool]\nname = "claude"\n')
    remember_network_entry(env, "deny", "b.example")
    data = tomllib.loads(config.read_text())["network"]
    assert data["allowed_domains"] == ["a.example", "c.example"]
    assert data["denied_domains"] == ["b.example"]
    # no [network] yet: the defaults stay in the list it starts
    config.write_text("[tool]\nname = 'claude'\n")
    remember_network_entry(env, "allow", "x.example")
    domains = tomllib.loads(config.read_text())["network"]["allowed_domains"]
    assert domains[-1] == "x.example" and "api.anthropic.com" in domains
    # what only the proxy understands is not written where the proxy is not on
    for action, entry in (("allow", "*.x.example"), ("deny", "y.example")):
        with pytest.raises(CoiError, match='needs egress = "proxy"'):
            remember_network_entry(env, action, entry)
    # a layout it cannot edit in place is refused, the file untouched
    dotted = 'network.allowed_domains = ["a.example"]\n'
    config.write_text(dotted)
    with pytest.raises(CoiError, match=r"add 'z.example' to \[network\] allowed_domains"):
        remember_network_entry(env, "allow", "z.example")
    assert config.read_text() == dotted


def test_a_full_egress_log_is_rotated(tmp_path: Any, monkeypatch: Any) -> None:
    from coi_tui.network.egress import service

    monkeypatch.setenv("COI_HOME", str(tmp_path))
    monkeypatch.setattr(service, "LOG_MAX_BYTES", 1000)
    for index in range(30):
        service.append_record({"container": "c1", "type": "dns", "n": index, "pad": "x" * 50})
    logs = tmp_path / "egress" / "logs"
    kept = (logs / "c1.jsonl.1").read_text().splitlines()
    assert 1000 < sum(len(line) + 1 for line in kept) < 1200
    current = (logs / "c1.jsonl").read_text().splitlines()
    assert json.loads(current[-1])["n"] == 29 and len(kept) + len(current) < 30
