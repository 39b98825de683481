"""Real agent CLIs for the image, fetched on the build host from their registries: claude and
opencode from npm (they ship native binaries, so the image needs no Node.js to run them), aider
from PyPI (into /opt/aider with a small launcher).

The full image asks for all three by default. They are fetched into a staging directory while
the base system bootstraps (`AgentStager`, a background thread), then copied into the image
root. A registry that does not answer costs a few seconds, not a failed build: that agent is
skipped and the image keeps the recipe's stand-in of the same name, which says it is one. The
image records what it got (`coi.agents`), so a later `coi build` adds the missing ones once
their registry answers.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from coi_tui.core.errors import UsageError

Say = Callable[[str], None]

NPM_REGISTRY = "https://registry.npmjs.org/"
PYPI_INDEX = "https://pypi.org/simple/"
PROBE_TIMEOUT = 5.0
# The image's interpreter: aider's wheels are chosen for it, not for the build host's Python.
IMAGE_PYTHON = "3.11"
STAND_INS = "/usr/local/lib/coi/stand-ins"


@dataclass(frozen=True)
class NpmAgent:
    package: str
    binary: str

    registry_name = "npm"


@dataclass(frozen=True)
class PypiAgent:
    package: str
    module: str

    registry_name = "PyPI"


@dataclass(frozen=True)
class NpmTreeAgent:
    """A JavaScript CLI: its whole node_modules tree in /opt/<binary>, run by the image's
    Node.js through a launcher in /usr/local/bin."""

    package: str
    binary: str

    registry_name = "npm"


Agent = NpmAgent | NpmTreeAgent | PypiAgent
AGENTS: dict[str, Agent] = {
    "claude": NpmAgent("@anthropic-ai/claude-code", "claude"),
    "opencode": NpmAgent("opencode-ai", "opencode"),
    "aider": PypiAgent("aider-chat", "aider"),
    "codex": NpmTreeAgent("@openai/codex", "codex"),  # a JS launcher for its native binary
}
# Tools coi runs that the image cannot carry: why (a session still runs them when the image
# has them, e.g. from [container.build] commands; the image has a stand-in of each name).
NOT_INSTALLABLE = {
    "pi": "pi needs Node.js 20.6 or newer and the image's is 18 (Debian bookworm)",
    "omp": "omp needs the Bun runtime, which the image does not have",
}
# What the full image gets when nothing else is asked for (the lean image gets none); codex
# is opt-in, as in COI.
DEFAULT_AGENTS = ["aider", "claude", "opencode"]


def default_agents(variant: str) -> list[str]:
    return list(DEFAULT_AGENTS) if variant == "full" else []


def parse_agents(text: str) -> list[str]:
    """'claude,aider', 'all' or 'none' -> a sorted list; unknown names are a usage error."""
    text = text.strip()
    if text in ("", "none"):
        return []
    names = sorted(AGENTS) if text == "all" else [n.strip() for n in text.split(",") if n.strip()]
    for name in names:
        if name in NOT_INSTALLABLE:
            raise UsageError(f"agent '{name}' cannot go into the image: {NOT_INSTALLABLE[name]}")
    unknown = [n for n in names if n not in AGENTS]
    if unknown:
        raise UsageError(
            f"unknown agent(s) {', '.join(unknown)}: choose from "
            f"{', '.join(sorted(AGENTS))}, 'all' or 'none'"
        )
    return sorted(set(names))


def format_installed(versions: dict[str, str]) -> str:
    """The image property: 'aider=0.86.2,claude=2.1.197'."""
    return ",".join(f"{name}={versions[name]}" for name in sorted(versions))


def parse_installed(text: str) -> dict[str, str]:
    pairs = (item.split("=", 1) for item in text.split(",") if "=" in item)
    return {name: version for name, version in pairs}


# ---------------------------------------------------------------------- registries
def npm_registry() -> str:
    """The registry npm itself would use (its config, ~/.npmrc included), else npm's default."""
    npm = shutil.which("npm")
    registry = ""
    if npm:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            asked = [npm, "config", "get", "registry"]
            registry = subprocess.run(asked, capture_output=True, text=True, timeout=20).stdout
    registry = registry.strip()
    if not registry.startswith(("http://", "https://")):
        registry = NPM_REGISTRY
    return registry.rstrip("/") + "/"


def pypi_index() -> str:
    return (os.environ.get("PIP_INDEX_URL") or PYPI_INDEX).rstrip("/") + "/"


def probe_url(spec: Agent) -> str:
    if isinstance(spec, (NpmAgent, NpmTreeAgent)):
        return npm_registry() + urllib.parse.quote(spec.package, safe="@")
    return pypi_index() + spec.package + "/"


def registry_answers(spec: Agent, timeout: float = PROBE_TIMEOUT) -> bool:
    """One quick request for the package's page, so an unreachable registry costs seconds
    (npm and pip retry for minutes)."""
    request = urllib.request.Request(probe_url(spec), method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=timeout):
            return True
    except urllib.error.HTTPError as exc:
        return exc.code < 500 and exc.code != 404
    except (OSError, ValueError):
        return False


def missing_registries(names: list[str]) -> dict[str, str]:
    """{agent: registry} for each of `names` whose registry does not answer now."""
    return {
        name: AGENTS[name].registry_name for name in names if not registry_answers(AGENTS[name])
    }


# ---------------------------------------------------------------------- staging
@dataclass
class StagedAgent:
    name: str
    version: str
    seconds: float


@dataclass
class AgentStager:
    """Fetches the agents into `stage` (a tree laid out like the image root) in a thread of
    its own, so the downloads overlap the base bootstrap; `finish()` joins and copies."""

    names: list[str]
    say: Say
    stage: Path
    timeout: float = 900
    staged: list[StagedAgent] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # name -> why
    _thread: threading.Thread | None = None

    def start(self) -> AgentStager:
        self._thread = threading.Thread(target=self._run, name="coi-agents", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        for name in self.names:
            spec = AGENTS[name]
            where = f"{spec.registry_name} ({spec.package})"
            if not registry_answers(spec):
                self.skipped[name] = f"{spec.registry_name} did not answer"
                self.say(f"agents: {where} did not answer: {name} stays a stand-in")
                continue
            self.say(f"agents: fetching {name} from {where}")
            started = time.monotonic()
            try:
                if isinstance(spec, NpmAgent):
                    version = _stage_npm(self.stage, spec, self.timeout)
                elif isinstance(spec, NpmTreeAgent):
                    version = _stage_npm_tree(self.stage, spec, self.timeout)
                else:
                    version = _stage_pypi(self.stage, spec, self.timeout)
            except (OSError, subprocess.SubprocessError, RuntimeError) as exc:
                self.skipped[name] = str(exc)
                self.say(f"agents: {name} failed ({exc}): it stays a stand-in")
                continue
            seconds = time.monotonic() - started
            self.staged.append(StagedAgent(name, version, seconds))
            self.say(f"agents: {name} {version} ready ({seconds:.0f}s)")

    def finish(self, rootfs: Path) -> dict[str, str]:
        """Wait for the downloads, copy them into rootfs; {name: version} of what went in."""
        if self._thread is not None:
            if self._thread.is_alive():
                self.say("agents: waiting for the downloads")
            self._thread.join()
        if self.staged:
            copy_tree(self.stage, rootfs)
        return {agent.name: agent.version for agent in self.staged}


def copy_tree(source: Path, target: Path) -> None:
    """Merge `source` into `target`, replacing files (a stand-in symlink included)."""
    for path in sorted(source.rglob("*")):
        destination = target / path.relative_to(source)
        if path.is_dir() and not path.is_symlink():
            destination.mkdir(parents=True, exist_ok=True)
            continue
        destination.parent.mkdir(parents=True, exist_ok=True)
        if destination.is_symlink() or destination.exists():
            destination.unlink()
        shutil.copy2(path, destination, follow_symlinks=False)


VERSION = re.compile(r"\d+\.\d+(?:\.\d+)?(?:[-.+][0-9A-Za-z.]+)?")


def _run(cmd: list[str], timeout: float) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["failed"]
        raise RuntimeError(f"{Path(cmd[0]).name} failed: {last[0][:160]}")
    return done.stdout


def _stage_npm(stage: Path, spec: NpmAgent, timeout: float) -> str:
    npm = shutil.which("npm")
    if not npm:
        raise RuntimeError("npm is not installed on the build host (apt-get install npm)")
    with tempfile.TemporaryDirectory(prefix="coi-npm-") as prefix:
        command = [npm, "install", "--prefix", prefix, "--no-audit", "--no-fund", "--omit=dev"]
        _run([*command, spec.package], timeout)
        binary = Path(prefix) / "node_modules" / ".bin" / spec.binary
        if not binary.exists():
            raise RuntimeError(f"{spec.package} has no '{spec.binary}' executable")
        # The native binary itself, not npm's symlink into node_modules.
        target = stage / "usr" / "local" / "bin" / spec.binary
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(binary.resolve(), target)
        target.chmod(0o755)
    said = _run([str(target), "--version"], 60)
    found = VERSION.search(said)
    return found.group(0) if found else "unknown"


NPM_TREE_LAUNCHER = """#!/bin/sh
# {package} from npm, installed by coi build into /opt/{binary}
exec /opt/{binary}/node_modules/.bin/{binary} "$@"
"""


def _stage_npm_tree(stage: Path, spec: NpmTreeAgent, timeout: float) -> str:
    npm = shutil.which("npm")
    if not npm:
        raise RuntimeError("npm is not installed on the build host (apt-get install npm)")
    prefix = stage / "opt" / spec.binary
    prefix.mkdir(parents=True)
    command = [npm, "install", "--prefix", str(prefix), "--no-audit", "--no-fund", "--omit=dev"]
    _run([*command, spec.package], timeout)
    entry = prefix / "node_modules" / ".bin" / spec.binary
    if not entry.exists():
        raise RuntimeError(f"{spec.package} has no '{spec.binary}' executable")
    launcher = stage / "usr" / "local" / "bin" / spec.binary
    launcher.parent.mkdir(parents=True, exist_ok=True)
    text = NPM_TREE_LAUNCHER.replace("{package}", spec.package)
    launcher.write_text(text.replace("{binary}", spec.binary))
    launcher.chmod(0o755)
    said = _run([str(entry), "--version"], 60)
    found = VERSION.search(said)
    return found.group(0) if found else "unknown"


AIDER_LAUNCHER = """#!/bin/sh
# aider from PyPI, installed by coi build into /opt/{module}/lib
PYTHONPATH=/opt/{module}/lib exec python3 -c 'import sys
sys.argv[0] = "{module}"
from {module}.main import main
sys.exit(main())' "$@"
"""


def _stage_pypi(stage: Path, spec: PypiAgent, timeout: float) -> str:
    lib = stage / "opt" / spec.module / "lib"
    lib.mkdir(parents=True)
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-warn-conflicts",
            "--target",
            str(lib),
            "--python-version",
            IMAGE_PYTHON,
            "--only-binary=:all:",
            spec.package,
        ],
        timeout,
    )
    # Precompiled here: in the image /opt is read-only to the agent, so every start would
    # compile the whole tree again (about 10 s).
    if sys.version_info[:2] == tuple(int(x) for x in IMAGE_PYTHON.split(".")):
        subprocess.run(
            [sys.executable, "-m", "compileall", "-q", "-j", "0", str(lib)],
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    launcher = stage / "usr" / "local" / "bin" / spec.module
    launcher.parent.mkdir(parents=True, exist_ok=True)
    launcher.write_text(AIDER_LAUNCHER.replace("{module}", spec.module))
    launcher.chmod(0o755)
    dist = re.compile(re.escape(spec.package.replace("-", "_")) + r"-(.+)\.dist-info$")
    for entry in lib.iterdir():
        found = dist.match(entry.name)
        if found:
            return found.group(1)
    return "unknown"
