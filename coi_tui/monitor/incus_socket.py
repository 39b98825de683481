"""The root daemon's Incus client: the few REST calls the monitor makes, over the local unix
socket with http.client. Standard library only, like the rest of the daemon: the user-side
client (`coi_tui/incus/client.py`) brings remotes, TLS, pylxd for events and the CLI's
settings, none of which a root process should load.

The daemon lists instances, reads one's config and state, reads the bridge, freezes, tags
and force-stops. Nothing here deletes or saves: the user's supervisor does that as the user.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

DEFAULT_SOCKET = "/var/lib/incus/unix.socket"
API = "/1.0"
TIMEOUT = 30.0  # a call Incus does not answer within this is a failure, not a hang


class IncusFailed(Exception):
    """A call failed: the socket, the HTTP exchange or an error Incus reported."""


class NotFound(IncusFailed):
    """The instance or network does not exist."""


def socket_path() -> str:
    """$INCUS_SOCKET, then $INCUS_DIR/unix.socket, then the default (as the user side)."""
    if os.environ.get("INCUS_SOCKET"):
        return os.environ["INCUS_SOCKET"]
    if os.environ.get("INCUS_DIR"):
        return os.path.join(os.environ["INCUS_DIR"], "unix.socket")
    return DEFAULT_SOCKET


@dataclass
class Listed:
    """One instance as listed: its name, settled status and config."""

    name: str
    status: str
    config: dict[str, str] = field(default_factory=dict)


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("incus", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class IncusSocket:
    """One local Incus daemon, default project. Thread-safe: a fresh connection per call."""

    def __init__(self, path: str | None = None) -> None:
        self.path = path or socket_path()

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """The call's metadata; an async operation is waited for."""
        payload = self._exchange(method, path, body)
        if payload.get("type") == "async":
            operation = str(payload.get("operation", ""))
            result = self._exchange("GET", f"{operation}/wait?timeout={int(TIMEOUT)}")
            meta = result.get("metadata") or {}
            if meta.get("status") != "Success":
                raise IncusFailed(str(meta.get("err") or meta.get("status") or "failed"))
            return meta
        return payload.get("metadata")

    def _exchange(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        conn = _UnixConnection(self.path, TIMEOUT)
        headers = {"Content-Type": "application/json"} if body is not None else {}
        try:
            data = json.dumps(body).encode() if body is not None else None
            conn.request(method, path, body=data, headers=headers)
            reply = conn.getresponse()
            raw = reply.read()
            status = reply.status
        except OSError as exc:
            raise IncusFailed(f"{self.path}: {exc}") from None
        finally:
            conn.close()
        try:
            payload = json.loads(raw)
        except ValueError:
            raise IncusFailed(f"{path}: an answer that is not JSON") from None
        if not isinstance(payload, dict):
            raise IncusFailed(f"{path}: an answer that is not an object")
        if status >= 400 or payload.get("type") == "error":
            code = int(payload.get("error_code") or status)
            message = str(payload.get("error") or f"HTTP {status}")
            raise (NotFound if code == 404 else IncusFailed)(f"{path}: {message}")
        return payload

    # ------------------------------------------------------------------ reads
    def list_instances(self, prefix: str) -> list[Listed]:
        listed = self.request("GET", f"{API}/instances?recursion=1") or []
        out = []
        for item in listed:
            name = str(item.get("name", ""))
            if not name.startswith(prefix):
                continue
            try:
                status = self._settled(name, item)
            except NotFound:
                status = str(item.get("status", ""))  # deleted meanwhile: as listed
            out.append(Listed(name, status, dict(item.get("config") or {})))
        return out

    def instance_config(self, name: str) -> dict[str, str]:
        data = self.request("GET", f"{API}/instances/{quote(name)}") or {}
        return dict(data.get("config") or {})

    def instance_state(self, name: str) -> dict[str, Any]:
        return dict(self.request("GET", f"{API}/instances/{quote(name)}/state") or {})

    def status(self, name: str) -> str:
        return self._settled(name, self.request("GET", f"{API}/instances/{quote(name)}") or {})

    def _settled(self, name: str, data: dict[str, Any]) -> str:
        """The record's status, except mid-shutdown from inside, where Incus says 'Stopped'
        for a moment before its power record is written (as the user-side client)."""
        status = str(data.get("status", ""))
        config = data.get("config") or {}
        if status != "Stopped" or config.get("volatile.last_state.power") != "RUNNING":
            return status
        try:
            state = self.instance_state(name)
        except NotFound:
            raise
        except IncusFailed:
            return "Stopping"
        return "Stopped" if state.get("status") == "Stopped" else "Stopping"

    def network_config(self, name: str) -> dict[str, str]:
        """A network's config ({} when it does not exist)."""
        try:
            data = self.request("GET", f"{API}/networks/{quote(name)}") or {}
        except NotFound:
            return {}
        return dict(data.get("config") or {})

    # ------------------------------------------------------------------ actions
    def freeze(self, name: str) -> None:
        self._state(name, {"action": "freeze", "timeout": -1})

    def force_stop(self, name: str) -> None:
        self._state(name, {"action": "stop", "force": True, "timeout": -1})

    def tag(self, name: str, key: str, value: str) -> None:
        """Set one `user.*` config key (PATCH merges it into the instance's config)."""
        self.request("PATCH", f"{API}/instances/{quote(name)}", {"config": {key: value}})

    def _state(self, name: str, body: dict[str, Any]) -> None:
        self.request("PUT", f"{API}/instances/{quote(name)}/state", body)
