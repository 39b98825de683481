"""The threat monitor's commands:

- `coi monitor [NAME] [--format text|json] [--json] [--watch N] [-w PATH] [--all]` and
  `coi monitor --daemon|--stop`: a security snapshot of one container (COI's shape);
- `coi audit [NAME] [--file PATH] [--follow] [--format text|json]`: the host-side audit log;
- `coi unfreeze [NAME]` (0.7-0.8 name: `coi resume`): resume containers the monitor froze.

NAME resolution (monitor, audit): NAME (a container or an alias), then $COI_CONTAINER, then
the only container of the workspace (-w, default the current directory).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from coi_tui.cli.output import err
from coi_tui.config.schema import MONITOR_C2_PORTS, MONITOR_METADATA_ADDRESSES, size_bytes
from coi_tui.core import cgroups

MB = 1 << 20
CLEAR = "\033[2J\033[H"


def add_parsers(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    from coi_tui.cli.parser import add_format, format_type, number_type

    p = sub.add_parser(
        "monitor",
        help="security snapshot of a container, or start/stop the monitor daemon",
        description="Processes, connections, filesystem and resource use, and recent threats "
        "of one container: NAME (or alias), else $COI_CONTAINER, else the workspace's only "
        "container. --watch N refreshes every N seconds (text only). --all shows every "
        "running coi container. --daemon starts the host monitor daemon (a no-op when it "
        "runs); --stop stops it. 'coi monitor rules list [--json]' shows the process rule "
        "packs the daemon loads (bundled, Sigma, GTFOBins) and what was skipped; 'coi monitor "
        "rules update --from DIR' imports a downloaded Sigma or GTFOBins pack.",
    )
    p.add_argument("name", nargs="?", help="container name or alias (or 'rules')")
    p.add_argument("rules_action", nargs="?", metavar="list|update", help=argparse.SUPPRESS)
    p.add_argument("--from", dest="rules_from", metavar="DIR", help="rules update: the pack")
    add_format(p)
    p.add_argument(
        "--watch",
        type=number_type("--watch", 0, int, "whole seconds"),
        default=0,
        metavar="N",
        help="refresh every N seconds (0 = one snapshot)",
    )
    p.add_argument("-w", "--workspace", default=".", help="workspace (default: current)")
    p.add_argument("--all", action="store_true", help="every running coi container")
    p.add_argument("--daemon", action="store_true", help="start the monitor daemon")
    p.add_argument("--stop", action="store_true", help="stop the monitor daemon")
    p.set_defaults(handler=cmd_monitor)

    p = sub.add_parser(
        "audit",
        help="show the threat audit log",
        description="Prints ~/.coi/audit/<NAME>.jsonl, one JSON record per line (NAME "
        "resolves as for 'coi monitor'); --file PATH reads a recorded log instead. "
        "A container with no events yet prints nothing.",
    )
    p.add_argument("name", nargs="?", help="container name or alias")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new events")
    p.add_argument("--file", metavar="PATH", help="read this audit JSONL file")
    p.add_argument("-w", "--workspace", default=".", help="workspace (default: current)")
    p.add_argument(
        "--format",
        type=format_type("text", "json"),
        default="json",
        help="json: the records as stored (default); text: one readable line each",
    )
    p.add_argument("--json", action="store_true", help="same as --format json")
    p.set_defaults(handler=cmd_audit)

    p = sub.add_parser(
        "unfreeze",
        aliases=["resume"],
        help="resume containers the monitor froze (alias: resume)",
        description="Resumes NAME, or every frozen coi container when NAME is omitted.",
    )
    p.add_argument("name", nargs="?", help="container name or alias")
    p.set_defaults(handler=cmd_unfreeze)


def _context() -> tuple[Any, Any]:
    from coi_tui.cli.target import incus_for
    from coi_tui.config import load_settings
    from coi_tui.sessions.manager import SessionManager

    settings = load_settings(say=err)
    incus = incus_for(settings)
    return incus, SessionManager(incus, settings, lambda line: print(line, file=sys.stderr))


def resolve(manager: Any, name: str | None, workspace: str) -> str:
    """NAME or alias, then $COI_CONTAINER, then the workspace's only container (by the
    workspace hash in the name, or the workspace recorded on the container)."""
    from coi_tui.cli.target import by_name_or_alias, workspace_containers
    from coi_tui.core.errors import CoiError

    incus = manager.incus
    if name:
        found = by_name_or_alias(manager, name)
        if incus.instance_exists(found):
            return found
        raise CoiError(f"container '{name}' not found")
    env = os.environ.get("COI_CONTAINER")
    if env:
        if not incus.instance_exists(env):
            raise CoiError(f"container '{env}' from COI_CONTAINER not found")
        return env
    mine = workspace_containers(manager, workspace)
    if not mine:
        raise CoiError(
            "no COI containers found for current workspace - pass container name as argument"
        )
    if len(mine) > 1:
        raise CoiError(
            "multiple COI containers found for workspace, pass container name as argument: "
            + ", ".join(mine)
        )
    return mine[0]


# ---------------------------------------------------------------------- monitor
def cmd_monitor(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from coi_tui.cli.parser import wants_json
    from coi_tui.core.errors import UsageError

    if args.name == "rules" and not (args.stop or args.daemon or args.all):
        return cmd_rules(args)
    if args.rules_action or args.rules_from:
        raise UsageError("unexpected arguments: see 'coi monitor --help'")
    if args.stop or args.daemon:
        from coi_tui.monitor import control

        if args.stop:
            print("monitor stopped" if control.stop() else "monitor was not running")
            return 0
        from coi_tui.config.settings import load_settings

        was = control.is_running()
        pid = control.start(use_sudo=load_settings(say=err).use_sudo)
        print(f"monitor {'already running' if was else 'started'} (pid {pid})")
        return 0
    as_json = wants_json(args)
    if as_json and args.watch > 0:
        raise UsageError("--format json is not supported with --watch")
    incus, manager = _context()
    if args.all:
        if args.name:
            raise UsageError("--all takes no container name")
        return monitor_all(incus, manager, as_json, args.watch)
    name = resolve(manager, args.name, args.workspace)
    err(f"Monitoring container: {name}")
    collector = Collector(incus, name, manager.settings)
    if args.watch == 0:
        snap = collector.collect()
        if as_json:
            print(json.dumps(snap, indent=2))
        else:
            print(format_snapshot(snap), end="")
        return 0
    try:
        while True:
            text = format_snapshot(collector.collect())
            stamp = datetime.now().strftime("%Y-%m-%d %H:%M:%S")
            print(f"{CLEAR}{text}\nLast Updated: {stamp} | Press Ctrl+C to exit", flush=True)
            time.sleep(args.watch)  # the refresh interval the user asked for
    except KeyboardInterrupt:
        return 0


def monitor_all(incus: Any, manager: Any, as_json: bool, watch: int) -> int:
    collectors: dict[str, Collector] = {}

    def snaps() -> list[dict[str, Any]]:
        names = [i.name for i in manager.coi_instances() if i.running or i.frozen]
        for name in names:
            collectors.setdefault(name, Collector(incus, name, manager.settings))
        return [collectors[name].collect() for name in names]

    if watch == 0:
        found = snaps()
        if as_json:
            print(json.dumps(found, indent=2))
        elif not found:
            print("No running containers.")
        else:
            print("\n".join(format_snapshot(s) for s in found), end="")
        return 0
    try:
        while True:
            found = snaps()
            body = "\n".join(format_snapshot(s) for s in found) or "No running containers.\n"
            stamp = datetime.now().strftime("%Y-%m-%d %H:%M:%S")
            print(f"{CLEAR}{body}\nLast Updated: {stamp} | Press Ctrl+C to exit", flush=True)
            time.sleep(watch)
    except KeyboardInterrupt:
        return 0


class Collector:
    """Builds COI's monitor snapshot of one container from the host's /proc, the container's
    cgroup and the Incus state. Keeps the previous sample, so rates are per watch interval
    (0 on the first snapshot)."""

    def __init__(self, incus: Any, name: str, settings: Any = None) -> None:
        self.incus = incus
        self.name = name
        self.c2_ports = set(getattr(settings, "monitoring_c2_ports", None) or MONITOR_C2_PORTS)
        self.metadata = set(
            getattr(settings, "monitoring_metadata_addresses", None) or MONITOR_METADATA_ADDRESSES
        )
        self.previous: tuple[float, float, float] | None = None  # (time, read MB, write MB)
        self._passwd: dict[int, str] | None = None

    def collect(self) -> dict[str, Any]:
        from coi_tui.incus import InstanceNotFound
        from coi_tui.monitor import procfs
        from coi_tui.monitor.membership import PidnsOwners

        errors: list[str] = []
        try:
            status = self.incus.status(self.name)
            live = status in ("Running", "Frozen")
            instance = self.incus.get_instance(self.name, with_state=live)
        except InstanceNotFound:
            from coi_tui.core.errors import CoiError

            raise CoiError(f"container '{self.name}' not found") from None
        from coi_tui.sessions.manager import mounted_path

        mounted = mounted_path(instance)
        pid = instance.pid if live else 0
        if not live:
            errors.append(f"container is not running (status: {status})")
        procs: list[dict[str, Any]] = []
        conns: list[dict[str, Any]] = []
        rchar = wchar = read_bytes = write_bytes = 0
        files: set[str] = set()
        if pid:
            pidns = procfs.pid_ns(pid)
            if not pidns:
                errors.append("cannot read the container's processes (needs root)")
            uid_map = read_id_map(pid)
            owners = PidnsOwners()  # processes in nested pid namespaces are the container's too
            members = [
                p
                for p in procfs.all_pids()
                if pidns and owners.owner(p, procfs.pid_ns(p), {pidns}) == pidns
            ]
            inner = {p: ns_pid(p) for p in members}
            for p in members:
                proc = procfs.read_proc(p)
                if proc is None:
                    continue
                uid = map_id(proc.uid, uid_map)
                procs.append(
                    {
                        "pid": inner.get(p) or p,
                        "ppid": inner.get(proc.ppid, 0),
                        "user": self.user_name(pid, uid),
                        "command": proc.command,
                        "env_access": env_access(p, proc.cmdline),
                    }
                )
                counters = io_fields(p)
                rchar += counters.get("rchar", 0)
                wchar += counters.get("wchar", 0)
                read_bytes += counters.get("read_bytes", 0)
                write_bytes += counters.get("write_bytes", 0)
                files |= workspace_files(p, mounted)
            for conn in procfs.inet_sockets(pid).values():
                if conn.state == "LISTEN":
                    continue
                reason = self.suspect(conn.remote, conn.remote_port, conn.local)
                entry: dict[str, Any] = {
                    "protocol": conn.proto,
                    "local_addr": f"{conn.local}:{conn.local_port}",
                    "remote_addr": f"{conn.remote}:{conn.remote_port}",
                    "state": conn.state,
                    "suspicious": bool(reason),
                }
                if reason:
                    entry["suspect_reason"] = reason
                conns.append(entry)
        procs.sort(key=lambda p: p["pid"])
        now = time.monotonic()
        read_mb, write_mb = read_bytes / MB, write_bytes / MB
        read_rate = write_rate = 0.0
        if self.previous is not None and now > self.previous[0]:
            span = now - self.previous[0]
            read_rate = max(0.0, (read_mb - self.previous[1]) / span)
            write_rate = max(0.0, (write_mb - self.previous[2]) / span)
        self.previous = (now, read_mb, write_mb)
        tmp = tmp_usage(pid) if pid else (0.0, 0.0, 0.0)
        snap: dict[str, Any] = {
            "timestamp": datetime.now().astimezone().isoformat(),
            "container": self.name,
        }
        if live and instance.ipv4:
            snap["container_ip"] = instance.ipv4
        snap["network"] = {
            "active_connections": len(conns),
            "connections": conns,
            "suspicious_count": sum(1 for c in conns if c["suspicious"]),
        }
        snap["processes"] = {
            "available": bool(procs),
            "total_count": len(procs),
            "processes": procs,
        }
        snap["filesystem"] = {
            "available": bool(pid and procs),
            "workspace_path": mounted,
            "total_read_mb": round(read_mb, 3),
            "read_rate_mb_per_sec": round(read_rate, 3),
            "total_write_mb": round(write_mb, 3),
            "write_rate_mb_per_sec": round(write_rate, 3),
            "files_accessed": len(files),
            "tmp_used_mb": round(tmp[0], 1),
            "tmp_total_mb": round(tmp[1], 1),
            "tmp_used_percent": round(tmp[2], 1),
        }
        snap["resources"] = resources(instance, pid, rchar, wchar)
        snap["threats"] = recent_threats(self.name)
        snap["errors"] = errors
        return snap

    def suspect(self, remote: str, port: int, local: str) -> str:
        """Why a connection looks bad ("" when it does not): a C2 port, the cloud metadata
        address, or a private network other than the container's own bridge subnet."""
        import ipaddress

        if not port:
            return ""
        try:
            address = ipaddress.ip_address(remote.removeprefix("::ffff:"))
        except ValueError:
            return ""
        if address.is_loopback or address.is_unspecified:
            return ""
        if port in self.c2_ports:
            return f"known reverse-shell/C2 port {port}"
        if str(address) in self.metadata or address.is_link_local:
            return "cloud metadata address"
        if address.is_private:
            try:
                own = ipaddress.ip_network(f"{local.removeprefix('::ffff:')}/24", strict=False)
            except ValueError:
                own = None
            if own is None or address not in own:
                return "private network"
        return ""

    def user_name(self, init_pid: int, uid: int) -> str:
        if self._passwd is None:
            self._passwd = {}
            text = read_text(f"/proc/{init_pid}/root/etc/passwd")
            for line in text.splitlines():
                parts = line.split(":")
                if len(parts) > 2 and parts[2].isdigit():
                    self._passwd.setdefault(int(parts[2]), parts[0])
        if uid in self._passwd:
            return self._passwd[uid]
        return {0: "root", 1000: "code"}.get(uid, str(uid))


def read_text(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def read_id_map(pid: int) -> list[tuple[int, int, int]]:
    """/proc/PID/uid_map rows: (inside, outside, count)."""
    rows = []
    for line in read_text(f"/proc/{pid}/uid_map").splitlines():
        parts = line.split()
        if len(parts) == 3 and all(p.isdigit() for p in parts):
            rows.append((int(parts[0]), int(parts[1]), int(parts[2])))
    return rows


def map_id(host_uid: int, rows: list[tuple[int, int, int]]) -> int:
    """A host uid as the container sees it (unchanged when no row covers it)."""
    for inside, outside, count in rows:
        if outside <= host_uid < outside + count:
            return inside + host_uid - outside
    return host_uid


def ns_pid(pid: int) -> int:
    """The pid as the innermost pid namespace (the container) sees it."""
    for line in read_text(f"/proc/{pid}/status").splitlines():
        if line.startswith("NSpid:"):
            fields = line.split()[1:]
            return int(fields[-1]) if fields else pid
    return 0


def fd_targets(pid: int) -> list[str]:
    """Where the process's open file descriptors point."""
    from coi_tui.monitor import procfs

    return [fd.target for fd in procfs.list_fds(pid)]


def env_access(pid: int, cmdline: list[str]) -> bool:
    """Whether the process reads another process's environment (/proc/*/environ) now."""
    joined = " ".join(cmdline)
    if "/proc/" in joined and "environ" in joined:
        return True
    return any(t.startswith("/proc/") and t.endswith("/environ") for t in fd_targets(pid))


def io_fields(pid: int) -> dict[str, int]:
    out = {}
    for line in read_text(f"/proc/{pid}/io").splitlines():
        key, _, value = line.partition(":")
        if value.strip().isdigit():
            out[key] = int(value)
    return out


def workspace_files(pid: int, mounted: str) -> set[str]:
    return {t for t in fd_targets(pid) if t == mounted or t.startswith(mounted.rstrip("/") + "/")}


def tmp_usage(pid: int) -> tuple[float, float, float]:
    """(used MB, total MB, used %) of the container's /tmp."""
    try:
        st = os.statvfs(f"/proc/{pid}/root/tmp")
    except OSError:
        return (0.0, 0.0, 0.0)
    total = st.f_blocks * st.f_frsize / MB
    used = (st.f_blocks - st.f_bfree) * st.f_frsize / MB
    return (used, total, 100 * used / total if total else 0.0)


def resources(instance: Any, pid: int, rchar: int, wchar: int) -> dict[str, Any]:
    state = instance.state or {}
    cpu_ns = int((state.get("cpu") or {}).get("usage") or 0)
    memory = int((state.get("memory") or {}).get("usage") or 0)
    limit = size_bytes(instance.expanded_config.get("limits.memory", ""))
    split = cgroups.cpu_seconds(pid) if pid else None
    user, system = split if split else (0.0, 0.0)
    total = cpu_ns / 1e9 if cpu_ns else user + system
    return {
        "cpu_time_seconds": round(total, 3),
        "user_cpu_seconds": round(user, 3),
        "sys_cpu_seconds": round(system, 3),
        "memory_mb": round(memory / MB, 1),
        "memory_limit_mb": round(limit / MB, 1),
        "io_read_mb": round(rchar / MB, 3),
        "io_write_mb": round(wchar / MB, 3),
    }


def recent_threats(name: str, count: int = 20) -> list[dict[str, Any]]:
    from coi_tui.monitor.events import audit_path

    try:
        with open(audit_path(name), "rb") as f:
            size = os.fstat(f.fileno()).st_size
            f.seek(max(0, size - (256 << 10)))  # the tail is enough for the last records
            lines = f.read().decode("utf-8", "replace").splitlines()[-count:]
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            out.append(record)
    return out


def format_snapshot(snap: dict[str, Any]) -> str:
    """COI's text snapshot. Every string that came from the container (process commands and
    user names, audit titles and descriptions, addresses) goes through `clean`: control,
    bidi and zero-width characters shown as escapes, lengths capped."""
    from coi_tui.core.text import clean

    lines = []
    ip = snap.get("container_ip")
    lines.append(f"Container: {clean(snap['container'])}" + (f" ({clean(ip)})" if ip else ""))
    lines.append(f"Timestamp: {snap['timestamp'][:19]}")
    lines.append("━" * 70)
    lines.append("")
    threats = snap["threats"]
    if threats:
        counts: dict[str, int] = {}
        for t in threats:
            counts[t.get("level", "info")] = counts.get(t.get("level", "info"), 0) + 1
        order = ("critical", "high", "warning", "info")
        summary = ", ".join(f"{counts[lv]} {lv}" for lv in order if counts.get(lv))
        lines.append(f"⚠ THREATS DETECTED: {summary}")
        lines.append("")
        lines.append("RECENT THREATS")
        for t in threats:
            stamp = clean(str(t.get("timestamp", ""))[11:19])
            level = clean(str(t.get("level", "")).upper(), 16)
            lines.append(f"  [{stamp}] {level:<8}  {clean(t.get('title', ''))}")
            lines.append(f"                      {clean(t.get('description', ''))}")
            if t.get("action") not in (None, "", "logged"):
                lines.append(f"                      → Action: {clean(t['action'])}")
        lines.append("")
    net = snap["network"]
    head = f"NETWORK ({net['active_connections']} active connections"
    if net["suspicious_count"]:
        head += f", {net['suspicious_count']} suspicious"
    lines.append(head + ")")
    if net["connections"]:
        lines.append("  Protocol  Local Address       Remote Address      State        Status")
        for c in net["connections"]:
            mark = f"⚠ SUSPICIOUS ({c['suspect_reason']})" if c["suspicious"] else "✓ Normal"
            lines.append(
                f"  {clean(c['protocol']):<8}  {clean(c['local_addr']):<18}  "
                f"{clean(c['remote_addr']):<18}  {clean(c['state']):<11}  {clean(mark)}"
            )
    else:
        lines.append("  No active connections")
    lines.append("")
    procs = snap["processes"]
    if procs["available"]:
        lines.append(f"PROCESSES ({procs['total_count']} running)")
        lines.append("  PID    User   Command                                  Flags")
        for p in procs["processes"]:
            command = clean(p["command"])
            command = command if len(command) <= 40 else command[:37] + "..."
            flags = "⚠ ENV SCAN" if p["env_access"] else ""
            user = clean(p["user"], 32)
            lines.append(f"  {p['pid']:<6} {user:<6} {command:<40} {flags}".rstrip())
    else:
        lines.append("PROCESSES")
        lines.append("  Not available")
    lines.append("")
    fs = snap["filesystem"]
    lines.append("FILESYSTEM")
    if fs["available"]:
        lines.append(
            f"  Workspace Reads:  {fs['total_read_mb']:.2f} MB "
            f"({fs['read_rate_mb_per_sec']:.2f} MB/sec)"
        )
        lines.append(
            f"  Writes:           {fs['total_write_mb']:.2f} MB "
            f"({fs['write_rate_mb_per_sec']:.2f} MB/sec)"
        )
        if fs["files_accessed"]:
            lines.append(f"  Files Accessed:   {fs['files_accessed']}")
        if fs["tmp_total_mb"]:
            lines.append(
                f"  /tmp:             {fs['tmp_used_mb']:.0f} MB / {fs['tmp_total_mb']:.0f} MB "
                f"({fs['tmp_used_percent']:.1f}%)"
            )
    else:
        lines.append("  Not available")
    lines.append("")
    res = snap["resources"]
    lines.append("RESOURCES")
    lines.append(
        f"  CPU:     {res['cpu_time_seconds']:.1f}s total ({res['user_cpu_seconds']:.1f}s user, "
        f"{res['sys_cpu_seconds']:.1f}s system)"
    )
    if res["memory_limit_mb"]:
        percent = 100 * res["memory_mb"] / res["memory_limit_mb"]
        lines.append(
            f"  Memory:  {res['memory_mb']:.0f} MB / {res['memory_limit_mb']:.0f} MB "
            f"({percent:.1f}%)"
        )
    else:
        lines.append(f"  Memory:  {res['memory_mb']:.0f} MB")
    lines.append(f"  I/O:     {res['io_read_mb']:.0f} MB read, {res['io_write_mb']:.0f} MB write")
    if snap["errors"]:
        lines.append("")
        lines.append("ERRORS")
        lines += [f"  - {clean(e)}" for e in snap["errors"]]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------- audit
def _audit_line(record: dict[str, Any]) -> str:
    """One readable line; every field cleaned (the record quotes the container's argv)."""
    from coi_tui.core.text import clean

    def field(key: str, limit: int = 200) -> str:
        return clean(record.get(key, ""), limit)

    return (
        f"{field('timestamp', 23)[:23]} {field('level', 16).upper():<8} "
        f"{field('container')} {field('rule_id')} "
        f"[{field('action')}] {field('title')}: {field('description', 2000)}"
    )


def cmd_audit(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from coi_tui.core.errors import CoiError
    from coi_tui.monitor.events import audit_path

    text = args.format == "text" and not args.json
    if args.file:
        path = Path(args.file).expanduser()
        if not path.is_file():
            raise CoiError(f"audit file '{path}' not found")
    else:
        try:
            _, manager = _context()
            name = resolve(manager, args.name, args.workspace)
        except CoiError:
            # A deleted container's log is still worth reading.
            if args.name and audit_path(args.name).is_file():
                name = args.name
            else:
                raise
        path = audit_path(name)
    offset = 0
    inode = -1

    def emit(complete: bytes) -> None:
        for raw in complete.splitlines():
            try:
                record = json.loads(raw)
            except ValueError:
                continue
            if isinstance(record, dict):
                # json.dumps escapes every control and non-ASCII character: inert as well
                print(_audit_line(record) if text else json.dumps(record), flush=True)

    def show() -> None:
        nonlocal offset, inode
        try:
            with open(path, "rb") as f:
                info = os.fstat(f.fileno())
                if info.st_ino != inode or info.st_size < offset:  # rotated or truncated
                    inode, offset = info.st_ino, 0
                f.seek(offset)
                data = f.read()
        except FileNotFoundError:
            return
        complete = data[: data.rfind(b"\n") + 1]
        offset += len(complete)
        emit(complete)

    if not args.file:  # the rotated parts first, oldest first (<c>.jsonl.2, .1)
        for index in range(9, 0, -1):
            with contextlib.suppress(OSError):
                emit(path.with_name(f"{path.name}.{index}").read_bytes())
    show()
    if not args.follow:
        return 0
    try:
        while True:
            time.sleep(0.25)  # a CLI tail; the dashboard uses the monitor socket instead
            show()
    except KeyboardInterrupt:
        return 0


# ---------------------------------------------------------------------- unfreeze
def cmd_unfreeze(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from coi_tui.core.errors import CoiError

    incus, manager = _context()
    if args.name:
        name = resolve(manager, args.name, ".")
        status = incus.status(name)
        if status != "Frozen":
            raise CoiError(f"container {name} is not frozen (status: {status})")
        names = [name]
    else:
        names = [i.name for i in manager.coi_instances() if i.frozen]
        if not names:
            err("No frozen COI containers found")
            return 0
    for name in names:
        err(f"Resuming {name}...")
        incus.unfreeze(name)
    err(f"Resumed {len(names)} container(s)")
    return 0


# ---------------------------------------------------------------------- rule packs
def cmd_rules(args: argparse.Namespace) -> int:
    """`coi monitor rules list [--json]` and `coi monitor rules update --from DIR`."""
    from coi_tui.cli.parser import wants_json
    from coi_tui.config.settings import load_settings
    from coi_tui.core.errors import CoiError, UsageError
    from coi_tui.core.paths import coi_home
    from coi_tui.core.text import clean
    from coi_tui.monitor import rulepacks

    action = args.rules_action or "list"
    if action not in ("list", "update"):
        raise UsageError(f"unknown 'coi monitor rules' action {action!r}: list or update")
    settings = load_settings(Path("/"), say=err)  # what the daemon reads: no project config
    if action == "update":
        if not args.rules_from:
            raise UsageError("coi monitor rules update needs --from DIR (a downloaded pack)")
        try:
            done = rulepacks.import_pack(Path(args.rules_from).expanduser(), settings, coi_home())
        except (OSError, ValueError) as exc:
            raise CoiError(f"rules update: {clean(exc)}") from None
        print(
            f"imported {done.rules} {done.kind} rules from {len(done.files)} files into "
            f"{done.target} ({len(done.skipped)} skipped)"
        )
        for skip in done.skipped:
            print(f"  skipped {clean(skip.line())}")
        print("The monitor loads rule packs when it starts: restart it to use them.")
        return 0
    if args.rules_from:
        raise UsageError("--from is for 'coi monitor rules update'")
    packs, errors = rulepacks.load_configured(settings, coi_home())
    if wants_json(args):
        report = {
            "counts": packs.counts,
            "sources": {k: vars(v) for k, v in packs.sources.items()},
            "rules": [
                {"rule_id": r.rule_id, "level": r.level, "source": r.source, "title": r.title}
                for r in packs.rules
            ],
            "skipped": [vars(s) for s in packs.skipped],
            "errors": errors,
        }
        print(json.dumps(report, indent=2))
        return 0
    for source in rulepacks.SOURCES:
        state = packs.sources.get(source)
        where = f" from {state.path} ({state.state}, {state.files} files)" if state else ""
        print(f"{source}: {packs.counts[source]} rules{where}")
    for line in errors:
        print(f"error: {line}")
    if packs.skipped:
        print(f"skipped: {len(packs.skipped)}")
        for skip in packs.skipped:
            print(f"  {clean(skip.line())}")
    return 0
