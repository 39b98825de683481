"""Profiles: named config overlays in <dir>/profiles/NAME/config.toml (+ optional build.sh and
CONTEXT.md), where <dir> is ~/.coi, ./.coi and the directory of $COI_CONFIG. All of them share
one namespace, so a project profile can inherit a user profile.

Inheritance (parent -> child), as in the original:
- sections deep-merge field by field (a child sets only the fields it names);
- arrays (forward_env, mounts, allowed_domains, ...) are replaced when the child defines them;
- [environment] maps merge, the child wins, and "" deletes the key;
- chains are at most MAX_DEPTH profiles long; a cycle is an error that names it.

A project's profiles come with the repository, so they are untrusted (see config/trust.py):
- a project folder named like a built-in ("default", "hardened") is ignored with a warning
  (the user's own ~/.coi/profiles may replace a built-in);
- a project profile's context file and build script must resolve, symlinks followed, inside
  that profile's own folder, or the profile is an error (one line; the file is never read);
- a context file is read once, at session start, through `read_context`: a regular file of at
  most CONTEXT_LIMIT bytes, opened without following a final symlink, and only if the opened
  file is still the one that was checked.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from coi_tui.config import trust
from coi_tui.config.layers import FileParser, Layer, Say, home_dir
from coi_tui.config.schema import BY_PATH, ENVIRONMENT, KEYS, Key, check_value
from coi_tui.core.errors import CoiError, UsageError
from coi_tui.core.paths import read_regular
from coi_tui.core.toml import toml_value

MAX_DEPTH = 10
CONTEXT_LIMIT = 256 * 1024  # a profile's CONTEXT.md
SCRIPT_LIMIT = 1024 * 1024  # a profile's build script
BUILTIN = "default"  # the fully merged global config; may be inherited, never edited
HARDENED = "hardened"
# Built-in profiles: "default" adds nothing to the merged config; "hardened" is COI's fixed
# preset. A user's disk profile of the same name replaces either; a project's is ignored.
PRESETS: dict[str, dict[str, object]] = {
    BUILTIN: {},
    HARDENED: {
        "container.persistent": False,
        "network.mode": "restricted",
        "network.block_private_networks": True,
        "network.block_metadata_endpoint": True,
        "network.allow_local_network_access": False,
        "ssh.forward_agent": False,
        "security.host_immutable": True,
        "security.secret_paths": [
            ".env",
            "*.pem",
            "*.key",
            "*.p12",
            "id_rsa",
            "id_ed25519",
            "*.tfvars",
            "*.tfstate",
            ".npmrc",
            ".netrc",
            ".git-credentials",
            "credentials.json",
            "service_account.json",
            "kubeconfig",
            "database.yml",
            "secrets/**",
        ],
        "security.reduce_kernel_surface": True,
        "monitoring.enabled": True,
        "monitoring.auto_pause_on_high": True,
        "monitoring.auto_kill_on_critical": True,
        "monitoring.nft.enabled": True,
        "monitoring.canaries": True,
        "limits.runtime.max_duration": "4h",
    },
}


def preset_layer(name: str) -> Layer:
    layer = Layer(f"profile {name}", "built-in")
    for path, value in PRESETS[name].items():
        layer.values[path] = check_value(BY_PATH[path], value)  # a preset obeys the schema too
    return layer


def builtin(name: str, found: dict[str, list[Profile]]) -> bool:
    """A built-in profile not replaced by one on disk."""
    return name in PRESETS and name not in found


NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


# Commented examples for the keys whose value is a table or a list of tables.
EXAMPLES: dict[str, list[str]] = {
    "sockets": [
        "[[sockets]]                     # a host unix socket proxied into the container",
        'host = "/run/user/1000/bus"',
        'container = "/run/coi/bus"',
        'env = "DBUS_SESSION_BUS_ADDRESS" # optional: set to the container path',
    ],
    "credentials": [
        '[[credentials]]                 # bundle = "ollama", or a file pushed in:',
        'host = "~/.config/tool/token"',
        'container = "/home/code/.config/tool/token"',
        'mode = "0600"',
    ],
    "prompts": [
        "[prompts]                       # for coi run --prompt-name NAME",
        'review = "Review the last commit"',
        'plan = { file = "plan.md" }     # read relative to this file',
    ],
    "defaults.env_commands": [
        "[env_commands]                  # VAR = host command whose output becomes the value",
        'GH_TOKEN = "gh auth token"',
    ],
    "network.hosts": [
        "[[network.hosts]]               # extra /etc/hosts entries (IPv4)",
        'ip = "10.0.0.5"',
        'hostnames = ["db.internal"]',
        "ports = [5432]",
    ],
    "ports.map": [
        "[[ports.map]]                   # publish a container port on the host",
        'name = "web"',
        "container = 3000",
        "host = 0                        # 0: pick a free port",
        'listen = "127.0.0.1"',
    ],
}


def key_comment(key: Key) -> str:
    notes = []
    if [c for c in key.choices if c]:
        notes.append(" | ".join(c or '""' for c in key.choices))
    if key.minimum is not None and key.maximum is not None:
        notes.append(f"{key.minimum:g}-{key.maximum:g}")
    elif key.minimum is not None:
        notes.append(f">= {key.minimum:g}")
    if key.refusal:
        notes.append(f"fixed here: {key.refusal}")
    return "; ".join(notes)


def documented_starter(name: str, inherits: str = "", image: str = "") -> str:
    """Every key of the schema at its default, commented out, one table per section; inherits
    and image (from `coi profile create --inherits/--image`) are set."""
    out = [
        f'# coi profile "{name}". Every setting is listed at its default, commented out:',
        "# uncomment what this profile should change. A profile accepts every section of",
        "# config.toml; paths (build script, context, prompt files) are relative to this folder.",
        '# Keys marked "fixed here" take no other value in this coi (the note says why).',
        "# 'coi profile show NAME' prints the result, 'coi config show' the rest.",
        "",
    ]
    if inherits:
        out.append(f'inherits = "{inherits}"')
    elif name != BUILTIN:
        out.append('# inherits = "default"          # parent profile; "default" = global config')
    out += [
        '# context = "CONTEXT.md"        # appended to ~/SANDBOX_CONTEXT.md for the agent',
        '# forward_env = ["GITHUB_TOKEN"] # host variables copied into the session',
        "",
        "# [environment]",
        '# MY_VAR = "value"',
        "",
        "# [[mounts]]",
        '# host = "~/.cache/pip"',
        '# container = "/home/code/.cache/pip"',
        "# readonly = false",
    ]
    first: dict[str, int] = {}
    for key in KEYS:
        first.setdefault(key.section, len(first))
    section = None
    for key in sorted(KEYS, key=lambda k: first[k.section]):  # a table is declared once
        if key.path == "defaults.profile":  # a profile cannot select a profile
            continue
        if key.path in EXAMPLES:
            out += ["", *(f"# {line}" for line in EXAMPLES[key.path])]
            section = None
            continue
        if key.section != section:
            section = key.section
            out += ["", f"[{section}]"]
        default = toml_value(key.default)
        comment = key_comment(key)
        text = f"# {key.name} = {default}"
        if key.path == "container.image" and image:
            text = f"{key.name} = {toml_value(image)}"
        out.append(f"{text:<32} # {comment}" if comment else text)
    return "\n".join(out) + "\n"


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise UsageError(
            f'invalid profile name "{name}": use letters, digits, ".", "_" and "-", '
            "starting with a letter or digit"
        )
    return name


@dataclass
class Profile:
    name: str
    directory: Path
    scope: str  # user | project | config
    _layer: Layer | None = None
    env: dict[str, str] | None = None  # for the trust rules of project profiles
    say: Say | None = None  # deprecation notes (an old profile shape)

    @property
    def config(self) -> Path:
        return self.directory / "config.toml"

    @property
    def layer(self) -> Layer:
        if self._layer is None:
            if self.scope == "project":
                workspace = self.directory.parent.parent.parent  # <ws>/.coi/profiles/<name>
                if not inside(str(self.directory), workspace):  # a symlink out of the repository
                    raise CoiError(
                        f'project profile "{self.name}": its folder {self.directory} leads out '
                        f"of {workspace}; its files were not read"
                    )
            layer = FileParser(
                self.config, f"profile {self.name}", profile=True, say=self.say
            ).parse()
            context = self.directory / "CONTEXT.md"
            if "context" not in layer.values and os.path.lexists(context):
                layer.values["context"] = str(context.resolve())
            build = self.directory / "build.sh"
            if (
                "container.build.script" not in layer.values
                and "container.build.commands" not in layer.values
                and os.path.lexists(build)
            ):
                layer.values["container.build.script"] = str(build.resolve())
            if self.scope == "project":  # comes with the repository: see config/trust.py
                for path, what in (
                    ("context", "context file"),
                    ("container.build.script", "build script"),
                ):
                    if layer.values.get(path):
                        self.check_inside(str(layer.values[path]), what)
                workspace = self.directory.parent.parent.parent  # <ws>/.coi/profiles/<name>
                env = dict(os.environ if self.env is None else self.env)
                report = trust.sanitize(layer.values, workspace, env, "profile")
                trust.REPORTS[f"{workspace}#profile:{self.name}"] = report
            self._layer = layer
        return self._layer

    def check_inside(self, path: str, what: str) -> None:
        """A project profile's file must be in its own folder (symlinks followed): a
        repository must not name ~/.ssh/id_ed25519 or ../../x to have it copied in."""
        if not inside(path, self.directory):
            raise CoiError(
                f'project profile "{self.name}": its {what} must be inside {self.directory}, '
                f"not {json.dumps(path)}; the file was not read"
            )


def inside(path: str, root: Path) -> bool:
    try:
        real = Path(os.path.realpath(path, strict=False))
        base = Path(os.path.realpath(root, strict=True))
    except (OSError, RuntimeError, ValueError):  # a loop, a NUL: fail closed
        return False
    return base in real.parents


def read_context(path: str) -> str:
    """A profile's context file, for the session's SANDBOX_CONTEXT.md (see paths.read_regular).
    Raises CoiError with one line."""
    try:
        return read_regular(path, CONTEXT_LIMIT, checked=True).decode("utf-8")
    except OSError as exc:
        raise CoiError(f"profile context {path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise CoiError(f"profile context {path}: cannot read: not UTF-8 text") from None


def read_script(path: str) -> bytes:
    """A profile's build script (see paths.read_regular). Raises CoiError with one line."""
    try:
        return read_regular(path, SCRIPT_LIMIT, checked=True)
    except OSError as exc:
        raise CoiError(f"build script {path}: {exc.strerror}") from None


@dataclass
class Resolved:
    name: str
    chain: list[str]  # child first, e.g. ["dev", "team", "base"]
    layer: Layer
    profiles: list[Profile] = field(default_factory=list)

    @property
    def environment(self) -> dict[str, str]:
        """The effective map (a "" value only deletes)."""
        return {k: v for k, v in self.layer.values.get(ENVIRONMENT, {}).items() if v != ""}


def inherit(parent: Layer, child: Layer, name: str) -> Layer:
    """Flatten child over parent. Values are flat key paths, so struct sections merge field by
    field and lists replace for free; only the environment map needs a real merge."""
    out = Layer(f"profile {name}", child.origin)
    out.values = {k: v for k, v in parent.values.items() if k != "inherits"}
    out.labels = {k: parent.where(k) for k in parent.values}
    for key in parent.values.get(ENVIRONMENT, {}):
        out.labels[f"environment.{key}"] = parent.where(f"environment.{key}")
    for path, value in child.values.items():
        if path == "inherits":
            continue
        if path in BY_PATH and BY_PATH[path].merge == "map":  # env_commands, prompts
            table = {**out.values.get(path, {}), **value}
            out.values[path] = {k: v for k, v in table.items() if v != ""}
        elif path == ENVIRONMENT:
            merged = dict(out.values.get(ENVIRONMENT, {}))
            for key, text in value.items():
                if text == "":
                    merged.pop(key, None)
                    out.labels.pop(f"environment.{key}", None)
                merged[key] = text  # "" stays as a tombstone: it also deletes from config
                out.labels[f"environment.{key}"] = child.where(f"environment.{key}")
            out.values[ENVIRONMENT] = merged
        else:
            out.values[path] = value
        out.labels[path] = child.where(path)
    return out


class ProfileSet:
    def __init__(
        self,
        locations: list[tuple[str, Path]],
        env: dict[str, str] | None = None,
        say: Say | None = None,
    ) -> None:
        self.locations = locations
        self.found: dict[str, list[Profile]] = {}
        self.ignored: list[Path] = []  # project folders named like a built-in
        for scope, directory in locations:
            if not directory.is_dir():
                continue
            for entry in sorted(directory.iterdir()):
                if not (entry.is_dir() and (entry / "config.toml").is_file()):
                    continue
                if scope == "project" and entry.name in PRESETS:
                    self.ignored.append(entry)
                    self.shadowing(entry)
                    continue
                self.found.setdefault(entry.name, []).append(
                    Profile(entry.name, entry, scope, env=env, say=say)
                )

    @staticmethod
    def shadowing(entry: Path) -> None:
        """A repository's .coi/profiles/hardened would replace the preset the user asked for
        by name: ignored, with a warning (shown by coi shell/run and config show --sources)."""
        workspace = entry.parent.parent.parent  # <ws>/.coi/profiles/<name>
        report = trust.TrustReport(
            ignored=[f'profile "{entry.name}" (a project cannot replace the built-in profile)']
        )
        trust.REPORTS[f"{workspace}#profile:{entry.name}"] = report

    @classmethod
    def discover(
        cls, cwd: Path, env: dict[str, str] | None = None, say: Say | None = None
    ) -> ProfileSet:
        env = dict(os.environ if env is None else env)
        dirs = [("user", home_dir(env) / "profiles"), ("project", cwd / ".coi" / "profiles")]
        if env.get("COI_CONFIG"):
            dirs.append(("config", Path(env["COI_CONFIG"]).expanduser().parent / "profiles"))
        unique: list[tuple[str, Path]] = []
        seen: set[Path] = set()
        for scope, directory in dirs:
            real = directory.resolve()
            if real not in seen:
                seen.add(real)
                unique.append((scope, directory))
        return cls(unique, env, say)

    def names(self) -> list[str]:
        return sorted(self.found)

    def available(self) -> list[str]:
        """Every profile a session can start with, as `coi profile list` shows them: the
        built-in ones first, then those on disk (one of a built-in's name replaces it)."""
        return [*PRESETS, *(name for name in self.names() if name not in PRESETS)]

    def looked_in(self) -> str:
        return ", ".join(str(d) for _, d in self.locations)

    def get(self, name: str, wanted_by: str | None = None) -> Profile:
        places = self.found.get(name, [])
        if not places:
            if wanted_by:
                raise CoiError(
                    f'profile "{wanted_by}" inherits from "{name}", but parent profile not found '
                    f"(looked in {self.looked_in()})"
                )
            raise CoiError(
                f'profile "{name}" not found (looked in {self.looked_in()}); '
                "'coi profile list' shows the available ones"
            )
        if len(places) > 1:
            where = ", ".join(str(p.directory) for p in places)
            raise CoiError(
                f'profile "{name}" defined in multiple locations: {where}. Rename one of them'
            )
        return places[0]

    def resolve(self, name: str) -> Resolved:
        check_name(name)
        if builtin(name, self.found):
            return Resolved(name, [name], preset_layer(name))
        walked: list[str] = []
        profiles: list[Profile] = []
        current: str | None = name
        while current and not builtin(current, self.found):
            if current in walked:
                cycle = [*walked[walked.index(current) :], current]
                raise CoiError(
                    f'profile inheritance cycle detected involving "{current}": '
                    f"{' -> '.join(cycle)}"
                )
            walked.append(current)
            if len(walked) > MAX_DEPTH:
                raise CoiError(
                    f"profile inheritance chain exceeds maximum depth of {MAX_DEPTH}: "
                    f"{' -> '.join(walked)}"
                )
            profile = self.get(current, walked[-2] if len(walked) > 1 else None)
            profiles.append(profile)
            current = profile.layer.values.get("inherits")
        layer = Layer(f"profile {name}", "")
        if current and current != BUILTIN:  # the chain ends at a built-in preset
            walked.append(current)
            layer = inherit(layer, preset_layer(current), current)
        for profile in reversed(profiles):  # root ancestor first
            layer = inherit(layer, profile.layer, profile.name)
        context = layer.values.get("context")
        if context and not os.path.isfile(context):
            raise CoiError(f'profile "{name}": context file {context} does not exist')
        return Resolved(name, walked, layer, profiles)

    # ------------------------------------------------------------------ create / delete
    def create_dir(self, scope: str, cwd: Path, env: dict[str, str]) -> Path:
        if scope == "auto":
            scope = "project" if (cwd / ".coi").is_dir() else "user"
        base = cwd / ".coi" if scope == "project" else home_dir(env)
        return base / "profiles"

    def create(
        self,
        name: str,
        *,
        scope: str,
        cwd: Path,
        env: dict[str, str],
        inherits: str = "",
        image: str = "",
    ) -> Path:
        check_name(name)
        if name in self.found:
            raise CoiError(f'profile "{name}" already exists at {self.found[name][0].directory}')
        directory = self.create_dir(scope, cwd, env) / name
        if name in PRESETS and directory.parent == cwd / ".coi" / "profiles":
            raise CoiError(
                f'"{name}" is a built-in profile: a project cannot replace it; '
                f"'coi profile create {name} --user' makes your own copy"
            )
        directory.mkdir(parents=True, exist_ok=False)
        # The documented starter (every key). `coi profile create default` writes it too: a
        # disk profile named "default" then replaces the built-in one.
        text = documented_starter(name, inherits, image)
        (directory / "config.toml").write_text(text, encoding="utf-8")
        return directory

    def delete(self, name: str) -> Path:
        if builtin(name, self.found):
            raise CoiError(f'"{name}" is a built-in profile; it cannot be deleted')
        profile = self.get(name)
        children = []
        for other in self.names():
            if other == name or len(self.found[other]) != 1:
                continue
            try:
                if self.found[other][0].layer.values.get("inherits") == name:
                    children.append(other)
            except CoiError:
                continue
        if children:
            raise CoiError(
                f'profile "{name}" is inherited by {", ".join(children)}; change or delete '
                "those first"
            )
        shutil.rmtree(profile.directory)
        return profile.directory
