"""The shape of the package, checked from the source: import cycles, what ports import, where engines differ.

Imports are read with :mod:`ast`, never by importing: an import inside ``if TYPE_CHECKING:`` is for the type
checker only and is ignored; for cycles only module-level imports count (a function-level import runs when
the function does, after every module involved has loaded).
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "openma"
SQL = PACKAGE / "adapters" / "sql"
MAX_LINES = 500
#: What a port may import besides the standard library and other ports.
PORT_ALLOWED = {"openma.models", "openma.errors", "attrs", "typing_extensions", "__future__"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _statements(body: list[ast.stmt], *, nested: bool, typing_only: bool = False) -> Iterator[ast.stmt]:
    """Every statement of ``body``, entering ``if``/``try``/``with`` blocks and class bodies (and, if
    ``nested``, function bodies); ``if TYPE_CHECKING:`` blocks only with ``typing_only``."""
    for node in body:
        yield node
        if isinstance(node, ast.If):
            if typing_only or not _is_type_checking(node.test):
                yield from _statements(node.body, nested=nested, typing_only=typing_only)
            yield from _statements(node.orelse, nested=nested, typing_only=typing_only)
        elif isinstance(node, ast.Try):
            for block in (node.body, *(h.body for h in node.handlers), node.orelse, node.finalbody):
                yield from _statements(block, nested=nested, typing_only=typing_only)
        elif isinstance(node, ast.With | ast.AsyncWith | ast.ClassDef) or (
            nested and isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        ):
            yield from _statements(node.body, nested=nested, typing_only=typing_only)


def imports_of(name: str, *, nested: bool, typing_only: bool = False) -> set[str]:
    """Absolute names imported by module ``name``: ``from a import b`` is ``a.b`` when that is a module;
    imports made only for type checkers count with ``typing_only``."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in _statements(ast.parse(path.read_text(encoding="utf-8")).body, nested=nested, typing_only=typing_only):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                found.add(sub if sub in MODULES else source)
    return found


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = 0
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        cycles.append(sorted(component))
    return cycles


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_among_openma_modules() -> None:
    graph = {name: {m for m in imports_of(name, nested=False) if m in MODULES and m != name} for name in MODULES}
    assert find_cycles(graph) == []


def _port_params() -> Iterator[object]:
    for name in MODULES:
        if not name.startswith("openma.ports.") or name == "openma.ports":
            continue
        yield pytest.param(name, id=name)


def _port_may_import(module: str) -> bool:
    top = module.partition(".")[0]
    return (
        module in PORT_ALLOWED
        or top in PORT_ALLOWED
        or module.startswith("openma.ports")
        or (top != "openma" and top in sys.stdlib_module_names)
    )


@pytest.mark.parametrize("name", list(_port_params()))
def test_a_port_imports_only_models_errors_and_the_standard_library(name: str) -> None:
    """Ports are contracts a third party implements: no core, no adapter, no driver behind them (not even for
    type checkers: a port's signatures name only ports, models and errors)."""
    imported = imports_of(name, nested=True, typing_only=True)
    assert sorted(m for m in imported if not _port_may_import(m)) == []


def _mentions(paths: Iterable[Path], pattern: str) -> list[str]:
    """``path:line: text`` of every line of ``paths`` that matches ``pattern``."""
    rx = re.compile(pattern)
    hits = []
    for path in sorted(paths):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if rx.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    return hits


def test_portable_sql_never_branches_on_the_engine() -> None:
    """No module of openma/adapters/sql (the session parts included) tests the dialect's name or speaks
    Postgres's NOTIFY: what differs lives in the engine classes beside the engines' clients."""
    assert _mentions(SQL.rglob("*.py"), r"dialect\.name|pg_notify") == []


def test_no_module_is_over_500_lines() -> None:
    long = {
        name: n
        for name, path in MODULES.items()
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert long == {}


def test_core_pagination_holds_no_sql_and_its_moved_helpers_still_import() -> None:
    from openma.adapters.sql import listing
    from openma.core import pagination

    source = (PACKAGE / "core" / "pagination.py").read_text(encoding="utf-8")
    assert re.findall(r"\b(?:SELECT|ORDER BY|WHERE|AND|OR)\b", source) == []
    assert pagination.keyset_clause is listing.keyset_clause
    assert pagination.order_by is listing.order_by
    assert listing.keyset_clause("asc") == "(created_at > ? OR (created_at = ? AND id > ?))"
    assert listing.order_by("desc", "version", "id") == "ORDER BY version DESC, id DESC"
    with pytest.raises(AttributeError):
        _ = pagination.no_such_name


def test_no_bench_script_shadows_a_standard_module() -> None:
    """``python bench/x.py`` puts bench/ first on the path: a script named like a standard module (``secrets``)
    would be imported in its place by openma itself and break every bench."""
    names = {p.stem for p in (ROOT / "bench").glob("*.py")}
    assert sorted(names & set(sys.stdlib_module_names)) == []
