"""The `coi` argument parser. Only argparse here: building it must stay cheap, because
`coi --version` and `coi help` must not import pylxd or the UI."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Any

from coi_tui import __version__
from coi_tui.cli import build_cmds

MAX_SLOT = 10

# Command groups that live in modules of their own. Each module defines
# `add_parsers(sub, common)`, which adds its sub-parsers and binds each one's handler with
# `set_defaults(handler=...)`. Keep their top-level imports light (argparse only): the
# parser is built for every `coi` invocation.
COMMAND_MODULES: tuple[str, ...] = (
    "coi_tui.cli.snapshot_cmds",
    "coi_tui.cli.health_cmds",
    "coi_tui.cli.config_cmds",
    "coi_tui.cli.remote_cmds",
    "coi_tui.cli.monitor_cmds",
    "coi_tui.cli.ops_cmds",
    "coi_tui.cli.schema_cmds",
    "coi_tui.cli.network_cmds",
    "coi_tui.cli.trust_cmds",
    "coi_tui.cli.egress_cmds",
)


def slot_type(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid slot '{text}': must be a number") from None
    if not 0 <= value <= MAX_SLOT:
        raise argparse.ArgumentTypeError(f"invalid slot {value}: must be 0 (auto) or 1-{MAX_SLOT}")
    return value


def format_type(*allowed: str):  # type: ignore[no-untyped-def]
    def check(text: str) -> str:
        if text not in allowed:
            quoted = [f"'{name}'" for name in allowed]
            choices = " or ".join(quoted) if len(quoted) == 2 else ", ".join(quoted)
            raise argparse.ArgumentTypeError(f"invalid format '{text}': must be {choices}")
        return text

    return check


def number_type(  # type: ignore[no-untyped-def]
    option: str,
    minimum: float,
    cast: type = int,
    what: str = "a whole number",
    above: bool = False,
):
    """An argparse type: a number of `cast` at least `minimum` (more than it with `above`),
    with a one-line error."""

    def check(text: str) -> float:
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid {option} '{text}': {what}") from None
        if value < minimum or (above and value == minimum):
            bound = f"> {minimum}" if above else f">= {minimum}"
            raise argparse.ArgumentTypeError(f"invalid {option} {text}: must be {bound}")
        return value  # type: ignore[no-any-return]

    return check


positive_int = number_type("value", 0)
keep_count = number_type("--keep", 1)


UPSTREAM = "https://github.com/mensfeld/code-on-incus"


IMPLEMENTATION = "coi-tui, a Python implementation of COI"


def version_text() -> str:
    """COI's two lines, exactly (scripts parse the first; COI's tests count them): which
    implementation this is goes in `coi version --json` and `coi version --help`."""
    return f"code-on-incus (coi) v{__version__}\n{UPSTREAM}"


class PrintVersion(argparse.Action):
    """`--version`: version_text() as it is (argparse's own action rewraps it into one line)."""

    def __call__(self, parser: argparse.ArgumentParser, *_args: object, **_kwargs: object) -> None:
        print(version_text())
        parser.exit()


class CoiParser(argparse.ArgumentParser):
    """argparse with COI's conventions: usage errors exit 2 with one line and a hint."""

    def format_help(self) -> str:
        # Cobra's headings, which COI's users and tests read
        text = super().format_help().replace("usage: ", "Usage: ", 1)
        return text.replace("\noptions:\n", "\nFlags:\n", 1)

    def add_subparsers(self, **kwargs: Any) -> argparse._SubParsersAction:  # type: ignore[type-arg]
        kwargs.setdefault("title", "Available Commands")
        return super().add_subparsers(**kwargs)

    def format_usage(self) -> str:
        return super().format_usage().replace("usage: ", "Usage: ", 1)

    def error(self, message: str) -> None:  # type: ignore[override]
        if message == "the following arguments are required: ACTION":
            # A command group on its own (`coi snapshot`) shows its help, as Cobra does.
            self.print_help()
            self.exit(0)
        if "invalid choice" in message and " " in self.prog:
            # a command group given an unknown subcommand shows its help, as Cobra does
            self.print_help()
            self.exit(0)
        hint = f"see '{self.prog} --help'"
        stray = message.partition("unrecognized arguments: ")[2].split()
        if stray and not stray[0].startswith("-"):
            # COI: `coi shell abc` means `--resume=abc` was meant (a value needs `=`).
            hint = f"did you mean --resume={stray[0]}? or {hint}"
            message = f"unexpected argument '{stray[0]}'"
        elif stray:
            message = f"unknown flag: {stray[0]}"  # Cobra's words
        if message.startswith("the following arguments are required"):
            self.print_usage(sys.stderr)  # a missing argument shows the usage, as Cobra does
        self.exit(2, f"Error: {message} ({hint})\n")


def add_format(
    parser: argparse.ArgumentParser, choices: tuple[str, ...] = ("text", "json")
) -> None:
    parser.add_argument(
        "--format",
        type=format_type(*choices),
        default="text",
        help=f"output format: {' or '.join(choices)} (default text)",
    )
    parser.add_argument("--json", action="store_true", help="same as --format json")


FORCE_HOME_HELP = "mount the workspace even when it is your home directory or contains it"


def session_parent() -> CoiParser:
    parent = CoiParser(add_help=False)
    parent.add_argument(
        "-w",
        "--workspace",
        default=".",
        help="workspace directory to mount at /workspace (default: current)",
    )
    parent.add_argument(
        "--slot",
        type=slot_type,
        default=0,
        help="slot 1-10 for parallel sessions of one workspace (0 = lowest free)",
    )
    parent.add_argument("--tool", help="agent to run: claude, opencode, aider, dummy")
    parent.add_argument(
        "-e",
        "--env",
        dest="session_env",
        action="append",
        default=[],
        metavar="VAR=value",
        help="environment variable for the agent or command (repeatable; over the config's)",
    )
    parent.add_argument(
        "--mount",
        dest="session_mounts",
        action="append",
        default=[],
        metavar="HOST:CONTAINER",
        help="also mount a host directory, writable (repeatable; replaces a [[mounts]] entry "
        "at the same path)",
    )
    parent.add_argument(
        "--storage",
        dest="session_storage",
        metavar="DIR",
        help=argparse.SUPPRESS,  # COI 0.6: --mount DIR:/storage (still accepted)
    )
    # hidden, still accepted; no mutually exclusive group (argparse cannot lay out the usage
    # of a group whose members are hidden): the last one given wins
    parent.add_argument(
        "--persistent",
        action="store_true",
        default=None,
        help=argparse.SUPPRESS,  # as COI 0.10+: [container] persistent (still accepted)
    )
    parent.add_argument(
        "--ephemeral",
        dest="persistent",
        action="store_false",
        help=argparse.SUPPRESS,
    )
    parent.add_argument(
        "--resume",
        metavar="ID",
        nargs="?",
        const="auto",
        default=None,
        help="resume the latest saved session of this workspace, or session ID (--resume=ID)",
    )
    parent.add_argument(
        "--continue",
        dest="continue_",
        metavar="ID",
        nargs="?",
        const="auto",
        default=None,
        help="alias of --resume",
    )
    parent.add_argument("--profile", default="", help="apply a profile")
    parent.add_argument("--image", help=argparse.SUPPRESS)  # [container] image (still accepted)
    return parent


def build_parser() -> CoiParser:
    parser = CoiParser(
        prog="coi",
        description="Run AI coding agents in isolated Incus containers. "
        "With no command, 'coi' runs 'coi shell'.",
        epilog="Run 'coi COMMAND --help' for a command's options. The dashboard is 'coi-tui'.",
    )
    parser.add_argument("--version", action=PrintVersion, nargs=0, help="print the version")
    sub = parser.add_subparsers(
        dest="command", metavar="COMMAND", parser_class=CoiParser, title="Available Commands"
    )
    common = session_parent()

    p = sub.add_parser(
        "shell",
        parents=[common],
        help="start an interactive agent session",
        description="Start the agent in tmux in a container for the workspace and attach to "
        "it. The container is ephemeral by default (deleted when the session ends); "
        "[container] persistent = true keeps it, and 'coi persist' converts a running one.",
    )
    p.add_argument(
        "--background", action="store_true", help="start detached; attach later with 'coi attach'"
    )
    p.add_argument(
        "alias",
        nargs="?",
        help="a workspace's [container] alias: start that workspace (with its profile) from "
        "anywhere; ALIAS-N picks slot N",
    )
    p.add_argument("--debug", action="store_true", help="start bash instead of the agent")
    p.add_argument("--force", action="store_true", help=FORCE_HOME_HELP)
    p.add_argument(
        "--container",
        metavar="NAME",
        help="enter an existing container as it is (started if stopped; its agent started "
        "if not running), without remounting the workspace",
    )
    p.add_argument(
        "--tmux",
        choices=["true", "false"],
        nargs="?",
        const="true",
        help=argparse.SUPPRESS,  # COI <= 0.9; removed in 0.10 for [shell] use_tmux
    )

    p = sub.add_parser(
        "run",
        parents=[common],
        help="run one command in a fresh container",
        description="Run a command as the code user in /workspace of an ephemeral container "
        "(deleted afterwards); its exit code is coi's exit code. Without a command, runs "
        "./coi-run. --prompt* runs the agent headless on a prompt instead (claude, with "
        'permission_mode = "bypass").',
        epilog="Examples:\n  coi run -- npm test\n  coi run -- sh -c 'make && make check'\n"
        '  coi run --prompt "fix the failing test"',
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--force", action="store_true", help=FORCE_HOME_HELP)
    # one of the three (cmd_run says so in COI's words, exit 2)
    p.add_argument("--prompt", metavar="TEXT", help="run the agent headless on TEXT")
    p.add_argument("--prompt-file", metavar="PATH", help="... on the prompt in PATH")
    p.add_argument("--prompt-name", metavar="NAME", help="... on [prompts] NAME")
    p.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- <command>")

    p = sub.add_parser(
        "attach",
        help="attach to a running session",
        description="Attach to the tmux session of a running container.",
    )
    p.add_argument("name", nargs="?", help="container name (default: the only running session)")
    p.add_argument("--slot", type=slot_type, default=0, help="slot of this workspace")
    p.add_argument("-w", "--workspace", default=".", help="workspace (with --slot)")
    p.add_argument("--bash", action="store_true", help="open bash instead of attaching to tmux")

    p = sub.add_parser("list", help="list sessions", description="List coi containers.")
    p.add_argument("-a", "--all", action="store_true", help="also list saved sessions")
    state = p.add_mutually_exclusive_group()
    state.add_argument("--running", action="store_true", help="only running containers")
    state.add_argument("--stopped", action="store_true", help="only stopped containers")
    state.add_argument("--status", help="only containers in this state (running, frozen, ...)")
    add_format(p)

    p = sub.add_parser(
        "info",
        help="describe a saved session",
        description="Shows a session (for --resume), from its start: its container, when it was "
        "saved and whether the agent's data is there. Without an id: the workspace's latest, "
        "else the latest of all.",
    )
    p.add_argument(
        "session_id",
        nargs="?",
        metavar="session-id",
        help="session id (default: latest for the workspace)",
    )
    p.add_argument("-w", "--workspace", default=".", help="workspace")
    add_format(p)

    p = sub.add_parser(
        "persist",
        help="make running sessions persistent",
        description="Converts ephemeral sessions to persistent: when they end, the container "
        "is kept (stopped) with everything installed in it, and the next session of the "
        "workspace reuses it.",
        epilog="Examples:\n  coi persist coi-abc12345-1      # one container\n"
        "  coi persist --all --force        # every coi container, without asking",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("names", nargs="*", metavar="NAME", help="container names (see 'coi list')")
    p.add_argument("--all", action="store_true", help="every coi container")
    p.add_argument("--force", action="store_true", help="do not ask")

    for name, helptext in (
        ("shutdown", "Gracefully stop and delete containers (the session is saved)"),
        ("kill", "force stop and delete (idempotent)"),
    ):
        p = sub.add_parser(
            name,
            help=helptext,
            description=(
                "Gracefully stop and delete containers: stops NAME (by force after the "
                "timeout), saves the agent's session data for --resume and deletes the "
                "container, persistent or not."
                if name == "shutdown"
                else "Stops NAME at once and deletes it; the session data is saved first. A "
                "name that is already gone is not an error. --all asks first unless --force."
            ),
            aliases=["close"] if name == "shutdown" else [],
            epilog="Aliases:\n  shutdown, close" if name == "shutdown" else None,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.add_argument("names", nargs="*", metavar="NAME", help="container names (see 'coi list')")
        p.add_argument("--all", action="store_true", help="every coi container")
        p.add_argument("--force", action="store_true", help="do not ask for confirmation")
        if name == "shutdown":
            p.add_argument(
                "--timeout",
                type=positive_int,
                default=None,
                help="seconds to wait for a graceful stop before forcing "
                "(default [container] shutdown_timeout = 60)",
            )

    p = sub.add_parser(
        "clean",
        help="remove stopped containers and saved sessions",
        description="Removes stopped ephemeral coi containers (--all: persistent ones too), "
        "saved sessions with --sessions, or with --orphans the network rules of containers "
        "that no longer exist. Asks first unless --force.",
    )
    p.add_argument("--all", action="store_true", help="also remove stopped persistent containers")
    p.add_argument("--sessions", action="store_true", help="delete saved sessions too")
    p.add_argument("--force", action="store_true", help="do not ask for confirmation")
    p.add_argument("--dry-run", action="store_true", help="only say what would be removed")
    p.add_argument(
        "--orphans",
        action="store_true",
        help="only remove network rules whose container is gone",
    )
    p.add_argument(
        "--pools",
        action="store_true",
        help="only remove coi containers in storage pools no loaded config or profile names",
    )

    container = sub.add_parser("container", help="low-level container operations")
    csub = container.add_subparsers(
        dest="action", metavar="ACTION", parser_class=CoiParser, required=True
    )
    p = csub.add_parser("launch", help="create and start a container from an image")
    p.add_argument("image", help="image alias or fingerprint")
    p.add_argument("name", help="container name")
    p.add_argument("--ephemeral", action="store_true", help="Incus deletes it when it stops")
    for action in ("start", "stop", "delete"):
        p = csub.add_parser(action, help=f"{action} a container")
        p.add_argument("name", help="container name")
        if action != "start":
            p.add_argument(
                "--force",
                action="store_true",
                help="kill instead of a clean stop"
                if action == "stop"
                else "delete even if running",
            )
    p = csub.add_parser("exec", help="run a command in a container")
    p.add_argument("name", help="container name")
    p.add_argument("--user", type=int, default=0, help="uid to run as (default 0, root)")
    p.add_argument("--group", type=int, default=None, help="gid (default: the uid's)")
    p.add_argument(
        "--env", action="append", default=[], metavar="K=V", help="environment (repeatable)"
    )
    p.add_argument("--cwd", default="/workspace", help="working directory (default /workspace)")
    p.add_argument("--capture", action="store_true", help="print JSON with stdout/stderr/exit_code")
    p.add_argument(
        "--format",
        type=format_type("json", "raw"),
        default=None,
        help="with --capture: json (default) or raw (stdout, and the command's exit code)",
    )
    p.add_argument(
        "-t", "--tty", action="store_true", help="allocate a terminal (not with --capture)"
    )
    p.add_argument("cmd", nargs="*", metavar="-- COMMAND")
    for action in ("exists", "running"):
        p = csub.add_parser(
            action,
            help="exit 0 if the container " + ("exists" if action == "exists" else "is running"),
        )
        p.add_argument("name")
    p = csub.add_parser("mount", help="add a disk device")
    p.add_argument("name")
    p.add_argument("device")
    p.add_argument("source")
    p.add_argument("path")
    p.add_argument("--shift", action=argparse.BooleanOptionalAction, default=True)
    p = csub.add_parser("list", help="raw container data")
    add_format(p)
    p = csub.add_parser("info", help="raw data of one container")
    p.add_argument("name")
    add_format(p)

    file_cmd = sub.add_parser("file", help="copy files in and out of containers")
    fsub = file_cmd.add_subparsers(
        dest="action", metavar="ACTION", parser_class=CoiParser, required=True
    )
    p = fsub.add_parser("push", help="coi file push LOCAL CONTAINER:PATH")
    p.add_argument("source")
    p.add_argument("dest")
    p.add_argument("-r", "--recursive", action="store_true")
    p = fsub.add_parser("pull", help="coi file pull CONTAINER:PATH LOCAL")
    p.add_argument("source")
    p.add_argument("dest")
    p.add_argument("-r", "--recursive", action="store_true")

    tmux = sub.add_parser("tmux", help="talk to the agent's tmux session")
    tsub = tmux.add_subparsers(
        dest="action", metavar="ACTION", parser_class=CoiParser, required=True
    )
    p = tsub.add_parser("send", help="type a command + Enter into the session")
    p.add_argument("name", metavar="<session-name>", help="the container")
    p.add_argument("text", metavar="<command>", help="what to type")
    p = tsub.add_parser("capture", help="print the visible pane")
    p.add_argument("name", metavar="<session-name>", help="the container")
    p = tsub.add_parser("list", help="sessions with a tmux session")
    add_format(p)

    p = sub.add_parser("setup", help="prepare Incus for coi (pool, root disk, bridge)")
    nat = p.add_mutually_exclusive_group()
    nat.add_argument(
        "--nat",
        dest="nat",
        action="store_true",
        default=None,
        help="let containers reach the internet through the host (off by default)",
    )
    nat.add_argument("--no-nat", dest="nat", action="store_false", help="turn NAT off")
    p.add_argument("--pool", default="coi", help="storage pool name (default coi)")
    p.add_argument("--bridge", default=None, help="bridge name (default coibr0)")
    p.add_argument("--subnet", default=None, help="bridge address, e.g. 10.199.0.1/24")
    p.add_argument(
        "--user",
        action="append",
        default=[],
        metavar="NAME",
        help="let this user's files map to the agent's uid (adds root:UID:1 to "
        "/etc/subuid and /etc/subgid; default: the user who ran sudo)",
    )

    build_cmds.add_parsers(sub, common)  # here, so `coi --help` keeps its order

    # legacy name of `coi image list`, kept working but out of the help (COI removed it)
    p = sub.add_parser("images")
    p.add_argument("-a", "--all", action="store_true", help="all local images, not only coi's")
    p.add_argument("--prefix", default="", help="only aliases starting with PREFIX")
    add_format(p, ("text", "json", "table"))
    p.set_defaults(action="list")
    image = sub.add_parser("image", help="manage images")
    isub = image.add_subparsers(
        dest="action", metavar="ACTION", parser_class=CoiParser, required=True
    )
    p = isub.add_parser("list", aliases=["ls"], help="list images")
    p.add_argument("-a", "--all", action="store_true", help="all local images, not only coi's")
    p.add_argument("--prefix", default="", help="only aliases starting with PREFIX")
    add_format(p, ("text", "json", "table"))
    p.set_defaults(action="list")
    p = isub.add_parser("info", help="details of an image (alias or fingerprint)")
    p.add_argument("alias")
    add_format(p)
    p = isub.add_parser(
        "cleanup",
        help="delete old images whose alias starts with PREFIX, keeping the newest N",
    )
    p.add_argument("prefix")
    p.add_argument("--keep", type=keep_count, required=True, help="how many to keep (>= 1)")
    p.add_argument("--dry-run", action="store_true", help="only say what would be deleted")
    p = isub.add_parser("exists", help="exit 0 if the image alias exists")
    p.add_argument("alias")
    p = isub.add_parser("delete", help="delete an image")
    p.add_argument("alias")
    p.add_argument("--force", action="store_true")
    p = isub.add_parser("publish", help="publish a stopped container as an image")
    p.add_argument("container")
    p.add_argument("alias")
    p.add_argument("--description", default="", help="image description")
    p.add_argument(
        "--compression",
        choices=["none", "gzip", "xz", "zstd", "bzip2", "lz4"],
        default=None,
        help="image compression (default: Incus's)",
    )

    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).add_parsers(sub, common)

    p = sub.add_parser(
        "version", help="print the version", description=f"Print the version ({IMPLEMENTATION})."
    )
    add_format(p)
    p = sub.add_parser("completion", help="print a shell completion script")
    p.add_argument("shell", choices=["bash", "zsh", "fish", "powershell"])
    p = sub.add_parser("help", help="show help for a command")
    p.add_argument("topic", nargs="*")
    accept_workspace_everywhere(parser)
    return parser


def accept_workspace_everywhere(parser: argparse.ArgumentParser) -> None:
    """COI's `-w/--workspace` is a global flag (any command takes it, scripts pass it to
    `clean` or `list`): each command without one of its own accepts it, unlisted."""
    groups = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for group in groups:
        for child in {id(c): c for c in group.choices.values()}.values():
            accept_workspace_everywhere(child)
    taken = parser._option_string_actions
    if groups or "--workspace" in taken or any(a.dest == "workspace" for a in parser._actions):
        return
    flags = ["--workspace"] if "-w" in taken else ["-w", "--workspace"]
    parser.add_argument(*flags, dest="workspace", default=".", help=argparse.SUPPRESS)


def wants_json(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "json", False)) or getattr(args, "format", "text") == "json"
