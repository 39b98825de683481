"""The egress proxy as a process, and the files it shares with coi (all under ~/.coi/egress):

- `policies/<container>.json`: each proxied container's policy (written by the network hook
  before the container starts, removed when it ends); the proxy reads it when it changes;
- `logs/<container>.jsonl`: one record per connection (proxy.Flow.record);
- `proxy-<bridge>.json`: the running proxy's pid, address and port.

One proxy per user and bridge, started by the first session that needs it (`ensure_proxy`);
it exits a minute after its last policy file is gone. A connection's container is known by
its source address, which Incus pins to the container's NIC (security.ipv4_filtering): the
address is looked up through Incus's leases of the bridge by the MAC that Incus gave that
container (never by a name a DHCP client sends).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from coi_tui.config.layers import home_dir
from coi_tui.config.profiles import ProfileSet, check_name
from coi_tui.core.errors import CoiError
from coi_tui.core.fs import atomic_write, file_lock
from coi_tui.core.paths import coi_home, logs_dir
from coi_tui.incus import Incus, IncusError
from coi_tui.network.egress.dns import Resolver, start_resolver
from coi_tui.network.egress.policy import EgressPolicy, clean_name, parse_pattern, port_text
from coi_tui.network.egress.proxy import EgressProxy
from coi_tui.network.resolve import query_a

IDLE_EXIT_SEC = 60.0  # no policy file for this long: the proxy exits
VERIFY_SEC = 5.0  # a cached address -> container mapping is checked again after this
START_TIMEOUT = 10.0
LOG_MAX_BYTES = 64 * 1024 * 1024  # per container; then one older file is kept


def egress_dir() -> Path:
    path = coi_home() / "egress"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def policy_path(container: str) -> Path:
    return egress_dir() / "policies" / f"{container}.json"


def log_path(container: str) -> Path:
    return egress_dir() / "logs" / f"{container}.jsonl"


def state_path(bridge: str) -> Path:
    return egress_dir() / f"proxy-{bridge}.json"


def changes_path(container: str) -> Path:
    """`coi egress allow|deny` of a running session: kept apart from the config's policy so
    that a rewrite of it (the allowlist's refresh) keeps them."""
    return egress_dir() / "session" / f"{container}.json"


# ---------------------------------------------------------------------- coi's side
def write_policy(container: str, bridge: str, project: str, policy: EgressPolicy) -> int:
    """The container's policy for the proxy, with the session's own changes on top; its
    generation one above the last. Returns that generation."""
    path = policy_path(container)
    with file_lock(f"egress-policy-{container}"):  # never between a change's read and write
        with contextlib.suppress(OSError, ValueError):
            policy.generation = int(json.loads(path.read_text()).get("generation", 0)) + 1
        for action, pattern in session_changes(container):
            policy.change(action, parse_pattern(pattern))
        data = {"container": container, "bridge": bridge, "project": project}
        atomic_write(path, json.dumps({**data, **policy.to_json()}, indent=1) + "\n")
    return policy.generation


def read_policy(container: str) -> tuple[dict[str, Any], EgressPolicy]:
    """The policy file of a proxied container, or CoiError with one line."""
    try:
        data = json.loads(policy_path(container).read_text())
        return data, EgressPolicy.from_json(data)
    except FileNotFoundError:
        raise CoiError(
            f"{container} has no egress policy: it is not running, or not with "
            '[network] egress = "proxy"'
        ) from None
    except (OSError, ValueError) as exc:
        raise CoiError(f"{container}: unreadable egress policy ({exc})") from None


def session_changes(container: str) -> list[tuple[str, str]]:
    with contextlib.suppress(OSError, ValueError, TypeError):
        return [(str(a), str(p)) for a, p in json.loads(changes_path(container).read_text())]
    return []


def change_policy(container: str, action: str, entry: str) -> tuple[int, str]:
    """`coi egress allow|deny`: the running container's policy changed at once (the proxy
    reads it at the next connection) and the change kept for the rest of the session.
    Returns the new generation and the pattern as it was understood."""
    pattern = parse_pattern(entry)
    with file_lock(f"egress-policy-{container}"):
        data, policy = read_policy(container)
        proxied = policy.ports()
        missing = [port_text(s) for s in pattern.ports if port_text(s) not in proxied]
        if missing:
            raise CoiError(
                f"port {', '.join(missing)} is not sent to the proxy in this session (only "
                f"{', '.join(proxied)}); add the pattern to [network] allowed_domains and "
                "start a new session"
            )
        changes = [c for c in session_changes(container) if c[1] != str(pattern)]
        changes.append((action, str(pattern)))
        atomic_write(changes_path(container), json.dumps(changes) + "\n")
        policy.change(action, pattern)
        policy.generation += 1
        atomic_write(
            policy_path(container), json.dumps({**data, **policy.to_json()}, indent=1) + "\n"
        )
    append_record(
        {
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "container": container,
            "type": "policy",
            "action": action,
            "pattern": str(pattern),
            "generation": policy.generation,
            "by": f"uid {os.getuid()}",
        }
    )
    return policy.generation, str(pattern)


def parse_records(data: bytes) -> list[dict[str, Any]]:
    """The records of JSONL bytes (a line that is not a JSON object is skipped)."""
    records = []
    for line in data.splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict):
                records.append(record)
    return records


def read_log(container: str) -> list[dict[str, Any]]:
    try:
        return parse_records(log_path(container).read_bytes())
    except OSError:
        return []


def domain_totals(records: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Connections per domain (allowed, denied, bytes each way), the busiest first."""
    totals: dict[str, dict[str, int]] = {}
    for record in records:
        if record.get("type") != "connection":
            continue
        row = totals.setdefault(
            str(record.get("domain") or "(no name)"),
            {"connections": 0, "allowed": 0, "denied": 0, "bytes_out": 0, "bytes_in": 0},
        )
        row["connections"] += 1
        row["allowed" if record.get("decision") == "allowed" else "denied"] += 1
        row["bytes_out"] += int(record.get("bytes_out") or 0)
        row["bytes_in"] += int(record.get("bytes_in") or 0)
    return dict(sorted(totals.items(), key=lambda item: -item[1]["connections"]))


def observed_names(container: str) -> list[str]:
    """The names a container reached: allowed connections, and allowed DNS answers."""
    names = set()
    for record in read_log(container):
        reached = record.get("type") == "connection" or (
            record.get("type") == "dns" and record.get("answers")
        )
        if reached and record.get("decision") == "allowed":
            name = clean_name(str(record.get("domain") or ""))
            if name:
                names.add(name)
    return sorted(names)


def promote(container: str, profile: str, env: dict[str, str]) -> tuple[Path, list[str]]:
    """A user profile whose allowlist is what the container reached (`coi egress promote`)."""
    names = observed_names(container)
    if not names:
        raise CoiError(f"{container} reached no name yet (see 'coi egress log {container}')")
    check_name(profile)
    if profile in ProfileSet.discover(Path.cwd(), env).found:
        raise CoiError(f'profile "{profile}" already exists; pick another name')
    directory = home_dir(env) / "profiles" / profile
    directory.mkdir(parents=True)
    listed = "".join(f"  {json.dumps(n)},\n" for n in names)
    stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime())
    atomic_write(
        directory / "config.toml",
        f"# Written by `coi egress promote` on {stamp}: the names {container} reached.\n"
        f"# Use it with `coi shell --profile {profile}`.\n\n"
        '[network]\nmode = "allowlist"\negress = "proxy"\n'
        f"allowed_domains = [\n{listed}]\n",
        mode=0o644,
    )
    return directory / "config.toml", names


def remove_policy(container: str) -> None:
    for path in (policy_path(container), changes_path(container)):
        with contextlib.suppress(OSError):
            path.unlink()


def running_proxy(bridge: str) -> dict[str, Any] | None:
    """The state of this user's proxy for `bridge` when it is alive and listening."""
    try:
        state = json.loads(state_path(bridge).read_text())
        pid, address, port = int(state["pid"]), str(state["address"]), int(state["port"])
        int(state["dns_port"])
        os.kill(pid, 0)
        with socket.create_connection((address, port), timeout=1):
            pass
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return state


def ensure_proxy(bridge: str, gateway: str) -> tuple[int, int]:
    """The ports (proxy, resolver) of this user's proxy for `bridge` listening on `gateway`,
    started if needed."""
    with file_lock(f"egress-{bridge}"):
        state = running_proxy(bridge)
        if state is not None and state.get("address") == gateway:
            return int(state["port"]), int(state["dns_port"])
        if state is not None:  # the bridge's address changed: a new proxy
            with contextlib.suppress(OSError):
                os.kill(int(state["pid"]), signal.SIGTERM)
        previous, previous_dns = 0, 0
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            old = json.loads(state_path(bridge).read_text())
            previous, previous_dns = int(old["port"]), int(old["dns_port"])
        with contextlib.suppress(OSError):
            state_path(bridge).unlink()
        log = open(logs_dir() / f"egress-{bridge}.log", "ab")  # noqa: SIM115
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "coi_tui.network.egress",
                bridge,
                gateway,
                str(previous),
                str(previous_dns),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            close_fds=True,
        )
        log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            state = running_proxy(bridge)
            if state is not None and int(state["pid"]) == proc.pid:
                return int(state["port"]), int(state["dns_port"])
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        with contextlib.suppress(OSError):
            proc.kill()
        tail = ""
        with contextlib.suppress(OSError):
            lines = (logs_dir() / f"egress-{bridge}.log").read_text().strip().splitlines()
            tail = f": {lines[-1]}" if lines else ""
        raise CoiError(f"egress proxy for {bridge} did not start{tail}")


def stop_proxy(bridge: str) -> bool:
    state = running_proxy(bridge)
    if state is None:
        return False
    with contextlib.suppress(OSError):
        os.kill(int(state["pid"]), signal.SIGTERM)
    return True


# ---------------------------------------------------------------------- the proxy's side
class PolicyFiles:
    """The proxy's view of the policies: source address -> (container, policy)."""

    def __init__(self, bridge: str) -> None:
        self.bridge = bridge
        self.lock = threading.Lock()
        self.by_address: dict[str, tuple[str, float]] = {}  # -> (container, verified at)
        # container -> (what identifies the file's version, its policy)
        self.loaded: dict[str, tuple[tuple[int, ...], EgressPolicy]] = {}
        self.refreshed = 0.0

    def policy(self, container: str) -> EgressPolicy | None:
        path = policy_path(container)
        try:
            info = path.stat()
            mtime = (info.st_mtime_ns, info.st_ctime_ns, info.st_ino, info.st_size)
            cached = self.loaded.get(container)
            if cached is not None and cached[0] == mtime:
                return cached[1]
            data = json.loads(path.read_text())
            if data.get("bridge") != self.bridge:
                return None
            policy = EgressPolicy.from_json(data)
        except (OSError, ValueError, CoiError):
            self.loaded.pop(container, None)
            return None
        self.loaded[container] = (mtime, policy)
        return policy

    def containers(self) -> dict[str, str]:
        """Policy files of this bridge: container -> its Incus project."""
        found = {}
        with contextlib.suppress(OSError):
            for path in (egress_dir() / "policies").glob("*.json"):
                with contextlib.suppress(OSError, ValueError):
                    data = json.loads(path.read_text())
                    if data.get("bridge") == self.bridge:
                        found[path.stem] = str(data.get("project") or "default")
        return found

    def lookup(self, address: str) -> tuple[str, EgressPolicy] | None:
        with self.lock:
            now = time.monotonic()
            hit = self.by_address.get(address)
            if hit is None or now - hit[1] > VERIFY_SEC:
                if now - self.refreshed < 0.2 and hit is None:
                    return None  # unknown addresses do not make us ask Incus in a loop
                self.refresh()
                hit = self.by_address.get(address)
            if hit is None:
                return None
            policy = self.policy(hit[0])
            return (hit[0], policy) if policy is not None else None

    def refresh(self) -> None:
        self.refreshed = now = time.monotonic()
        mapping: dict[str, tuple[str, float]] = {}
        wanted = self.containers()
        by_project: dict[str, list[str]] = {}
        for name, project in wanted.items():
            by_project.setdefault(project, []).append(name)
        for project, names in by_project.items():
            incus = Incus(project=project)
            try:
                leases = incus.request("GET", f"/1.0/networks/{self.bridge}/leases") or []
            except IncusError:
                continue
            for name in names:
                try:
                    config = incus.get_instance(name).config
                except IncusError:
                    continue
                mac = str(config.get("volatile.eth0.hwaddr", "")).lower()
                for lease in leases:
                    if mac and str(lease.get("hwaddr", "")).lower() == mac:
                        mapping[str(lease.get("address", ""))] = (name, now)
        self.by_address = mapping


def append_record(record: dict[str, Any]) -> None:
    """One JSONL line; a log past LOG_MAX_BYTES becomes `<name>.jsonl.1` (the one before it
    goes): a container that makes millions of requests cannot fill the disk."""
    path = log_path(str(record.get("container", "unknown")))
    line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, line)
            full = os.fstat(fd).st_size > LOG_MAX_BYTES
        finally:
            os.close(fd)
        if full:
            os.replace(path, path.with_name(path.name + ".1"))


def say(text: str) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    sys.stderr.write(f"{stamp} {text}\n")
    sys.stderr.flush()


async def serve(bridge: str, gateway: str, preferred: int, preferred_dns: int) -> None:
    # policy and name lookups block (files, Incus, DNS): enough threads that a slow upstream
    # resolver does not hold up every other container's connections
    asyncio.get_running_loop().set_default_executor(
        ThreadPoolExecutor(max_workers=64, thread_name_prefix="egress")
    )
    policies = PolicyFiles(bridge)
    proxy = EgressProxy(policies, query_a, append_record, (gateway, preferred))
    try:
        port = await proxy.start()
    except OSError:  # the last proxy's port is taken meanwhile: any free one
        proxy.listen = (gateway, 0)
        port = await proxy.start()
    resolver = Resolver(policies, proxy.names.addresses, append_record, proxy.holds, proxy.own.get)
    try:
        dns_port, servers = await start_resolver(resolver, gateway, preferred_dns)
    except OSError:
        dns_port, servers = await start_resolver(resolver, gateway, 0)
    state = {"pid": os.getpid(), "address": gateway, "port": port, "dns_port": dns_port}
    atomic_write(state_path(bridge), json.dumps({**state, "bridge": bridge}))
    say(f"egress proxy for {bridge} listening on {gateway}:{port}, resolver on :{dns_port}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    idle_since = time.monotonic()
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 2.0)
        if policies.containers():
            idle_since = time.monotonic()
        elif time.monotonic() - idle_since > IDLE_EXIT_SEC:
            say("no proxied container left; exiting")
            break
    proxy.close()
    for server in servers:
        server.close()
    with contextlib.suppress(OSError, ValueError):
        if json.loads(state_path(bridge).read_text()).get("pid") == os.getpid():
            state_path(bridge).unlink()


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        say("usage: python -m coi_tui.network.egress BRIDGE GATEWAY PROXY_PORT RESOLVER_PORT")
        return 2
    asyncio.run(serve(argv[0], argv[1], int(argv[2] or 0), int(argv[3] or 0)))
    return 0
