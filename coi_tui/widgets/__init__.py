"""Textual widgets for coi-tui."""

from coi_tui.widgets.slot_tree import SlotTree
from coi_tui.widgets.terminal_view import TerminalView
from coi_tui.widgets.threat_feed import ThreatFeed

__all__ = ["SlotTree", "TerminalView", "ThreatFeed"]
