"""`coi hosts add|list|remove`: names (and firewall openings) a running session may reach,
for the rest of that session."""

from __future__ import annotations

import argparse
import json
from typing import Any

from coi_tui.core.errors import CoiError


def add_parsers(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    hosts = sub.add_parser(
        "hosts",
        help="extra /etc/hosts names a running session may reach",
        description="Adds names to a running container's /etc/hosts and opens that address "
        "in its firewall (only the given ports with --ports), even a private address in "
        "restricted mode; allowlist mode refuses private and metadata addresses. Entries last "
        "until the session ends; [[network.hosts]] in the config makes them permanent.",
    )
    hsub = hosts.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = hsub.add_parser("add", help="coi hosts add CONTAINER IP HOSTNAME... [--ports 443]")
    p.add_argument("container")
    p.add_argument("ip")
    p.add_argument("hostnames", nargs="+", metavar="HOSTNAME")
    p.add_argument("--ports", default="", help='ports to open: "443", "80,443", "8000-8100"')
    p.set_defaults(handler=cmd_hosts)
    p = hsub.add_parser("list", help="the extra hosts of a container")
    p.add_argument("container")
    p.add_argument("--json", action="store_true", help="JSON output")
    p.set_defaults(handler=cmd_hosts)
    p = hsub.add_parser("remove", help="remove a name added with 'coi hosts add'")
    p.add_argument("container")
    p.add_argument("hostname")
    p.set_defaults(handler=cmd_hosts)


def _running(incus: Any, name: str) -> None:
    if not incus.instance_exists(name):
        raise CoiError(f"container '{name}' not found (see 'coi list')")
    status = incus.status(name)
    if status != "Running":
        raise CoiError(f"container {name} is not running (status: {status})")


def cmd_hosts(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from dataclasses import asdict

    from coi_tui.cli.commands import context
    from coi_tui.network.hosts import (
        config_hosts,
        make_entry,
        runtime_hosts,
        save_runtime_hosts,
    )
    from coi_tui.network.isolation import reapply_rules

    settings, incus, _ = context(None)
    name = args.container
    if args.action == "list":
        if not incus.instance_exists(name):
            raise CoiError(f"container '{name}' not found (see 'coi list')")
        rows = [{**asdict(e), "source": "config"} for e in config_hosts(settings)]
        rows += [{**asdict(e), "source": "session"} for e in runtime_hosts(name)]
        if args.json:
            print(json.dumps(rows, indent=2))
            return 0
        if not rows:
            print(f"No extra hosts for {name}")
        for row in rows:
            ports = ",".join(row["ports"]) or "all ports"
            print(f"  {row['ip']:<15} {' '.join(row['hostnames'])}  ({ports}; {row['source']})")
        return 0
    _running(incus, name)
    entries = runtime_hosts(name)
    if args.action == "add":
        entry = make_entry(args.ip, args.hostnames, [args.ports] if args.ports else [])
        taken = {h for e in entries for h in e.hostnames}
        entries = [e for e in entries if not set(e.hostnames) & set(entry.hostnames)]
        entries.append(entry)
        save_runtime_hosts(name, entries)
        try:
            mode = reapply_rules(incus, settings, name)
        except CoiError:
            save_runtime_hosts(name, [e for e in entries if e is not entry])
            raise
        verb = "Updated" if taken & set(entry.hostnames) else "Added"
        ports = ",".join(entry.ports) or "all ports"
        print(f"{verb} {' '.join(entry.hostnames)} -> {entry.ip} ({ports}) in {name} ({mode} mode)")
        return 0
    if not any(args.hostname in e.hostnames for e in entries):
        raise CoiError(f"{args.hostname} was not added to {name} (see 'coi hosts list {name}')")
    for entry in entries:
        entry.hostnames = [h for h in entry.hostnames if h != args.hostname]
    kept = [e for e in entries if e.hostnames]
    save_runtime_hosts(name, kept)
    reapply_rules(incus, settings, name)
    print(f"Removed {args.hostname} from {name}")
    return 0
