"""The full coi-default image is a workbench: Docker (usable by `code` without sudo), Node.js,
gh, ripgrep, database clients, ImageMagick... and `[container] docker = false` drops the
nesting keys without breaking the session."""

from __future__ import annotations

from pathlib import Path

import pytest

from coi_tui.incus import Incus
from coi_tui.sessions.kernel_hook import DOCKER_KEYS
from tests.conftest import CoiRunner
from tests.integration.test_sessions import capture, start_background, wait_for

pytestmark = pytest.mark.incus

TOOLS = [
    "docker --version",
    "gh --version",
    "node --version",
    "npm --version",
    "rg --version",
    "fd --version",
    "bat --version",
    "jq --version",
    "sqlite3 --version",
    "psql --version",
    "redis-cli --version",
    "convert --version",
    "gcc --version",
    "python3 -m venv --help",
    "strace -V",
    "lsof -v",
    "tree --version",
    "wget --version",
]

# dockerd starts with the container's systemd; wait for it (a condition, bounded) first.
DOCKER_RUN = """
set -e
for i in $(seq 90); do docker info >/dev/null 2>&1 && break; sleep 1; done
mkdir -p /tmp/mini && cp /bin/busybox /tmp/mini/busybox
tar -C /tmp/mini -c . | docker import - coi-mini >/dev/null
docker run --rm coi-mini /busybox echo hello-from-docker
"""


def test_workbench_tools_and_docker_run_as_code(coi: CoiRunner, workspace: Path) -> None:
    script = "; ".join(f"{cmd} >/dev/null 2>&1 || echo MISSING: {cmd}" for cmd in TOOLS)
    # and tmux as COI's image sets it up: a long scrollback, Escape without delay
    tmux = "tmux new -d -s t; tmux show -gv history-limit; tmux show -sv escape-time"
    tools = coi("run", "-w", str(workspace), "--", "sh", "-c", f"{script}; id -nG; {tmux}")
    assert tools.returncode == 0, tools.stderr
    assert "MISSING" not in tools.stdout, tools.stdout
    *_, groups, history, escape = tools.stdout.splitlines()
    assert "docker" in groups.split()  # code may use docker without sudo
    assert (history, escape) == ("50000", "10")

    docker = coi("run", "-w", str(workspace), "--", "sh", "-c", DOCKER_RUN, timeout=300)
    assert docker.returncode == 0, docker.stderr
    assert docker.stdout.strip().splitlines()[-1] == "hello-from-docker"


def test_docker_false_drops_the_nesting_keys(coi: CoiRunner, workspace: Path, incus: Incus) -> None:
    with_docker = start_background(coi, workspace)
    config = incus.get_instance(with_docker).config
    assert all(config.get(key) == value for key, value in DOCKER_KEYS.items())
    assert config.get("security.privileged", "false") != "true"

    name = start_background(coi, workspace, env={"COI_DOCKER": "false"})
    config = incus.get_instance(name).config
    assert not any(key in config for key in DOCKER_KEYS), config
    wait_for(lambda: "dummy>" in capture(coi, name), what="the agent without docker keys")
