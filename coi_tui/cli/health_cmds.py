"""`coi health [--format text|json] [--verbose] [--fix [--dry-run]] [--drill]`.

Exit 0 healthy, 1 degraded (a warning), 2 unhealthy (a failure)."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from typing import Any

from coi_tui.cli.output import err


def add_parsers(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    from coi_tui.cli.parser import add_format

    p = sub.add_parser(
        "health",
        help="check that this machine is set up safely for coi",
        description="Checks the system, Incus, security posture, networking, monitoring, "
        "storage, configuration and status. Exit codes: 0 healthy, 1 degraded (warnings), "
        "2 unhealthy (a check failed). --fix applies the safe repairs (missing "
        "directories, storage pool, root disk or bridge as 'coi setup' makes them, IPv4 "
        "forwarding, kernel limits, leftover containers and network rules), then checks again.",
    )
    add_format(p)
    p.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="also run dns_resolution, passwordless_sudo and process_monitoring",
    )
    p.add_argument("--fix", action="store_true", help="apply the safe repairs, then check again")
    p.add_argument(
        "--dry-run", action="store_true", help="with --fix: only say what would be repaired"
    )
    p.add_argument(
        "--drill",
        action="store_true",
        help="fire drill: start a throwaway container, trigger one harmless probe per threat "
        "detector and show whether each was detected, the rule and the latency (exit 0 only "
        "if every probe that ran was detected, 2 if one was missed)",
    )
    p.set_defaults(handler=cmd_health)


def cmd_health(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from coi_tui.cli.parser import wants_json
    from coi_tui.cli.target import incus_for
    from coi_tui.config import Settings, load_settings
    from coi_tui.core.errors import CoiError, UsageError
    from coi_tui.health.checks import EXIT_CODES, HealthChecker, overall

    if args.dry_run and not args.fix:
        raise UsageError("--dry-run only goes with --fix")
    if args.drill:
        if args.fix or args.verbose:
            raise UsageError("--drill does not go with --fix or --verbose")
        return cmd_drill(args)
    try:
        settings = load_settings(say=err)
    except CoiError:
        settings = Settings()  # health still runs with defaults; the config check reports it

    def check() -> HealthChecker:
        checker = HealthChecker(settings, incus_for(settings), verbose=args.verbose)
        checker.run()
        return checker

    as_json = wants_json(args)
    out = sys.stderr if as_json else sys.stdout  # JSON stdout stays one document
    checker = check()
    if args.fix:
        fixes = checker.fixes()
        if not fixes:
            print("Nothing to fix", file=out)
        for fix in fixes:
            if args.dry_run:
                print(f"Would fix {fix.key}: {fix.describe}", file=out)
                continue
            try:
                print(f"Fixed {fix.key}: {fix.apply()}", file=out)
            except (CoiError, OSError) as exc:
                print(f"Could not fix {fix.key}: {str(exc).splitlines()[0]}", file=out)
        if args.dry_run and fixes:
            print("(dry run: nothing changed)", file=out)
        if fixes and not args.dry_run:
            checker = check()
        print(file=out)
    results = checker.results
    status = overall(results)
    if as_json:
        print(json.dumps(report(results, status), indent=2))
    else:
        print_text(results, status)
    return EXIT_CODES[status]


def cmd_drill(args: argparse.Namespace) -> int:
    """`coi health --drill`: a progress line per probe, then the table (or one JSON object)."""
    from coi_tui.cli.commands import install_signal_handlers
    from coi_tui.cli.parser import wants_json
    from coi_tui.cli.target import incus_for
    from coi_tui.config import load_settings
    from coi_tui.health.drill import format_table, run_drill

    install_signal_handlers()  # SIGTERM/SIGHUP unwind too: the drill container is deleted
    settings = load_settings(say=err)
    as_json = wants_json(args)
    out = sys.stderr if as_json else sys.stdout  # JSON stdout stays one document
    print("Fire drill: one harmless probe per threat detector", file=out, flush=True)
    if not settings.monitoring_enabled:
        print(
            "note: [monitoring] enabled = false: sessions are not watched (the drill checks "
            "the detectors anyway)",
            file=out,
        )
    drill = run_drill(
        settings,
        incus_for(settings),
        progress=lambda line: print(line, file=out, flush=True),
    )
    if as_json:
        print(json.dumps(drill.as_dict(), indent=2))
    else:
        print()
        print("\n".join(format_table(drill)))
    return 0 if drill.ok else 2


def report(results: list[Any], status: str) -> dict[str, Any]:
    from coi_tui.health.checks import FAIL, OK, WARN

    return {
        "status": status,
        "timestamp": datetime.now().astimezone().isoformat(),
        "checks": {r.key: r.as_dict() for r in results},
        "summary": {
            "total": len(results),
            "passed": sum(r.status == OK for r in results),
            "warnings": sum(r.status == WARN for r in results),
            "failed": sum(r.status == FAIL for r in results),
        },
    }


def print_text(results: list[Any], status: str) -> None:
    from coi_tui.health.checks import FAIL, OK, SECTION_ORDER, WARN

    title = "Code on Incus Health Check"
    print(title)
    print("=" * len(title))
    print()
    labels = {OK: "[OK]", WARN: "[WARN]", FAIL: "[FAIL]"}
    for section in SECTION_ORDER:
        rows = [r for r in results if r.section == section]
        if not rows:
            continue
        print(f"{section}:")
        for r in rows:
            print(f"  {labels[r.status]:<6} {r.name:<20}: {r.message}")
            if r.fix and r.status != OK:
                print(f"         fix: {r.fix}")
        print()
    passed = sum(r.status == OK for r in results)
    warnings = sum(r.status == WARN for r in results)
    failed = sum(r.status == FAIL for r in results)
    print(f"STATUS: {status.upper()}")
    if failed:
        tail = f", {warnings} warnings" if warnings else ""
        print(f"{failed} of {len(results)} checks failed{tail}")
    elif warnings:
        print(f"{passed} checks passed with {warnings} warnings")
    else:
        print(f"All {len(results)} checks passed")
