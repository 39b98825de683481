"""`coi health`, `coi monitor`, `coi audit` and `coi unfreeze`/`coi resume` on the real daemon,
in COI's shapes: health exit codes 0/1/2 each provoked for real, its JSON, --fix and --dry-run;
a monitor snapshot of a real session; the audit log; freezing and resuming."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from coi_tui.incus import Incus, IncusError
from tests.conftest import REPO, CoiRunner
from tests.integration.test_sessions import start_background, wait_for

pytestmark = pytest.mark.incus

REQUIRED_CHECKS = {
    "os",
    "kernel_version",
    "timezone",
    "incus",
    "permissions",
    "image",
    "image_age",
    "privileged_profile",
    "security_posture",
    "network_bridge",
    "ip_forwarding",
    "firewall",
    "nftables",
    "monitoring_configuration",
    "audit_log_directory",
    "cgroup_availability",
    "coi_directory",
    "sessions_directory",
    "disk_space",
    "incus_storage_pool",
    "config",
    "network_mode",
    "tool",
    "active_containers",
    "saved_sessions",
    "orphaned_resources",
}
VERBOSE_CHECKS = {"dns_resolution", "passwordless_sudo", "process_monitoring"}


def health(coi: CoiRunner, *args: str, env: dict[str, str] | None = None) -> tuple[int, dict]:
    result = coi("health", "--json", *args, env=env)
    return result.returncode, json.loads(result.stdout)


def not_ok(report: dict) -> dict[str, str]:
    return {k: v["message"] for k, v in report["checks"].items() if v["status"] != "ok"}


# ---------------------------------------------------------------------- health
def test_health_is_healthy_here_with_coi_shapes(coi: CoiRunner) -> None:
    code, report = health(coi)
    assert code == 0 and report["status"] == "healthy", not_ok(report)
    assert set(report) == {"status", "timestamp", "checks", "summary"}
    stamp = datetime.fromisoformat(report["timestamp"])  # RFC3339 with an offset
    assert stamp.tzinfo is not None and abs(time.time() - stamp.timestamp()) < 120
    checks = report["checks"]
    assert set(checks) >= REQUIRED_CHECKS
    assert not VERBOSE_CHECKS & set(checks)
    for key, check in checks.items():
        assert set(check) == {"name", "status", "message", "details"}, key
        assert check["name"] == key and isinstance(check["details"], dict)
        assert check["status"] in ("ok", "warning", "failed") and check["message"]
    summary = report["summary"]
    assert summary == {"total": len(checks), "passed": len(checks), "warnings": 0, "failed": 0}

    # NAT off is this project's secure default: OK, saying what it means and how to change it.
    firewall = checks["firewall"]
    assert firewall["details"]["nat"] is False
    assert "no internet" in firewall["message"] and "coi setup --nat" in firewall["message"]
    posture = checks["security_posture"]["details"]
    assert posture["privileged"] is False and posture["raw_seccomp_override"] is False
    assert {"seccomp", "apparmor", "raw_apparmor_override"} <= set(posture)

    text = coi("health")
    assert text.returncode == 0
    out = text.stdout
    assert out.startswith("Code on Incus Health Check\n==========================\n")
    for section in ("SYSTEM:", "CRITICAL:", "NETWORKING:", "MONITORING:", "STORAGE:"):
        assert f"\n{section}\n" in out
    assert "\nCONFIGURATION:\n" in out and "\nSTATUS:\n" in out
    assert "OTHER:" not in out and "OPTIONAL:" not in out
    critical = out.split("CRITICAL:")[1].split("\n\n")[0]
    assert "Security posture" in critical and "Privileged check" in critical
    assert "cgroup v2" in out.split("MONITORING:")[1].split("\n\n")[0]
    assert "  [OK]   Incus" in out
    assert out.rstrip().endswith(f"STATUS: HEALTHY\nAll {len(checks)} checks passed")


def test_health_verbose_adds_the_optional_checks(coi: CoiRunner) -> None:
    code, report = health(coi, "--verbose")
    assert set(report["checks"]) >= VERBOSE_CHECKS
    assert code == {"healthy": 0, "degraded": 1, "unhealthy": 2}[report["status"]]
    dns = report["checks"]["dns_resolution"]
    assert "no lookup sent" in dns["message"]  # offline by design
    text = coi("health", "-v").stdout
    optional = text.split("OPTIONAL:")[1].split("\n\n")[0]
    for label in ("DNS resolution", "Passwordless sudo", "Process monitoring"):
        assert label in optional
    assert "OTHER:" not in text


def test_health_degraded_exits_1(coi: CoiRunner, tmp_path: Path) -> None:
    # A COI home that does not exist yet: a warning (created on first run), nothing is made.
    missing = tmp_path / "never-made"
    code, report = health(coi, env={"COI_HOME": str(missing)})
    assert code == 1 and report["status"] == "degraded"
    assert not_ok(report).keys() == {"coi_directory"}, not_ok(report)
    assert report["summary"]["warnings"] == 1 and report["summary"]["failed"] == 0
    assert "coi health --fix" in report["checks"]["coi_directory"]["details"]["fix"]
    assert not missing.exists()

    # A config choice that deserves a warning: the open network mode.
    config = tmp_path / "open.toml"
    config.write_text('[network]\nmode = "open"\n')
    code, report = health(coi, env={"COI_CONFIG": str(config)})
    assert code == 1, not_ok(report)
    assert report["checks"]["network_mode"]["status"] == "warning"
    assert report["checks"]["network_mode"]["details"]["mode"] == "open"
    text = coi("health", env={"COI_CONFIG": str(config)})
    assert text.returncode == 1
    assert "STATUS: DEGRADED" in text.stdout and "checks passed with 1 warnings" in text.stdout
    assert "[WARN] Network mode" in text.stdout


def test_health_unhealthy_exits_2_on_a_stopped_daemon(coi: CoiRunner, tmp_path: Path) -> None:
    dead = tmp_path / "dead.socket"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(dead))
    listener.close()  # a socket file nobody listens on: what a stopped daemon leaves behind
    env = {"INCUS_SOCKET": str(dead)}
    code, report = health(coi, env=env)
    assert code == 2 and report["status"] == "unhealthy"
    assert report["checks"]["incus"]["status"] == "failed"
    assert "start Incus" in report["checks"]["incus"]["details"]["fix"]
    for key in ("image", "security_posture", "network_bridge", "active_containers"):
        assert report["checks"][key]["status"] == "failed"
        assert "not checked" in report["checks"][key]["message"]
    text = coi("health", env=env)
    assert text.returncode == 2
    assert "[FAIL] Incus" in text.stdout and "STATUS: UNHEALTHY" in text.stdout
    assert "checks failed" in text.stdout


def test_health_invalid_format_and_dry_run_alone_are_usage_errors(coi: CoiRunner) -> None:
    bad = coi("health", "--format", "yaml")
    assert bad.returncode == 2 and "invalid format" in bad.stderr
    alone = coi("health", "--dry-run")
    assert alone.returncode == 2 and "--fix" in alone.stderr


def test_health_fix_dry_run_changes_nothing_and_fix_repairs(coi: CoiRunner, tmp_path: Path) -> None:
    home = tmp_path / "fresh-home"
    env = {"COI_HOME": str(home)}
    dry = coi("health", "--fix", "--dry-run", env=env)
    assert dry.returncode == 1
    assert f"Would fix coi_directory: create {home}" in dry.stdout
    assert "(dry run: nothing changed)" in dry.stdout
    assert not home.exists()

    fixed = coi("health", "--fix", env=env)
    assert f"Fixed coi_directory: created {home}" in fixed.stdout
    assert fixed.returncode == 0, fixed.stdout
    assert (home / "audit").is_dir() and (home / "sessions-claude").is_dir()
    assert "STATUS: HEALTHY" in fixed.stdout

    again = coi("health", "--fix", "--json", env=env)
    assert again.returncode == 0 and "Nothing to fix" in again.stderr
    assert json.loads(again.stdout)["checks"]["coi_directory"]["status"] == "ok"


def test_health_fix_cleans_a_leftover_ephemeral_container(
    coi: CoiRunner, incus: Incus, image: str
) -> None:
    # What a crashed coi leaves: a stopped, managed, ephemeral coi container.
    name = f"{coi.prefix}0badc0de-3"
    incus.create_instance(name, image, config={"user.coi.managed": "true"})
    code, report = health(coi)
    orphans = report["checks"]["orphaned_resources"]
    assert code == 1 and orphans["status"] == "warning"
    assert orphans["details"]["containers"] == [name]

    dry = coi("health", "--fix", "--dry-run")
    assert (
        f"Would fix orphaned_resources: save and delete stopped ephemeral container(s) {name}"
        in (dry.stdout)
    )
    assert incus.instance_exists(name)

    fixed = coi("health", "--fix")
    assert f"Fixed orphaned_resources: {name} removed" in fixed.stdout
    assert not incus.instance_exists(name)
    assert fixed.returncode == 0, fixed.stdout


# ---------------------------------------------------------------------- monitor, audit, unfreeze
SNAPSHOT_KEYS = {
    "timestamp",
    "container",
    "container_ip",
    "network",
    "processes",
    "filesystem",
    "resources",
    "threats",
    "errors",
}
FILESYSTEM_KEYS = {
    "available",
    "workspace_path",
    "total_read_mb",
    "read_rate_mb_per_sec",
    "total_write_mb",
    "write_rate_mb_per_sec",
    "files_accessed",
    "tmp_used_mb",
    "tmp_total_mb",
    "tmp_used_percent",
}
RESOURCE_KEYS = {
    "cpu_time_seconds",
    "user_cpu_seconds",
    "sys_cpu_seconds",
    "memory_mb",
    "memory_limit_mb",
    "io_read_mb",
    "io_write_mb",
}


C2_LOOP = (
    "import socket, subprocess, time; "
    'ip = subprocess.check_output(["hostname", "-I"]).split()[0].decode(); '
    "srv = socket.socket(); srv.bind((ip, 4444)); srv.listen(); "
    "c = socket.create_connection((ip, 4444)); a = srv.accept(); time.sleep(300)"
)


def watch_output(coi: CoiRunner, name: str, frames: int = 2, timeout: float = 30) -> str:
    """`coi monitor NAME --watch 1` until `frames` footers appeared, then Ctrl+C."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "coi_tui.cli.main", "monitor", name, "--watch", "1"],
        cwd=REPO,
        env=coi.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    os.set_blocking(proc.stdout.fileno(), False)
    seen = b""
    deadline = time.monotonic() + timeout
    try:
        while seen.count(b"Press Ctrl+C to exit") < frames:
            assert time.monotonic() < deadline, f"no {frames} frames: {seen[-500:]!r}"
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            chunk = proc.stdout.read()
            if chunk:
                seen += chunk
            else:
                time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return seen.decode()


def test_monitor_audit_and_unfreeze_on_a_real_session(
    coi: CoiRunner, workspace: Path, incus: Incus, tmp_path: Path
) -> None:
    name = start_background(coi, workspace)
    # A process that holds another process's environment open (credential scraping).
    coi.ok(
        "container", "exec", name, "--user", "0", "--", "sh", "-c",
        "nohup sh -c 'exec 3</proc/1/environ; exec sleep 300' >/dev/null 2>&1 &",
    )  # fmt: skip

    # A connection to a C2 port, kept inside the container (its own address, no traffic out).
    coi.ok(
        "container", "exec", name, "--user", "1000", "--", "sh", "-c",
        f"nohup python3 -c '{C2_LOOP}' >/dev/null 2>&1 &",
    )  # fmt: skip

    def c2_seen() -> bool:
        snap = json.loads(coi.ok("monitor", name, "--json").stdout)
        return any(c["remote_addr"].endswith(":4444") for c in snap["network"]["connections"])

    wait_for(c2_seen, what="the connection to port 4444")

    # Resolved from the workspace (-w), from another directory.
    result = coi("monitor", "--json", "-w", str(workspace), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"Monitoring container: {name}" in result.stderr
    snap = json.loads(result.stdout)
    assert set(snap) == SNAPSHOT_KEYS and snap["container"] == name
    assert snap["container_ip"].startswith("10.") and snap["errors"] == []
    assert datetime.fromisoformat(snap["timestamp"]).tzinfo is not None
    assert set(snap["network"]) == {"active_connections", "connections", "suspicious_count"}
    c2 = next(c for c in snap["network"]["connections"] if c["remote_addr"].endswith(":4444"))
    assert c2["suspicious"] is True and "4444" in c2["suspect_reason"]
    assert c2["state"] == "ESTABLISHED" and c2["protocol"].startswith("tcp")
    assert snap["network"]["suspicious_count"] >= 1
    assert snap["network"]["active_connections"] == len(snap["network"]["connections"])
    procs = snap["processes"]
    assert procs["available"] and procs["total_count"] == len(procs["processes"]) > 3
    for proc in procs["processes"]:
        assert set(proc) == {"pid", "ppid", "user", "command", "env_access"}
    init = next(p for p in procs["processes"] if p["pid"] == 1)
    assert init["user"] == "root" and init["ppid"] == 0  # pids as the container sees them
    agent = next(p for p in procs["processes"] if "dummy" in p["command"])
    assert agent["user"] == "code" and agent["env_access"] is False
    scraper = next(p for p in procs["processes"] if p["command"] == "sleep 300")
    assert scraper["env_access"] is True and scraper["user"] == "root"
    assert set(snap["filesystem"]) == FILESYSTEM_KEYS and snap["filesystem"]["available"]
    assert snap["filesystem"]["workspace_path"] == "/workspace"
    assert snap["filesystem"]["tmp_total_mb"] > 0
    res = snap["resources"]
    assert set(res) == RESOURCE_KEYS
    assert res["cpu_time_seconds"] > 0 and res["memory_mb"] > 0
    assert res["user_cpu_seconds"] + res["sys_cpu_seconds"] > 0

    # $COI_CONTAINER, and NAME; text output.
    via_env = coi("monitor", "--format", "json", env={"COI_CONTAINER": name}, cwd=tmp_path)
    assert via_env.returncode == 0 and json.loads(via_env.stdout)["container"] == name
    text = coi.ok("monitor", name).stdout
    assert text.startswith(f"Container: {name} (")
    for part in (
        "NETWORK (",
        "⚠ SUSPICIOUS (known",
        "PROCESSES (",
        "FILESYSTEM",
        "RESOURCES",
        "⚠ ENV SCAN",
    ):
        assert part in text
    listed = json.loads(coi.ok("monitor", "--all", "--json").stdout)
    assert [s["container"] for s in listed] == [name]

    frames = watch_output(coi, name)
    assert frames.count("\033[2J\033[H") >= 2
    assert f"Container: {name}" in frames and "Last Updated: " in frames

    # Usage and resolution errors.
    both = coi("monitor", name, "--watch", "1", "--json")
    assert both.returncode == 2 and "not supported with --watch" in both.stderr
    assert coi("monitor", "--watch", "-1").returncode == 2
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    none = coi("monitor", "--json", "-w", str(empty))
    assert none.returncode == 1 and "no coi containers found" in none.stderr.lower()
    assert none.stdout == ""
    unknown = coi("monitor", f"{coi.prefix}nope-1", "--json")
    assert unknown.returncode == 1 and "not found" in unknown.stderr

    # audit: no events yet is no output; records print as JSONL (and as text on request).
    quiet = coi("audit", name)
    assert quiet.returncode == 0 and quiet.stdout == "", quiet.stderr
    record = {
        "id": "7f1c",
        "timestamp": "2026-11-27T12:00:00.000000Z",
        "level": "high",
        "category": "credential_access",
        "title": "Environment scraped",
        "description": "read /proc/1/environ",
        "evidence": {"process": {"pid": 1, "command": "sleep 300"}},
        "action": "alerted",
        "rule_id": "cred.environ",
        "container": name,
    }
    (coi.home / "audit").mkdir(exist_ok=True)
    (coi.home / "audit" / f"{name}.jsonl").write_text(json.dumps(record) + "\n")
    dumped = coi("audit", env={"COI_CONTAINER": name})
    assert dumped.returncode == 0 and [json.loads(x) for x in dumped.stdout.splitlines()] == [
        record
    ]
    readable = coi.ok("audit", name, "--format", "text").stdout
    assert "HIGH" in readable and "cred.environ" in readable and "Environment scraped" in readable
    shown = json.loads(coi.ok("monitor", name, "--json").stdout)
    assert shown["threats"] == [record]
    recording = tmp_path / "session.jsonl"
    recording.write_text(json.dumps({**record, "id": "other"}) + "\n")
    replay = coi.ok("audit", "--file", str(recording)).stdout
    assert json.loads(replay)["id"] == "other"
    missing = coi("audit", "--file", str(tmp_path / "none.jsonl"))
    assert missing.returncode == 1 and "not found" in missing.stderr

    # unfreeze / resume
    nothing = coi("unfreeze")
    assert nothing.returncode == 0 and "No frozen COI containers found" in nothing.stderr
    running = coi("unfreeze", name)
    assert running.returncode == 1
    assert f"container {name} is not frozen (status: Running)" in running.stderr
    incus.freeze(name)
    wait_for(lambda: incus.status(name) == "Frozen", what="the freeze")
    resumed = coi("resume", name)
    assert resumed.returncode == 0, resumed.stderr
    assert "Resumed 1 container(s)" in resumed.stderr and resumed.stdout == ""
    assert incus.status(name) == "Running"
    incus.freeze(name)
    wait_for(lambda: incus.status(name) == "Frozen", what="the second freeze")
    everything = coi("unfreeze")
    assert everything.returncode == 0 and "Resumed 1 container(s)" in everything.stderr
    assert incus.status(name) == "Running"


def test_audit_follow_prints_records_as_they_are_appended(coi: CoiRunner, tmp_path: Path) -> None:
    log = tmp_path / "live.jsonl"
    log.write_text(json.dumps({"id": "first", "level": "info"}) + "\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "coi_tui.cli.main", "audit", "--file", str(log), "--follow"],
        cwd=REPO,
        env=coi.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert json.loads(proc.stdout.readline())["id"] == "first"
        with log.open("a") as f:
            f.write(json.dumps({"id": "second", "level": "high"}) + "\n")
        assert json.loads(proc.stdout.readline())["id"] == "second"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    outside = coi("audit", cwd=tmp_path)  # no NAME, no $COI_CONTAINER, no container here
    assert outside.returncode == 1 and "no COI containers found" in outside.stderr


@pytest.fixture
def bare_project(incus: Incus) -> Iterator[str]:
    """An Incus project with its own default profile, which has no root disk (what a fresh
    Incus looks like before 'coi setup'); images, pools and networks are the default's."""
    name = f"coitest-{uuid.uuid4().hex[:6]}"
    incus.request(
        "POST",
        "/1.0/projects",
        body={
            "name": name,
            "config": {
                "features.images": "false",
                "features.profiles": "true",
                "features.storage.volumes": "false",
            },
        },
    )
    try:
        yield name
    finally:
        with contextlib.suppress(IncusError):
            incus.request("DELETE", f"/1.0/projects/{name}")


def test_health_fix_adds_the_missing_root_disk(coi: CoiRunner, bare_project: str) -> None:
    env = {"COI_PROJECT": bare_project}
    scoped = Incus(project=bare_project)
    assert "root" not in (scoped.get_profile("default").get("devices") or {})
    code, report = health(coi, env=env)
    assert code == 1 and not_ok(report).keys() == {"root_disk"}, not_ok(report)

    dry = coi("health", "--fix", "--dry-run", env=env)
    assert "Would fix root_disk: create the default profile's root disk" in dry.stdout
    assert dry.returncode == 1
    assert "root" not in (scoped.get_profile("default").get("devices") or {})

    fixed = coi("health", "--fix", env=env)
    assert "Fixed root_disk: [created] default profile root disk: added on pool" in fixed.stdout
    assert fixed.returncode == 0, fixed.stdout
    root = scoped.get_profile("default")["devices"]["root"]
    assert root["type"] == "disk" and root["path"] == "/" and root["pool"]
