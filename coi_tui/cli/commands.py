"""Command handlers. Each takes the parsed args and returns an exit code; failures raise
CoiError (exit 1) or UsageError (exit 2) with one clear line."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from coi_tui import __version__
from coi_tui.cli.output import err
from coi_tui.cli.parser import wants_json
from coi_tui.cli.target import by_name_or_alias, incus_for, resolve_workspace
from coi_tui.config import Settings, load_settings
from coi_tui.config.layers import parse_mount_flag
from coi_tui.config.settings import SessionOverrides, session_settings
from coi_tui.core.errors import CoiError, Terminated, UsageError
from coi_tui.core.fs import atomic_write
from coi_tui.incus import ExecResult, Incus, IncusError, Instance, InstanceNotFound
from coi_tui.sessions import aliases
from coi_tui.sessions.manager import (
    LaunchRequest,
    Session,
    SessionManager,
    is_persistent,
    workspace_of,
)
from coi_tui.sessions.naming import container_name, parse_container_name, tmux_session
from coi_tui.sessions.service import SessionService
from coi_tui.sessions.store import SessionStore, all_saved_sessions, all_sessions

Handler = Callable[[argparse.Namespace, argparse.ArgumentParser], int]
# After an attach ends in a shutdown: how long the container may take to stop (a loaded host,
# an agent that is slow to exit), and, where the image cannot say whether it is stopping, how
# long to wait before it is taken to run on (COI polls about 5 s).
STOP_WAIT_S = 90
UNKNOWN_STOP_WAIT_S = 5


SESSION_COMMANDS = ("shell", "run")


def session_overrides(args: argparse.Namespace) -> SessionOverrides:
    """--tool, --image, --persistent/--ephemeral and -e VAR=value of coi shell/run."""
    environment: dict[str, str] = {}
    for item in getattr(args, "session_env", None) or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise UsageError(f"-e expects VAR=value, got '{item}'")
        environment[name] = value
    pairs = list(getattr(args, "session_mounts", None) or [])
    storage = getattr(args, "session_storage", None)
    if storage:
        pairs.insert(0, f"{storage}:/storage")
    return SessionOverrides(
        tool=getattr(args, "tool", None) or "",
        image=getattr(args, "image", None) or "",
        persistent=getattr(args, "persistent", None),
        environment=environment,
        mounts=[parse_mount_flag(pair, Path.cwd()) for pair in pairs],
    )


def settings_for(args: argparse.Namespace | None) -> Settings:
    """shell/run: files < profile (--profile, else [defaults] profile) < env < flags. Other
    commands: files < env (no profile: it shapes sessions, not e.g. `coi list`)."""
    if args is None or getattr(args, "command", None) not in SESSION_COMMANDS:
        return load_settings(say=err)
    return session_settings(
        getattr(args, "profile", "") or "",
        session_overrides(args),
        cwd=project_root(args),
        say=err,
    )


def project_root(args: argparse.Namespace | None) -> Path:
    """Where a session's project config (.coi/config.toml) and profiles are read: the
    workspace (-w) of shell/run, as COI; else the current directory."""
    workspace = Path(str(getattr(args, "workspace", "") or ".")).expanduser()
    return workspace.absolute() if workspace.is_dir() else Path.cwd().absolute()


def context(args: argparse.Namespace | None = None) -> tuple[Settings, Incus, SessionManager]:
    settings = settings_for(args)
    if getattr(args, "command", None) in SESSION_COMMANDS:
        print_trust_warnings(args)
    incus = incus_for(settings)
    return settings, incus, SessionManager(incus, settings, say=err)


def service_for(args: argparse.Namespace) -> SessionService:
    """The session service with the command's settings (shell/run: its profile and flags);
    its progress lines go to stderr."""
    settings, incus, _ = context(args)
    return SessionService(incus, settings, say=err)


def print_trust_warnings(args: argparse.Namespace | None = None) -> None:
    """What the workspace's untrusted .coi/config.toml asked for and did not get."""
    from coi_tui.config import trust

    cwd = project_root(args)
    for key, report in trust.REPORTS.items():
        where, _, profile = key.partition("#profile:")
        if where != str(cwd):
            continue
        source = cwd / ".coi" / ("config.toml" if not profile else f"profiles/{profile}")
        for line in trust.warnings(report, source):
            err(line)


NO_ANSWER = "No answer on stdin: pass --force to skip the question"


def read_answer(question: str) -> str | None:
    """Ask `question` on stderr and read the answer on stdin (a terminal or a pipe: `echo y |
    coi ...` works); None when there is none at all (EOF, stdin closed)."""
    print(question, end="", file=sys.stderr, flush=True)
    try:
        answer = sys.stdin.readline()
    except (OSError, ValueError):  # stdin closed
        answer = ""
    if not answer:
        print("", file=sys.stderr)
        return None
    return answer


def confirm(question: str, force: bool) -> bool:
    """A [y/N] question; only y/yes count, and no answer at all (EOF) is a no."""
    if force:
        return True
    answer = read_answer(f"{question} [y/N]: ")
    if answer is None:
        err(NO_ANSWER)
        return False
    return answer.strip().lower() in ("y", "yes")


def raise_terminated(signum: int, _frame: FrameType | None) -> None:
    raise Terminated(signum)


def install_signal_handlers() -> None:
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, raise_terminated)


def launch_request(args: argparse.Namespace, service: SessionService) -> LaunchRequest:
    # --tool/--image/--persistent/--profile are already part of the settings (see context()).
    return service.request(
        args.workspace,
        slot=args.slot,
        resume=args.continue_ or args.resume,
        allow_home=bool(getattr(args, "force", False)),
        debug=bool(getattr(args, "debug", False)),
    )


# ---------------------------------------------------------------------- shell / run / attach
def cmd_shell(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if getattr(args, "alias", None):
        try:
            entry, slot = aliases.lookup(args.alias)
        except CoiError:
            if getattr(args, "resume", None) == "auto":
                # `--resume ID`: a value needs `=` (as in COI), so ID arrived as an alias
                raise UsageError(
                    f"no alias '{args.alias}': did you mean --resume={args.alias}?"
                ) from None
            raise
        args.workspace = entry.workspace
        args.slot = args.slot or slot
        args.profile = getattr(args, "profile", "") or entry.profile
    service = service_for(args)
    manager = service.manager
    if getattr(args, "tmux", None) is not None:
        raise UsageError(
            "the --tmux flag was removed: set [shell] use_tmux = true|false in "
            ".coi/config.toml or ~/.coi/config.toml"
        )
    if not service.settings.use_tmux and not getattr(args, "container", None):
        return shell_direct(args, service)
    if not args.background and not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise CoiError(
            "coi shell needs a terminal; use 'coi shell --background' and "
            "'coi attach' from a terminal"
        )
    install_signal_handlers()
    if getattr(args, "container", None):
        session = service.enter(args.container, debug=args.debug)
    else:
        session = service.start(launch_request(args, service))
    announce(session, "Background (tmux)" if args.background else "Interactive (tmux)")
    if args.background:
        err(f"Attach with: coi attach {session.container}")
        return 0
    with manager.attached(session.container):
        try:
            manager.attach(session.container)
        except Terminated:
            manager.save_running(session.container)
            err(f"Container kept running - use 'coi attach {session.container}' to reconnect")
            return 143
        except KeyboardInterrupt:
            manager.save_running(session.container)
            raise
        return after_attach(manager, session.container)


def shell_direct(args: argparse.Namespace, service: SessionService) -> int:
    """[shell] use_tmux = false: the agent (bash with --debug) runs attached to this terminal
    through a plain exec, no tmux; when it exits the session ends as a `coi run` does (saved,
    then removed, or stopped and kept when persistent). --background needs tmux: refused."""
    if args.background:
        raise UsageError("--background needs tmux: [shell] use_tmux = false runs attached")
    install_signal_handlers()
    _session, code = service.run_direct(launch_request(args, service), announce=announce)
    return code


def announce(session: Session, mode: str) -> None:
    err("Starting session...")
    err(f"Session ID: {session.session_id}")
    err(f"Container: {session.container}")
    err(f"Workspace: {session.workspace}")
    err(f"Tool: {session.tool.name}")
    err(f"Persistent: {'yes' if session.persistent else 'no'}")
    err(f"Mode: {mode}")
    if session.resume_meta is not None:
        err(f"Resumed session {session.resume_meta.session_id}")


def after_attach(manager: SessionManager, name: str) -> int:
    """The attach ended: detached, the agent's shell exited, or the container is powering
    off (then the session is saved and an ephemeral container removed, here: the user is
    watching this process)."""
    try:
        status = manager.incus.status(name)
    except InstanceNotFound:
        return 0
    if status == "Running" and manager.tmux_exists(name):
        keep_running_note(name)
        return 0
    wait = STOP_WAIT_S
    if status == "Running":
        # The tmux session is gone: `exit` from the shell (the container runs on, as in
        # COI) or a poweroff, whose init is already stopping when tmux goes.
        going = manager.shutting_down(name)
        if going is False:
            keep_running_note(name)
            return 0
        if going is None:
            wait = UNKNOWN_STOP_WAIT_S  # no systemd to ask: wait as COI does, then keep
    status = manager.incus.wait_for_status(name, ("Stopped", "Gone"), timeout=wait)
    if status in ("Stopped", "Gone") and manager.finalize_if_stopped(name) != "running":
        return 0
    keep_running_note(name)
    return 0


def keep_running_note(name: str) -> None:
    err(
        f"Container kept running - use 'coi attach {name}' to reconnect, 'coi shutdown {name}' "
        f"to stop, or 'coi kill {name}' to force stop"
    )


def cmd_run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    service = service_for(args)
    settings, manager = service.settings, service.manager
    command = list(args.cmd)
    if command and command[0] == "--":
        command = command[1:]
    given = [
        flag
        for flag, value in (
            ("--prompt", args.prompt),
            ("--prompt-file", args.prompt_file),
            ("--prompt-name", args.prompt_name),
        )
        if value is not None
    ]
    if len(given) > 1:  # COI's checks and words, before any container work (exit 2)
        raise UsageError("--prompt, --prompt-file and --prompt-name are mutually exclusive")
    if given and command:
        raise UsageError(f"a positional command cannot be combined with {given[0]}")
    req = launch_request(args, service)
    prompt = headless_prompt(args, settings, req.tool)
    if prompt is None and not command:
        script = Path(req.workspace) / "coi-run"
        if not (script.is_file() and os.access(script, os.X_OK)):
            raise UsageError(
                "command required: 'coi run -- CMD ...', or an executable ./coi-run in the "
                "workspace"
            )
        command = ["./coi-run"]
    install_signal_handlers()

    def argv(session: Session) -> list[str]:
        # A headless prompt is staged in the container; its argv reads it from there.
        return command if prompt is None else stage_prompt(manager, session, prompt)

    return service.run_command(req, argv)


def headless_prompt(args: argparse.Namespace, settings: Settings, tool: Any) -> str | None:
    """The prompt of `coi run --prompt TEXT | --prompt-file PATH | --prompt-name NAME`."""
    text: str | None = None
    if getattr(args, "prompt", None) is not None:
        text = args.prompt
    elif getattr(args, "prompt_file", None):
        path = Path(args.prompt_file).expanduser()
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or "not UTF-8 text"
            raise UsageError(f"failed to read --prompt-file {path}: {reason}") from None
    elif getattr(args, "prompt_name", None) is not None:
        prompts = getattr(settings, "prompts", {}) or {}
        if args.prompt_name not in prompts:
            known = ", ".join(sorted(prompts)) or "none defined"
            raise UsageError(f'no prompt named "{args.prompt_name}" in [prompts] ({known})')
        text = str(prompts[args.prompt_name])
    if text is None:
        return None
    if not text.strip():
        raise UsageError("the prompt is empty")
    if tool.name not in ("claude",):
        raise CoiError(f"headless prompt runs support claude only (tool: {tool.name})")
    if settings.permission_mode not in ("bypass", ""):
        raise CoiError(
            'headless prompt runs need permission_mode = "bypass" (nobody is there to '
            "approve tool use); set it in [tool] or with COI_PERMISSION_MODE=bypass"
        )
    return text


def stage_prompt(manager: SessionManager, session: Any, prompt: str) -> list[str]:
    """Put the prompt in ~/.coi/runs/<session>.prompt inside the container and return the
    agent's headless argv, which reads it from there (no size limit from the exec API)."""
    uid = manager.settings.code_uid
    runs = "/home/code/.coi/runs"
    for directory in ("/home/code/.coi", runs):
        with contextlib.suppress(IncusError):  # already there
            manager.incus.make_dir(session.container, directory, uid=uid, gid=uid, mode=0o700)
    path = f"{runs}/{session.session_id}.prompt"
    manager.incus.push_file(
        session.container, path, prompt.encode("utf-8"), uid=uid, gid=uid, mode=0o600
    )
    argv = manager.agent_command(session, debug=False)
    return ["sh", "-c", 'prompt=$(cat "$0") && exec "$@" -p "$prompt"', path, *argv]


def running_sessions(manager: SessionManager) -> list[Instance]:
    return [i for i in manager.coi_instances() if i.running]


def resolve_target(manager: SessionManager, name: str, slot: int, workspace: str) -> str:
    """The running container `coi attach NAME` / `--slot N` means (a name may be an alias);
    COI's one error otherwise."""
    settings = manager.settings
    if slot:
        target = container_name(settings.container_prefix, resolve_workspace(workspace), slot)
    else:
        target = by_name_or_alias(manager, name)
    try:
        running = manager.incus.status(target) == "Running"
    except CoiError:
        running = False
    if not running:
        raise CoiError(f"container {target} not found or not running")
    return target


def cmd_attach(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """COI's `attach`: no name attaches the only running session, lists several (exit 0),
    or says there are none; a container without the agent's tmux session gets COI's hint
    to use --bash. Then, unlike COI, no terminal is a clear error (not tmux's escapes)."""
    _, _, manager = context(args)
    wanted = args.name or os.environ.get("COI_CONTAINER") or ""
    if wanted or args.slot:
        name = resolve_target(manager, wanted, args.slot, args.workspace)
        if args.slot:
            print(f"Attaching to {name} (slot {args.slot})...")
    else:
        running = running_sessions(manager)
        if not running:
            print("No active sessions")
            return 0
        if len(running) > 1:
            print("Active sessions:")
            for number, instance in enumerate(running, 1):
                print(f"  {number}. {instance.name}")
            print("\nUse: coi attach <container-name>")
            return 0
        name = running[0].name
        print(f"Attaching to {name}...")
    if not args.bash and not manager.tmux_exists(name):
        err("\nNo tmux session found in container.")
        err("The container is still running. To get a shell, use:")
        err(f"  coi attach {name} --bash")
        return 0
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise CoiError(
            f"coi attach needs a terminal; from a script use 'coi tmux capture {name}' and "
            f"'coi tmux send {name} TEXT'"
        )
    with manager.attached(name):
        code = manager.attach(name, bash=args.bash)
        if args.bash:
            return code
        return after_attach(manager, name)


# ---------------------------------------------------------------------- list / info
def instance_record(instance: Instance, prefix: str) -> dict[str, Any]:
    parsed = parse_container_name(prefix, instance.name)
    return {
        "name": instance.name,
        "status": instance.status,
        "created_at": instance.created_at[:19].replace("T", " "),  # COI's "2006-01-02 15:04:05"
        "image": instance.config.get("user.coi.image")
        or instance.config.get("image.description", ""),
        "persistent": is_persistent(instance),
        "mode": "persistent" if is_persistent(instance) else "ephemeral",
        # a stopped container has none (a DHCP lease of its last run may still be listed)
        "ipv4": "" if instance.status == "Stopped" else (instance.ipv4 or ""),
        "pool": (instance.expanded_devices.get("root") or {}).get("pool", ""),
        "alias": instance.config.get("user.coi.alias", ""),
        "published_ports": [],
        "workspace": workspace_of(instance),
        "slot": parsed[1] if parsed else 0,
        "tool": instance.config.get("user.coi.tool", ""),
        "session_id": instance.config.get("user.coi.session_id", ""),
    }


def cmd_list(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    settings, _, manager = context(args)
    instances = manager.coi_instances(addresses=True)
    title = "Active Containers:"
    if args.running:
        instances, title = [i for i in instances if i.running], "Running Containers:"
    elif args.stopped:
        instances, title = [i for i in instances if i.status == "Stopped"], "Stopped Containers:"
    elif args.status:
        wanted = args.status.lower()
        valid = {
            "running",
            "stopped",
            "frozen",
            "error",
            "starting",
            "stopping",
            "freezing",
            "thawed",
            "aborting",
            "ready",
        }
        if wanted not in valid:
            raise UsageError(f"invalid status '{args.status}': one of {', '.join(sorted(valid))}")
        instances = [i for i in instances if i.status.lower() == wanted]
        title = f"{args.status.capitalize()} Containers:"
    records = [instance_record(i, settings.container_prefix) for i in instances]
    saved = (
        [
            {"ID": m.session_id, "SavedAt": m.saved_at, "Workspace": m.workspace, "Tool": tool.name}
            for tool, m in all_saved_sessions()
        ]
        if args.all
        else []
    )
    if wants_json(args):
        payload: dict[str, Any] = {"active_containers": records}
        if saved:
            payload["saved_sessions"] = saved
        print(json.dumps(payload, indent=2))
        return 0
    print(title)
    print("-" * len(title))
    if not records:
        print("  (none)")
    for rec in records:  # COI's lines; one with nothing to say is left out, as COI does
        alias = f" ({rec['alias']})" if rec["alias"] else ""
        print(f"  {rec['name']}{alias} ({rec['mode']})")
        print(f"    Status: {rec['status']}")
        if rec["ipv4"]:
            print(f"    IPv4: {rec['ipv4']}")
        print(f"    Created: {rec['created_at']}")
        for label, value in (
            ("Image", rec["image"]),
            ("Pool", rec["pool"]),
            ("Ports", ", ".join(rec["published_ports"])),
            ("Workspace", rec["workspace"]),
            ("Tool", rec["tool"]),
        ):
            if value:
                print(f"    {label}: {value}")
    if args.all:
        print()
        print("Saved Sessions:")
        print("---------------")
        if not saved:
            print("  (none)")
        for item in saved:
            print(f"  {item['ID']}")
            print(f"    Saved: {item['SavedAt']}")
            print(f"    Workspace: {item['Workspace']}")
            print(f"    Tool: {item['Tool']}")
    return 0


def tree_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def cmd_info(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    load_settings(say=err)  # a broken config is said here as everywhere
    known = all_sessions()  # as COI: a session is there from its start, saved or not
    if args.session_id:
        found = next(((t, m) for t, m in known if m.session_id == args.session_id), None)
        if found is None:
            raise CoiError(f"session not found: {args.session_id} (see 'coi list --all')")
    else:
        # the workspace's latest; else, as COI, the latest of all
        workspace = resolve_workspace(args.workspace)
        ours = [(t, m) for t, m in known if m.workspace == workspace]
        if not (ours or known):
            raise CoiError("no sessions found (specify session ID or use 'coi list --all')")
        found = (ours or known)[0]
    tool, meta = found
    store = SessionStore(tool)
    data_dir = store.config_copy(meta.session_id)
    present = data_dir.is_dir()
    info = {
        "session_id": meta.session_id,
        "container": meta.container_name,
        "saved_at": meta.saved_at,
        "workspace": meta.workspace,
        "tool": tool.name,
        "persistent": meta.persistent,
        "session_data": present,
        "data_size": tree_size(data_dir) if present else 0,
        "session_path": str(store.path(meta.session_id)),
    }
    if wants_json(args):
        print(json.dumps(info, indent=2))
        return 0
    print("Session Information")  # COI's layout: labels padded to 16 columns
    print("===================\n")
    print(f"{'Session ID:':<16}{meta.session_id}")
    if meta.container_name:
        print(f"{'Container:':<16}{meta.container_name}")
    print(f"{'Tool:':<16}{tool.name}")
    print(f"{'Workspace:':<16}{meta.workspace}")
    if meta.saved_at:
        print(f"{'Saved At:':<16}{meta.saved_at}")
    mark = f"✓ Present ({tool.config_dir} directory)" if present else "✗ Missing"
    print(f"{'Session Data:':<16}{mark}")
    if present:
        print(f"{'Data Size:':<16}{info['data_size']} bytes")
    print(f"\n{'Session Path:':<16}{info['session_path']}")
    print(f"\n{'Resume:':<16}coi shell --resume={meta.session_id}")
    return 0


# ------------------------------------------------------------ persist / shutdown / kill / clean
def targets(manager: SessionManager, names: list[str], all_: bool, verb: str) -> list[str]:
    if all_:
        return [i.name for i in manager.coi_instances()]
    if not names:  # COI reports this from the command itself: exit 1, not a usage error
        raise CoiError(
            f"no container names provided - use 'coi list' to see active containers "
            f"(or 'coi {verb} --all')"
        )
    return [by_name_or_alias(manager, name) for name in names]


def cmd_persist(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    _, incus, manager = context(args)
    names = targets(manager, args.names, args.all, "persist")
    done = 0
    for name in names:
        print(f"Persisting container {name}...")
        instance = incus.get_instance(name)
        incus.set_config(name, "user.coi.persistent", "true")
        # its session's record, and any other naming it (as COI: a container started some
        # other way still gets its sessions marked)
        found = [(t, m) for t, m in all_sessions() if m.container_name == name]
        own = manager.session_of(instance)
        if own and own[1].session_id not in {m.session_id for _, m in found}:
            found.append(own)
        for tool, meta in found:
            if not meta.persistent:
                meta.persistent = True
                SessionStore(tool).write_meta(meta)
        print(f"  ✓ Persisted {name}")
        done += 1
    print(f"Persisted {done} container(s)")
    return 0


def cmd_shutdown(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    settings, incus, manager = context(args)
    names = targets(manager, args.names, args.all, "shutdown")
    if args.all and not confirm_all(names, "Shutdown", args.force):
        return 0
    for name in names:
        if not incus.instance_exists(name):
            raise CoiError(f"container '{name}' not found (see 'coi list')")
    timeout = settings.shutdown_timeout if args.timeout is None else args.timeout
    for name in names:  # COI's lines (scripts and its tests read them)
        print(f"Shutting down container {name} (timeout: {timeout}s)...")
        manager.shutdown(name, timeout=timeout)
        print(f"  ✓ Shutdown {name} (session saved)")
    print(f"\nShutdown {len(names)} container(s)")
    return 0


def cmd_kill(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    _, _, manager = context(args)
    names = targets(manager, args.names, args.all, "kill")
    # As COI: a container named on the command line is killed without a question; only
    # --all asks (unless --force). A name already gone is not an error (idempotent).
    if args.all and not confirm_all(names, "Kill", args.force):
        return 0
    killed = 0
    for name in names:
        print(f"Killing container {name}...")
        if manager.kill(name):  # False when it was already gone
            killed += 1
            print(f"  ✓ Killed {name}")
        else:
            print(f"  {name}: already gone")
    print(f"\nKilled {killed} container(s)" if killed else "\nNo containers were killed")
    return 0


def confirm_all(names: list[str], action: str, force: bool) -> bool:
    """`--all`: COI's listing and question. False when there is nothing to do or the answer
    is no (said, exit 0 as COI); a missing answer is an error (CoiError, exit 1)."""
    if not names:
        print(f"No containers to {action}")
        return False
    print(f"Found {len(names)} container(s):")
    for name in names:
        print(f"  - {name}")
    if force:
        return True
    answer = read_answer(f"\n{action} all these containers? [y/N]: ")
    if answer is None:
        raise CoiError(NO_ANSWER)
    if answer.strip().lower() not in ("y", "yes"):
        print("Cancelled.")
        return False
    return True


def cmd_clean(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    _, incus, manager = context(args)
    if args.orphans:
        from coi_tui.network.firewall import Firewall
        from coi_tui.network.isolation import clean_orphans

        # Rules left by a crashed coi: no confirmation, they belong to no container.
        firewall = Firewall(use_sudo=manager.settings.use_sudo)
        orphans = clean_orphans(incus, dry_run=args.dry_run, firewall=firewall)
        for iface in orphans:
            print(f"  network rules for {iface} (container gone)")
        if not orphans:
            print("no orphaned network rules")
        elif args.dry_run:
            print("(dry run: nothing removed)")
        else:
            print(f"Removed network rules for {len(orphans)} interface(s)")
        return 0
    if args.pools:
        return clean_pools(args, manager)
    from coi_tui.sessions import immutable

    # Immutable flags a crashed coi left (their container is gone): no confirmation either.
    for name in immutable.stale_records(incus.instance_exists):
        if args.dry_run:
            print(f"  immutable flags of {name} (container gone)")
        elif immutable.release(name, err):
            print(f"  cleared the immutable flags of {name} (container gone)")
    stopped = [
        i
        for i in manager.coi_instances()
        if i.status == "Stopped" and (args.all or not is_persistent(i))
    ]
    sessions = [(t, m) for t, m in all_saved_sessions()] if args.sessions else []
    if not stopped and not sessions:
        print("nothing to clean")
        return 0
    for inst in stopped:
        print(f"  container {inst.name} ({'persistent' if is_persistent(inst) else 'ephemeral'})")
    for tool, meta in sessions:
        print(f"  saved session {meta.session_id} ({tool.name}, {meta.workspace})")
    if args.dry_run:
        print("(dry run: nothing removed)")
        return 0
    if not confirm(
        f"Remove {len(stopped)} container(s) and {len(sessions)} saved session(s)?", args.force
    ):
        print("Aborted")
        return 1
    for inst in stopped:
        manager.remove_container(inst.name)
    for tool, meta in sessions:
        shutil.rmtree(SessionStore(tool).path(meta.session_id), ignore_errors=True)
    print("Cleanup complete")
    return 0


def referenced_pools(manager: SessionManager) -> set[str]:
    """Storage pools a loaded config or profile names, and the ones coi and Incus use when
    none is named (coi's own pool, the Incus default profile's root pool)."""
    import tomllib

    from coi_tui.config.profiles import ProfileSet
    from coi_tui.core.paths import read_regular_text

    pools = {manager.storage_pool()}
    with contextlib.suppress(CoiError, IncusError):
        root = manager.incus.get_profile("default").get("devices", {}).get("root", {})
        pools.add(str(root.get("pool", "")))
    profiles = ProfileSet.discover(Path.cwd().absolute(), say=err)
    for name in profiles.names():
        # the file as written: a repository's profile may not set a pool for a session, but
        # naming one here only keeps containers from being deleted
        for profile in profiles.found[name]:
            with contextlib.suppress(OSError, ValueError, AttributeError):
                data = tomllib.loads(read_regular_text(profile.config, 1 << 20))
                pools.add(str(data.get("container", {}).get("storage_pool", "")))
    return pools - {""}


def clean_pools(args: argparse.Namespace, manager: SessionManager) -> int:
    """`coi clean --pools`, as COI: containers with the coi prefix in a storage pool that no
    loaded config or profile names; the pools themselves are never deleted."""
    incus = manager.incus
    print("\nScanning storage pools for unreferenced COI containers...")
    referenced = referenced_pools(manager)
    prefix = manager.settings.container_prefix
    plans: dict[str, list[str]] = {}
    for instance in incus.list_instances(prefix):
        pool = str(instance.expanded_devices.get("root", {}).get("pool", ""))
        if pool and pool not in referenced:
            plans.setdefault(pool, []).append(instance.name)
    if not plans:
        print("  (no unreferenced pools contain COI containers)")
        print("\nNothing to clean.")
        return 0
    print("\nWARNING: these pools may still be referenced by profiles in other")
    print("projects on this machine that COI cannot see right now. Cleaning")
    print("them will affect any project whose profile points here.\n")
    for pool, names in sorted(plans.items()):
        print(f'Pool "{pool}" is not referenced by any profile loaded in this directory.')
        print(f'  COI containers in "{pool}" ({len(names)}):')
        for name in names:
            print(f"    - {name}")
        print()
    if args.dry_run:
        print("[Dry run] No changes made.")
        return 0
    if not confirm("Delete these containers?", args.force):
        print("Cancelled.")
        return 1
    cleaned = 0
    for pool, names in sorted(plans.items()):
        for name in names:
            print(f"Deleting container {name} (pool {pool})...")
            try:
                manager.remove_container(name)
            except CoiError as exc:
                err(f"Warning: Failed to delete {name}: {exc}")
                continue
            cleaned += 1
    print(f"\n✓ Cleaned {cleaned} item(s)")
    return 0


# ---------------------------------------------------------------------- container / file / tmux
def cmd_container(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    _, incus, manager = context(args)
    action = args.action
    if action == "launch":
        from coi_tui.network.isolation import BuildNetwork

        # on the coi bridge with the session's network rules (as a build container): the
        # Incus default profile may have no network, or an unfiltered one
        network = BuildNetwork(incus, manager.settings, args.name, say=err)
        incus.create_instance(
            args.name, args.image, ephemeral=args.ephemeral, devices=network.devices()
        )
        network.before_start()
        incus.start(args.name)
        # booted before "Launched": a tmux or file made earlier can be lost to /tmp's boot
        # cleanup (COI's tests start tmux in a container right after this)
        manager.wait_ready(args.name)
        print(f"Launched {args.name}")
    elif action == "start":
        incus.start(args.name)
    elif action == "stop":
        incus.stop(args.name, force=args.force)
    elif action == "delete":
        if incus.status(args.name) in ("Running", "Frozen") and not args.force:
            raise CoiError(f"container '{args.name}' is running: stop it first or pass --force")
        incus.delete_instance(args.name, force=args.force)
        from coi_tui.network.firewall import Firewall

        with contextlib.suppress(CoiError):  # rules of a `container launch`, if any
            Firewall(use_sudo=manager.settings.use_sudo).remove(args.name)
    elif action == "exists":
        return 0 if incus.instance_exists(args.name) else 1
    elif action == "running":
        try:
            return 0 if incus.status(args.name) == "Running" else 1
        except InstanceNotFound:
            return 1
    elif action == "mount":
        spec = {"type": "disk", "source": os.path.abspath(args.source), "path": args.path}
        if args.shift:
            spec["shift"] = "true"
        incus.add_device(args.name, args.device, spec)
    elif action == "list":
        data = [
            {
                "name": i.name,
                "status": i.status,
                "created_at": i.created_at,
                "config": i.config,
                "state": i.state,
            }
            for i in incus.list_instances(with_state=True)
        ]
        if wants_json(args):
            print(json.dumps(data, indent=2))
        else:
            print(f"{'NAME':<32} STATUS")  # the header of `incus list`'s table, as COI's
            for item in data:
                print(f"{item['name']:<32} {item['status']}")
    elif action == "info":
        try:
            instance = incus.get_instance(args.name, with_state=True)
        except InstanceNotFound:
            raise CoiError(f"container '{args.name}' not found (see 'coi list')") from None
        record = {
            "name": instance.name,
            "status": instance.status,
            "created_at": instance.created_at,
            "config": instance.config,
            "devices": instance.expanded_devices,
            "state": instance.state,
        }
        if wants_json(args):
            print(json.dumps(record, indent=2))
        else:
            print(f"Name: {instance.name}")
            print(f"Status: {instance.status}")
            print(f"Created: {instance.created_at[:19].replace('T', ' ')}")
            print(f"IPv4: {instance.ipv4 or '-'}")
            print(f"Workspace: {workspace_of(instance) or '-'}")
            for key, value in sorted(instance.config.items()):
                if key.startswith("user.coi.") or key.startswith("security."):
                    print(f"  {key}: {value}")
    elif action == "exec":
        check_exec_flags(args)  # a usage error comes first, as Cobra's flag checks do
        if not incus.instance_exists(args.name):
            raise CoiError(f"container '{args.name}' not found (see 'coi list')")
        return container_exec(args, incus)
    return 0


def check_exec_flags(args: argparse.Namespace) -> None:
    if args.tty and args.capture:
        raise UsageError("--tty and --capture flags are mutually exclusive")
    if args.format and not args.capture:
        raise UsageError("--format flag requires --capture flag")


def container_exec(args: argparse.Namespace, incus: Incus) -> int:
    command = list(args.cmd)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise UsageError("coi container exec NAME -- COMMAND ...")
    env = {}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"--env expects K=V, got '{item}'")
        env[key] = value
    if args.capture:
        try:
            result = incus.exec_capture(
                args.name, command, user=args.user, group=args.group, cwd=args.cwd, env=env
            )
        except IncusError as exc:
            if not str(exc).endswith("Command not found"):
                raise
            # as `incus exec` (and so COI): a command that is not there is exit code 127
            result = ExecResult(127, "", "Command not found")
        if args.format == "raw":
            sys.stdout.write(result.stdout)
            return result.exit_code
        print(
            json.dumps(
                {"stdout": result.stdout, "stderr": result.stderr, "exit_code": result.exit_code}
            )
        )
        return 0
    return incus.exec_stream(
        args.name,
        command,
        user=args.user,
        group=args.group,
        cwd=args.cwd,
        env=env,
        tty=True if args.tty else None,
    )


def split_remote(spec: str) -> tuple[str, str]:
    name, sep, path = spec.partition(":")
    if not sep or not name or not path.startswith("/"):
        raise UsageError(f"'{spec}' is not container:path (an absolute path inside the container)")
    return name, path


def cmd_file(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """COI's `file push/pull`: its checks, its exit codes, its lines on stderr."""
    settings, incus, _ = context(args)
    uid = settings.code_uid
    if args.action == "push":
        name, remote = split_remote(args.dest)
        local = Path(args.source)
        if not local.exists():
            raise CoiError(f"source does not exist: {local}")
        if local.is_dir():
            if not args.recursive:
                raise UsageError("source is a directory, use -r flag")
            incus.push_tree(local, name, remote, uid=uid, gid=uid)
            print(f"Pushed directory {args.source} -> {name}:{remote}", file=sys.stderr)
        else:
            incus.push_file(
                name,
                remote,
                local.read_bytes(),
                uid=uid,
                gid=uid,
                mode=local.stat().st_mode & 0o777,
            )
            print(f"Pushed file {args.source} -> {name}:{remote}", file=sys.stderr)
        return 0
    name, remote = split_remote(args.source)
    target = pull_destination(args.dest, remote, args.recursive)
    if args.recursive:
        incus.pull_tree(name, remote, target, say=lambda line: print(line, file=sys.stderr))
        print(f"Pulled directory {name}:{remote} -> {target}", file=sys.stderr)
    else:
        atomic_write(target, incus.pull_file(name, remote), mode=0o644)
        print(f"Pulled file {name}:{remote} -> {target}", file=sys.stderr)
    return 0


def pull_destination(dest: str, remote: str, recursive: bool) -> Path:
    """Where `file pull` puts `remote`, checked before anything is copied (COI's policy): a
    real directory (never a symlink to one) receives it under its own name; a trailing slash
    needs such a directory; nothing existing is replaced except, by a single file, a file
    (or a symlink, replaced itself, never written through); a directory never is."""
    base = os.path.basename(remote.rstrip("/"))
    if base in ("", ".", ".."):
        raise UsageError(f"cannot derive a file name from remote path '{remote}'")
    trimmed = dest.rstrip("/") or dest
    target = Path(trimmed)
    if target.is_dir() and not target.is_symlink():
        target = target / base
    elif dest.endswith("/"):
        if os.path.lexists(trimmed):
            raise UsageError(f"destination '{dest}' is not a directory")
        raise UsageError(
            f"destination '{dest}' does not exist: a trailing slash requires an existing "
            "directory (create it first, or drop the slash to pull to that exact path)"
        )
    if not os.path.lexists(target):
        return target
    if target.is_dir() and not target.is_symlink():
        raise UsageError(f"destination '{target}' already exists; remove it or choose another name")
    if recursive:
        raise UsageError(
            f"destination '{target}' already exists and is not a directory; "
            "remove it or choose another name"
        )
    return target


def cmd_tmux(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    _, incus, manager = context(args)
    if args.action == "list":
        sessions = [
            i.name
            for i in running_sessions(manager)
            if manager.tmux_command(i.name, ["tmux", "has-session", "-t", tmux_session(i.name)]).ok
        ]
        if wants_json(args):
            print(json.dumps([{"container": n, "tmux_session": tmux_session(n)} for n in sessions]))
        elif not sessions:
            print("No active sessions")
        else:
            print("Active sessions:")
            for name in sessions:
                print(f"  - {name} (tmux session: {tmux_session(name)})")
        return 0
    name = args.name
    status = incus.status(name)
    if status != "Running":
        raise CoiError(f"container {name} is not running (status: {status})")
    session = tmux_session(name)
    if args.action == "send":
        result = manager.tmux_command(
            name,
            [
                "tmux",
                "send-keys",
                "-t",
                session,
                "-l",
                args.text,
                ";",
                "send-keys",
                "-t",
                session,
                "Enter",
            ],
        )
        if not getattr(result, "ok", False):
            raise CoiError(
                f"no tmux session {session} in {name}: {getattr(result, 'stderr', '').strip()}"
            )
        print(f"Sent command to session {session}")
        return 0
    result = manager.tmux_command(name, ["tmux", "capture-pane", "-t", session, "-p"])
    if not getattr(result, "ok", False):
        raise CoiError(f"no tmux session {session} in {name}")
    sys.stdout.write(getattr(result, "stdout", ""))
    return 0


# ---------------------------------------------------------------------- setup / build / image
def cmd_setup(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from coi_tui.incus.provision import Provisioner

    settings = load_settings(say=err)
    incus = incus_for(settings)
    print("Setting up Incus for coi:")
    provisioner = Provisioner(incus, lambda step: print(step.line(), flush=True))
    provisioner.run(args.pool, args.bridge or settings.bridge, args.nat, args.subnet)
    delegate_users(args.user)
    from coi_tui.network.firewall import install_helper

    for line in install_helper():
        print(line, flush=True)
    from coi_tui.monitor.control import install as install_monitor

    for line in install_monitor():
        print(line, flush=True)
    changed = sum(1 for s in provisioner.steps if s.changed)
    print(f"Done: {changed} change(s), {len(provisioner.steps) - changed} left as they were.")
    network = incus.get_network(args.bridge or settings.bridge) or {}
    if (network.get("config") or {}).get("ipv4.nat") != "true":
        print(
            "Note: NAT is off, so agents cannot reach the internet. "
            "Run 'coi setup --nat' to allow it."
        )
    return 0


def delegate_users(names: list[str]) -> None:
    """raw.idmap for users whose uid is not the agent's: root must be allowed to map it."""
    import pwd

    from coi_tui.incus.provision import delegate_host_ids

    wanted = list(names)
    if not wanted and os.environ.get("SUDO_USER") and os.environ.get("SUDO_UID") not in ("0", ""):
        wanted.append(os.environ["SUDO_USER"])
    for name in wanted:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise CoiError(f"no such user '{name}'") from None
        if os.geteuid() != 0:
            raise CoiError(f"mapping {name}'s ids needs root: run 'sudo coi setup --user {name}'")
        added = delegate_host_ids(entry.pw_uid, entry.pw_gid)
        detail = ", ".join(added) if added else "already allowed"
        print(f"  [{'created' if added else 'ok':>7}] id mapping for {name}: {detail}")


def cmd_image(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    settings = load_settings(say=err)
    incus = incus_for(settings)
    if args.action == "exists":
        return 0 if incus.image_exists(args.alias) else 1
    if args.action == "delete":  # as COI: the named image, no question (--force is accepted)
        incus.get_image(args.alias)
        incus.delete_image(args.alias)
        print(f"Image {args.alias} deleted", file=sys.stderr)
        return 0
    if args.action == "info":
        return image_info(incus, args)
    if args.action == "cleanup":
        return image_cleanup(incus, args)
    if args.action == "publish":
        if incus.status(args.container) != "Stopped":
            raise CoiError(
                f"container '{args.container}' must be stopped before publishing "
                f"('coi container stop {args.container}')"
            )
        props = {"description": args.description} if args.description else {}
        fingerprint = incus.publish(args.container, args.alias, props, args.compression)
        print(f"Published {args.container} as {args.alias} ({fingerprint[:12]})")
        return 0
    images = incus.list_images()
    if not args.all:
        images = [
            i
            for i in images
            if any(a.startswith("coi") for a in i.aliases) or "coi.recipe" in i.properties
        ]
    if args.prefix:
        images = [i for i in images if any(a.startswith(args.prefix) for a in i.aliases)]
    records = [
        {
            "aliases": i.aliases,
            "fingerprint": i.fingerprint[:12],
            "size": i.size,
            "created_at": i.created_at,
            "description": i.properties.get("description", ""),
            "recipe": i.properties.get("coi.recipe", ""),
        }
        for i in images
    ]
    if wants_json(args):
        print(json.dumps(records, indent=2))
        return 0
    if args.prefix and not records:
        print(f"No images found with prefix '{args.prefix}'")  # COI's line
        return 0
    print("All Local Images:" if args.all else "COI Images:")
    if not records:
        print("  (none) - build one with 'coi build'")
    else:
        print(f"  {'ALIAS':<24} {'FINGERPRINT':<12}  {'SIZE':>10}  CREATED")
    for rec in records:
        alias = ", ".join(rec["aliases"]) or "(no alias)"
        print(
            f"  {alias:<24} {rec['fingerprint']}  {rec['size'] / 1e6:7.0f} MB  "
            f"{rec['created_at'][:19].replace('T', ' ')}"
        )
    return 0


def image_record(image: Any) -> dict[str, Any]:
    return {
        "aliases": image.aliases,
        "fingerprint": image.fingerprint,
        "size": image.size,
        "created_at": image.created_at,
        "uploaded_at": image.uploaded_at,
        "properties": image.properties,
    }


def image_info(incus: Incus, args: argparse.Namespace) -> int:
    found = [
        i
        for i in incus.list_images()
        if args.alias in i.aliases
        or (len(args.alias) >= 6 and i.fingerprint.startswith(args.alias))
    ]
    if not found:
        raise CoiError(f"image '{args.alias}' not found (see 'coi image list --all')")
    record = image_record(found[0])
    if wants_json(args):
        print(json.dumps(record, indent=2))
        return 0
    print(f"Image: {', '.join(record['aliases']) or '(no alias)'}")
    print(f"  Fingerprint: {record['fingerprint']}")
    print(f"  Size: {record['size'] / 1e6:.0f} MB")
    print(f"  Created: {record['created_at'][:19].replace('T', ' ')}")
    for key, value in sorted(record["properties"].items()):
        print(f"  {key}: {value}")
    return 0


def image_cleanup(incus: Incus, args: argparse.Namespace) -> int:
    """Keep the newest N images with an alias starting with PREFIX; delete the rest."""
    matching = [i for i in incus.list_images() if any(a.startswith(args.prefix) for a in i.aliases)]
    matching.sort(key=lambda i: i.created_at, reverse=True)
    doomed, kept = matching[args.keep :], matching[: args.keep]
    if args.dry_run:
        for image in doomed:
            print(f"Would delete {', '.join(image.aliases)} ({image.fingerprint[:12]})")
        return 0
    for image in doomed:
        incus.request("DELETE", f"/1.0/images/{image.fingerprint}")

    def aliases(images: list[Any]) -> list[str]:
        return [a for i in images for a in i.aliases if a.startswith(args.prefix)]

    # COI's report, on stderr as COI prints it
    print("Cleanup complete:", file=sys.stderr)
    for title, names in (
        ("Deleted {} old version(s):", aliases(doomed)),
        ("Kept {} recent version(s):", aliases(kept)),
    ):
        if names:
            print("\n" + title.format(len(names)), file=sys.stderr)
            for name in names:
                print(f"  - {name}", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------- version / help / completion
def cmd_version(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from coi_tui.cli.parser import UPSTREAM, version_text

    if wants_json(args):
        print(
            json.dumps(
                {
                    "version": __version__,
                    "name": "code-on-incus",
                    "implementation": "coi-tui",
                    "url": UPSTREAM,
                }
            )
        )
    else:
        print(version_text())
    return 0


def cmd_completion(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from coi_tui.cli.completion import render

    sys.stdout.write(render(parser, args.shell))
    return 0


HANDLERS: dict[str, Handler] = {
    "shell": cmd_shell,
    "run": cmd_run,
    "attach": cmd_attach,
    "list": cmd_list,
    "info": cmd_info,
    "persist": cmd_persist,
    "shutdown": cmd_shutdown,
    "close": cmd_shutdown,
    "kill": cmd_kill,
    "clean": cmd_clean,
    "container": cmd_container,
    "file": cmd_file,
    "tmux": cmd_tmux,
    "setup": cmd_setup,
    "image": cmd_image,
    "images": cmd_image,
    "version": cmd_version,
    "completion": cmd_completion,
}
