"""SANDBOX_CONTEXT.md rows and ~/SANDBOX_CONTEXT.json (COI §4.4), and COI_USE_DUMMY's argv[0]
swap (COI §3.3), without a daemon."""

from __future__ import annotations

import json
from typing import Any

import pytest

from coi_tui.config.settings import Settings
from coi_tui.sessions.manager import Session, SessionManager
from coi_tui.tools import get_tool
from coi_tui.tools.context import ContextFacts, context_json, render_context


def facts(**extra: Any) -> ContextFacts:
    base: dict[str, Any] = {
        "container": "coi-0badcafe-2",
        "tool": "claude",
        "workspace_host": "/home/u/proj",
        "persistent": True,
        "network_mode": "allowlist",
        "ssh_agent": True,
        "timezone": "Europe/Warsaw",
    }
    return ContextFacts(**{**base, **extra})


def rows(text: str) -> dict[str, str]:
    return {
        line.split("|")[1].strip(): line.split("|")[2].strip()
        for line in text.splitlines()
        if line.startswith("| ") and line.count("|") == 3
    }


def test_environment_table_has_every_reference_row() -> None:
    table = rows(render_context(facts(forwarded_env=["GITHUB_TOKEN"], docker=False)))
    assert list(table)[2:] == [  # after the header and its rule
        "Workspace",
        "Home directory",
        "OS",
        "Architecture",
        "Container mode",
        "Network",
        "SSH agent",
        "GitHub CLI",
        "Docker",
        "User",
        "Sudo",
        "Timezone",
        "Tool",
        "Container",
    ]
    assert table["Container mode"] == "Persistent (survives between sessions)"
    assert table["Network"] == "Allowlist (only pre-approved domains allowed)"
    assert table["GitHub CLI"].startswith("Authenticated via forwarded token")
    assert table["Docker"].startswith("Not available")
    assert table["SSH agent"].startswith("Forwarded from host")
    plain = rows(render_context(facts(ssh_agent=False)))
    assert (plain["GitHub CLI"], plain["SSH agent"]) == ("Not authenticated", "Not available")


def test_context_json_shape() -> None:
    data = context_json(
        facts(
            cpu_limit="2",
            memory_limit="2GiB",
            mounts=[("/data", True)],
            protected_paths=[".git/hooks"],
            allowed_domains=["api.anthropic.com"],
        )
    )
    assert data["schema_version"] == 1
    assert data["container_name"] == "coi-0badcafe-2" and data["tool_name"] == "claude"
    assert (data["workspace_path"], data["home_dir"]) == ("/workspace", "/home/code")
    assert data["network"] == {
        "mode": "allowlist",
        "allowed_ports": [],
        "dns_servers": [],
        "allowed_domains": ["api.anthropic.com"],
    }
    assert data["limits"] == {"cpu": "2", "memory": "2GiB"}
    assert data["extra_mounts"] == ["/data"] and data["published_ports"] == []
    assert data["ssh_agent_forwarded"] is True and data["gh_cli_authenticated"] is False
    assert "profile_context" not in data
    json.dumps(data)  # serialisable as is


@pytest.mark.parametrize(("value", "swapped"), [("1", True), ("", False), ("0", False)])
def test_use_dummy_swaps_argv0_and_keeps_the_rest(
    monkeypatch: pytest.MonkeyPatch, value: str, swapped: bool
) -> None:
    monkeypatch.setenv("COI_USE_DUMMY", value)
    said: list[str] = []
    manager = SessionManager(None, Settings(), said.append)  # type: ignore[arg-type]
    session = Session("coi-0badcafe-1", "S", 1, "/w", False, get_tool("claude"))
    argv = manager.agent_command(session, debug=False)
    binary = "dummy" if swapped else "claude"
    assert argv == [
        binary,
        "--verbose",
        "--permission-mode",
        "bypassPermissions",
        "--session-id",
        "S",
    ]
    assert ("Using dummy (test stub) for faster testing" in said) is swapped
