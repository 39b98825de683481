"""`coi` entry point: parse, dispatch, and turn every failure into one line and an exit code."""

from __future__ import annotations

import argparse
import os
import sys

from coi_tui.cli import target
from coi_tui.core import timing as _timing  # noqa: F401  (anchors COI_TIMING_DEBUG offsets at start)
from coi_tui.core.errors import CoiError, Terminated

EXIT_INTERRUPTED = 130
LEADING: list[dict[str, str]] = [{}]  # session options given before the command name


GLOBAL_OPTIONS = ("--remote", "--target")


def take_global_options(argv: list[str], options: dict[str, str]) -> list[str]:
    """`--remote NAME` and `--target MEMBER` work before or after any command: they go into
    `options` (cli/target.py chooses the daemon from them) and out of argv."""
    out: list[str] = []
    rest = iter(argv)
    for arg in rest:
        if arg == "--":
            out.append(arg)
            out.extend(rest)
            break
        name, eq, value = arg.partition("=")
        if name in GLOBAL_OPTIONS:
            if not eq:
                value = next(rest, "")
            if not value or value.startswith("-"):
                sys.exit(f"Error: {name} needs a value (see 'coi --help')")
            options[name] = value
            continue
        out.append(arg)
    return out


def normalise_argv(argv: list[str], options: dict[str, str] | None = None) -> list[str]:
    """COI conventions argparse lacks: bare `coi` means `coi shell`; `--resume` takes its value
    only with `=`, so `coi shell --resume abc` is an error that says so. The global options
    go into `options`."""
    out: list[str] = []
    for arg in take_global_options(argv, {} if options is None else options):
        if arg in ("--resume", "--continue"):
            out.append(f"{arg}=auto")
        else:
            out.append(arg)
    out, LEADING[0] = take_leading_options(out)
    if not out or (out[0].startswith("-") and out[0] not in ("-h", "--help", "--version")):
        out.insert(0, "shell")
    if out[0] == "version":  # COI's `coi version` ignores extra arguments and other flags
        out = ["version", *version_flags(out[1:])]
    return out


def version_flags(args: list[str]) -> list[str]:
    """What `coi version` heeds of its arguments: help, --json, --format VALUE."""
    kept: list[str] = []
    for index, arg in enumerate(args):
        if arg in ("-h", "--help", "--json") or arg.startswith("--format="):
            kept.append(arg)
        elif arg == "--format" and index + 1 < len(args):
            kept += [arg, args[index + 1]]
    return kept


# COI's persistent flags: accepted before the command too (`coi -w DIR shell`), and by every
# command (ignored where they mean nothing, as Cobra does).
LEADING_OPTIONS = {
    "-w": "workspace",
    "--workspace": "workspace",
    "--slot": "slot",
    "--profile": "profile",
    "--resume": "resume",
    "--continue": "continue_",
}


def take_leading_options(argv: list[str]) -> tuple[list[str], dict[str, str]]:
    """Split session options written before the command name off argv."""
    leading: dict[str, str] = {}
    index = 0
    while index < len(argv):
        name, eq, value = argv[index].partition("=")
        if name not in LEADING_OPTIONS:
            break
        if not eq and name not in ("--resume", "--continue"):
            if index + 1 >= len(argv):
                break
            value = argv[index + 1]
            index += 1
        leading[LEADING_OPTIONS[name]] = value
        index += 1
    if not leading or index >= len(argv) or argv[index].startswith("-"):
        return argv, {}
    return argv[index:], leading


def apply_leading_options(args: argparse.Namespace, leading: dict[str, str]) -> None:
    from coi_tui.cli.parser import slot_type

    for attr, value in leading.items():
        if not hasattr(args, attr) or (
            getattr(args, attr) not in (None, "", ".", 0) and attr != "workspace"
        ):
            continue  # the command does not take it, or it was also given after the name
        if attr == "workspace" and getattr(args, attr) not in (None, "."):
            continue
        try:
            setattr(args, attr, slot_type(value) if attr == "slot" else value)
        except argparse.ArgumentTypeError as exc:
            print(f"Error: argument --slot: {exc} (see 'coi --help')", file=sys.stderr)
            sys.exit(2)


def parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """argparse cannot put options between a command's name and `-- CMD...` when the command
    is a trailing list; split at the first `--` ourselves for commands that take one."""
    if "--" in argv:
        cut = argv.index("--")
        head = parser.parse_args(argv[:cut])
        if getattr(head, "cmd", None) == []:
            head.cmd = argv[cut + 1 :]
            return head
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args_in = list(sys.argv[1:] if argv is None else argv)
    from coi_tui.cli.parser import build_parser

    parser = build_parser()
    parser.epilog = (parser.epilog or "") + (
        " Global options, before or after the command: --remote NAME (a server added with "
        "'coi remote add'), --target MEMBER (cluster member for new sessions)."
    )
    options: dict[str, str] = {}
    args = parse(parser, normalise_argv(args_in, options))
    target.choose(options)
    apply_leading_options(args, LEADING[0])
    if args.command is None or (args.command == "help" and not args.topic):
        parser.print_help()
        return 0
    if args.command == "help":  # `coi help CMD...` is `coi CMD... --help`
        return main([*args.topic, "--help"])
    try:
        handler = getattr(args, "handler", None)
        if handler is None:
            from coi_tui.cli import commands

            handler = commands.HANDLERS[args.command]
        return int(handler(args, parser) or 0)
    except CoiError as exc:
        if os.environ.get("COI_DEBUG"):
            import traceback

            traceback.print_exc()
        print(f"Error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("Interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Terminated as exc:
        print(f"Stopped by {exc}", file=sys.stderr)
        return 128 + exc.signum
    except BrokenPipeError:
        return 1
    except Exception as exc:  # a bug: still one line, the traceback only on request
        if os.environ.get("COI_DEBUG"):
            raise
        print(
            f"Error: unexpected {type(exc).__name__}: {exc} (run with COI_DEBUG=1 for "
            "details, and please report it)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
