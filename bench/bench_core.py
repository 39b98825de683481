"""Session figures against the physical floor: what Incus itself needs to run `true` in a fresh
container from the cached image, and what `coi` adds on top."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from bench.common import Figure, figure, sample
from coi_tui.incus import Incus, IncusError

IMAGE = "coi-default"
PREFIX = f"coibench{uuid.uuid4().hex[:4]}-"


def coi(*args: str, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "coi_tui.cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        check=check,
    )


def floor_once(incus: Incus, workspace: str) -> None:
    name = f"{PREFIX}floor-{uuid.uuid4().hex[:6]}"
    idmap = f"uid {os.getuid()} 1000\ngid {os.getgid()} 1000"
    incus.create_instance(
        name,
        IMAGE,
        config={"raw.idmap": idmap},
        devices={
            "workspace": {"type": "disk", "source": workspace, "path": "/workspace"},
            "root": {"type": "disk", "path": "/", "pool": "coi"},
        },
    )
    incus.start(name)
    incus.exec_capture(name, ["true"], user=1000)
    incus.delete_instance(name, force=True)


def wait_for_prompt(env: dict[str, str], name: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        shot = coi("tmux", "capture", name, env=env, check=False)
        if "dummy>" in shot.stdout:
            return
        time.sleep(0.02)
    raise RuntimeError(f"no agent prompt in {name}")


def run(budget_s: float = 120) -> list[Figure]:
    incus = Incus()
    incus.require_image(IMAGE)
    env = dict(
        os.environ, COI_CONTAINER_PREFIX=PREFIX, COI_HOME=tempfile.mkdtemp(prefix="coi-bench-home-")
    )
    workspace = tempfile.mkdtemp(prefix="coi-bench-ws-")
    figures: list[Figure] = []
    per = budget_s / 6
    try:
        floor = sample(lambda: floor_once(incus, workspace), 7, per)
        figures.append(figure("session_start_floor_s", floor, target="(floor)"))
        run_true = sample(lambda: coi("run", "-w", workspace, "--", "true", env=env), 7, per)
        figures.append(figure("coi_run_true_s", run_true))
        ratio = figures[-1].value / figures[0].value
        figures.append(
            Figure(
                "coi_run_ratio",
                ratio,
                "x",
                target="<= 1.5",
                met=ratio <= 1.5,
                baseline="session_start_floor_s",
            )
        )

        def shell_ready() -> None:
            out = coi("shell", "--background", "--tool", "dummy", "-w", workspace, env=env)
            name = next(
                line.split(": ", 1)[1]
                for line in out.stderr.splitlines()
                if line.startswith("Container: ")
            )
            wait_for_prompt(env, name)
            coi("kill", "--force", name, env=env)

        ready = sample(shell_ready, 5, per)
        figures.append(figure("coi_shell_ready_s", ready))
        version = sample(
            lambda: subprocess.run(
                [sys.executable, "-m", "coi_tui.cli.main", "--version"],
                capture_output=True,
                check=True,
            ),
            15,
            per,
        )
        figures.append(figure("cli_import_s", version, target="< 0.150", limit=0.150))

        for n in range(50):
            incus.create_instance(
                f"{PREFIX}{n:08x}-1", IMAGE, config={"user.coi.workspace": f"/bench/{n}"}
            )
        listing = sample(lambda: coi("list", "--format", "json", env=env), 7, per)
        figures.append(figure("list_50_s", listing, target="< 0.5", limit=0.5))
    finally:
        for instance in incus.list_instances(PREFIX):
            with contextlib.suppress(IncusError):
                incus.delete_instance(instance.name, force=True)
        Path(workspace).rmdir() if not os.listdir(workspace) else None
    return figures
