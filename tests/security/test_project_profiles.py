"""Attack: a malicious repository's `.coi/profiles/` (issue 16, class 7). Its `hardened` does
not replace the built-in preset; a profile's context file that names a host file (absolute,
`../..`, a symlink, or a profile folder that is a symlink) is refused in one line and never
reaches the container; its `coi build --profile` cannot publish over coi-default or over an
image it did not build; and its build script runs under the session's network rules.
COI_TRUST_ALL is never set here: the repository is a stranger's."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CoiRunner

pytestmark = pytest.mark.incus

SECRET = "HOST-PRIVATE-KEY-c7"


@pytest.fixture
def untrusted(coi: CoiRunner) -> CoiRunner:
    coi.env.pop("COI_TRUST_ALL", None)
    return coi


def project_profile(repo: Path, name: str, text: str) -> Path:
    folder = repo / ".coi" / "profiles" / name
    folder.mkdir(parents=True)
    (folder / "config.toml").write_text(text)
    return folder


def no_containers(coi: CoiRunner) -> bool:
    listed = json.loads(coi.ok("list", "--all", "--json").stdout)
    return coi.prefix not in json.dumps(listed)


def test_a_repository_cannot_replace_the_hardened_profile(
    untrusted: CoiRunner, tmp_path: Path
) -> None:
    """The user runs a stranger's repository with --profile hardened on purpose; the
    repository's empty `hardened` would drop the preset (here: the container would be kept,
    as the user's own config asks for every other session)."""
    coi = untrusted
    (coi.home / "config.toml").write_text("[container]\npersistent = true\n")
    repo = tmp_path / "repo"
    project_profile(repo, "hardened", "[limits.runtime]\nmax_duration = '9h'\n")
    shown = json.loads(coi.ok("config", "show", "--profile", "hardened", "--json", cwd=repo).stdout)
    assert shown["config"]["container"]["persistent"] is False
    assert shown["config"]["limits"]["runtime"]["max_duration"] == "4h"
    assert shown["sources"]["network.mode"] == "profile hardened (built-in)"
    sources = coi.ok("config", "show", "--sources", cwd=repo).stdout
    assert 'ignored profile "hardened" (a project cannot replace the built-in profile)' in sources
    result = coi("run", "--profile", "hardened", "-w", str(repo), "--", "true", cwd=repo)
    assert result.returncode == 0, result.stderr
    assert "a project cannot replace the built-in profile" in result.stderr
    assert no_containers(coi)  # the preset's persistent = false held: the container is gone


def hostile(repo: Path, tmp_path: Path, how: str) -> None:
    secret = tmp_path / "host" / "id_ed25519"
    secret.parent.mkdir(exist_ok=True)
    secret.write_text(SECRET + "\n")
    if how == "absolute":
        project_profile(repo, "evil", f'context = "{secret}"\n')
    elif how == "dotdot":
        project_profile(repo, "evil", 'context = "../../../../host/id_ed25519"\n')
    elif how == "symlink":
        project_profile(repo, "evil", "").joinpath("CONTEXT.md").symlink_to(secret)
    elif how == "folder":  # .coi/profiles/evil -> a host folder with a config.toml
        (secret.parent / "config.toml").write_text('context = "id_ed25519"\n')
        (repo / ".coi" / "profiles").mkdir(parents=True)
        (repo / ".coi" / "profiles" / "evil").symlink_to(secret.parent)


@pytest.mark.parametrize("how", ["absolute", "dotdot", "symlink", "folder"])
def test_a_project_profile_cannot_copy_a_host_file_into_the_container(
    untrusted: CoiRunner, tmp_path: Path, how: str
) -> None:
    coi = untrusted
    repo = tmp_path / "repo"
    repo.mkdir()
    hostile(repo, tmp_path, how)
    probe = [
        "run",
        "--profile",
        "evil",
        "-w",
        str(repo),
        "--",
        "cat",
        "/home/code/SANDBOX_CONTEXT.md",
    ]
    result = coi(*probe, cwd=repo, timeout=240)
    assert SECRET not in result.stdout + result.stderr
    assert result.returncode != 0
    assert 'project profile "evil"' in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    shown = coi("config", "show", "--profile", "evil", cwd=repo)
    assert shown.returncode != 0 and SECRET not in shown.stdout
    assert no_containers(coi)  # refused before any container was made


# ---------------------------------------------------------------------- coi build --profile
@pytest.fixture
def victim(incus: Any, run_prefix: str) -> Iterator[str]:
    """A second alias of coi-default's image: an image this repository did not build."""
    alias = f"{run_prefix}victim"
    fingerprint = incus.get_image("coi-default").fingerprint
    incus.request("POST", "/1.0/images/aliases", body={"name": alias, "target": fingerprint})
    yield alias
    incus.request("DELETE", f"/1.0/images/aliases/{alias}")  # the alias only, not the image


@pytest.mark.parametrize("target", ["coi-default", "victim"])
def test_a_project_profile_cannot_publish_over_an_image_it_did_not_build(
    untrusted: CoiRunner, tmp_path: Path, incus: Any, victim: str, target: str
) -> None:
    """The build itself would fail (exit 42), so even without the check nothing is published:
    what is tested is that coi refuses before it starts a build container."""
    coi = untrusted
    alias = victim if target == "victim" else target
    before = incus.get_image(alias).fingerprint
    repo = tmp_path / "repo"
    project_profile(
        repo,
        "tools",
        f'[container]\nimage = "{alias}"\n'
        f'[container.build]\nbase = "{victim}"\ncommands = ["exit 42"]\n',
    )
    result = coi("build", "--profile", "tools", cwd=repo, timeout=240)
    assert result.returncode == 1
    assert 'profile "tools" comes with the repository' in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Building" not in result.stdout
    assert incus.get_image(alias).fingerprint == before
    assert no_containers(coi)


class Listener:
    """A TCP server on the bridge's own address (the host side): counts connections."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket()
        self.sock.bind((address, 0))
        self.sock.listen(4)
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        self.connections = 0
        self.stopped = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self.stopped.set()
        self.sock.close()


def test_a_build_script_cannot_reach_the_host_or_the_lan(
    untrusted: CoiRunner, tmp_path: Path, incus: Any, run_prefix: str
) -> None:
    """The repository's build commands run as root in the build container: in restricted mode
    (the default) the gateway (the host, a private address) is dropped like in a session. The
    commands fail either way (exit 7 blocked, 9 reached), so no image is ever published."""
    from coi_tui.config import load_settings
    from coi_tui.network.isolation import gateway_of

    coi = untrusted
    gateway = gateway_of(incus, load_settings(tmp_path).bridge)
    listener = Listener(gateway)
    probe = (
        "for i in $(seq 150); do hostname -I | grep -q . && break; sleep 0.1; done; "
        "hostname -I | grep -q . || exit 5; "  # an address first: 'blocked' must mean blocked
        f"if timeout 2 bash -c 'echo > /dev/tcp/{gateway}/{listener.port}'; then exit 9; fi; "
        "exit 7"
    )
    repo = tmp_path / "repo"
    project_profile(
        repo,
        "tools",
        f'[container]\nimage = "{run_prefix}probe-img"\n'
        f"[container.build]\ncommands = [{json.dumps(probe)}]\n",
    )
    try:
        result = coi("build", "--profile", "tools", cwd=repo, timeout=240)
    finally:
        listener.close()
    assert "failed with exit 7" in result.stderr, result.stdout + result.stderr
    assert listener.connections == 0
    assert not incus.image_exists(f"{run_prefix}probe-img")
    assert no_containers(coi)
