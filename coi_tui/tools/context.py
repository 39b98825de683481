"""Pure helpers for what coi writes into an agent's home: the ~/SANDBOX_CONTEXT.md text, the
managed block in a markdown instructions file, and merges into JSON settings files. No I/O."""

from __future__ import annotations

import copy
import platform
from dataclasses import dataclass, field
from typing import Any

from coi_tui.tools.base import SettingsPatch

BEGIN = "# BEGIN COI Sandbox Context (managed by coi - do not edit this block)"
END = "# END COI Sandbox Context (managed by coi)"

NETWORK_TEXT = {
    "restricted": "Restricted (internet allowed, local/private networks blocked)",
    "open": "Open (all network access allowed)",
    "allowlist": "Allowlist (only pre-approved domains allowed)",
}


# ---------------------------------------------------------------------- JSON settings
def deep_merge(base: Any, patch: Any) -> Any:
    """Dicts merge key by key, lists gain the items they lack (so re-applying is a no-op),
    anything else is replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for key, value in patch.items():
            out[key] = deep_merge(out[key], value) if key in out else copy.deepcopy(value)
        return out
    if isinstance(base, list) and isinstance(patch, list):
        return base + [item for item in patch if item not in base]
    return copy.deepcopy(patch)


def deep_unset(base: Any, patch: Any) -> Any:
    """Remove what `patch` describes where the file still holds exactly that value; tables
    left empty by the removal go too."""
    if not isinstance(base, dict) or not isinstance(patch, dict):
        return base
    out = dict(base)
    for key, value in patch.items():
        if key not in out:
            continue
        current = out[key]
        if isinstance(value, dict) and isinstance(current, dict):
            reduced = deep_unset(current, value)
            if reduced:
                out[key] = reduced
            else:
                del out[key]
        elif isinstance(value, list) and isinstance(current, list):
            kept = [item for item in current if item not in value]
            if kept:
                out[key] = kept
            else:
                del out[key]
        elif current == value:
            del out[key]
    return out


def apply_patch(existing: dict[str, Any], patch: SettingsPatch) -> dict[str, Any]:
    return deep_merge(deep_unset(existing, patch.unset), patch.set)


# ---------------------------------------------------------------------- managed block
def with_managed_block(text: str, body: str) -> str:
    """`text` with exactly one coi block holding `body`: replaced in place when present (also
    with CRLF line ends), appended otherwise."""
    crlf = "\r\n" in text
    plain = text.replace("\r\n", "\n")
    block = f"{BEGIN}\n{body.rstrip()}\n{END}\n"
    start = plain.find(BEGIN)
    if start >= 0:
        end = plain.find(END, start)
        end = len(plain) if end < 0 else end + len(END)
        if plain[end : end + 1] == "\n":
            end += 1
        rest = plain[end:]
        while BEGIN in rest:  # duplicates left by hand edits: keep one block only
            extra = rest.find(BEGIN)
            stop = rest.find(END, extra)
            stop = len(rest) if stop < 0 else stop + len(END) + 1
            rest = rest[:extra] + rest[stop:]
        plain = plain[:start] + block + rest
    else:
        if plain and not plain.endswith("\n"):
            plain += "\n"
        plain += ("\n" if plain else "") + block
    return plain.replace("\n", "\r\n") if crlf else plain


# ---------------------------------------------------------------------- SANDBOX_CONTEXT.md
@dataclass
class ContextFacts:
    container: str
    tool: str
    workspace_host: str
    persistent: bool
    network_mode: str
    ssh_agent: bool
    timezone: str
    limits: list[str] = field(default_factory=list)
    protected_paths: list[str] = field(default_factory=list)
    forwarded_env: list[str] = field(default_factory=list)
    mounts: list[tuple[str, bool]] = field(default_factory=list)  # (container path, readonly)
    max_duration: str = ""
    profile: str = ""
    profile_context: str = ""


def render_context(facts: ContextFacts) -> str:
    mode = (
        "Persistent (survives between sessions)"
        if facts.persistent
        else "Ephemeral (destroyed after session ends)"
    )
    rows = [
        ("Workspace", f"/workspace (the host's {facts.workspace_host})"),
        ("Home directory", "/home/code"),
        ("OS", "Debian GNU/Linux 12 (bookworm)"),
        ("Architecture", platform.machine()),
        ("Container mode", mode),
        ("Network", NETWORK_TEXT.get(facts.network_mode, facts.network_mode)),
        ("SSH agent", "Forwarded from the host" if facts.ssh_agent else "Not available"),
        ("User", "Non-root user (code)"),
        ("Sudo", "Passwordless sudo available"),
        ("Timezone", facts.timezone),
        ("Tool", facts.tool),
        ("Container", facts.container),
    ]
    if facts.profile:
        rows.append(("Profile", facts.profile))
    lines = [
        "# Sandbox Context",
        "",
        "You are running inside an isolated Incus container created by coi (Code on Incus).",
        "Work autonomously: do not ask for confirmation, install tools and change the system as",
        "you need. Be careful only with the files in /workspace: they are the user's project.",
        "",
        "## Environment Details",
        "",
        "| | |",
        "| --- | --- |",
        *[f"| {name} | {value} |" for name, value in rows],
        "",
        "## What you can do",
        "",
        "- Install packages with `sudo apt-get install` (when the network allows it).",
        "- Run anything under /workspace; files you create there belong to the user.",
    ]
    if facts.forwarded_env:
        lines += ["", "## Forwarded environment variables", ""]
        lines += [f"- `{name}`" for name in facts.forwarded_env]
    if facts.mounts:
        lines += ["", "## Extra mounts", ""]
        lines += [f"- `{path}`{' (read-only)' if ro else ''}" for path, ro in facts.mounts]
    lines += ["", "## Limitations", ""]
    lines.append(f"- Network: {NETWORK_TEXT.get(facts.network_mode, facts.network_mode)}.")
    if not facts.persistent:
        lines.append("- Nothing outside /workspace survives the session (only agent state).")
    lines.append(
        "- Resource limits: "
        + (", ".join(facts.limits) if facts.limits else "none configured")
        + "."
    )
    if facts.max_duration:
        lines.append(f"- Session timeout: the container stops after {facts.max_duration}.")
    if facts.protected_paths:
        lines.append(
            "- Protected (read-only) paths in /workspace: "
            + ", ".join(f"`{p}`" for p in facts.protected_paths)
            + "."
        )
    lines += [
        "- Host credentials (SSH keys, git credentials, cloud tokens) are not available unless",
        "  the user forwarded them.",
        "",
        "## Troubleshooting",
        "",
        "- After using sudo in /workspace, fix ownership with `sudo chown -R $(whoami) .`.",
    ]
    if facts.profile_context.strip():
        lines += ["", "# User-Provided Profile Context", "", facts.profile_context.strip()]
    return "\n".join(lines) + "\n"
