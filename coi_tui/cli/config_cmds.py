"""`coi config` and `coi profile` commands and `coi build --profile`. Top-level imports stay
light: the parser is built for every `coi` invocation."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from coi_tui.core.toml import toml_key, toml_value

if TYPE_CHECKING:
    from coi_tui.config.settings import Settings


def config_note(line: str) -> None:
    """Where config notes (an old spelling in a file) go: stderr, as every coi message."""
    print(line, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------- parsers
def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    from coi_tui.cli.parser import CoiParser, add_format

    config = sub.add_parser("config", help="show and check the configuration")
    csub = config.add_subparsers(
        dest="action", metavar="ACTION", parser_class=CoiParser, required=True
    )
    p = csub.add_parser(
        "show",
        help="print the effective configuration",
        description="Print the effective configuration: defaults, ~/.coi/config.toml, "
        "./.coi/config.toml, $COI_CONFIG, the profile, COI_* variables.",
    )
    p.add_argument("--sources", action="store_true", help="say where each value came from")
    p.add_argument("--profile", default="", help="apply this profile (default [defaults] profile)")
    add_format(p)
    p.set_defaults(handler=cmd_config)
    p = csub.add_parser("validate", help="check config files (default: the ones coi reads)")
    p.add_argument("files", nargs="*", metavar="FILE")
    p.add_argument("--profile", action="store_true", help="check FILEs as profile configs")
    p.set_defaults(handler=cmd_config)
    p = csub.add_parser("paths", help="list the config files and profile folders coi reads")
    p.set_defaults(handler=cmd_config)

    profile = sub.add_parser("profile", help="manage profiles")
    psub = profile.add_subparsers(
        dest="action", metavar="ACTION", parser_class=CoiParser, required=True
    )
    p = psub.add_parser("list", help="list profiles")
    add_format(p)
    p.set_defaults(handler=cmd_profile)
    p = psub.add_parser("show", aliases=["info"], help="print a profile, inheritance resolved")
    p.add_argument("name")
    p.add_argument("--sources", action="store_true", help="say which profile set each value")
    add_format(p)
    p.set_defaults(handler=cmd_profile, action="show")
    p = psub.add_parser("create", help="create a profile from a starter config")
    p.add_argument("name")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--user", dest="scope", action="store_const", const="user")
    where.add_argument("--project", dest="scope", action="store_const", const="project")
    p.add_argument("--inherits", default="", help="parent profile")
    p.add_argument("--image", default="", help="[container] image")
    p.set_defaults(handler=cmd_profile, scope="auto")
    p = psub.add_parser(
        "edit",
        help="open a profile's config.toml in an editor, then check it",
        description="Opens NAME's config.toml in $VISUAL, else $EDITOR, else vi, and validates "
        "it (inheritance included) when the editor exits. Built-in profiles cannot be edited: "
        "'coi profile create default' makes an editable copy.",
    )
    p.add_argument("name", help="profile name")
    p.set_defaults(handler=cmd_profile)
    p = psub.add_parser("delete", help="delete a profile folder")
    p.add_argument("name")
    p.add_argument("--force", action="store_true", help="do not ask for confirmation")
    p.set_defaults(handler=cmd_profile)


# ---------------------------------------------------------------------- rendering
FIXED = "fixed here"


def fixed_keys() -> dict[str, str]:
    """Keys of the reference coi that this coi supports at their default only -> why."""
    from coi_tui.config.schema import KEYS

    return {key.path: key.refusal for key in KEYS if key.refusal}


def effective_tree(settings: Settings) -> dict[str, Any]:
    from coi_tui.config.schema import KEYS

    tree: dict[str, Any] = {}
    if settings.forward_env:
        tree["forward_env"] = list(settings.forward_env)
    for key in KEYS:
        node = tree
        for part in key.section.split(".") if key.section else []:
            node = node.setdefault(part, {})
        node[key.name] = settings.value(key.path)
    if settings.environment:
        tree["environment"] = dict(settings.environment)
    if settings.mounts:
        tree["mounts"] = [m.as_dict() for m in settings.mounts]
    return tree


def render_lines(
    values: list[tuple[str, Any, str]],
    sources: bool,
    header: list[str],
    notes: dict[str, str] | None = None,
) -> list[str]:
    """values: (dotted path, value, source). Root keys first, then one table per section (in
    order of first appearance: TOML allows a table header once), then [[mounts]]. `notes`:
    path -> a remark appended as a comment (e.g. "fixed here")."""
    notes = notes or {}
    out = list(header)
    width = max((len(f"{p.rpartition('.')[2]} = {toml_value(v)}") for p, v, _ in values), default=0)
    first: dict[str, int] = {}
    for path, _value, _source in values:
        first.setdefault(path.rpartition(".")[0], len(first))

    def rank(item: tuple[str, Any, str]) -> tuple[int, int]:
        path = item[0]
        if path.startswith("mounts["):
            return (2, 0)
        table = path.rpartition(".")[0]
        return (0, 0) if not table else (1, first[table])

    values = sorted(values, key=rank)

    def line(name: str, value: Any, source: str, path: str = "") -> str:
        text = f"{name} = {toml_value(value)}"
        comment = "; ".join(part for part in (source if sources else "", notes.get(path)) if part)
        return f"{text.ljust(min(width, 60))}  # {comment}" if comment else text

    section = None
    for path, value, source in values:
        if path.startswith("mounts["):
            out += ["", "[[mounts]]"]
            for name, field_value in value.items():
                out.append(line(name, field_value, source))
            section = None
            continue
        table, _, name = path.rpartition(".")
        if table != section:
            if table:
                out += ["", f"[{table}]"]
            section = table
        out.append(line(toml_key(name), value, source, path))
    return out


def config_values(settings: Settings) -> list[tuple[str, Any, str]]:
    from coi_tui.config.schema import KEYS

    values: list[tuple[str, Any, str]] = []
    if settings.forward_env:
        origins = sorted(
            {settings.sources.get(f"forward_env.{n}", "?") for n in settings.forward_env}
        )
        values.append(("forward_env", settings.forward_env, "; ".join(origins)))
    for key in KEYS:
        values.append((key.path, settings.value(key.path), settings.source(key.path)))
    for name, text in settings.environment.items():
        values.append(
            (f"environment.{name}", text, settings.sources.get(f"environment.{name}", "?"))
        )
    for index, mount in enumerate(settings.mounts):
        where = settings.sources.get(f"mounts.{mount.container}", "?")
        values.append((f"mounts[{index}]", mount.as_dict(), where))
    return values


def emit_json(data: Any) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))


def untrusted_lines() -> list[str]:
    """What the trust filter did to the project's config and profiles (config/trust.py)."""
    from coi_tui.config import trust

    lines: list[str] = []
    for key, report in trust.REPORTS.items():
        where = key.split("#", 1)[1] if "#" in key else "project config"
        lines += [f"# {where}: ignored {item}" for item in report.ignored]
        state = "approved" if report.approved else "waiting for 'coi trust'"
        lines += [f"# {where}: {state}: {item}" for item in report.gated]
    return ["", *lines] if lines else []


# ---------------------------------------------------------------------- coi config
def cmd_config(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from coi_tui.cli.parser import wants_json
    from coi_tui.config.settings import FileParser, labelled_config_files, load_settings

    if args.action == "show":
        settings = load_settings(profile=args.profile or None, apply_profile=True, say=config_note)
        if wants_json(args):
            sources = {p: s for p, _v, s in config_values(settings)}
            emit_json(
                {
                    "profile": settings.profile,
                    "profile_chain": settings.profile_chain,
                    "config": effective_tree(settings),
                    "sources": sources,
                    "container_prefix": settings.container_prefix,
                    "fixed": fixed_keys(),
                }
            )
            return 0
        header = ["# coi effective configuration"]
        if settings.profile:
            header.append(f"# profile: {' <- '.join(settings.profile_chain)}")
        if settings.profile_context:
            header.append(f"# profile context: {settings.profile_context}")
        header.append(
            f"# '{FIXED}': this coi refuses any other value ('coi schema profile' says why)"
        )
        notes = dict.fromkeys(fixed_keys(), FIXED)
        lines = render_lines(config_values(settings), args.sources, header, notes)
        if args.sources:
            from coi_tui.config.profiles import ProfileSet

            # Discovering reports the project profiles it ignores.
            ProfileSet.discover(Path.cwd().absolute(), say=config_note)
            lines += untrusted_lines()
        print("\n".join(lines))
        return 0
    if args.action == "paths":
        from coi_tui.config.profiles import ProfileSet

        for label, path in labelled_config_files(Path.cwd()):
            print(f"{label:15} {path}{'' if path.is_file() else '  (absent)'}")
        for scope, directory in ProfileSet.discover(Path.cwd()).locations:
            print(
                f"{scope + ' profiles':15} {directory}{'' if directory.is_dir() else '  (absent)'}"
            )
        return 0
    # validate
    if args.files:
        for name in args.files:
            path = Path(name)
            FileParser(path, "file", profile=args.profile, say=config_note).parse()
            print(f"{path}: ok")
        return 0
    settings = load_settings(apply_profile=True, say=config_note)
    for _label, path in labelled_config_files(Path.cwd()):
        if path.is_file():
            print(f"{path}: ok")
    if settings.profile:
        print(f"profile {' <- '.join(settings.profile_chain)}: ok")
    return 0


# ---------------------------------------------------------------------- coi profile
def cmd_profile(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from coi_tui.cli.parser import wants_json
    from coi_tui.config.profiles import PRESETS, ProfileSet, builtin
    from coi_tui.core.errors import CoiError

    cwd = Path.cwd()
    env = dict(os.environ)
    profiles = ProfileSet.discover(cwd, env, say=config_note)
    if args.action == "list":
        rows = []
        for name, preset in PRESETS.items():  # a disk profile of the same name replaces it
            if builtin(name, profiles.found):
                persistent = preset.get("container.persistent")
                rows.append(
                    {
                        "name": name,
                        "image": "",
                        "persistent": "" if persistent is None else "yes" if persistent else "no",
                        "source": "(built-in)",
                    }
                )
        for name in profiles.names():
            for profile in profiles.found[name]:
                row = {"name": name, "image": "", "persistent": "", "source": str(profile.config)}
                try:
                    own = profile.layer.values
                    row["image"] = own.get("container.image", "")
                    if "container.persistent" in own:
                        row["persistent"] = "yes" if own["container.persistent"] else "no"
                    row["inherits"] = own.get("inherits", "")
                except CoiError as exc:
                    row["error"] = str(exc)
                if len(profiles.found[name]) > 1:
                    row["error"] = "defined in multiple locations"
                rows.append(row)
        for folder in profiles.ignored:  # a repository's "hardened": listed, never used
            row = {"name": folder.name, "image": "", "persistent": ""}
            row["source"] = str(folder / "config.toml")
            row["error"] = "ignored: a project cannot replace the built-in profile"
            rows.append(row)
        if wants_json(args):
            emit_json(rows)
            return 0
        print(f"{'NAME':20} {'IMAGE':20} {'PERSISTENT':10} SOURCE")
        for row in rows:
            note = f"  ({row['error']})" if row.get("error") else ""
            print(
                f"{row['name']:20} {row['image'] or '-':20} {row['persistent'] or '-':10} "
                f"{row['source']}{note}"
            )
        return 0
    if args.action == "show":
        resolved = profiles.resolve(args.name)
        layer = resolved.layer
        values: list[tuple[str, Any, str]] = []
        root = [p for p in ("inherits", "context", "forward_env") if p in layer.values]
        for path in root:
            values.append((path, layer.values[path], layer.where(path)))
        for path, value in layer.values.items():
            if path in root or path in ("environment", "mounts"):
                continue
            values.append((path, value, layer.where(path)))
        for name, text in layer.values.get("environment", {}).items():
            values.append((f"environment.{name}", text, layer.where(f"environment.{name}")))
        for index, mount in enumerate(layer.values.get("mounts", [])):
            values.append((f"mounts[{index}]", mount.as_dict(), layer.where("mounts")))
        source = str(resolved.profiles[0].config) if resolved.profiles else "(built-in)"
        if wants_json(args):
            emit_json(
                {
                    "name": resolved.name,
                    "source": source,
                    "chain": resolved.chain,
                    "config": {p: v for p, v, _ in values},
                    "sources": {p: s for p, _, s in values},
                }
            )
            return 0
        header = [
            f"# Profile: {resolved.name}",
            f"# Source: {source}",
            f"# Chain: {' <- '.join(resolved.chain)}",
        ]
        print("\n".join(render_lines(sort_values(values), args.sources, header)))
        return 0
    if args.action == "create":
        directory = profiles.create(
            args.name,
            scope=args.scope,
            cwd=cwd,
            env=env,
            inherits=args.inherits,
            image=args.image,
        )
        if args.inherits:
            profiles = ProfileSet.discover(cwd, env, say=config_note)
            profiles.resolve(args.name)  # the parent must exist and not make a cycle
        print(f"Created profile {args.name}: {directory / 'config.toml'}")
        return 0
    if args.action == "edit":
        return edit_profile(profiles, args.name, cwd, env)
    # delete
    from coi_tui.cli.commands import confirm

    profile = profiles.get(args.name) if not builtin(args.name, profiles.found) else None
    target = profile.directory if profile else args.name
    if not confirm(f"Delete profile {args.name} ({target})?", args.force):
        print("Cancelled", file=sys.stderr)
        return 1
    removed = profiles.delete(args.name)
    print(f"Deleted profile {args.name} ({removed})")
    return 0


def edit_profile(profiles: Any, name: str, cwd: Path, env: dict[str, str]) -> int:
    """`coi profile edit NAME`: $VISUAL, $EDITOR or vi on its config.toml, then validate."""
    import shlex
    import subprocess

    from coi_tui.config.profiles import ProfileSet, builtin, check_name
    from coi_tui.core.errors import CoiError

    check_name(name)
    if builtin(name, profiles.found):
        raise CoiError(
            f'"{name}" is a built-in profile and cannot be edited; '
            f"'coi profile create {name}' makes an editable copy"
        )
    path = profiles.get(name).config
    editor = env.get("VISUAL") or env.get("EDITOR") or "vi"
    try:
        code = subprocess.call([*shlex.split(editor), str(path)])
    except OSError as exc:
        raise CoiError(f"cannot run the editor '{editor}': {exc.strerror or exc}") from None
    if code != 0:
        raise CoiError(f"the editor '{editor}' exited with {code}; {path} was not checked")
    # A CoiError names file:line and the key.
    ProfileSet.discover(cwd, env, say=config_note).resolve(name)
    print(f"Profile {name} is valid ({path})")
    return 0


def sort_values(values: list[tuple[str, Any, str]]) -> list[tuple[str, Any, str]]:
    """Root keys first, then tables in schema order, so the output is valid TOML."""
    from coi_tui.config.schema import KEYS

    order = {key.path: i for i, key in enumerate(KEYS)}

    def rank(item: tuple[str, Any, str]) -> tuple[int, int]:
        path = item[0]
        if "." not in path and not path.startswith("mounts["):
            return (0, 0)
        if path.startswith("environment."):
            return (2, 0)
        if path.startswith("mounts["):
            return (3, 0)
        return (1, order.get(path, 10_000))

    return sorted(values, key=rank)
