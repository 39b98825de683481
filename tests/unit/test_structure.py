"""The package's module graph stays readable (issue 18): no import circle at all, counting
imports made inside functions, and outside cli/ (where a command's imports wait until it runs,
for start-up time) a function-local import is rare and says why on its own line. The layers
themselves are import-linter's contracts (.importlinter, `make lint`)."""

from __future__ import annotations

import ast
import configparser
import importlib.util
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]
# Function-local imports of the package outside cli/: none when the contracts landed. One
# that is needed (never for start-up time) raises this, with its reason next to it.
LOCAL_IMPORT_BUDGET = 0


def import_graph() -> ModuleType:
    spec = importlib.util.spec_from_file_location("import_graph", REPO / "scripts/import_graph.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_no_import_circle() -> None:
    graph_module = import_graph()
    known = graph_module.module_names()
    graph = {
        name: {t for t, _ in graph_module.imports_of(name, path, known)}
        for name, path in known.items()
    }
    assert graph_module.strongly_connected(graph) == []


def local_imports_outside_cli() -> list[tuple[str, int, str]]:
    """(file, line, source line) of each function-local `coi_tui` import outside cli/."""
    found: list[tuple[str, int, str]] = []
    for path in sorted((REPO / "coi_tui").rglob("*.py")):
        if path.parent.name == "cli":
            continue
        text = path.read_text()
        lines = text.splitlines()

        def visit(node: ast.AST, local: bool, path: Path = path, lines: list[str] = lines) -> None:
            for child in ast.iter_child_nodes(node):
                inner = local or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
                if local and isinstance(child, ast.Import | ast.ImportFrom):
                    names = [child.module or ""] if isinstance(child, ast.ImportFrom) else []
                    names += [alias.name for alias in child.names]
                    if child_is_ours(child, names):
                        found.append(
                            (str(path.relative_to(REPO)), child.lineno, lines[child.lineno - 1])
                        )
                visit(child, inner)

        visit(ast.parse(text), False)
    return found


def child_is_ours(node: ast.Import | ast.ImportFrom, names: list[str]) -> bool:
    if isinstance(node, ast.ImportFrom) and node.level:
        return True
    return any(name == "coi_tui" or name.startswith("coi_tui.") for name in names)


def test_function_local_imports_outside_cli_are_few_and_say_why() -> None:
    found = local_imports_outside_cli()
    assert len(found) <= LOCAL_IMPORT_BUDGET, "\n".join(
        f"{f}:{n}: {s.strip()}" for f, n, s in found
    )
    silent = [f"{f}:{n}: {s.strip()}" for f, n, s in found if "#" not in s]
    assert silent == [], "a function-local import needs its reason in a comment on its line"


def test_the_checks_see_a_local_import(tmp_path: Path) -> None:
    """The walk counts an import nested in a function (so the budget means something)."""
    tree = ast.parse("def f():\n    if True:\n        from coi_tui.core import paths\n")
    node = tree.body[0].body[0].body[0]  # type: ignore[attr-defined]
    assert isinstance(node, ast.ImportFrom)
    assert child_is_ours(node, [node.module or "", *(a.name for a in node.names)])


def forbidden_of(contract: str) -> list[str]:
    config = configparser.ConfigParser()
    config.read(REPO / ".importlinter")
    return config[f"importlinter:contract:{contract}"]["forbidden_modules"].split()


def uncovered(allowed: set[str], forbidden: list[str]) -> list[str]:
    """Modules of the package neither allowed nor under a forbidden entry."""
    names = import_graph().module_names()
    return sorted(
        name
        for name in names
        if name not in allowed
        and not any(name == entry or name.startswith(entry + ".") for entry in forbidden)
    )


def test_the_daemon_contract_forbids_all_but_its_modules() -> None:
    """.importlinter names what the daemon may not reach; control.DAEMON_MODULES what it may
    (and what `coi setup` copies). Together they must cover the whole package."""
    from coi_tui.monitor.control import DAEMON_MODULES

    assert uncovered(set(DAEMON_MODULES), forbidden_of("daemon-stands-alone")) == []


def test_the_netctl_contract_forbids_the_whole_package() -> None:
    allowed = {"coi_tui", "coi_tui.network", "coi_tui.network.netctl"}
    assert uncovered(allowed, forbidden_of("netctl-stdlib-only")) == []
