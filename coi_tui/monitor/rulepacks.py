"""Rule packs: process rules loaded from files once, at the daemon's start, and matched
against every exec of a watched container (`PackSet.match`, called from Daemon.run_rules).

Sources (rule ids):
- bundled (`bundled.<id>`): `coi_tui/monitor/packs/*.toml`, written by us. TOML because the
  root daemon runs with the system `python3 -I` and the standard library only (tomllib),
  and each `[[rule]]` is shaped like a Sigma rule, so one compiler and matcher serve both.
- Sigma (`sigma.<id or file stem>`): `*.yml`/`*.yaml` under `[detection] sigma_dir`: only
  `rules/linux/process_creation/` when that SigmaHQ layout is there, else the whole folder
  (rules of another logsource are skipped). The subset, all of it applied or the rule is
  skipped and counted with its reason (never half-applied):
  - fields Image (the executable), CommandLine (argv joined by spaces), ParentImage;
  - values as Sigma globs (`*`, `?`, `\\` escapes), case-insensitive, with the modifiers
    contains, startswith, endswith and all. Not `re`: Python's regular expressions
    backtrack without a time limit, and a pack's regex would run in the root daemon on every
    exec. Not base64/windash/cidr/cased/exists, keyword lists, null values, aggregations;
  - selections as maps (AND of fields) or lists of maps (OR); a list of values is an OR
    (AND with `all`);
  - conditions of `and`, `or`, `not`, parentheses, `1 of X*`, `all of X*`, `1 of them`,
    `all of them` (a list of conditions is their OR).
  Levels: informational/low -> info, medium -> warning, high -> high, critical -> critical.
- GTFOBins (`gtfobins.<binary>`): `_gtfobins/<binary>[.md]` (both the old `.md` and the
  newer extension-less layout; YAML front matter) under `[detection] gtfobins_dir`. Each
  "reverse-shell" function example is reduced to at most two tokens, the ones that are
  rarest across the pack's reverse-shell examples (placeholders such as attacker.com/12345
  and `export` lines dropped); an exec of that binary (executable or argv[0]) whose command
  line holds both tokens of one of its examples is HIGH.

YAML: PyYAML is not available to the daemon (see above), so `parse_yaml` reads the block
subset these files use (maps, lists, plain/quoted/block scalars, simple flow lists) and
refuses anchors, aliases and tags. It is linear in the input and nests at most
MAX_YAML_DEPTH deep.

Cost and hostile packs (the folders live in the user's ~/.coi, the daemon is root): files are
opened by directory fd with O_NOFOLLOW (a symlink is skipped, never followed), only regular
files with one link of at most MAX_FILE_BYTES are read; per source at most MAX_FILES files,
MAX_TOTAL_BYTES, MAX_RULES rules, MAX_DIRS folders (MAX_DIR_DEPTH deep, MAX_ENTRIES names
each), all within LOAD_BUDGET_SEC. Values and conditions are compiled once; `match` looks
rules up by the executable's (and argv[0]'s) base name when a rule requires an Image, else by
the trigrams of its anchor words (see PackSet), so an exec is tested against few rules, and
glob matching is linear (no backtracking). Standard library only; never prints (errors are
returned as one-line reasons).
"""

from __future__ import annotations

import errno
import os
import pwd
import re
import shutil
import stat
import subprocess
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from coi_tui.core import nofollow
from coi_tui.core.text import clean
from coi_tui.monitor.events import Threat
from coi_tui.monitor.rules import threat

MAX_FILE_BYTES = 256 * 1024
MAX_FILES = 4096  # rule files read per source
MAX_TOTAL_BYTES = 32 << 20  # per source
MAX_RULES = 2000  # per source
MAX_DIR_DEPTH = 8
MAX_DIRS = 2000  # folders walked per source
MAX_ENTRIES = 20000  # names read per folder
MAX_YAML_DEPTH = 24
MAX_VALUE_CHARS = 1024
MAX_WILDCARDS = 16  # `*` per value
MAX_VALUES = 512  # per rule
MAX_CONDITION_TOKENS = 256
LOAD_BUDGET_SEC = 10.0
TITLE_CHARS = 200
PATTERN_CHARS = 200

BUNDLED_DIR = Path(__file__).resolve().parent / "packs"
SIGMA_LAYOUT = ("rules", "linux", "process_creation")
SOURCES = ("bundled", "sigma", "gtfobins")
LEVELS = {
    "informational": "info",
    "low": "info",
    "medium": "warning",
    "high": "high",
    "critical": "critical",
}
FIELDS = ("Image", "CommandLine", "ParentImage")
MODIFIERS = frozenset({"contains", "startswith", "endswith", "all"})
GTFOBINS_LEVEL = "high"
CATEGORY = "proc_event"


# --------------------------------------------------------------------------- YAML subset
class YamlError(ValueError):
    pass


def _is_item(content: str) -> bool:
    return content == "-" or content.startswith("- ")


def _closing_quote(text: str, start: int = 0) -> int:
    """Index of the quote closing the string opened at text[start], or -1."""
    quote = text[start]
    i = start + 1
    while i < len(text):
        ch = text[i]
        if quote == "'" and ch == "'":
            if text[i + 1 : i + 2] == "'":
                i += 2
                continue
            return i
        if quote == '"':
            if ch == "\\":
                i += 2
                continue
            if ch == '"':
                return i
        i += 1
    return -1


ESCAPES = {
    "0": "\0",
    "a": "\a",
    "b": "\b",
    "t": "\t",
    "\t": "\t",
    "n": "\n",
    "v": "\v",
    "f": "\f",
    "r": "\r",
    "e": "\x1b",
    " ": " ",
    '"': '"',
    "/": "/",
    "\\": "\\",
    "N": "\x85",
    "_": "\xa0",
}


def _unquote(text: str, line: int) -> str:
    """A complete quoted scalar (quotes included) to its value."""
    body = text[1:-1]
    if text[0] == "'":
        return body.replace("''", "'")
    out: list[str] = []
    i = 0
    while i < len(body):
        ch = body[i]
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        code = body[i + 1 : i + 2]
        if code in ESCAPES:
            out.append(ESCAPES[code])
            i += 2
            continue
        width = {"x": 2, "u": 4, "U": 8}.get(code, 0)
        digits = body[i + 2 : i + 2 + width]
        if (
            not width
            or len(digits) != width
            or not all(c in "0123456789abcdefABCDEF" for c in digits)
        ):
            raise YamlError(f"line {line}: bad escape in a double-quoted string")
        value = int(digits, 16)
        if value > 0x10FFFF:
            raise YamlError(f"line {line}: bad escape in a double-quoted string")
        out.append(chr(value))
        i += 2 + width
    return "".join(out)


PLAIN_INT = re.compile(r"[-+]?[0-9]+")


def _plain(text: str) -> Any:
    if text in ("", "~", "null", "Null", "NULL"):
        return None
    if text in ("true", "True", "TRUE"):
        return True
    if text in ("false", "False", "FALSE"):
        return False
    if PLAIN_INT.fullmatch(text) and len(text) < 20:
        return int(text)
    return text


def _strip_comment(text: str) -> str:
    cut = text.find(" #")
    return (text[:cut] if cut >= 0 else text).rstrip()


class _Parser:
    def __init__(self, text: str) -> None:
        self.lines = text.split("\n")
        self.pos = 0
        # a "- key: value" line re-read as "key: value" at the item's content column
        self.override: dict[int, tuple[int, str]] = {}

    def where(self) -> int:
        return self.pos + 1

    def significant(self) -> tuple[int, str] | None:
        """(indent, content) of the next line that is not blank or a comment."""
        while self.pos < len(self.lines):
            if self.pos in self.override:
                return self.override[self.pos]
            raw = self.lines[self.pos].rstrip("\r")
            content = raw.lstrip(" ")
            if content.startswith("\t"):
                raise YamlError(f"line {self.where()}: a tab in the indentation")
            if content.strip() and not content.startswith("#"):
                return len(raw) - len(content), content.rstrip()
            self.pos += 1
        return None

    def key_split(self, content: str) -> tuple[str, str] | None:
        """("key", "rest of the line") for a `key: value` line, else None."""
        if content[0] in "'\"":
            end = _closing_quote(content)
            after = content[end + 1 :] if end > 0 else ""
            if end < 0 or not (after == ":" or after.startswith(": ")):
                return None
            return _unquote(content[: end + 1], self.where()), after[1:].strip()
        if _is_item(content) or content[0] in "[{?&*!|>%@`":
            return None
        colon = content.find(": ")
        if colon < 0:
            colon = len(content) - 1 if content.endswith(":") else -1
        comment = content.find(" #")
        if colon <= 0 or (0 <= comment < colon):
            return None
        return content[:colon].rstrip(), content[colon + 1 :].strip()

    def document(self) -> Any:
        value = self.block(0, 0)
        if self.significant() is not None:
            raise YamlError(f"line {self.where()}: unexpected text (bad indentation?)")
        return value

    def block(self, indent: int, depth: int) -> Any:
        if depth > MAX_YAML_DEPTH:
            raise YamlError(f"line {self.where()}: nested deeper than {MAX_YAML_DEPTH} levels")
        line = self.significant()
        if line is None or line[0] < indent:
            return None
        at, content = line
        if _is_item(content):
            return self.sequence(at, depth + 1)
        if self.key_split(content) is not None:
            return self.mapping(at, depth + 1)
        self.pos += 1
        return self.scalar(content, at)

    def mapping(self, indent: int, depth: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        while (line := self.significant()) is not None:
            at, content = line
            if at < indent:
                break
            if at > indent:
                raise YamlError(f"line {self.where()}: unexpected indentation")
            split = self.key_split(content)
            if split is None:
                if _is_item(content):
                    break  # the next item of the list this map is an item of
                raise YamlError(f"line {self.where()}: expected 'key: value'")
            key, rest = split
            if key in out:
                raise YamlError(f"line {self.where()}: duplicate key {clean(key, 60)!r}")
            self.pos += 1
            out[key] = self.value(rest, indent, depth, in_map=True)
        return out

    def sequence(self, indent: int, depth: int) -> list[Any]:
        out: list[Any] = []
        while (line := self.significant()) is not None:
            at, content = line
            if at < indent or (at == indent and not _is_item(content)):
                break
            if at > indent:
                raise YamlError(f"line {self.where()}: unexpected indentation")
            rest = content[1:].lstrip(" ")
            if rest.startswith("#"):
                rest = ""
            if rest and (_is_item(rest) or self.key_split(rest) is not None):
                # the item is a map or a list starting on this line, at the item's column
                self.override[self.pos] = (at + len(content) - len(rest), rest)
                out.append(self.block(at + len(content) - len(rest), depth + 1))
                continue
            self.pos += 1
            out.append(self.value(rest, indent, depth, in_map=False))
        return out

    def value(self, rest: str, indent: int, depth: int, *, in_map: bool) -> Any:
        if not rest or rest.startswith("#"):
            line = self.significant()
            if line is None:
                return None
            if line[0] > indent:
                return self.block(line[0], depth + 1)
            if in_map and line[0] == indent and _is_item(line[1]):
                return self.sequence(indent, depth + 1)  # a list at its key's indentation
            return None
        return self.scalar(rest, indent)

    def scalar(self, rest: str, indent: int) -> Any:
        first = rest[0]
        if first in "&*!":
            raise YamlError(f"line {self.pos}: anchors, aliases and tags are not supported")
        if first in "|>":
            return self.block_scalar(rest, indent)
        if first == "[":
            return self.flow_list(rest)
        if first == "{":
            if _strip_comment(rest) == "{}":
                return {}
            raise YamlError(f"line {self.pos}: flow maps are not supported")
        if first in "'\"":
            return self.quoted(rest)
        parts = [_strip_comment(rest)]
        # a plain scalar continued on more indented lines (folded with spaces)
        while (line := self.significant()) is not None and line[0] > indent:
            if line[1].startswith("#") or self.pos in self.override:
                break
            if self.key_split(line[1]) is not None:
                raise YamlError(f"line {self.where()}: unexpected indentation")
            parts.append(_strip_comment(line[1]))
            self.pos += 1
        return _plain(" ".join(parts)) if len(parts) > 1 else _plain(parts[0])

    def quoted(self, rest: str) -> str:
        text = rest
        start_line = self.pos
        end = _closing_quote(text)
        while end < 0:  # a quoted string folded over several lines
            if self.pos >= len(self.lines) or self.pos - start_line > 1000:
                raise YamlError(f"line {start_line}: unterminated quoted string")
            text += " " + self.lines[self.pos].strip()
            self.pos += 1
            end = _closing_quote(text)
        after = text[end + 1 :].strip()
        if after and not after.startswith("#"):
            raise YamlError(f"line {self.pos}: text after a quoted string")
        return _unquote(text[: end + 1], self.pos)

    def flow_list(self, rest: str) -> list[Any]:
        text = _strip_comment(rest)
        if not text.endswith("]"):
            raise YamlError(f"line {self.pos}: a flow list must end on its line")
        body = text[1:-1]
        items: list[Any] = []
        i = 0
        while i < len(body):
            while i < len(body) and body[i] == " ":
                i += 1
            if i >= len(body):
                break
            if body[i] in "[{":
                raise YamlError(f"line {self.pos}: nested flow collections are not supported")
            if body[i] in "'\"":
                end = _closing_quote(body, i)
                if end < 0:
                    raise YamlError(f"line {self.pos}: unterminated quoted string")
                items.append(_unquote(body[i : end + 1], self.pos))
                i = end + 1
                while i < len(body) and body[i] == " ":
                    i += 1
                if i < len(body) and body[i] != ",":
                    raise YamlError(f"line {self.pos}: expected ',' in a flow list")
            else:
                comma = body.find(",", i)
                comma = len(body) if comma < 0 else comma
                items.append(_plain(body[i:comma].strip()))
                i = comma
            i += 1
        return items

    def block_scalar(self, header: str, indent: int) -> str:
        spec = _strip_comment(header)
        style, options = spec[0], spec[1:]
        chomp = "-" if "-" in options else "+" if "+" in options else ""
        digits = options.strip("+-")
        if digits and not (digits.isdigit() and len(digits) == 1):
            raise YamlError(f"line {self.pos}: bad block scalar header")
        block_indent = indent + int(digits) if digits else -1
        lines: list[str] = []
        while self.pos < len(self.lines):
            raw = self.lines[self.pos].rstrip("\r")
            content = raw.lstrip(" ")
            width = len(raw) - len(content)
            if content:
                if block_indent < 0:
                    if width <= indent:
                        break
                    block_indent = width
                elif width < block_indent:
                    break
                lines.append(raw[block_indent:])
            else:
                lines.append("")
            self.pos += 1
        trailing = 0
        while lines and lines[-1] == "":
            lines.pop()
            trailing += 1
        if style == "|":
            text = "\n".join(lines)
        else:  # folded: single line breaks between plain lines become spaces
            text = ""
            for i, line in enumerate(lines):
                if i == 0:
                    text = line
                elif line == "" or lines[i - 1] == "" or line.startswith(" "):
                    text += "\n" + line
                else:
                    text += " " + line
        if not lines:
            return ""
        if chomp == "-":
            return text
        if chomp == "+":
            return text + "\n" * (1 + trailing)
        return text + "\n"


def parse_yaml(text: str) -> list[Any]:
    """The documents of `text` (separated by `---` lines, `...` ends one), in the subset
    described in the module doc. Raises YamlError with a one-line reason."""
    documents: list[Any] = []
    chunk: list[str] = []
    ended = False

    def flush() -> None:
        body = "\n".join(chunk)
        if body.strip():
            documents.append(_Parser(body).document())
        chunk.clear()

    offset = 0
    for number, line in enumerate(text.split("\n")):
        stripped = line.rstrip()
        if stripped == "---" or stripped.startswith("--- "):
            try:
                flush()
            except YamlError as exc:
                raise YamlError(_shift(str(exc), offset)) from None
            offset = number + 1
            ended = False
            if stripped != "---":
                raise YamlError(f"line {number + 1}: text after '---' is not supported")
            continue
        if stripped == "...":
            try:
                flush()
            except YamlError as exc:
                raise YamlError(_shift(str(exc), offset)) from None
            ended = True
            continue
        if not ended:
            chunk.append(line)
        elif stripped and not stripped.startswith("#"):
            raise YamlError(f"line {number + 1}: text after the end of a document")
    try:
        flush()
    except YamlError as exc:
        raise YamlError(_shift(str(exc), offset)) from None
    return documents


def _shift(message: str, offset: int) -> str:
    """A parser's "line N" made relative to the whole file."""
    match = re.match(r"line (\d+)(.*)", message)
    return f"line {int(match.group(1)) + offset}{match.group(2)}" if match else message


# --------------------------------------------------------------------------- matching
class RuleError(ValueError):
    """Why a rule cannot be applied whole (it is skipped, with this reason)."""


class _Segment:
    __slots__ = ("regex", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        # `?` (one character) makes a fixed-length regex: searching it is linear in the text
        self.regex = (
            re.compile("".join("." if c == "\0" else re.escape(c) for c in text), re.DOTALL)
            if "\0" in text
            else None
        )

    def at(self, text: str, index: int) -> bool:
        if self.regex is None:
            return text.startswith(self.text, index)
        return self.regex.match(text, index, index + len(self.text)) is not None

    def find(self, text: str, start: int, end: int) -> int:
        if self.regex is None:
            return text.find(self.text, start, end)
        found = self.regex.search(text, start, end)
        return found.start() if found else -1


class Glob:
    """A Sigma value, lowercased: `*` is any run of characters, `?` one character, `\\`
    escapes them. Matched by leftmost search of its fixed-length pieces (linear, never
    backtracking)."""

    __slots__ = ("end", "segments", "source", "start")

    def __init__(self, value: str, modifier: str) -> None:
        if len(value) > MAX_VALUE_CHARS:
            raise RuleError(f"a value longer than {MAX_VALUE_CHARS} characters")
        self.source = value
        pieces: list[str] = []
        current: list[str] = []
        i = 0
        while i < len(value):
            ch = value[i]
            if ch == "\\" and value[i + 1 : i + 2] in ("*", "?", "\\"):
                current.append(value[i + 1])
                i += 2
                continue
            if ch == "*":
                pieces.append("".join(current))
                current = []
            elif ch == "\0":
                raise RuleError("a NUL character in a value")
            else:
                current.append("\0" if ch == "?" else ch.lower())
            i += 1
        pieces.append("".join(current))
        if len(pieces) - 1 > MAX_WILDCARDS:
            raise RuleError(f"a value with more than {MAX_WILDCARDS} wildcards")
        self.start = pieces[0] != "" and modifier not in ("contains", "endswith")
        self.end = pieces[-1] != "" and modifier not in ("contains", "startswith")
        if len(pieces) == 1 and not pieces[0]:  # the empty value
            self.start = self.end = modifier == ""
        self.segments = [_Segment(p) for p in pieces if p]

    def match(self, text: str) -> bool:
        segments = self.segments
        if not segments:
            return not text if self.start and self.end else True
        first = segments[0]
        if len(segments) == 1 and first.regex is None:
            if self.start and self.end:
                return text == first.text
            if self.start:
                return text.startswith(first.text)
            if self.end:
                return text.endswith(first.text)
            return first.text in text
        pos, limit = 0, len(text)
        middle = segments
        if self.start:
            if not first.at(text, 0):
                return False
            pos = len(first.text)
            middle = middle[1:]
        if self.end:
            if not middle:
                return pos == len(text)
            last = middle[-1]
            limit = len(text) - len(last.text)
            if limit < pos or not last.at(text, limit):
                return False
            middle = middle[:-1]
        for segment in middle:
            found = segment.find(text, pos, limit)
            if found < 0:
                return False
            pos = found + len(segment.text)
        return True

    def basename(self) -> str | None:
        """The executable base name this value requires of a path, if it pins one."""
        if not self.end or not self.segments:
            return None
        last = self.segments[-1].text
        if "\0" in last or "/" not in last:
            return None
        name = last.rsplit("/", 1)[1]
        return name or None


class FieldTest:
    """One field against its values (any of them; all of them with `all`), compiled once:
    plain values of one kind become one C-level test (a tuple for startswith/endswith, a set
    for equality, one alternation for contains), globs are matched one by one."""

    __slots__ = ("all", "check", "field", "globs")

    def __init__(self, field_name: str, globs: list[Glob], all_of: bool) -> None:
        self.field = field_name
        self.globs = globs
        self.all = all_of
        self.check = self._compile()

    def _compile(self) -> Callable[[str], bool]:
        globs = self.globs
        kinds = {(g.start, g.end) for g in globs}
        plain = all(len(g.segments) == 1 and g.segments[0].regex is None for g in globs)
        if not plain or len(kinds) != 1:
            if self.all:
                return lambda text: all(g.match(text) for g in globs)
            return lambda text: any(g.match(text) for g in globs)
        texts = [g.segments[0].text for g in globs]
        start, end = kinds.pop()
        if self.all:
            if (start, end) == (False, False):
                return lambda text: all(t in text for t in texts)
            return lambda text: all(g.match(text) for g in globs)
        if start and end:
            exact = frozenset(texts)
            return exact.__contains__
        if start:
            prefixes = tuple(texts)
            return lambda text: text.startswith(prefixes)
        if end:
            suffixes = tuple(texts)
            return lambda text: text.endswith(suffixes)
        if len(texts) == 1:
            needle = texts[0]
            return lambda text: needle in text
        # literals only, no repetition: the search is linear in the text times the values
        search = re.compile("|".join(map(re.escape, texts)), re.DOTALL).search
        return lambda text: search(text) is not None

    def match(self, values: Fields) -> bool:
        return self.check(values.get(self.field))

    def describe(self) -> str:
        joiner = " + " if self.all else " | "
        return f"{self.field}: {joiner.join(g.source for g in self.globs)}"


class Fields:
    """One exec's fields, lowercased, ParentImage read only if a rule asks."""

    def __init__(self, image: str, argv: list[str], parent: int) -> None:
        self.image = image.lower()
        self.command_line = " ".join(argv).lower()
        self.argv0 = os.path.basename(argv[0]).lower() if argv else ""
        self.parent = parent
        self.parent_image: str | None = None

    def get(self, name: str) -> str:
        if name == "Image":
            return self.image
        if name == "CommandLine":
            return self.command_line
        if self.parent_image is None:
            self.parent_image = executable(self.parent).lower() if self.parent > 0 else ""
        return self.parent_image


def executable(pid: int) -> str:
    try:
        path = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return ""
    return path.removesuffix(" (deleted)")


Selection = list[list[FieldTest]]  # OR of alternatives, each an AND of field tests
Node = tuple[Any, ...]


def _selection(name: str, body: Any) -> Selection:
    maps = body if isinstance(body, list) else [body]
    if not maps:
        raise RuleError(f"selection {name!r} is empty")
    alternatives: Selection = []
    for item in maps:
        if not isinstance(item, dict):
            raise RuleError(f"selection {name!r}: keyword lists are not supported")
        if not item:
            raise RuleError(f"selection {name!r} is empty")
        tests: list[FieldTest] = []
        for key, values in item.items():
            field_name, *modifiers = str(key).split("|")
            if field_name not in FIELDS:
                raise RuleError(f"field {clean(field_name, 40)!r} is not supported")
            unknown = [m for m in modifiers if m not in MODIFIERS]
            if unknown:
                raise RuleError(f"modifier {clean(unknown[0], 40)!r} is not supported")
            kinds = [m for m in modifiers if m != "all"]
            if len(kinds) > 1:
                raise RuleError(f"modifiers {clean('|'.join(kinds), 60)!r} together")
            listed = values if isinstance(values, list) else [values]
            if not listed:
                raise RuleError(f"selection {name!r}: an empty list of values")
            if any(v is None or isinstance(v, dict | list) for v in listed):
                raise RuleError(f"selection {name!r}: null or nested values are not supported")
            modifier = kinds[0] if kinds else ""
            globs = [
                Glob(str(v).lower() if isinstance(v, bool) else str(v), modifier) for v in listed
            ]
            tests.append(FieldTest(field_name, globs, "all" in modifiers))
        alternatives.append(tests)
    return alternatives


TOKEN = re.compile(r"\s*(\(|\)|[^\s()]+)")


def _condition(text: str, names: list[str]) -> Node:
    if "|" in text:
        raise RuleError("aggregations ('|' in the condition) are not supported")
    tokens = TOKEN.findall(text)
    if len(tokens) > MAX_CONDITION_TOKENS:
        raise RuleError(f"a condition longer than {MAX_CONDITION_TOKENS} words")
    pos = 0

    def peek() -> str:
        return tokens[pos] if pos < len(tokens) else ""

    def take() -> str:
        nonlocal pos
        pos += 1
        return tokens[pos - 1]

    def pattern(word: str) -> list[str]:
        if word == "them":
            return list(names)
        if word.endswith("*"):
            found = [n for n in names if n.startswith(word[:-1])]
        else:
            found = [n for n in names if n == word]
        if not found:
            raise RuleError(f"condition names no selection {clean(word, 40)!r}")
        return found

    def unary(depth: int) -> Node:
        if depth > 32:
            raise RuleError("a condition nested too deep")
        word = take() if peek() else ""
        if word == "not":
            return ("not", unary(depth + 1))
        if word == "(":
            inner = expression(depth + 1)
            if peek() != ")":
                raise RuleError("unbalanced parentheses in the condition")
            take()
            return inner
        if word in ("1", "all", "any"):
            if peek() != "of":
                raise RuleError(f"{word!r} without 'of' in the condition")
            take()
            target = take() if peek() else ""
            found = pattern(target)
            kind = "and" if word == "all" else "or"
            return (kind, [("sel", n) for n in found])
        if word in ("", "and", "or", ")") or word.isdigit():
            raise RuleError(f"condition: unexpected {word or 'end'!r}")
        if word not in names:
            raise RuleError(f"condition names no selection {clean(word, 40)!r}")
        return ("sel", word)

    def conjunction(depth: int) -> Node:
        parts = [unary(depth)]
        while peek() == "and":
            take()
            parts.append(unary(depth))
        return parts[0] if len(parts) == 1 else ("and", parts)

    def expression(depth: int) -> Node:
        parts = [conjunction(depth)]
        while peek() == "or":
            take()
            parts.append(conjunction(depth))
        return parts[0] if len(parts) == 1 else ("or", parts)

    node = expression(0)
    if pos != len(tokens):
        raise RuleError(f"condition: unexpected {clean(tokens[pos], 40)!r}")
    return node


Test = Callable[[Fields], bool]


def _compile_node(node: Node, selections: dict[str, Selection]) -> Test:
    """The condition as nested closures, built once (no tree walk per exec)."""
    kind = node[0]
    if kind == "sel":
        alternatives = selections[node[1]]
        if len(alternatives) == 1 and len(alternatives[0]) == 1:
            (only,) = alternatives[0]
            return only.match
        return lambda v: any(all(t.match(v) for t in alt) for alt in alternatives)
    if kind == "not":
        inner = _compile_node(node[1], selections)
        return lambda v: not inner(v)
    parts = [_compile_node(n, selections) for n in node[1]]
    if kind == "and":
        return lambda v: all(part(v) for part in parts)
    return lambda v: any(part(v) for part in parts)


def _literal(glob: Glob) -> str:
    """The longest piece of a value that every text it matches contains ("" under 3)."""
    pieces = [piece for segment in glob.segments for piece in segment.text.split("\0")]
    best = max(pieces, key=len, default="")
    return best if len(best) >= 3 else ""


def _test_anchors(test: FieldTest) -> frozenset[str] | None:
    if test.field not in ("Image", "CommandLine"):
        return None  # ParentImage is read only when a rule is tested
    literals = [_literal(g) for g in test.globs]
    if test.all:
        best = max(literals, key=len)
        return frozenset({best}) if best else None
    return frozenset(literals) if all(literals) else None


def _anchors(node: Node, selections: dict[str, Selection]) -> frozenset[str] | None:
    """Words one of which the Image or the CommandLine of every exec matching `node` holds
    (None: no such words are known)."""
    kind = node[0]
    if kind == "sel":
        words: set[str] = set()
        for alternative in selections[node[1]]:
            options = [a for a in map(_test_anchors, alternative) if a is not None]
            if not options:
                return None
            words |= min(options, key=len)
        return frozenset(words)
    if kind == "not":
        return None
    found = [_anchors(n, selections) for n in node[1]]
    if kind == "and":
        known = [f for f in found if f is not None]
        return min(known, key=len) if known else None
    if any(f is None for f in found):
        return None
    return frozenset().union(*[f for f in found if f is not None])


def _required_names(node: Node, selections: dict[str, Selection]) -> frozenset[str] | None:
    """Executable base names one of which every exec matching `node` has (None: any)."""
    kind = node[0]
    if kind == "sel":
        names: set[str] = set()
        for alternative in selections[node[1]]:
            pinned: set[str] | None = None
            for test in alternative:
                if test.field != "Image" or test.all:
                    continue
                bases = {g.basename() for g in test.globs}
                if None not in bases and (pinned is None or len(bases) < len(pinned)):
                    pinned = {b for b in bases if b}
            if pinned is None:
                return None
            names |= pinned
        return frozenset(names)
    if kind == "not":
        return None
    found = [_required_names(n, selections) for n in node[1]]
    if kind == "and":
        known = [f for f in found if f is not None]
        return min(known, key=len) if known else None
    if any(f is None for f in found):
        return None
    return frozenset().union(*[f for f in found if f is not None])


@dataclass
class Rule:
    rule_id: str
    level: str
    title: str
    source: str  # bundled | sigma | gtfobins
    pattern: str  # what the evidence shows as the matched pattern
    names: frozenset[str] | None  # executable base names it needs (None: any)
    # with names None: words one of which the executable or command line of every exec it
    # matches holds (None: none known); see PackSet.match
    anchors: frozenset[str] | None = None

    def test(self, values: Fields) -> bool:
        raise NotImplementedError


@dataclass
class SigmaRule(Rule):
    selections: dict[str, Selection] = field(default_factory=dict)
    condition: Node = ("or", [])

    def __post_init__(self) -> None:
        self.test = _compile_node(self.condition, self.selections)  # type: ignore[method-assign]


@dataclass
class TokenRule(Rule):
    """GTFOBins: the binary, and the tokens of one of its examples, all present."""

    binary: str = ""
    examples: list[tuple[str, ...]] = field(default_factory=list)

    def test(self, values: Fields) -> bool:
        if self.binary not in (os.path.basename(values.image), values.argv0):
            return False
        line = values.command_line
        return any(all(t in line for t in tokens) for tokens in self.examples)


def compile_sigma(doc: Any, rule_id: str, source: str, *, need_logsource: bool) -> SigmaRule:
    """One Sigma rule (a parsed document) in the supported subset, or RuleError."""
    if not isinstance(doc, dict):
        raise RuleError("not a Sigma rule (no top-level map)")
    if doc.get("status") in ("deprecated", "unsupported"):
        raise RuleError(f"status {doc.get('status')}")
    logsource = doc.get("logsource")
    if need_logsource:
        if not isinstance(logsource, dict) or logsource.get("category") != "process_creation":
            raise RuleError("logsource is not process_creation")
        if logsource.get("product", "linux") != "linux":
            raise RuleError("logsource is not linux")
    level = LEVELS.get(str(doc.get("level", "")).lower())
    if level is None:
        raise RuleError(f"level {clean(doc.get('level'), 30)!r} is not one of {', '.join(LEVELS)}")
    detection = doc.get("detection")
    if not isinstance(detection, dict):
        raise RuleError("no detection map")
    if "timeframe" in detection:
        raise RuleError("timeframe is not supported")
    raw_condition = detection.get("condition")
    listed = raw_condition if isinstance(raw_condition, list) else [raw_condition]
    conditions = [c for c in listed if isinstance(c, str) and c.strip()]
    if not conditions or len(conditions) != len(listed):
        raise RuleError("no condition")
    selections = {
        str(name): _selection(str(name), body)
        for name, body in detection.items()
        if name != "condition"
    }
    if not selections:
        raise RuleError("no selection")
    if sum(len(g.globs) for s in selections.values() for alt in s for g in alt) > MAX_VALUES:
        raise RuleError(f"more than {MAX_VALUES} values")
    names = list(selections)
    parsed = [_condition(c, names) for c in conditions]
    node = parsed[0] if len(parsed) == 1 else ("or", parsed)
    title = clean(doc.get("title") or rule_id, TITLE_CHARS)
    summary = (
        " ".join(conditions)
        + "; "
        + "; ".join(t.describe() for s in selections.values() for alt in s for t in alt)
    )
    return SigmaRule(
        rule_id,
        level,
        title,
        source,
        clean(summary, PATTERN_CHARS),
        _required_names(node, selections),
        _anchors(node, selections),
        selections=selections,
        condition=node,
    )


# --------------------------------------------------------------------------- GTFOBins
# What GTFOBins examples use for the attacker's side, never part of an attack's shape.
PLACEHOLDERS = (
    "attacker.com",
    "12345",
    "$tf",
    "rhost",  # also as getenv("RHOST") and ENV["RPORT"], not only $RHOST
    "rport",
    "lport",
    "lhost",
    "lfile",
    "/path/to/",
    "input-file",
    "output-file",
    "file_to_send",
    "file_to_get",
)
SHELL_WORDS = frozenset(
    {"exec", "export", "for", "in", "do", "done", "while", "then", "if", "fi", "true", "echo"}
)
GTF_TOKEN = re.compile(r"[a-z0-9_./:+-]+")


def gtfobins_examples(doc: Any) -> list[str]:
    """The code of every reverse-shell example of one GTFOBins front matter."""
    if not isinstance(doc, dict) or not isinstance(doc.get("functions"), dict):
        raise RuleError("no 'functions' map (not a GTFOBins entry)")
    codes: list[str] = []
    for name, entries in doc["functions"].items():
        if "reverse-shell" not in str(name):
            continue
        for entry in entries if isinstance(entries, list) else []:
            if isinstance(entry, dict) and isinstance(entry.get("code"), str):
                codes.append(entry["code"])
    return codes


def example_tokens(code: str, binary: str) -> list[str]:
    """The words of an example that can say it is a reverse shell (placeholders, `export`
    lines, shell keywords, numbers and the binary's own name dropped)."""
    text = "\n".join(
        line for line in code.lower().splitlines() if not line.strip().startswith("export ")
    )
    for placeholder in PLACEHOLDERS:
        text = text.replace(placeholder, " ")
    words: list[str] = []
    for word in GTF_TOKEN.findall(text):
        word = word.strip(".:")
        if word in SHELL_WORDS or word == binary or word.isdigit() or word in words:
            continue
        if len(word) < 3 and not (word.startswith("-") and len(word) == 2):
            continue
        words.append(word)
    return words


def gtfobins_rules(entries: dict[str, list[str]]) -> tuple[list[TokenRule], list[str]]:
    """Rules from {binary: [example code, ...]}: each example reduced to the two of its words
    that are rarest across all examples (ties: the longer). Also the binaries left without
    a usable example."""
    tokenised = {b: [example_tokens(c, b) for c in codes] for b, codes in entries.items()}
    frequency: dict[str, int] = {}
    for examples in tokenised.values():
        for word in {w for words in examples for w in words}:
            frequency[word] = frequency.get(word, 0) + 1
    out: list[TokenRule] = []
    empty: list[str] = []
    for binary, examples in sorted(tokenised.items()):
        chosen: list[tuple[str, ...]] = []
        for words in examples:
            best = sorted(words, key=lambda w: (frequency[w], -len(w), w))[:2]
            if best and tuple(best) not in chosen:
                chosen.append(tuple(best))
        if not chosen:
            empty.append(binary)
            continue
        pattern = " | ".join(" + ".join(tokens) for tokens in chosen)
        out.append(
            TokenRule(
                f"gtfobins.{binary}",
                GTFOBINS_LEVEL,
                f"GTFOBins reverse shell shape of {binary}",
                "gtfobins",
                clean(f"{binary}: {pattern}", PATTERN_CHARS),
                frozenset({binary}),
                binary=binary,
                examples=chosen,
            )
        )
    return out, empty


def front_matter(text: str) -> str:
    """The YAML between a file's first `---` line and the next `---` or `...` line."""
    lines = text.split("\n")
    if not lines or lines[0].rstrip() != "---":
        raise RuleError("no YAML front matter")
    for i, line in enumerate(lines[1:], 1):
        if line.rstrip() in ("---", "..."):
            return "\n".join(lines[1:i])
    raise RuleError("unterminated YAML front matter")


# --------------------------------------------------------------------------- loading
@dataclass
class Skip:
    source: str
    path: str
    reason: str

    def line(self) -> str:
        return f"{self.source} {self.path}: {self.reason}"


@dataclass
class SourceState:
    """What one source's folder held: its path, and whether it was there at all."""

    path: str = ""
    state: str = "absent"  # absent | loaded | error
    files: int = 0


def _read_files(
    root: str | Path,
    suffixes: tuple[str, ...],
    skipped: list[Skip],
    source: str,
    deadline: float,
    label: str = "",
) -> Iterator[tuple[str, bytes]]:
    """(relative path, bytes) of the regular files named *suffix under `root` (dot entries
    skipped), walked by directory fd without following any symlink (see the module doc).
    What is skipped is named `label` + its path under `root`."""
    used = {"files": 0, "bytes": 0, "dirs": 0, "stopped": 0}

    def limit(folder: bool = False) -> str:
        if folder and used["dirs"] >= MAX_DIRS:
            return f"more than {MAX_DIRS} folders"
        if used["files"] >= MAX_FILES:
            return f"more than {MAX_FILES} files"
        if used["bytes"] >= MAX_TOTAL_BYTES:
            return f"more than {MAX_TOTAL_BYTES >> 20} MiB"
        if time.monotonic() > deadline:
            return f"loading took over {LOAD_BUDGET_SEC:.0f} s"
        return ""

    def walk(fd: int, prefix: str, depth: int) -> Iterator[tuple[str, bytes]]:
        why = limit(folder=True)  # a tree of other files (sigma_dir = "/") is bounded too
        if why:
            used["stopped"] = 1
            skipped.append(
                Skip(source, label + prefix or ".", f"not read, nor anything after it: {why}")
            )
            return
        used["dirs"] += 1
        entries: list[tuple[str, bool]] = []
        try:
            with os.scandir(fd) as listing:
                for entry in listing:
                    if len(entries) >= MAX_ENTRIES:
                        why = f"more than {MAX_ENTRIES} entries: the rest not read"
                        skipped.append(Skip(source, label + prefix or ".", why))
                        break
                    entries.append((entry.name, entry.is_dir(follow_symlinks=False)))
        except OSError as exc:
            skipped.append(Skip(source, label + prefix or ".", f"unreadable: {exc.strerror}"))
            return
        entries.sort()
        for name, is_dir in entries:
            if used["stopped"]:
                return
            rel = f"{prefix}{name}"
            if name.startswith("."):
                continue
            if is_dir:
                if depth >= MAX_DIR_DEPTH:
                    skipped.append(
                        Skip(source, label + rel, f"deeper than {MAX_DIR_DEPTH} folders")
                    )
                    continue
                try:
                    child = os.open(name, nofollow.DIR_FLAGS | os.O_NOFOLLOW, dir_fd=fd)
                except OSError as exc:
                    skipped.append(Skip(source, label + rel, f"not opened: {exc.strerror}"))
                    continue
                try:
                    yield from walk(child, rel + "/", depth + 1)
                finally:
                    os.close(child)
                continue
            if not name.endswith(suffixes):
                continue
            why = limit()
            if why:
                used["stopped"] = 1
                skipped.append(Skip(source, label + rel, f"not read, nor anything after it: {why}"))
                return
            used["files"] += 1
            try:
                data = _read_one(fd, name)
            except OSError as exc:
                skipped.append(Skip(source, label + rel, exc.strerror or str(exc)))
                continue
            used["bytes"] += len(data)
            yield rel, data

    top = nofollow.open_dir(root)
    try:
        yield from walk(top, "", 0)
    finally:
        os.close(top)


def _read_one(dir_fd: int, name: str) -> bytes:
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
    try:
        fd = os.open(name, flags, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OSError(errno.ELOOP, "a symbolic link (not followed)") from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        if info.st_nlink != 1:
            raise OSError(errno.EMLINK, "a hard link to another file")
        if info.st_size > MAX_FILE_BYTES:
            raise OSError(errno.EFBIG, f"larger than {MAX_FILE_BYTES // 1024} KiB")
        data = b""
        while len(data) <= MAX_FILE_BYTES:
            chunk = os.read(fd, MAX_FILE_BYTES + 1 - len(data))
            if not chunk:
                break
            data += chunk
    finally:
        os.close(fd)
    if len(data) > MAX_FILE_BYTES:
        raise OSError(errno.EFBIG, f"larger than {MAX_FILE_BYTES // 1024} KiB")
    return data


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RuleError(f"not UTF-8 (byte {exc.start})") from None


def _stem(rel: str) -> str:
    name = rel.rsplit("/", 1)[-1]
    for suffix in (".yml", ".yaml", ".md", ".toml"):
        name = name.removesuffix(suffix)
    return name


SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,99}")


def sigma_root(directory: Path) -> Path:
    """The folder Sigma rules are read from: the SigmaHQ subtree when it is there."""
    layout = directory.joinpath(*SIGMA_LAYOUT)
    return layout if layout.is_dir() and not layout.is_symlink() else directory


def gtfobins_root(directory: Path) -> Path:
    nested = directory / "_gtfobins"
    return nested if nested.is_dir() and not nested.is_symlink() else directory


@dataclass
class PackSet:
    rules: list[Rule] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SOURCES, 0))
    skipped: list[Skip] = field(default_factory=list)
    sources: dict[str, SourceState] = field(default_factory=dict)
    files: dict[str, list[str]] = field(default_factory=dict)  # source -> files that gave rules
    by_name: dict[str, list[Rule]] = field(default_factory=dict)
    # rules that pin no executable: by the first three characters of each of their anchor
    # words, else tested on every exec
    by_trigram: dict[str, list[Rule]] = field(default_factory=dict)
    generic: list[Rule] = field(default_factory=list)

    def add(self, rule: Rule) -> bool:
        if self.counts[rule.source] >= MAX_RULES:
            return False
        self.counts[rule.source] += 1
        self.rules.append(rule)
        if rule.names is None and rule.anchors:
            for key in {word[:3] for word in rule.anchors}:
                self.by_trigram.setdefault(key, []).append(rule)
        elif rule.names is None:
            self.generic.append(rule)
        else:
            for name in rule.names:
                self.by_name.setdefault(name, []).append(rule)
        return True

    def summary(self) -> str:
        c = self.counts
        return (
            f"rule packs: {c['sigma']} sigma, {c['gtfobins']} gtfobins, "
            f"{c['bundled']} bundled, {len(self.skipped)} skipped"
        )

    def match(self, pid: int, argv: list[str], exe: str, parent: int = 0) -> list[Threat]:
        """Threats of one exec (`exe`: its executable, else argv[0] stands for it)."""
        if not argv or not self.rules:
            return []
        image = exe.removesuffix(" (deleted)") or argv[0]
        values = Fields(image, argv, parent)
        candidates = {id(rule): rule for rule in self.generic}
        for name in {os.path.basename(values.image), values.argv0}:
            candidates.update((id(rule), rule) for rule in self.by_name.get(name, ()))
        if self.by_trigram:
            # only rules one of whose anchor words can be there: the text's trigrams looked
            # up (a short text), or each key searched for (a long one)
            text = f"{values.image}\n{values.command_line}"
            keys = self.by_trigram
            if len(text) <= 8 * len(keys):
                hits: Any = {text[i : i + 3] for i in range(len(text) - 2)} & keys.keys()
            else:
                hits = [key for key in keys if key in text]
            for key in hits:
                candidates.update((id(rule), rule) for rule in keys[key])
        if not candidates:
            return []
        command = " ".join(argv)[:300]
        out: list[Threat] = []
        fired: set[str] = set()
        for rule in candidates.values():
            if rule.rule_id in fired or not rule.test(values):
                continue
            fired.add(rule.rule_id)
            evidence = {"process": {"pid": pid, "command": command, "pattern": rule.pattern}}
            out.append(
                threat(
                    rule.rule_id,
                    rule.level,
                    CATEGORY,
                    rule.title,
                    f"{rule.title} ({rule.source} rule)",
                    evidence,
                    f"{pid}:{command[:80]}",
                )
            )
        return out


def load_bundled(packs: PackSet, directory: Path = BUNDLED_DIR) -> None:
    for path in sorted(directory.glob("*.toml")):
        try:
            table = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            packs.skipped.append(Skip("bundled", path.name, f"unreadable: {exc}"))
            continue
        for number, doc in enumerate(table.get("rule", []), 1):
            ident = str(doc.get("id", "")) if isinstance(doc, dict) else ""
            where = f"{path.name} rule {number}"
            try:
                if not SAFE_ID.fullmatch(ident):
                    raise RuleError("no usable id")
                packs.add(compile_sigma(doc, f"bundled.{ident}", "bundled", need_logsource=False))
            except RuleError as exc:
                packs.skipped.append(Skip("bundled", where, str(exc)))


def load_sigma(packs: PackSet, directory: Path, deadline: float) -> None:
    root = sigma_root(directory)
    prefix = "" if root == directory else "/".join(SIGMA_LAYOUT) + "/"
    state = packs.sources["sigma"]
    files = _read_files(root, (".yml", ".yaml"), packs.skipped, "sigma", deadline, prefix)
    for rel, data in files:
        state.files += 1
        path = prefix + rel
        try:
            documents = parse_yaml(_decode(data))
            if len(documents) != 1:
                raise RuleError(
                    "rule collections (several documents) are not supported"
                    if documents
                    else "empty"
                )
            doc = documents[0]
            ident = str(doc.get("id", "")) if isinstance(doc, dict) else ""
            ident = ident if SAFE_ID.fullmatch(ident) else _stem(rel)
            if not SAFE_ID.fullmatch(ident):
                raise RuleError("neither the id nor the file name is a usable rule id")
            rule = compile_sigma(doc, f"sigma.{ident}", "sigma", need_logsource=True)
        except (YamlError, RuleError) as exc:
            packs.skipped.append(Skip("sigma", path, str(exc)))
            continue
        if not packs.add(rule):
            packs.skipped.append(Skip("sigma", path, f"not loaded: more than {MAX_RULES} rules"))
            break
        packs.files.setdefault("sigma", []).append(path)


def load_gtfobins(packs: PackSet, directory: Path, deadline: float) -> None:
    root = gtfobins_root(directory)
    prefix = "" if root == directory else "_gtfobins/"
    state = packs.sources["gtfobins"]
    entries: dict[str, list[str]] = {}
    origin: dict[str, str] = {}
    for rel, data in _read_files(root, ("",), packs.skipped, "gtfobins", deadline, prefix):
        name = rel.rsplit("/", 1)[-1]
        if "." in name and not name.endswith(".md"):
            continue
        state.files += 1
        binary = _stem(rel).lower()
        path = prefix + rel
        try:
            if not SAFE_ID.fullmatch(binary):
                raise RuleError("the file name is not a binary's name")
            documents = parse_yaml(front_matter(_decode(data)))
            codes = gtfobins_examples(documents[0] if documents else None)
        except (YamlError, RuleError) as exc:
            packs.skipped.append(Skip("gtfobins", path, str(exc)))
            continue
        if codes:
            entries.setdefault(binary, []).extend(codes)
            origin.setdefault(binary, path)
    found, empty = gtfobins_rules(entries)
    for binary in empty:
        packs.skipped.append(Skip("gtfobins", origin[binary], "no distinctive words"))
    for rule in found:
        if not packs.add(rule):
            packs.skipped.append(
                Skip("gtfobins", origin[rule.binary], f"not loaded: more than {MAX_RULES} rules")
            )
            break
        packs.files.setdefault("gtfobins", []).append(origin[rule.binary])


def load_packs(
    sigma_dir: Path | None, gtfobins_dir: Path | None, *, bundled: bool = True
) -> PackSet:
    """Every rule of the bundled set and of the two folders (None or a missing folder: that
    source is absent). Never raises for what the folders hold; reasons go to `skipped`."""
    packs = PackSet()
    if bundled:
        load_bundled(packs)
    deadline = time.monotonic() + LOAD_BUDGET_SEC
    for source, directory, loader in (
        ("sigma", sigma_dir, load_sigma),
        ("gtfobins", gtfobins_dir, load_gtfobins),
    ):
        state = packs.sources[source] = SourceState(str(directory or ""))
        if directory is None:
            continue
        try:
            loader(packs, directory, deadline)
            state.state = "loaded"
        except FileNotFoundError:
            state.state = "absent"
        except OSError as exc:
            state.state = "error"
            reason = (
                "a symbolic link or not a folder"
                if exc.errno in (errno.ELOOP, errno.ENOTDIR)
                else exc.strerror
            )
            packs.skipped.append(Skip(source, str(directory), f"folder not read: {reason}"))
    return packs


def resolve_dir(value: str, home: Path, owner: tuple[int, int] | None = None) -> Path:
    """A [detection] *_dir value as a path: `~/.coi/...` is inside the COI home served,
    `~/...` in the home folder of the user it belongs to (the daemon runs as root for
    `owner`). Raises ValueError for a relative path."""
    if value == "~/.coi" or value.startswith("~/.coi/"):
        return home / value[len("~/.coi/") :] if value != "~/.coi" else home
    if value == "~" or value.startswith("~/"):
        user_home = Path(pwd.getpwuid(owner[0]).pw_dir) if owner else Path.home()
        return user_home / value[2:]
    path = Path(value)
    if not path.is_absolute():
        raise ValueError(f"must be an absolute path or start with ~/ (got {value!r})")
    return path


def load_configured(
    settings: Any, home: Path, owner: tuple[int, int] | None = None
) -> tuple[PackSet, list[str]]:
    """The packs `settings` ([detection] sigma_dir, gtfobins_dir) name, and one-line errors
    about the settings themselves."""
    errors: list[str] = []
    dirs: dict[str, Path | None] = {}
    for key in ("sigma_dir", "gtfobins_dir"):
        try:
            dirs[key] = resolve_dir(str(getattr(settings, key)), home, owner)
        except (ValueError, KeyError) as exc:
            errors.append(f"detection.{key}: {exc}")
            dirs[key] = None
    return load_packs(dirs["sigma_dir"], dirs["gtfobins_dir"]), errors


SHOWN_SKIPS = 10  # skip reasons written to the daemon log (`coi monitor rules list`: all)


def load_for_daemon(
    home: Path, owner: tuple[int, int] | None, say: Any, sigma_dir: str, gtfobins_dir: str
) -> PackSet:
    """The daemon's packs, loaded once at its start: the folders its settings name
    ([detection] sigma_dir, gtfobins_dir, as written); one summary line, then one line per
    error and per skipped file (the first SHOWN_SKIPS) to `say`. Never raises: a broken pack
    leaves the bundled rules and the other source."""
    dirs = SimpleNamespace(sigma_dir=sigma_dir, gtfobins_dir=gtfobins_dir)
    try:
        packs, errors = load_configured(dirs, home, owner)
    except Exception as exc:  # a broken pack folder: the bundled rules still apply
        packs, errors = load_packs(None, None), [f"packs not read: {clean(exc)}"]
    say(packs.summary())
    for line in errors:
        say(f"rule packs: {line}")
    for skip in packs.skipped[:SHOWN_SKIPS]:
        say(f"rule packs: skipped {clean(skip.line())}")
    if len(packs.skipped) > SHOWN_SKIPS:
        more = len(packs.skipped) - SHOWN_SKIPS
        say(f"rule packs: {more} more skipped (coi monitor rules list shows them all)")
    return packs


# --------------------------------------------------------------------------- importing
@dataclass
class Imported:
    """What `import_pack` did: the kind of pack, where it now is, its rules and files, and
    what was left out (with reasons)."""

    kind: str  # sigma | gtfobins
    target: Path
    rules: int
    files: list[str]
    skipped: list[Skip]


def pack_kind(source: Path) -> str:
    """sigma or gtfobins, from the folder's layout (ValueError when it is neither)."""
    if (source / "_gtfobins").is_dir() or source.name == "_gtfobins":
        return "gtfobins"
    if source.joinpath(*SIGMA_LAYOUT).is_dir() or any(
        p.suffix in (".yml", ".yaml") for p in source.rglob("*") if p.is_file()
    ):
        return "sigma"
    raise ValueError(
        f"{source} is neither a Sigma pack (rules/linux/process_creation/ or *.yml files) "
        "nor a GTFOBins checkout (_gtfobins/)"
    )


def import_pack(source: Path, settings: Any, home: Path, *, dry_run: bool = False) -> Imported:
    """Validate the pack in `source` (a downloaded SigmaHQ or GTFOBins checkout, or a folder
    of rule files) and make it the one the daemon loads: only the files that give rules are
    copied, into a new folder that then replaces `[detection] sigma_dir`/`gtfobins_dir`
    (two renames); `dry_run`: validate only. Nothing is fetched. ValueError (one line) when
    nothing usable is there."""
    if not source.is_dir():
        raise ValueError(f"{source} is not a folder")
    kind = pack_kind(source)
    root = source.parent if source.name == "_gtfobins" else source
    key = "sigma_dir" if kind == "sigma" else "gtfobins_dir"
    target = resolve_dir(str(getattr(settings, key)), home)
    if target.is_symlink():
        raise ValueError(f"{target} is a symbolic link: the monitor would not read it")
    packs = (
        load_packs(root, None, bundled=False)
        if kind == "sigma"
        else load_packs(None, root, bundled=False)
    )
    files = packs.files.get(kind, [])
    if not files:
        first = f" (first: {packs.skipped[0].line()})" if packs.skipped else ""
        raise ValueError(f"no usable {kind} rules in {source}: {len(packs.skipped)} skipped{first}")
    if dry_run:
        return Imported(kind, target, packs.counts[kind], files, packs.skipped)
    target.parent.mkdir(parents=True, exist_ok=True)
    fresh = target.parent / f".{target.name}.new-{os.getpid()}"
    stale = target.parent / f".{target.name}.old-{os.getpid()}"
    try:
        for rel in files:
            data = (root / rel).read_bytes()
            if len(data) > MAX_FILE_BYTES:
                raise ValueError(f"{rel} changed while being imported")
            path = fresh / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        if target.exists():
            os.rename(target, stale)
        os.rename(fresh, target)
    finally:
        shutil.rmtree(fresh, ignore_errors=True)
        shutil.rmtree(stale, ignore_errors=True)
    return Imported(kind, target, packs.counts[kind], files, packs.skipped)


# What `coi update patterns` checks out of each source (a sparse, shallow clone).
SPARSE = {"sigma": "/".join(SIGMA_LAYOUT), "gtfobins": "_gtfobins"}


def clone_pack(source: str, kind: str, into: Path) -> Path:
    """A shallow sparse git checkout of `source` (a URL or a local repository) into `into`,
    only the part rule packs use: for `coi update patterns`, an explicit user command; the
    daemon never fetches. ValueError (one line) when git fails."""
    if not source or source.startswith("-"):
        raise ValueError(f"not a git source: {source!r}")
    steps = [
        ["git", "clone", "--quiet", "--depth", "1", "--filter=blob:none", "--sparse", "--",
         source, str(into)],
        ["git", "-C", str(into), "sparse-checkout", "set", SPARSE[kind]],
    ]  # fmt: skip
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}
    for argv in steps:
        done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)
        if done.returncode != 0:
            lines = [line for line in done.stderr.splitlines() if line.strip()]
            last = lines[-1] if lines else f"exit status {done.returncode}"
            raise ValueError(f"git {argv[1] if argv[1] != '-C' else argv[3]}: {clean(last)}")
    return into
