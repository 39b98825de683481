"""Container text made safe to show outside the terminal pane.

Anything a container controls (command lines, process and user names, audit descriptions,
`ps` output, error text from an exec) may carry terminal escape sequences (an OSC 52
clipboard write, a CSI that moves the cursor or retitles the window), bidi overrides that
make a line read differently from what it is, or zero-width characters that hide text.
`clean()` turns every such character into a visible escape (`\\x1b`, `\\u202e`) and caps the
length, so what reaches a terminal, a log line or a dashboard widget is inert, readable text.

Escaped: the general categories Cc (C0 controls, DEL, C1 U+0080-U+009F), Cf (format: zero-
width, bidi embeddings/overrides/isolates, U+FEFF, tag characters), Cs (lone surrogates from
undecodable bytes), Zl and Zp (line and paragraph separators). A newline is kept only with
`newlines=True` (multi-line panes); tab, CR and everything else above are always escaped.
Backslashes are left as they are: the aim is a harmless terminal, not a reversible encoding.

Markup is a separate matter: the result is plain text and must be shown as such (Textual:
`markup=False`, a `Content`/`Text` object, or `Segment`s); never pass it through a markup
parser.
"""

from __future__ import annotations

import unicodedata

ESCAPED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
SHORT = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}
ELLIPSIS = "…"
LINE_LIMIT = 1000  # one field on one line (a command line, a description)
BLOCK_LIMIT = 64 * 1024  # a multi-line pane (ps output, an audit listing)


def escape_char(ch: str) -> str:
    if ch in SHORT:
        return SHORT[ch]
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def unsafe(ch: str) -> bool:
    return unicodedata.category(ch) in ESCAPED_CATEGORIES


def clean(text: object, limit: int = LINE_LIMIT, *, newlines: bool = False) -> str:
    """`text` (any object: str() of it) with every control, format and separator character
    escaped visibly, at most `limit` characters long (a cut ends with "…"). With
    `newlines=True` a "\\n" is kept as a line break; otherwise the result is one line."""
    value = text if isinstance(text, str) else str(text)
    head = value[: limit + 1]  # never walk more than the cap of a huge value
    if head.isprintable() or (newlines and head.replace("\n", "").isprintable()):
        # fast path: only printable characters (and kept newlines)
        return head if len(value) <= limit else head[: max(0, limit - 1)] + ELLIPSIS
    out: list[str] = []
    size = 0
    for ch in head:
        kept = (newlines and ch == "\n") or ch.isprintable() or not unsafe(ch)
        piece = ch if kept else escape_char(ch)
        if size + len(piece) > limit:
            break
        out.append(piece)
        size += len(piece)
    else:
        if len(value) <= limit:
            return "".join(out)
    # cut: make room for the ellipsis without splitting an escape in two
    while out and size + len(ELLIPSIS) > limit:
        size -= len(out.pop())
    return "".join(out) + ELLIPSIS


def clean_block(text: object, limit: int = BLOCK_LIMIT) -> str:
    """Multi-line container text (e.g. `ps` output): lines kept, everything else escaped."""
    return clean(text, limit, newlines=True)
