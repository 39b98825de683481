"""`coi snapshot create|list|restore|delete|info|branch`. Heavy imports stay inside handlers."""

from __future__ import annotations

import argparse
import json
import os
import sys


def add_parsers(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    from coi_tui.cli.parser import CoiParser, add_format

    snap = sub.add_parser(
        "snapshot",
        help="snapshots of a session container",
        description="Snapshots hold the whole container (home, installed packages, agent "
        "state); the workspace is a host mount and is not part of them. The container is "
        "-c NAME, else $COI_CONTAINER, else the only container of the workspace (-w).",
    )
    ssub = snap.add_subparsers(
        dest="action", metavar="ACTION", parser_class=CoiParser, required=True
    )

    def target(p: argparse.ArgumentParser) -> None:
        p.add_argument("-c", "--container", help="container name")
        p.add_argument("-w", "--workspace", default=".", help="workspace (default: current)")

    p = ssub.add_parser("create", help="create a snapshot (default name snap-YYYYMMDD-HHMMSS)")
    p.add_argument("name", nargs="?")
    p.add_argument("--stateful", action="store_true", help="include the running memory state")
    target(p)
    p.set_defaults(handler=cmd_create)

    p = ssub.add_parser("list", help="list snapshots")
    p.add_argument("-a", "--all", action="store_true", help="snapshots of every coi container")
    target(p)
    add_format(p)
    p.set_defaults(handler=cmd_list)

    p = ssub.add_parser("restore", help="roll the container back to a snapshot")
    p.add_argument("name")
    p.add_argument("-f", "--force", action="store_true", help="do not ask for confirmation")
    p.add_argument(
        "--stateful", action="store_true", help="also restore the memory state (stateful snapshot)"
    )
    target(p)
    p.set_defaults(handler=cmd_restore)

    p = ssub.add_parser("delete", help="delete a snapshot (or --all)")
    p.add_argument("name", nargs="?")
    p.add_argument("-a", "--all", action="store_true", help="every snapshot of the container")
    p.add_argument("-f", "--force", action="store_true", help="do not ask for confirmation")
    target(p)
    p.set_defaults(handler=cmd_delete)

    p = ssub.add_parser("info", help="details of one snapshot")
    p.add_argument("name")
    target(p)
    add_format(p)
    p.set_defaults(handler=cmd_info)

    p = ssub.add_parser("branch", help="start a new slot of this workspace from a snapshot")
    p.add_argument("name")
    p.add_argument("--slot", type=int, default=0, help="slot for the branch (default: lowest free)")
    target(p)
    p.set_defaults(handler=cmd_branch)


def _context(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from coi_tui.cli.commands import context

    _, incus, manager = context(args)
    return incus, manager


def resolve_container(manager, args: argparse.Namespace) -> str:  # type: ignore[no-untyped-def]
    from coi_tui.cli.target import resolve_workspace
    from coi_tui.core.errors import CoiError
    from coi_tui.sessions.manager import workspace_of

    if args.container:
        manager.incus.get_instance(args.container)
        return str(args.container)
    if os.environ.get("COI_CONTAINER"):
        return os.environ["COI_CONTAINER"]
    workspace = resolve_workspace(args.workspace)
    mine = [i.name for i in manager.coi_instances() if workspace_of(i) == workspace]
    if not mine:
        raise CoiError("no COI containers found for current workspace - use --container to specify")
    if len(mine) > 1:
        raise CoiError(
            f"multiple COI containers found for current workspace: {', '.join(mine)} "
            "- use --container to specify"
        )
    return mine[0]


def cmd_create(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from coi_tui.sessions import snapshots

    incus, manager = _context(args)
    container = resolve_container(manager, args)
    snap = snapshots.create(incus, container, args.name, stateful=args.stateful)
    kind = "stateful " if snap.stateful else ""
    print(f"Created {kind}snapshot '{snap.name}' for container '{container}'", file=sys.stderr)
    return 0


def _rows(snaps) -> list[dict]:  # type: ignore[no-untyped-def]
    return [s.as_dict() for s in snaps]


def cmd_list(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from coi_tui.cli.parser import wants_json
    from coi_tui.sessions import snapshots

    incus, manager = _context(args)
    if args.all:
        data = {
            i.name: _rows(snapshots.list_snapshots(incus, i.name)) for i in manager.coi_instances()
        }
        if wants_json(args):
            print(json.dumps(data, indent=2))
            return 0
        for container, rows in data.items():
            _print_table(container, rows)
        if not data:
            print("No coi containers")
        return 0
    container = resolve_container(manager, args)
    rows = _rows(snapshots.list_snapshots(incus, container))
    if wants_json(args):
        print(json.dumps({"container": container, "snapshots": rows}, indent=2))
    else:
        _print_table(container, rows)
    return 0


def _print_table(container: str, rows: list[dict]) -> None:
    print(f"Snapshots for {container}:")
    if not rows:
        print("  (none)")
    else:
        print(f"  {'NAME':<28} {'CREATED':<20} STATEFUL")
        for row in rows:
            created = row["created_at"][:19].replace("T", " ")
            print(f"  {row['name']:<28} {created:<20} {'yes' if row['stateful'] else 'no'}")
    print(f"Total: {len(rows)} snapshot(s)")


def cmd_restore(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from coi_tui.cli.commands import confirm
    from coi_tui.sessions import snapshots

    incus, manager = _context(args)
    container = resolve_container(manager, args)
    snapshots.get_snapshot(incus, container, args.name)
    question = (
        f"WARNING: This will restore '{container}' to snapshot '{args.name}'. All changes "
        "since the snapshot will be lost (workspace files are not affected).\nContinue?"
    )
    if not confirm(question, args.force):
        print("Aborted")
        return 1
    running = incus.status(container) in ("Running", "Frozen")
    if running:
        print(f"Stopping {container} to restore...", file=sys.stderr)
    snapshots.restore(manager, container, args.name, stateful=args.stateful)
    restarted = " and restarted it" if running else ""
    print(f"Restored '{container}' to snapshot '{args.name}'{restarted}", file=sys.stderr)
    return 0


def cmd_delete(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from coi_tui.cli.commands import confirm
    from coi_tui.core.errors import UsageError
    from coi_tui.sessions import snapshots

    if not args.name and not args.all:
        raise UsageError("snapshot name required (or use --all to delete every snapshot)")
    incus, manager = _context(args)
    container = resolve_container(manager, args)
    names = (
        [args.name] if args.name else [s.name for s in snapshots.list_snapshots(incus, container)]
    )
    if not names:
        print(f"No snapshots for {container}")
        return 0
    if not confirm(f"Delete {len(names)} snapshot(s) of {container}?", args.force):
        print("Aborted")
        return 1
    for name in names:
        snapshots.delete(incus, container, name)
        print(f"Deleted snapshot '{name}' of '{container}'", file=sys.stderr)
    return 0


def cmd_info(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from coi_tui.cli.parser import wants_json
    from coi_tui.sessions import snapshots

    incus, manager = _context(args)
    container = resolve_container(manager, args)
    snap = snapshots.get_snapshot(incus, container, args.name)
    if wants_json(args):
        print(json.dumps(snap.as_dict(), indent=2))
        return 0
    print(f"Snapshot: {snap.name}")
    print(f"Container: {container}")
    print(f"Created: {snap.created_at[:19].replace('T', ' ')}")
    print(f"Stateful: {'yes' if snap.stateful else 'no'}")
    return 0


def cmd_branch(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from coi_tui.cli.commands import service_for

    service = service_for(args)
    container = resolve_container(service.manager, args)
    session = service.branch(container, args.name, slot=args.slot)
    print(
        f"Branched '{container}' at '{args.name}' into slot {session.slot}: {session.container}",
        file=sys.stderr,
    )
    print(f"Attach with: coi attach {session.container}", file=sys.stderr)
    return 0
