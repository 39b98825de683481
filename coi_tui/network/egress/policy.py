"""A container's egress policy by name: the patterns `allowed_domains` and `denied_domains`
hold, and the one decision the proxy makes for a name and a port.

A pattern is a name (`api.anthropic.com`: that name only), a wildcard (`*.github.com`: any
name below github.com, not github.com itself), either with a port or port list
(`example.com:8443`, `*.example.com:80,443`, `x.example:8000-8100`); without one it covers the
proxied web ports.
Names are compared lower-case, without a trailing dot, as IDNA (punycode) labels.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any

from coi_tui.core.errors import CoiError

WEB_PORTS = (80, 443)  # what a pattern without a port covers, and what is always proxied
LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
MODES = ("allowlist", "restricted")
NOT_LISTED = "not in the allowlist"  # the one refusal an operator may turn around (holds.py)


def clean_name(text: str) -> str:
    """A host name as the proxy compares it: lower-case IDNA, no trailing dot; "" when it is
    not a valid DNS name (an address, a port, spaces, empty labels)."""
    name = text.strip().rstrip(".").lower()
    try:
        name = name.encode("idna").decode("ascii")
    except (UnicodeError, ValueError):
        return ""
    if not name or len(name) > 253 or is_address(name):
        return ""
    return name if all(LABEL.match(label) for label in name.split(".")) else ""


def is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class Pattern:
    name: str  # the name, or the parent domain of a wildcard
    wildcard: bool
    ports: tuple[tuple[int, int], ...]  # ranges (low, high); empty: WEB_PORTS

    def matches(self, name: str, port: int) -> bool:
        if self.ports:
            if not any(low <= port <= high for low, high in self.ports):
                return False
        elif port not in WEB_PORTS:
            return False
        return self.covers(name)

    def covers(self, name: str) -> bool:
        """The name matches, whatever the port."""
        if self.wildcard:
            return name.endswith("." + self.name)
        return name == self.name

    def __str__(self) -> str:
        text = ("*." if self.wildcard else "") + self.name
        return text + (":" + ",".join(port_text(r) for r in self.ports) if self.ports else "")


def port_text(span: tuple[int, int]) -> str:
    return str(span[0]) if span[0] == span[1] else f"{span[0]}-{span[1]}"


def parse_ports(text: str, entry: str) -> tuple[tuple[int, int], ...]:
    spans = []
    for part in text.split(","):
        low, dash, high = part.strip().partition("-")
        numbers = [low, high] if dash else [low]
        if not all(n.isdigit() and 1 <= int(n) <= 65535 for n in numbers) or (
            dash and int(low) > int(high)
        ):
            raise CoiError(
                f"egress pattern {entry!r}: ports are 1-65535, as 443, 80,443 or 8000-8100"
            )
        spans.append((int(low), int(high or low)))
    return tuple(sorted(set(spans)))


def parse_pattern(entry: str) -> Pattern:
    """One pattern, or CoiError with one line."""
    text = entry.strip()
    host, colon, port_text = text.rpartition(":") if ":" in text else (text, "", "")
    ports = parse_ports(port_text, entry) if colon else ()
    wildcard = host.startswith("*.")
    name = clean_name(host[2:] if wildcard else host)
    if not name or "*" in host[2 if wildcard else 0 :]:
        raise CoiError(
            f"egress pattern {entry!r}: want a name (example.com), a wildcard (*.example.com), "
            "optionally with :PORT[,PORT]"
        )
    if wildcard and "." not in name:
        raise CoiError(f"egress pattern {entry!r}: a wildcard needs a domain (*.example.com)")
    return Pattern(name, wildcard, ports)


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str  # the pattern that decided, or why nothing did


@dataclass
class EgressPolicy:
    """What one container may reach by name. `allowlist`: only what `allow` matches;
    `restricted`: every public name but what `deny` matches. `deny` wins in both."""

    mode: str
    allow: list[Pattern] = field(default_factory=list)
    deny: list[Pattern] = field(default_factory=list)
    allow_local: bool = False  # names may resolve into the LAN
    generation: int = 0
    hold_sec: float = 0  # a name outside the allowlist waits this long for approval

    def decide(self, name: str, port: int) -> Decision:
        cleaned = clean_name(name)
        if not cleaned:
            return Decision(False, "no valid name (a raw address, or none was sent)")
        for pattern in self.deny:
            if pattern.matches(cleaned, port):
                return Decision(False, f"denied by {pattern}")
        if self.mode == "restricted":
            return Decision(True, "restricted mode: public names are open")
        for pattern in self.allow:
            if pattern.matches(cleaned, port):
                return Decision(True, f"allowed by {pattern}")
        return Decision(False, NOT_LISTED)

    def resolvable(self, name: str) -> Decision:
        """Whether the resolver answers for `name`: a port the policy allows for it exists
        (a deny with ports closes only those ports, so the name still resolves)."""
        cleaned = clean_name(name)
        if not cleaned:
            return Decision(False, "not a valid name")
        for pattern in self.deny:
            if not pattern.ports and pattern.covers(cleaned):
                return Decision(False, f"denied by {pattern}")
        if self.mode == "restricted":
            return Decision(True, "restricted mode: public names are open")
        for pattern in self.allow:
            if pattern.covers(cleaned):
                return Decision(True, f"allowed by {pattern}")
        return Decision(False, NOT_LISTED)

    def change(self, action: str, pattern: Pattern) -> None:
        """`allow` or `deny` one more pattern (the same pattern leaves the other list)."""
        self.allow = [p for p in self.allow if p != pattern]
        self.deny = [p for p in self.deny if p != pattern]
        if action == "allow":
            if self.mode == "allowlist":
                self.allow.append(pattern)
        elif action == "deny":
            self.deny.append(pattern)
        else:
            raise CoiError(f"egress: unknown change {action!r}")

    def ports(self) -> list[str]:
        """The destination ports the proxy must see: the web ports and any a pattern names
        (nft's port expressions: "443", "8000-8100")."""
        found: set[tuple[int, int]] = {(p, p) for p in WEB_PORTS}
        for pattern in (*self.allow, *self.deny):
            found.update(pattern.ports)
        return [port_text(span) for span in sorted(found)]

    def to_json(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "allow": [str(p) for p in self.allow],
            "deny": [str(p) for p in self.deny],
            "allow_local": self.allow_local,
            "generation": self.generation,
            "hold_sec": self.hold_sec,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EgressPolicy:
        mode = str(data.get("mode", ""))
        if mode not in MODES:
            raise CoiError(f"egress policy: unknown mode {mode!r}")
        return cls(
            mode,
            [parse_pattern(str(p)) for p in data.get("allow", [])],
            [parse_pattern(str(p)) for p in data.get("deny", [])],
            bool(data.get("allow_local", False)),
            int(data.get("generation", 0)),
            max(0.0, min(300.0, float(data.get("hold_sec", 0)))),
        )
