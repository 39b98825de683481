"""`coi` entry point: parse, dispatch, and turn every failure into one line and an exit code."""

from __future__ import annotations

import argparse
import os
import sys

from coi_tui import timing as _timing  # noqa: F401  (anchors COI_TIMING_DEBUG offsets at start)
from coi_tui.errors import CoiError, Terminated

EXIT_INTERRUPTED = 130


GLOBAL_OPTIONS = {"--remote": "COI_REMOTE", "--target": "COI_TARGET"}


def take_global_options(argv: list[str]) -> list[str]:
    """`--remote NAME` and `--target MEMBER` work before or after any command: they become
    $COI_REMOTE / $COI_TARGET, which the Incus adapter (and child processes) read."""
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
                sys.exit(f"coi: error: {name} needs a value (see 'coi --help')")
            os.environ[GLOBAL_OPTIONS[name]] = value
            continue
        out.append(arg)
    return out


def normalise_argv(argv: list[str]) -> list[str]:
    """COI conventions argparse lacks: bare `coi` means `coi shell`; `--resume` takes its value
    only with `=`, so `coi shell --resume abc` is an error that says so."""
    out: list[str] = []
    for arg in take_global_options(argv):
        if arg in ("--resume", "--continue"):
            out.append(f"{arg}=auto")
        else:
            out.append(arg)
    if not out or (out[0].startswith("-") and out[0] not in ("-h", "--help", "--version")):
        out.insert(0, "shell")
    return out


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
    args = parse(parser, normalise_argv(args_in))
    if args.command is None:
        parser.print_help()
        return 0
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
