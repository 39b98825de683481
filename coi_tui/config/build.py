"""`coi build --profile NAME`: the profile's image. A temporary container from
[container.build] base runs the profile's script (or commands) as root, then is published as
the profile's [container] image. The recipe hash is stored on the image, so an unchanged
profile is not rebuilt.

Who built an image is stored on it too (BUILT_BY_PROPERTY). A recipe that comes with a
repository (a project profile, or build keys from the project's .coi/config.toml) is untrusted:
it may publish only to a name coi does not own (coi-default, coi-lean) and never over an image
it did not build itself (another project's, the user's, or one made outside coi). A user's own
profile is trusted: it may replace any image, as `incus publish` could.

The build container gets the session's network policy (the same coi-netctl rules, keyed on its
host-side interface, applied before it starts and removed when it is gone): a build script is
the repository's code running as root, so it must not reach the LAN or the metadata service
either. Without the coi bridge it gets no network at all (an Incus profile's NIC would be
unfiltered), unless the user chose open mode."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from coi_tui.config.profiles import inside, read_script
from coi_tui.config.schema import BY_PATH
from coi_tui.config.settings import Settings
from coi_tui.config.trust import UNTRUSTED_LABEL
from coi_tui.core.errors import CoiError
from coi_tui.images.build import VARIANT_ALIASES
from coi_tui.incus import Incus, IncusError, InstanceNotFound

Say = Callable[[str], None]

RECIPE_PROPERTY = "coi.profile.recipe"
BUILT_BY_PROPERTY = "coi.built_by"
# What decides what is built and where it is published.
RECIPE_KEYS = (
    "container.image",
    "container.build.base",
    "container.build.script",
    "container.build.commands",
)


@dataclass(frozen=True)
class Builder:
    """Whose recipe a build runs: recorded on the image as BUILT_BY_PROPERTY."""

    label: str
    trusted: bool


def builder_for(settings: Settings, profile: str, scopes: list[str], workspace: Path) -> Builder:
    """`scopes`: where each profile of the chain was found (user, project, config)."""
    from_project = [k for k in RECIPE_KEYS if settings.source(k).startswith(UNTRUSTED_LABEL)]
    if "container.build.script" in from_project:  # the project's .coi/config.toml names it
        folder = workspace / ".coi"
        if not (inside(str(folder), workspace) and inside(settings.build_script, folder)):
            raise CoiError(
                f"{settings.source('container.build.script')}: the build script must be inside "
                f"{folder}, not {json.dumps(settings.build_script)}; the file was not read"
            )
    if "project" in scopes or from_project:
        return Builder(f"project {workspace} profile {profile}", trusted=False)
    return Builder(f"user profile {profile}", trusted=True)


def coi_images() -> set[str]:
    """The names coi builds itself: a repository may not take them, even before they exist."""
    return {str(BY_PATH["container.image"].default), *VARIANT_ALIASES.values()}


def check_owner(incus: Incus, alias: str, builder: Builder, profile: str) -> None:
    """A repository's recipe publishes only over an image it built itself."""
    if builder.trusted:
        return
    hint = "move the profile to ~/.coi/profiles to build it as your own"
    if alias in coi_images():
        raise CoiError(
            f'profile "{profile}" comes with the repository: it may not publish "{alias}", '
            f"coi's own image ({hint})"
        )
    if not incus.image_exists(alias):
        return
    built_by = incus.get_image(alias).properties.get(BUILT_BY_PROPERTY, "")
    if built_by != builder.label:
        owner = f"by {built_by}" if built_by else "outside coi"
        raise CoiError(
            f'profile "{profile}" comes with the repository: it may not replace image '
            f'"{alias}", which was built {owner} ({hint})'
        )


def build_script(settings: Settings) -> bytes:
    return read_script(settings.build_script) if settings.build_script else b""


def profile_recipe(incus: Incus, settings: Settings, script: bytes | None = None) -> str:
    digest = hashlib.sha256(incus.get_image(settings.build_base).fingerprint.encode())
    if settings.build_script:
        digest.update(build_script(settings) if script is None else script)
    for command in settings.build_commands:
        digest.update(b"\0" + command.encode())
    return digest.hexdigest()[:16]


def stale_image(incus: Incus, settings: Settings, image: str) -> str:
    """Why `image`, a profile image coi built, is older than its recipe (its base image was
    rebuilt, or its script or commands changed since), "" when it is not (or is no such
    image, or its base is gone: `coi build` says so)."""
    if image != settings.image or not (settings.build_script or settings.build_commands):
        return ""
    built = incus.get_image(image).properties.get(RECIPE_PROPERTY, "")
    if not built or not incus.image_exists(settings.build_base):
        return ""
    try:
        current = profile_recipe(incus, settings)
    except (CoiError, OSError):
        return ""
    if built == current:
        return ""
    rebuild = f"coi build --profile {settings.profile}" if settings.profile else "coi build"
    return (
        f"image '{image}' is older than its recipe (base '{settings.build_base}' rebuilt, or "
        f"its build script changed): rebuild it with '{rebuild}'"
    )


class BuildNetwork(Protocol):
    """The build container's network policy (network.isolation.BuildNetwork): the rules are
    applied before it starts and removed once it is gone."""

    def devices(self) -> dict[str, dict[str, str]]: ...
    def before_start(self) -> None: ...
    def after_start(self) -> None: ...
    def close(self) -> None: ...


def build_profile_image(
    incus: Incus,
    settings: Settings,
    profile: str,
    *,
    alias: str | None,
    force: bool,
    network_for: Callable[[str], BuildNetwork],
    say: Say,
    builder: Builder | None = None,
) -> int:
    """Build and publish the profile's image. `network_for(container)` gives the build
    container's network policy (the caller's, so config needs no network code)."""
    alias = alias or settings.image
    builder = builder or Builder(f"user profile {profile}", trusted=True)
    if not settings.build_script and not settings.build_commands:
        raise CoiError(
            f'profile "{profile}" has nothing to build: add build.sh, or [container.build] '
            "script or commands"
        )
    check_owner(incus, alias, builder, profile)
    if alias == settings.build_base:
        raise CoiError(
            f'profile "{profile}": [container] image must name the image to build, not its '
            f'base "{settings.build_base}"'
        )
    incus.require_image(settings.build_base)
    script = build_script(settings)
    recipe = profile_recipe(incus, settings, script)
    if (
        not force
        and incus.image_exists(alias)
        and incus.get_image(alias).properties.get(RECIPE_PROPERTY) == recipe
    ):
        say(f"Image {alias} is up to date (profile {profile}); use --force to rebuild")
        return 0
    started = time.monotonic()
    name = f"{settings.container_prefix}build-{uuid.uuid4().hex[:8]}"
    network = network_for(name)
    devices = network.devices()
    if settings.storage_pool:
        devices["root"] = {"type": "disk", "path": "/", "pool": settings.storage_pool}
    say(f"Building {alias} for profile {profile} from {settings.build_base}...")
    try:
        incus.create_instance(
            name,
            settings.build_base,
            config={"security.idmap.isolated": "true", "security.guestapi": "false"},
            devices=devices,
        )
        network.before_start()
        incus.start(name)
        network.after_start()
        steps: list[list[str]] = []
        if settings.build_script:
            incus.push_file(name, "/tmp/coi-build.sh", script, mode=0o755)
            steps.append(["bash", "/tmp/coi-build.sh"])
        else:
            steps += [["sh", "-c", command] for command in settings.build_commands]
        for argv in steps:
            code = incus.exec_stream(name, argv, cwd="/root", env={"HOME": "/root"})
            if code != 0:
                raise CoiError(f"profile {profile}: '{' '.join(argv)}' failed with exit {code}")
        incus.stop(name, timeout=30)
        check_owner(incus, alias, builder, profile)  # again: an image may have appeared since
        old = incus.get_image(alias).fingerprint if incus.image_exists(alias) else None
        fingerprint = incus.publish(
            name,
            alias,
            {
                RECIPE_PROPERTY: recipe,
                BUILT_BY_PROPERTY: builder.label,
                "description": f"coi profile {profile}",
            },
            # [container.build] compression; unset: none (a local image imports faster)
            compression=settings.build_compression or "none",
        )
        if old and old != fingerprint:
            with suppress(IncusError):
                incus.request("DELETE", f"/1.0/images/{old}")
    finally:
        with suppress(InstanceNotFound):
            incus.delete_instance(name, force=True)
        network.close()
    say(f"Image {alias} ready ({time.monotonic() - started:.1f}s)")
    return 0
