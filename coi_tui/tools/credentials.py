"""What reaches a container from the host user's own agent files, in two tiers.

- An agent's plain config (Tool.host_files: claude's settings.json, CLAUDE.md) is copied into
  every new container, as COI does, with secret-named `env` entries of a settings file left
  out (`secret_env_names`).
- Login files (BUNDLES) only on request: `[[credentials]] bundle = "claude"` in the user's own
  config (a project file needs `coi trust` for it). Pushed at each start, never mounted."""

from __future__ import annotations

import re
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

SECRET_NAME_RE = re.compile(r"KEY|TOKEN|SECRET|PASSW|CREDENTIAL|AUTH|COOKIE|SESSION", re.I)


def secret_env_names(settings: dict[str, Any]) -> list[str]:
    """Names in a settings file's `env` table that look like they hold a secret."""
    env = settings.get("env")
    if not isinstance(env, dict):
        return []
    return sorted(name for name in env if SECRET_NAME_RE.search(str(name)))


def without_secret_env(settings: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    names = secret_env_names(settings)
    if not names:
        return settings, []
    env = {k: v for k, v in settings["env"].items() if k not in names}
    return {**settings, "env": env}, names
