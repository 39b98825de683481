"""Attack: the agent reaches for the kernel interfaces that carry most container escapes
(io_uring, bpf, userfaultfd, the keyring, perf events), as `code` and as container root.
With `[security] reduce_kernel_surface` (the hardened profile's) every one fails with ENOSYS
and Docker's nesting keys stay off; `_strict` adds perf_event_open; without it they work."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from coi_tui.sessions.kernel_hook import DENY_KEY, DOCKER_KEYS
from coi_tui.sessions.naming import container_name
from tests.conftest import CoiRunner

pytestmark = pytest.mark.incus

# syscall number (x86_64) and arguments that make each fail fast when it is allowed
PROBE = """
import ctypes, json, os
libc = ctypes.CDLL(None, use_errno=True)
calls = {
    "io_uring_setup": (425, 1, 0), "bpf": (321, 0, 0, 0), "userfaultfd": (323, 0),
    "keyctl": (250, 0, -3), "add_key": (248, 0, 0, 0, 0, 0), "request_key": (249, 0, 0, 0, 0),
    "perf_event_open": (298, 0, 0, -1, -1, 0),
}
out = {}
for name, args in calls.items():
    ctypes.set_errno(0)
    result = libc.syscall(*[ctypes.c_long(a) for a in args])
    out[name] = "ok" if result >= 0 else os.strerror(ctypes.get_errno())
print(json.dumps(out))
"""
NOSYS = "Function not implemented"
REDUCED = {"io_uring_setup", "bpf", "userfaultfd", "keyctl", "add_key", "request_key"}


def probe(coi: CoiRunner, workspace: Path, config: str) -> tuple[dict[str, str], dict[str, str]]:
    """The probe's result as code and as root (sudo) in one `coi run` with `config`."""
    (coi.home / "config.toml").write_text(config)
    (workspace / "probe.py").write_text(PROBE)
    result = coi(
        "run", "-w", str(workspace), "--", "sh", "-c", "python3 probe.py; sudo python3 probe.py"
    )
    assert result.returncode == 0, result.stderr
    as_code, as_root = (json.loads(line) for line in result.stdout.strip().splitlines()[-2:])
    return as_code, as_root


def test_without_the_setting_the_interfaces_answer(coi: CoiRunner, workspace: Path) -> None:
    as_code, as_root = probe(coi, workspace, "")
    for seen in (as_code, as_root):
        assert seen["keyctl"] == "ok" and seen["io_uring_setup"] != NOSYS, seen


def test_reduce_kernel_surface_denies_them_to_code_and_root(
    coi: CoiRunner, workspace: Path
) -> None:
    as_code, as_root = probe(coi, workspace, "[security]\nreduce_kernel_surface = true\n")
    for seen in (as_code, as_root):
        assert {name for name, got in seen.items() if got == NOSYS} == REDUCED, seen


def test_strict_also_denies_perf_events(coi: CoiRunner, workspace: Path) -> None:
    as_code, as_root = probe(coi, workspace, "[security]\nreduce_kernel_surface_strict = true\n")
    for seen in (as_code, as_root):
        assert all(got == NOSYS for got in seen.values()), seen


def test_the_reduced_container_has_no_nesting(coi: CoiRunner, workspace: Path, incus: Any) -> None:
    (coi.home / "config.toml").write_text("[security]\nreduce_kernel_surface = true\n")
    coi.ok("shell", "--background", "--tool", "dummy", "-w", str(workspace))
    config = incus.get_instance(container_name(coi.prefix, str(workspace), 1)).config
    assert not any(key in config for key in DOCKER_KEYS), config  # reduce wins over docker
    assert "io_uring_setup errno 38" in config[DENY_KEY]
    assert config.get("security.privileged", "false") != "true"
