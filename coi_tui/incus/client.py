"""A small typed layer over the Incus REST API (no UI here).

REST calls go straight to the documented endpoints over the unix socket with http.client, so
every error becomes one clear line and a CLI call does not pay for importing requests and pylxd
(about 0.3 s). pylxd provides the events websocket. Interactive and streaming exec go
through the `incus` client binary, which already does terminals, signals and stdin properly
(see `exec_stream`).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from coi_tui.core.timing import span
from coi_tui.incus.errors import (
    Conflict,
    DaemonUnavailable,
    ImageNotFound,
    IncusError,
    InstanceNotFound,
    NotFound,
    RemoteUnavailable,
    SocketPermissionDenied,
)
from coi_tui.incus.remotes import Remote, get_remote, incus_client_config

DEFAULT_SOCKET = "/var/lib/incus/unix.socket"
# Incus sometimes fails to start an exec ("Failed to retrieve PID of executing child process")
# while a container settles or the host is busy; it works moments later. ~10 s of backoff.
EXEC_RETRY_DELAYS = (0.2, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.0, 2.0)
API = "/1.0"


def default_socket_path() -> str:
    """The socket coi talks to: $INCUS_SOCKET, then $INCUS_DIR/unix.socket, then the default."""
    if os.environ.get("INCUS_SOCKET"):
        return os.environ["INCUS_SOCKET"]
    if os.environ.get("INCUS_DIR"):
        return os.path.join(os.environ["INCUS_DIR"], "unix.socket")
    return DEFAULT_SOCKET


@dataclass(frozen=True)
class ExecResult:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


@dataclass
class Instance:
    """What coi needs to know about one instance (from `GET /1.0/instances?recursion=1|2`)."""

    name: str
    status: str
    created_at: str = ""
    config: dict[str, str] = field(default_factory=dict)
    devices: dict[str, dict[str, str]] = field(default_factory=dict)
    expanded_devices: dict[str, dict[str, str]] = field(default_factory=dict)
    expanded_config: dict[str, str] = field(default_factory=dict)
    profiles: list[str] = field(default_factory=list)
    state: dict[str, Any] = field(default_factory=dict)
    ephemeral: bool = False
    last_used_at: str = ""  # when it last started

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> Instance:
        return cls(
            name=data["name"],
            status=data.get("status", ""),
            created_at=data.get("created_at", ""),
            config=dict(data.get("config") or {}),
            devices=dict(data.get("devices") or {}),
            expanded_devices=dict(data.get("expanded_devices") or {}),
            expanded_config=dict(data.get("expanded_config") or {}),
            profiles=list(data.get("profiles") or []),
            state=dict(data.get("state") or {}),
            ephemeral=bool(data.get("ephemeral", False)),
            last_used_at=str(data.get("last_used_at") or ""),
        )

    @property
    def running(self) -> bool:
        return self.status == "Running"

    @property
    def frozen(self) -> bool:
        return self.status == "Frozen"

    @property
    def ipv4(self) -> str:
        """The address on eth0 (coi's NIC); inner bridges such as Docker's docker0 come last."""
        networks = self.state.get("network") or {}
        order = sorted((n for n in networks if n != "lo"), key=lambda n: (n != "eth0", n))
        for nic in order:
            info = networks[nic]
            for addr in info.get("addresses") or []:
                if addr.get("family") == "inet" and addr.get("scope") == "global":
                    return str(addr.get("address", ""))
        return ""

    @property
    def pid(self) -> int:
        return int(self.state.get("pid") or 0)


@dataclass(frozen=True)
class Image:
    fingerprint: str
    aliases: list[str]
    properties: dict[str, str]
    size: int
    created_at: str
    uploaded_at: str

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> Image:
        return cls(
            fingerprint=data.get("fingerprint", ""),
            aliases=[a["name"] for a in data.get("aliases") or []],
            properties=dict(data.get("properties") or {}),
            size=int(data.get("size") or 0),
            created_at=data.get("created_at", ""),
            uploaded_at=data.get("uploaded_at", ""),
        )


def _run_client(cmd: list[str], env: dict[str, str], last_try: bool) -> tuple[int, bool]:
    """Run the `incus` client with our stdin/stdout; pass its stderr through, except the
    transient start failure while a retry is still possible. Returns (exit code, whether the
    command failed before it started)."""
    with span("exec", " ".join(cmd[:3]) + " ..."):
        return _run_client_inner(cmd, env, last_try)


def _run_client_inner(cmd: list[str], env: dict[str, str], last_try: bool) -> tuple[int, bool]:
    process = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE)
    assert process.stderr is not None
    transient = False
    try:
        for raw in process.stderr:
            line = raw.decode("utf-8", "replace")
            if "Failed to retrieve PID of executing child process" in line:
                transient = True
                if not last_try:
                    continue
            sys.stderr.write(line)
            sys.stderr.flush()
        code = process.wait()
    except BaseException:
        process.kill()
        process.wait()
        raise
    return code, transient and code != 0


@dataclass(frozen=True)
class PullLimits:
    """Bounds on copying a directory tree out of an instance (pull_tree): its content is the
    agent's, so its size, shape and the time it takes are all the agent's choice."""

    max_file: int = 1 << 30  # bytes of one file
    max_total: int = 4 << 30  # bytes in all
    max_entries: int = 100_000  # paths looked at (files, directories, links...)
    max_depth: int = 64  # directory levels below the root
    max_seconds: float = 600.0  # the whole copy
    request_timeout: float = 30.0  # one request to Incus
    max_messages: int = 20  # 'not saved' lines; the rest are counted


def _size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


class _LeftOut:
    """The 'not saved' lines of one pull: the first few said one by one, the rest counted.
    Paths come from the instance, so control characters are replaced before they are shown."""

    def __init__(self, say: Callable[[str], None] | None, limit: int) -> None:
        self.say = say
        self.limit = limit
        self.count = 0

    def add(self, line: str) -> None:
        self.count += 1
        if self.say is not None and self.count <= self.limit:
            clean = "".join(c if c.isprintable() else "?" for c in line)
            self.say(clean if len(clean) <= 300 else clean[:297] + "...")

    def finish(self) -> None:
        if self.say is not None and self.count > self.limit:
            self.say(f"... and {self.count - self.limit} more paths not saved")


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over the daemon's unix socket."""

    def __init__(self, socket_path: str, timeout: float | None = None) -> None:
        super().__init__("incus", timeout=timeout)
        self.socket_path = socket_path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if self.timeout is not None:
            sock.settimeout(self.timeout)
        sock.connect(self.socket_path)
        self.sock = sock


@dataclass
class Response:
    """The parts of an HTTP reply the adapter uses (raw=True callers get this)."""

    status_code: int
    reason: str
    headers: Any  # http.client.HTTPMessage: case-insensitive get()
    content: bytes

    def json(self) -> Any:
        return json.loads(self.content.decode("utf-8"))


class Incus:
    """One connection to one Incus daemon (local socket by default)."""

    def __init__(
        self,
        socket_path: str | None = None,
        project: str = "default",
        remote: Remote | str | None = None,
        target: str = "",
    ) -> None:
        """The local daemon by default, or a remote (name or Remote) over HTTPS. `target`:
        the cluster member new instances go to (default: the remote's, else Incus's choice)."""
        if isinstance(remote, str):
            remote = get_remote(remote)
        self.remote: Remote | None = remote
        self.target = target
        self.socket_path = socket_path or default_socket_path()
        self.project = remote.project if remote is not None and project == "default" else project
        self._client: Any = None
        self._server_info: dict[str, Any] | None = None
        self._lock = threading.Lock()
        # Bound on reaching a remote (TCP + TLS handshake); reads keep their own timeout.
        # The dashboard sets it short so a dead remote fails fast.
        self.connect_timeout: float | None = None

    @property
    def where(self) -> str:
        """Where the daemon is, for messages: the socket path or 'remote NAME (address)'."""
        if self.remote is not None:
            return f"remote '{self.remote.name}' ({self.remote.address})"
        return self.socket_path

    # ------------------------------------------------------------------ transport
    def _check_socket(self) -> None:
        if not os.path.exists(self.socket_path):
            raise DaemonUnavailable(self.socket_path, "socket missing")
        if not os.access(self.socket_path, os.R_OK | os.W_OK):
            raise SocketPermissionDenied(self.socket_path)

    def _connect(self) -> Any:
        """The pylxd client: only the events websocket needs it (and its import is slow)."""
        with self._lock:
            if self._client is not None:
                return self._client
            self._check_socket()
            import pylxd
            from pylxd import exceptions as pylxd_exceptions

            try:
                self._client = pylxd.Client(endpoint=self.socket_path, project=self.project)
            except pylxd_exceptions.ClientConnectionFailed as exc:
                raise self._connection_error(exc) from None
            return self._client

    def _connection_error(self, exc: BaseException) -> IncusError:
        text = str(exc)
        if isinstance(exc, PermissionError) or "Permission denied" in text or "[Errno 13]" in text:
            return SocketPermissionDenied(self.socket_path)
        refused = isinstance(exc, ConnectionRefusedError) or "refused" in text.lower()
        detail = "connection refused" if refused else text.splitlines()[0][:120] if text else ""
        return DaemonUnavailable(self.socket_path, detail)

    @property
    def server_info(self) -> dict[str, Any]:
        if self._server_info is None:
            self._server_info = dict(self.request("GET", API) or {})
        return self._server_info

    def ping(self) -> str:
        """Connect and return the server version (raises a clear error if it cannot)."""
        info = self.server_info
        if self.remote is not None and info.get("auth") != "trusted":
            self._server_info = None
            raise IncusError(
                f"{self.where} does not trust this machine's client certificate: create a "
                f"token there ('incus config trust add coi') and run 'coi remote add "
                f"{self.remote.name} TOKEN'"
            )
        return str(info.get("environment", {}).get("server_version", "?"))

    def _send(
        self, method: str, target: str, body: Any, headers: dict[str, str], timeout: float | None
    ) -> Response:
        """One HTTP exchange on a fresh connection (cheap, and thread-safe)."""
        if self.remote is not None:
            conn: http.client.HTTPConnection = self._https_connection(timeout)
        else:
            self._check_socket()
            conn = UnixHTTPConnection(self.socket_path, timeout=timeout)
        try:
            if hasattr(body, "read") and "Content-Length" not in headers:
                headers["Content-Length"] = str(os.fstat(body.fileno()).st_size)
            conn.request(method, target, body=body, headers=headers)
            reply = conn.getresponse()
            return Response(reply.status, reply.reason, reply.headers, reply.read())
        except OSError as exc:
            if self.remote is not None:
                raise self._remote_error(exc) from None
            raise self._connection_error(exc) from None
        finally:
            conn.close()

    def _https_connection(self, timeout: float | None) -> http.client.HTTPSConnection:
        """TLS with our client certificate; the server is pinned by fingerprint (or a CA)."""
        assert self.remote is not None
        remote = self.remote
        cert, key = remote.client_files()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        if remote.ca:
            context.load_verify_locations(remote.ca)
        else:
            context.verify_mode = ssl.CERT_NONE  # pinned below, by fingerprint
        try:
            context.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError):
            raise IncusError(
                f"client certificate {cert} for remote '{remote.name}' is missing "
                "or unreadable: add the remote again with 'coi remote add'"
            ) from None
        read_timeout = 10 if timeout is None else timeout
        conn = http.client.HTTPSConnection(
            remote.host, remote.port, context=context, timeout=self.connect_timeout or read_timeout
        )
        try:
            conn.connect()
        except OSError as exc:
            conn.close()
            raise self._remote_error(exc) from None
        conn.sock.settimeout(read_timeout)
        if remote.fingerprint:
            der = conn.sock.getpeercert(binary_form=True) or b""
            actual = hashlib.sha256(der).hexdigest()
            if actual != remote.fingerprint:
                conn.close()
                raise IncusError(
                    f"server certificate of remote '{remote.name}' does not match its pinned "
                    f"fingerprint (expected {remote.fingerprint[:16]}..., got {actual[:16]}...): "
                    "refusing to connect. If the server was reinstalled on purpose, run "
                    f"'coi remote remove {remote.name}' and add it again"
                )
        return conn

    def _remote_error(self, exc: BaseException) -> IncusError:
        assert self.remote is not None
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return RemoteUnavailable(self.where, why.splitlines()[0][:120] if why else "")

    def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: Mapping[str, Any] | None = None,
        data: Any = None,
        headers: Mapping[str, str] | None = None,
        wait: bool = True,
        timeout: float | None = None,
        raw: bool = False,
    ) -> Any:
        """Call the REST API; wait for background operations; map failures to IncusError."""
        query = dict(params or {})
        if self.project and self.project != "default":
            query.setdefault("project", self.project)
        target = path + ("?" + urlencode(query) if query else "")
        send_headers = dict(headers or {})
        payload_body: Any = data
        if data is None and body is not None:
            payload_body = json.dumps(body).encode()
            send_headers.setdefault("Content-Type", "application/json")
        with span("incus", f"{method} {path}"):
            response = self._send(method, target, payload_body, send_headers, timeout)
        if raw:
            if response.status_code >= 400:
                raise self._api_error(response, path)
            return response
        try:
            payload = response.json()
        except ValueError:
            raise IncusError(f"Incus answered {path} with something that is not JSON") from None
        if response.status_code >= 400 or payload.get("type") == "error":
            raise self._api_error(response, path, payload)
        if payload.get("type") == "async":
            operation = payload.get("operation", "")
            if not wait:
                return payload.get("metadata") or {}
            return self.wait_operation(operation, timeout=timeout)
        return payload.get("metadata")

    def wait_operation(self, operation: str, timeout: float | None = None) -> dict[str, Any]:
        params = {"timeout": int(timeout)} if timeout else {"timeout": -1}
        result = self.request("GET", f"{operation}/wait", params=params)
        if result.get("status") != "Success":
            err = result.get("err") or result.get("status") or "operation failed"
            raise IncusError(f"Incus operation failed: {err}")
        return result

    @staticmethod
    def _api_error(
        response: Any, path: str, payload: Mapping[str, Any] | None = None
    ) -> IncusError:
        if payload is None:
            try:
                payload = response.json()
            except ValueError:
                payload = {}
        data: Mapping[str, Any] = payload or {}  # a body of JSON null too
        message = str(data.get("error") or response.reason or "unknown error")
        code = int(data.get("error_code") or response.status_code)
        if code == 404:
            return NotFound(f"{path.rsplit('/', 1)[-1] or path}: {message}")
        if code == 409:
            return Conflict(message)
        if code == 403:
            return IncusError(f"Incus refused {path}: {message}")
        return IncusError(message)

    # ------------------------------------------------------------------ instances
    def list_instances(
        self,
        prefix: str = "",
        with_state: bool = False,
        addresses: bool = False,
        running_state: bool = False,
    ) -> list[Instance]:
        """Instances whose name starts with prefix. with_state: full state (CPU, memory, disk:
        ~7 ms per instance in Incus, even stopped ones). running_state: the same, for the
        running and frozen ones only, fetched in parallel. addresses: only the running ones'
        IPv4, from their bridges' DHCP leases (one call per bridge), which is what a listing
        needs at a fraction of the cost."""
        recursion = 2 if with_state else 1
        listed = self.request("GET", f"{API}/instances", params={"recursion": recursion}) or []
        items = [i for i in listed if i["name"].startswith(prefix)]
        instances = [Instance.from_api(i) for i in items]
        for instance, item in zip(instances, items, strict=True):
            with contextlib.suppress(InstanceNotFound):  # deleted meanwhile: as listed
                instance.status = self._settled(instance.name, item)
        if with_state:
            return instances
        if running_state:
            self._fill_states([i for i in instances if i.status in ("Running", "Frozen")])
        elif addresses:
            self._fill_addresses([i for i in instances if i.running])
        return instances

    def _fill_states(self, instances: list[Instance]) -> None:
        from concurrent.futures import ThreadPoolExecutor

        def fetch(instance: Instance) -> None:
            with contextlib.suppress(IncusError):  # stopping right now: no state this time
                instance.state = self.instance_state(instance.name)

        if len(instances) <= 1:
            for instance in instances:
                fetch(instance)
            return
        with ThreadPoolExecutor(max_workers=min(4, len(instances))) as pool:
            list(pool.map(fetch, instances))

    def _fill_addresses(self, running: list[Instance]) -> None:
        by_network: dict[str, list[Instance]] = {}
        for instance in running:
            network = (instance.expanded_devices.get("eth0") or {}).get("network", "")
            by_network.setdefault(network, []).append(instance)
        for network, members in by_network.items():
            leases: dict[str, str] = {}
            if network:
                with contextlib.suppress(IncusError):
                    for lease in (
                        self.request("GET", f"{API}/networks/{quote(network)}/leases") or []
                    ):
                        address = str(lease.get("address", ""))
                        if "." in address:
                            leases[str(lease.get("hwaddr", "")).lower()] = address
            for instance in members:
                address = leases.get(instance.config.get("volatile.eth0.hwaddr", "").lower())
                if address:
                    instance.state = {
                        "network": {
                            "eth0": {
                                "addresses": [
                                    {"family": "inet", "scope": "global", "address": address}
                                ]
                            }
                        }
                    }
                    continue
                with contextlib.suppress(IncusError):  # not leased here: ask the instance
                    instance.state = self.instance_state(instance.name)

    def get_instance(self, name: str, with_state: bool = False) -> Instance:
        try:
            data = self.request("GET", f"{API}/instances/{quote(name)}")
        except NotFound:
            raise InstanceNotFound(name) from None
        instance = Instance.from_api(data)
        instance.status = self._settled(name, data)
        if with_state:
            instance.state = self.instance_state(name)
        return instance

    def instance_exists(self, name: str) -> bool:
        try:
            self.request("GET", f"{API}/instances/{quote(name)}")
        except NotFound:
            return False
        return True

    def instance_state(self, name: str) -> dict[str, Any]:
        try:
            return dict(self.request("GET", f"{API}/instances/{quote(name)}/state") or {})
        except NotFound:
            raise InstanceNotFound(name) from None

    def status(self, name: str) -> str:
        """'Running', 'Frozen', 'Stopped' (settled: see _settled), 'Stopping', ..."""
        # The instance record first: /state needs the init PID and fails mid-shutdown.
        try:
            data = self.request("GET", f"{API}/instances/{quote(name)}")
        except NotFound:
            raise InstanceNotFound(name) from None
        return self._settled(name, data)

    def _settled(self, name: str, data: Mapping[str, Any]) -> str:
        """The record's status, except that it says 'Stopped' for a moment in the middle of a
        shutdown from inside, then 'Running' again, then 'Stopped' (seen under load; a caller
        that believed the first one finalized a container that was still running). Incus
        records the stop itself (volatile.last_state.power) once it is over; until then, and
        while /state fails for want of an init PID, the container is 'Stopping'."""
        status = str(data.get("status", ""))
        config = data.get("config") or {}
        if status != "Stopped" or config.get("volatile.last_state.power") != "RUNNING":
            return status
        try:  # the power record can be stale (a host that went down): ask /state
            state = self.request("GET", f"{API}/instances/{quote(name)}/state") or {}
        except NotFound:
            raise InstanceNotFound(name) from None
        except IncusError:
            return "Stopping"
        return "Stopped" if state.get("status") == "Stopped" else "Stopping"

    def create_instance(
        self,
        name: str,
        image_alias: str,
        *,
        config: Mapping[str, str] | None = None,
        devices: Mapping[str, Mapping[str, str]] | None = None,
        profiles: Sequence[str] = ("default",),
        ephemeral: bool = False,
        start: bool = False,
        target: str = "",
    ) -> None:
        """Create an instance; on a cluster, `target` (or this client's, or the remote's)
        picks the member, else Incus places it."""
        self.require_image(image_alias)
        body = {
            "name": name,
            "type": "container",
            "source": {"type": "image", "alias": image_alias},
            "config": dict(config or {}),
            "devices": {k: dict(v) for k, v in (devices or {}).items()},
            "profiles": list(profiles),
            "ephemeral": ephemeral,
            "start": start,
        }
        member = target or self.target or (self.remote.target if self.remote is not None else "")
        if member:
            self.require_cluster()
        params = {"target": member} if member else None
        try:
            self.request("POST", f"{API}/instances", body=body, params=params)
        except Conflict as exc:
            raise Conflict(f"container '{name}' already exists ({exc})") from None

    def require_cluster(self) -> None:
        """--target (or a remote's `target`) only means something on a cluster."""
        if not self.server_info.get("environment", {}).get("server_clustered"):
            where = self.remote.name if self.remote is not None else "local"
            raise IncusError(f"--target needs a clustered Incus server; '{where}' is not clustered")

    def _set_state(self, name: str, action: str, *, force: bool = False, timeout: int = -1) -> None:
        body = {"action": action, "force": force, "timeout": timeout}
        try:
            self.request("PUT", f"{API}/instances/{quote(name)}/state", body=body)
        except NotFound:
            raise InstanceNotFound(name) from None

    def start(self, name: str) -> None:
        for delay in (*EXEC_RETRY_DELAYS[:4], None):
            try:
                self._set_state(name, "start")
                return
            except IncusError as exc:
                # The same transient Incus failure as exec (see EXEC_RETRY_DELAYS); a start
                # that failed that way leaves the instance stopped and can simply be retried.
                if (
                    delay is None
                    or "retrieve PID" not in str(exc)
                    or self.status(name) != "Stopped"
                ):
                    raise
                time.sleep(delay)

    def stop(self, name: str, *, timeout: int = 30, force: bool = False) -> None:
        """Graceful stop within `timeout` seconds, then a forced one."""
        if force:
            self._set_state(name, "stop", force=True)
            return
        try:
            self._set_state(name, "stop", timeout=timeout)
        except InstanceNotFound:
            raise
        except IncusError:
            if self.status(name) != "Stopped":
                try:
                    self._set_state(name, "stop", force=True)
                except IncusError:
                    # it stopped on its own between our look and the forced stop
                    if self.status(name) != "Stopped":
                        raise

    def freeze(self, name: str) -> None:
        self._set_state(name, "freeze")

    def unfreeze(self, name: str) -> None:
        self._set_state(name, "unfreeze")

    def delete_instance(self, name: str, *, force: bool = False) -> None:
        """Delete; with force, a running instance is stopped first. Missing is an error."""
        if force:
            status = self.status(name)
            if status in ("Running", "Frozen"):
                self._set_state(name, "stop", force=True)
            elif status != "Stopped":
                # "Stopping" also follows a start that failed half-way: stop it for good
                with contextlib.suppress(IncusError):
                    self._set_state(name, "stop", force=True)
        try:
            self.request("DELETE", f"{API}/instances/{quote(name)}")
        except NotFound:
            raise InstanceNotFound(name) from None

    def update_instance(
        self,
        name: str,
        *,
        config: Mapping[str, str | None] | None = None,
        devices: Mapping[str, Mapping[str, str] | None] | None = None,
    ) -> None:
        """Set (value) or unset (None) config keys and devices in one PUT."""
        current = self.request("GET", f"{API}/instances/{quote(name)}")
        new_config = dict(current.get("config") or {})
        for key, value in (config or {}).items():
            if value is None:
                new_config.pop(key, None)
            else:
                new_config[key] = value
        new_devices = dict(current.get("devices") or {})
        for dev, spec in (devices or {}).items():
            if spec is None:
                new_devices.pop(dev, None)
            else:
                new_devices[dev] = dict(spec)
        body = {
            "config": new_config,
            "devices": new_devices,
            "profiles": current.get("profiles") or [],
            "ephemeral": current.get("ephemeral", False),
            "description": current.get("description", ""),
            "architecture": current.get("architecture"),
        }
        self.request("PUT", f"{API}/instances/{quote(name)}", body=body)

    def set_config(self, name: str, key: str, value: str | None) -> None:
        self.update_instance(name, config={key: value})

    def add_device(self, name: str, device: str, spec: Mapping[str, str]) -> None:
        self.update_instance(name, devices={device: spec})

    def remove_device(self, name: str, device: str) -> None:
        self.update_instance(name, devices={device: None})

    # ------------------------------------------------------------------ exec
    def exec_capture(
        self,
        name: str,
        argv: Sequence[str],
        *,
        user: int = 0,
        group: int | None = None,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> ExecResult:
        """Run a command to completion and return its exit code and output."""
        body: dict[str, Any] = {
            "command": list(argv),
            "environment": dict(env or {}),
            "wait-for-websocket": False,
            "interactive": False,
            "record-output": True,
            "user": user,
            "group": user if group is None else group,
        }
        if cwd:
            body["cwd"] = cwd
        for delay in (*EXEC_RETRY_DELAYS, None):
            try:
                result = self._exec_operation(name, body, timeout)
                break
            except NotFound:
                raise InstanceNotFound(name) from None
            except IncusError as exc:
                # Incus races its own init tracking just after a start, or under load; the
                # command never started, and a moment later it works.
                if "retrieve PID" not in str(exc) or delay is None:
                    raise
                time.sleep(delay)
        meta = result.get("metadata") or {}
        outputs = meta.get("output") or {}
        streams: dict[str, str] = {}
        for fd, log_path in outputs.items():
            response = self.request("GET", log_path, raw=True)
            streams[str(fd)] = response.content.decode("utf-8", errors="replace")
            with contextlib.suppress(IncusError):
                self.request("DELETE", log_path, raw=True)
        return ExecResult(int(meta.get("return", -1)), streams.get("1", ""), streams.get("2", ""))

    def _exec_operation(
        self, name: str, body: dict[str, Any], timeout: float | None
    ) -> dict[str, Any]:
        """Start an exec and wait for it; the failure to start surfaces in either step."""
        op = self.request("POST", f"{API}/instances/{quote(name)}/exec", body=body, wait=False)
        result = self.request(
            "GET",
            f"{API}/operations/{op.get('id', '')}/wait",
            params={"timeout": -1 if timeout is None else int(timeout)},
        )
        if result.get("status") != "Success":
            raise IncusError(
                f"exec in '{name}' failed: {result.get('err') or result.get('status')}"
            )
        return dict(result)

    def incus_cli(self) -> str:
        binary = shutil.which("incus")
        if not binary:
            raise IncusError("the 'incus' client is not installed: install the incus package")
        return binary

    def cli_env(self) -> dict[str, str]:
        """Environment for the `incus` client: our socket, or a generated client config that
        knows the remote (its address, our client certificate, its pinned server certificate)."""
        env = dict(os.environ)
        if self.remote is not None:
            env["INCUS_CONF"] = str(incus_client_config(self.remote))
        else:
            env["INCUS_SOCKET"] = self.socket_path
        return env

    def exec_argv(
        self,
        name: str,
        argv: Sequence[str],
        *,
        user: int = 0,
        group: int | None = None,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        tty: bool | None = None,
    ) -> list[str]:
        """The `incus exec` command line that runs argv in the instance (run it with
        `cli_env()`)."""
        cmd = [
            self.incus_cli(),
            "exec",
            f"{self.remote.name}:{name}" if self.remote is not None else name,
            "--user",
            str(user),
            "--group",
            str(user if group is None else group),
        ]
        if self.project != "default":
            cmd += ["--project", self.project]
        if cwd:
            cmd += ["--cwd", cwd]
        for key, value in (env or {}).items():
            cmd += ["--env", f"{key}={value}"]
        if tty is True:
            cmd.append("-t")
        elif tty is False:
            cmd.append("-T")
        return [*cmd, "--", *argv]

    def exec_stream(self, name: str, argv: Sequence[str], **kwargs: Any) -> int:
        """Run argv with our stdin/stdout/stderr attached; return its exit code.

        When Incus fails to start the command at all (its transient "Failed to retrieve PID"),
        nothing ran and no input was read, so it is retried like exec_capture does."""
        cmd = self.exec_argv(name, argv, **kwargs)
        env = self.cli_env()
        for delay in (*EXEC_RETRY_DELAYS[:6], None):
            code, never_started = _run_client(cmd, env, last_try=delay is None)
            if not never_started or delay is None:
                return code
            time.sleep(delay)
        return code

    # ------------------------------------------------------------------ files
    def push_file(
        self, name: str, path: str, content: bytes, *, uid: int = 0, gid: int = 0, mode: int = 0o644
    ) -> None:
        headers = {
            "X-Incus-uid": str(uid),
            "X-Incus-gid": str(gid),
            "X-Incus-mode": f"{mode:04o}",
            "X-Incus-type": "file",
            "X-Incus-write": "overwrite",
            "Content-Type": "application/octet-stream",
        }
        self._files("POST", name, path, data=content, headers=headers)

    def delete_file(self, name: str, path: str) -> None:
        """Remove one file from the instance (NotFound when it is not there)."""
        self._files("DELETE", name, path)

    def make_dir(
        self, name: str, path: str, *, uid: int = 0, gid: int = 0, mode: int = 0o755
    ) -> None:
        headers = {
            "X-Incus-uid": str(uid),
            "X-Incus-gid": str(gid),
            "X-Incus-mode": f"{mode:04o}",
            "X-Incus-type": "directory",
        }
        with contextlib.suppress(Conflict):
            self._files("POST", name, path, data=b"", headers=headers)

    def _files(self, method: str, name: str, path: str, **kwargs: Any) -> Any:
        try:
            return self.request(
                method,
                f"{API}/instances/{quote(name)}/files",
                params={"path": path},
                raw=True,
                **kwargs,
            )
        except NotFound:
            if not self.instance_exists(name):
                raise InstanceNotFound(name) from None
            raise NotFound(f"{path}: no such file or directory in '{name}'") from None

    def pull_entry(self, name: str, path: str) -> tuple[str, bytes | list[str], int]:
        """(type, content-or-listing, mode) of one path: file, directory or symlink."""
        response = self._files("GET", name, path)
        kind = response.headers.get("X-Incus-type") or response.headers.get("X-LXD-type") or "file"
        mode = int(
            response.headers.get("X-Incus-mode") or response.headers.get("X-LXD-mode") or "644", 8
        )
        if kind == "directory":
            listing = response.json().get("metadata") or []
            return kind, [str(entry) for entry in listing], mode
        return kind, response.content, mode

    def pull_file(self, name: str, path: str) -> bytes:
        # Over this API a FIFO or a device looks like an empty file, and reading one blocks
        # Incus's root forkfile: read nothing that does not show a size.
        kind, size, _ = self.stat_path(name, path)
        if kind == "file" and size <= 0:
            return b""
        kind, content, _ = self.pull_entry(name, path)
        if kind == "directory":
            raise IncusError(f"{path} in '{name}' is a directory: use recursive pull (-r)")
        assert isinstance(content, bytes)
        return content

    def push_tree(self, local: Path, name: str, remote: str, *, uid: int = 0, gid: int = 0) -> int:
        """Copy a host directory into the instance; returns the number of files pushed."""
        count = 0
        self.make_dir(name, remote, uid=uid, gid=gid, mode=local.stat().st_mode & 0o7777)
        for entry in sorted(local.iterdir()):
            target = f"{remote.rstrip('/')}/{entry.name}"
            if entry.is_symlink():
                continue
            if entry.is_dir():
                count += self.push_tree(entry, name, target, uid=uid, gid=gid)
            elif entry.is_file():
                self.push_file(
                    name,
                    target,
                    entry.read_bytes(),
                    uid=uid,
                    gid=gid,
                    mode=entry.stat().st_mode & 0o777,
                )
                count += 1
        return count

    def stat_path(self, name: str, path: str, timeout: float | None = None) -> tuple[str, int, int]:
        """(type, size, mode) of one path from a HEAD request: nothing is opened or read.

        A FIFO, a device and an empty file all look alike here (type 'file', size 0)."""
        response = self.request(
            "HEAD",
            f"{API}/instances/{quote(name)}/files",
            params={"path": path},
            raw=True,
            timeout=timeout,
        )
        kind = response.headers.get("X-Incus-type") or response.headers.get("X-LXD-type") or ""
        mode = int(
            response.headers.get("X-Incus-mode") or response.headers.get("X-LXD-mode") or "644", 8
        )
        try:
            size = int(response.headers.get("Content-Length") or -1) if kind == "file" else 0
        except ValueError:
            size = -1
        return kind, size, mode

    def _pull_regular(
        self, name: str, path: str, fd: int, size: int, deadline: float, timeout: float
    ) -> str:
        """Stream one regular file into fd if it is at most `size` bytes (it may have grown
        since its HEAD), before the deadline; runs of zeros stay holes. Returns '' when
        complete, else why it stopped."""
        query = {"path": path}
        if self.project and self.project != "default":
            query["project"] = self.project
        target = f"{API}/instances/{quote(name)}/files?{urlencode(query)}"
        wait = max(0.1, min(timeout, deadline - time.monotonic()))
        if self.remote is not None:
            conn: http.client.HTTPConnection = self._https_connection(wait)
        else:
            self._check_socket()
            conn = UnixHTTPConnection(self.socket_path, timeout=wait)
        try:
            conn.request("GET", target)
            reply = conn.getresponse()
            if reply.status >= 400:
                return f"Incus answered {reply.status}"
            length = reply.getheader("Content-Length")
            if length is None or not length.isdigit():
                return "Incus gave no size"
            if int(length) > size:
                return "it grew past the limit while being saved"
            left = int(length)
            while left > 0:
                if time.monotonic() > deadline:
                    return "the time limit was reached"
                chunk = reply.read(min(left, 1 << 20))
                if not chunk:
                    return "it was cut short"
                left -= len(chunk)
                if chunk.count(0) == len(chunk):
                    os.lseek(fd, len(chunk), os.SEEK_CUR)
                else:
                    os.write(fd, chunk)
            os.ftruncate(fd, int(length))
            return ""
        except TimeoutError:
            return "reading it timed out"
        except (OSError, http.client.HTTPException) as exc:
            return f"reading it failed ({type(exc).__name__})"
        finally:
            conn.close()

    def pull_tree(
        self,
        name: str,
        remote: str,
        local: Path,
        *,
        limits: PullLimits | None = None,
        say: Callable[[str], None] | None = None,
    ) -> int:
        """Copy an instance directory to the host; returns the number of files copied.

        Only directories and regular files are copied, each path's type read first with a HEAD
        request: a file is read only when it has a size (a FIFO or a device reports size 0 and
        would block the read forever, holding Incus's forkfile and the container), so empty
        files are created empty. Symlinks and anything else are dropped. The walk is iterative
        and bounded by `limits`; what is left out is named through `say`, one line each."""
        limits = limits or PullLimits()
        report = _LeftOut(say, limits.max_messages)
        deadline = time.monotonic() + limits.max_seconds
        total = 0
        count = 0
        entries = 0
        stack: list[tuple[str, Path, int]] = [(remote, local, 0)]
        while stack:
            path, target, depth = stack.pop()
            entries += 1
            left = deadline - time.monotonic()
            if entries > limits.max_entries or left <= 0:
                why = "too many entries" if left > 0 else "the time limit was reached"
                report.add(f"{path} and {len(stack)} more: not saved ({why})")
                break
            try:
                kind, size, mode = self.stat_path(
                    name, path, timeout=max(0.1, min(limits.request_timeout, left))
                )
            except NotFound:
                continue
            except DaemonUnavailable:
                raise
            except IncusError as exc:
                report.add(f"{path}: not saved ({str(exc)[:80]})")
                continue
            if kind == "directory":
                if depth >= limits.max_depth:
                    report.add(f"{path}: not saved (deeper than {limits.max_depth} levels)")
                    continue
                try:
                    if target.is_symlink():
                        raise OSError(0, "a link is in the way on the host")
                    target.mkdir(parents=depth == 0, exist_ok=True)
                    os.chmod(target, (mode & 0o777) | 0o700)
                    wait = max(0.1, min(limits.request_timeout, deadline - time.monotonic()))
                    listing = self._files("GET", name, path, timeout=wait).json().get("metadata")
                except NotFound:
                    continue
                except (OSError, ValueError, AttributeError) as exc:
                    report.add(f"{path}: not saved ({getattr(exc, 'strerror', '') or exc})")
                    continue
                children = sorted(str(child) for child in listing or [])
                for child in reversed(children):
                    if child in ("", ".", "..") or "/" in child or "\0" in child:
                        report.add(f"{path}/{child}: not saved (not a valid name)")
                        continue
                    stack.append((f"{path.rstrip('/')}/{child}", target / child, depth + 1))
                continue
            if kind != "file":
                continue  # symlinks: never followed, never copied
            if size < 0:
                report.add(f"{path}: not saved (no size)")
                continue
            if size > limits.max_file:
                cap = _size(limits.max_file)
                report.add(f"{path}: not saved ({_size(size)}, over the {cap} limit per file)")
                continue
            if total + size > limits.max_total:
                cap = _size(limits.max_total)
                report.add(f"{path}: not saved ({_size(size)}, over the {cap} limit in all)")
                continue
            try:
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            except OSError as exc:
                report.add(f"{path}: not saved ({exc.strerror or exc})")
                continue
            try:
                why = ""
                if size > 0:
                    cap = min(limits.max_file, limits.max_total - total)
                    why = self._pull_regular(name, path, fd, cap, deadline, limits.request_timeout)
                if not why:
                    os.fchmod(fd, mode & 0o777)
                    size = os.fstat(fd).st_size
            finally:
                os.close(fd)
            if why:
                os.unlink(target)
                report.add(f"{path}: not saved ({why})")
                continue
            total += size
            count += 1
        report.finish()
        return count

    # ------------------------------------------------------------------ snapshots
    def create_snapshot(self, name: str, snapshot: str, *, stateful: bool = False) -> None:
        self.request(
            "POST",
            f"{API}/instances/{quote(name)}/snapshots",
            body={"name": snapshot, "stateful": stateful},
        )

    def list_snapshots(self, name: str) -> list[dict[str, Any]]:
        return list(
            self.request("GET", f"{API}/instances/{quote(name)}/snapshots", params={"recursion": 1})
            or []
        )

    def restore_snapshot(self, name: str, snapshot: str, *, stateful: bool = False) -> None:
        current = self.request("GET", f"{API}/instances/{quote(name)}")
        current["restore"] = snapshot
        current["stateful"] = stateful
        self.request("PUT", f"{API}/instances/{quote(name)}", body=current)

    def delete_snapshot(self, name: str, snapshot: str) -> None:
        self.request("DELETE", f"{API}/instances/{quote(name)}/snapshots/{quote(snapshot)}")

    # ------------------------------------------------------------------ images
    def list_images(self) -> list[Image]:
        return [
            Image.from_api(i)
            for i in self.request("GET", f"{API}/images", params={"recursion": 1}) or []
        ]

    def get_image(self, alias: str) -> Image:
        try:
            target = self.request("GET", f"{API}/images/aliases/{quote(alias)}")
        except NotFound:
            raise ImageNotFound(alias) from None
        return Image.from_api(self.request("GET", f"{API}/images/{target['target']}"))

    def image_exists(self, alias: str) -> bool:
        try:
            self.request("GET", f"{API}/images/aliases/{quote(alias)}")
        except NotFound:
            return False
        return True

    def require_image(self, alias: str) -> None:
        if not self.image_exists(alias):
            raise ImageNotFound(alias)

    def delete_image(self, alias: str) -> None:
        image = self.get_image(alias)
        self.request("DELETE", f"{API}/images/{image.fingerprint}")

    def set_alias(self, alias: str, fingerprint: str, description: str = "") -> None:
        if self.image_exists(alias):
            self.request(
                "PUT",
                f"{API}/images/aliases/{quote(alias)}",
                body={"target": fingerprint, "description": description},
            )
        else:
            self.request(
                "POST",
                f"{API}/images/aliases",
                body={"name": alias, "target": fingerprint, "description": description},
            )

    def import_image(self, tarball: Path, alias: str, properties: Mapping[str, str]) -> str:
        """Import a unified image tarball and point `alias` at it; returns the fingerprint."""
        headers = {
            "Content-Type": "application/octet-stream",
            "X-Incus-properties": "&".join(f"{quote(k)}={quote(v)}" for k, v in properties.items()),
            "X-Incus-public": "false",
        }
        with open(tarball, "rb") as stream:
            op = self.request("POST", f"{API}/images", data=stream, headers=headers)
        fingerprint = str((op.get("metadata") or {}).get("fingerprint", ""))
        if not fingerprint:
            raise IncusError("image import finished without a fingerprint")
        self.set_alias(alias, fingerprint)
        return fingerprint

    def publish(
        self,
        name: str,
        alias: str,
        properties: Mapping[str, str] | None = None,
        compression: str | None = None,
    ) -> str:
        body: dict[str, Any] = {
            "source": {"type": "instance", "name": name},
            "properties": dict(properties or {}),
        }
        if compression:
            body["compression_algorithm"] = compression
        op = self.request("POST", f"{API}/images", body=body)
        fingerprint = str((op.get("metadata") or {}).get("fingerprint", ""))
        self.set_alias(alias, fingerprint)
        return fingerprint

    # ------------------------------------------------------------------ networks, pools, profiles
    def get_network(self, name: str) -> dict[str, Any] | None:
        try:
            return dict(self.request("GET", f"{API}/networks/{quote(name)}"))
        except NotFound:
            return None

    def create_network(self, name: str, config: Mapping[str, str], description: str = "") -> None:
        self.request(
            "POST",
            f"{API}/networks",
            body={
                "name": name,
                "type": "bridge",
                "config": dict(config),
                "description": description,
            },
        )

    def update_network(self, name: str, config: Mapping[str, str]) -> None:
        self.request("PATCH", f"{API}/networks/{quote(name)}", body={"config": dict(config)})

    def delete_network(self, name: str) -> None:
        self.request("DELETE", f"{API}/networks/{quote(name)}")

    def list_storage_pools(self) -> list[dict[str, Any]]:
        return list(self.request("GET", f"{API}/storage-pools", params={"recursion": 1}) or [])

    def create_storage_pool(self, name: str, driver: str, config: Mapping[str, str]) -> None:
        self.request(
            "POST",
            f"{API}/storage-pools",
            body={"name": name, "driver": driver, "config": dict(config)},
        )

    def get_profile(self, name: str) -> dict[str, Any]:
        return dict(self.request("GET", f"{API}/profiles/{quote(name)}"))

    def update_profile(self, name: str, profile: Mapping[str, Any]) -> None:
        body = {k: profile[k] for k in ("config", "devices", "description") if k in profile}
        self.request("PUT", f"{API}/profiles/{quote(name)}", body=body)

    # ------------------------------------------------------------------ events
    def watch_events(
        self,
        on_event: Callable[[dict[str, Any]], bool],
        types: Sequence[str] = ("lifecycle",),
        stop: threading.Event | None = None,
        subscribed: threading.Event | None = None,
    ) -> None:
        """Call on_event for each event until it returns False or `stop` is set (blocking)."""
        client = self._connect()
        from pylxd.client import EventType, _WebsocketClient

        done = stop or threading.Event()

        class _Events(_WebsocketClient):  # type: ignore[misc]
            def received_message(self, message: Any) -> None:
                if done.is_set():
                    return
                if on_event(json.loads(message.data.decode("utf-8"))) is False:
                    done.set()
                    self.close()

        ws = client.events(websocket_client=_Events, event_types={EventType(t) for t in types})
        ws.connect()
        if subscribed is not None:
            subscribed.set()
        runner = threading.Thread(target=ws.run, daemon=True)
        runner.start()
        while not done.wait(0.2):
            if not runner.is_alive():
                break
        ws.close()

    def events(self, types: Sequence[str] = ("lifecycle",)) -> Iterator[dict[str, Any]]:
        """Iterate over events in a background thread (stops when the consumer stops)."""
        import queue

        box: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=1024)
        stop = threading.Event()

        def put(event: dict[str, Any]) -> bool:
            box.put(event)
            return not stop.is_set()

        threading.Thread(target=self.watch_events, args=(put, types, stop), daemon=True).start()
        try:
            while True:
                yield box.get()
        finally:
            stop.set()

    def wait_for_status(self, name: str, wanted: Sequence[str], timeout: float) -> str:
        """Poll until the instance reaches one of `wanted` (or is gone: 'Gone')."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                status = self.status(name)
            except InstanceNotFound:
                status = "Gone"
            if status in wanted or time.monotonic() >= deadline:
                return status
            time.sleep(0.1)
