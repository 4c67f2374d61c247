"""The package layout as a contract: layers, no import cycles, the I/O libraries where they belong.

Every import counts: module level, inside functions and under ``TYPE_CHECKING`` alike. A
module may import its own layer or lower ones, never a higher one, and no set of modules may
import each other in a circle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "livegate"

#: Lowest first. A module belongs to the longest entry its dotted name is or starts with
#: ("livegate" itself is only the package's __init__).
LAYERS: list[tuple[str, ...]] = [
    ("livegate", "livegate.errors", "livegate.tasks", "livegate.app", "livegate.clock", "livegate.sharding"),
    ("livegate.protocol",),
    ("livegate.config", "livegate.config_warnings", "livegate.genconfig", "livegate.auth", "livegate.metrics",
     "livegate.limits"),
    ("livegate.channels",),
    ("livegate.cluster", "livegate.node"),
    ("livegate.session",),
    ("livegate.handlers",),
    ("livegate.api",),
    ("livegate.persistence",),
    ("livegate.server",),
    ("livegate.cli", "livegate.publisher"),  # entry points: the command line; the backends' client
]

#: Third-party libraries allowed only from the given layer up.
IO_LIBRARIES = {"websockets": "livegate.server", "aiohttp": "livegate.server"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every module a file imports, wherever the import statement is."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return found


MODULES = {module_name(p): p for p in ROOT.rglob("*.py")}
GRAPH = {name: {m for m in imports_of(path) if m in MODULES and m != name} for name, path in MODULES.items()}


def layer(module: str) -> int:
    best, best_len = -1, -1
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            inside = module == prefix or (prefix != "livegate" and module.startswith(prefix + "."))
            if inside and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    assert best >= 0, f"{module} is in no layer: add it to LAYERS"
    return best


def test_every_module_has_a_layer():
    for module in MODULES:
        layer(module)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_import_from_a_higher_layer(module):
    mine = layer(module)
    upward = sorted(m for m in GRAPH[module] if layer(m) > mine)
    assert not upward, f"{module} (layer {mine}) imports higher layers: {upward}"


def test_no_import_cycles():
    # Tarjan's strongly connected components: any component with more than one module is a cycle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    # A package importing its own submodules (re-exports in __init__) is not a cycle unless a
    # submodule imports the package back; Tarjan reports exactly those.
    assert cycles == []


@pytest.mark.parametrize("library", sorted(IO_LIBRARIES))
def test_io_libraries_stay_in_the_transport_layer(library):
    floor = layer(IO_LIBRARIES[library])
    offenders = sorted(name for name, path in MODULES.items()
                       if layer(name) < floor and any(m == library or m.startswith(library + ".")
                                                      for m in imports_of(path)))
    assert offenders == [], f"{library} imported below {IO_LIBRARIES[library]}: {offenders}"


def test_protocol_does_no_io():
    io = {"asyncio", "socket", "ssl", "selectors", "redis", "asyncpg", "websockets", "aiohttp"}
    for name, path in MODULES.items():
        if layer(name) == layer("livegate.protocol"):
            assert not {m.split(".")[0] for m in imports_of(path)} & io, name


def test_engines_are_not_probed():
    """What an engine provides is in its protocol: nobody asks with hasattr/getattr."""
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("hasattr", "getattr"):
                target = ast.unparse(node.args[0]) if node.args else ""
                assert "engine" not in target and "broker" not in target and "presence" not in target, (
                    f"{name}: {ast.unparse(node)}")
