"""Remote Incus servers and clusters, reached over HTTPS with a client certificate.

Remotes are kept in ~/.coi/remotes.toml (written by `coi remote add|remove`) and may also be
declared as `[[remotes]]` tables in the config files. The server is pinned by the SHA-256
fingerprint of its certificate (or verified against a CA file). `--remote NAME` (or
$COI_REMOTE) points every command at one; the default stays the local socket.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
import os
import ssl
import threading
import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlparse

# The [[remotes]] entry and its checks live in the config layer (the config loader validates
# [[remotes]] tables with them); re-exported here for the connection code and its callers.
from coi_tui.config.remotes import NAME_RE as NAME_RE
from coi_tui.config.remotes import Remote
from coi_tui.config.remotes import normalise_fingerprint as normalise_fingerprint
from coi_tui.config.remotes import remote_from_table as _from_table
from coi_tui.config.remotes import validate as validate
from coi_tui.config.settings import trusted_config_files
from coi_tui.core.errors import CoiError, UsageError
from coi_tui.core.fs import atomic_write
from coi_tui.core.paths import coi_home


def remotes_file() -> Path:
    return coi_home() / "remotes.toml"


def load_remotes(extra_files: list[Path] | None = None) -> dict[str, Remote]:
    """Remotes from ~/.coi/remotes.toml and any `[[remotes]]` in the given config files."""
    found: dict[str, Remote] = {}
    for path in [remotes_file(), *(extra_files or [])]:
        if not path.is_file():
            continue
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise CoiError(f"{path}: invalid TOML: {exc}") from None
        for table in data.get("remotes", []) or []:
            remote = _from_table(table, str(path))
            found[remote.name] = remote
    return found


def _config_files() -> list[Path]:
    """The user's config files only: a repository's .coi/config.toml must not redirect a
    remote (its sessions, credentials and prompts) to its own server."""

    return trusted_config_files()


def get_remote(name: str) -> Remote:
    remotes = load_remotes(_config_files())
    if name not in remotes:
        known = ", ".join(sorted(remotes)) or "none yet"
        raise CoiError(
            f"unknown remote '{name}' (configured: {known}); add one with "
            "'coi remote add NAME https://HOST:8443 --token TOKEN'"
        )
    return remotes[name]


def _toml_string(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def save_remotes(remotes: dict[str, Remote]) -> None:

    lines = ["# Managed by 'coi remote add|remove'.", ""]
    for remote in remotes.values():
        lines.append("[[remotes]]")
        for key, value in asdict(remote).items():
            if value:
                lines.append(f"{key} = {_toml_string(str(value))}")
        lines.append("")
    atomic_write(remotes_file(), "\n".join(lines))


# ---------------------------------------------------------------------- certificates
def ensure_client_certificate(cert: str, key: str) -> None:
    """Create a self-signed client certificate the first time one is needed."""
    if os.path.exists(cert) and os.path.exists(key):
        return
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    private = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"coi@{os.uname().nodename}")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .sign(private, hashes.SHA384())
    )
    Path(key).parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(
            private.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    Path(cert).write_bytes(certificate.public_bytes(serialization.Encoding.PEM))


def certificate_fingerprint(cert_pem_path: str) -> str:
    der = ssl.PEM_cert_to_DER_cert(Path(cert_pem_path).read_text())
    return hashlib.sha256(der).hexdigest()


@dataclass(frozen=True)
class TrustToken:
    client_name: str
    fingerprint: str
    addresses: list[str]
    secret: str
    raw: str  # the whole token: what the server wants back in `trust_token`


def decode_token(token: str) -> TrustToken:
    """An `incus config trust add` token: base64 JSON with the server's addresses and
    fingerprint, so `coi remote add NAME TOKEN` needs nothing else."""
    try:
        padded = token.strip() + "=" * (-len(token.strip()) % 4)
        data = json.loads(base64.b64decode(padded))
        return TrustToken(
            str(data.get("client_name", "")),
            str(data["fingerprint"]),
            [str(a) for a in data.get("addresses") or []],
            str(data["secret"]),
            token.strip(),
        )
    except (binascii.Error, ValueError, KeyError, TypeError):
        raise UsageError(
            "that is not an Incus trust token (create one on the server with "
            "'incus config trust add NAME')"
        ) from None


# ---------------------------------------------------------------------- the incus client's view
def server_cert_path(name: str) -> Path:
    return coi_home() / "servercerts" / f"{name}.crt"


def fetch_server_certificate(address: str, timeout: float = 10) -> tuple[str, str]:
    """(PEM, sha256 fingerprint) of the certificate a server presents; nothing is trusted yet."""
    parsed = urlparse(address)
    host, port = parsed.hostname or address, parsed.port or 8443
    try:
        pem = ssl.get_server_certificate((host, port), timeout=timeout)
    except OSError as exc:
        raise CoiError(f"cannot reach {address}: {exc.strerror or exc}") from None
    der = ssl.PEM_cert_to_DER_cert(pem)
    return pem, hashlib.sha256(der).hexdigest()


def incus_client_config(remote: Remote) -> Path:
    """A private INCUS_CONF directory so `incus exec REMOTE:NAME` (interactive sessions) works
    with the same certificates coi uses; regenerated on each use (it is tiny). One directory
    per remote, written atomically: the dashboard may open terminals on two remotes at once."""
    directory = coi_home() / "incus-client" / remote.name
    (directory / "servercerts").mkdir(parents=True, exist_ok=True)
    os.chmod(directory.parent, 0o700)
    os.chmod(directory, 0o700)
    cert, key = remote.client_files()
    for source, target in ((cert, "client.crt"), (key, "client.key")):
        link = directory / target
        if os.path.realpath(link) != os.path.realpath(source):
            temporary = directory / f".{target}.{os.getpid()}-{threading.get_ident()}"
            temporary.unlink(missing_ok=True)
            temporary.symlink_to(os.path.abspath(source))
            temporary.replace(link)

    pinned = server_cert_path(remote.name)
    if pinned.exists():
        atomic_write(directory / "servercerts" / f"{remote.name}.crt", pinned.read_text())
    atomic_write(
        directory / "config.yml",
        "default-remote: local\n"
        "remotes:\n"
        f"  {remote.name}:\n"
        f"    addr: {remote.address}\n"
        "    auth_type: tls\n"
        f"    project: {remote.project}\n"
        "    protocol: incus\n"
        "    public: false\n"
        "  local:\n"
        "    addr: unix://\n"
        "    public: false\n",
    )
    return directory
