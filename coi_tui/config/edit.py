"""Small, verified edits of the user's own config file (`coi egress allow|deny --always`): one
list under [network] changed in place, everything else byte for byte. The edited text is
parsed again and must differ from the old one in exactly that change; otherwise nothing is
written and the error says what to add by hand."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

from coi_tui.config.layers import home_dir
from coi_tui.config.schema import DEFAULT_ALLOWED_DOMAINS
from coi_tui.core.errors import CoiError
from coi_tui.core.fs import atomic_write, file_lock
from coi_tui.core.toml import toml_value

SECTION = re.compile(r"^\[network\][ \t]*(#.*)?$", re.MULTILINE)
HEADER = re.compile(r"^[ \t]*\[", re.MULTILINE)


def array_end(text: str, start: int) -> int:
    """The index just after the `]` closing the array that opens at text[start]."""
    depth, index, quote = 0, start, ""
    while index < len(text):
        char = text[index]
        if quote:
            if char == "\\" and quote == '"':
                index += 1
            elif char == quote:
                quote = ""
        elif char in "\"'":
            quote = char
        elif char == "#":
            newline = text.find("\n", index)
            index = len(text) if newline < 0 else newline
            continue
        elif char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
            if depth == 0:
                return index + 1
        index += 1
    raise ValueError("unterminated array")


def set_network_list(text: str, key: str, values: list[str]) -> str:
    """`text` with [network] `key` set to `values` (added when missing)."""
    line = f"{key} = {toml_value(values)}"
    section = SECTION.search(text)
    if section is None:
        return text.rstrip("\n") + ("\n\n" if text.strip() else "") + f"[network]\n{line}\n"
    body_start = section.end() + 1
    following = HEADER.search(text, body_start)
    body_end = following.start() if following else len(text)
    assignment = re.compile(rf"^[ \t]*{re.escape(key)}[ \t]*=[ \t]*", re.MULTILINE)
    found = assignment.search(text, body_start, body_end)
    if found is None:
        return text[:body_start] + line + "\n" + text[body_start:]
    if text[found.end() : found.end() + 1] != "[":
        raise ValueError(f"{key} is not an array")
    end = array_end(text, found.end())
    return text[: found.start()] + line + text[end:]


def remember_network_entry(env: dict[str, str], action: str, entry: str) -> Path:
    """`allow`: `entry` into the user's allowed_domains (and out of denied_domains); `deny`:
    the other way round. Returns the file changed."""
    path = (home_dir(env) / "config.toml").resolve()  # a linked config: its real file
    with file_lock("user-config"):
        return remember_in(path, action, entry)


def remember_in(path: Path, action: str, entry: str) -> Path:
    try:
        text = path.read_text(encoding="utf-8") if path.exists() else ""
        before = tomllib.loads(text)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise CoiError(f"{path}: cannot read it to remember {entry} ({exc})") from None
    network: dict[str, Any] = dict(before.get("network") or {})
    if network.get("egress") != "proxy" and ("*" in entry or action == "deny"):
        raise CoiError(
            f'{path}: {entry} is matched by name, which needs egress = "proxy" in [network] '
            "of this file (without it every later session would refuse the config)"
        )
    allowed = list(network.get("allowed_domains", DEFAULT_ALLOWED_DOMAINS))
    denied = list(network.get("denied_domains", []))
    add, drop = (allowed, denied) if action == "allow" else (denied, allowed)
    if entry not in add:
        add.append(entry)
    while entry in drop:
        drop.remove(entry)
    wanted = {**network, "allowed_domains": allowed, "denied_domains": denied}
    if not denied and "denied_domains" not in network:
        del wanted["denied_domains"]
    edited = text
    hint = f"add {entry!r} to [network] {'allowed' if action == 'allow' else 'denied'}_domains"
    try:
        for key in ("allowed_domains", "denied_domains"):
            if key in wanted and wanted[key] != network.get(key):
                edited = set_network_list(edited, key, wanted[key])
        after = tomllib.loads(edited)
    except (ValueError, tomllib.TOMLDecodeError):
        raise CoiError(f"{path}: cannot edit it safely; {hint} yourself") from None
    if after != {**before, "network": wanted}:
        raise CoiError(f"{path}: cannot edit it safely; {hint} yourself")
    if edited != text:
        mode = path.stat().st_mode & 0o777 if path.exists() else 0o600
        atomic_write(path, edited, mode=mode)
    return path
