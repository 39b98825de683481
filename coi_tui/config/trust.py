"""The trust model: a workspace's own `.coi/config.toml` comes with the repository, so it is
*untrusted* (an agent inside the container can write it for the next session). At load:

- weakening the sandbox is ignored with a warning: network downgrades, turning the monitor or
  the protected paths off, and keys only the user may set (git identity, env commands, ...);
- reaching out of the sandbox is *gated*: mounts outside the workspace, sockets, published
  ports, credentials, forwarded host environment variables and the SSH agent are applied only
  once the user approved exactly that set with `coi trust` (stored in ~/.coi/trust.toml with
  a sha256 fingerprint of the set, so any change needs a new approval). COI_TRUST_ALL=1
  skips the gate (CI).

User files (~/.coi/config.toml, $COI_CONFIG, ~/.coi/profiles) are trusted."""

from __future__ import annotations

import hashlib
import json
import os
import tomllib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

UNTRUSTED_LABEL = "project config"

# Values that weaken isolation: ignored from untrusted config.
DOWNGRADES: dict[str, Any] = {
    "network.mode": "open",
    "network.allow_local_network_access": True,
    "network.block_private_networks": False,
    "network.block_metadata_endpoint": False,
    "security.disable_protection": True,
    "git.writable_hooks": True,
    "monitoring.enabled": False,
    "monitoring.auto_pause_on_high": False,
    "monitoring.auto_kill_on_critical": False,
}
# Keys only the user may set (COI's list, plus the monitor's thresholds).
STRIPPED_PREFIXES = (
    "defaults.env_commands",
    "defaults.env_command_timeout",
    "defaults.profile",
    "prompts",
    "network.hosts",
    "network.dns_servers",
    "network.allowed_ports",
    "git.name",
    "git.email",
    "git.readonly",
    "git.protected_branches",
    "tool.context_file",
    "tool.context_json_file",
    "tool.pre_launch",
    "tool.binary",
    "container.session_name",
    "security.writable_paths",
    "security.reduce_kernel_surface",
    "monitoring.",
    "incus.",
)
# Gated: reaching out of the sandbox.
GATED_KEYS = ("sockets", "ports.map", "credentials", "forward_env", "ssh.forward_agent")


@dataclass
class TrustReport:
    ignored: list[str] = field(default_factory=list)  # what was dropped, and why
    gated: list[str] = field(default_factory=list)  # what waits for `coi trust`
    fingerprint: str = ""
    approved: bool = False


# The last report per workspace, for `coi trust` and for the CLI to print once.
REPORTS: dict[str, TrustReport] = {}


def trust_path() -> Path:
    from coi_tui.paths import coi_home

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
    path = trust_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines))
    os.chmod(tmp, 0o600)
    tmp.replace(path)


def fingerprint(items: list[str]) -> str:
    return hashlib.sha256("\n".join(sorted(items)).encode()).hexdigest()


def sanitize(
    values: dict[str, Any], workspace: Path, env: dict[str, str], kind: str = "config"
) -> TrustReport:
    """Edit an untrusted layer's values in place; returns what was ignored or gated.
    COI_TRUST_ALL=1 trusts it as it is (CI, or a repository that is your own)."""
    report = TrustReport()
    if env.get("COI_TRUST_ALL", "") in ("1", "true", "yes"):
        report.approved = True
        return report
    for path in list(values):
        value = values[path]
        if path in DOWNGRADES and value == DOWNGRADES[path]:
            report.ignored.append(f"{path} = {json.dumps(value)} (weakens the sandbox)")
            del values[path]
        elif path == "security.protected_paths":
            from coi_tui.config.schema import DEFAULT_PROTECTED_PATHS

            missing = [p for p in DEFAULT_PROTECTED_PATHS if p not in value]
            if missing:
                values[path] = [*value, *missing]
                report.ignored.append(f"removing {', '.join(missing)} from protected_paths")
        elif path.startswith(STRIPPED_PREFIXES):
            report.ignored.append(f"{path} (only your own config may set it)")
            del values[path]
    gated: list[tuple[str, Any]] = []
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
