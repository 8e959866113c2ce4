"""The package's import graph: arrows point one way, down.

Read from the source (imports at any depth of a file, but not under
``if TYPE_CHECKING:``), so a new import that breaks a rule fails here before
it can become a circular import at run time.
"""
from __future__ import annotations

import ast
import pathlib
from typing import Dict, Set

import pytest

import zcio

ROOT = pathlib.Path(zcio.__file__).resolve().parent


def _import_graph() -> Dict[str, Set[str]]:
    """zcio's modules and the zcio modules each imports (parent packages left
    out, as they are imported first anyway)."""
    paths: Dict[str, pathlib.Path] = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        paths[".".join(parts)] = path
    graph: Dict[str, Set[str]] = {}
    for name, path in paths.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        tree = ast.parse(path.read_text(encoding="utf-8"))
        hidden = {
            id(n)
            for node in ast.walk(tree)
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.dump(node.test)
            for n in ast.walk(node)
        }
        deps: Set[str] = set()
        for node in ast.walk(tree):
            if id(node) in hidden:
                continue
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                subs = [f"{base}.{alias.name}" for alias in node.names]
                targets = [t for t in subs if t in paths] or [base]
            else:
                continue
            deps.update(t for t in targets if t in paths and t != name and not name.startswith(t + "."))
        graph[name] = deps
    return graph


GRAPH = _import_graph()


def _reach(start: str) -> Set[str]:
    seen: Set[str] = set()
    todo = [start]
    while todo:
        for dep in GRAPH[todo.pop()]:
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


def _in(module: str, room: str) -> bool:
    return module == room or module.startswith(room + ".")


def test_the_graph_is_read():
    for module in ("zcio.lowlevel", "zcio.pipes", "zcio.zerocopy.sender", "zcio.http.server", "zcio.cli", "zcio.hub"):
        assert module in GRAPH
    assert "zcio.lowlevel" in GRAPH["zcio.pipes"]


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_no_module_imports_itself_through_a_cycle(module):
    assert module not in _reach(module)


LEAVES = {"zcio._binding": {"zcio._version", "zcio._zcio"}, "zcio._errors": set(), "zcio._stats": set(),
          "zcio._version": set()}


@pytest.mark.parametrize("leaf", sorted(LEAVES))
def test_leaves_import_nothing_above_them(leaf):
    """The bottom of the package imports other leaves (and the compiled
    extension) only."""
    assert GRAPH[leaf] <= set(LEAVES) | LEAVES[leaf]


def test_pipes_and_zero_copy_meet_only_through_the_ticket_base():
    assert GRAPH["zcio._tickets"] <= {"zcio._binding"}
    assert not any(_in(m, "zcio.zerocopy") for m in _reach("zcio.pipes"))
    for module in GRAPH:
        if _in(module, "zcio.zerocopy"):
            assert "zcio.pipes" not in _reach(module), module


# room -> the rooms allowed to import it (besides itself)
TOP_ROOMS = {
    "zcio.cli": {"zcio.__main__"},
    "zcio.bench": {"zcio.cli"},
    "zcio.http": {"zcio.cli", "zcio.serve"},  # zcio.serve: the first release's name for it
}


@pytest.mark.parametrize("room", sorted(TOP_ROOMS))
def test_nothing_in_the_library_imports_the_top_rooms(room):
    """The command line, the bench and the file server sit on top of the
    library; nothing under them reaches up."""
    for module, imported in GRAPH.items():
        if _in(module, room) or any(_in(module, r) for r in TOP_ROOMS[room]):
            continue
        assert not {m for m in imported if _in(m, room)}, f"{module} imports {room}"


def test_the_bench_harness_knows_nothing_of_zcio():
    assert GRAPH["zcio.bench.harness"] == set()


def test_import_zcio_stays_light():
    """``import zcio`` (every command's start-up) loads no event loop, no
    executor and no TLS: those come with the parts that use them."""
    import subprocess
    import sys

    code = "import sys, zcio; print(sorted(m for m in ('asyncio', 'concurrent.futures', 'ssl') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
