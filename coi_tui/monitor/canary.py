"""Canaries: decoy credentials planted in each container, unique per session.

Nothing legitimate reads them: an agent told to build code has no use for a deploy key it
was never given. So any open of one is HIGH (rule `canary.open`, the file watcher's), and
any appearance of one of their values on the network is CRITICAL (`canary.network`, here).

- CANARY_FILES: the kinds and where they go in the container (`canary_paths()` for the
  file watcher). Never in the workspace, and the SSH key has a name ssh never tries by itself.
- make_canaries(): fresh values in realistic formats from `secrets` (AWS key id AKIA + 16,
  a 40-character secret; ghp_ + 36; an OpenSSH ed25519 private key that ssh-keygen parses,
  its public half derived from its seed here in pure Python; a .env with an API key and a
  database password).
- markers(): what is matched on the wire: each value raw, and hex, base64 (3 alignments) and
  base32 (5 alignments) of it, all lowercased, matched against the lowercased payload (DNS
  names are case-insensitive; DNS names are matched with their dots removed, so a value split
  across labels is still found).
- The registry `~/.coi/canaries/<container>.json` (0600, written by the session start with
  core/fs.atomic_write) names the container's instance id and its canaries' values.
  The root daemon reads it (NetworkMatcher) without following links, bounded in size, only
  when owned by root or the daemon's user, and deletes nothing.

Pure, typed, standard library only (the root daemon imports it); never prints.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import errno
import hashlib
import json
import os
import re
import secrets
import stat
import string
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from coi_tui.core import nofollow
from coi_tui.monitor.events import Threat
from coi_tui.monitor.rules import Packet, threat

CODE_HOME = "/home/code"


@dataclass(frozen=True)
class CanaryFile:
    kind: str
    path: str  # absolute, in the container
    title: str


CANARY_FILES: tuple[CanaryFile, ...] = (
    CanaryFile("aws", f"{CODE_HOME}/.aws/credentials", "AWS credentials file"),
    # not id_ed25519/id_rsa: ssh and git would read a default key by themselves
    CanaryFile("ssh", f"{CODE_HOME}/.ssh/id_ed25519_deploy", "SSH private key"),
    CanaryFile("env", f"{CODE_HOME}/.env", ".env file with API keys"),
    CanaryFile("gh", f"{CODE_HOME}/.config/gh/hosts.yml", "GitHub CLI token"),
)
CANARY_KINDS: tuple[str, ...] = tuple(c.kind for c in CANARY_FILES)
BY_KIND: dict[str, CanaryFile] = {c.kind: c for c in CANARY_FILES}

REGISTRY_DIR = "canaries"
REGISTRY_LIMIT = 64 * 1024  # bytes read of a registry (a real one is about 2 KB)
MAX_VALUES = 8  # per canary, in a registry
VALUE_RE = re.compile(r"^[A-Za-z0-9+/=_-]{16,200}$")
CONTAINER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,62}$")
MIN_MARKER = 16  # characters: shorter runs could occur by chance
# How much of each logged packet NFLOG copies (the daemon's NflogReader copy range): a
# request's headers and the start of its body.
PAYLOAD_BYTES = 4096
RELOAD_SEC = 0.2  # a registry not there yet (or stale) is looked for again at most this often

UPPER_DIGITS = string.ascii_uppercase + "234567"  # AWS key ids: base32 letters
ALNUM = string.ascii_letters + string.digits


def canary_paths() -> tuple[str, ...]:
    """Every canary's absolute path in a container (what the file watcher guards)."""
    return tuple(c.path for c in CANARY_FILES)


@dataclass(frozen=True)
class Canary:
    kind: str
    path: str
    content: str  # the file's text
    values: tuple[str, ...]  # the secrets in it, each distinctive on its own


def _random(alphabet: str, length: int) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(length))


# ---------------------------------------------------------------------- ed25519
# The public key is derived from the seed (RFC 8032 arithmetic on the twisted Edwards curve),
# so the key is real: ssh-keygen -y prints its public half, and it signs.
_P = 2**255 - 19
_D = -121665 * pow(121666, _P - 2, _P) % _P
_L_SQRT_M1 = pow(2, (_P - 1) // 4, _P)


def _x_of(y: int, sign: int) -> int:
    x2 = (y * y - 1) * pow(_D * y * y + 1, _P - 2, _P) % _P
    x = pow(x2, (_P + 3) // 8, _P)
    if (x * x - x2) % _P:
        x = x * _L_SQRT_M1 % _P
    return _P - x if x % 2 != sign else x


_BY = 4 * pow(5, _P - 2, _P) % _P
_BASE = (_x_of(_BY, 0), _BY, 1, _x_of(_BY, 0) * _BY % _P)  # extended coordinates X, Y, Z, T


def _add(p: tuple[int, int, int, int], q: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    a = (p[1] - p[0]) * (q[1] - q[0]) % _P
    b = (p[1] + p[0]) * (q[1] + q[0]) % _P
    c = 2 * p[3] * q[3] * _D % _P
    d = 2 * p[2] * q[2] % _P
    e, f, g, h = b - a, d - c, d + c, b + a
    return (e * f % _P, g * h % _P, f * g % _P, e * h % _P)


def ed25519_public(seed: bytes) -> bytes:
    """The public key of a 32-byte ed25519 seed."""
    digest = hashlib.sha512(seed).digest()
    scalar = int.from_bytes(digest[:32], "little") & ((1 << 254) - 8) | (1 << 254)
    result, addend = (0, 1, 1, 0), _BASE
    while scalar:
        if scalar & 1:
            result = _add(result, addend)
        addend = _add(addend, addend)
        scalar >>= 1
    inverse = pow(result[2], _P - 2, _P)
    x, y = result[0] * inverse % _P, result[1] * inverse % _P
    return (y | (x & 1) << 255).to_bytes(32, "little")


def _ssh_string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def openssh_ed25519(seed: bytes, comment: str) -> tuple[str, bytes]:
    """(the PEM-style OpenSSH private key file, its binary body), unencrypted."""
    public = ed25519_public(seed)
    key_type = _ssh_string(b"ssh-ed25519")
    check = secrets.token_bytes(4)
    private = (
        check
        + check
        + key_type
        + _ssh_string(public)
        + _ssh_string(seed + public)
        + _ssh_string(comment.encode())
    )
    private += bytes(range(1, 1 + (-len(private) % 8)))  # padding to the cipher block (8)
    body = (
        b"openssh-key-v1\0"
        + _ssh_string(b"none")
        + _ssh_string(b"none")
        + _ssh_string(b"")
        + struct.pack(">I", 1)
        + _ssh_string(key_type + _ssh_string(public))
        + _ssh_string(private)
    )
    text = base64.b64encode(body).decode()
    lines = [text[i : i + 70] for i in range(0, len(text), 70)]
    pem = "\n".join(
        ["-----BEGIN OPENSSH PRIVATE KEY-----", *lines, "-----END OPENSSH PRIVATE KEY-----"]
    )
    return pem + "\n", body


def _key_markers(body: bytes, *needles: bytes) -> tuple[str, ...]:
    """Runs of the key file's base64 text that encode only `needles` (the seed, the public
    key) and sit on one line of the file: what the file shows of its random parts."""
    text = base64.b64encode(body).decode()
    out: list[str] = []
    for needle in needles:
        start = body.index(needle)
        first = -(-start * 8 // 6)  # the first character made of the needle's bits only
        end = (start + len(needle)) * 8 // 6
        # cut at the file's line breaks (every 70 characters) and at + and /, which URL
        # encoding would change: keep the longest plain run
        pieces: list[str] = []
        for line_start in range(first - first % 70, end, 70):
            chunk = text[max(first, line_start) : min(end, line_start + 70)]
            pieces += re.findall(r"[A-Za-z0-9]+", chunk)
        best = max(pieces, key=len, default="")
        if len(best) >= MIN_MARKER:
            out.append(best)
    return tuple(out)


def make_canary(kind: str) -> Canary:
    """A new decoy of `kind` with fresh random values."""
    if kind not in BY_KIND:
        raise ValueError(f"unknown canary kind {kind!r} (known: {', '.join(CANARY_KINDS)})")
    path = BY_KIND[kind].path
    if kind == "aws":
        key_id = "AKIA" + _random(UPPER_DIGITS, 16)
        secret = _random(ALNUM, 40)
        content = (
            "[default]\n"
            f"aws_access_key_id = {key_id}\n"
            f"aws_secret_access_key = {secret}\n"
            "region = us-east-1\n"
        )
        return Canary(kind, path, content, (key_id, secret))
    if kind == "gh":
        token = "ghp_" + _random(ALNUM, 36)
        login = "deploy-" + _random(string.ascii_lowercase + string.digits, 6)
        content = (
            "github.com:\n"
            "    users:\n"
            f"        {login}:\n"
            f"            oauth_token: {token}\n"
            "    git_protocol: https\n"
            f"    user: {login}\n"
            f"    oauth_token: {token}\n"
        )
        return Canary(kind, path, content, (token,))
    if kind == "env":
        api_key = _random(ALNUM, 48)
        password = _random(ALNUM, 24)
        content = (
            "# production secrets: do not commit\n"
            "NODE_ENV=production\n"
            f"OPENAI_API_KEY=sk-proj-{api_key}\n"
            f"DATABASE_URL=postgres://app:{password}@db.internal:5432/app\n"
        )
        return Canary(kind, path, content, (api_key, password))
    while True:  # ssh; a key whose random parts show no long plain run is drawn again
        seed = secrets.token_bytes(32)
        pem, body = openssh_ed25519(seed, "deploy@ci-runner")
        found = _key_markers(body, seed, ed25519_public(seed))
        if len(found) == 2:
            return Canary(kind, path, pem, found)


def make_canaries(kinds: Iterable[str]) -> list[Canary]:
    return [make_canary(kind) for kind in kinds]


# ---------------------------------------------------------------------- markers
def _aligned(encode: Callable[[bytes], bytes], data: bytes, group: int, bits: int) -> list[str]:
    """The characters of `data` encoded at each of its `group` possible byte offsets in a
    longer encoded stream (base64: groups of 3 bytes, 6 bits a character; base32: 5 bytes,
    5 bits), keeping only characters made of `data`'s bits alone."""
    out = []
    for offset in range(group):
        text = encode(bytes(offset) + data).decode().rstrip("=")
        first = -(-offset * 8 // bits)
        last = (offset + len(data)) * 8 // bits
        out.append(text[first:last])
    return out


def markers(values: Iterable[str]) -> dict[bytes, str]:
    """Distinctive substrings to look for on the wire (lowercase bytes) -> how the value
    was encoded: raw, hex, base64 or base32."""
    found: dict[bytes, str] = {}
    for value in values:
        raw = value.encode()
        forms = [(value, "raw"), (binascii.hexlify(raw).decode(), "hex")]
        forms += [(text, "base64") for text in _aligned(base64.b64encode, raw, 3, 6)]
        forms += [(text, "base32") for text in _aligned(base64.b32encode, raw, 5, 5)]
        for text, encoding in forms:
            if len(text) >= MIN_MARKER:
                found.setdefault(text.lower().encode(), encoding)
    return found


@dataclass(frozen=True)
class Hit:
    kind: str
    encoding: str


def find(index: dict[bytes, Hit], data: bytes) -> Hit | None:
    """The first canary whose marker is in `data` (compared lowercased)."""
    if not data:
        return None
    lowered = data.lower()
    for marker, hit in index.items():
        if marker in lowered:
            return hit
    return None


# ---------------------------------------------------------------------- registry
def registry_dir(home: Path) -> Path:
    return home / REGISTRY_DIR


def registry_path(home: Path, container: str) -> Path:
    return registry_dir(home) / f"{container}.json"


def registry_text(container: str, instance: str, canaries: Iterable[Canary]) -> str:
    entries = [{"kind": c.kind, "path": c.path, "values": list(c.values)} for c in canaries]
    record = {"version": 1, "container": container, "instance": instance, "canaries": entries}
    return json.dumps(record, indent=2) + "\n"


@dataclass(frozen=True)
class Registry:
    container: str
    instance: str  # the container's volatile.uuid when the canaries were planted
    entries: tuple[tuple[str, str, tuple[str, ...]], ...]  # kind, path, values

    def index(self) -> dict[bytes, Hit]:
        out: dict[bytes, Hit] = {}
        for kind, _path, values in self.entries:
            for marker, encoding in markers(values).items():
                out.setdefault(marker, Hit(kind, encoding))
        return out


def parse_registry(data: bytes) -> Registry:
    """A registry's content, every field checked. Raises ValueError saying what is wrong."""
    try:
        record = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ValueError("not JSON") from None
    if not isinstance(record, dict) or record.get("version") != 1:
        raise ValueError("not a version 1 canary registry")
    container, instance = record.get("container"), record.get("instance")
    if not isinstance(container, str) or not CONTAINER_RE.match(container):
        raise ValueError("no valid container name")
    if not isinstance(instance, str) or len(instance) > 64:
        raise ValueError("no valid instance id")
    entries = record.get("canaries")
    if not isinstance(entries, list) or len(entries) > len(CANARY_FILES):
        raise ValueError("canaries is not a list of at most one entry per kind")
    out = []
    for entry in entries:
        if not isinstance(entry, dict):
            raise ValueError("a canary entry is not a table")
        kind, values = entry.get("kind"), entry.get("values")
        if kind not in BY_KIND:
            raise ValueError(f"unknown canary kind {str(kind)[:20]!r}")
        if any(kind == seen[0] for seen in out):
            raise ValueError(f"{kind}: listed twice")
        if (
            not isinstance(values, list)
            or not 0 < len(values) <= MAX_VALUES
            or not all(isinstance(v, str) and VALUE_RE.match(v) for v in values)
        ):
            raise ValueError(f"{kind}: values must be 1-{MAX_VALUES} tokens of 16-200 characters")
        out.append((str(kind), BY_KIND[str(kind)].path, tuple(values)))
    return Registry(container, instance, tuple(out))


def read_registry(home: Path, container: str, owner: tuple[int, int] | None = None) -> Registry:
    """The container's registry as root may read it: no link followed anywhere under the
    COI home (nofollow), a regular file with one link owned by root or `owner`, at most
    REGISTRY_LIMIT bytes, never blocking on a FIFO. Raises OSError or ValueError."""
    if not CONTAINER_RE.match(container):
        raise ValueError(f"not a container name: {container[:80]!r}")
    with nofollow.directory(registry_dir(home)) as folder:
        fd = os.open(f"{container}.json", os.O_RDONLY | nofollow.FILE_FLAGS, dir_fd=folder)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        if info.st_nlink != 1:
            raise OSError(errno.EMLINK, "a hard link to another file")
        allowed = {0, os.geteuid()} | ({owner[0]} if owner is not None else set())
        if info.st_uid not in allowed:
            raise OSError(errno.EPERM, f"owned by uid {info.st_uid}")
        if info.st_size > REGISTRY_LIMIT:
            raise OSError(errno.EFBIG, f"larger than {REGISTRY_LIMIT // 1024} KiB")
        data = os.read(fd, REGISTRY_LIMIT + 1)
    finally:
        os.close(fd)
    if len(data) > REGISTRY_LIMIT:
        raise OSError(errno.EFBIG, f"larger than {REGISTRY_LIMIT // 1024} KiB")
    registry = parse_registry(data)
    if registry.container != container:
        raise ValueError(f"written for {registry.container}, not {container}")
    return registry


def remove_registry(home: Path, container: str) -> None:
    """The session is over: its canaries are no longer watched (never follows a link)."""
    if CONTAINER_RE.match(container):
        with contextlib.suppress(OSError):
            nofollow.unlink(registry_dir(home), f"{container}.json")


# ---------------------------------------------------------------------- the wire
def segment(payload: bytes) -> tuple[str, bytes] | None:
    """(protocol, the data it carries) of an IPv4 TCP or UDP packet from NFLOG, or None."""
    if len(payload) < 20 or payload[0] >> 4 != 4:
        return None
    ihl = (payload[0] & 0x0F) * 4
    proto = payload[9]
    if proto == 6 and len(payload) >= ihl + 20:
        return "tcp", payload[ihl + (payload[ihl + 12] >> 4) * 4 :]
    if proto == 17 and len(payload) >= ihl + 8:
        return "udp", payload[ihl + 8 :]
    return None


def mid_stream(payload: bytes) -> bool:
    """A TCP segment other than a SYN: logged for the canary match only (the connection
    rules judged its SYN)."""
    if len(payload) < 20 or payload[0] >> 4 != 4 or payload[9] != 6:
        return False
    ihl = (payload[0] & 0x0F) * 4
    return len(payload) >= ihl + 14 and not payload[ihl + 13] & 0x02


@dataclass
class NetworkMatcher:
    """One watched container's canaries on the wire. The registry is read when first
    needed and looked for again (at most every RELOAD_SEC) while it is missing or names
    another instance (a slot started again before its session wrote the new one)."""

    home: Path
    container: str
    instance: str  # the watched container's volatile.uuid ("" when unknown)
    owner: tuple[int, int] | None = None
    say: Callable[[str], None] | None = None  # one line when a registry is refused
    index: dict[bytes, Hit] | None = None
    paths: dict[str, str] = field(default_factory=dict)
    tried: float = -1e9
    refused: str = ""

    def load(self, now: float) -> dict[bytes, Hit] | None:
        if self.index is not None or now - self.tried < RELOAD_SEC:
            return self.index
        self.tried = now
        try:
            registry = read_registry(self.home, self.container, self.owner)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            if reason != self.refused and self.say is not None:
                self.say(f"{self.container}: canary registry refused: {reason}")
            self.refused = reason
            return None
        if self.instance and registry.instance and registry.instance != self.instance:
            return None  # a previous container's of the same name
        self.paths = {kind: path for kind, path, _values in registry.entries}
        self.index = registry.index()
        return self.index

    def threats(self, pkt: Packet, payload: bytes, now: float | None = None) -> list[Threat]:
        """CRITICAL `canary.network` when the packet carries a canary's value: in a DNS
        question's name (dots removed), or in the TCP/UDP data NFLOG copied."""
        index = self.load(time.monotonic() if now is None else now)
        if not index:
            return []
        carried = segment(payload)
        if carried is None:
            return []
        proto, data = carried
        where = proto
        hit = None
        if proto == "udp" and pkt.dport == 53:
            where = "dns"
            hit = find(index, pkt.dns_name.replace(".", "").encode("ascii", "replace"))
        hit = hit or find(index, data)
        if hit is None:
            return []
        return [network_threat(hit, self.paths.get(hit.kind, ""), where, pkt)]


def network_threat(hit: Hit, path: str, where: str, pkt: Packet) -> Threat:
    title = BY_KIND[hit.kind].title
    remote = f"{pkt.dst}:{pkt.dport}"
    shown = {"raw": "", "hex": " (hex-encoded)", "base64": " (base64)", "base32": " (base32)"}
    evidence = {
        "canary": {
            "kind": hit.kind,
            "path": path,
            "where": where,
            "remote": remote,
            "encoding": hit.encoding,
        },
        "network": {
            "connection": {
                "protocol": pkt.proto,
                "local_addr": f"{pkt.src}:{pkt.sport}",
                "remote_addr": remote,
            },
            "remote_host": pkt.dst,
        },
    }
    return threat(
        "canary.network",
        "critical",
        "credential_access",
        "Canary credential sent over the network",
        f"The decoy {title} ({path or hit.kind}) went out{shown[hit.encoding]} in "
        f"{where.upper()} traffic to {remote}: something read it and is sending it away",
        evidence,
        f"{hit.kind}:{pkt.dst}",
    )
