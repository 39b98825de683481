"""Pure logic of network isolation: rule bodies, argument validation, DNS parsing, TTLs."""

from __future__ import annotations

import struct

import pytest

from coi_tui.core.errors import CoiError
from coi_tui.network import netctl
from coi_tui.network.firewall import Firewall, Policy, iface_for
from coi_tui.network.resolve import (
    Resolved,
    build_query,
    check_entry,
    hosts_block,
    merge_hosts,
    parse_answer,
    refresh_seconds,
    resolve,
)


def test_iface_is_deterministic_valid_and_short() -> None:
    name = iface_for("coi-1a2b3c4d-1")
    assert name == iface_for("coi-1a2b3c4d-1") != iface_for("coi-1a2b3c4d-2")
    assert len(name) <= 15 and netctl.IFACE_RE.match(name)


def test_restricted_order_dns_before_gateway_block_then_private() -> None:
    rules = netctl.container_rules("restricted", "10.1.2.1", host_addrs=["10.1.2.1", "192.0.2.9"])
    dns = rules.index("ip daddr 10.1.2.1 udp dport 53 accept")
    assert dns < rules.index("ip daddr 10.1.2.1 drop")
    assert "ether type != ip drop" in rules  # IPv6 blocked
    assert "ip daddr { 192.0.2.9 } drop" in rules  # the host's other addresses
    assert rules[-1] == "accept" and "ip daddr 169.254.0.0/16 drop" in rules


def test_restricted_switches() -> None:
    local = netctl.container_rules("restricted", "10.1.2.1", allow_local=True)
    assert not any(r.startswith("ip daddr 10.1.2.1 drop") for r in local)
    assert any("10.0.0.0/8" in r and r.endswith("accept") for r in local)
    open_meta = netctl.container_rules("restricted", "10.1.2.1", block_metadata=False)
    assert "ip daddr 169.254.0.0/16 drop" not in open_meta


def test_allowlist_blocks_dns_and_defaults_to_drop() -> None:
    rules = netctl.container_rules("allowlist", "10.1.2.1", set_name="a-x")
    assert not any("dport 53" in r for r in rules)
    assert rules[-1] == "drop"
    assert netctl.container_rules("open", "10.1.2.1") == ["accept"]


@pytest.mark.parametrize(
    "argv",
    [
        ["eth0", "open", "10.0.0.1"],
        ["coiv0000000000", "wide-open", "10.0.0.1"],
        ["coiv0000000000", "open", "10.0.0.1; flush ruleset"],
        ["coiv0000000000", "allowlist", "10.0.0.1", "--allow", "1.2.3.4 ; flush ruleset"],
        ["coiv0000000000", "allowlist", "10.0.0.1", "--table", "inet filter"],
    ],
)
def test_helper_rejects_anything_outside_its_grammar(argv: list[str]) -> None:
    with pytest.raises(netctl.NetctlError):
        netctl.parse_apply(argv)


def test_apply_script_is_one_transaction_for_coi_table_only() -> None:
    script = netctl.apply_script("coiv0000000000", ["accept"], ["203.0.113.5"])
    assert all(" bridge coi " in f" {line} " for line in script.splitlines())
    assert 'add element bridge coi ports { "coiv0000000000" : jump c-coiv0000000000 }' in script


def test_policy_argv() -> None:
    policy = Policy("allowlist", "10.1.2.1", allowed=["203.0.113.5"], block_metadata=False)
    argv = policy.argv("coiv0000000000")
    assert argv[:4] == ["apply", "coiv0000000000", "allowlist", "10.1.2.1"]
    assert "--no-block-metadata" in argv and argv[-2:] == ["--allow", "203.0.113.5"]


def test_non_root_without_helper_fails_in_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    with pytest.raises(CoiError, match="sudo coi setup"):
        Firewall(helper=tmp_path / "missing").check()  # type: ignore[operator]


def test_dns_answer_parsing_takes_a_records_and_min_ttl() -> None:
    query = build_query("a.test", 0x1234)
    answer = bytearray(query)
    answer[2:4] = struct.pack("!H", 0x8180)
    answer[6:8] = struct.pack("!H", 2)
    # CNAME (ttl 300) then A (ttl 30), names as pointers to the question.
    answer += b"\xc0\x0c" + struct.pack("!HHIH", 5, 1, 300, 2) + b"\xc0\x0c"
    answer += b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 30, 4) + bytes([203, 0, 113, 7])
    assert parse_answer(bytes(answer), 0x1234) == (["203.0.113.7"], 30)
    with pytest.raises(ValueError):
        parse_answer(bytes(answer), 0x9999)


def test_refresh_interval_follows_ttl_within_bounds() -> None:
    assert refresh_seconds(30, 30) == 60
    assert refresh_seconds(300, 30) == 300
    assert refresh_seconds(86400, 30) == 1800
    assert refresh_seconds(None, 30) == 1800
    assert refresh_seconds(300, 0) is None


def test_wildcards_rejected_and_hosts_merge_keeps_the_rest() -> None:
    with pytest.raises(CoiError, match="wildcards"):
        check_entry("*.example.com")
    block = hosts_block(Resolved({"a.test": ["203.0.113.7"], "10.0.0.0/8": ["10.0.0.0/8"]}, 30, []))
    assert "203.0.113.7\ta.test" in block and "10.0.0.0" not in block
    first = merge_hosts("127.0.0.1\tlocalhost\n", block)
    again = merge_hosts(first, block)
    assert again == first and again.startswith("127.0.0.1\tlocalhost\n")


def test_extra_hosts_dns_servers_and_port_caps() -> None:
    rules = netctl.container_rules(
        "restricted",
        "10.1.2.1",
        hosts=[("192.168.5.5", ["443"]), ("10.9.9.9", [])],
        dns_servers=["9.9.9.9"],
        allowed_ports=["80", "443"],
    )
    opened = rules.index("ip daddr 192.168.5.5 tcp dport 443 accept")
    private = next(i for i, r in enumerate(rules) if r.startswith("ip daddr { 10.0.0.0/8,"))
    assert opened < private
    assert "ip daddr 10.9.9.9 accept" in rules  # no ports: the whole address
    assert rules.index("ip daddr { 9.9.9.9 } udp dport 53 accept") < rules.index(
        "udp dport 53 drop"
    )
    assert rules[-4:] == [
        "icmp type echo-request accept",
        "tcp dport { 80, 443 } accept",
        "udp dport { 80, 443 } accept",
        "drop",
    ]
    allow = netctl.container_rules("allowlist", "10.1.2.1", set_name="a-x", allowed_ports=["443"])
    assert "ip daddr @a-x tcp dport 443 accept" in allow
    assert not any("meta l4proto" in r for r in allow)


@pytest.mark.parametrize(
    ("argv", "why"),
    [
        (["--host", "10.0.0.5:0"], "ports are 1-65535"),
        (["--host", "10.0.0.5:80;drop"], "bad port"),
        (["--dns", "9.9.9.9"], "restricted"),  # in allowlist mode
        (["--host", "192.168.1.1"], "private"),  # in allowlist mode
    ],
)
def test_helper_checks_the_new_options(argv: list[str], why: str) -> None:
    with pytest.raises(netctl.NetctlError, match=why):
        netctl.parse_apply(["coiv0000000000", "allowlist", "10.0.0.1", *argv])


def test_policy_argv_carries_hosts_dns_and_ports() -> None:
    policy = Policy(
        "restricted", "10.1.2.1", hosts=[("192.168.5.5", ["443", "8000-8100"])],
        dns_servers=["9.9.9.9"], allowed_ports=["443"],
    )  # fmt: skip
    argv = policy.argv("coiv0000000000")
    assert argv[4:] == [
        "--host", "192.168.5.5:443,8000-8100", "--dns", "9.9.9.9", "--ports", "443"
    ]  # fmt: skip
    flags = netctl.parse_apply(argv[1:])[3]
    assert flags["hosts"] == [("192.168.5.5", ["443", "8000-8100"])]
    assert flags["dns_servers"] == ["9.9.9.9"] and flags["allowed_ports"] == ["443"]


def test_dhcp_leases_leave_the_top_of_the_subnet_free() -> None:
    from coi_tui.incus.provision import dhcp_range

    assert dhcp_range("10.199.0.1/24") == "10.199.0.2-10.199.0.199"
    low, high = dhcp_range("10.2.2.1/28").split("-")
    assert low == "10.2.2.2" and high < "10.2.2.14"


def test_an_allowlist_never_opens_a_network_or_a_private_host() -> None:
    """allowed_domains = ["0.0.0.0/0"], a LAN address, the metadata service: refused at
    resolve time and again by coi-netctl (root), and the allowlist chain drops the LAN and
    metadata before its allowed set, whatever the set holds."""
    for entry in ("0.0.0.0/0", "192.168.0.0/16", "8.8.8.0/24"):
        with pytest.raises(CoiError, match="is a network"):
            resolve([entry])
    for entry in ("192.168.1.10", "169.254.169.254", "10.0.0.1", "127.0.0.1", "100.64.0.1"):
        with pytest.raises(CoiError, match="not a public address"):
            resolve([entry])
    assert resolve(["203.0.113.7"]).addresses == {"203.0.113.7": ["203.0.113.7"]}
    for bad in ("0.0.0.0/0", "10.0.0.0/8", "169.254.169.254", "192.168.1.1"):
        with pytest.raises(netctl.NetctlError, match="--allow"):
            netctl.parse_apply(["coiv00c0ffee00", "allowlist", "10.1.2.1", "--allow", bad])
    assert netctl.parse_apply(
        ["coiv00c0ffee00", "allowlist", "10.1.2.1", "--allow", "203.0.113.7"]
    )[4] == ["203.0.113.7"]
    rules = netctl.container_rules("allowlist", "10.1.2.1", set_name="allow_veth1")
    drop = next(i for i, r in enumerate(rules) if r.startswith("ip daddr { 10.0.0.0/8,"))
    assert "169.254.0.0/16" in rules[drop]
    assert drop < min(i for i, r in enumerate(rules) if "@allow_veth1" in r)


def test_proxy_and_resolver_rules_come_after_the_local_drops_and_fail_closed() -> None:
    policy = Policy("allowlist", "10.1.2.1", proxy=(40000, ["80", "443"]), resolver=40001)
    argv = policy.argv("coiv0000000000")
    assert argv[-4:] == ["--proxy", "40000:80,443", "--resolver", "40001"]
    iface, mode, gateway, flags, allowed = netctl.parse_apply(argv[1:])
    rules = netctl.container_rules(mode, gateway, set_name="a-x", **flags)
    mark, dns_mark = f"{netctl.MARK_BASE | 40000:#010x}", f"{netctl.MARK_BASE | 40001:#010x}"
    web = rules.index(f"tcp dport {{ 80, 443 }} meta mark set {mark} accept")
    local = next(i for i, r in enumerate(rules) if r.startswith("ip daddr { 10.0.0.0/8"))
    assert local < web  # a private address on 443 is dropped, never proxied
    assert rules[web + 1] == "udp dport 443 drop"  # QUIC
    # every DNS query, to any address, goes to the resolver, before any other DNS rule
    assert rules[3:5] == [f"udp dport 53 meta mark set {dns_mark} accept",
                          f"tcp dport 53 meta mark set {dns_mark} accept"]  # fmt: skip
    script = netctl.apply_script(iface, rules, allowed, [40000, 40001])
    assert "add rule ip coi fence meta mark & 0xffff0000 == 0x0c010000 drop" in script
    # and a marked frame is never bridged out of another port (a bridge with an uplink)
    assert "add rule bridge coi fence meta mark & 0xffff0000 == 0x0c010000 drop" in script
    assert f"add element ip coi proxy {{ {mark} : 40000 }}" in script
    assert f"add element ip coi proxy {{ {dns_mark} : 40001 }}" in script
    restricted = netctl.container_rules("restricted", "10.1.2.1", **{**flags, "resolver": 0})
    assert not any("meta mark" in r and "dport 53" in r for r in restricted)


@pytest.mark.parametrize(
    ("argv", "why"),
    [
        (["--proxy", "80:443"], "1024-65535"),
        (["--proxy", "40000"], "PORT:PORTS"),
        (["--proxy", "40000:443;drop"], "bad port"),
        (["--resolver", "53"], "1024-65535"),
        (["--resolver", "40001", "--dns", "9.9.9.9"], "exclude each other"),
    ],
)
def test_helper_checks_the_proxy_options(argv: list[str], why: str) -> None:
    with pytest.raises(netctl.NetctlError, match=why):
        netctl.parse_apply(["coiv0000000000", "restricted", "10.0.0.1", *argv])
    with pytest.raises(netctl.NetctlError, match="restricted and allowlist"):
        netctl.parse_apply(["coiv0000000000", "open", "10.0.0.1", "--resolver", "40001"])


def test_allowlist_ports_apply_per_destination_as_in_coi() -> None:
    from coi_tui.network.resolve import Resolved, check_entry, hosts_block, resolve

    resolved = Resolved(
        {
            "a.test:443": ["203.0.113.5"],
            "b.test": ["203.0.113.6"],
            "203.0.113.7:80,8000-8100": ["203.0.113.7"],
        },
        None,
        [],
    )
    assert resolved.cidrs() == ["203.0.113.6"]  # every port: only entries without :ports
    assert resolved.port_hosts() == [
        ("203.0.113.5", ["443"]),
        ("203.0.113.7", ["80", "8000-8100"]),
    ]
    block = hosts_block(resolved)
    assert "203.0.113.5\ta.test\n" in block and ":443" not in block
    assert check_entry("A.Test.:443") == "a.test:443"
    with pytest.raises(CoiError, match="bad ports"):
        check_entry("a.test:0")
    assert resolve(["203.0.113.9:443"]).port_hosts() == [("203.0.113.9", ["443"])]


def test_the_port_cap_keeps_proxied_ports_inside_it() -> None:
    from coi_tui.network.isolation import within

    assert within("443", ["443"]) and within("8000-8100", ["1-65535"])
    assert not within("443", ["22"]) and not within("8000-8100", ["8000-8050"])
