"""The privileged path as real users meet it: a normal user in incus-admin runs coi, whose
nftables work goes through `sudo -n /usr/local/libexec/coi-netctl` that `coi setup` installed,
and nothing broader. Without that path restricted mode fails closed and open mode still runs."""

from __future__ import annotations

import json
import pwd
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from coi_tui.incus import Incus
from coi_tui.incus.provision import SUBID_FILES
from coi_tui.network import netctl
from coi_tui.network.firewall import HELPER_PATH, SUDOERS_PATH, iface_for
from coi_tui.sessions.naming import container_name
from tests.conftest import CoiRunner
from tests.integration.test_network import PROBE, Topology, topology  # noqa: F401
from tests.integration.test_users import SYSTEM_PYTHON, ensure_user, shared_python  # noqa: F401

pytestmark = pytest.mark.incus

NET_USER = "coi-test-netuser"


@pytest.fixture(scope="module")
def net_user() -> Iterator[pwd.struct_passwd]:
    saved = {path: Path(path).read_text() for path in SUBID_FILES}
    had = {
        path: path.read_bytes() if path.exists() else None for path in (HELPER_PATH, SUDOERS_PATH)
    }
    user = ensure_user(NET_USER, ["incus-admin"])
    yield user
    subprocess.run(["userdel", "--remove", NET_USER], check=False, capture_output=True)
    for path, text in saved.items():
        Path(path).write_text(text)
    for path, content in had.items():  # leave the machine's privilege set-up as it was
        if content is None:
            path.unlink(missing_ok=True)
        else:
            path.write_bytes(content)


def run_as(
    user: pwd.struct_passwd, python_path: Path, coi: CoiRunner, extra: dict[str, str], *args: str
) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": user.pw_dir,
        "USER": user.pw_name,
        "PYTHONPATH": str(python_path),
        "COI_CONTAINER_PREFIX": coi.env["COI_CONTAINER_PREFIX"],
        "COI_HOME": str(Path(user.pw_dir) / ".coi-test"),
        "LANG": "C.UTF-8",
        **extra,
    }
    argv = [SYSTEM_PYTHON, "-S", "-m", "coi_tui.cli.main", *args] if args[0] != "sudo" else args
    return subprocess.run(
        ["runuser", "-u", user.pw_name, "--", "env", *(f"{k}={v}" for k, v in env.items()), *argv],
        cwd=user.pw_dir,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_normal_user_isolates_through_the_helper_only(
    net_user: pwd.struct_passwd,
    shared_python: Path,  # noqa: F811
    topology: Topology,  # noqa: F811
    coi: CoiRunner,
    incus: Incus,
) -> None:
    workspace = Path(net_user.pw_dir) / "ws"
    workspace.mkdir(exist_ok=True)
    subprocess.run(["chown", f"{NET_USER}:", str(workspace)], check=True)
    setup = coi.ok("setup", "--user", NET_USER)
    assert "network helper" in setup.stdout and "sudo rule" in setup.stdout
    for path, mode in ((HELPER_PATH, 0o755), (SUDOERS_PATH, 0o440)):
        info = path.stat()
        assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (0, 0, mode)

    def user(extra: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
        return run_as(net_user, shared_python, coi, extra, *args)

    # The rule grants the helper and nothing else; the helper refuses anything but its grammar.
    assert user({}, "sudo", "-n", "/usr/sbin/nft", "list", "ruleset").returncode != 0
    bad = user({}, "sudo", "-n", str(HELPER_PATH), "apply", "eth0", "open", "10.0.0.1")
    assert bad.returncode == 1 and "bad interface name" in bad.stderr
    bad = user(
        {}, "sudo", "-n", str(HELPER_PATH), "apply", "coiv0000000000", "allowlist", "10.0.0.1",
        "--allow", "1.2.3.4 ; flush ruleset",
    )  # fmt: skip
    assert bad.returncode == 1 and "bad IPv4" in bad.stderr

    spec = json.dumps(
        {
            "timeout": 2,
            "tcp": [["internet", topology.internet, 8080], ["neighbor", topology.neighbor, 8080]],
        }
    )
    env = {"COI_BRIDGE": topology.bridge, "COI_NETWORK_MODE": "restricted"}
    iface = iface_for(container_name(coi.prefix, str(workspace), 1))
    topology.assert_routes()
    result = user(env, "run", "-w", str(workspace), "--", "python3", "-c", PROBE, spec)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {
        "routes": {}, "internet": True, "neighbor": False,
    }  # fmt: skip
    # The run ended: its rules went away through the same helper.
    assert iface not in netctl.interfaces(netctl.table_state())

    # [network] use_sudo = false: sudo is never called (a shim on PATH counts its calls), and
    # restricted fails closed in one line that says why.
    home = Path(net_user.pw_dir)
    shim = home / "shim"
    shim.mkdir(exist_ok=True)
    calls = home / "sudo-calls"
    (shim / "sudo").write_text(f'#!/bin/sh\necho "$@" >> {calls}\nexec /usr/bin/sudo "$@"\n')
    (shim / "sudo").chmod(0o755)
    shimmed = {**env, "PATH": f"{shim}:/usr/local/bin:/usr/bin:/bin"}
    config = home / ".coi-test" / "config.toml"
    config.parent.mkdir(exist_ok=True)
    config.write_text("[network]\nuse_sudo = false\n")
    subprocess.run(["chown", "-R", f"{NET_USER}:", str(config.parent)], check=True)
    refused = user(shimmed, "run", "-w", str(workspace), "--", "true")
    assert refused.returncode == 1
    errors = [line for line in refused.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "use_sudo = false forbids sudo" in errors[0], refused.stderr
    assert not calls.exists(), calls.read_text()
    config.unlink()
    allowed = user(shimmed, "run", "-w", str(workspace), "--", "true")  # the shim sees it
    assert allowed.returncode == 0, allowed.stderr
    assert str(HELPER_PATH) in calls.read_text()

    # Without the sudo rule: restricted fails closed in one line, open runs with a warning.
    SUDOERS_PATH.unlink()
    closed = user(env, "run", "-w", str(workspace), "--", "true")
    assert closed.returncode == 1
    errors = [line for line in closed.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "fails closed" in errors[0] and "sudo coi setup" in errors[0]
    assert not incus.list_instances(coi.prefix)
    opened = user({**env, "COI_NETWORK_MODE": "open"}, "run", "-w", str(workspace), "--", "true")
    assert opened.returncode == 0, opened.stderr
    assert "open mode continues without rules" in opened.stderr
