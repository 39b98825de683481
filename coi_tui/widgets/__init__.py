"""Textual widgets for coi-tui."""

from coi_tui.widgets.session_table import SessionRow, SessionTable, session_rows

__all__ = ["SessionRow", "SessionTable", "session_rows"]
