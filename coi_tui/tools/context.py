"""Pure helpers for what coi writes into an agent's home: the ~/SANDBOX_CONTEXT.md text, the
managed block in a markdown instructions file, and merges into JSON settings files. No I/O."""

from __future__ import annotations

import copy
import platform
from dataclasses import dataclass, field
from typing import Any

from coi_tui.tools.base import WORKSPACE, SettingsPatch

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
CONTEXT_JSON_SCHEMA_VERSION = 1
GH_TOKEN_NAMES = ("GH_TOKEN", "GITHUB_TOKEN")
ARCH_NAMES = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}


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
    docker: bool = True  # [container] docker: nesting keys for Docker-in-container
    cpu_limit: str = ""
    memory_limit: str = ""
    allowed_domains: list[str] = field(default_factory=list)
    workspace: str = WORKSPACE
    home: str = "/home/code"
    os_name: str = "Debian GNU/Linux 12 (bookworm)"

    @property
    def gh_authenticated(self) -> bool:
        """gh works without a login when a GitHub token is forwarded."""
        return any(name in self.forwarded_env for name in GH_TOKEN_NAMES)

    @property
    def architecture(self) -> str:
        machine = platform.machine()
        return ARCH_NAMES.get(machine, machine)


def render_context(facts: ContextFacts) -> str:
    """~/SANDBOX_CONTEXT.md: what the agent should know about the sandbox it runs in."""
    mode = (
        "Persistent (survives between sessions)"
        if facts.persistent
        else "Ephemeral (destroyed after session ends)"
    )
    network = NETWORK_TEXT.get(facts.network_mode, facts.network_mode)
    rows = [
        ("Workspace", f"{facts.workspace} (the host's {facts.workspace_host})"),
        ("Home directory", facts.home),
        ("OS", facts.os_name),
        ("Architecture", facts.architecture),
        ("Container mode", mode),
        ("Network", network),
        (
            "SSH agent",
            "Forwarded from host (available via SSH_AUTH_SOCK)"
            if facts.ssh_agent
            else "Not available",
        ),
        (
            "GitHub CLI",
            "Authenticated via forwarded token (gh ready to use when installed; the token "
            "may have limited scope)"
            if facts.gh_authenticated
            else "Not authenticated",
        ),
        (
            "Docker",
            "Available (Docker-in-Docker: nesting enabled)"
            if facts.docker
            else "Not available ([container] docker = false)",
        ),
        ("User", "Non-root user (code)"),
        ("Sudo", "Available via passwordless sudo"),
        ("Timezone", facts.timezone or "UTC"),
        ("Tool", facts.tool),
        ("Container", facts.container),
    ]
    if facts.profile:
        rows.append(("Profile", facts.profile))
    lines = [
        "# COI Sandbox Environment",
        "",
        "You are running inside an isolated Incus container created by coi (Code on Incus).",
        "",
        "## Autonomous Operation",
        "",
        "- Work autonomously: do not ask for confirmation before running commands.",
        "- Install tools and change the system freely; the container is yours.",
        f"- Be careful only with the files in {facts.workspace}: they are the user's project.",
        "",
        "## Environment Details",
        "",
        "| Property | Value |",
        "| --- | --- |",
        *[f"| {name} | {value} |" for name, value in rows],
        "",
        "## What You Can Do",
        "",
        "- Install packages with `sudo apt-get install` (when the network allows it).",
        f"- Build, test and run anything under {facts.workspace}; files you create there "
        "belong to the user on the host.",
        "- Start services and containers (Docker) when the image has them.",
        "",
        "## Runtimes",
        "",
        "- Python 3 is installed system-wide; check for others (node, go, ...) with "
        "`command -v <name>` and install what is missing.",
    ]
    if facts.forwarded_env:
        lines += ["", "## Forwarded Environment Variables", ""]
        lines += [f"- `{name}`" for name in facts.forwarded_env]
    if facts.mounts:
        lines += ["", "## Extra Mounts", ""]
        lines += [f"- `{path}`{' (read-only)' if ro else ''}" for path, ro in facts.mounts]
    if facts.ssh_agent or facts.gh_authenticated:
        lines += ["", "## Git Authentication", ""]
        if facts.ssh_agent:
            lines.append("- Prefer SSH remotes (`git@github.com:...`): the host's SSH agent works.")
        if facts.gh_authenticated:
            lines.append("- `gh` can use the forwarded token (`gh auth status` shows its scope).")
        lines.append(
            "- Set a real git identity before committing; do not commit as the user `code`."
        )
    lines += ["", "## Limitations", ""]
    lines.append(f"- Network: {network}.")
    if not facts.persistent:
        lines.append(
            "- Non-persistent: nothing outside the workspace survives the session (only the "
            "agent's own state is saved)."
        )
    lines.append(
        "- Resource limits: "
        + (", ".join(facts.limits) if facts.limits else "none configured")
        + "."
    )
    if facts.max_duration:
        lines.append(f"- Session timeout: the container stops after {facts.max_duration}.")
    if facts.protected_paths:
        lines.append(
            f"- Protected (read-only) paths in {facts.workspace}: "
            + ", ".join(f"`{p}`" for p in facts.protected_paths)
            + "."
        )
    lines += [
        "- Host credentials (SSH keys, git credentials, cloud tokens) are not available unless",
        "  the user forwarded them.",
        "",
        "## Troubleshooting",
        "",
        "- After using sudo in the workspace, fix ownership with `sudo chown -R $(whoami) .`.",
        "- A command that is missing can usually be installed with `sudo apt-get install`.",
        "",
        "## Best Practices",
        "",
        "- Keep changes inside the workspace focused on the task; leave unrelated files alone.",
        "- Run the project's tests before you say a change is done.",
    ]
    if facts.profile_context.strip():
        lines += ["", "# User-Provided Profile Context", "", facts.profile_context.strip()]
    return "\n".join(lines) + "\n"


def context_json(facts: ContextFacts) -> dict[str, Any]:
    """~/SANDBOX_CONTEXT.json: the same facts for programs (COI's versioned shape; lists are
    always lists, no timestamp, so a reused container's file does not churn)."""
    limits = {
        key: value
        for key, value in (
            ("cpu", facts.cpu_limit),
            ("memory", facts.memory_limit),
            ("max_duration", facts.max_duration),
        )
        if value
    }
    out: dict[str, Any] = {
        "schema_version": CONTEXT_JSON_SCHEMA_VERSION,
        "container_name": facts.container,
        "tool_name": facts.tool,
        "workspace_path": facts.workspace,
        "home_dir": facts.home,
        "os": facts.os_name,
        "architecture": facts.architecture,
    }
    if facts.timezone:
        out["timezone"] = facts.timezone
    out.update(
        {
            "persistent": facts.persistent,
            "run_as_root": False,
            "network": {
                "mode": facts.network_mode,
                "allowed_ports": [],
                "dns_servers": [],
                "allowed_domains": list(facts.allowed_domains),
            },
            "ssh_agent_forwarded": facts.ssh_agent,
            "gh_cli_authenticated": facts.gh_authenticated,
            "forwarded_env_vars": list(facts.forwarded_env),
            "protected_paths": list(facts.protected_paths),
            "extra_mounts": [path for path, _ro in facts.mounts],
            "published_ports": [],
            "limits": limits,
        }
    )
    if facts.profile_context.strip():
        out["profile_context"] = facts.profile_context
    return out
