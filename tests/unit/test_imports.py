"""The import graph of ztproxy/: no cycles, and the layering rules in :data:`RULES` hold.

Every module is read with ``ast``; an import anywhere in it counts (inside a function too:
it is still a dependency), except under ``if TYPE_CHECKING:``, which never runs. An
import of ``ztproxy.a.b`` is an edge to the most specific ztproxy module it names.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from fnmatch import fnmatchcase
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "ztproxy"


@dataclass(frozen=True)
class Rule:
    """Modules matching ``sources`` must not import modules matching ``forbidden``.

    Patterns are fnmatch globs on dotted names, third-party modules included (``aiohttp*``).
    ``transitive``: through any chain of ztproxy modules, not only directly.
    """

    name: str
    sources: tuple[str, ...]
    forbidden: tuple[str, ...]
    transitive: bool = True


CORE = ("ztproxy.config", "ztproxy.config.*", "ztproxy.policy", "ztproxy.policy.*", "ztproxy.sessions.sealing",
        "ztproxy.risk", "ztproxy.risk.*",
        "ztproxy.assertion", "ztproxy.assertion.*", "ztproxy.errors", "ztproxy.headers", "ztproxy.origins")

# The request pipeline's stages and handlers (app.STAGES, app.handle): siblings that share the
# request record (state.py) and the services below them, never each other (STYLE 25).
STAGES = ("ztproxy.intake", "ztproxy.endpoints", "ztproxy.authenticate", "ztproxy.device", "ztproxy.session_risk",
          "ztproxy.authorize",
          "ztproxy.upstream_identity", "ztproxy.forward", "ztproxy.websocket", "ztproxy.answers")

RULES = [
    Rule("the core is plain Python (STYLE 4)", CORE, ("aiohttp", "aiohttp.*")),
    *(Rule(f"the stage {stage} imports no other stage", (stage,), tuple(other for other in STAGES if other != stage))
      for stage in STAGES),
    Rule("telemetry reads the record, not the stages", ("ztproxy.tracing", "ztproxy.telemetry"), STAGES),
]


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def _sources() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(node: ast.AST, module: str, is_package: bool) -> Iterator[str]:
    """The dotted names ``node`` imports, skipping ``if TYPE_CHECKING:`` bodies."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for orelse in child.orelse:
                yield from _imports(orelse, module, is_package)
            continue
        if isinstance(child, ast.Import):
            yield from (alias.name for alias in child.names)
        elif isinstance(child, ast.ImportFrom):
            base = child.module or ""
            if child.level:
                package = module.split(".")
                anchor = package[: len(package) - child.level + (1 if is_package else 0)]
                base = ".".join([*anchor, *([base] if base else [])])
            # `from pkg import name`: the module pkg.name if there is one, else pkg (resolved in graph()).
            yield from (f"{base}.{alias.name}" for alias in child.names)
        yield from _imports(child, module, is_package)


@cache
def graph() -> dict[str, frozenset[str]]:
    """Each ztproxy module -> the modules it imports (ztproxy ones resolved to a module; others as written)."""
    sources = _sources()
    edges: dict[str, frozenset[str]] = {}
    for module, path in sources.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        found: set[str] = set()
        for name in _imports(tree, module, path.name == "__init__.py"):
            if name.split(".")[0] != "ztproxy":
                found.add(name)
                continue
            while name not in sources and "." in name:
                name = name.rsplit(".", 1)[0]
            if name != module and name in sources:
                found.add(name)
        edges[module] = frozenset(found)
    return edges


def strongly_connected(edges: dict[str, frozenset[str]]) -> list[list[str]]:
    """Tarjan's algorithm: the components of more than one module (the cycles), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in edges.get(node, ()):
            if target not in edges:
                continue
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component: list[str] = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return sorted(components)


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatchcase(name, pattern) for pattern in patterns)


def violations(rule: Rule, edges: dict[str, frozenset[str]]) -> list[str]:
    """Each forbidden import a source reaches, as the chain of imports that gets there."""
    found: list[str] = []
    for source in sorted(module for module in edges if _matches(module, rule.sources)):
        paths = {source: [source]}
        queue = [source]
        while queue:
            current = queue.pop(0)
            for target in sorted(edges[current]):
                if target in paths:
                    continue
                chain = [*paths[current], target]
                if _matches(target, rule.forbidden) and not (target in edges and _matches(target, rule.sources)):
                    found.append(" -> ".join(chain))
                paths[target] = chain
                if rule.transitive and target in edges:
                    queue.append(target)
    return found


def test_the_graph_sees_every_module_and_known_imports() -> None:
    edges = graph()
    assert "ztproxy.app" in edges and "ztproxy.sessions.store" in edges
    assert "ztproxy.config.sessions" in edges["ztproxy.sessions.store"]
    assert "aiohttp" in edges["ztproxy.app"] or any(name.startswith("aiohttp.") for name in edges["ztproxy.app"])


def test_no_import_cycles() -> None:
    cycles = strongly_connected(graph())
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(cycle) for cycle in cycles)


@pytest.mark.parametrize("rule", RULES, ids=[rule.name for rule in RULES])
def test_layering_rule(rule: Rule) -> None:
    sources = [module for module in graph() if _matches(module, rule.sources)]
    assert sources, f"{rule.name}: no module matches {rule.sources}"
    broken = violations(rule, graph())
    assert not broken, f"{rule.name}:\n" + "\n".join(broken)


def test_cycles_and_rules_are_found() -> None:
    edges = {"a": frozenset({"b"}), "b": frozenset({"c", "aiohttp.web"}), "c": frozenset({"a"}), "d": frozenset()}
    assert strongly_connected(edges) == [["a", "b", "c"]]
    rule = Rule("example", ("a",), ("aiohttp", "aiohttp.*"))
    assert violations(rule, edges) == ["a -> b -> aiohttp.web"]
    assert violations(Rule("direct only", ("a",), ("aiohttp.*",), transitive=False), edges) == []
