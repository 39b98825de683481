"""The workspace guard's cost (issue 16): the walk and check a session pays at start, at its
end and on every patrol while it runs, on a synthetic tree shaped like a JavaScript project
(a git repository with a deep, wide node_modules). No container is involved."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

from bench.common import Figure, figure, sample
from coi_tui.config.schema import DEFAULT_PROTECTED_PATHS
from coi_tui.sessions.workspace_guard import Guard, join, leave

PREFIX = "coibench-"
DIRS = 10_000
FILES_PER_DIR = 10


def make_tree(root: Path) -> None:
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    for index in range(DIRS):
        folder = root / "node_modules" / f"pkg{index // 100}" / f"sub{index % 100}"
        folder.mkdir(parents=True, exist_ok=True)
        for name in range(FILES_PER_DIR):
            (folder / f"f{name}.js").write_bytes(b"x")


def run(budget_s: float = 120) -> list[Figure]:
    with tempfile.TemporaryDirectory(prefix="coi-bench-guard-") as tmp:
        base = Path(tmp)
        workspace = base / "ws"
        workspace.mkdir()
        make_tree(workspace)
        os.environ["COI_HOME"] = str(base / "home")
        guard = Guard(str(workspace), list(DEFAULT_PROTECTED_PATHS), lambda _m: None)
        name = f"{PREFIX}{guard.key}-1"

        def start_and_end() -> None:
            join(guard, name, lambda _n: False)
            leave(name, PREFIX, lambda _m: None)

        times = sample(start_and_end, 5, budget_s / 2)
        entries = DIRS * (FILES_PER_DIR + 1)
        return [
            figure(
                "guard_start_and_end_100k_s",
                times,
                target="(a baseline and a check of ~110k entries)",
                extra={"entries": entries},
            ),
            figure("guard_one_walk_100k_s", [t / 2 for t in times], target="patrol round"),
        ]


if __name__ == "__main__":
    for fig in run():
        print(f"{fig.name}: {fig.value:.3f} {fig.unit} (min {fig.min:.3f}, max {fig.max:.3f})")
