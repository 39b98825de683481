"""`coi egress log|allow|deny|policy`: what proxied containers reached, and their policy changed
while they run ([network] egress = "proxy"; see coi_tui/network/egress)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from coi_tui.core.errors import CoiError


def add_parsers(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    egress = sub.add_parser(
        "egress",
        help="what proxied containers reached; allow or deny a name while one runs",
        description='With [network] egress = "proxy" every web connection of a container '
        "goes through coi's proxy, which decides by the name it asks for and logs it.",
    )
    esub = egress.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = esub.add_parser("log", help="coi egress log [CONTAINER] [--follow] [--json] [--summary]")
    p.add_argument("container", nargs="?", default="", help="one container (default: all)")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new records")
    p.add_argument("--json", action="store_true", help="one JSON record per line")
    p.add_argument("--summary", action="store_true", help="totals per domain")
    p.set_defaults(handler=cmd_egress)
    for action, verb in (("allow", "opens"), ("deny", "closes")):
        p = esub.add_parser(
            action,
            help=f"coi egress {action} CONTAINER PATTERN: {verb} a name for this session",
            description=f"{verb.capitalize()} a name (example.com, *.example.com, with "
            ":PORT) for a running proxied container at once, until its session ends; the "
            "change is recorded in its egress log.",
        )
        p.add_argument("container")
        p.add_argument("pattern")
        p.add_argument(
            "--always",
            action="store_true",
            help=f"also {action} it in your own config (~/.coi/config.toml) for later sessions",
        )
        p.set_defaults(handler=cmd_egress)
    p = esub.add_parser(
        "promote",
        help="coi egress promote CONTAINER PROFILE: an allowlist profile of what it reached",
        description="Writes a user profile (allowlist mode through the proxy) whose "
        "allowed_domains are the names the container reached, from its egress log.",
    )
    p.add_argument("container")
    p.add_argument("profile")
    p.set_defaults(handler=cmd_egress)
    p = esub.add_parser("policy", help="coi egress policy CONTAINER [--json]: the live policy")
    p.add_argument("container")
    p.add_argument("--json", action="store_true", help="JSON output")
    p.set_defaults(handler=cmd_egress)


def cmd_egress(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from coi_tui.network.egress import service

    if args.action in ("allow", "deny"):
        generation, pattern = service.change_policy(args.container, args.action, args.pattern)
        word = "allowed" if args.action == "allow" else "denied"
        print(f"{pattern} {word} for {args.container} (policy generation {generation})")
        if args.always:
            import os

            from coi_tui.config.edit import remember_network_entry

            path = remember_network_entry(dict(os.environ), args.action, pattern)
            print(f"{pattern} {word} in {path} for every session")
        return 0
    if args.action == "promote":
        import os

        path, names = service.promote(args.container, args.profile, dict(os.environ))
        print(f"profile {args.profile}: {len(names)} name(s) in {path}")
        for name in names:
            print(f"  {name}")
        return 0
    if args.action == "policy":
        data, policy = service.read_policy(args.container)
        if args.json:
            print(json.dumps({**data, **policy.to_json()}, indent=2))
            return 0
        print(f"{args.container}: {policy.mode} (generation {policy.generation})")
        for title, patterns in (("allow", policy.allow), ("deny", policy.deny)):
            for pattern in patterns:
                print(f"  {title:<5} {pattern}")
        print(f"  ports sent to the proxy: {', '.join(map(str, policy.ports()))}")
        return 0
    return show_log(service.egress_dir() / "logs", args)


def log_files(folder: Path, container: str) -> list[Path]:
    if container:
        path = folder / f"{container}.jsonl"
        if not path.exists():
            raise CoiError(f"no egress log for {container} (see 'coi egress log')")
        return [path]
    return sorted(folder.glob("*.jsonl")) if folder.is_dir() else []


def read_new(path: Path, offset: int) -> tuple[list[dict[str, Any]], int]:
    """Complete records after `offset`, and the offset after them."""
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            data = handle.read()
    except OSError:
        return [], offset
    from coi_tui.network.egress.service import parse_records

    end = data.rfind(b"\n") + 1
    return parse_records(data[:end]), offset + end


def show_log(folder: Path, args: argparse.Namespace) -> int:
    from coi_tui.core.text import clean

    offsets: dict[Path, int] = {}
    records: list[dict[str, Any]] = []
    for path in log_files(folder, args.container):
        found, offsets[path] = read_new(path, 0)
        records += found
    records.sort(key=lambda r: str(r.get("time", "")))
    if args.summary:
        print_summary(records, args.json)
        return 0
    for record in records:
        print_record(record, args.json, clean)
    if not args.follow:
        if not records and not args.json:
            print("No egress records" + (f" for {args.container}" if args.container else ""))
        return 0
    try:
        while True:
            time.sleep(0.2)
            for path in log_files(folder, args.container):
                found, offsets[path] = read_new(path, offsets.get(path, 0))
                for record in found:
                    print_record(record, args.json, clean)
    except KeyboardInterrupt:
        return 0


def print_record(record: dict[str, Any], as_json: bool, clean: Any) -> None:
    if as_json:
        print(json.dumps(record), flush=True)
        return

    def field(key: str, limit: int = 120) -> str:
        return str(clean(str(record.get(key, "")), limit))  # names come from containers

    stamp = field("time")[11:19]
    if record.get("type") == "policy":
        line = f"policy  {field('action')} {field('pattern')} (generation {field('generation')})"
    else:
        line = (
            f"{field('decision'):<8} {field('protocol')}  "
            f"{field('domain') or '(no name)'}:{field('port')}  "
            f"out {field('bytes_out')} in {field('bytes_in')}  {field('reason', 160)}"
        )
    print(f"{stamp}  {field('container', 40)}  {line}", flush=True)


def print_summary(records: list[dict[str, Any]], as_json: bool) -> None:
    from coi_tui.network.egress.service import domain_totals

    totals = domain_totals(records)
    if as_json:
        print(json.dumps(totals, indent=2))
        return
    if not totals:
        print("No egress records")
        return
    from coi_tui.core.text import clean

    print(f"{'DOMAIN':<40} {'CONN':>5} {'ALLOWED':>7} {'DENIED':>6} {'OUT':>10} {'IN':>10}")
    for domain, row in totals.items():
        print(
            f"{clean(domain, 40):<40} {row['connections']:>5} {row['allowed']:>7} "
            f"{row['denied']:>6} {row['bytes_out']:>10} {row['bytes_in']:>10}"
        )
