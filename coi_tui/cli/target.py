"""Which Incus daemon a `coi` command talks to: the local socket, or the remote named by
`--remote NAME` (and the cluster member by `--target MEMBER`). cli/main.py lifts both out of
the command line, before or after any command; a user may set $COI_REMOTE / $COI_TARGET
instead. They are read here, once per command, and passed on explicitly: the Incus adapter
and the session code read no environment."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from coi_tui.config import Settings
    from coi_tui.incus import Incus


@dataclass
class Target:
    remote: str | None = None  # a name from [[remotes]]; None: the local daemon
    member: str = ""  # cluster member for new containers; "": the remote's, or Incus's choice


CHOSEN = Target()


def choose(options: Mapping[str, str], environ: Mapping[str, str] = os.environ) -> Target:
    """The command line's --remote/--target, else the environment's; set for this command."""
    CHOSEN.remote = options.get("--remote") or environ.get("COI_REMOTE") or None
    CHOSEN.member = options.get("--target") or environ.get("COI_TARGET", "")
    return CHOSEN


def incus_for(settings: Settings) -> Incus:
    """The Incus client of this command: the chosen remote, else the settings' socket."""
    from coi_tui.incus import Incus  # the parser stays cheap: the adapter loads on use

    return Incus(
        settings.socket or None, settings.project, remote=CHOSEN.remote, target=CHOSEN.member
    )


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def resolve_workspace(path: str) -> str:
    """The workspace of this command (on the chosen remote's disk when there is one)."""
    from coi_tui.sessions.manager import resolve_workspace as resolve

    return resolve(path, CHOSEN.remote, say)


def workspace_containers(manager: Any, workspace: str) -> list[str]:
    """The coi containers of a workspace, sorted: known by the workspace hash in their name
    (a `coi container launch`ed one has nothing else) or by the workspace recorded on them."""
    from coi_tui.sessions.manager import workspace_of
    from coi_tui.sessions.naming import parse_container_name, workspace_hash

    here = resolve_workspace(workspace)
    digest = workspace_hash(here)
    prefix = manager.settings.container_prefix
    return sorted(
        i.name
        for i in manager.coi_instances()
        if workspace_of(i) == here or (parse_container_name(prefix, i.name) or ("",))[0] == digest
    )


def by_name_or_alias(manager: Any, name: str) -> str:
    """A container NAME, or the one container whose `user.coi.alias` is NAME (an alias, or
    ALIAS-N for slot N) and whose workspace holds that alias in the registry; NAME itself
    when neither matches (the caller says "not found")."""
    from coi_tui.sessions import aliases
    from coi_tui.sessions.manager import workspace_of

    if manager.incus.instance_exists(name):
        return name
    aliased = [i for i in manager.coi_instances() if i.config.get("user.coi.alias") == name]
    # a label counts only on a container of the workspace the registry gives that name to
    # (a container can carry any label; the registry says whose it is)
    registered = aliases.owner(name)
    if registered is not None:
        aliased = [i for i in aliased if workspace_of(i) == registered]
    return str(aliased[0].name) if len(aliased) == 1 else name
