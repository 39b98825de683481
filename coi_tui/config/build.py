"""`coi build --profile NAME`: the profile's image. A temporary container from
[container.build] base runs the profile's script (or commands) as root, then is published as
the profile's [container] image. The recipe hash is stored on the image, so an unchanged
profile is not rebuilt."""

from __future__ import annotations

import hashlib
import time
import uuid
from contextlib import suppress
from pathlib import Path

from coi_tui.config.settings import Settings
from coi_tui.errors import CoiError
from coi_tui.incus import Incus, IncusError, InstanceNotFound

RECIPE_PROPERTY = "coi.profile.recipe"


def profile_recipe(incus: Incus, settings: Settings) -> str:
    digest = hashlib.sha256(incus.get_image(settings.build_base).fingerprint.encode())
    if settings.build_script:
        try:
            digest.update(Path(settings.build_script).read_bytes())
        except OSError as exc:
            raise CoiError(f"build script {settings.build_script}: {exc.strerror}") from None
    for command in settings.build_commands:
        digest.update(b"\0" + command.encode())
    return digest.hexdigest()[:16]


def build_profile_image(
    incus: Incus, settings: Settings, profile: str, *, alias: str | None, force: bool
) -> int:
    alias = alias or settings.image
    if not settings.build_script and not settings.build_commands:
        raise CoiError(
            f'profile "{profile}" has nothing to build: add build.sh, or [container.build] '
            "script or commands"
        )
    if alias == settings.build_base:
        raise CoiError(
            f'profile "{profile}": [container] image must name the image to build, not its '
            f'base "{settings.build_base}"'
        )
    incus.require_image(settings.build_base)
    recipe = profile_recipe(incus, settings)
    if (
        not force
        and incus.image_exists(alias)
        and incus.get_image(alias).properties.get(RECIPE_PROPERTY) == recipe
    ):
        print(f"Image {alias} is up to date (profile {profile}); use --force to rebuild")
        return 0
    started = time.monotonic()
    name = f"{settings.container_prefix}build-{uuid.uuid4().hex[:8]}"
    devices: dict[str, dict[str, str]] = {}
    if incus.get_network(settings.bridge) is not None:
        devices["eth0"] = {"type": "nic", "network": settings.bridge, "name": "eth0"}
    if settings.storage_pool:
        devices["root"] = {"type": "disk", "path": "/", "pool": settings.storage_pool}
    print(f"Building {alias} for profile {profile} from {settings.build_base}...", flush=True)
    incus.create_instance(
        name,
        settings.build_base,
        config={"security.idmap.isolated": "true", "security.guestapi": "false"},
        devices=devices,
    )
    try:
        incus.start(name)
        steps: list[list[str]] = []
        if settings.build_script:
            script = Path(settings.build_script).read_bytes()
            incus.push_file(name, "/tmp/coi-build.sh", script, mode=0o755)
            steps.append(["bash", "/tmp/coi-build.sh"])
        else:
            steps += [["sh", "-c", command] for command in settings.build_commands]
        for argv in steps:
            code = incus.exec_stream(name, argv, cwd="/root", env={"HOME": "/root"})
            if code != 0:
                raise CoiError(f"profile {profile}: '{' '.join(argv)}' failed with exit {code}")
        incus.stop(name, timeout=30)
        old = incus.get_image(alias).fingerprint if incus.image_exists(alias) else None
        fingerprint = incus.publish(
            name,
            alias,
            {RECIPE_PROPERTY: recipe, "description": f"coi profile {profile}"},
            # [container.build] compression; unset: none (a local image imports faster)
            compression=settings.build_compression or "none",
        )
        if old and old != fingerprint:
            with suppress(IncusError):
                incus.request("DELETE", f"/1.0/images/{old}")
    finally:
        with suppress(InstanceNotFound):
            incus.delete_instance(name, force=True)
    print(f"Image {alias} ready ({time.monotonic() - started:.1f}s)")
    return 0
