"""The coi colour themes (dark and light). The only place hex colours live; widgets and the
stylesheet use $variables."""

from __future__ import annotations

from pathlib import Path

from textual.theme import Theme

# App-level stylesheet (layout only), shipped as package data next to this module.
APP_CSS_PATH = Path(__file__).with_name("coi.tcss")

COI_THEME = Theme(
    name="coi",
    primary="#4FB3BF",  # teal: focus, borders, the brand colour
    secondary="#7C8FD6",
    accent="#F2B65A",  # amber: the current workspace
    foreground="#DDE3EA",
    background="#10161C",
    surface="#18212A",
    panel="#22303B",
    success="#6BCB77",
    warning="#F2B65A",
    error="#EF6B6B",
    dark=True,
)

COI_LIGHT_THEME = Theme(
    name="coi-light",
    primary="#1F7A86",
    secondary="#4556A6",
    accent="#A86A00",
    foreground="#1B2430",
    background="#F4F6F8",
    surface="#FFFFFF",
    panel="#E3E8ED",
    success="#2E8540",
    warning="#A86A00",
    error="#C62828",
    dark=False,
)

THEMES: tuple[Theme, ...] = (COI_THEME, COI_LIGHT_THEME)

__all__ = ["APP_CSS_PATH", "COI_LIGHT_THEME", "COI_THEME", "THEMES"]
