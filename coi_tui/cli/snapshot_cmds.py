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
        help="Manage container snapshots",
        description="Manage Incus container snapshots for checkpointing, rollback, and "
        "branching. Snapshots hold the whole container (home, installed packages, agent "
        "state); the workspace is a host mount and is not part of them. The container is "
        "-c NAME, else $COI_CONTAINER, else the only container of the workspace (-w).",
    )
    ssub = snap.add_subparsers(
        dest="action", metavar="ACTION", parser_class=CoiParser, required=True
    )

    def target(p: argparse.ArgumentParser) -> None:
        p.add_argument("-c", "--container", help="container name")
        p.add_argument("-w", "--workspace", default=".", help="workspace (default: current)")

    p = ssub.add_parser(
        "create",
        help="Create a container snapshot",
        description="Create a snapshot of the current container state. If no name is "
        "provided, an auto-generated name will be used (snap-YYYYMMDD-HHMMSS).",
    )
    p.add_argument("name", nargs="?")
    p.add_argument("--stateful", action="store_true", help="include the running memory state")
    target(p)
    p.set_defaults(handler=cmd_create)

    p = ssub.add_parser("list", help="list snapshots")
    p.add_argument("-a", "--all", action="store_true", help="snapshots of every coi container")
    target(p)
    add_format(p)
    p.set_defaults(handler=cmd_list)

    p = ssub.add_parser(
        "restore",
        help="Restore container from a snapshot",
        description="Restore a container to a previous snapshot state. The container must "
        "be stopped before restore ('coi container stop NAME').",
    )
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
    """COI's order: -c NAME (or alias), else $COI_CONTAINER, else the one container of the workspace
    (known by its user.coi.workspace, or by its name: prefix + the workspace's hash)."""
    from coi_tui.cli.target import by_name_or_alias, workspace_containers
    from coi_tui.core.errors import CoiError

    if args.container:
        found = by_name_or_alias(manager, args.container)
        if not manager.incus.instance_exists(found):
            raise CoiError(f"container '{args.container}' not found")
        return found
    if os.environ.get("COI_CONTAINER"):
        name = os.environ["COI_CONTAINER"]
        if not manager.incus.instance_exists(name):
            raise CoiError(f"container '{name}' from COI_CONTAINER not found")
        return name
    mine = workspace_containers(manager, args.workspace)
    if not mine:
        raise CoiError("no COI containers found for current workspace - use --container to specify")
    if len(mine) > 1:
        raise CoiError(
            "multiple COI containers found for workspace, use --container to specify: "
            + ", ".join(mine)
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
        if not data:
            print("No COI containers found", file=sys.stderr)
            return 0
        if wants_json(args):
            print(json.dumps(data, indent=2))
            return 0
        for container, rows in data.items():
            print(f"\nSnapshots for {container}:")
            if rows:
                _print_table(rows)
            else:
                print("  (none)")
        return 0
    container = resolve_container(manager, args)
    rows = _rows(snapshots.list_snapshots(incus, container))
    if wants_json(args):
        print(json.dumps({"container": container, "snapshots": rows}, indent=2))
        return 0
    print(f"Snapshots for {container}:\n")
    if rows:
        _print_table(rows)
    else:
        print("(none)")
    print(f"\nTotal: {len(rows)} snapshot{'' if len(rows) == 1 else 's'}")
    return 0


def _print_table(rows: list[dict]) -> None:
    print(f"{'NAME':<28} {'CREATED':<20} STATEFUL")
    for row in rows:
        created = row["created_at"][:19].replace("T", " ")
        print(f"{row['name']:<28} {created:<20} {'yes' if row['stateful'] else 'no'}")


def cmd_restore(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """As COI: the container must be stopped first (the dashboard's restore stops and
    restarts it itself)."""
    from coi_tui.cli.commands import confirm
    from coi_tui.core.errors import CoiError
    from coi_tui.sessions import snapshots

    incus, manager = _context(args)
    container = resolve_container(manager, args)
    snap = snapshots.get_snapshot(incus, container, args.name)
    if args.stateful and not snap.stateful:
        raise CoiError(f"snapshot '{args.name}' is not stateful: restore it without --stateful")
    if incus.status(container) in ("Running", "Frozen"):
        raise CoiError(
            f"container '{container}' must be stopped before restore "
            f"(use 'coi container stop {container}')"
        )
    if not args.force:
        print(
            f"WARNING: This will restore container '{container}' to snapshot '{args.name}'.\n"
            "All changes since the snapshot will be lost.\n",
            file=sys.stderr,
        )
        if not confirm("Continue?", False):
            print("Aborted", file=sys.stderr)
            return 0
    snapshots.restore(manager, container, args.name, stateful=args.stateful)
    print(f"Restored container '{container}' from snapshot '{args.name}'", file=sys.stderr)
    return 0


def cmd_delete(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """As COI: one named snapshot goes without a question; --all asks unless --force."""
    from coi_tui.cli.commands import confirm
    from coi_tui.core.errors import UsageError
    from coi_tui.sessions import snapshots

    if not args.name and not args.all:
        raise UsageError("snapshot name required (or use --all to delete all snapshots)")
    incus, manager = _context(args)
    container = resolve_container(manager, args)
    if not args.all:
        snapshots.get_snapshot(incus, container, args.name)
        snapshots.delete(incus, container, args.name)
        print(f"Deleted snapshot '{args.name}' from container '{container}'", file=sys.stderr)
        return 0
    names = [s.name for s in snapshots.list_snapshots(incus, container)]
    if not names:
        print(f"No snapshots to delete for container '{container}'", file=sys.stderr)
        return 0
    if not args.force:
        listing = "".join(f"  - {name}\n" for name in names)
        print(
            f"WARNING: This will delete ALL {len(names)} snapshot(s) for container "
            f"'{container}':\n{listing}",
            file=sys.stderr,
        )
        if not confirm("Continue?", False):
            print("Aborted", file=sys.stderr)
            return 0
    for name in names:
        snapshots.delete(incus, container, name)
        print(f"Deleted snapshot '{name}'", file=sys.stderr)
    return 0


def cmd_info(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from coi_tui.cli.parser import wants_json
    from coi_tui.sessions import snapshots

    incus, manager = _context(args)
    container = resolve_container(manager, args)
    snap = snapshots.get_snapshot(incus, container, args.name)
    if wants_json(args):
        print(json.dumps({"container": container, "snapshot": snap.as_dict()}, indent=2))
        return 0
    print(f"Snapshot: {snap.name}")
    print(f"Container: {container}")
    print(f"Created: {snap.created_at[:19].replace('T', ' ')}")
    print(f"Stateful: {'yes (includes process memory)' if snap.stateful else 'no'}")
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
