"""A remote Incus server as configured: one `[[remotes]]` table (in ~/.coi/remotes.toml or the
user's config.toml) and its checks. The config loader validates [[remotes]] with it; the
connection itself (certificates, TLS, the client) is in incus/remotes.py."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from coi_tui.core.errors import CoiError, UsageError
from coi_tui.core.paths import coi_home

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


@dataclass
class Remote:
    name: str
    address: str  # https://host:port
    cert: str = ""  # client certificate (PEM file); default ~/.coi/client.crt
    key: str = ""  # client key (PEM file); default ~/.coi/client.key
    fingerprint: str = ""  # SHA-256 of the server certificate (hex, any case, colons allowed)
    ca: str = ""  # or: a CA file to verify the server against
    project: str = "default"
    target: str = ""  # cluster member for new instances ("" = let Incus place them)

    @property
    def host(self) -> str:
        return urlparse(self.address).hostname or self.address

    @property
    def port(self) -> int:
        return urlparse(self.address).port or 8443

    def client_files(self) -> tuple[str, str]:
        return (
            self.cert or str(coi_home() / "client.crt"),
            self.key or str(coi_home() / "client.key"),
        )


def normalise_fingerprint(text: str) -> str:
    return text.replace(":", "").strip().lower()


def validate(remote: Remote) -> Remote:
    if not NAME_RE.match(remote.name):
        raise UsageError(f"invalid remote name '{remote.name}': letters, digits, '.', '_', '-'")
    parsed = urlparse(remote.address)
    if parsed.scheme != "https" or not parsed.hostname:
        raise UsageError(
            f"remote '{remote.name}': address must be https://HOST[:PORT], got '{remote.address}'"
        )
    if not remote.fingerprint and not remote.ca:
        raise UsageError(f"remote '{remote.name}' needs a server fingerprint or a CA file")
    remote.fingerprint = normalise_fingerprint(remote.fingerprint)
    return remote


def remote_from_table(table: dict[str, Any], where: str) -> Remote:
    """One [[remotes]] table of a config file (or remotes.toml), checked; `where` names the file
    in errors."""
    allowed = set(Remote.__dataclass_fields__)
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise CoiError(
            f"{where}: unknown key(s) in [[remotes]]: {', '.join(unknown)} "
            f"(allowed: {', '.join(sorted(allowed))})"
        )
    if "name" not in table or "address" not in table:
        raise CoiError(f"{where}: every [[remotes]] entry needs name and address")
    return validate(Remote(**{k: str(v) for k, v in table.items()}))
