"""`coi monitor [NAME] [--json] [--daemon|--stop]`, `coi audit [NAME] [--follow] [--json]`,
`coi unfreeze [NAME]`: the threat monitor's commands."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any


def add_parsers(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "monitor",
        help="threat monitor: snapshot of a container, or start the host daemon",
        description="Without options: processes, connections, I/O and recent threats of NAME "
        "(or of every running coi container). --daemon starts the host monitor daemon "
        "(a no-op when it runs); --stop stops it.",
    )
    p.add_argument("name", nargs="?", help="container name")
    p.add_argument("--json", action="store_true", help="JSON output")
    p.add_argument("--daemon", action="store_true", help="start the monitor daemon")
    p.add_argument("--stop", action="store_true", help="stop the monitor daemon")
    p.set_defaults(handler=cmd_monitor)
    p = sub.add_parser(
        "audit",
        help="show the threat audit log",
        description="Prints ~/.coi/audit/<NAME>.jsonl (every container when NAME is omitted).",
    )
    p.add_argument("name", nargs="?", help="container name")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new events")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(handler=cmd_audit)
    p = sub.add_parser(
        "unfreeze",
        help="resume a container the monitor froze",
        description="Resumes NAME, or every frozen coi container when NAME is omitted.",
    )
    p.add_argument("name", nargs="?", help="container name")
    p.set_defaults(handler=cmd_unfreeze)


def _incus_and_settings() -> tuple[Any, Any]:
    from coi_tui.config import load_settings
    from coi_tui.incus import Incus

    settings = load_settings()
    return Incus(settings.socket or None, settings.project), settings


def cmd_monitor(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from coi_tui.monitor import control

    if args.stop:
        print("monitor stopped" if control.stop() else "monitor was not running")
        return 0
    if args.daemon:
        was = control.is_running()
        pid = control.start()
        print(f"monitor {'already running' if was else 'started'} (pid {pid})")
        return 0
    from coi_tui.errors import CoiError
    from coi_tui.monitor.snapshot import snapshot

    incus, settings = _incus_and_settings()
    if args.name:
        names = [args.name]
    else:
        names = [i.name for i in incus.list_instances(settings.container_prefix) if i.running]
        if not names:
            raise CoiError("no running coi container (name one: coi monitor NAME)")
    snaps = [snapshot(incus, name) for name in names]
    if args.json:
        print(json.dumps(snaps[0] if args.name else snaps, indent=2))
        return 0
    for snap in snaps:
        print_snapshot(snap)
    return 0


def print_snapshot(snap: dict[str, Any]) -> None:
    procs = snap["processes"]
    net = snap["network"]
    res = snap["resources"]
    print(
        f"{snap['container']}  {snap.get('container_ip') or '-'}  "
        f"{snap['status']}  monitor: {snap['monitor']}"
    )
    print(
        f"  processes: {procs['total_count']}   connections: {net['active_connections']} "
        f"({net['suspicious_count']} to other hosts)   read {res['io_read_mb']:.1f} MB, "
        f"written {res['io_write_mb']:.1f} MB"
    )
    for proc in procs["processes"][:40]:
        print(f"    {proc['pid']:>7}  {proc['command'][:100]}")
    for conn in net["connections"]:
        print(
            f"    {conn['protocol']:<5} {conn['local_addr']} -> {conn['remote_addr']} "
            f"{conn['state']}"
        )
    for threat in snap["threats"][-10:]:
        print(f"  ! {_line(threat)}")
    for error in snap["errors"]:
        print(f"  warning: {error}")


def _line(record: dict[str, Any]) -> str:
    return (
        f"{record.get('timestamp', '')[:23]} {record.get('level', '').upper():<8} "
        f"{record.get('container', '')} {record.get('rule_id', '')} "
        f"[{record.get('action', '')}] {record.get('title', '')}: "
        f"{record.get('description', '')}"
    )


def cmd_audit(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from coi_tui.errors import CoiError
    from coi_tui.monitor.events import audit_dir

    folder = audit_dir()
    if args.name:
        files = [folder / f"{args.name}.jsonl"]
        if not files[0].exists() and not args.follow:
            raise CoiError(f"no audit log for '{args.name}' ({files[0]})")
    else:
        files = sorted(folder.glob("*.jsonl"))
    offsets: dict[Path, int] = {}

    def show(path: Path) -> None:
        try:
            with open(path, "rb") as f:
                f.seek(offsets.get(path, 0))
                data = f.read()
        except FileNotFoundError:
            return
        complete = data[: data.rfind(b"\n") + 1]
        offsets[path] = offsets.get(path, 0) + len(complete)
        for raw in complete.splitlines():
            try:
                record = json.loads(raw)
            except ValueError:
                continue
            print(json.dumps(record) if args.json else _line(record), flush=True)

    for path in files:
        show(path)
    if not args.follow:
        return 0
    try:
        while True:
            time.sleep(0.25)  # a CLI tail; the dashboard uses the monitor socket instead
            if not args.name:
                files = sorted(folder.glob("*.jsonl"))
            for path in files:
                show(path)
    except KeyboardInterrupt:
        return 0


def cmd_unfreeze(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from coi_tui.errors import CoiError

    incus, settings = _incus_and_settings()
    if args.name:
        instance = incus.get_instance(args.name)
        if not instance.frozen:
            raise CoiError(f"'{args.name}' is {instance.status.lower()}, not frozen")
        names = [args.name]
    else:
        names = [i.name for i in incus.list_instances(settings.container_prefix) if i.frozen]
        if not names:
            print("no frozen coi container")
            return 0
    for name in names:
        incus.unfreeze(name)
        print(f"unfrozen {name}")
    return 0
