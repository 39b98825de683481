"""Workspace aliases (`[container] alias`, as COI): ~/.coi/aliases.json maps a name to the
workspace (and profile) that registered it, so `coi shell NAME` starts that workspace from
anywhere; a session's containers carry `user.coi.alias` (NAME for slot 1, NAME-N after), the
name `coi attach/kill/shutdown/list` know them by. One name, one workspace: another
workspace's claim is refused, never taken over."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from coi_tui.core.errors import CoiError
from coi_tui.core.fs import atomic_write, file_lock
from coi_tui.core.paths import coi_home

SLOT_SUFFIX_RE = re.compile(r"^(?P<alias>.+)-(?P<slot>[1-9]|10)$")


@dataclass(frozen=True)
class AliasEntry:
    workspace: str
    profile: str = ""


def registry_path() -> Path:
    return coi_home() / "aliases.json"


def load() -> dict[str, AliasEntry]:
    try:
        data = json.loads(registry_path().read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise CoiError(f"{registry_path()}: cannot read the alias registry: {exc}") from None
    if not isinstance(data, dict):
        raise CoiError(f"{registry_path()}: the alias registry is not a JSON object")
    out: dict[str, AliasEntry] = {}
    for name, entry in data.items():
        if isinstance(entry, dict) and isinstance(entry.get("workspace"), str):
            out[name] = AliasEntry(entry["workspace"], str(entry.get("profile") or ""))
    return out


def register(alias: str, workspace: str, profile: str = "") -> None:
    """Record that `alias` names `workspace`; CoiError when another workspace holds it."""
    with file_lock("aliases"):
        entries = load()
        for name, other in entries.items():
            if other.workspace != workspace and overlaps(alias, name):
                raise CoiError(
                    f'alias conflict: alias "{alias}" is already registered to workspace '
                    f"{other.workspace}"
                    + (f', as "{name}"' if name != alias else "")
                    + "; pick another [container] alias here"
                )
        if entries.get(alias) == AliasEntry(workspace, profile):
            return
        entries[alias] = AliasEntry(workspace, profile)
        data = {
            name: {"workspace": e.workspace, "profile": e.profile} for name, e in entries.items()
        }
        atomic_write(registry_path(), json.dumps(data, indent=2, sort_keys=True) + "\n")


def overlaps(alias: str, other: str) -> bool:
    """Whether two aliases name the same containers: equal, or one is the other's NAME-N
    (a workspace aliased "web-2" would take the label of slot 2 of "web")."""
    if alias == other:
        return True
    for one, two in ((alias, other), (other, alias)):
        match = SLOT_SUFFIX_RE.match(one)
        if match and match["alias"] == two:
            return True
    return False


def owner(label: str) -> str | None:
    """The workspace a container label (NAME or NAME-N) belongs to, by the registry."""
    try:
        entry, _slot = lookup(label)
    except CoiError:
        return None
    return entry.workspace


def label(alias: str, slot: int) -> str:
    """`user.coi.alias` of a slot's container: the alias, then alias-2, alias-3, ..."""
    return alias if slot <= 1 else f"{alias}-{slot}"


def lookup(name: str) -> tuple[AliasEntry, int]:
    """`coi shell NAME`: the registered workspace and the slot NAME asks for (NAME-N: slot N,
    else 0, the lowest free); CoiError in COI's words when nothing has that name."""
    entries = load()
    if name in entries:
        return entries[name], 0
    match = SLOT_SUFFIX_RE.match(name)
    if match and match["alias"] in entries:
        return entries[match["alias"]], int(match["slot"])
    raise CoiError(
        f'alias "{name}" not found — register it by adding [container] alias = "{name}" to '
        ".coi/config.toml and running a session"
    )
