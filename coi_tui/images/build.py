"""`coi build`: the coi-default image.

Two ways to get a base: an offline bootstrap with mmdebstrap from the distribution mirror (our
machines, and the automatic fallback), or a remote image server when one is reachable and the
coi bridge can reach the internet (the normal case for users). Both run the same recipe
(`recipe/`), whose hash is stored on the image: an unchanged recipe is not rebuilt.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from coi_tui.core.errors import CoiError
from coi_tui.images.agents import (
    AgentStager,
    default_agents,
    format_installed,
    missing_registries,
    parse_installed,
)
from coi_tui.incus.client import Incus

BUILDER_VERSION = "2"
RECIPE_PROPERTY = "coi.recipe"
AGENTS_PROPERTY = "coi.agents"  # what the build really installed: "claude=2.1.197,..."
DEBIAN_SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
REMOTE_SERVER = "https://images.linuxcontainers.org"
REMOTE_BASE = "debian/12"

Progress = Callable[[str], None]


def recipe_dir() -> Path:
    return Path(str(resources.files("coi_tui.images") / "recipe"))


VARIANTS = ("full", "lean")
VARIANT_ALIASES = {"full": "coi-default", "lean": "coi-lean"}
# COI 0.6's name of the default image, which COI's older tests still launch: an alias of
# coi-default (never moved off an image coi did not build)
LEGACY_ALIAS = "coi"


def _package_list(name: str) -> list[str]:
    text = (recipe_dir() / name).read_text()
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def recipe_packages(variant: str = "full") -> list[str]:
    """The lean base, plus Docker, Node.js, gh, build tools and clients for the full image."""
    packages = _package_list("packages.txt")
    if variant == "full":
        packages += _package_list("packages-full.txt")
    return packages


def recipe_hash(agents: list[str] | None = None, variant: str = "full") -> str:
    """Hash of everything that decides the image's contents (variant and agents included;
    agents None: the variant's default set)."""
    agents = default_agents(variant) if agents is None else agents
    extra = f";agents={','.join(sorted(agents))}" if agents else ""
    extra += f";variant={variant}" if variant != "full" else ""
    digest = hashlib.sha256(f"builder={BUILDER_VERSION};suite={DEBIAN_SUITE}{extra}\n".encode())
    for path in sorted(recipe_dir().rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            digest.update(path.relative_to(recipe_dir()).as_posix().encode() + b"\0")
            digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class BuildResult:
    alias: str
    fingerprint: str
    rebuilt: bool
    seconds: float
    size_bytes: int
    method: str


def incus_arch() -> str:
    machine = platform.machine()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


def remote_server_reachable(timeout: float = 3.0) -> bool:
    try:
        with urllib.request.urlopen(f"{REMOTE_SERVER}/streams/v1/index.json", timeout=timeout):
            return True
    except OSError:
        return False


class ImageBuilder:
    def __init__(self, incus: Incus, progress: Progress = print) -> None:
        self.incus = incus
        self.progress = progress
        self.started = time.monotonic()
        self.agents: list[str] = []
        self.variant = "full"

    def say(self, message: str) -> None:
        self.progress(f"[{time.monotonic() - self.started:6.1f}s] {message}")

    def up_to_date(
        self, alias: str, agents: list[str] | None = None, variant: str = "full"
    ) -> bool:
        """Same recipe, and no agent missing that its registry could now provide (an image
        built while a registry was down is rebuilt once it answers)."""
        agents = default_agents(variant) if agents is None else agents
        if not self.incus.image_exists(alias):
            return False
        properties = self.incus.get_image(alias).properties
        if properties.get(RECIPE_PROPERTY) != recipe_hash(agents, variant):
            return False

        have = parse_installed(properties.get(AGENTS_PROPERTY, ""))
        missing = [name for name in agents or [] if name not in have]
        if not missing:
            return True
        unreachable = missing_registries(missing)
        if len(unreachable) < len(missing):
            fetchable = sorted(set(missing) - set(unreachable))
            self.say(f"image '{alias}' lacks {', '.join(fetchable)}, whose registry answers now")
            return False
        return True

    def build(
        self,
        alias: str,
        *,
        force: bool = False,
        method: str = "auto",
        bridge: str = "coibr0",
        pool: str = "",
        agents: list[str] | None = None,
        variant: str = "full",
    ) -> BuildResult:
        self.started = time.monotonic()
        self.agents = sorted(default_agents(variant) if agents is None else agents)
        self.variant = variant
        recipe = recipe_hash(self.agents, variant)
        if not force and self.up_to_date(alias, self.agents, variant):
            image = self.incus.get_image(alias)
            self.say(f"image '{alias}' is up to date (recipe {recipe}); use --force to rebuild")
            self._note_stand_ins(image.properties.get(AGENTS_PROPERTY, ""))
            self._legacy_alias(alias, image.fingerprint)
            return BuildResult(
                alias,
                image.fingerprint,
                False,
                time.monotonic() - self.started,
                image.size,
                "cached",
            )
        if method == "auto":
            # The offline bootstrap is the path we test; a remote base only when it cannot run.
            can_bootstrap = os.geteuid() == 0 and shutil.which("mmdebstrap") is not None
            method = "bootstrap" if can_bootstrap or not self._remote_usable(bridge) else "remote"
        if method == "remote":
            fingerprint = self._build_remote(alias, recipe, bridge, pool)
        else:
            fingerprint = self._build_bootstrap(alias, recipe)
        image = self.incus.get_image(alias)
        seconds = time.monotonic() - self.started
        self.say(
            f"built '{alias}' ({fingerprint[:12]}) in {seconds:.1f}s, "
            f"{image.size / 1e6:.0f} MB ({method})"
        )
        self._note_stand_ins(image.properties.get(AGENTS_PROPERTY, ""))
        self._legacy_alias(alias, fingerprint)
        return BuildResult(alias, fingerprint, True, seconds, image.size, method)

    def _legacy_alias(self, alias: str, fingerprint: str) -> None:
        if alias != VARIANT_ALIASES["full"]:
            return
        if self.incus.image_exists(LEGACY_ALIAS):
            current = self.incus.get_image(LEGACY_ALIAS)
            if current.fingerprint == fingerprint or RECIPE_PROPERTY not in current.properties:
                return  # already there, or an image of someone else's under that name
        self.incus.set_alias(LEGACY_ALIAS, fingerprint, f"{alias} (COI 0.6's name)")

    def _note_stand_ins(self, installed: str) -> None:
        """One line when asked-for agents are stand-ins in the image, and how to fix it."""
        have = parse_installed(installed)
        missing = [name for name in self.agents if name not in have]
        if missing:
            self.say(
                f"note: {', '.join(missing)} in this image are stand-ins (their registry did "
                "not answer); 'coi build' installs the real ones once it does"
            )

    def _agent_stager(self, workdir: Path) -> AgentStager | None:
        """Start fetching the agents now, so the downloads overlap the base build."""
        if not self.agents:
            return None
        self.say(f"agents: fetching {', '.join(self.agents)} while the base system builds")
        return AgentStager(self.agents, self.say, workdir / "agents").start()

    def _properties(self, recipe: str, installed: dict[str, str]) -> dict[str, str]:
        return {
            RECIPE_PROPERTY: recipe,
            AGENTS_PROPERTY: format_installed(installed),
            "description": _description(recipe),
        }

    def _remote_usable(self, bridge: str) -> bool:
        network = self.incus.get_network(bridge) or {}
        nat = (network.get("config") or {}).get("ipv4.nat") == "true"
        return nat and remote_server_reachable()

    # ------------------------------------------------------------------ offline bootstrap
    def _build_bootstrap(self, alias: str, recipe: str) -> str:
        if os.geteuid() != 0:
            raise CoiError("the offline image bootstrap needs root: run 'sudo coi build'")
        if not shutil.which("mmdebstrap"):
            raise CoiError("mmdebstrap is not installed: 'sudo apt-get install mmdebstrap'")
        mirror = os.environ.get("COI_APT_MIRROR", DEFAULT_MIRROR)
        workdir = Path(tempfile.mkdtemp(prefix="coi-build-", dir=_scratch_dir()))
        try:
            rootfs = workdir / "rootfs"
            customize = recipe_dir() / "customize.sh"
            cmd = [
                "mmdebstrap",
                "--variant=apt",
                "--mode=root",
                "--include=" + ",".join(recipe_packages(self.variant)),
                "--customize-hook=sh " + _shell_quote(str(customize)) + ' "$1"',
                DEBIAN_SUITE,
                str(rootfs),
                mirror,
            ]
            stager = self._agent_stager(workdir)
            self.say(f"bootstrapping Debian {DEBIAN_SUITE} from {mirror}")
            self._run_logged(cmd)
            installed = stager.finish(rootfs) if stager else {}
            self._write_metadata(workdir, alias, recipe)
            tarball = workdir / "image.tar"
            self.say("packing the image")
            subprocess.run(
                [
                    "tar",
                    "-C",
                    str(workdir),
                    "--numeric-owner",
                    "--xattrs",
                    "-cf",
                    str(tarball),
                    "metadata.yaml",
                    "templates",
                    "rootfs",
                ],
                check=True,
            )
            self.say(f"importing into Incus ({tarball.stat().st_size / 1e6:.0f} MB)")
            old = self.incus.get_image(alias).fingerprint if self.incus.image_exists(alias) else ""
            fingerprint = self.incus.import_image(
                tarball, alias, self._properties(recipe, installed)
            )
            if old and old != fingerprint:
                self._delete_fingerprint(old)
            return fingerprint
        finally:
            remove_build_dir(workdir, self.say)

    def _delete_fingerprint(self, fingerprint: str) -> None:
        with contextlib.suppress(CoiError):
            self.incus.request("DELETE", f"/1.0/images/{fingerprint}")

    def _run_logged(self, cmd: list[str]) -> None:
        process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert process.stdout is not None
        tail: list[str] = []
        for line in process.stdout:
            line = line.rstrip()
            tail = [*tail[-19:], line]
            if line.startswith("I: "):
                self.say(line[3:])
        if process.wait() != 0:
            detail = "\n".join(tail[-5:])
            raise CoiError(f"mmdebstrap failed (exit {process.returncode}); last lines:\n{detail}")

    @staticmethod
    def _write_metadata(workdir: Path, alias: str, recipe: str) -> None:
        (workdir / "templates").mkdir(exist_ok=True)
        (workdir / "templates" / "hostname.tpl").write_text("{{ instance.name }}\n")
        (workdir / "templates" / "hosts.tpl").write_text(
            "127.0.0.1 localhost\n127.0.1.1 {{ instance.name }}\n"
        )
        (workdir / "metadata.yaml").write_text(
            f"architecture: {incus_arch()}\n"
            f"creation_date: {int(time.time())}\n"
            "properties:\n"
            f'  description: "{_description(recipe)}"\n'
            "  os: debian\n"
            f"  release: {DEBIAN_SUITE}\n"
            f'  {RECIPE_PROPERTY}: "{recipe}"\n'
            f'  coi.alias: "{alias}"\n'
            "templates:\n"
            "  /etc/hostname:\n"
            "    when: [create, copy]\n"
            "    template: hostname.tpl\n"
            "  /etc/hosts:\n"
            "    when: [create, copy]\n"
            "    template: hosts.tpl\n"
        )

    # ------------------------------------------------------------------ remote base
    def _build_remote(self, alias: str, recipe: str, bridge: str, pool: str) -> str:
        name = f"coi-build-{os.getpid()}"
        devices = {"eth0": {"type": "nic", "network": bridge, "name": "eth0"}}
        if pool:
            devices["root"] = {"type": "disk", "path": "/", "pool": pool}
        self.say(f"launching a build container from {REMOTE_SERVER} {REMOTE_BASE}")
        body = {
            "name": name,
            "type": "container",
            "profiles": ["default"],
            "devices": devices,
            "source": {
                "type": "image",
                "mode": "pull",
                "server": REMOTE_SERVER,
                "protocol": "simplestreams",
                "alias": REMOTE_BASE,
            },
            "start": True,
        }
        self.incus.request("POST", "/1.0/instances", body=body)
        workdir = Path(tempfile.mkdtemp(prefix="coi-build-", dir=_scratch_dir()))
        try:
            stager = self._agent_stager(workdir)
            for path in sorted(recipe_dir().iterdir()):
                if path.is_file():
                    self.incus.push_file(
                        name, f"/tmp/coi-recipe/{path.name}", path.read_bytes(), mode=0o755
                    )
            self.say("waiting for the network")
            self._exec_checked(
                name,
                [
                    "sh",
                    "-c",
                    "for i in $(seq 60); do getent hosts deb.debian.org && exit 0; sleep 1; done;"
                    " exit 1",
                ],
            )
            self.say("installing packages")
            packages = " ".join(recipe_packages(self.variant))
            self._exec_checked(
                name,
                [
                    "sh",
                    "-c",
                    "apt-get update -q && DEBIAN_FRONTEND=noninteractive "
                    f"apt-get install -y -q --no-install-recommends {packages}",
                ],
            )
            self._exec_checked(name, ["sh", "/tmp/coi-recipe/customize.sh", "/"])
            installed = self._push_agents(name, workdir, stager) if stager else {}
            self._exec_checked(name, ["rm", "-rf", "/tmp/coi-recipe"])
            self.incus.stop(name, timeout=30)
            self.say("publishing")
            return self.incus.publish(name, alias, self._properties(recipe, installed))
        finally:
            if self.incus.instance_exists(name):
                self.incus.delete_instance(name, force=True)
            shutil.rmtree(workdir, ignore_errors=True)

    def _push_agents(self, name: str, workdir: Path, stager: AgentStager) -> dict[str, str]:
        """The staged agents into the build container: one tarball, unpacked over its root."""
        local = workdir / "agents-root"
        local.mkdir()
        installed = stager.finish(local)
        if not installed:
            return {}
        tarball = workdir / "agents.tar"
        subprocess.run(["tar", "-C", str(local), "-cf", str(tarball), "."], check=True)
        self.say(
            f"agents: copying into the build container ({tarball.stat().st_size / 1e6:.0f} MB)"
        )
        self.incus.push_file(name, "/tmp/coi-agents.tar", tarball.read_bytes(), mode=0o600)
        self._exec_checked(
            name,
            [
                "sh",
                "-c",
                "tar -C / --no-same-owner -xf /tmp/coi-agents.tar && rm /tmp/coi-agents.tar",
            ],
        )
        return installed

    def _exec_checked(self, name: str, argv: list[str]) -> None:
        result = self.incus.exec_capture(name, argv)
        if not result.ok:
            tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
            raise CoiError(
                f"build step {argv[0]} failed (exit {result.exit_code}): {' / '.join(tail)}"
            )


def mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve()) + "/"
    with open("/proc/mounts", encoding="utf-8") as mounts:
        points = [line.split()[1].replace("\\040", " ") for line in mounts]
    return sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True)


def remove_build_dir(workdir: Path, say: Progress) -> None:
    """Delete a bootstrap directory, never through a mount: an interrupted mmdebstrap leaves
    proc, sys and dev mounted inside the root, and deleting through them must not happen."""
    for point in mounts_under(workdir):
        subprocess.run(["umount", "--lazy", point], check=False, capture_output=True)
    left = mounts_under(workdir)
    if left:
        say(f"warning: left {workdir} in place: still mounted at {', '.join(left)}")
        return
    shutil.rmtree(workdir, ignore_errors=True)


def _description(recipe: str) -> str:
    return f"coi: Debian {DEBIAN_SUITE} workbench for AI agents (recipe {recipe})"


def _scratch_dir() -> str:
    for candidate in ("/var/tmp", tempfile.gettempdir()):
        if os.access(candidate, os.W_OK):
            return candidate
    return tempfile.gettempdir()


def _shell_quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"
