"""Embedded terminal plumbing with no UI imports: a pty transport, a pyte emulator that answers
DSR/DA queries, key translation, and a renderer from screen rows to Rich segments."""

from coi_tui.terminal.emulator import Emulator
from coi_tui.terminal.keys import encode_paste, translate_key
from coi_tui.terminal.render import Renderer
from coi_tui.terminal.transport import ByteQueue, FakeTransport, PtyTransport, Transport

__all__ = [
    "ByteQueue",
    "Emulator",
    "FakeTransport",
    "PtyTransport",
    "Renderer",
    "Transport",
    "encode_paste",
    "translate_key",
]
