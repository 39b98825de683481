"""Attack: a repository widens the allowlist to the LAN and the cloud metadata service
(issue 16, class 5) with `mode = "allowlist"` and a network or a private address in
`allowed_domains`. The session is refused with one line and no container is left behind;
coi-netctl (root) refuses the same entries whoever asks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import CoiRunner

pytestmark = pytest.mark.incus


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("0.0.0.0/0", "is a network"),
        ("192.168.0.0/16", "is a network"),
        ("169.254.169.254", "not a public address"),
        ("10.0.0.1", "not a public address"),
    ],
)
def test_a_repository_cannot_open_the_lan_through_the_allowlist(
    coi: CoiRunner, tmp_path: Path, entry: str, message: str
) -> None:
    repo = tmp_path / "repo"
    (repo / ".coi").mkdir(parents=True)
    (repo / ".coi" / "config.toml").write_text(
        f'[network]\nmode = "allowlist"\nallowed_domains = ["{entry}"]\n'
    )
    # Names beyond the user's own list wait for 'coi trust'...
    shown = coi.ok("config", "show", "--sources", cwd=repo).stdout
    assert f"waiting for 'coi trust': network.allowed_domains = [\"{entry}\"]" in shown
    # ...and even trusted, a network or a private address is refused.
    result = coi(
        "run", "-w", str(repo), "--", "true", cwd=repo, timeout=240, env={"COI_TRUST_ALL": "1"}
    )
    assert result.returncode != 0
    assert message in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert len(errors) == 1, result.stderr
    listed = json.loads(coi.ok("list", "--all", "--json").stdout)
    assert coi.prefix not in json.dumps(listed.get("active_containers", listed))


@pytest.mark.parametrize("entry", ["0.0.0.0/0", "169.254.169.254", "192.168.1.1"])
def test_netctl_refuses_private_allow_entries(entry: str) -> None:
    """The root helper's own check (the last line, for any caller that skips resolve)."""
    result = subprocess.run(
        [sys.executable, "-m", "coi_tui.network.netctl", "apply", "coiv00c0ffee00", "allowlist",
         "10.1.2.1", "--allow", entry],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode != 0
    assert "--allow" in result.stderr and "Traceback" not in result.stderr
