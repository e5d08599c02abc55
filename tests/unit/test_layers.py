"""The layers of docs/architecture.md, read from the source's own imports: they go one
way, no module imports itself through others, and only entry points read the process's
settings."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("llmos_jobs", "workers", "broker_config", "schemas")
# Where the process's settings may be read: the entry points, and Alembic's own.
READS_SETTINGS = {
    "llmos_jobs.client", "llmos_jobs.settings", "llmos_jobs.migrations.env",
}


def _modules() -> dict[str, ast.Module]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if "versions" in path.parts:
                continue
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = ast.parse(path.read_text())
    return found


MODULES = _modules()


def _imports(tree: ast.Module) -> set[str]:
    """The project modules ``tree`` imports, at any depth (an import inside a function
    counts: it must not dodge a circle); a name imported from a package counts as the
    submodule when there is one."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {n for n in names if n in MODULES}


def _layer_of(module: str) -> str:
    for prefix, layer in (("llmos_jobs.cli", "entry"), ("llmos_jobs.api", "entry"),
                          ("llmos_jobs.demo", "entry"), ("workers.main", "entry"),
                          ("llmos_jobs.client", "facade"), ("llmos_jobs.services", "services"),
                          ("workers", "workers"), ("schemas", "contracts"),
                          ("broker_config", "contracts")):
        if module == prefix or module.startswith(prefix + "."):
            return layer
    return "below services"


def test_imports_go_one_way() -> None:
    # What each layer may never import, at any depth of a module (function-level too).
    forbidden = {
        "facade": {"entry", "workers"},
        "services": {"entry", "facade", "workers"},
        "below services": {"entry", "facade", "services", "workers"},
        "contracts": {"entry", "facade", "services", "workers", "below services"},
    }
    wrong = sorted(
        (module, imported)
        for module, tree in MODULES.items()
        for imported in _imports(tree)
        if _layer_of(imported) in forbidden.get(_layer_of(module), set())
        # The CLI's worker commands start the worker's entry point, by design.
        and not (module == "llmos_jobs.cli.stack" and imported.startswith("workers."))
    )
    assert wrong == []


def test_no_module_imports_itself_through_others() -> None:
    graph = {m: _imports(tree) - {m} for m, tree in MODULES.items()}
    # Packages import their own submodules to re-export them: not a circle of layers.
    graph = {m: {i for i in deps if not i.startswith(m + ".")} for m, deps in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in graph[module]:
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            members = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                members.append(member)
                if member == module:
                    break
            if len(members) > 1:
                circles.append(sorted(members))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    assert circles == []


def test_only_entry_points_read_the_process_settings() -> None:
    readers = sorted(
        module for module, tree in MODULES.items()
        if any(isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
               and node.func.id == "get_settings" for node in ast.walk(tree))
    )
    assert [m for m in readers if _layer_of(m) != "entry" and m not in READS_SETTINGS] == []
    # The check sees calls at all: the CLI's commands do read them.
    assert any(_layer_of(m) == "entry" for m in readers)
