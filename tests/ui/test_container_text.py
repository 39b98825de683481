"""Container-controlled text in the dashboard (issue 16, class 9): a threat whose
description quotes a hostile argv (an OSC 52 clipboard write, a CSI, a bidi override, Textual
markup) is shown with visible escapes and its markup literally, in the feed, the Audit pane
and a notification; `ps` output in the Processes pane likewise."""

from __future__ import annotations

import json
from pathlib import Path

from coi_tui.app import CoiApp
from coi_tui.dashboard.threats import AuditTail
from tests.ui.fakes import WORKSPACE, FakeBackend, slot
from tests.ui.helpers import screen_text, wait_for

SIZE = (200, 45)
A1 = "coi-aaaaaaaa-1"
OSC52 = "\x1b]52;c;cm0gLXJmIH4=\x07"
CSI = "\x1b[2J\x1b[1;1H"
BIDI = "\u202egnp.exe"
MARKUP = "[link=https://evil.example]click[/link] [b]bold[/b] [/]"
HOSTILE = f"{MARKUP} {OSC52}{CSI}{BIDI}"
RAW = ("\x1b", "\x07", "\x9b", "\u202e", "\u200b")


class HostileBackend(FakeBackend):
    def processes(self, name: str) -> str:
        self._call("processes", name)
        return f"PID USER COMMAND\n1 root /sbin/init\n42 code {HOSTILE}\u200b"


def no_raw(text: str) -> bool:
    return not any(ch in text for ch in RAW)


async def test_hostile_threat_text_is_escaped_and_never_markup(private_coi_home: Path) -> None:
    audit = private_coi_home / "audit"
    audit.mkdir()
    backend = HostileBackend([slot(A1)])
    app = CoiApp(
        backend,
        workspace=WORKSPACE,
        threats=AuditTail(audit),
        keymap={},
        remember_theme=False,
        refresh_interval=60,
    )
    record = {
        "id": "e1",
        "timestamp": "2026-05-01T10:20:30.5Z",
        "level": "warning",
        "category": "credential_access",
        "title": f"Credential scan {BIDI}",
        "description": HOSTILE,
        "evidence": {"command": HOSTILE},
        "action": "alerted",
        "rule_id": "cred.ssh-key",
    }
    (audit / f"{A1}.jsonl").write_text(json.dumps(record) + "\n")
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: "\\x1b]52;c;" in screen_text(app), what="the threat")
        screen = screen_text(app)
        assert no_raw(screen), repr(screen)
        assert "[link=https://evil.example]click[/link]" in screen  # markup shown, not used
        feed = app.main.feed
        line = feed._line_text(feed.shown[0])  # the whole line (the screen shows its start)
        assert "\\x07\\x1b[2J\\x1b[1;1H\\u202egnp.exe" in line and no_raw(line)
        assert "Credential scan \\u202egnp.exe" in line

        # the Audit pane: plain text, escapes visible
        app.main.query_one("TabbedContent").active = "tab-audit"
        await wait_for(pilot, lambda: "\\u202e" in app.main.query_one("#audit").render().plain)
        pane = app.main.query_one("#audit").render().plain
        assert no_raw(pane) and "[b]bold[/b] [/]" in pane

        # the Processes pane: the container's `ps` output, lines kept, escapes visible
        app.main.query_one("TabbedContent").active = "tab-processes"
        await wait_for(pilot, lambda: "42 code" in app.main.query_one("#processes").render().plain)
        pane = app.main.query_one("#processes").render().plain
        assert no_raw(pane) and "\\x1b]52;c;" in pane and "\\u200b" in pane
        assert "[link=https://evil.example]click[/link]" in pane
        assert "1 root /sbin/init\n42 code" in pane

        # notifications: markup never rendered, controls escaped (App and Screen paths)
        app.notify(f"{A1}: [b]bold[/b] [link=https://evil.example]x[/link] {OSC52}")
        app.main.notify(f"[red]red[/red] {BIDI}", title=f"t{CSI}", markup=True)
        await wait_for(pilot, lambda: len(app._notifications) >= 2, what="the notifications")
        first, second = list(app._notifications)[-2:]
        assert not first.markup and not second.markup  # the toast shows Content(message)
        assert first.message == (
            f"{A1}: [b]bold[/b] [link=https://evil.example]x[/link] \\x1b]52;c;cm0gLXJmIH4=\\x07"
        )
        assert second.message == "[red]red[/red] \\u202egnp.exe"
        assert second.title == "t\\x1b[2J\\x1b[1;1H"
