"""Every configuration key coi understands: its dotted path, the Settings attribute it sets, its
type, default and allowed values. Loading, validation, `coi config show` and profiles all read
this one table, so adding a key is one line here plus a Settings field."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from coi_tui.core.toml import toml_value
from coi_tui.images.agents import AGENTS, DEFAULT_AGENTS, NOT_INSTALLABLE
from coi_tui.tools import TOOLS
from coi_tui.tools.credentials import BUNDLES

DEFAULT_IMAGE = "coi-default"
DEFAULT_BRIDGE = "coibr0"
DEFAULT_POOL = "coi"
DEFAULT_ALLOWED_DOMAINS = (
    "registry.npmjs.org",
    "npm.pkg.github.com",
    "api.anthropic.com",
    "platform.claude.com",
)
# `allowed_domains = ["@claude", "@github"]`: the names each agent or service needs, expanded
# when the config loads (exact names only, so they work with either egress filter).
EGRESS_PRESETS: dict[str, tuple[str, ...]] = {
    "claude": (
        "api.anthropic.com",
        "platform.claude.com",
        "console.anthropic.com",
        "claude.ai",
        "statsig.anthropic.com",
    ),
    "codex": ("api.openai.com", "chatgpt.com", "auth.openai.com"),
    "opencode": ("opencode.ai", "models.dev", "api.anthropic.com", "api.openai.com"),
    "aider": ("api.anthropic.com", "api.openai.com", "openrouter.ai", "pypi.org"),
    "npm": ("registry.npmjs.org", "registry.yarnpkg.com", "npm.pkg.github.com"),
    "pypi": ("pypi.org", "files.pythonhosted.org"),
    "github": (
        "github.com",
        "api.github.com",
        "codeload.github.com",
        "objects.githubusercontent.com",
        "raw.githubusercontent.com",
        "uploads.github.com",
    ),
}


def expand_presets(entries: list[str]) -> list[str]:
    """`@name` entries replaced by their names (EGRESS_PRESETS), in order, each once."""
    out: list[str] = []
    for entry in entries:
        for name in EGRESS_PRESETS.get(entry[1:], ()) if entry.startswith("@") else (entry,):
            if name not in out:
                out.append(name)
    return out


DEFAULT_PROTECTED_PATHS = (
    ".git/hooks",
    ".git/config",
    ".git/config.worktree",
    ".git/info/attributes",
    ".husky",
    ".vscode",
    ".coi",
    ".claude/settings.json",
    ".claude/settings.local.json",
    ".codex/config.toml",
    ".envrc",
    ".claude/hooks",
    ".mcp.json",
    ".devcontainer",
    ".devcontainer.json",
)
PERMISSION_MODES = ("bypass", "interactive")
GTFOBINS_SOURCE = "https://github.com/GTFOBins/GTFOBins.github.io.git"
SIGMA_SOURCE = "https://github.com/SigmaHQ/sigma.git"
MONITOR_ACTIONS = ("log", "alert", "pause", "kill")
# COI's C2 port list: the one list (the monitor's defaults are generated from it,
# scripts/monitor_defaults.py). 8080 is also a dev-server port: a connection there is only a
# WARNING (monitor/rules.py WEB_PORTS), the other rules still apply.
MONITOR_C2_PORTS = (4444, 5555, 1234, 31337, 12345, 6666, 6667, 6697, 8080)
MONITOR_METADATA_ADDRESSES = ("169.254.169.254", "169.254.170.2", "100.100.100.200")
# decoy credentials (monitor/canary.py CANARY_KINDS): AWS credentials, an SSH key, a .env,
# the GitHub CLI's hosts.yml
MONITOR_CANARY_KINDS = ("aws", "ssh", "env", "gh")


class Invalid(ValueError):
    """A value that does not fit its key; the message says what is allowed."""


class Refused(Invalid):
    """A valid value of the reference coi that this coi does not act on (`value`: checked)."""

    def __init__(self, message: str, value: Any) -> None:
        super().__init__(message)
        self.value = value


@dataclass(frozen=True)
class Key:
    path: str  # dotted TOML path, e.g. "limits.memory.limit"
    attr: str  # Settings attribute
    kind: str  # see CHECKS
    default: Any
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    # A key of the reference coi that this coi acts on only at these values (its default among
    # them): any other value is refused with `refusal`, the reason, never accepted and ignored.
    supported: tuple[Any, ...] = ()
    refusal: str = ""
    merge: str = "replace"  # between config files: replace | append | by_name | map

    @property
    def section(self) -> str:
        return self.path.rpartition(".")[0]

    @property
    def name(self) -> str:
        return self.path.rpartition(".")[2]


# ---------------------------------------------------------------------- value checks
SIZE_RE = re.compile(r"^\d+(\.\d+)?(B|kB|KB|KiB|MB|MiB|GB|GiB|TB|TiB|PB|PiB|EB|EiB)?$")
DURATION_RE = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
CPUSET_RE = re.compile(r"^(\d+|\d+-\d+)(,(\d+|\d+-\d+))*$")
ALLOWANCE_RE = re.compile(r"^(\d{1,3}%|\d+ms/\d+ms)$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


SIZE_UNITS = {
    "": 1, "B": 1, "kB": 1000, "KB": 1000, "MB": 1000**2, "GB": 1000**3, "TB": 1000**4,
    "PB": 1000**5, "EB": 1000**6, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30,
    "TiB": 1 << 40, "PiB": 1 << 50, "EiB": 1 << 60,
}  # fmt: skip


def size_bytes(text: str) -> int:
    """An Incus size ("512MiB", "2GB", "1073741824") in bytes; percentages and junk give 0."""
    text = text.strip()
    number = text.rstrip("BKMGTPEikb")
    try:
        return int(float(number) * SIZE_UNITS[text[len(number) :]])
    except (ValueError, KeyError):
        return 0


def describe(value: Any) -> str:
    return repr(value) if not isinstance(value, str) else f'"{value}"'


def check_bool(key: Key, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off", ""):
            return False
    raise Invalid(f"expected true or false, got {describe(value)}")


def check_int(key: Key, value: Any) -> int:
    if isinstance(value, bool):
        raise Invalid(f"expected a whole number, got {describe(value)}")
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise Invalid(f"expected a whole number, got {describe(value)}") from None
    if not isinstance(value, int):
        raise Invalid(f"expected a whole number, got {describe(value)}")
    check_range(key, value)
    return value


def check_float(key: Key, value: Any) -> float:
    if isinstance(value, bool):
        raise Invalid(f"expected a number, got {describe(value)}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise Invalid(f"expected a number, got {describe(value)}") from None
    check_range(key, number)
    return number


def check_range(key: Key, value: float) -> None:
    low, high = key.minimum, key.maximum
    if (low is not None and value < low) or (high is not None and value > high):
        if low is not None and high is not None:
            allowed = f"{low:g}-{high:g}"
        elif low is not None:
            allowed = f"at least {low:g}"
        else:
            allowed = f"at most {high:g}"
        raise Invalid(f"must be {allowed}, got {value:g}")


def check_str(key: Key, value: Any) -> str:
    if not isinstance(value, str):
        raise Invalid(f"expected a string, got {describe(value)}")
    return value


def check_enum(key: Key, value: Any) -> str:
    text = check_str(key, value)
    if text not in key.choices:
        raise Invalid(f"must be one of {', '.join(key.choices)}, got {describe(value)}")
    return text


def check_tool(key: Key, value: Any) -> str:
    text = check_str(key, value)
    if text not in TOOLS:  # the registry is the one list of agents
        raise Invalid(f"must be one of {', '.join(sorted(TOOLS))}, got {describe(value)}")
    return text


def check_list(key: Key, value: Any) -> list[str]:
    if isinstance(value, str):  # environment variables: comma separated
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise Invalid(f"expected a list of strings, got {describe(value)}")
    unknown = [item for item in value if key.choices and item not in key.choices]
    if unknown:  # a list of names from a fixed set
        raise Invalid(f"{describe(unknown[0])} is not one of {', '.join(key.choices)}")
    return list(value)


def check_agents(key: Key, value: Any) -> list[str]:
    """[container.build] agents: a tool the image cannot carry is refused with the reason."""
    for item in value if isinstance(value, list) else []:
        if item in NOT_INSTALLABLE:
            raise Invalid(
                f"agent {describe(item)} cannot go into the image: {NOT_INSTALLABLE[item]}"
            )
    return check_list(key, value)


def check_int_list(key: Key, value: Any) -> list[int]:
    if isinstance(value, str):  # environment variables: comma separated
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, list):
        raise Invalid(f"expected a list of whole numbers, got {describe(value)}")
    out = []
    for item in value:
        if isinstance(item, bool) or not isinstance(item, int | str):
            raise Invalid(f"expected a list of whole numbers, got {describe(value)}")
        try:
            number = int(item)
        except ValueError:
            raise Invalid(f"expected a list of whole numbers, got {describe(value)}") from None
        check_range(key, number)
        out.append(number)
    return out


def check_env_names(key: Key, value: Any) -> list[str]:
    names = check_list(key, value)
    for name in names:
        if not ENV_NAME_RE.match(name):
            raise Invalid(f"expected environment variable names, got {describe(name)}")
    return names


def pattern_check(regex: re.Pattern[str], allowed: str) -> Callable[[Key, Any], str]:
    def check(key: Key, value: Any) -> str:
        text = check_str(key, value).strip()
        if text and not regex.match(text):
            raise Invalid(f"expected {allowed}, got {describe(value)}")
        return text

    return check


def check_memory(key: Key, value: Any) -> str:
    text = check_str(key, value).strip()
    if text and not (SIZE_RE.match(text) or re.match(r"^\d{1,3}%$", text)):
        raise Invalid(f'expected a size like "512MiB" or "2GiB", or a percentage, got "{text}"')
    return text


def check_swap(key: Key, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    text = check_str(key, value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return "true"
    if text in ("false", "0", "no", "off"):
        return "false"
    if text and not SIZE_RE.match(str(value).strip()):
        raise Invalid(f'expected true, false or a size like "1GiB", got {describe(value)}')
    return str(value).strip()


def check_disk_rate(key: Key, value: Any) -> str:
    text = check_str(key, value).strip()
    if text.endswith("/s"):
        raise Invalid(f'give bytes per second without "/s" (e.g. "10MiB"), got "{text}"')
    if text and not (SIZE_RE.match(text) or re.match(r"^\d+iops$", text)):
        raise Invalid(f'expected a rate like "10MiB" or "1000iops", got "{text}"')
    return text


def check_duration(key: Key, value: Any) -> str:
    text = check_str(key, value).strip()
    if text and (not DURATION_RE.match(text) or parse_duration(text) <= 0):
        raise Invalid(f'expected a duration like "20s", "30m" or "1h30m", got "{text}"')
    return text


def parse_duration(text: str) -> int:
    """Seconds in "1h30m20s" (0 for "")."""
    match = DURATION_RE.match(text.strip())
    if not text.strip() or not match:
        return 0
    hours, minutes, seconds = (int(part or 0) for part in match.groups())
    return hours * 3600 + minutes * 60 + seconds


NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # session_name, prompt and port names
HOSTNAME_RE = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)
MODE_RE = re.compile(r"^0?[0-7]{3}$")


def check_permission_mode(key: Key, value: Any) -> str:
    """bypass | interactive; "" means bypass, as in the reference."""
    text = check_str(key, value).strip()
    return check_enum(key, text or "bypass")


def check_cpu_count(key: Key, value: Any) -> str:
    """[limits.cpu] count: a count ("2" or 2) or a CPU set ("0-3", "0,1,3")."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise Invalid(f'expected a CPU count (2 or "2") or set ("0-3"), got {describe(value)}')
    return pattern_check(CPUSET_RE, 'a CPU count ("2") or set ("0-3", "0,1,3")')(key, value)


# a name or address and an optional ":PORTS" (443, 80,443, 8000-8100), or with egress = "proxy"
# a wildcard "*.name"
DOMAIN_PATTERN = re.compile(
    r"^(\*\.)?[A-Za-z0-9_\u0080-\uffff]([A-Za-z0-9_.\u0080-\uffff-]*[A-Za-z0-9_\u0080-\uffff])?\.?"
    r"(/[0-9]{1,2})?(:[0-9]{1,5}(-[0-9]{1,5})?(,[0-9]{1,5}(-[0-9]{1,5})?)*)?$"
)


def check_domains(key: Key, value: Any) -> list[str]:
    domains = check_list(key, value)
    for domain in domains:
        if not domain.strip():
            raise Invalid("empty domain")
        if domain.startswith("@"):
            if domain[1:] not in EGRESS_PRESETS:
                raise Invalid(
                    f"unknown preset {describe(domain)} (presets: "
                    f"{', '.join('@' + n for n in EGRESS_PRESETS)})"
                )
            continue
        if not DOMAIN_PATTERN.match(domain.strip()):
            raise Invalid(
                f'want a name (example.com), an address, or with egress = "proxy" a '
                f"wildcard (*.example.com) and :PORT, got {describe(domain)}"
            )
    return domains


def ipv4(text: Any) -> bool:
    import ipaddress

    try:
        return isinstance(text, str) and bool(ipaddress.IPv4Address(text.strip()))
    except ValueError:
        return False


def check_ipv4_list(key: Key, value: Any) -> list[str]:
    items = check_list(key, value)
    for item in items:
        if not ipv4(item):
            raise Invalid(f"expected IPv4 addresses, got {describe(item)}")
    return [item.strip() for item in items]


def check_pattern(key: Key, value: Any, pattern: re.Pattern[str], message: str) -> str:
    """A string key that must match `pattern` when set; `message` says why, {got} the value."""
    text = check_str(key, value).strip()
    if text and not pattern.match(text):
        raise Invalid(message.format(got=describe(value)))
    return text


def check_name(key: Key, value: Any) -> str:
    return check_pattern(
        key,
        value,
        NAME_RE,
        'expected letters, digits, ".", "_" and "-", starting with a letter or digit, got {got}',
    )


TOKEN_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@-]*$")


def check_token(key: Key, value: Any) -> str:
    """A value that becomes one argument of the agent's argv (COI's rule for [tool.codex])."""
    return check_pattern(
        key,
        value,
        TOKEN_RE,
        "{got} must be a single token (letters, digits and . _ : / @ -, starting with a "
        "letter or digit)",
    )


ALIAS_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9_-]{0,63}$")


def check_alias(key: Key, value: Any) -> str:
    """COI's alias rule: a letter, then up to 63 letters, digits, "_" or "-"."""
    return check_pattern(
        key,
        value,
        ALIAS_RE,
        'invalid alias {got}: it must start with a letter and hold only letters, digits, "_" '
        'and "-" (at most 64)',
    )


def table_entries(key: Key, value: Any, fields: dict[str, str]) -> list[dict[str, Any]]:
    """[[key]] tables: a list of tables whose fields are all known. `fields`: name -> kind
    (str, int, bool, port, ports, hostnames)."""
    import difflib

    header = f"[[{key.path}]]"
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise Invalid(f"expected {header} tables, got {describe(value)}")
    out = []
    for number, entry in enumerate(value, 1):
        here = f"{header} #{number}"
        for name, item in entry.items():
            if name not in fields:
                close = difflib.get_close_matches(name, list(fields), n=1)
                hint = f' (did you mean "{close[0]}"?)' if close else ""
                raise Invalid(f'{here}: unknown field "{name}"{hint}')
            kind = fields[name]
            bad = (
                (kind == "str" and not isinstance(item, str))
                or (kind == "bool" and not isinstance(item, bool))
                or (
                    kind in ("int", "port")
                    and (isinstance(item, bool) or not isinstance(item, int))
                )
                or (kind in ("ports", "hostnames") and not isinstance(item, list))
            )
            if bad:
                raise Invalid(f"{here}: {name}: wrong type, got {describe(item)}")
            # `bad` checked the types; the isinstance calls say so to the type checker
            if kind == "port" and isinstance(item, int) and not 0 <= item <= 65535:
                raise Invalid(f"{here}: {name}: must be 0-65535, got {item}")
            if kind == "ports" and isinstance(item, list):
                for port in item:
                    if isinstance(port, bool) or not isinstance(port, int) or port < 1:
                        raise Invalid(f"{here}: {name}: ports must be 1-65535, got {port!r}")
                    if port > 65535:
                        raise Invalid(f"{here}: {name}: ports must be 1-65535, got {port}")
            if kind == "hostnames" and isinstance(item, list):
                for host in item:
                    if not isinstance(host, str) or not HOSTNAME_RE.match(host):
                        raise Invalid(f"{here}: {name}: not a valid hostname: {describe(host)}")
        out.append(dict(entry))
    return out


def need(entry: dict[str, Any], here: str, *names: str) -> None:
    for name in names:
        if not entry.get(name):
            raise Invalid(f"{here}: {name} is required")


def absolute(entry: dict[str, Any], here: str, name: str = "container") -> None:
    if not str(entry.get(name, "")).startswith("/"):
        raise Invalid(f"{here}: {name} must be an absolute path, got {describe(entry.get(name))}")


def check_sockets(key: Key, value: Any) -> list[dict[str, Any]]:
    entries = table_entries(key, value, {"host": "str", "container": "str", "env": "str"})
    for number, entry in enumerate(entries, 1):
        here = f"[[{key.path}]] #{number}"
        need(entry, here, "host", "container")
        absolute(entry, here)
        if entry.get("env") and not ENV_NAME_RE.match(entry["env"]):
            bad_env = describe(entry["env"])
            raise Invalid(f"{here}: env: not an environment variable name: {bad_env}")
    return entries


def check_credentials(key: Key, value: Any) -> list[dict[str, Any]]:
    fields = {"bundle": "str", "host": "str", "container": "str", "mode": "str"}
    entries = table_entries(key, value, fields)
    for number, entry in enumerate(entries, 1):
        here = f"[[{key.path}]] #{number}"
        if entry.get("bundle"):
            if entry.get("host") or entry.get("container"):
                raise Invalid(f"{here}: give either bundle or host and container, not both")
            if entry["bundle"] not in BUNDLES:
                known = ", ".join(sorted(BUNDLES))
                raise Invalid(f'{here}: unknown bundle "{entry["bundle"]}" (known: {known})')
        else:
            need(entry, here, "host", "container")
            absolute(entry, here)
        mode = entry.setdefault("mode", "0600")
        if not MODE_RE.match(mode):
            raise Invalid(f'{here}: mode: expected an octal mode like "0600", got {describe(mode)}')
    return entries


def check_port_maps(key: Key, value: Any) -> list[dict[str, Any]]:
    fields = {"name": "str", "container": "port", "host": "port", "listen": "str"}
    entries = table_entries(key, value, fields)
    seen: set[str] = set()
    for number, entry in enumerate(entries, 1):
        here = f"[[{key.path}]] #{number}"
        need(entry, here, "name", "container")
        if not NAME_RE.match(entry["name"]):
            bad = entry["name"]
            raise Invalid(f"{here}: name: use letters, digits, '.', '_' and '-', got {bad!r}")
        if entry["name"] in seen:
            raise Invalid(f"{here}: name {entry['name']!r} is used twice")
        seen.add(entry["name"])
        entry.setdefault("host", 0)
        listen = entry.setdefault("listen", "127.0.0.1")
        import ipaddress

        try:
            ipaddress.ip_address(listen)
        except ValueError:
            raise Invalid(f"{here}: listen: expected an IP address, got {listen!r}") from None
    return entries


def check_hosts(key: Key, value: Any) -> list[dict[str, Any]]:
    entries = table_entries(key, value, {"ip": "str", "hostnames": "hostnames", "ports": "ports"})
    for number, entry in enumerate(entries, 1):
        here = f"[[{key.path}]] #{number}"
        if not ipv4(entry.get("ip")):
            raise Invalid(f"{here}: ip: expected an IPv4 address, got {describe(entry.get('ip'))}")
        if not entry.get("hostnames"):
            raise Invalid(f"{here}: hostnames: at least one hostname is required")
    return entries


def check_prompts(key: Key, value: Any) -> dict[str, Any]:
    """name = "text" | { file = "path" } (the file is read by the loader, relative to the
    config file)."""
    if not isinstance(value, dict):
        raise Invalid('expected a table of NAME = "text" or NAME = { file = "path" }')
    for name, item in value.items():
        if not NAME_RE.match(name):
            raise Invalid(f"prompt name {describe(name)}: use letters, digits, '.', '_' and '-'")
        if isinstance(item, dict):
            if set(item) != {"file"} or not isinstance(item["file"], str) or not item["file"]:
                raise Invalid(f'{name}: expected {{ file = "path" }}, got {describe(item)}')
        elif not isinstance(item, str):
            raise Invalid(f'{name}: expected "text" or {{ file = "path" }}, got {describe(item)}')
    return dict(value)


def check_env_map(key: Key, value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        raise Invalid(f'expected a table of NAME = "command", got {describe(value)}')
    for name, item in value.items():
        if not ENV_NAME_RE.match(name):
            raise Invalid(f"{describe(name)} is not a valid environment variable name")
        if not isinstance(item, str):
            raise Invalid(f'{name}: expected a "command" string, got {describe(item)}')
    return dict(value)


CHECKS: dict[str, Callable[[Key, Any], Any]] = {
    "bool": check_bool,
    "int": check_int,
    "float": check_float,
    "str": check_str,
    "alias": check_alias,
    "token": check_token,
    "agents": check_agents,
    "enum": check_enum,
    "tool": check_tool,
    "list": check_list,
    "int_list": check_int_list,
    "env_names": check_env_names,
    "memory": check_memory,
    "swap": check_swap,
    "disk_rate": check_disk_rate,
    "size": pattern_check(SIZE_RE, 'a size like "10GiB"'),
    "duration": check_duration,
    "cpuset": pattern_check(CPUSET_RE, 'a CPU count ("2") or set ("0-3", "0,1,3")'),
    "allowance": pattern_check(ALLOWANCE_RE, 'a share like "50%" or "25ms/100ms"'),
    "permission_mode": check_permission_mode,
    "cpu_count": check_cpu_count,
    "domains": check_domains,
    "ipv4_list": check_ipv4_list,
    "name": check_name,
    "sockets": check_sockets,
    "credentials": check_credentials,
    "port_maps": check_port_maps,
    "hosts": check_hosts,
    "prompts": check_prompts,
    "env_map": check_env_map,
}

# The Python types a config *file* may use for each kind (environment variables and flags are
# text and go through the lenient CHECKS above). Bool must be bool, numbers numbers; a few keys
# also take what a user would naturally write (count = 2, swap = false).
FILE_TYPES: dict[str, tuple[type, ...]] = {
    "bool": (bool,),
    "int": (int,),
    "float": (int, float),
    "list": (list,),
    "agents": (list,),
    "int_list": (list,),
    "env_names": (list,),
    "domains": (list,),
    "ipv4_list": (list,),
    "swap": (str, bool),
    "cpu_count": (str, int),
    "sockets": (list,),
    "credentials": (list,),
    "port_maps": (list,),
    "hosts": (list,),
    "prompts": (dict,),
    "env_map": (dict,),
}  # every other kind: str
STRUCTURED = ("sockets", "credentials", "port_maps", "hosts", "prompts", "env_map")


def K(path: str, attr: str, kind: str, default: Any, *choices: str, **limits: Any) -> Key:
    merge = limits.pop("merge", "replace")
    return Key(
        path,
        attr,
        kind,
        default,
        tuple(choices),
        limits.get("min"),
        limits.get("max"),
        merge=merge,
    )


def R(path: str, attr: str, kind: str, default: Any, *choices: str, why: str, **limits: Any) -> Key:
    """A reference key this coi acts on only at its default (a COI config that states the
    default stays loadable); any other value is refused, saying `why`."""
    return replace(
        K(path, attr, kind, default, *choices, **limits), supported=(default,), refusal=why
    )


def check_value(key: Key, value: Any) -> Any:
    """The key's value checked and normalised; Invalid with one line when it is not allowed,
    or allowed by the reference but not supported here."""
    checked = CHECKS[key.kind](key, value)
    if key.refusal and checked not in key.supported:
        shown = ", ".join(toml_value(v) for v in key.supported)
        raise Refused(
            f"{toml_value(checked)} is not supported by this coi (only {shown}): {key.refusal}",
            checked,
        )
    return checked


AGENT_NAMES = tuple(sorted(AGENTS))
NOT_YET = "{} is not implemented in this coi yet"
UNDER_HOME = "coi keeps sessions, storage and logs under its home (~/.coi, or $COI_HOME)"

# Order is the order of `coi config show`.
KEYS: tuple[Key, ...] = (
    K("defaults.profile", "profile", "str", ""),
    K("defaults.env_command_timeout", "env_command_timeout", "duration", "30s"),
    K("defaults.env_commands", "env_commands", "env_map", {}, merge="map"),
    K("container.image", "image", "str", DEFAULT_IMAGE),
    K("container.persistent", "persistent", "bool", False),
    K("container.storage_pool", "storage_pool", "str", ""),
    K("container.docker", "docker", "bool", True),
    K("container.shutdown_timeout", "shutdown_timeout", "int", 60, min=0, max=3600),
    K("container.ready_timeout", "ready_timeout", "int", 30, min=1, max=3600),
    K("container.alias", "alias", "alias", ""),
    R(
        "container.session_name",
        "session_name",
        "name",
        "",
        why="named sessions are not implemented: a session is known by its workspace path",
    ),
    K("container.stale_base_check", "stale_base_check", "enum", "warn", "warn", "error", "off"),
    K("container.build.base", "build_base", "str", DEFAULT_IMAGE),
    K("container.build.script", "build_script", "str", ""),
    K("container.build.commands", "build_commands", "list", []),
    K("container.build.compression", "build_compression", "enum", "", "", "none", "gzip", "xz"),
    K("container.build.agents", "build_agents", "agents", list(DEFAULT_AGENTS), *AGENT_NAMES),
    R(
        "container.build.cloud_init",
        "build_cloud_init",
        "bool",
        False,
        why="the image is built without cloud-init; put its steps in [container.build] commands",
    ),
    K("tool.name", "tool", "tool", "claude"),
    K("tool.permission_mode", "permission_mode", "permission_mode", "bypass", *PERMISSION_MODES),
    K("tool.auto_context", "auto_context", "bool", True),
    K("tool.binary", "tool_binary", "str", ""),
    K("tool.pre_launch", "pre_launch", "list", []),
    K("tool.context_file", "context_file", "str", ""),
    K("tool.context_json", "context_json", "bool", True),
    K("tool.context_json_file", "context_json_file", "str", ""),
    K("tool.claude.model", "claude_model", "str", ""),
    K(
        "tool.claude.effort_level",
        "claude_effort_level",
        "enum",
        "",
        *("", "low", "medium", "high", "xhigh", "max", "auto"),
    ),
    K("tool.codex.model", "codex_model", "token", ""),
    K("tool.codex.reasoning_effort", "codex_reasoning_effort", "token", ""),
    K("shell.use_tmux", "use_tmux", "bool", True),
    R("paths.sessions_dir", "sessions_dir", "str", "~/.coi/sessions", why=UNDER_HOME),
    R("paths.storage_dir", "storage_dir", "str", "~/.coi/storage", why=UNDER_HOME),
    R("paths.logs_dir", "logs_dir", "str", "~/.coi/logs", why=UNDER_HOME),
    K("paths.preserve_workspace_path", "preserve_workspace_path", "bool", False),
    K("incus.project", "project", "str", "default"),
    R(
        "incus.group",
        "incus_group",
        "str",
        "incus-admin",
        why="coi setup grants its sudo rules to incus-admin, the group Incus itself uses",
    ),
    K("incus.code_uid", "code_uid", "int", 1000, min=1, max=65535),
    K("incus.code_user", "code_user", "str", "code"),
    R(
        "incus.disable_shift",
        "disable_shift",
        "bool",
        False,
        why="the workspace is always mounted with Incus's idmapped shift (raw.idmap is not used)",
    ),
    K("network.mode", "network_mode", "enum", "restricted", "restricted", "open", "allowlist"),
    K("network.bridge", "bridge", "str", DEFAULT_BRIDGE),
    K("network.allowed_domains", "allowed_domains", "domains", list(DEFAULT_ALLOWED_DOMAINS)),
    K("network.egress", "egress", "enum", "addresses", "addresses", "proxy"),
    K("network.denied_domains", "denied_domains", "domains", []),
    K("network.egress_hold_sec", "egress_hold_sec", "int", 0, min=0, max=300),
    K("network.allow_local_network_access", "allow_local_network_access", "bool", False),
    K("network.block_private_networks", "block_private_networks", "bool", True),
    K("network.block_metadata_endpoint", "block_metadata_endpoint", "bool", True),
    K("network.refresh_interval_minutes", "refresh_interval_minutes", "int", 30, min=0),
    K("network.use_sudo", "use_sudo", "bool", True),
    K("network.dns_servers", "dns_servers", "ipv4_list", []),
    K("network.allowed_ports", "allowed_ports", "int_list", [], min=1, max=65535),
    K("network.hosts", "network_hosts", "hosts", []),
    K("network.logging.enabled", "network_logging_enabled", "bool", True),
    K("network.logging.path", "network_logging_path", "str", "~/.coi/logs/network.log"),
    K("security.protected_paths", "protected_paths", "list", list(DEFAULT_PROTECTED_PATHS)),
    K("security.additional_protected_paths", "additional_protected_paths", "list", []),
    K("security.disable_protection", "disable_protection", "bool", False),
    K("security.writable_paths", "writable_paths", "list", [], merge="union"),
    K("security.secret_paths", "secret_paths", "list", [], merge="union"),
    K("security.host_immutable", "host_immutable", "bool", True),
    K("security.reduce_kernel_surface", "reduce_kernel_surface", "bool", False),
    K("security.reduce_kernel_surface_strict", "reduce_kernel_surface_strict", "bool", False),
    K("git.writable_hooks", "git_writable_hooks", "bool", False),
    K("git.name", "git_name", "str", ""),
    K("git.email", "git_email", "str", ""),
    K("git.seed_host_identity", "git_seed_host_identity", "bool", True),
    K("git.readonly", "git_readonly", "bool", False),
    K("git.strip_attribution", "git_strip_attribution", "bool", True),
    K("git.strip_attribution_patterns", "git_strip_attribution_patterns", "list", []),
    K("git.protected_branches", "git_protected_branches", "list", []),
    K("monitoring.enabled", "monitoring_enabled", "bool", False),
    K("monitoring.auto_pause_on_high", "monitoring_auto_pause_on_high", "bool", True),
    K("monitoring.auto_kill_on_critical", "monitoring_auto_kill_on_critical", "bool", True),
    R(
        "monitoring.poll_interval_sec",
        "monitoring_poll_interval_sec",
        "int",
        2,
        min=1,
        max=3600,
        why="the monitor is event-driven; its periodic /proc pass is monitoring.scan_interval_sec",
    ),
    K(
        "monitoring.file_read_threshold_mb",
        "monitoring_file_read_threshold_mb",
        "float",
        50.0,
        min=0,
    ),
    K(
        "monitoring.file_read_rate_mb_per_sec",
        "monitoring_file_read_rate_mb_per_sec",
        "float",
        10.0,
        min=0,
    ),
    K(
        "monitoring.audit_log_retention_days",
        "monitoring_audit_log_retention_days",
        "int",
        30,
        min=0,
    ),
    K("monitoring.process_count_threshold", "monitoring_process_count_threshold", "int", 0, min=0),
    R(
        "monitoring.reverse_shell_one_liners",
        "monitoring_reverse_shell_one_liners",
        "enum",
        "critical",
        "critical",
        "warn",
        "off",
        why="a one-liner wiring a socket to a shell is judged by what it does, always CRITICAL",
    ),
    R(
        "monitoring.forensics_on_kill",
        "monitoring_forensics_on_kill",
        "bool",
        False,
        why=NOT_YET.format("a forensic copy of a killed container")
        + " (its session data is saved)",
    ),
    # the monitor daemon's own knobs (ARCHITECTURE.md "Threat monitor"); these replaced the
    # [monitoring] table of ~/.coi/monitor.toml, still read as a deprecated fallback
    *(
        K(
            f"monitoring.actions.{level}",
            f"monitoring_actions_{level}",
            "enum",
            action,
            *MONITOR_ACTIONS,
        )
        for level, action in (
            ("info", "log"),
            ("warning", "alert"),
            ("high", "pause"),
            ("critical", "kill"),
        )
    ),
    K("monitoring.dedup_window_sec", "monitoring_dedup_window_sec", "float", 30.0, min=0),
    K(
        "monitoring.scan_interval_sec",
        "monitoring_scan_interval_sec",
        "float",
        1.0,
        min=0.2,
        max=60,
    ),
    K("monitoring.idle_exit_sec", "monitoring_idle_exit_sec", "float", 120.0, min=5),
    K("monitoring.nflog_group", "monitoring_nflog_group", "int", 0, min=0, max=65535),
    K(
        "monitoring.c2_ports",
        "monitoring_c2_ports",
        "int_list",
        list(MONITOR_C2_PORTS),
        min=1,
        max=65535,
    ),
    K(
        "monitoring.metadata_addresses",
        "monitoring_metadata_addresses",
        "list",
        list(MONITOR_METADATA_ADDRESSES),
    ),
    K("monitoring.exfil_threshold_mb", "monitoring_exfil_threshold_mb", "float", 20.0, min=0),
    K("monitoring.exfil_window_sec", "monitoring_exfil_window_sec", "float", 10.0, min=1),
    K("monitoring.exfil_correlate_mb", "monitoring_exfil_correlate_mb", "float", 1.0, min=0),
    K("monitoring.dns_rate_per_min", "monitoring_dns_rate_per_min", "int", 100, min=1),
    K("monitoring.dns_label_max", "monitoring_dns_label_max", "int", 30, min=1),
    K("monitoring.dns_name_max", "monitoring_dns_name_max", "int", 52, min=1),
    K("monitoring.dns_entropy_bits", "monitoring_dns_entropy_bits", "float", 3.5, min=0),
    K("monitoring.spawn_rate_per_sec", "monitoring_spawn_rate_per_sec", "int", 100, min=0),
    K("monitoring.canaries", "monitoring_canaries", "bool", False),
    K(
        "monitoring.canary_kinds",
        "monitoring_canary_kinds",
        "list",
        list(MONITOR_CANARY_KINDS),
        *MONITOR_CANARY_KINDS,
    ),
    # [monitoring.nft]: the reference's nftables flow logging. Here the monitor always reads
    # a watched container's flows (NFLOG), so `enabled = true` turns the monitor on; its DNS
    # threshold is monitoring.dns_rate_per_min (ALIASES)
    K("monitoring.nft.enabled", "monitoring_nft_enabled", "bool", False),
    R(
        "monitoring.nft.rate_limit_per_second",
        "monitoring_nft_rate_limit",
        "int",
        100,
        min=0,
        why="the monitor reads every new flow of a watched container (NFLOG), unthrottled",
    ),
    R(
        "monitoring.nft.log_dns_queries",
        "monitoring_nft_log_dns_queries",
        "bool",
        True,
        why="the monitor always reads a watched container's DNS queries",
    ),
    R(
        "monitoring.nft.lima_host",
        "monitoring_nft_lima_host",
        "str",
        "",
        why="Lima hosts are macOS; this coi runs its firewall on the Linux host itself",
    ),
    K("limits.cpu.count", "limit_cpu_count", "cpu_count", ""),
    K("limits.cpu.allowance", "limit_cpu_allowance", "allowance", ""),
    K("limits.cpu.priority", "limit_cpu_priority", "int", 0, min=0, max=10),
    K("limits.memory.limit", "limit_memory", "memory", ""),
    K("limits.memory.enforce", "limit_memory_enforce", "enum", "soft", "soft", "hard"),
    K("limits.memory.swap", "limit_memory_swap", "swap", "true"),
    K("limits.disk.read", "limit_disk_read", "disk_rate", ""),
    K("limits.disk.write", "limit_disk_write", "disk_rate", ""),
    K("limits.disk.max", "limit_disk_max", "disk_rate", ""),
    K("limits.disk.priority", "limit_disk_priority", "int", 0, min=0, max=10),
    K("limits.disk.size", "limit_disk_size", "size", ""),
    K("limits.disk.tmpfs_size", "limit_disk_tmpfs_size", "size", ""),
    K("limits.runtime.max_duration", "max_duration", "duration", ""),
    K("limits.runtime.max_processes", "max_processes", "int", 0, min=0, max=4194304),
    K("limits.runtime.auto_stop", "auto_stop", "bool", True),
    K("limits.runtime.stop_graceful", "stop_graceful", "bool", True),
    K("ssh.forward_agent", "ssh_forward_agent", "bool", False),
    K("timezone.mode", "timezone_mode", "enum", "host", "host", "fixed", "utc"),
    K("timezone.name", "timezone_name", "str", ""),
    K("detection.gtfobins_source", "gtfobins_source", "str", GTFOBINS_SOURCE),
    K("detection.gtfobins_dir", "gtfobins_dir", "str", "~/.coi/gtfobins"),
    K("detection.sigma_source", "sigma_source", "str", SIGMA_SOURCE),
    K("detection.sigma_dir", "sigma_dir", "str", "~/.coi/sigma"),
    R(
        "ports.pool",
        "ports_pool",
        "int",
        0,
        min=0,
        max=10,
        why=NOT_YET.format("port pools") + "; publish ports with [[ports.map]]",
    ),
    K("ports.map", "port_maps", "port_maps", [], merge="by_name"),
    # root-level tables and lists
    K("sockets", "sockets", "sockets", [], merge="append"),
    K("credentials", "credentials", "credentials", [], merge="append"),
    K("prompts", "prompts", "prompts", {}, merge="map"),
)

BY_PATH: dict[str, Key] = {key.path: key for key in KEYS}

# Older spellings still read (0.7-era `[defaults] image/persistent`).
ALIASES: dict[str, str] = {
    "defaults.image": "container.image",
    "defaults.persistent": "container.persistent",
    # a profile's root spellings of [defaults] keys
    "env_commands": "defaults.env_commands",
    "env_command_timeout": "defaults.env_command_timeout",
    # the reference name of our spawn-rate knob
    "monitoring.process_spawn_rate_threshold": "monitoring.spawn_rate_per_sec",
    # the reference's nft DNS volume threshold: the same count (queries a minute, WARNING)
    "monitoring.nft.dns_query_threshold": "monitoring.dns_rate_per_min",
}
# The 0.7-era profile shape (profile files only): root image and [build], mapped with a note.
LEGACY_PROFILE: dict[str, str] = {
    "image": "container.image",
    "build.base": "container.build.base",
    "build.script": "container.build.script",
    "build.commands": "container.build.commands",
}

# Keys with their own merge rules (see settings.apply_layer and profiles.inherit).
FORWARD_ENV = "forward_env"
ENVIRONMENT = "environment"
MOUNTS = "mounts"
SPECIAL_SPELLINGS: dict[str, str] = {
    "forward_env": FORWARD_ENV,
    "defaults.forward_env": FORWARD_ENV,
    "environment": ENVIRONMENT,
    "defaults.environment": ENVIRONMENT,
    "mounts": MOUNTS,
    "mounts.default": MOUNTS,  # the reference's list form, [[mounts.default]]
}
# Root keys only a profile has.
PROFILE_ROOT_KEYS = ("inherits", "context")
MOUNT_FIELDS = ("host", "container", "readonly", "shift")

# Environment variables -> key path (or a Settings-only attribute, prefixed "attr:").
ENV_VARS: dict[str, str] = {
    "COI_CONTAINER_PREFIX": "attr:container_prefix",
    "INCUS_SOCKET": "attr:socket",
    "COI_PROFILE": "defaults.profile",
    "COI_IMAGE": "container.image",
    "COI_PERSISTENT": "container.persistent",
    "COI_STORAGE_POOL": "container.storage_pool",
    "COI_TOOL": "tool.name",
    "COI_PERMISSION_MODE": "tool.permission_mode",
    "COI_PROJECT": "incus.project",
    "COI_BRIDGE": "network.bridge",
    "COI_NETWORK_MODE": "network.mode",
    "COI_DOCKER": "container.docker",
    # Legacy names (the original removed them in 0.10; we still read them).
    "CLAUDE_ON_INCUS_IMAGE": "container.image",
    "CLAUDE_ON_INCUS_PERSISTENT": "container.persistent",
    "CLAUDE_ON_INCUS_SESSIONS_DIR": "paths.sessions_dir",
    "CLAUDE_ON_INCUS_STORAGE_DIR": "paths.storage_dir",
    "COI_LIMIT_CPU": "limits.cpu.count",
    "COI_LIMIT_CPU_ALLOWANCE": "limits.cpu.allowance",
    "COI_LIMIT_MEMORY": "limits.memory.limit",
    "COI_LIMIT_MEMORY_SWAP": "limits.memory.swap",
    "COI_LIMIT_DISK_READ": "limits.disk.read",
    "COI_LIMIT_DISK_WRITE": "limits.disk.write",
    "COI_LIMIT_DURATION": "limits.runtime.max_duration",
}


def known_paths(profile: bool) -> list[str]:
    """Every spelling a file may use (for "did you mean")."""
    paths = [*BY_PATH, *ALIASES, *SPECIAL_SPELLINGS]
    if profile:
        paths += list(PROFILE_ROOT_KEYS)
    return paths


def sections() -> set[str]:
    """Tables that may appear as [a.b] headers."""
    out: set[str] = {"defaults.environment", "environment"}
    for path in (*BY_PATH, *ALIASES, *SPECIAL_SPELLINGS):
        parts = path.split(".")
        for i in range(1, len(parts)):
            out.add(".".join(parts[:i]))
    return out
