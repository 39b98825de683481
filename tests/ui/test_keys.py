"""Key translation: Textual key names -> the bytes an xterm would send."""

from __future__ import annotations

import pytest

from coi_tui.terminal.keys import encode_paste, translate_key


@pytest.mark.parametrize(
    ("key", "character", "expected"),
    [
        ("a", "a", b"a"),
        ("A", "A", b"A"),
        ("ü", "ü", "ü".encode()),
        ("enter", "\r", b"\r"),
        ("tab", "\t", b"\t"),
        ("shift+tab", None, b"\x1b[Z"),
        ("backspace", "\x7f", b"\x7f"),
        ("escape", "\x1b", b"\x1b"),
        ("space", " ", b" "),
        ("ctrl+a", "\x01", b"\x01"),
        ("ctrl+c", "\x03", b"\x03"),
        ("ctrl+p", "\x10", b"\x10"),
        ("ctrl+q", "\x11", b"\x11"),
        ("ctrl+z", None, b"\x1a"),
        ("ctrl+space", None, b"\x00"),
        ("ctrl+backslash", None, b"\x1c"),
        ("alt+x", "x", b"\x1bx"),
        ("alt+shift+x", None, b"\x1bX"),
        ("alt+enter", None, b"\x1b\r"),
        ("ctrl+alt+a", None, b"\x1b\x01"),
        ("up", None, b"\x1b[A"),
        ("down", None, b"\x1b[B"),
        ("right", None, b"\x1b[C"),
        ("left", None, b"\x1b[D"),
        ("home", None, b"\x1b[H"),
        ("end", None, b"\x1b[F"),
        ("shift+up", None, b"\x1b[1;2A"),
        ("alt+left", None, b"\x1b[1;3D"),
        ("ctrl+right", None, b"\x1b[1;5C"),
        ("ctrl+shift+left", None, b"\x1b[1;6D"),
        ("pageup", None, b"\x1b[5~"),
        ("pagedown", None, b"\x1b[6~"),
        ("insert", None, b"\x1b[2~"),
        ("delete", None, b"\x1b[3~"),
        ("ctrl+delete", None, b"\x1b[3;5~"),
        ("f1", None, b"\x1bOP"),
        ("f4", None, b"\x1bOS"),
        ("shift+f1", None, b"\x1b[1;2P"),
        ("f5", None, b"\x1b[15~"),
        ("f12", None, b"\x1b[24~"),
        ("ctrl+f5", None, b"\x1b[15;5~"),
    ],
)
def test_translate(key: str, character: str | None, expected: bytes) -> None:
    assert translate_key(key, character) == expected


def test_application_cursor_mode_uses_ss3_for_plain_arrows_only() -> None:
    assert translate_key("up", None, app_cursor=True) == b"\x1bOA"
    assert translate_key("left", None, app_cursor=True) == b"\x1bOD"
    assert translate_key("home", None, app_cursor=True) == b"\x1bOH"
    # Modified arrows keep the CSI form in either mode.
    assert translate_key("ctrl+up", None, app_cursor=True) == b"\x1b[1;5A"


def test_unknown_keys_send_nothing() -> None:
    assert translate_key("ctrl+f99", None) == b""
    assert translate_key("ctrl+comma", None) == b""


def test_paste_plain_and_bracketed() -> None:
    assert encode_paste("ls\nrm -rf x\n", bracketed=False) == b"ls\rrm -rf x\r"
    assert encode_paste("ls\n", bracketed=True) == b"\x1b[200~ls\r\x1b[201~"
    # A paste cannot close the bracket early and smuggle keystrokes after it.
    evil = encode_paste("a\x1b[201~rm -rf /\n", bracketed=True)
    assert evil == b"\x1b[200~arm -rf /\r\x1b[201~"
