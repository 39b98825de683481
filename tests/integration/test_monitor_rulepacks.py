"""Rule packs in the real daemon: a Sigma rule and a GTFOBins entry dropped into the folders the
monitor home's config.toml names ([detection] sigma_dir, gtfobins_dir) fire on matching execs
in a real container, look-alikes stay silent, and an unsupported rule, a planted symlink and a
FIFO are skipped and counted in the daemon's log, never followed or waited on (see
coi_tui/monitor/rulepacks.py)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_monitor import Monitor, running_monitor

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the monitor daemon needs root")

SIGMA_RULE = """title: Rule pack probe
id: coi-test-probe
status: test
logsource:
    product: linux
    category: process_creation
detection:
    selection:
        Image|endswith: '/true'
        CommandLine|contains|all:
            - 'coi-rulepack'
            - ' --probe'
    filter:
        CommandLine|contains: 'dry-run'
    condition: selection and not filter
level: medium
"""
UNSUPPORTED_RULE = SIGMA_RULE.replace("coi-test-probe", "coi-test-regex").replace(
    "CommandLine|contains: 'dry-run'", "CommandLine|re: 'dry.run'"
)
# the shape of a GTFOBins entry (the newer layout), for a binary every image has
GTFOBINS_ENTRY = (
    "---\nfunctions:\n  reverse-shell:\n  - code: |-\n"
    "      true --coi-gtfo-shape /bin/sh attacker.com 12345\n"
    "    contexts:\n      unprivileged:\n...\n"
)


@pytest.fixture(scope="module")
def packs_mon(
    run_prefix: str, incus: Any, image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Monitor]:
    packs = tmp_path_factory.mktemp("rule-packs")
    sigma = packs / "sigma" / "rules" / "linux" / "process_creation"
    sigma.mkdir(parents=True)
    (sigma / "probe.yml").write_text(SIGMA_RULE)
    (sigma / "regex.yml").write_text(UNSUPPORTED_RULE)
    gtfobins = packs / "gtfobins" / "_gtfobins"
    gtfobins.mkdir(parents=True)
    (gtfobins / "true").write_text(GTFOBINS_ENTRY)
    # what a user could plant for the root daemon: a link to a file outside the pack (a
    # valid entry there: followed, it would load a rule) and a FIFO (opened blocking, the
    # daemon would never start)
    outside = packs / "outside"
    outside.write_text(GTFOBINS_ENTRY.replace("true --coi", "false --coi"))
    (gtfobins / "false").symlink_to(outside)
    os.mkfifo(gtfobins / "cat")
    detection = (
        f'[detection]\nsigma_dir = "{packs / "sigma"}"\ngtfobins_dir = "{packs / "gtfobins"}"\n'
    )
    with running_monitor(
        f"{run_prefix}r", incus, image, tmp_path_factory, settings=detection
    ) as monitor:
        yield monitor


def pack_threats(mon: Monitor, name: str) -> list[dict[str, Any]]:
    return [t for t in mon.events.threats(name) if t["rule_id"].startswith(("sigma.", "gtfobins."))]


def test_dropped_rule_files_fire_and_look_alikes_stay_silent(packs_mon: Monitor) -> None:
    mon = packs_mon
    log = (mon.home / "logs" / "monitor.log").read_text()
    assert "rule packs: 1 sigma, 1 gtfobins, " in log and ", 3 skipped" in log, log
    assert "regex.yml: modifier 're' is not supported" in log
    assert "_gtfobins/false: a symbolic link (not followed)" in log
    assert "_gtfobins/cat: not a regular file" in log
    name = mon.container()
    # look-alikes first, in one script: half the pattern, another binary, the filter; the
    # rule queue is judged in order, so by the time the match is reported they were judged
    mon.sh(
        name,
        "/bin/true coi-rulepack; /bin/false coi-rulepack --probe || true; "
        "/bin/true coi-rulepack --probe dry-run; /bin/true --coi-gtfo-shape /bin/bash; "
        "/bin/true coi-rulepack --probe",
    )
    hit = mon.threat(name, {"sigma.coi-test-probe"})
    assert (hit["level"], hit["category"], hit["action"]) == ("warning", "proc_event", "alerted")
    assert hit["evidence"]["process"]["command"] == "/bin/true coi-rulepack --probe"
    assert pack_threats(mon, name) == [hit]
    # the GTFOBins-derived rule: HIGH, so the container is frozen
    mon.trigger(name, "/bin/true --coi-gtfo-shape /bin/sh 10.199.0.1 4444")
    shape = mon.threat(name, {"gtfobins.true"})
    assert (
        shape["level"] == "high" and "--coi-gtfo-shape" in shape["evidence"]["process"]["pattern"]
    )
    mon.assert_status(name, "Frozen")
    listed = mon.coi("monitor", "rules", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    report = json.loads(listed.stdout)
    assert report["counts"]["sigma"] == 1 and report["counts"]["gtfobins"] == 1
    assert sorted(Path(s["path"]).name for s in report["skipped"]) == ["cat", "false", "regex.yml"]
