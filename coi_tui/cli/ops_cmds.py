"""Operator commands that read running sessions: `coi top`, `coi overview`, `coi logs`,
`coi sessions`, `coi tool spec` and `coi update`."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from coi_tui.cli.output import err
from coi_tui.core import cgroups
from coi_tui.core.errors import CoiError, UsageError
from coi_tui.core.timefmt import format_uptime

if TYPE_CHECKING:
    from coi_tui.incus import Incus, Instance
    from coi_tui.sessions.manager import SessionManager

MIB = 1024 * 1024
SAFE_SESSION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def add_parsers(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    from coi_tui.cli.parser import number_type

    p = sub.add_parser(
        "top",
        help="live CPU, memory, disk and network use of running sessions",
        description="Samples every running coi container (or NAME) twice, INTERVAL apart. "
        "--procs lists their processes instead, with host PIDs.",
    )
    p.add_argument("name", nargs="?", help="container name or alias (default: all running)")
    p.add_argument(
        "-i",
        "--interval",
        type=number_type("--interval", 0, float, "a number of seconds", above=True),
        default=2.0,
        help="seconds (2)",
    )
    p.add_argument("--sort", choices=["cpu", "mem", "disk", "net"], default="cpu")
    p.add_argument("--procs", action="store_true", help="per-process view")
    p.add_argument("--json", action="store_true", help="JSON output")
    p.add_argument("-w", "--workspace", default=".", help=argparse.SUPPRESS)
    p.set_defaults(handler=cmd_top)

    p = sub.add_parser(
        "overview",
        help="live table of sessions (one snapshot when not on a terminal)",
        description="Read-only. Refreshes every N seconds on a terminal; Ctrl+C quits.",
    )
    p.add_argument(
        "--refresh-interval", type=number_type("--refresh-interval", 1), default=2, metavar="N"
    )
    p.set_defaults(handler=cmd_overview)

    p = sub.add_parser(
        "logs",
        help="show a session's logs (~/.coi/logs)",
        description="Prints ~/.coi/logs/NAME.stdout.log and NAME.stderr.log (stderr lines get "
        "an [ERR] prefix). NAME defaults to $COI_CONTAINER, then the workspace's only "
        "container.",
    )
    p.add_argument("name", nargs="?", help="container name")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    p.add_argument("-w", "--workspace", default=".", help="workspace (default: current)")
    p.set_defaults(handler=cmd_logs)

    p = sub.add_parser("sessions", help="list saved sessions (for --resume)")
    p.add_argument("--json", action="store_true", help="JSON output")
    p.set_defaults(handler=cmd_sessions)

    tool = sub.add_parser("tool", help="agent tools: print how a session's agent is started")
    tsub = tool.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = tsub.add_parser(
        "spec",
        help="print the agent's argv and environment for an orchestrator (runs nothing)",
        description="Prints {command, env, prompt?} for running the agent of --container "
        "yourself (e.g. with 'incus exec'). Nothing is executed.",
    )
    p.add_argument("--container", required=True, help="container name")
    p.add_argument("--session-id", required=True, help="the agent session id to use")
    p.add_argument("--prompt-file", help="in-container path of a prompt for a headless run")
    p.add_argument("--system-prompt-file", help="in-container path of extra system prompt")
    resume = p.add_mutually_exclusive_group()
    resume.add_argument(
        "--continue",
        dest="continue_",
        nargs="?",
        const="latest",
        metavar="ID",
        help="continue the latest (or ID) agent conversation",
    )
    resume.add_argument("--resume-id", metavar="ID", help="resume agent conversation ID")
    resume.add_argument("--resume-latest", action="store_true", help="resume the latest one")
    p.add_argument("--json", action="store_true", help="JSON output (the only format)")
    p.set_defaults(handler=cmd_tool_spec)

    p = sub.add_parser("update", help="update coi (not done in place: see the message)")
    p.add_argument(
        "what",
        nargs="?",
        choices=["core", "patterns"],
        help="patterns: clone [detection] gtfobins_source and sigma_source (git) and import "
        "them as the monitor's rule packs (--dry-run: only validate)",
    )
    p.add_argument("-f", "--force", action="store_true")
    p.add_argument("--check", action="store_true")
    p.add_argument("--dry-run", action="store_true")
    p.set_defaults(handler=cmd_update)


# ---------------------------------------------------------------------- shared
def _context() -> tuple[Incus, SessionManager]:
    from coi_tui.cli.commands import context

    _, incus, manager = context(None)
    return incus, manager


def find_container(manager: SessionManager, name: str | None, workspace: str = ".") -> str:
    """NAME (a container or an alias), then $COI_CONTAINER, then the workspace's only one."""
    from coi_tui.cli.target import by_name_or_alias, workspace_containers

    if name:
        found = by_name_or_alias(manager, name)
        if manager.incus.instance_exists(found):
            return found
        raise CoiError(f"container '{name}' not found (see 'coi list')")
    if os.environ.get("COI_CONTAINER"):
        return os.environ["COI_CONTAINER"]
    mine = workspace_containers(manager, workspace)
    if not mine:
        raise CoiError("no COI containers found for current workspace - name one (see 'coi list')")
    if len(mine) > 1:
        raise CoiError(
            f"multiple COI containers found for current workspace: {', '.join(mine)} - name one"
        )
    return mine[0]


# ---------------------------------------------------------------------- top
@dataclass
class ContainerSample:
    name: str
    alias: str
    workspace: str
    cpu_ns: int
    memory: int
    memory_limit: int
    disk_read: int
    disk_write: int
    net_rx: int
    net_tx: int


@dataclass
class ContainerRow:
    name: str
    alias: str
    workspace: str
    cpu_percent: float
    memory_mb: float
    memory_limit_mb: float
    disk_read_mb_per_sec: float
    disk_write_mb_per_sec: float
    net_rx_mb_per_sec: float
    net_tx_mb_per_sec: float


@dataclass
class ProcessRow:
    container: str
    pid: int
    user: str
    cpu_percent: float
    memory_mb: float
    command: str


def sample_container(incus: Incus, instance: Instance) -> ContainerSample:
    state = incus.instance_state(instance.name)
    memory = state.get("memory") or {}
    rx = tx = 0
    for nic, info in (state.get("network") or {}).items():
        if nic == "lo":
            continue
        counters = info.get("counters") or {}
        rx += int(counters.get("bytes_received") or 0)
        tx += int(counters.get("bytes_sent") or 0)
    read, write = cgroups.io_bytes(instance.name)
    return ContainerSample(
        name=instance.name,
        alias=instance.config.get("user.coi.alias", ""),
        workspace=instance.config.get("user.coi.workspace", ""),
        cpu_ns=int((state.get("cpu") or {}).get("usage") or 0),
        memory=int(memory.get("usage") or 0),
        memory_limit=int(memory.get("total") or 0),
        disk_read=read,
        disk_write=write,
        net_rx=rx,
        net_tx=tx,
    )


def container_rows(
    before: list[ContainerSample], after: list[ContainerSample], seconds: float
) -> list[ContainerRow]:
    earlier = {s.name: s for s in before}
    rows = []
    for now in after:
        was = earlier.get(now.name)
        if was is None:
            continue

        def rate(a: int, b: int) -> float:
            return round(max(0, b - a) / MIB / seconds, 2)

        rows.append(
            ContainerRow(
                name=now.name,
                alias=now.alias,
                workspace=now.workspace,
                cpu_percent=round(max(0, now.cpu_ns - was.cpu_ns) / 1e9 / seconds * 100, 1),
                memory_mb=round(now.memory / MIB, 1),
                memory_limit_mb=round(now.memory_limit / MIB, 1),
                disk_read_mb_per_sec=rate(was.disk_read, now.disk_read),
                disk_write_mb_per_sec=rate(was.disk_write, now.disk_write),
                net_rx_mb_per_sec=rate(was.net_rx, now.net_rx),
                net_tx_mb_per_sec=rate(was.net_tx, now.net_tx),
            )
        )
    return rows


def process_times(pid: int) -> tuple[int, int, str, str] | None:
    """(utime+stime ticks, rss bytes, user, command) of a host pid, None when gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        status = Path(f"/proc/{pid}/status").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        uid_map = Path(f"/proc/{pid}/uid_map").read_text().split()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    ticks = int(fields[11]) + int(fields[12])
    rss = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
    uid = next(
        (int(line.split()[1]) for line in status.splitlines() if line.startswith("Uid:")), -1
    )
    inner = uid
    # Lines of "inside host count": show the uid as the container sees it.
    for at in range(0, len(uid_map) - 2, 3):
        inside, host, count = (int(x) for x in uid_map[at : at + 3])
        if host <= uid < host + count:
            inner = uid - host + inside
            break
    user = {0: "root", 1000: "code"}.get(inner, str(inner))
    command = cmdline.replace(b"\0", b" ").decode("utf-8", "replace").strip()
    if not command:
        command = "[" + stat[stat.index("(") + 1 : stat.rindex(")")] + "]"
    return ticks, rss, user, command


def process_rows(names: list[str], seconds: float) -> list[ProcessRow]:
    hertz = os.sysconf("SC_CLK_TCK")
    first = {(n, p): process_times(p) for n in names for p in cgroups.pids(n)}
    time.sleep(seconds)
    rows = []
    for (name, pid), was in first.items():
        now = process_times(pid)
        if now is None or was is None:
            continue
        cpu = max(0, now[0] - was[0]) / hertz / seconds * 100
        rows.append(ProcessRow(name, pid, now[2], round(cpu, 1), round(now[1] / MIB, 1), now[3]))
    return rows


def cmd_top(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    incus, manager = _context()
    running = [i for i in manager.coi_instances() if i.running]
    if args.name:
        wanted = find_container(manager, args.name)
        running = [i for i in running if i.name == wanted]
        if not running:
            raise CoiError(f"container '{wanted}' is not running")
    if not running:
        print("[]" if args.json else "No running containers.")
        return 0
    if args.procs:
        if args.sort in ("disk", "net"):
            raise UsageError("--procs sorts by cpu or mem")
        prows = process_rows([i.name for i in running], args.interval)
        key = "cpu_percent" if args.sort == "cpu" else "memory_mb"
        prows.sort(key=lambda r: getattr(r, key), reverse=True)
        if args.json:
            print(json.dumps([asdict(r) for r in prows], indent=2))
            return 0
        from coi_tui.core.text import clean  # the command line is the container's: escapes shown

        print(f"{'CONTAINER':<24} {'PID':>8} {'USER':<8} {'CPU%':>6} {'MEM':>9}  COMMAND")
        for r in prows:
            print(
                f"{r.container:<24} {r.pid:>8} {r.user:<8} {r.cpu_percent:>6.1f} "
                f"{r.memory_mb:>7.1f}M  {clean(r.command, 80)}"
            )
        return 0
    before = [sample_container(incus, i) for i in running]
    time.sleep(args.interval)
    after = [sample_container(incus, i) for i in running]
    rows = container_rows(before, after, args.interval)
    keys = {
        "cpu": lambda r: r.cpu_percent,
        "mem": lambda r: r.memory_mb,
        "disk": lambda r: r.disk_read_mb_per_sec + r.disk_write_mb_per_sec,
        "net": lambda r: r.net_rx_mb_per_sec + r.net_tx_mb_per_sec,
    }
    rows.sort(key=keys[args.sort], reverse=True)
    if args.json:
        print(json.dumps([asdict(r) for r in rows], indent=2))
        return 0
    print(
        f"{'CONTAINER':<24} {'ALIAS':<10} {'CPU%':>6} {'MEM':>9} {'DISK R/W':>15} "
        f"{'NET R/W':>15}  WORKSPACE"
    )
    for r in rows:
        disk = f"{r.disk_read_mb_per_sec:.1f}/{r.disk_write_mb_per_sec:.1f}M"
        net = f"{r.net_rx_mb_per_sec:.1f}/{r.net_tx_mb_per_sec:.1f}M"
        print(
            f"{r.name:<24} {r.alias or '-':<10} {r.cpu_percent:>6.1f} {r.memory_mb:>7.1f}M "
            f"{disk:>15} {net:>15}  {r.workspace}"
        )
    return 0


# ---------------------------------------------------------------------- overview
def left_trim(text: str, width: int) -> str:
    return text if len(text) <= width else "..." + text[-(width - 3) :]


def parse_rfc3339(text: str) -> float | None:
    """Epoch seconds of an Incus timestamp (nanosecond fractions, Z or an offset)."""
    from datetime import datetime

    match = re.fullmatch(r"(.+?)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", text.strip())
    if not match:
        return None
    base, fraction, zone = match.groups()
    zone = "+00:00" if zone == "Z" else zone
    try:
        moment = datetime.fromisoformat(f"{base}.{(fraction or '0')[:6]:0<6}{zone}")
    except ValueError:
        return None
    if moment.year < 1971:  # Incus's zero time: never started
        return None
    return moment.timestamp()


def started_at(instance: Instance) -> float | None:
    """When the container last started (Incus's last_used_at)."""
    return parse_rfc3339(instance.last_used_at) if instance.last_used_at else None


def overview_text(manager: SessionManager, interval: int) -> str:
    from coi_tui import __version__
    from coi_tui.sessions.manager import is_persistent, workspace_of

    instances = manager.coi_instances()
    running = [i for i in instances if i.running]
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    lines = [
        f"coi overview  v{__version__}  sessions={len(instances)}  running={len(running)}  {stamp}",
        "-" * 72,
        f"{'SESSION':<12}  {'CONTAINER':<22}  {'WORKSPACE':<32}  {'MODE':<10}  "
        f"{'STARTED':<8}  UPTIME",
    ]
    now = time.time()
    for instance in instances:
        session = (instance.config.get("user.coi.session_id") or "-")[:12]
        began = started_at(instance) if instance.running else None
        started = time.strftime("%H:%M:%S", time.localtime(began)) if began else "-"
        uptime = format_uptime(now - began) if began else "-"
        mode = "persistent" if is_persistent(instance) else "ephemeral"
        lines.append(
            f"{session:<12}  {instance.name:<22}  {left_trim(workspace_of(instance), 32):<32}  "
            f"{mode:<10}  {started:<8}  {uptime}"
        )
    if not instances:
        lines.append("  (no sessions)")
    return "\n".join(lines)


def cmd_overview(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    _, manager = _context()
    if not sys.stdout.isatty():
        print(overview_text(manager, args.refresh_interval))
        return 0
    try:
        while True:
            text = overview_text(manager, args.refresh_interval)
            footer = f"[Ctrl+C] quit   refresh={args.refresh_interval}s"
            sys.stdout.write("\033[2J\033[H" + text + "\n\n" + footer + "\n")
            sys.stdout.flush()
            time.sleep(args.refresh_interval)
    except KeyboardInterrupt:
        print()
        return 0


# ---------------------------------------------------------------------- logs
def log_paths(name: str) -> list[tuple[Path, str]]:
    from coi_tui.core.paths import logs_dir

    directory = logs_dir()
    return [(directory / f"{name}.stdout.log", ""), (directory / f"{name}.stderr.log", "[ERR] ")]


def read_lines(path: Path, prefix: str, offset: int) -> tuple[list[str], int]:
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            data = handle.read()
    except OSError:
        return [], offset
    complete = data[: data.rfind(b"\n") + 1]
    text = complete.decode("utf-8", "replace")
    return [prefix + line for line in text.splitlines()], offset + len(complete)


def follow(paths: list[tuple[Path, str]], offsets: dict[Path, int]) -> Iterator[str]:
    while True:
        for path, prefix in paths:
            lines, offsets[path] = read_lines(path, prefix, offsets.get(path, 0))
            yield from lines
        time.sleep(0.2)


def cmd_logs(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.name:
        name = args.name
        if "/" in name or name.startswith("."):
            raise UsageError(f"invalid container name '{name}'")
    else:
        _, manager = _context()
        name = find_container(manager, None, args.workspace)
    paths = log_paths(name)
    offsets: dict[Path, int] = {}
    found = False
    for path, prefix in paths:
        lines, offsets[path] = read_lines(path, prefix, 0)
        found = found or path.exists()
        for line in lines:
            print(line)
    if not args.follow:
        if not found:
            raise CoiError(f"no logs for {name} (looked for {paths[0][0].parent}/{name}.*.log)")
        return 0
    try:
        for line in follow(paths, {p: offsets.get(p, 0) for p, _ in paths}):
            print(line, flush=True)
    except KeyboardInterrupt:
        return 0
    return 0


# ---------------------------------------------------------------------- sessions
def cmd_sessions(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from coi_tui.sessions.store import all_saved_sessions

    saved = all_saved_sessions()
    if args.json:
        records = [
            {
                "ID": m.session_id,
                "SavedAt": m.saved_at,
                "Workspace": m.workspace,
                "Tool": tool.name,
                "Container": m.container_name,
            }
            for tool, m in saved
        ]
        print(json.dumps(records, indent=2))
        return 0
    print("Saved Sessions:")
    print("---------------")
    if not saved:
        print("  (none)")
    for tool, meta in saved:
        print(f"  {meta.session_id}")
        print(f"    Saved: {meta.saved_at}")
        print(f"    Workspace: {meta.workspace}")
        print(f"    Tool: {tool.name}")
    return 0


# ---------------------------------------------------------------------- tool spec
def cmd_tool_spec(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from coi_tui.sessions.manager import Session
    from coi_tui.tools import get_tool
    from coi_tui.tools.base import tool_options

    if not SAFE_SESSION_ID.fullmatch(args.session_id):
        raise UsageError(
            f"invalid session id '{args.session_id}': letters, digits, '.', '_', '-' "
            "(at most 64, starting with a letter or digit)"
        )
    incus, manager = _context()
    instance = incus.get_instance(args.container)
    settings = manager.settings
    tool = get_tool(instance.config.get("user.coi.tool") or settings.tool)
    resume_id = args.resume_id or (
        args.continue_ if args.continue_ not in (None, "latest") else None
    )
    resume = bool(resume_id or args.resume_latest or args.continue_)
    permission = settings.permission_mode
    binary = settings.tool_binary or tool.binary
    argv = [
        binary,
        *tool.command(
            args.session_id,
            resume=resume,
            resume_id=resume_id,
            permission_mode=permission,
            options=tool_options(settings),
        )[1:],
    ]
    spec: dict[str, Any] = {"command": argv}
    if args.prompt_file or args.system_prompt_file:
        if tool.name != "claude":
            raise CoiError(f"headless prompts are supported for claude only (tool: {tool.name})")
        if args.system_prompt_file:
            argv += ["--append-system-prompt-file", args.system_prompt_file]
        if args.prompt_file:
            # The orchestrator feeds the prompt file on stdin to a print-mode run.
            argv.append("--print")
            spec["prompt"] = args.prompt_file
    session = Session(
        session_id=args.session_id,
        container=instance.name,
        workspace=instance.config.get("user.coi.workspace", ""),
        slot=0,
        tool=tool,
        persistent=False,
    )
    spec["env"] = manager.agent_env(session)
    print(json.dumps(spec, indent=2))
    return 0


# ---------------------------------------------------------------------- update
def cmd_update(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from coi_tui import __version__

    if args.what == "patterns":
        return update_patterns(args.dry_run)
    if args.check:
        print(f"coi-tui v{__version__} (update checks need the network; none was made)")
        return 0
    raise CoiError(
        "coi-tui does not replace itself: update the checkout ('git pull') and run "
        "'make setup', or 'pip install -U coi-tui'"
    )


def update_patterns(dry_run: bool) -> int:
    """`coi update patterns [--dry-run]`: a sparse clone of [detection] gtfobins_source and
    sigma_source, each imported as `coi monitor rules update --from` does (validated; only
    the rule files copied into gtfobins_dir/sigma_dir). Only this explicit command fetches."""
    import tempfile

    from coi_tui.config.settings import load_settings
    from coi_tui.core.paths import coi_home
    from coi_tui.monitor import rulepacks

    settings = load_settings(Path("/"), say=err)  # the user's config only, as the monitor reads it
    failed = 0
    for kind, source in (
        ("gtfobins", settings.gtfobins_source),
        ("sigma", settings.sigma_source),
    ):
        with tempfile.TemporaryDirectory(prefix="coi-patterns-") as work:
            try:
                checkout = rulepacks.clone_pack(source, kind, Path(work) / "checkout")
                done = rulepacks.import_pack(checkout, settings, coi_home(), dry_run=dry_run)
            except (OSError, ValueError) as exc:
                print(f"{kind}: {exc}", file=sys.stderr)
                failed += 1
                continue
        verb = "would import" if dry_run else "imported"
        print(
            f"{kind}: {verb} {done.rules} rules from {len(done.files)} files of {source} "
            f"into {done.target} ({len(done.skipped)} skipped)"
        )
    if not dry_run and failed < 2:
        print("The monitor loads rule packs when it starts: restart it to use them.")
    return 1 if failed else 0
