"""The workspace guard on a real git repository, the attacks done directly on the host's files
(as the agent would through the workspace mount); tests/security/test_git_guard.py does them
from inside a real container."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from coi_tui.config.schema import DEFAULT_PROTECTED_PATHS
from coi_tui.sessions.workspace_guard import Guard, join, leave, parse_config

PREFIX = "coiguard-"


def git(cwd: Path, *args: str, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        ["git", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "GIT_CONFIG_NOSYSTEM": "1", **(env or {})},
        timeout=30,
    )
    return result.stdout


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path, Path]:
    home = tmp_path / "coihome"
    monkeypatch.setenv("COI_HOME", str(home))
    fake_home = tmp_path / "userhome"
    fake_home.mkdir()
    monkeypatch.setenv("HOME", str(fake_home))
    ws = tmp_path / "work space"
    ws.mkdir()
    git(ws, "init", "-q", "-b", "main")
    git(ws, "config", "user.email", "u@example.com")
    git(ws, "config", "user.name", "User")
    (ws / "a.txt").write_text("a\n")
    git(ws, "add", "a.txt")
    git(ws, "commit", "-q", "-m", "first")
    marker = tmp_path / "pwned"
    return ws, home, marker


def start(ws: Path, home: Path, name: str) -> Guard:
    guard = Guard(str(ws), list(DEFAULT_PROTECTED_PATHS), lambda _m: None, home=home)
    join(guard, name, lambda n: False)
    return guard


def payload(marker: Path) -> str:
    return f"sh -c 'touch {marker}'"


def host_git_runs_nothing(paths: list[Path], marker: Path) -> None:
    for path in paths:
        if path.exists():
            git(path, "status")
            git(path, "diff")
            git(path, "log", "-1")
    assert not marker.exists(), "host git ran a command the agent planted"


def test_attacks_on_git_config_are_repaired_and_safe_work_kept(
    env: tuple[Path, Path, Path],
) -> None:
    ws, home, marker = env
    name = f"{PREFIX}{Guard(str(ws), [], print).key}-1"
    start(ws, home, name)
    # the agent's ordinary work: a commit, a branch with an upstream, a remote
    (ws / "b.txt").write_text("b\n")
    git(ws, "add", "b.txt")
    git(ws, "commit", "-q", "-m", "agent work")
    git(ws, "remote", "add", "origin", "https://example.invalid/repo.git")
    git(ws, "config", "branch.main.remote", "origin")
    # attacks
    git(ws, "config", "core.fsmonitor", payload(marker))
    (ws / ".git" / "hooks" / "post-checkout").write_text(f"#!/bin/sh\ntouch {marker}\n")
    (ws / ".git" / "hooks" / "post-checkout").chmod(0o755)
    evil = ws / "vendor" / "evil"
    evil.mkdir(parents=True)
    (evil / "config").write_text(f"[core]\n\tfsmonitor = {payload(marker)}\n")
    (evil / "objects").mkdir()
    (evil / "refs").mkdir()
    nested = ws / "pkg"
    nested.mkdir()
    git(nested, "init", "-q")
    git(nested, "config", "core.pager", payload(marker))
    git(nested, "config", "remote.up.url", "https://example.invalid/up.git")
    (ws / "sub").mkdir()
    (ws / "sub" / ".git").write_text("gitdir: ../vendor/evil\n")
    (ws / "out").mkdir()
    (ws / "out" / ".git").write_text("gitdir: /tmp\n")
    (ws / ".envrc").write_text(f"touch {marker}\n")
    (ws / ".vscode").mkdir()
    (ws / ".vscode" / "tasks.json").write_text('{"runOn": "folderOpen"}\n')
    (ws / "deep" / "x" / ".claude").mkdir(parents=True)
    (ws / "deep" / "x" / ".claude" / "settings.local.json").write_text("{}\n")
    suid = ws / "tool"
    suid.write_text("#!/bin/sh\n")
    suid.chmod(0o4755)

    report = leave(name, PREFIX, lambda _m: None, home=home)

    assert report, "nothing was repaired"
    host_git_runs_nothing([ws, nested, ws / "sub", evil], marker)
    cfg = parse_config((ws / ".git" / "config").read_bytes()) or []
    keys = dict(cfg)
    assert "core.fsmonitor" not in keys
    assert keys["remote.origin.url"] == "https://example.invalid/repo.git"
    assert keys["branch.main.remote"] == "origin" and keys["user.name"] == "User"
    assert "agent work" in git(ws, "log", "--oneline")
    nested_keys = dict(parse_config((nested / ".git" / "config").read_bytes()) or [])
    assert "core.pager" not in nested_keys and "remote.up.url" in nested_keys
    assert not (ws / ".git" / "hooks" / "post-checkout").exists()
    assert not (ws / ".envrc").exists() and not (ws / ".vscode" / "tasks.json").exists()
    assert not (ws / "deep" / "x" / ".claude" / "settings.local.json").exists()
    assert not (ws / "out" / ".git").exists()
    assert (ws / "sub" / ".git").exists()  # leads into the workspace, whose repo is cleaned
    assert not stat.S_IMODE(suid.stat().st_mode) & stat.S_ISUID
    manifest = next((home / "quarantine").rglob("MANIFEST.txt")).read_text()
    assert "file  .envrc" in manifest, manifest
    # stored flat: the agent's files can never form a repository there
    assert not [
        p for p in (home / "quarantine").rglob("*") if p.is_dir() and p.parent.name != "quarantine"
    ]
    assert not (home / "guard").exists() or not any((home / "guard").iterdir())


def test_renamed_git_and_commondir(env: tuple[Path, Path, Path]) -> None:
    ws, home, marker = env
    name = f"{PREFIX}{Guard(str(ws), [], print).key}-2"
    start(ws, home, name)
    # mv .git .git-orig && mkdir .git && cp -a: the parent of the protection mounts moved
    os.rename(ws / ".git", ws / ".git-orig")
    subprocess.run(["cp", "-a", str(ws / ".git-orig"), str(ws / ".git")], check=True)
    git(ws, "config", "core.hooksPath", str(ws / "h"))
    (ws / "h").mkdir()
    (ws / "h" / "post-index-change").write_text(f"#!/bin/sh\ntouch {marker}\n")
    (ws / "h" / "post-index-change").chmod(0o755)
    side = ws / "side"
    side.mkdir()
    (side / "config").write_text(f"[core]\n\tfsmonitor = {payload(marker)}\n")
    (ws / ".git-orig" / "commondir").write_text("../side\n")
    (side / "objects").mkdir()
    (side / "refs").mkdir()
    leave(name, PREFIX, lambda _m: None, home=home)
    host_git_runs_nothing([ws, ws / ".git-orig"], marker)
    git(ws, "--git-dir", str(ws / ".git-orig"), "status")
    assert not marker.exists()


def test_a_slot_beside_a_tampered_one_does_not_bless_it(env: tuple[Path, Path, Path]) -> None:
    ws, home, marker = env
    key = Guard(str(ws), [], print).key
    first, second = f"{PREFIX}{key}-1", f"{PREFIX}{key}-2"
    running = {first}
    guard = Guard(str(ws), list(DEFAULT_PROTECTED_PATHS), lambda _m: None, home=home)
    join(guard, first, lambda n: n in running)
    git(ws, "config", "core.fsmonitor", payload(marker))
    join(guard, second, lambda n: n in running)  # joins, does not re-baseline
    leave(second, PREFIX, lambda _m: None, home=home)
    host_git_runs_nothing([ws], marker)
    # a session that ended without coi is checked when the next one starts
    git(ws, "config", "core.editor", payload(marker))
    running.clear()
    join(guard, f"{PREFIX}{key}-3", lambda n: n in running)
    assert "core.editor" not in dict(parse_config((ws / ".git" / "config").read_bytes()) or [])


def test_the_guard_never_writes_through_a_link(
    env: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    ws, home, _ = env
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "settings.local.json").write_text("host file\n")
    name = f"{PREFIX}{Guard(str(ws), [], print).key}-1"
    (ws / ".claude").mkdir()
    (ws / ".claude" / "settings.local.json").write_text("{}\n")
    start(ws, home, name)
    (ws / ".claude" / "settings.local.json").unlink()
    (ws / ".claude").rmdir()
    (ws / ".claude").symlink_to(outside)
    leave(name, PREFIX, lambda _m: None, home=home)
    assert (outside / "settings.local.json").read_text() == "host file\n"
    assert not (ws / ".claude").is_symlink() or (ws / ".claude").resolve() != outside


def test_rebase_state_hook_folders_and_local_remotes(env: tuple[Path, Path, Path]) -> None:
    ws, home, marker = env
    (ws / "githooks").mkdir()
    (ws / "githooks" / "pre-commit").write_text("#!/bin/sh\nexit 0\n")
    hooks = ws / ".git" / "hooks"
    subprocess.run(["rm", "-rf", str(hooks)], check=True)
    hooks.symlink_to("../githooks")  # a common setup: hooks kept in the repository
    name = f"{PREFIX}{Guard(str(ws), [], print).key}-1"
    start(ws, home, name)
    (ws / "githooks" / "pre-commit").write_text(f"#!/bin/sh\ntouch {marker}\n")
    todo = ws / ".git" / "rebase-merge"
    todo.mkdir()
    (todo / "git-rebase-todo").write_text(f"exec touch {marker}\n")
    git(ws, "config", "remote.origin.url", "/root/private-repo")
    git(ws, "config", "branch.main.remote", "origin")
    report = leave(name, PREFIX, lambda _m: None, home=home)
    assert (ws / "githooks" / "pre-commit").read_text() == "#!/bin/sh\nexit 0\n", report
    assert not todo.exists() and any(".git/rebase-merge" in line for line in report)
    keys = dict(parse_config((ws / ".git" / "config").read_bytes()) or [])
    assert "remote.origin.url" not in keys  # a local path would copy a host repository in


def test_a_very_deep_tree_is_walked_quickly_and_set_aside(env: tuple[Path, Path, Path]) -> None:
    import time

    ws, home, _ = env
    name = f"{PREFIX}{Guard(str(ws), [], print).key}-1"
    start(ws, home, name)
    deep = ws / "d"
    fd = os.open(ws, os.O_RDONLY)
    os.mkdir("d", dir_fd=fd)
    for _ in range(3000):  # deeper than PATH_MAX allows by path: made by fd, as an agent can
        nxt = os.open("d", os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        os.mkdir("d", dir_fd=nxt)
        fd = nxt
    os.close(fd)
    try:
        began = time.monotonic()
        report = leave(name, PREFIX, lambda _m: None, home=home)
        assert time.monotonic() - began < 10
        assert any("could not be checked" in line and "moved" in line for line in report)
        assert deep.is_dir()  # only the part past MAX_DEPTH levels went aside
    finally:
        # rm walks iteratively (pytest's own clean-up of old temp dirs would recurse too deep)
        subprocess.run(["rm", "-rf", str(deep)], check=True)


def test_what_the_agent_hides_from_a_user_by_chmod_is_still_repaired() -> None:
    """As an unprivileged host user (coi on a desktop): root's DAC override hides this."""
    import shutil
    import tempfile

    assert os.getuid() == 0, "switches to an unprivileged uid: run as root (make test does)"
    base = Path(tempfile.mkdtemp(prefix="coi-guard-user-", dir="/tmp"))
    try:
        # The user may not reach this checkout or its venv (a clone in a 0700 folder): run a
        # copy of the package with the system Python, as tests/integration/test_users.py does.
        repo = Path(__file__).resolve().parents[2]
        code = base / "code"
        shutil.copytree(
            repo / "coi_tui", code / "coi_tui", ignore=shutil.ignore_patterns("__pycache__")
        )
        shutil.copy(Path(__file__).with_name("guard_as_user.py"), code / "guard_as_user.py")
        subprocess.run(["chmod", "-R", "a+rX", str(code)], check=True)
        work = base / "work"
        work.mkdir()
        base.chmod(0o755)
        os.chown(work, 4242, 4242)
        result = subprocess.run(
            [
                "setpriv",
                "--reuid",
                "4242",
                "--regid",
                "4242",
                "--clear-groups",
                "/usr/bin/python3",
                "-S",
                str(code / "guard_as_user.py"),
                str(work),
            ],
            cwd="/",
            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(code), "LANG": "C.UTF-8"},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stdout + result.stderr
    finally:
        subprocess.run(["chmod", "-R", "u+rwx", str(base)], check=False)
        shutil.rmtree(base, ignore_errors=True)


def test_overlapping_workspaces_and_a_swapped_root_are_refused(
    env: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    from coi_tui.core.errors import CoiError

    ws, home, _ = env
    running: set[str] = set()
    outer = Guard(str(ws), list(DEFAULT_PROTECTED_PATHS), lambda _m: None, home=home)
    outer_name = f"{PREFIX}{outer.key}-1"
    join(outer, outer_name, lambda n: n in running)
    running.add(outer_name)
    (ws / "pkg").mkdir()
    alias = tmp_path / "alias"
    alias.symlink_to(ws)
    for other in (ws / "pkg", alias):  # a package inside it, the same tree by another path
        guard = Guard(str(other), list(DEFAULT_PROTECTED_PATHS), lambda _m: None, home=home)
        with pytest.raises(CoiError, match="overlaps"):
            join(guard, f"{PREFIX}{guard.key}-1", lambda n: n in running)
    # the workspace path now leads to another folder: nothing there is touched
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / ".envrc").write_text("the user's own\n")
    os.rename(ws, tmp_path / "moved")
    ws.symlink_to(elsewhere)
    report = leave(outer_name, PREFIX, lambda _m: None, home=home)
    assert any("NOT CHECKED" in line for line in report), report
    assert (elsewhere / ".envrc").read_text() == "the user's own\n"
    # kept, and checked again before the next session may start
    guard = Guard(str(ws), list(DEFAULT_PROTECTED_PATHS), lambda _m: None, home=home)
    with pytest.raises(CoiError, match="could not check"):
        join(guard, f"{PREFIX}{guard.key}-2", lambda n: False)


def test_a_branch_upstream_may_only_name_a_remote(env: tuple[Path, Path, Path]) -> None:
    ws, home, _ = env
    name = f"{PREFIX}{Guard(str(ws), [], print).key}-1"
    start(ws, home, name)
    git(ws, "config", "branch.main.remote", "/root/private")
    git(ws, "config", "branch.other.remote", ".")
    leave(name, PREFIX, lambda _m: None, home=home)
    keys = dict(parse_config((ws / ".git" / "config").read_bytes()) or [])
    assert "branch.main.remote" not in keys and keys["branch.other.remote"] == "."


def test_a_workspace_removed_and_made_again_starts_afresh(env: tuple[Path, Path, Path]) -> None:
    ws, home, _ = env
    guard = Guard(str(ws), list(DEFAULT_PROTECTED_PATHS), lambda _m: None, home=home)
    join(guard, f"{PREFIX}{guard.key}-1", lambda n: False)
    # the old tree moved away (kept, so the new folder cannot reuse its inode), a fresh clone
    # at the same path, and the old session gone without coi
    os.rename(ws, ws.with_name("old tree"))
    ws.mkdir()
    (ws / ".envrc").write_text("the user's own\n")
    join(guard, f"{PREFIX}{guard.key}-2", lambda n: False)
    assert (ws / ".envrc").read_text() == "the user's own\n"
