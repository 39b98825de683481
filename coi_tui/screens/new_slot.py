"""`n`: start a new slot. Pick the workspace, the tool and a profile."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Select

NO_PROFILE = ""


@dataclass(frozen=True)
class NewSlotRequest:
    workspace: str
    tool: str
    profile: str


class NewSlotScreen(ModalScreen[NewSlotRequest | None]):
    DEFAULT_CSS = """
    NewSlotScreen { align: center middle; }
    NewSlotScreen > Vertical {
        width: 70; height: auto; padding: 1 2;
        border: thick $primary; background: $panel;
    }
    NewSlotScreen Label { margin-top: 1; }
    NewSlotScreen Horizontal { height: auto; align-horizontal: right; margin-top: 1; }
    NewSlotScreen Button { margin-left: 2; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel", "Cancel", id="new.cancel"),
    ]

    def __init__(self, workspace: str, tools: list[str], profiles: list[str], tool: str) -> None:
        super().__init__()
        self.workspace = workspace
        self.tools = tools
        self.profiles = profiles
        self.default_tool = tool if tool in tools else (tools[0] if tools else "")

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label("New slot", classes="title")
            yield Label("Workspace")
            yield Input(self.workspace, id="workspace")
            yield Label("Tool")
            yield Select(
                [(t, t) for t in self.tools], value=self.default_tool, id="tool", allow_blank=False
            )
            yield Label("Profile")
            yield Select(
                # NO_PROFILE: as `coi shell` without --profile ([defaults] profile, if any).
                [("(as configured)", NO_PROFILE)] + [(p, p) for p in self.profiles],
                value=NO_PROFILE,
                id="profile",
                allow_blank=False,
            )
            with Horizontal():
                yield Button("Cancel", id="cancel")
                yield Button("Start", id="start", variant="primary")

    def on_mount(self) -> None:
        self.query_one("#tool", Select).focus()

    def action_cancel(self) -> None:
        self.dismiss(None)

    def request(self) -> NewSlotRequest:
        tool = self.query_one("#tool", Select).value
        profile = self.query_one("#profile", Select).value
        return NewSlotRequest(
            workspace=self.query_one("#workspace", Input).value.strip() or self.workspace,
            tool=str(tool),
            profile=str(profile) if isinstance(profile, str) else NO_PROFILE,
        )

    @on(Input.Submitted)
    def _submitted(self) -> None:
        self.dismiss(self.request())

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.dismiss(self.request() if event.button.id == "start" else None)
