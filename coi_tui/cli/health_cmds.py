"""`coi health [--format json] [--verbose]`: exit 0 when nothing FAILs, 1 otherwise."""

from __future__ import annotations

import argparse
import json
import time


def add_parsers(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    from coi_tui.cli.parser import add_format

    p = sub.add_parser(
        "health",
        help="check that this machine is set up safely for coi",
        description="Checks the system, Incus, storage, network, security "
        "posture, monitoring and configuration. Exit 0 when nothing fails "
        "(warnings allowed), 1 when a check fails.",
    )
    add_format(p)
    p.add_argument("-v", "--verbose", action="store_true", help="also show details")
    p.set_defaults(handler=cmd_health)


def cmd_health(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from coi_tui.cli.parser import wants_json
    from coi_tui.config import Settings, load_settings
    from coi_tui.errors import CoiError
    from coi_tui.health.checks import FAIL, OK, SECTION_ORDER, WARN, HealthChecker, overall
    from coi_tui.incus import Incus

    try:
        settings = load_settings()
    except CoiError:
        settings = Settings()  # health still runs with defaults; the config check reports it
    results = HealthChecker(settings, Incus(settings.socket or None, settings.project)).run()
    status = overall(results)
    passed = sum(r.status == OK for r in results)
    warnings = sum(r.status == WARN for r in results)
    failed = sum(r.status == FAIL for r in results)
    if wants_json(args):
        print(
            json.dumps(
                {
                    "status": status,
                    "timestamp": int(time.time()),
                    "checks": {r.key: r.as_dict() for r in results},
                    "summary": {
                        "total": len(results),
                        "passed": passed,
                        "warnings": warnings,
                        "failed": failed,
                    },
                },
                indent=2,
            )
        )
        return 1 if failed else 0
    title = "coi Health Check"
    print(title)
    print("=" * len(title))
    labels = {OK: "[OK]  ", WARN: "[WARN]", FAIL: "[FAIL]"}
    for section in SECTION_ORDER:
        rows = [r for r in results if r.section == section]
        if not rows:
            continue
        print(f"\n{section}")
        for r in rows:
            print(f"  {labels[r.status]} {r.name:<26}: {r.message}")
            if r.fix and r.status != OK:
                print(f"         fix: {r.fix}")
            if args.verbose and r.details:
                print(f"         details: {r.details}")
    print(f"\nSTATUS: {status.upper()}")
    if failed:
        print(f"{failed} of {len(results)} checks failed, {warnings} warning(s)")
    elif warnings:
        print(f"{passed} of {len(results)} checks passed, {warnings} warning(s)")
    else:
        print(f"All {len(results)} checks passed")
    return 1 if failed else 0
