"""The session list: one row per coi container, the current workspace's containers first."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import ClassVar

from rich.style import Style
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.theme import Theme
from textual.widgets import DataTable, Static

from coi_tui.incus import Instance

EMPTY_MESSAGE = "No coi containers yet - start one with `coi shell`"
LOADING_MESSAGE = "Loading containers…"
MISSING = "-"

# Incus config keys written by `coi` when it launches a container.
PERSISTENT_KEY = "user.coi.persistent"
WORKSPACE_KEY = "user.coi.workspace"
TOOL_KEY = "user.coi.tool"
SLOT_KEY = "user.coi.slot"

COLUMNS: tuple[tuple[str, str], ...] = (
    ("name", "Name"),
    ("slot", "Slot"),
    ("status", "Status"),
    ("mode", "Mode"),
    ("workspace", "Workspace"),
    ("tool", "Tool"),
    ("ipv4", "IPv4"),
    ("created", "Created"),
)

# Status -> component class; anything else (Starting, Error, ...) uses the error style.
STATUS_COMPONENTS = {
    "Running": "session-table--running",
    "Stopped": "session-table--stopped",
    "Frozen": "session-table--frozen",
}


def workspace_hash(workspace: str) -> str:
    """The 8 hex chars coi puts in container names (sha256 of the absolute, unresolved path)."""
    return hashlib.sha256(os.path.abspath(workspace).encode()).hexdigest()[:8]


def display_path(path: str) -> str:
    """Shorten the home directory to ~ so long paths fit the column."""
    home = os.path.expanduser("~")
    if home not in ("", "/") and (path == home or path.startswith(home + os.sep)):
        return "~" + path[len(home) :]
    return path


def format_created(created_at: str) -> str:
    """Incus timestamps (RFC 3339, nanoseconds) as local 'YYYY-MM-DD HH:MM'."""
    if not created_at or created_at.startswith("0001-"):
        return MISSING
    # fromisoformat takes at most microseconds and, on 3.11, wants an explicit offset.
    text = re.sub(r"(\.\d{6})\d+", r"\1", created_at.replace("Z", "+00:00"))
    try:
        return datetime.fromisoformat(text).astimezone().strftime("%Y-%m-%d %H:%M")
    except ValueError:
        return created_at


@dataclass(frozen=True)
class SessionRow:
    """What the table shows for one container (plain data, easy to compare and test)."""

    name: str
    slot: str
    status: str
    mode: str
    workspace: str
    tool: str
    ipv4: str
    created: str
    current: bool

    @classmethod
    def from_instance(cls, instance: Instance, prefix: str, workspace: str) -> SessionRow:
        config = instance.config
        match = re.fullmatch(rf"{re.escape(prefix)}([a-f0-9]{{8}})-(\d+)", instance.name)
        slot = match.group(2) if match else config.get(SLOT_KEY, MISSING)
        ws = config.get(WORKSPACE_KEY, "")
        # Prefer the recorded workspace; older containers only carry the hash in their name.
        if ws:
            current = ws == workspace
        else:
            current = bool(match and match.group(1) == workspace_hash(workspace))
        return cls(
            name=instance.name,
            slot=slot,
            status=instance.status or MISSING,
            mode="persistent" if config.get(PERSISTENT_KEY) == "true" else "ephemeral",
            workspace=display_path(ws) if ws else MISSING,
            tool=config.get(TOOL_KEY) or MISSING,
            ipv4=instance.ipv4 or MISSING,
            created=format_created(instance.created_at),
            current=current,
        )


def session_rows(instances: Iterable[Instance], prefix: str, workspace: str) -> list[SessionRow]:
    """Rows in display order: this workspace first, then by workspace, slot and name."""
    rows = [SessionRow.from_instance(i, prefix, workspace) for i in instances]

    def order(row: SessionRow) -> tuple[bool, str, int, str]:
        slot = int(row.slot) if row.slot.isdigit() else 0
        return (not row.current, row.workspace, slot, row.name)

    return sorted(rows, key=order)


class SessionTable(Vertical):
    """A table of coi containers with an empty-state / error line above it."""

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "session-table--current",
        "session-table--running",
        "session-table--stopped",
        "session-table--frozen",
        "session-table--error",
    }

    DEFAULT_CSS = """
    SessionTable {
        height: 1fr;
        border: round $panel-lighten-2;
        border-title-color: $text-primary;
        border-subtitle-color: $foreground-muted;
        &:focus-within { border: round $primary; }
        & > #session-message {
            padding: 1 2;
            color: $foreground-muted;
            &.-error { color: $text-error; background: $error-muted; }
        }
        & > DataTable { height: 1fr; }
        & > .session-table--current { color: $text-accent; text-style: bold; }
        & > .session-table--running { color: $text-success; }
        & > .session-table--stopped { color: $foreground-muted; }
        & > .session-table--frozen { color: $text-warning; }
        & > .session-table--error { color: $text-error; }
    }
    """

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self._rows: list[SessionRow] = []
        self._error: str | None = None
        self._loaded = False

    @property
    def rows(self) -> list[SessionRow]:
        return list(self._rows)

    @property
    def message(self) -> str:
        """The text of the empty-state / error line (empty when it is hidden)."""
        label = self.query_one("#session-message", Static)
        return str(label.content) if label.display else ""

    def compose(self) -> ComposeResult:
        yield Static(LOADING_MESSAGE, id="session-message", markup=False)
        table: DataTable[Text] = DataTable(cursor_type="row", zebra_stripes=True)
        for key, label in COLUMNS:
            table.add_column(label, key=key)
        yield table

    def on_mount(self) -> None:
        self.border_title = "Sessions"
        # Cells hold Rich styles taken from the theme, so rebuild them when the theme changes.
        self.app.theme_changed_signal.subscribe(self, self._on_theme_changed)

    def _on_theme_changed(self, _theme: Theme) -> None:
        self._render_rows(force=True)

    def show_rows(self, rows: list[SessionRow]) -> None:
        """Replace the rows after a successful refresh (clears any error)."""
        changed = rows != self._rows or not self._loaded
        self._rows, self._error, self._loaded = list(rows), None, True
        self._render_rows(force=changed)

    def show_error(self, message: str) -> None:
        """Report a failed refresh; rows from the last good refresh stay visible."""
        self._error = message
        self._update_message()

    def _update_message(self) -> None:
        label = self.query_one("#session-message", Static)
        if self._error:
            text = self._error
            if self._rows:
                text += " (showing the last known list)"
        elif not self._loaded:
            text = LOADING_MESSAGE
        elif not self._rows:
            text = EMPTY_MESSAGE
        else:
            text = ""
        label.update(text)
        label.set_class(bool(self._error), "-error")
        label.display = bool(text)
        self.query_one(DataTable).display = bool(self._rows)
        count, here = len(self._rows), sum(row.current for row in self._rows)
        plural = "" if count == 1 else "s"
        summary = f"{count} container{plural} · {here} in this workspace"
        # No counts while nothing has been listed: "0 containers" would be a guess.
        self.border_subtitle = summary if self._rows or (self._loaded and not self._error) else ""

    def _render_rows(self, force: bool) -> None:
        self._update_message()
        if not force:
            return
        table: DataTable[Text] = self.query_one(DataTable)
        # Keep the cursor on the same container across refreshes.
        selected = None
        if table.row_count and table.is_valid_row_index(table.cursor_row):
            selected = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        table.clear()
        for row in self._rows:
            table.add_row(*self._cells(row), key=row.name)
        names = [row.name for row in self._rows]
        if selected in names:
            table.move_cursor(row=names.index(selected), animate=False)

    def _style(self, component: str) -> Style:
        # The full style blends translucent colours (e.g. $foreground-muted) with the
        # background; keep only the foreground so zebra stripes and the cursor show through.
        style = self.get_component_rich_style(component)
        return Style(color=style.color, bold=style.bold, italic=style.italic)

    def _cells(self, row: SessionRow) -> list[Text]:
        # Text (not str) so names and paths are never parsed as Rich markup.
        accent = self._style("session-table--current") if row.current else Style()
        status = self._style(STATUS_COMPONENTS.get(row.status, "session-table--error"))
        return [
            Text(row.name, style=accent),
            Text(row.slot, justify="right"),
            Text(row.status, style=status),
            Text(row.mode),
            Text(row.workspace, style=accent),
            Text(row.tool),
            Text(row.ipv4),
            Text(row.created),
        ]
