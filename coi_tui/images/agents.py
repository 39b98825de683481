"""Real agent CLIs installed into an image root at build time, from their registries:
claude and opencode from npm (they ship native binaries, so the image needs no Node.js), aider
from PyPI (into /opt/aider with a small launcher). When a registry cannot be reached the agent
is skipped with a note, and the image keeps the recipe's stand-ins of the same name."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from coi_tui.errors import UsageError

Say = Callable[[str], None]


@dataclass(frozen=True)
class NpmAgent:
    package: str
    binary: str


@dataclass(frozen=True)
class PypiAgent:
    package: str
    module: str


AGENTS: dict[str, NpmAgent | PypiAgent] = {
    "claude": NpmAgent("@anthropic-ai/claude-code", "claude"),
    "opencode": NpmAgent("opencode-ai", "opencode"),
    "aider": PypiAgent("aider-chat", "aider"),
}


def parse_agents(text: str) -> list[str]:
    """'claude,aider' or 'all' -> a sorted list; unknown names are a usage error."""
    if not text.strip():
        return []
    names = sorted(AGENTS) if text.strip() == "all" else [n.strip() for n in text.split(",")]
    unknown = [n for n in names if n not in AGENTS]
    if unknown:
        raise UsageError(
            f"unknown agent(s) {', '.join(unknown)}: choose from "
            f"{', '.join(sorted(AGENTS))} or 'all'"
        )
    return sorted(set(names))


def install_agents(rootfs: Path, names: list[str], say: Say, timeout: float = 600) -> list[str]:
    """Install each agent into rootfs; returns the names actually installed."""
    installed: list[str] = []
    for name in names:
        spec = AGENTS[name]
        try:
            if isinstance(spec, NpmAgent):
                _install_npm(rootfs, spec, timeout)
            else:
                _install_pypi(rootfs, spec, timeout)
        except (OSError, subprocess.SubprocessError, RuntimeError) as exc:
            say(f"skipped {name}: {exc} (the image keeps its stand-in '{name}')")
            continue
        installed.append(name)
        say(f"installed {name} from {'npm' if isinstance(spec, NpmAgent) else 'PyPI'}")
    return installed


def _run(cmd: list[str], timeout: float) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["failed"]
        raise RuntimeError(f"{Path(cmd[0]).name} failed: {last[0][:160]}")


def _install_npm(rootfs: Path, spec: NpmAgent, timeout: float) -> None:
    npm = shutil.which("npm")
    if not npm:
        raise RuntimeError("npm is not installed on the build host")
    with tempfile.TemporaryDirectory(prefix="coi-npm-") as prefix:
        _run(
            [
                npm,
                "install",
                "--prefix",
                prefix,
                "--no-audit",
                "--no-fund",
                "--omit=dev",
                spec.package,
            ],
            timeout,
        )
        binary = Path(prefix) / "node_modules" / ".bin" / spec.binary
        if not binary.exists():
            raise RuntimeError(f"{spec.package} has no '{spec.binary}' executable")
        target = rootfs / "usr" / "local" / "bin" / spec.binary
        target.unlink(missing_ok=True)
        shutil.copy2(binary.resolve(), target)  # the native binary itself, not the npm symlink
        target.chmod(0o755)


def _install_pypi(rootfs: Path, spec: PypiAgent, timeout: float) -> None:
    lib = rootfs / "opt" / spec.module / "lib"
    if lib.exists():
        shutil.rmtree(lib)
    lib.mkdir(parents=True)
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--target",
            str(lib),
            "--python-version",
            "3.11",
            "--only-binary=:all:",
            spec.package,
        ],
        timeout,
    )
    launcher = rootfs / "usr" / "local" / "bin" / spec.module
    launcher.unlink(missing_ok=True)
    launcher.write_text(
        f'#!/bin/sh\nPYTHONPATH=/opt/{spec.module}/lib exec python3 -m {spec.module} "$@"\n'
    )
    launcher.chmod(0o755)
