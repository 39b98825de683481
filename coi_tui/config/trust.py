"""The trust model: a workspace's own `.coi/config.toml` comes with the repository, so it is
*untrusted* (an agent inside the container can write it for the next session). At load:

- a project may set only what PROJECT_KEYS lists (its agent, image, limits, more protection,
  a stricter network) and, for STRICTER_ONLY keys, only the stricter values; anything else is
  ignored with a warning (an allowlist: a new key is the user's until it is listed);
- [[remotes]] and [tui] (USER_ONLY_TABLES) are read from the user's files only;
- reaching out of the sandbox is *gated*: mounts outside the workspace, sockets, published
  ports, credentials, forwarded host environment variables, the agent's environment (it can
  point the agent's API at another server) and the SSH agent are applied only
  once the user approved exactly that set with `coi trust` (stored in ~/.coi/trust.toml with
  a sha256 fingerprint of the set, so any change needs a new approval). COI_TRUST_ALL=1
  skips the gate (CI).

User files (~/.coi/config.toml, $COI_CONFIG, ~/.coi/profiles) are trusted."""

from __future__ import annotations

import hashlib
import json
import tomllib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from coi_tui.config.schema import DEFAULT_PROTECTED_PATHS, expand_presets
from coi_tui.core.fs import atomic_write
from coi_tui.core.paths import coi_home

UNTRUSTED_LABEL = "project config"

# What a project may set: an allowlist, so a key added later is the user's until it is listed
# here. Exact paths, or prefixes ending in ".". A project picks its agent and model, its image
# and how to build it, resource limits, more protection, a stricter network; never where
# data goes or what runs on the host.
PROJECT_KEYS = (
    "shell.use_tmux",
    "paths.preserve_workspace_path",
    "container.alias",
    "tool.name",
    "tool.auto_context",
    "tool.context_json",
    "tool.claude.",
    "tool.codex.",
    "container.image",
    "container.build.",
    "container.shutdown_timeout",
    "container.ready_timeout",
    "container.stale_base_check",
    "network.allowed_domains",
    "network.denied_domains",  # a repository may only add refusals
    "network.refresh_interval_minutes",
    "security.protected_paths",
    "security.additional_protected_paths",
    "security.secret_paths",
    "limits.",
    "timezone.",
    "mounts",  # those outside the workspace are gated below
    "inherits",  # a project profile's parent
    "context",  # a project profile's context file
)
# Allowed only with these values: the ones that tighten the sandbox.
STRICTER_ONLY: dict[str, tuple[Any, ...]] = {
    "tool.permission_mode": ("interactive",),
    "network.mode": ("restricted", "allowlist"),
    "network.egress": ("proxy",),
    "container.docker": (False,),
    "container.persistent": (False,),
    "monitoring.enabled": (True,),
    "monitoring.auto_pause_on_high": (True,),
    "monitoring.auto_kill_on_critical": (True,),
    "security.disable_protection": (False,),
    "git.writable_hooks": (False,),
    "network.block_private_networks": (True,),
    "network.block_metadata_endpoint": (True,),
    "network.allow_local_network_access": (False,),
    "security.reduce_kernel_surface": (True,),
    "security.reduce_kernel_surface_strict": (True,),
}
# Gated: reaching out of the sandbox (`environment` too: ANTHROPIC_BASE_URL and the like send
# the agent's credentials wherever a repository points them).
GATED_KEYS = (
    "sockets",
    "ports.map",
    "credentials",
    "forward_env",
    "ssh.forward_agent",
    "environment",
)
# network.mode from the widest to the narrowest: a project may only move it narrower than what
# the user's own config already chose (restricted is wider than allowlist).
MODE_ORDER = ("open", "restricted", "allowlist")
# Tables another module reads ([[remotes]]: where sessions run; [tui]: the dashboard's keys,
# e.g. which key confirms a kill): from the user's files only, whatever `coi trust` says.
USER_ONLY_TABLES = ("remotes", "tui")


def project_may_set(path: str, value: Any) -> bool:
    if path in STRICTER_ONLY:
        return value in STRICTER_ONLY[path]
    return any(path == key or (key.endswith(".") and path.startswith(key)) for key in PROJECT_KEYS)


@dataclass
class TrustReport:
    ignored: list[str] = field(default_factory=list)  # what was dropped, and why
    gated: list[str] = field(default_factory=list)  # what waits for `coi trust`
    fingerprint: str = ""
    approved: bool = False


# The last report per workspace, for `coi trust` and for the CLI to print once.
REPORTS: dict[str, TrustReport] = {}


def trust_path() -> Path:

    return coi_home() / "trust.toml"


def describe(path: str, value: Any) -> str:
    if path == "mounts":
        return f"mount {value.host} -> {value.container}{' (read-only)' if value.readonly else ''}"
    if isinstance(value, dict):
        inner = ", ".join(f"{k}={v}" for k, v in sorted(value.items()))
        return f"{path}: {inner}"
    return f"{path} = {json.dumps(value)}"


def inside(path: str, root: Path) -> bool:
    try:
        resolved = Path(path).expanduser().resolve(strict=False)
    except (OSError, RuntimeError):  # a loop or an unreadable link: fail closed
        return False
    root = root.resolve()
    return resolved == root or root in resolved.parents


def approvals() -> dict[str, dict[str, Any]]:
    try:
        data = tomllib.loads(trust_path().read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return {}
    return {str(e.get("workspace")): e for e in data.get("approved", []) if isinstance(e, dict)}


def save_approvals(entries: dict[str, dict[str, Any]]) -> None:
    lines = ["# coi trust: approved project configs (sha256 of what each may reach)", ""]
    for workspace, entry in sorted(entries.items()):
        lines += [
            "[[approved]]",
            f"workspace = {json.dumps(workspace)}",
            f"fingerprint = {json.dumps(entry['fingerprint'])}",
            f"approved_at = {json.dumps(entry.get('approved_at', ''))}",
            f"items = {json.dumps(list(entry.get('items', [])))}",
            "",
        ]
    atomic_write(trust_path(), "\n".join(lines), 0o600)


def fingerprint(items: list[str]) -> str:
    return hashlib.sha256("\n".join(sorted(items)).encode()).hexdigest()


def sanitize(
    values: dict[str, Any],
    workspace: Path,
    env: dict[str, str],
    kind: str = "config",
    floor: Any = None,
) -> TrustReport:
    """Edit an untrusted layer's values in place; returns what was ignored or gated.
    `floor`: the settings the user's own files made so far; the project may only narrow
    their network (mode and allowed names). COI_TRUST_ALL=1 trusts it as it is (CI, or a
    repository that is your own)."""
    report = TrustReport()
    if env.get("COI_TRUST_ALL", "") in ("1", "true", "yes"):
        report.approved = True
        return report
    for path in list(values):
        value = values[path]
        if path in GATED_KEYS:
            continue
        if path == "security.protected_paths":
            missing = [p for p in DEFAULT_PROTECTED_PATHS if p not in value]
            if missing:
                values[path] = [*value, *missing]
                report.ignored.append(f"removing {', '.join(missing)} from protected_paths")
        elif path in STRICTER_ONLY and not project_may_set(path, value):
            report.ignored.append(f"{path} = {json.dumps(value)} (weakens the sandbox)")
            del values[path]
        elif (
            path == "network.mode"
            and floor is not None
            and value in MODE_ORDER
            and MODE_ORDER.index(value) < MODE_ORDER.index(floor.network_mode)
        ):
            report.ignored.append(
                f"{path} = {json.dumps(value)} (wider than your own {floor.network_mode!r})"
            )
            del values[path]
        elif not project_may_set(path, value):
            report.ignored.append(f"{path} (only your own config may set it)")
            del values[path]
    gated: list[tuple[str, Any]] = []
    domains = values.get("network.allowed_domains")
    wider = domains is not None and set(expand_presets(domains)) - set(
        expand_presets(floor.allowed_domains) if floor is not None else []
    )
    if floor is not None and wider:
        # names beyond the user's own list open the network: the user approves them
        gated.append(("network.allowed_domains", values.pop("network.allowed_domains")))
    mounts = values.get("mounts") or []
    outside = [m for m in mounts if not inside(m.host, workspace)]
    if outside:
        values["mounts"] = [m for m in mounts if m not in outside]
        gated += [("mounts", m) for m in outside]
    for key in GATED_KEYS:
        if key in values and values[key] not in (None, [], {}, False):
            gated.append((key, values.pop(key)))
    items = [describe(k, v) for k, v in gated]
    report.gated = items
    if not gated:
        return report
    report.fingerprint = fingerprint(items)
    # `coi trust` approves the project's config file; a project profile's reach needs
    # COI_TRUST_ALL or moving the profile to ~/.coi/profiles.
    approved = approvals().get(str(workspace)) if kind == "config" else None
    report.approved = approved is not None and approved.get("fingerprint") == report.fingerprint
    if report.approved:
        for key, value in gated:  # put them back
            if key == "mounts":
                values.setdefault("mounts", []).append(value)
            else:
                values[key] = value
    return report


def approve(workspace: Path, report: TrustReport) -> None:
    entries = approvals()
    entries[str(workspace)] = {
        "fingerprint": report.fingerprint,
        "approved_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "items": report.gated,
    }
    save_approvals(entries)


def revoke(workspace: Path) -> bool:
    entries = approvals()
    if str(workspace) not in entries:
        return False
    del entries[str(workspace)]
    save_approvals(entries)
    return True


def warnings(report: TrustReport, config: Path) -> list[str]:
    lines = [f"warning: {config} (untrusted) ignored: {item}" for item in report.ignored]
    if report.gated and not report.approved:
        lines.append(
            f"warning: {config} asks for {'; '.join(report.gated)}: not applied until you "
            "review it and run 'coi trust'"
        )
    return lines
