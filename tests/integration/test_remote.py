"""Remotes: the local daemon reached over HTTPS on loopback works exactly like the socket, a
wrong fingerprint is refused, and an unreachable remote is one clear line."""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from coi_tui.incus import Incus, IncusError
from tests.conftest import CoiRunner
from tests.integration.test_sessions import wait_for

pytestmark = pytest.mark.incus


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def https_daemon(incus: Incus) -> Iterator[tuple[str, str, str]]:
    """(address, server fingerprint, trust name) with core.https_address on loopback only."""
    address = f"127.0.0.1:{free_port()}"
    trust_name = f"coitest-{uuid.uuid4().hex[:6]}"
    incus.request("PATCH", "/1.0", body={"config": {"core.https_address": address}})
    try:
        fingerprint = incus.server_info["environment"]["certificate_fingerprint"]
        yield f"https://{address}", fingerprint, trust_name
    finally:
        incus.request("PATCH", "/1.0", body={"config": {"core.https_address": ""}})
        for cert in incus.request("GET", "/1.0/certificates", params={"recursion": 1}) or []:
            if str(cert.get("name", "")).startswith(trust_name):
                with contextlib.suppress(IncusError):
                    incus.request("DELETE", f"/1.0/certificates/{cert['fingerprint']}")


def trust_token(incus: Incus, name: str) -> str:
    """What `incus config trust add NAME` prints on the server."""
    # The token's operation stays pending until the token is used: do not wait for it.
    op = incus.request(
        "POST",
        "/1.0/certificates",
        body={"name": name, "type": "client", "token": True},
        wait=False,
    )
    meta = op.get("metadata") or {}
    token = {
        "client_name": name,
        "fingerprint": meta["fingerprint"],
        "addresses": meta["addresses"],
        "secret": meta["secret"],
        "expires_at": "0001-01-01T00:00:00Z",
    }
    return base64.b64encode(json.dumps(token).encode()).decode()


def test_sessions_through_the_https_remote(
    coi: CoiRunner, https_daemon: tuple[str, str, str], incus: Incus, workspace: Path
) -> None:
    _, fingerprint, trust_name = https_daemon
    token = trust_token(incus, trust_name)
    added = coi.ok("remote", "add", "lo", token)
    assert "Added remote 'lo'" in added.stdout
    assert (coi.home / "client.crt").exists() and (coi.home / "remotes.toml").exists()
    listed = json.loads(coi.ok("remote", "list", "--json").stdout)
    assert listed[0]["name"] == "lo" and listed[0]["status"].startswith("online")
    assert listed[0]["fingerprint"] == fingerprint

    shell = coi.ok(
        "--remote", "lo", "shell", "--background", "--tool", "dummy", "-w", str(workspace)
    )
    name = next(
        line.split(": ", 1)[1]
        for line in shell.stderr.splitlines()
        if line.startswith("Container: ")
    )
    assert incus.status(name) == "Running"  # it really is on the (same) daemon
    remote_list = json.loads(coi.ok("list", "--json", "--remote", "lo").stdout)
    local_list = json.loads(coi.ok("list", "--json").stdout)
    assert [c["name"] for c in remote_list["active_containers"]] == [name]
    assert remote_list["active_containers"] == local_list["active_containers"]

    def remote_capture() -> str:
        return coi("--remote", "lo", "tmux", "capture", name).stdout

    wait_for(lambda: "dummy>" in remote_capture(), what="the agent through the remote")
    coi.ok("--remote", "lo", "kill", "--force", name)
    assert not incus.instance_exists(name)
    # --target through the remote: the remote's name in the one-line refusal.
    targeted = coi(
        "--remote", "lo", "--target", "m1", "shell", "--background", "-w", str(workspace)
    )
    assert targeted.returncode == 1
    assert "Error: --target needs a clustered Incus server; 'lo' is not clustered" in (
        targeted.stderr
    )


def test_wrong_fingerprint_is_refused(coi: CoiRunner, https_daemon: tuple[str, str, str]) -> None:
    address, fingerprint, _ = https_daemon
    wrong = "ab" * 32
    result = coi("remote", "add", "bad", address, "--fingerprint", wrong)
    assert result.returncode == 1
    assert "refusing" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    # A pinned fingerprint that stops matching (say, a server swapped under us) is refused too.
    (coi.home / "remotes.toml").write_text(
        f'[[remotes]]\nname = "pinned"\naddress = "{address}"\nfingerprint = "{wrong}"\n'
    )
    result = coi("--remote", "pinned", "list")
    assert result.returncode == 1
    assert "does not match its pinned fingerprint" in result.stderr
    assert fingerprint[:16] in result.stderr


def test_unreachable_and_unknown_remotes(coi: CoiRunner) -> None:
    port = free_port()  # nothing listens there
    (coi.home / "remotes.toml").write_text(
        f'[[remotes]]\nname = "gone"\naddress = "https://127.0.0.1:{port}"\n'
        f'fingerprint = "{"cd" * 32}"\n'
    )
    result = coi("--remote", "gone", "list")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "unreachable" in lines[0]
    listed = json.loads(coi.ok("remote", "list", "--json").stdout)
    assert listed[0]["status"].startswith("offline")
    unknown = coi("--remote", "nope", "list")
    assert unknown.returncode == 1 and "unknown remote 'nope'" in unknown.stderr


def test_target_on_a_server_that_is_not_clustered(
    coi: CoiRunner, incus: Incus, workspace: Path
) -> None:
    assert not incus.server_info["environment"].get("server_clustered")
    for args in (
        ("shell", "--background", "--tool", "dummy", "-w", str(workspace), "--target", "m1"),
        ("--target=m1", "shell", "--background", "--tool", "dummy", "-w", str(workspace)),
    ):
        result = coi(*args)
        assert result.returncode == 1, result.stderr
        errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
        assert errors == [
            "Error: --target needs a clustered Incus server; 'local' is not clustered"
        ]
    assert incus.list_instances(coi.prefix) == []  # nothing was created
    # Commands that create nothing ignore it.
    assert coi("--target", "m1", "list").returncode == 0
