"""`coi monitor NAME`: processes, connections, I/O and recent threats of one container, read
from the host's /proc (complete as root; as a normal user only what /proc lets us see)."""

from __future__ import annotations

import json
import time
from typing import Any

from coi_tui.monitor import procfs
from coi_tui.monitor.control import is_running
from coi_tui.monitor.events import audit_path


def snapshot(incus: Any, name: str, threats: int = 20) -> dict[str, Any]:
    instance = incus.get_instance(name, with_state=instance_running(incus, name))
    errors: list[str] = []
    pid = instance.pid
    procs: list[dict[str, Any]] = []
    conns: list[dict[str, Any]] = []
    rchar = wchar = 0
    if pid:
        pidns = procfs.pid_ns(pid)
        if not pidns:
            errors.append("cannot read the container's processes (needs root)")
        for p in procfs.all_pids():
            if pidns and procfs.pid_ns(p) == pidns:
                proc = procfs.read_proc(p)
                if proc is not None:
                    procs.append(proc.as_dict())
                    r, w = procfs.io_counters(p)
                    rchar, wchar = rchar + r, wchar + w
        for conn in procfs.inet_sockets(pid).values():
            if conn.state != "LISTEN":
                conns.append({**conn.as_dict(), "suspicious": conn.outbound})
    return {
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "container": name,
        "container_ip": instance.ipv4,
        "status": instance.status,
        "monitor": "running" if is_running() else "stopped",
        "network": {
            "active_connections": len(conns),
            "connections": conns,
            "suspicious_count": sum(1 for c in conns if c["suspicious"]),
        },
        "processes": {"available": bool(procs), "total_count": len(procs), "processes": procs},
        "resources": {"io_read_mb": rchar / (1 << 20), "io_write_mb": wchar / (1 << 20)},
        "threats": recent_threats(name, threats),
        "errors": errors,
    }


def instance_running(incus: Any, name: str) -> bool:
    return incus.status(name) in ("Running", "Frozen")


def recent_threats(name: str, count: int) -> list[dict[str, Any]]:
    path = audit_path(name)
    try:
        lines = path.read_text().splitlines()[-count:]
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out
