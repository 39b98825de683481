"""Print the package's module graph: modules, imports, function-local imports, circles.

Counts every import of a `coi_tui` module, at module level or inside a function, so that a
circle hidden by a deferred import is still a circle. Usage:

    python scripts/import_graph.py [--closure MODULE] [--cycles]
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

PACKAGE = "coi_tui"
ROOT = Path(__file__).resolve().parent.parent


def module_names() -> dict[str, Path]:
    names: dict[str, Path] = {}
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def resolve(name: str, known: dict[str, Path]) -> str | None:
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(module: str, path: Path, known: dict[str, Path]) -> list[tuple[str, bool]]:
    """(imported module, function-local) for each internal import in the file."""
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, local: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = local or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.Import):
                for alias in child.names:
                    target = resolve(alias.name, known)
                    if target and alias.name.startswith(PACKAGE):
                        found.append((target, local))
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = module if is_package else module.rpartition(".")[0]
                    for _ in range(child.level - 1):
                        anchor = anchor.rpartition(".")[0]
                    base = f"{anchor}.{base}" if base else anchor
                if not base.startswith(PACKAGE):
                    continue
                for alias in child.names:
                    target = resolve(f"{base}.{alias.name}", known)
                    if target:
                        found.append((target, local))
            visit(child, inner)

    visit(tree, False)
    return [(target, local) for target, local in found if target != module]


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []
    counter = [0]
    sys.setrecursionlimit(10000)

    def connect(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                item = stack.pop()
                on_stack.discard(item)
                group.append(item)
                if item == node:
                    break
            if len(group) > 1:
                circles.append(sorted(group))

    for node in graph:
        if node not in index:
            connect(node)
    return circles


def closure(graph: dict[str, set[str]], start: str) -> set[str]:
    seen = {start}
    todo = [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    # Importing a module imports its parent packages too.
    for name in list(seen):
        while "." in name:
            name = name.rpartition(".")[0]
            seen.add(name)
    return seen


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--closure", help="list every module MODULE reaches")
    parser.add_argument("--cycles", action="store_true", help="list the circles")
    args = parser.parse_args()
    known = module_names()
    graph: dict[str, set[str]] = {name: set() for name in known}
    total = local = local_outside_cli = 0
    for name, path in known.items():
        for target, is_local in imports_of(name, path, known):
            graph[name].add(target)
            total += 1
            if is_local:
                local += 1
                if not name.startswith(f"{PACKAGE}.cli"):
                    local_outside_cli += 1
    circles = strongly_connected(graph)
    print(f"modules: {len(known)}")
    print(f"internal imports: {total} ({local} function-local, {local_outside_cli} outside cli/)")
    print(f"circles: {len(circles)} (modules in them: {sum(len(c) for c in circles)})")
    if args.cycles:
        for group in circles:
            print("  " + " ".join(group))
    if args.closure:
        reached = sorted(closure(graph, args.closure))
        print(f"{args.closure} reaches {len(reached)} modules:")
        for name in reached:
            print(f"  {name}")
    return 1 if circles else 0


if __name__ == "__main__":
    raise SystemExit(main())
