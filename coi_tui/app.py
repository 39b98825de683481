"""coi-tui: the Textual dashboard for coi containers (entry point `coi-tui`)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from typing import ClassVar, Protocol

from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.message import Message
from textual.timer import Timer
from textual.widgets import DataTable, Footer, Header
from textual.worker import Worker, WorkerState, get_current_worker

from coi_tui import __version__
from coi_tui.errors import CoiError
from coi_tui.incus import Incus, Instance
from coi_tui.themes import APP_CSS_PATH, COI_THEME
from coi_tui.widgets import SessionTable, session_rows
from coi_tui.widgets.session_table import display_path

DEFAULT_PREFIX = "coi-"
REFRESH_SECONDS = 2.0
REFRESH_GROUP = "refresh"


class InstanceSource(Protocol):
    """Where the dashboard gets containers from: `Incus` in real life, a fake in tests."""

    def list_instances(self, prefix: str, with_state: bool) -> list[Instance]: ...


class InstancesLoaded(Message):
    """A refresh worker listed the containers."""

    def __init__(self, instances: list[Instance]) -> None:
        super().__init__()
        self.instances = instances


class InstancesFailed(Message):
    """A refresh worker could not list the containers; `error` is one line for the user."""

    def __init__(self, error: str) -> None:
        super().__init__()
        self.error = error


def container_prefix() -> str:
    return os.environ.get("COI_CONTAINER_PREFIX") or DEFAULT_PREFIX


class CoiApp(App[None]):
    """Lists coi containers, refreshed in the background every couple of seconds."""

    TITLE = "coi"
    CSS_PATH = APP_CSS_PATH
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "quit", "Quit", id="quit", tooltip="Leave the dashboard"),
        Binding(
            "ctrl+r", "refresh", "Refresh", id="refresh", tooltip="List the containers again now"
        ),
    ]

    def __init__(
        self,
        source: InstanceSource | None = None,
        *,
        workspace: str | None = None,
        prefix: str | None = None,
        refresh_interval: float = REFRESH_SECONDS,
    ) -> None:
        super().__init__()
        # Incus() only connects on first use, so building it here never blocks.
        self.source: InstanceSource = source if source is not None else Incus()
        # abspath, not resolve(): coi hashes the unresolved path into container names.
        self.workspace = os.path.abspath(workspace or os.getcwd())
        self.prefix = prefix if prefix is not None else container_prefix()
        self.refresh_interval = refresh_interval
        self._poll_timer: Timer | None = None
        self._refresh_worker: Worker[None] | None = None
        self._last_error: str | None = None
        self.register_theme(COI_THEME)
        self.theme = COI_THEME.name

    def compose(self) -> ComposeResult:
        yield Header()
        yield SessionTable(id="sessions")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = display_path(self.workspace)
        self.refresh_instances()

    # ------------------------------------------------------------------ refresh
    def action_refresh(self) -> None:
        self.refresh_instances()

    def refresh_instances(self) -> None:
        """Start a refresh now; the next automatic one is armed when this one ends."""
        self._stop_poll_timer()
        self._refresh_worker = self._list_instances()

    def _stop_poll_timer(self) -> None:
        if self._poll_timer is not None:
            self._poll_timer.stop()
            self._poll_timer = None

    @work(thread=True, exclusive=True, exit_on_error=False, group=REFRESH_GROUP)
    def _list_instances(self) -> None:
        # Blocking Incus call: runs in a thread and reports back only through messages.
        try:
            instances = self.source.list_instances(self.prefix, with_state=True)
        except CoiError as exc:
            result: Message = InstancesFailed(str(exc))
        else:
            result = InstancesLoaded(instances)
        # A newer refresh superseded this one: its answer is the one to show.
        if not get_current_worker().is_cancelled:
            self.post_message(result)

    @on(Worker.StateChanged)
    def _refresh_finished(self, event: Worker.StateChanged) -> None:
        # Only the latest refresh counts; superseded ones must not arm a second timer.
        if event.worker is not self._refresh_worker:
            return
        if event.state == WorkerState.ERROR:
            # Not a CoiError: a bug or an unexpected library failure. Report it, keep running.
            error = event.worker.error
            self.post_message(InstancesFailed(f"Unexpected error: {type(error).__name__}: {error}"))
        if event.state in (WorkerState.SUCCESS, WorkerState.ERROR):
            # One-shot timer re-armed after each poll, so polls never overlap.
            self._stop_poll_timer()
            self._poll_timer = self.set_timer(self.refresh_interval, self.refresh_instances)

    @on(InstancesLoaded)
    def _show_instances(self, message: InstancesLoaded) -> None:
        table = self.query_one(SessionTable)
        table.show_rows(session_rows(message.instances, self.prefix, self.workspace))
        if self._last_error is not None:
            self._last_error = None
            self.notify("Listing containers works again.", title="Incus")
        if self.focused is None:
            # The table was hidden behind the empty state and could not take focus then.
            table.query_one(DataTable).focus()

    @on(InstancesFailed)
    def _show_error(self, message: InstancesFailed) -> None:
        self.query_one(SessionTable).show_error(message.error)
        # Notify once per distinct failure, not on every 2 s poll.
        if message.error != self._last_error:
            self._last_error = message.error
            self.notify(message.error, title="Cannot list containers", severity="error")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="coi-tui", description="Dashboard for coi containers running AI coding agents."
    )
    parser.add_argument(
        "-w",
        "--workspace",
        metavar="PATH",
        default=os.getcwd(),
        help="workspace whose containers are listed first (default: current directory)",
    )
    parser.add_argument("--version", action="version", version=f"coi-tui {__version__}")
    args = parser.parse_args(argv)
    args.workspace = os.path.abspath(os.path.expanduser(args.workspace))
    if not os.path.isdir(args.workspace):
        parser.error(f"workspace {args.workspace} is not a directory")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    CoiApp(workspace=args.workspace).run()


if __name__ == "__main__":
    main()
