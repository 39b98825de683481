"""coi_tui.core.text.clean: container text made inert for terminals and widgets."""

from __future__ import annotations

import time

import pytest

from coi_tui.core.text import clean, clean_block

OSC52 = "\x1b]52;c;ZWNobyBwd25lZA==\x07"
CSI = "\x1b[2J\x1b[31m"
BIDI = "\u202etxt.exe"
DANGEROUS = [chr(c) for c in (*range(0x20), 0x7F, *range(0x80, 0xA0))] + [
    "\u200b",
    "\u200c",
    "\u200d",
    "\u200e",
    "\u200f",
    "\u202a",
    "\u202b",
    "\u202c",
    "\u202d",
    "\u202e",
    "\u2066",
    "\u2067",
    "\u2068",
    "\u2069",
    "\u2028",
    "\u2029",
    "\u2060",
    "\ufeff",
    "\u061c",
    "\U000e0041",  # a tag character (invisible text)
    "\udc9b",  # a lone surrogate from undecodable bytes
]


def test_every_control_format_and_separator_character_becomes_a_visible_escape() -> None:
    for ch in DANGEROUS:
        out = clean(f"a{ch}b")
        assert ch not in out, repr(ch)
        assert out.startswith("a\\") and out.endswith("b"), (repr(ch), out)
        assert out.isprintable(), repr(out)


def test_escapes_are_readable() -> None:
    assert clean(OSC52) == "\\x1b]52;c;ZWNobyBwd25lZA==\\x07"
    assert clean(CSI) == "\\x1b[2J\\x1b[31m"
    assert clean(BIDI) == "\\u202etxt.exe"
    assert clean("a\tb\r\nc\x9bd\x7f") == "a\\tb\\r\\nc\\x9bd\\x7f"
    assert clean("\U000e0041") == "\\U000e0041"


def test_ordinary_text_is_unchanged() -> None:
    for text in ("bash -c 'ls -la /workspace'", "naïve café 日本語 ✓ ⚠", "[link=x]y[/]", "a\\x1b"):
        assert clean(text) == text
    assert clean(1234) == "1234"
    assert clean("\u00a0nbsp") == "\u00a0nbsp"  # a space, not a control


def test_newlines_only_in_blocks() -> None:
    assert clean("a\nb") == "a\\nb"
    assert clean_block("a\nb\x1b[0m\r\n") == "a\nb\\x1b[0m\\r\n"


def test_length_is_capped_without_splitting_an_escape() -> None:
    assert clean("x" * 50, 10) == "x" * 9 + "…"
    assert len(clean("x" * 10**7)) == 1000
    out = clean("ab" + "\x1b" * 20, 9)
    assert out == "ab\\x1b…", out
    assert len(out) <= 9
    assert clean("abc", 3) == "abc"
    assert clean_block("y\n" * 10**6, 100).endswith("…")


@pytest.mark.parametrize("payload", ["\x1b" * 200_000, "a" * 200_000, "\u202e" * 200_000])
def test_a_huge_value_costs_only_its_cap(payload: str) -> None:
    start = time.perf_counter()
    for _ in range(100):
        clean(payload)
    assert time.perf_counter() - start < 1.0
