"""One config source, validated: a TOML file (config.toml or a profile's), the environment or
the command-line flags, each turned into a `Layer` of key paths. Every file is checked against
`schema.KEYS`; a problem is one CoiError line naming the file, line and key path and what is
allowed. Merging layers into `Settings` is config/settings.py; profiles are config/profiles.py.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coi_tui.config.remotes import remote_from_table
from coi_tui.config.schema import (
    ALIASES,
    BY_PATH,
    CHECKS,
    ENV_NAME_RE,
    ENV_VARS,
    ENVIRONMENT,
    FILE_TYPES,
    FORWARD_ENV,
    LEGACY_PROFILE,
    MOUNT_FIELDS,
    MOUNTS,
    PROFILE_ROOT_KEYS,
    SPECIAL_SPELLINGS,
    Invalid,
    Key,
    Refused,
    check_value,
    known_paths,
    sections,
)
from coi_tui.core.errors import CoiError, UsageError
from coi_tui.core.paths import coi_home, read_regular_text
from coi_tui.tools.base import WORKSPACE

PROMPT_FILE_LIMIT = 1024 * 1024  # [prompts] { file = ... }: a prompt, not a data set


def _check_remotes(value: Any, where: str) -> None:
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise CoiError(f"{where}: remotes: expected [[remotes]] tables")
    for table in value:
        remote_from_table(table, where)


def _check_tui(value: Any, where: str) -> None:
    if not isinstance(value, dict):
        raise CoiError(f"{where}: tui: expected a [tui] table")


# Top-level tables whose contents another module owns and validates: [[remotes]]
# (incus/remotes.py) and [tui] (the dashboard, e.g. [tui.keymap]).
OWNED_ELSEWHERE: dict[str, Any] = {"remotes": _check_remotes, "tui": _check_tui}


@dataclass
class Mount:
    host: str
    container: str
    readonly: bool = False
    shift: bool | None = None  # None: like the workspace (idmapped when the uids allow it)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"host": self.host, "container": self.container}
        out["readonly"] = self.readonly
        if self.shift is not None:
            out["shift"] = self.shift
        return out


# ---------------------------------------------------------------------- one file
@dataclass
class Layer:
    """The validated contents of one config source, flattened to key paths."""

    label: str  # "user config", "profile dev", "env", ...
    origin: str  # file path, or "" for env/flags
    values: dict[str, Any] = field(default_factory=dict)
    lines: dict[str, int] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)  # per-path override (profile chains)
    user_only: list[str] = field(default_factory=list)  # [[remotes]], [tui] seen in a project

    def where(self, path: str) -> str:
        if path in self.labels:
            return self.labels[path]
        line = self.lines.get(path)
        place = f"{self.origin}:{line}" if line and self.origin else self.origin
        return f"{self.label} ({place})" if place else self.label


HEADER_RE = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
KEYLINE_RE = re.compile(r"^\s*([A-Za-z0-9_\-.\"' ]+?)\s*=")


def _clean(dotted: str) -> str:
    return ".".join(part.strip().strip("\"'") for part in dotted.split("."))


def find_line(text: str, dotted: str) -> int | None:
    """Line (1-based) where a dotted key is set, else where its table starts, else None."""
    table = ""
    best: int | None = None
    for number, line in enumerate(text.splitlines(), 1):
        header = HEADER_RE.match(line)
        if header and not KEYLINE_RE.match(line):
            table = _clean(header.group(1))
            if dotted == table or dotted.startswith(table + ".") or table.startswith(dotted + "."):
                best = best or number
            continue
        keyline = KEYLINE_RE.match(line)
        if keyline:
            full = f"{table}.{_clean(keyline.group(1))}" if table else _clean(keyline.group(1))
            if full == dotted:
                return number
            if dotted.startswith(full + "."):  # inline table
                best = best or number
    return best


def show_key(dotted: str) -> str:
    """A key path as users write it: "[limits.memory] limit", "[network]", "forward_env"."""
    if dotted in sections():
        return f"[{dotted}]"
    table, _, name = dotted.rpartition(".")
    return f"[{table}] {name}" if table else name


TYPE_WORDS: dict[tuple[type, ...], str] = {
    (bool,): "true or false",
    (int,): "a whole number",
    (int, float): "a number",
    (list,): "a list",
    (dict,): "a table",
    (str, bool): "true, false or a string",
    (str, int): "a number or a string",
}
_NOTED: set[str] = set()
Say = Callable[[str], None]


def deprecated(message: str, say: Say | None) -> None:
    """A one-line deprecation note, once per process, to whoever shows the user such notes
    (the CLI: stderr; the dashboard: nowhere). Without a `say` it is not counted as told."""
    if say is not None and message not in _NOTED:
        _NOTED.add(message)
        say(f"Warning: {message}")


class FileParser:
    """Validates one TOML file into a Layer. Errors name file:line and the key path."""

    def __init__(
        self,
        path: Path,
        label: str,
        profile: bool = False,
        say: Say | None = None,
        project_may_set: Callable[[str, Any], bool] | None = None,
    ) -> None:
        self.path = path
        self.profile = profile
        # a repository's file: a value it may not set is dropped later (config/trust.py),
        # so one this coi does not support is no error there
        self.project_may_set = project_may_set
        self.say = say  # deprecation notes
        self.layer = Layer(label, str(path))
        self.text = ""

    def fail(self, dotted: str, message: str) -> CoiError:
        line = find_line(self.text, dotted)
        where = f"{self.path}:{line}" if line else str(self.path)
        return CoiError(f"{where}: {show_key(dotted)}: {message}")

    def parse(self) -> Layer:
        try:
            self.text = self.path.read_text(encoding="utf-8")
        except OSError as exc:
            raise CoiError(f"{self.path}: cannot read: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise CoiError(f"{self.path}: not UTF-8 text") from None
        try:
            data = tomllib.loads(self.text)
        except tomllib.TOMLDecodeError as exc:
            raise CoiError(f"{self.path}: invalid TOML: {exc}") from None
        self.walk(data, "")
        return self.layer

    def record(self, path: str, value: Any, spelled: str) -> None:
        self.layer.values[path] = value
        line = find_line(self.text, spelled)
        if line:
            self.layer.lines[path] = line

    def walk(self, table: dict[str, Any], prefix: str) -> None:
        for name, value in table.items():
            dotted = f"{prefix}{name}"
            if dotted in OWNED_ELSEWHERE and self.layer.label == "project config":
                self.layer.user_only.append(dotted)  # never read from a project: see trust.py
            elif dotted in OWNED_ELSEWHERE:
                OWNED_ELSEWHERE[dotted](value, f"{self.path}:{find_line(self.text, dotted) or 1}")
            elif dotted in SPECIAL_SPELLINGS:
                self.special(SPECIAL_SPELLINGS[dotted], dotted, value)
            elif self.profile and (dotted in LEGACY_PROFILE or dotted == "build"):
                self.legacy(dotted, value)
            elif self.profile and dotted in PROFILE_ROOT_KEYS:
                if not isinstance(value, str) or not value.strip():
                    raise self.fail(dotted, f"expected a non-empty string, got {value!r}")
                if dotted == "context":
                    value = str((self.path.parent / Path(value).expanduser()).resolve())
                self.record(dotted, value.strip(), dotted)
            elif dotted in BY_PATH or dotted in ALIASES:
                key = BY_PATH[ALIASES.get(dotted, dotted)]
                if self.profile and key.path == "defaults.profile":
                    raise self.fail(dotted, "a profile cannot select a profile (use inherits)")
                self.record(key.path, self.check(key, value, dotted), dotted)
                if dotted in ("defaults.image", "defaults.persistent"):  # the pre-0.8 layout
                    deprecated(
                        f"{self.path}:{find_line(self.text, dotted) or 1}: {show_key(dotted)} is "
                        f"the pre-0.8 layout; write {show_key(key.path)} instead",
                        self.say,
                    )
            elif isinstance(value, dict) and dotted in sections():
                self.walk(value, dotted + ".")
            else:
                raise self.unknown(dotted, value)

    def legacy(self, dotted: str, value: Any) -> None:
        """The 0.7-era profile shape: root image = "..." and [build] script/base/commands."""
        if dotted == "build":
            if not isinstance(value, dict):
                raise self.fail(dotted, f"expected a table ([build]), got {value!r}")
            for name, item in value.items():
                if f"build.{name}" not in LEGACY_PROFILE:
                    raise self.unknown(f"container.build.{name}", item)
                self.legacy(f"build.{name}", item)
            return
        key = BY_PATH[LEGACY_PROFILE[dotted]]
        self.record(key.path, self.check(key, value, dotted), dotted)
        line = find_line(self.text, dotted)
        deprecated(
            f"{self.path}:{line or 1}: {show_key(dotted)} is the 0.7 profile format; "
            f"write {show_key(key.path)} instead",
            self.say,
        )

    def unknown(self, dotted: str, value: Any) -> CoiError:
        if dotted in sections():
            return self.fail(dotted, f"expected a table ([{dotted}]), got {value!r}")
        candidates = known_paths(self.profile) + sorted(sections())
        close = difflib.get_close_matches(dotted, candidates, n=1, cutoff=0.6)
        if not close:  # a misspelled section: compare the last part within known sections
            leaf = dotted.rpartition(".")[2]
            close = difflib.get_close_matches(
                leaf, [c.rpartition(".")[2] for c in candidates], n=1, cutoff=0.75
            )
            close = (
                [c for c in candidates if c.endswith("." + close[0]) or c == close[0]][:1]
                if (close)
                else []
            )
        hint = f" (did you mean {show_key(close[0])}?)" if close else ""
        return self.fail(dotted, f"unknown key{hint}")

    def check(self, key: Key, value: Any, dotted: str) -> Any:
        # A file has real types: bool must be bool, a number a number (env vars are text).
        types = FILE_TYPES.get(key.kind, (str,))
        if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
            raise self.fail(dotted, f"expected {TYPE_WORDS.get(types, 'a string')}, got {value!r}")
        try:
            checked = check_value(key, value)
        except Refused as exc:
            if self.project_may_set is None or self.project_may_set(key.path, exc.value):
                raise self.fail(dotted, str(exc)) from None
            checked = exc.value
        except Invalid as exc:
            raise self.fail(dotted, str(exc)) from None
        if key.path == "container.build.script" and checked:
            checked = str((self.path.parent / Path(checked).expanduser()).resolve())
        if key.path == "prompts" and isinstance(checked, dict):
            checked = {name: self.prompt_text(dotted, name, v) for name, v in checked.items()}
        return checked

    def prompt_text(self, dotted: str, name: str, value: str | dict[str, str]) -> str:
        """[prompts] name = "text", or { file = "path" } read relative to this file."""
        if isinstance(value, str):
            return value
        path = Path(value["file"]).expanduser()
        path = path if path.is_absolute() else self.path.parent / path
        try:
            return read_regular_text(path, PROMPT_FILE_LIMIT)
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or "not UTF-8 text"
            raise self.fail(f"{dotted}.{name}", f"cannot read {path}: {reason}") from None

    def special(self, kind: str, dotted: str, value: Any) -> None:
        if kind == FORWARD_ENV:
            if not isinstance(value, list):
                raise self.fail(dotted, f'expected a list like ["NAME"], got {value!r}')
            try:
                names = CHECKS["env_names"](BY_PATH["tool.name"], value)
            except Invalid as exc:
                raise self.fail(dotted, str(exc)) from None
            self.record(FORWARD_ENV, names, dotted)
        elif kind == ENVIRONMENT:
            if not isinstance(value, dict):
                raise self.fail(dotted, f'expected a table of NAME = "value", got {value!r}')
            env: dict[str, str] = dict(self.layer.values.get(ENVIRONMENT, {}))
            for name, text in value.items():
                if not ENV_NAME_RE.match(name):
                    raise self.fail(f"{dotted}.{name}", "not a valid environment variable name")
                if isinstance(text, bool) or not isinstance(text, (str, int, float)):
                    raise self.fail(f"{dotted}.{name}", f"expected a string, got {text!r}")
                env[name] = str(text)
                line = find_line(self.text, f"{dotted}.{name}")
                if line:
                    self.layer.lines[f"environment.{name}"] = line
            self.record(ENVIRONMENT, env, dotted)
        elif kind == MOUNTS:
            if isinstance(value, dict) and set(value) == {"default"}:  # [[mounts.default]]
                dotted, value = f"{dotted}.default", value["default"]
            self.record(MOUNTS, self.mounts(dotted, value), dotted)

    def mounts(self, dotted: str, value: Any) -> list[Mount]:
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise self.fail(dotted, f"expected [[{dotted}]] tables with host and container")
        out: list[Mount] = []
        for index, entry in enumerate(value):
            here = f"{dotted}[{index}]"
            for name in entry:
                if name not in MOUNT_FIELDS:
                    close = difflib.get_close_matches(name, MOUNT_FIELDS, n=1)
                    hint = f' (did you mean "{close[0]}"?)' if close else ""
                    raise self.fail(dotted, f'{here}: unknown field "{name}"{hint}')
            host, container = entry.get("host"), entry.get("container")
            if not isinstance(host, str) or not host or not isinstance(container, str):
                raise self.fail(dotted, f'{here}: needs host = "PATH" and container = "/PATH"')
            for flag in ("readonly", "shift"):
                if flag in entry and not isinstance(entry[flag], bool):
                    raise self.fail(dotted, f"{here}: {flag} must be true or false")
            host_path = Path(host).expanduser()
            if not host_path.is_absolute():
                host_path = self.path.parent / host_path
            out.append(
                Mount(
                    str(host_path.resolve()),
                    container,
                    bool(entry.get("readonly", False)),
                    entry.get("shift"),
                )
            )
            try:
                check_mount_target(out[-1])
            except CoiError as exc:
                raise self.fail(dotted, f"{here}: {exc}") from None
        return out


def check_mount_target(mount: Mount) -> None:
    target = mount.container
    if not target.startswith("/"):
        raise CoiError(f'container path must be absolute, got "{target}"')
    norm = os.path.normpath(target)
    if norm == "/":
        raise CoiError("cannot mount over the container's root directory")
    if norm == WORKSPACE or norm.startswith(WORKSPACE + "/"):
        raise CoiError(f'cannot mount over or inside {WORKSPACE} (got "{target}")')


def check_mounts(mounts: list[Mount], *, sources_exist: bool) -> None:
    """None over /workspace; two at one path, or one inside another unless the inner one is
    read-only, conflict (COI's rule and wording); sources exist (at session start)."""
    seen: list[Mount] = []
    for mount in mounts:
        check_mount_target(mount)
        target = os.path.normpath(mount.container)
        for other in seen:
            there = os.path.normpath(other.container)
            if target == there:
                inner: Mount | None = None  # two at one path: neither can be "the child"
            elif target.startswith(there + "/"):
                inner = mount
            elif there.startswith(target + "/"):
                inner = other
            else:
                continue
            if inner is None or not inner.readonly:
                raise CoiError(
                    f"nested mount paths detected: '{there}' and '{target}' conflict (nested "
                    "writable mounts are not allowed; set readonly = true on the child mount)"
                )
        seen.append(mount)
        if sources_exist and not os.path.exists(mount.host):
            raise CoiError(f'mount source "{mount.host}" does not exist (for {target})')


def parse_mount_flag(text: str, cwd: Path) -> Mount:
    """`--mount HOST:CONTAINER` (COI's legacy flag): a writable mount; HOST may be relative."""
    parts = text.split(":")
    if len(parts) != 2 or not parts[0] or not parts[1]:
        raise UsageError(f"invalid mount format '{text}': expected HOST:CONTAINER")
    host, container = parts
    if not container.startswith("/"):
        raise UsageError(f"container path must be absolute: {container}")
    host_path = Path(host).expanduser()
    mount = Mount(str((cwd / host_path).resolve()), container)
    try:
        check_mount_target(mount)
    except CoiError as exc:
        raise UsageError(f"--mount {text}: {exc}") from None
    return mount


def env_layer(env: dict[str, str]) -> Layer:
    layer = Layer("env", "")
    for var, path in ENV_VARS.items():
        raw = env.get(var)
        if not raw:
            continue
        if path.startswith("attr:"):
            layer.values[path] = raw
        else:
            try:
                layer.values[path] = check_value(BY_PATH[path], raw)
            except Invalid as exc:
                raise CoiError(f"${var}: {exc}") from None
        layer.labels[path] = f"${var}"
    return layer


def flags_layer(flags: dict[str, tuple[Any, str]]) -> Layer:
    layer = Layer("flag", "")
    for path, (value, flag) in flags.items():
        if path == MOUNTS:  # --mount / --storage, parsed by parse_mount_flag
            layer.values[path] = list(value)
            layer.labels[path] = flag
            continue
        if path == ENVIRONMENT:  # `-e VAR=value`: merged over the config's environment
            for name in value:
                if not ENV_NAME_RE.match(name):
                    raise UsageError(f"{flag}: '{name}' is not a valid environment variable name")
                layer.labels[f"environment.{name}"] = flag
            layer.values[path] = {name: str(text) for name, text in value.items()}
            continue
        key = BY_PATH[path]
        try:
            layer.values[path] = check_value(key, value)
        except Invalid as exc:
            raise UsageError(f"{flag}: {exc}") from None
        layer.labels[path] = flag
    return layer


def home_dir(env: dict[str, str]) -> Path:
    return Path(env["COI_HOME"]).expanduser() if env.get("COI_HOME") else coi_home()
