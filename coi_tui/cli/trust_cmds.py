"""`coi trust [--list]` and `coi untrust`: approve what this directory's .coi/config.toml asks
for beyond the sandbox (see config/trust.py)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from coi_tui.cli.output import err
from coi_tui.core.errors import CoiError


def add_parsers(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "trust",
        help="approve what this directory's .coi/config.toml asks for beyond the sandbox",
        description="A project's .coi/config.toml comes with the repository and is untrusted: "
        "mounts outside the workspace, sockets, published ports, credentials, forwarded "
        "host variables and SSH agent forwarding in it apply only after you approve exactly "
        "that set here. Any change to it needs a new approval.",
    )
    p.add_argument("--list", action="store_true", help="list every approval")
    p.add_argument("--json", action="store_true", help="JSON output (with --list)")
    p.add_argument("-y", "--yes", "--force", dest="force", action="store_true",
                   help="approve without asking")  # fmt: skip
    p.set_defaults(handler=cmd_trust)
    p = sub.add_parser("untrust", help="revoke this directory's approval")
    p.set_defaults(handler=cmd_untrust)


def cmd_trust(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from coi_tui.cli.commands import confirm
    from coi_tui.config import load_settings, trust

    if args.list:
        entries = trust.approvals()
        if args.json:
            print(json.dumps([{"workspace": k, **v} for k, v in sorted(entries.items())], indent=2))
            return 0
        if not entries:
            print("No approved projects")
        for workspace, entry in sorted(entries.items()):
            print(f"{workspace}  (approved {entry.get('approved_at', '?')})")
            for item in entry.get("items", []):
                print(f"    {item}")
        return 0
    cwd = Path.cwd().absolute()
    config = cwd / ".coi" / "config.toml"
    if not config.is_file():
        raise CoiError(f"no project config here ({config})")
    load_settings(cwd, {k: v for k, v in os.environ.items() if k != "COI_TRUST_ALL"}, say=err)
    report = trust.REPORTS.get(str(cwd))
    if report is None or not report.gated:
        print(f"{config} asks for nothing beyond the sandbox: nothing to approve")
        return 0
    if report.approved:
        print(f"{config} is already approved as it is")
        return 0
    print(f"{config} asks for:")
    for item in report.gated:
        print(f"  {item}")
    if not confirm("Allow these for sessions started here?", args.force):
        print("Not approved")
        return 1
    trust.approve(cwd, report)
    print(f"Approved {config} (fingerprint {report.fingerprint[:12]})")
    return 0


def cmd_untrust(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from coi_tui.config import trust

    cwd = Path.cwd().absolute()
    if trust.revoke(cwd):
        print(f"Revoked the approval of {cwd}")
    else:
        print(f"{cwd} had no approval")
    return 0
