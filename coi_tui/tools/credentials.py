"""What reaches a container from the host user's own agent files, in two tiers.

- An agent's plain config (Tool.host_files: claude's settings.json, CLAUDE.md) is copied into
  every new container, as COI does, without what looks secret (`host_file_copy`).
- Login files (BUNDLES) only on request: `[[credentials]] bundle = "claude"` in the user's own
  config (a project file needs `coi trust` for it). Pushed at each start, never mounted."""

from __future__ import annotations

import json
import re
import tomllib
from typing import Any

# bundle name -> home-relative files (a missing one is skipped with a line, as COI does)
BUNDLES: dict[str, tuple[str, ...]] = {
    "claude": (".claude/.credentials.json", ".claude.json"),
    "codex": (".codex/auth.json",),
    "opencode": (".local/share/opencode/auth.json",),
    "pi": (".pi/agent/auth.json",),
    "omp": (".omp/auth.json",),
    "ollama": (".ollama/id_ed25519", ".ollama/id_ed25519.pub"),  # ollama.com's key pair
}
HOST_FILE_LIMIT = 1 << 20  # bytes; an agent's config or login file is far smaller

# Names that hold a secret, at any depth of an agent's config: keys, tokens, passwords,
# headers (Authorization), personal access tokens. "awsAuthRefresh" (a command) is not one.
SECRET_NAME_RE = re.compile(
    r"api[_-]?key|token|secret|passw|credential|bearer|cookie|private[_-]?key|access[_-]?key"
    r"|header|^auth|_auth|auth_|(^|_)pat$|session[_-]?key",
    re.I,
)
URL_WITH_PASSWORD_RE = re.compile(r"://[^/\s:@]+:[^/\s@]+@")


def is_secret(name: str, value: Any) -> bool:
    if SECRET_NAME_RE.search(name):
        return True
    return isinstance(value, str) and bool(URL_WITH_PASSWORD_RE.search(value))


def secret_paths(data: Any, where: str = "") -> list[str]:
    """Dotted names of the secret-looking entries of parsed config, at any depth."""
    found: list[str] = []
    if isinstance(data, dict):
        for key, value in data.items():
            here = f"{where}.{key}" if where else str(key)
            if is_secret(str(key), value):
                found.append(here)
            else:
                found += secret_paths(value, here)
    elif isinstance(data, list):
        for index, value in enumerate(data):
            found += secret_paths(value, f"{where}[{index}]")
    return found


def without_secrets(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: without_secrets(v) for k, v in data.items() if not is_secret(str(k), v)}
    if isinstance(data, list):
        return [without_secrets(v) for v in data]
    return data


YAML_KEY_RE = re.compile(r"^\s*-?\s*[\"']?([A-Za-z0-9_.-]+)[\"']?\s*:\s*(.*)$")


def host_file_copy(relative: str, text: str) -> tuple[str | None, list[str]]:
    """What of a host config file goes into the container, and the secret-looking names left
    out: JSON without them (the rest kept, as the user's settings must hold inside); a TOML or
    YAML file with any of them not at all (no writer keeps their layout and comments; COI
    copies codex's config.toml byte for byte, which a clean one still is); text as it is.
    Raises ValueError for a JSON or TOML file that does not parse."""
    if relative.endswith(".json"):
        data = json.loads(text)
        found = secret_paths(data)
        if not found:
            return text, []
        return json.dumps(without_secrets(data), indent=2) + "\n", found
    if relative.endswith(".toml"):
        try:
            found = secret_paths(tomllib.loads(text))
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(str(exc)) from None
        return (None, found) if found else (text, [])
    if relative.endswith((".yml", ".yaml")):
        found = []
        for line in text.splitlines():
            match = YAML_KEY_RE.match(line)
            if match and is_secret(match[1], match[2]):
                found.append(match[1])
        return (None, found) if found else (text, [])
    return text, []
