"""Textual key names -> the bytes an xterm sends. Pure, so it is unit-tested without an app."""

from __future__ import annotations

ESC = "\x1b"
CSI = ESC + "["
SS3 = ESC + "O"

# Cursor keys and Home/End: final byte of `CSI <final>` / `SS3 <final>`.
CURSOR_FINALS = {"up": "A", "down": "B", "right": "C", "left": "D", "home": "H", "end": "F"}
# Keys sent as `CSI <n> ~`.
TILDE_CODES = {
    "insert": 2,
    "delete": 3,
    "pageup": 5,
    "pagedown": 6,
    "f5": 15,
    "f6": 17,
    "f7": 18,
    "f8": 19,
    "f9": 20,
    "f10": 21,
    "f11": 23,
    "f12": 24,
}
# F1-F4 are SS3 P..S unmodified and CSI 1;m P..S with modifiers.
PF_FINALS = {"f1": "P", "f2": "Q", "f3": "R", "f4": "S"}
SIMPLE = {
    "enter": "\r",
    "tab": "\t",
    "backspace": "\x7f",
    "escape": ESC,
    "space": " ",
}
# Textual names for the punctuation control keys.
CTRL_SYMBOLS = {
    "space": "\x00",
    "@": "\x00",
    "left_square_bracket": ESC,
    "backslash": "\x1c",
    "right_square_bracket": "\x1d",
    "circumflex_accent": "\x1e",
    "underscore": "\x1f",
    "minus": "\x1f",
}
MODIFIERS = ("shift", "alt", "ctrl", "meta", "super", "hyper")
BRACKETED_PASTE_MODE = 2004 << 5  # pyte stores private (DEC) modes shifted left by 5
APP_CURSOR_MODE = 1 << 5  # DECCKM


def split_key(key: str) -> tuple[set[str], str]:
    """'ctrl+shift+up' -> ({'ctrl', 'shift'}, 'up'). A lone '+' key stays a key."""
    parts = key.split("+")
    mods: set[str] = set()
    while len(parts) > 1 and parts[0] in MODIFIERS:
        mods.add(parts.pop(0))
    return mods, "+".join(parts)


def modifier_param(mods: set[str]) -> int:
    """xterm's modifier parameter: 1 + shift(1) + alt(2) + ctrl(4)."""
    return 1 + ("shift" in mods) + 2 * ("alt" in mods or "meta" in mods) + 4 * ("ctrl" in mods)


def translate_key(key: str, character: str | None = None, app_cursor: bool = False) -> bytes:
    """Bytes for one Textual key event (b'' when the key has no terminal encoding)."""
    mods, base = split_key(key)
    if base == "tab" and mods == {"shift"}:
        return (CSI + "Z").encode()
    if base in CURSOR_FINALS:
        final = CURSOR_FINALS[base]
        if mods:
            return f"{CSI}1;{modifier_param(mods)}{final}".encode()
        return ((SS3 if app_cursor else CSI) + final).encode()
    if base in PF_FINALS:
        final = PF_FINALS[base]
        if mods:
            return f"{CSI}1;{modifier_param(mods)}{final}".encode()
        return (SS3 + final).encode()
    if base in TILDE_CODES:
        code = TILDE_CODES[base]
        if mods:
            return f"{CSI}{code};{modifier_param(mods)}~".encode()
        return f"{CSI}{code}~".encode()
    alt = "alt" in mods or "meta" in mods
    prefix = ESC if alt else ""
    if "ctrl" in mods:
        if base in CTRL_SYMBOLS:
            return (prefix + CTRL_SYMBOLS[base]).encode()
        if len(base) == 1 and base.isalpha():
            return (prefix + chr(ord(base.lower()) & 0x1F)).encode()
        if base in SIMPLE:  # ctrl+enter etc.: send the plain key
            return (prefix + SIMPLE[base]).encode()
        return b""
    if base in SIMPLE:
        return (prefix + SIMPLE[base]).encode()
    if character and character.isprintable():
        return (prefix + character).encode()
    if alt and len(base) == 1:
        # alt+shift+x arrives with character 'x' or None: the shift makes it upper case.
        char = base.upper() if "shift" in mods else base
        return (prefix + char).encode()
    if character:  # other control characters Textual passes through
        return character.encode()
    return b""


def encode_paste(text: str, bracketed: bool) -> bytes:
    """Pasted text; wrapped in ESC[200~ ... ESC[201~ when the child enabled mode 2004."""
    # Terminals send newlines in pastes as CR, like the Enter key.
    body = text.replace("\r\n", "\r").replace("\n", "\r")
    if bracketed:
        # A paste must not be able to end the bracket early.
        body = body.replace(CSI + "201~", "")
        return (CSI + "200~" + body + CSI + "201~").encode()
    return body.encode()
