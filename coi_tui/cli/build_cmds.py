"""`coi build`: the coi-default (or coi-lean) image, or with --profile/--all a profile's
image. One parser and one handler; the work is in images/build.py and config/build.py."""

from __future__ import annotations

import argparse
import os
import sys
from functools import partial
from pathlib import Path

from coi_tui.cli.output import err


def add_parsers(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("build", help="build the coi-default image")
    p.add_argument(
        "-f", "--force", action="store_true", help="rebuild even if the recipe is unchanged"
    )
    how = p.add_mutually_exclusive_group()
    how.add_argument(
        "--bootstrap",
        action="store_true",
        help="offline: bootstrap Debian with mmdebstrap from the mirror",
    )
    how.add_argument(
        "--remote",
        action="store_true",
        help="start from a remote image server (needs coi setup --nat)",
    )
    p.add_argument(
        "--alias", default=None, help="image alias (default coi-default, or coi-lean with --lean)"
    )
    p.add_argument(
        "--lean",
        action="store_true",
        help="the lean variant: no Docker, Node.js, gh, build tools or clients (quick experiments)",
    )
    p.add_argument(
        "--agents",
        default=None,
        metavar="LIST",
        help="real agent CLIs to install from npm/PyPI: claude,opencode,aider, 'all' or "
        "'none' (default: $COI_BUILD_AGENTS, else [container.build] agents (all) for the "
        "full image and none for --lean; an agent whose registry does not answer stays a stand-in)",
    )
    p.add_argument(
        "--profile",
        default="",
        help="build that profile's image (its build.sh or [container.build])",
    )
    p.add_argument(
        "--all",
        dest="all_profiles",
        action="store_true",
        help="build every profile that has build.sh or [container.build] script/commands",
    )
    p.set_defaults(handler=cmd_build)


def cmd_build(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.profile or args.all_profiles:
        return build_profiles(args)
    return build_image(args)


def say(line: str) -> None:
    print(line, flush=True)


def build_image(args: argparse.Namespace) -> int:
    from coi_tui.cli.target import incus_for
    from coi_tui.config import load_settings
    from coi_tui.images.agents import parse_agents
    from coi_tui.images.build import VARIANT_ALIASES, ImageBuilder

    settings = load_settings(say=err)
    incus = incus_for(settings)
    incus.ping()
    method = "bootstrap" if args.bootstrap else "remote" if args.remote else "auto"
    variant = "lean" if args.lean else "full"
    asked = args.agents if args.agents is not None else os.environ.get("COI_BUILD_AGENTS")
    if asked is not None:
        agents: list[str] | None = parse_agents(asked)
    else:  # the full image: [container.build] agents; the lean one: none
        agents = sorted(settings.build_agents) if variant == "full" else None
    alias = args.alias or (VARIANT_ALIASES["lean"] if args.lean else settings.image)
    builder = ImageBuilder(incus, progress=say)
    result = builder.build(
        alias,
        force=args.force,
        method=method,
        bridge=settings.bridge,
        pool=settings.storage_pool,
        agents=agents,
        variant=variant,
    )
    if result.rebuilt:
        say(f"Image {result.alias} ready: {result.seconds:.1f}s, {result.size_bytes / 1e6:.0f} MB")
    return 0


def build_profiles(args: argparse.Namespace) -> int:
    """`coi build --profile NAME`, or `--all`: every profile with something to build."""
    from coi_tui.cli.target import incus_for
    from coi_tui.config.build import build_profile_image, builder_for
    from coi_tui.config.profiles import ProfileSet
    from coi_tui.config.settings import load_settings
    from coi_tui.core.errors import CoiError, UsageError
    from coi_tui.network.isolation import BuildNetwork

    every = args.all_profiles
    if every and args.profile:
        raise UsageError("--all and --profile exclude each other")
    if every and args.alias:
        raise UsageError("--alias names one image; it cannot be used with --all")
    names = [args.profile]
    if every:
        profiles = ProfileSet.discover(Path.cwd())
        names = []
        for name in profiles.names():
            values = profiles.resolve(name).layer.values
            if values.get("container.build.script") or values.get("container.build.commands"):
                names.append(name)
        if not names:
            say(f"No profile has anything to build (looked in {profiles.looked_in()})")
            return 0
    settings = load_settings(profile=names[0], say=err)
    incus = incus_for(settings)
    incus.ping()
    failed: list[str] = []
    for name in names:
        try:
            settings = load_settings(profile=name, say=err)
            # Whose recipe this is: a repository's may not publish over images it did not build.
            cwd = Path.cwd().absolute()
            chain = ProfileSet.discover(cwd).resolve(name).profiles
            builder = builder_for(settings, name, [p.scope for p in chain], cwd)
            build_profile_image(
                incus,
                settings,
                name,
                alias=args.alias,
                force=args.force,
                builder=builder,
                network_for=partial(BuildNetwork, incus, settings, say=say),
                say=say,
            )
        except CoiError as exc:
            if not every:
                raise
            print(f"Error: profile {name}: {exc}", file=sys.stderr)
            failed.append(name)
    if failed:
        raise CoiError(f"{len(failed)} of {len(names)} profile builds failed: {', '.join(failed)}")
    return 0
