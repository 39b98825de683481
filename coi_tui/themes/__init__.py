"""The coi colour theme. The only place hex colours live; widgets use $variables."""

from __future__ import annotations

from pathlib import Path

from textual.theme import Theme

# App-level stylesheet (layout only), shipped as package data next to this module.
APP_CSS_PATH = Path(__file__).with_name("coi.tcss")

COI_THEME = Theme(
    name="coi",
    primary="#4FB3BF",  # teal: focus, borders, the brand colour
    secondary="#7C8FD6",
    accent="#F2B65A",  # amber: the current workspace's rows
    foreground="#DDE3EA",
    background="#10161C",
    surface="#18212A",
    panel="#22303B",
    success="#6BCB77",
    warning="#F2B65A",
    error="#EF6B6B",
    dark=True,
)

THEMES: tuple[Theme, ...] = (COI_THEME,)

__all__ = ["APP_CSS_PATH", "COI_THEME", "THEMES"]
