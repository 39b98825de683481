"""Fixtures for tests against the real Incus daemon that `make test` starts.

Every run gets its own container-name prefix (coitest<run>-) and its own COI_HOME, and every
container, supervisor and user it made is removed at the end, even when a test fails.
Leftovers of interrupted runs (any coitest*-prefixed container) are removed at start.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from coi_tui.images.agents import STAND_INS
from tests.cleanup import STALE_AFTER, cleanup_test_leftovers

REPO = Path(__file__).resolve().parents[1]
TEST_PREFIX_ROOT = "coitest"


@dataclass
class CoiRunner:
    """Runs the real `coi` CLI in a subprocess with the test's environment."""

    env: dict[str, str]
    prefix: str
    home: Path

    def __call__(
        self,
        *args: str,
        cwd: Path | None = None,
        input: str | None = None,
        timeout: float = 180,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "coi_tui.cli.main", *args],
            cwd=cwd or REPO,
            env={**self.env, **(env or {})},
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def ok(self, *args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
        result = self(*args, **kwargs)  # type: ignore[arg-type]
        assert result.returncode == 0, f"coi {' '.join(args)} failed:\n{result.stderr}"
        return result


@pytest.fixture(scope="session")
def run_prefix() -> str:
    return f"{TEST_PREFIX_ROOT}{uuid.uuid4().hex[:6]}-"


@pytest.fixture(scope="session")
def incus() -> Iterator[object]:
    from coi_tui.incus import Incus, IncusError

    client = Incus()
    try:
        client.ping()
    except IncusError as exc:
        pytest.fail(f"the Incus daemon is needed ('make test' starts it): {exc}")
    cleanup_test_leftovers(client, TEST_PREFIX_ROOT, older_than=STALE_AFTER)
    yield client


@pytest.fixture(scope="session")
def image(incus: object) -> str:
    """coi-default, built once per machine and rebuilt only when its recipe changes."""
    from coi_tui.images.build import ImageBuilder

    ImageBuilder(incus, progress=lambda line: None).build("coi-default")  # type: ignore[arg-type]
    return "coi-default"


STAND_IN_PATH = f"{STAND_INS}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@pytest.fixture(scope="session")
def coi_session_env(
    tmp_path_factory: pytest.TempPathFactory, run_prefix: str, incus: object, image: str
) -> Iterator[dict[str, str]]:
    home = tmp_path_factory.mktemp("coi-home")
    env = dict(os.environ)
    env.update(
        {
            "COI_CONTAINER_PREFIX": run_prefix,
            "COI_HOME": str(home),
            "PYTHONPATH": str(REPO),
            "TERM": "xterm-256color",
        }
    )
    env.pop("COI_USE_DUMMY", None)
    # The image carries the real agent CLIs; tests use their stand-ins (same names and argv
    # contract, no network), which the image keeps in a directory of their own.
    config = home / "test-config.toml"
    config.write_text(f'[environment]\nPATH = "{STAND_IN_PATH}"\n')
    env["COI_CONFIG"] = str(config)
    yield env
    cleanup_test_leftovers(incus, run_prefix)  # type: ignore[arg-type]


@pytest.fixture
def coi(
    coi_session_env: dict[str, str], run_prefix: str, tmp_path: Path, incus: object
) -> Iterator[CoiRunner]:
    """A `coi` runner with a fresh COI_HOME per test; its containers go away after the test."""
    home = tmp_path / "coi-home"
    home.mkdir()
    env = {**coi_session_env, "COI_HOME": str(home)}
    yield CoiRunner(env=env, prefix=run_prefix, home=home)
    cleanup_test_leftovers(incus, run_prefix)  # type: ignore[arg-type]


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    path = tmp_path / "work space ü"
    path.mkdir()
    return path
