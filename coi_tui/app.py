"""coi-tui: the full-screen session manager (entry point `coi-tui`)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable, Sequence
from functools import partial
from typing import ClassVar

from textual.app import App, SystemCommand
from textual.binding import Binding, BindingType
from textual.notifications import SeverityLevel
from textual.screen import Screen

from coi_tui import __version__
from coi_tui.core.errors import CoiError
from coi_tui.core.text import clean
from coi_tui.dashboard.backend import Backend
from coi_tui.dashboard.hosts import MultiHostBackend
from coi_tui.dashboard.prefs import load_keymap, load_state, save_state
from coi_tui.dashboard.threats import AuditTail, ThreatSource
from coi_tui.screens.confirm import ConfirmScreen
from coi_tui.screens.main import MainScreen
from coi_tui.themes import APP_CSS_PATH, COI_THEME, THEMES
from coi_tui.widgets.terminal_view import TerminalView

REFRESH_SECONDS = 2.0
# Priority keys a shell needs (ctrl+p history, ctrl+q flow control): while the terminal pane
# has focus they fall through to it.
PASS_TO_TERMINAL = frozenset({"quit", "command_palette"})


class CoiApp(App[None]):
    """Workspaces, slots, snapshots, live terminals and the threat feed on one screen."""

    TITLE = "coi"
    CSS_PATH = APP_CSS_PATH
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "request_quit", "Quit", id="quit", tooltip="Leave the dashboard"),
        Binding("question_mark", "toggle_help", "Help", id="help", tooltip="Show every key"),
        Binding("ctrl+t", "next_theme", "Theme", show=False, id="theme", tooltip="Next theme"),
    ]

    def __init__(
        self,
        backend: Backend | None = None,
        *,
        threats: ThreatSource | None = None,
        workspace: str | None = None,
        refresh_interval: float = REFRESH_SECONDS,
        read_only: bool = False,
        keymap: dict[str, str] | None = None,
        remember_theme: bool = True,
        remotes: list[str] | None = None,
        local: bool = True,
    ) -> None:
        """Without a backend: the local daemon (unless local=False) and the named remotes
        (None: every configured one), each listed on its own."""
        super().__init__()
        if backend is None:
            # Connects on first use only.
            backend = MultiHostBackend.from_config(
                remotes=remotes, local=local, read_only=read_only
            )
        self.backend = backend
        self.threats = threats if threats is not None else AuditTail()
        # abspath, not resolve(): coi hashes the unresolved path into container names.
        self.workspace = os.path.abspath(workspace or os.getcwd())
        self.refresh_interval = refresh_interval
        self.read_only = read_only
        self.remember_theme = remember_theme
        for theme in THEMES:
            self.register_theme(theme)
        saved = load_state().get("theme") if remember_theme else None
        self.theme = saved if saved in self.available_themes else COI_THEME.name
        self.set_keymap(load_keymap() if keymap is None else keymap)

    def notify(
        self,
        message: str,
        *,
        title: str = "",
        severity: SeverityLevel = "information",
        timeout: float | None = None,
        markup: bool = True,
    ) -> None:
        """Every notification is plain text: messages quote container names, errors and
        output, so markup is never rendered (`markup` is ignored) and control, bidi and
        zero-width characters are shown as escapes. Widget.notify comes here as well."""
        del markup
        super().notify(
            clean(message, 2000, newlines=True),
            title=clean(title, 200),
            severity=severity,
            timeout=timeout,
            markup=False,
        )

    def get_default_screen(self) -> Screen[None]:
        return MainScreen(
            self.backend,
            self.threats,
            self.workspace,
            refresh_interval=self.refresh_interval,
            read_only=self.read_only,
        )

    def on_mount(self) -> None:
        self.sub_title = self.workspace + ("  [read-only]" if self.read_only else "")

    @property
    def main(self) -> MainScreen:
        screen = self.screen_stack[0] if self.screen_stack else None
        assert isinstance(screen, MainScreen)
        return screen

    def _terminal_has_keys(self) -> bool:
        focused = self.focused
        return isinstance(focused, TerminalView) and focused.connected

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        return not (action in PASS_TO_TERMINAL and self._terminal_has_keys())

    def watch_theme(self, theme: str) -> None:
        if self.remember_theme and self.is_running:
            save_state(theme=theme)

    def action_next_theme(self) -> None:
        names = [t.name for t in THEMES]
        self.theme = (
            names[(names.index(self.theme) + 1) % len(names)] if self.theme in names else names[0]
        )

    def action_toggle_help(self) -> None:
        if self.screen.query("HelpPanel"):
            self.action_hide_help_panel()
        else:
            self.action_show_help_panel()

    def action_request_quit(self) -> None:
        terminals = [t for t in self.query(TerminalView) if t.connected]
        if not terminals:
            self.exit()
            return
        names = ", ".join(t.session_name for t in terminals)
        body = (
            f"The dashboard is attached to {names}.\n"
            "Quitting detaches it; the sessions keep running (coi attach reconnects)."
        )

        def answered(confirmed: bool | None) -> None:
            if confirmed:
                self.exit()

        self.push_screen(ConfirmScreen("Quit coi-tui?", body, "Quit"), answered)

    def get_system_commands(self, screen: Screen[object]) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        main = self.main
        for title, help_text, action in main.palette_actions():
            yield SystemCommand(title, help_text, partial(main.run_action, action))
        for theme in THEMES:
            yield SystemCommand(
                f"theme: {theme.name}",
                "Switch the colour theme",
                partial(setattr, self, "theme", theme.name),
            )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="coi-tui", description="Full-screen manager for coi sessions running AI agents."
    )
    parser.add_argument(
        "-w",
        "--workspace",
        metavar="PATH",
        default=os.getcwd(),
        help="workspace listed first and used for new slots (default: current directory)",
    )
    parser.add_argument(
        "--read-only", action="store_true", help="watch only: every mutating action is disabled"
    )
    parser.add_argument(
        "--refresh", type=float, default=REFRESH_SECONDS, metavar="SECONDS", help="poll interval"
    )
    hosts = parser.add_mutually_exclusive_group()
    hosts.add_argument(
        "--remote",
        metavar="NAME",
        help="only the sessions of this remote (added with 'coi remote add'); default: the "
        "local daemon and every configured remote, grouped by host",
    )
    hosts.add_argument(
        "--local-only", action="store_true", help="only the local daemon, no remotes"
    )
    parser.add_argument("--version", action="version", version=f"coi-tui {__version__}")
    args = parser.parse_args(argv)
    if not args.remote and not args.local_only and os.environ.get("COI_REMOTE"):
        args.remote = os.environ["COI_REMOTE"]  # as for coi: $COI_REMOTE picks one remote
    args.workspace = os.path.abspath(os.path.expanduser(args.workspace))
    if not os.path.isdir(args.workspace):
        parser.error(f"workspace {args.workspace} is not a directory")
    if args.refresh <= 0:
        parser.error("--refresh must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        app = CoiApp(
            workspace=args.workspace,
            read_only=args.read_only,
            refresh_interval=args.refresh,
            remotes=[args.remote] if args.remote else [] if args.local_only else None,
            local=not args.remote,
        )
    except CoiError as exc:  # an unknown remote, a broken remotes.toml...: one line
        sys.exit(f"coi-tui: {exc}")
    app.run()


if __name__ == "__main__":
    main()
