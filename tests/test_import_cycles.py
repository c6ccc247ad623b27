"""No import cycle inside ``bulkmail``: the layers import downwards only.

Every module is parsed (not imported) with :mod:`ast`, and every import
counts -- at module level, under ``if TYPE_CHECKING:``, and inside functions --
because a cycle hidden in any of those places is still two modules that
cannot be understood (or moved) one without the other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import bulkmail

PACKAGE_DIR = Path(bulkmail.__file__).parent


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE_DIR.rglob("*.py"))}


def imports_of(name: str, path: Path, modules: set[str]) -> set[str]:
    """The bulkmail modules ``name`` (at ``path``) imports anywhere in its source."""
    source = path.read_text(encoding="utf-8")
    return imports_in(name, is_package=path.name == "__init__.py", source=source, modules=modules)


def imports_in(name: str, *, is_package: bool, source: str, modules: set[str]) -> set[str]:
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                if node.level > 1:
                    base_parts = base_parts[: -(node.level - 1)]
                base = ".".join(base_parts)
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            # ``from . import x`` may name a module: then that module is the target
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                for alias in node.names
            ]
        else:
            continue
        for target in targets:
            # ``import a.b.c`` depends on the deepest bulkmail module it names
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = all_modules()
    names = set(modules)
    return {name: imports_of(name, path, names) for name, path in modules.items()}


def test_no_import_cycle_inside_bulkmail() -> None:
    graph = import_graph()
    assert len(graph) > 40  # the walk found the package
    assert cycles(graph) == []


def test_the_checker_sees_type_checking_and_function_local_imports() -> None:
    """The old engine <-> pool pair (pool imported engine under TYPE_CHECKING)
    and a function-local import both count as edges."""
    graph = {
        "bulkmail.engine": {"bulkmail.pool"},
        "bulkmail.pool": {"bulkmail.engine"},
        "bulkmail.a": {"bulkmail.b"},
        "bulkmail.b": set(),
    }
    assert cycles(graph) == [["bulkmail.engine", "bulkmail.pool"]]
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from .engine import Engine\n"
        "def f():\n    from . import results\n    import bulkmail.protocol.replies\n"
        "    from ..errors import SMTPError\n"
    )
    modules = {
        "bulkmail", "bulkmail.errors", "bulkmail.delivery", "bulkmail.delivery.engine",
        "bulkmail.protocol", "bulkmail.protocol.replies",
    }
    found = imports_in("bulkmail.delivery.pool", is_package=False, source=source, modules=modules)
    assert found == {
        "bulkmail.delivery.engine",  # under TYPE_CHECKING
        "bulkmail.delivery",  # ``from . import results``: no such module, so the package
        "bulkmail.protocol.replies",  # function-local
        "bulkmail.errors",  # function-local, relative
    }


def test_the_delivery_pool_does_not_know_the_engine() -> None:
    graph = import_graph()
    assert "bulkmail.delivery.engine" not in graph["bulkmail.delivery.pool"]
    assert "bulkmail.delivery.intake" not in graph["bulkmail.delivery.pool"]


def test_delivery_modules_import_only_those_listed_above_them() -> None:
    """The order ``bulkmail/delivery/__init__.py`` documents is the real one."""
    order = ["policy", "health", "limiter", "job", "domain_queue", "retry", "settle", "connector",
             "batch", "gate", "batch_run", "pool", "intake", "observed", "engine_config",
             "outcomes", "engine"]
    graph = import_graph()
    for position, name in enumerate(order):
        inside = {
            target.rpartition(".")[2] for target in graph[f"bulkmail.delivery.{name}"]
            if target.startswith("bulkmail.delivery.")
        }
        assert inside <= set(order[:position]), name
    assert graph["bulkmail.delivery"] == set()
