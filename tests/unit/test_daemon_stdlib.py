"""The root monitor daemon stands alone (issue 18): imported by a bare `python3 -I -S` (no
site, no user path, no venv: only the repository root on sys.path, as the launcher puts only
its copy there), it loads nothing of the package but `control.DAEMON_MODULES` and no
third-party module; `coi setup` copies exactly those modules, and that copy starts."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

from coi_tui.monitor import control

REPO = Path(__file__).resolve().parents[2]
THIRD_PARTY = ("textual", "pylxd", "psutil", "pyte", "rich", "requests", "yaml", "urllib3")
PROBE = """
import json, sys
sys.path.insert(0, {root!r})
import coi_tui.monitor.daemon
print(json.dumps(sorted(sys.modules)))
"""


def loaded_by_bare_python(root: Path) -> list[str]:
    # the system's python3, as the launcher runs it (-I: no user site or environment, -S: no
    # site-packages at all, so a third-party import fails instead of being found)
    done = subprocess.run(
        ["/usr/bin/python3", "-I", "-S", "-c", PROBE.format(root=str(root))],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_the_daemon_imports_only_its_modules_and_the_standard_library() -> None:
    modules = loaded_by_bare_python(REPO)
    ours = sorted(m for m in modules if m.split(".")[0] == "coi_tui")
    assert set(ours) <= set(control.DAEMON_MODULES), set(ours) - set(control.DAEMON_MODULES)
    assert "coi_tui.monitor.daemon" in ours
    third_party = [m for m in modules if m.split(".")[0] in THIRD_PARTY]
    assert third_party == []
    # and nothing from outside the standard library's own folders
    stdlib = set(sys.stdlib_module_names)
    foreign = {m.split(".")[0] for m in modules} - stdlib - {"coi_tui", "__main__"}
    assert foreign <= {"_sitebuiltins"}, foreign


def test_the_copy_coi_setup_installs_is_enough(tmp_path: Path) -> None:
    control.copy_daemon(tmp_path)
    modules = loaded_by_bare_python(tmp_path)
    assert "coi_tui.monitor.daemon" in modules
    copied = {p.relative_to(tmp_path) for p in tmp_path.rglob("*.py")}
    assert len(copied) == len(control.DAEMON_MODULES)
    assert list((tmp_path / "coi_tui" / "monitor" / "packs").glob("*.toml"))
    assert not (tmp_path / "coi_tui" / "config").exists()


# ----------------------------------------------------------------------- root writes
# What writes, renames, removes or changes ownership of files; in the daemon's modules only
# core/nofollow.py may call these (the one no-follow helper every root write goes through).
WRITERS = {
    "write_text", "write_bytes", "mkdir", "makedirs", "rename", "replace", "unlink", "remove",
    "rmdir", "chown", "lchown", "fchown", "chmod", "fchmod", "symlink", "link", "truncate",
    "copyfile", "copytree", "rmtree", "mkstemp", "mkfifo", "mknod", "utime",
}  # fmt: skip
WRITE_FLAGS = {"O_WRONLY", "O_RDWR", "O_CREAT", "O_APPEND", "O_TRUNC"}
# user-side code in those modules, which the daemon never calls (checked below)
USER_SIDE = {
    "coi_tui.core.paths": {"locks_dir", "logs_dir"},
    "coi_tui.monitor.rulepacks": {"import_pack"},  # `coi monitor rules update`, as the user
}


def module_file(module: str) -> Path:
    rel = Path(*module.split("."))
    return REPO / rel / "__init__.py" if (REPO / rel).is_dir() else REPO / f"{rel}.py"


def writes(tree: ast.AST) -> list[tuple[str, int, str]]:
    """(enclosing function, line, call) of every call that writes to the file system."""
    found: list[tuple[str, int, str]] = []

    def visit(node: ast.AST, function: str) -> None:
        for child in ast.iter_child_nodes(node):
            inner = function
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                inner = child.name
            if isinstance(child, ast.Call):
                call, hit = child.func, False
                if isinstance(call, ast.Name) and call.id == "open":
                    mode = child.args[1] if len(child.args) > 1 else None
                    mode = next((k.value for k in child.keywords if k.arg == "mode"), mode)
                    hit = isinstance(mode, ast.Constant) and any(
                        c in str(mode.value) for c in "wax+"
                    )
                elif isinstance(call, ast.Attribute):
                    owner = ast.unparse(call.value)
                    if call.attr == "open" and owner == "os" and len(child.args) > 1:
                        names = {
                            getattr(n, "attr", getattr(n, "id", ""))
                            for n in ast.walk(child.args[1])
                        }
                        hit = bool(names & WRITE_FLAGS)
                    else:
                        on_path = call.attr in ("write_text", "write_bytes", "mkdir")
                        on_module = owner in ("os", "shutil", "tempfile")
                        hit = on_path or (call.attr in WRITERS and on_module)
                if hit:
                    found.append((function, child.lineno, ast.unparse(child)[:80]))
            visit(child, inner)

    visit(tree, "")
    return found


def test_every_root_write_of_the_daemon_goes_through_nofollow() -> None:
    stray = []
    for module in control.DAEMON_MODULES:
        if module == "coi_tui.core.nofollow":
            continue
        for function, line, call in writes(ast.parse(module_file(module).read_text())):
            if function not in USER_SIDE.get(module, set()):
                stray.append(f"{module}:{line} {call}")
    assert stray == [], "write through coi_tui.core.nofollow instead"
    # the user-side writers are never reached from the daemon's other modules
    for module in control.DAEMON_MODULES:
        tree = ast.parse(module_file(module).read_text())
        used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        used |= {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
        for owner, functions in USER_SIDE.items():
            if owner != module:
                assert not used & functions, (module, used & functions)
