"""The import graph of the repository's packages: layers, the SDK's view of the
coordinator, and no cycles.

Like tests/test_core_purity.py this reads the source with ``ast``, so every import
counts wherever it sits: at module level, inside a function (a lazy import is still a
dependency, only a later one), in a branch never run, and under ``TYPE_CHECKING``. A
``TYPE_CHECKING`` import counts because it is how a real cycle hides: two modules
that need each other's types keep the cycle and only move it out of the interpreter's
sight (``from __future__ import annotations`` makes that free). Calls of
``importlib.import_module`` or ``__import__`` with a literal name count too. Not
counted: the ``concord`` command's table (coordinator/runtime/cli.py) naming each
command's module as a string, imported when that command runs; the command line is
the front door to every tool the distribution ships (the simulator, the chaos
harness, the bench), not a layer of the coordinator.

The rules:

1. Layers (``LAYERS``): a module imports only modules of its own layer or lower ones.
   ``coordinator.core`` (the pure protocol) is the bottom and imports nothing else;
   then the generated protos and what both ends of a connection share; then
   ``coordinator.replication``, ``coordinator.rpc`` and the participant SDK; then
   ``coordinator.runtime`` (which runs a node and serves the command line, a client of
   the SDK among others) and ``coordinator.ui`` (the node's web dashboard, which the
   runtime starts); then ``coordinator.bench``; then ``simulations``. Nothing
   imports ``tests``.
2. The participant SDK imports from the coordinator only the protocol
   (``SDK_PROTOCOL``: core types, messages, limits and their errors, and
   ``coordinator.protomap``: enum and message maps, the metadata keys) and the code both
   ends of a connection share (``SDK_SHARED``). Shared code stays where it is rather
   than in a package of its own: ``coordinator.security`` (TLS, identities in
   certificates, authorization, the undecodable-request guard) runs on both ends of
   every connection, a participant being a TLS server the leader dials and a client of
   the cluster; one implementation means both ends check a peer the same way. The
   tracing glue (a trace context crosses the wire), the LMDB file check
   (``coordinator.lmdbfile``), the audit hash chain (``coordinator.audit.chain``, the
   format a participant's audit log is verified with) and the Prometheus exporter
   (``coordinator.metrics_endpoint``, so a node need not import the SDK to serve its
   metrics) are shared the same way. What
   makes this safe is checked, not promised: every protocol or shared module imports,
   from the repository, only other protocol or shared modules, so none can pull the
   leader into a participant.
3. No cycle between modules, of one package or of several, nor between packages (the
   entries of ``LAYERS``: a subpackage such as ``participant_sdk.storage`` counts with
   its parent, and a cycle inside one is a cycle between its modules).

``KNOWN_EDGES_BEING_REMOVED`` names the edges that work under way removes, and
``SIMULATOR_WORLD_BACK_EDGES`` the one knot this test found that is not fixed yet;
each is left out of the graph, and an entry whose edge no longer exists fails, so
both lists only shrink.
"""

from __future__ import annotations

import ast
import itertools
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SCANNED = ("coordinator", "participant_sdk", "simulations")
FIRST_PARTY = (*SCANNED, "concord", "tests")

# Bottom first. A package belongs to the longest entry it equals or lies under, except
# "coordinator", which holds only the modules directly in coordinator/ (a new
# subpackage must be placed here deliberately: test_every_package_is_placed).
LAYERS: tuple[tuple[str, ...], ...] = (
    ("coordinator.core",),
    ("concord", "coordinator", "coordinator.security", "coordinator.audit"),
    ("coordinator.replication", "coordinator.rpc", "participant_sdk"),
    ("coordinator.runtime", "coordinator.ui"),
    ("coordinator.bench",),
    ("simulations",),
)

SDK = "participant_sdk"
SDK_PROTOCOL = frozenset(
    {
        "coordinator.core.types",
        "coordinator.core.messages",
        "coordinator.core.limits",
        "coordinator.core.errors",
        "coordinator.protomap",
    }
)
SDK_SHARED = frozenset(
    {
        "coordinator.security.authz",
        "coordinator.security.certs",
        "coordinator.security.identity",
        "coordinator.security.transport",
        "coordinator.security.undecodable",
        "coordinator.tracing",
        "coordinator.tracing_otel",
        "coordinator.lmdbfile",
        "coordinator.audit.chain",
        "coordinator.metrics_endpoint",
    }
)

# (importing module or package, imported module or package): edges being removed by
# work under way. Delete an entry in the commit that removes its edge.
KNOWN_EDGES_BEING_REMOVED: tuple[tuple[str, str], ...] = ()
# The tier-1 simulator's world builds its parts and hands each a reference to itself,
# which they type with a TYPE_CHECKING import of simulations.world: a knot of six
# modules (world -> cluster -> world, ...). Breaking it means each part names only
# what it uses of the world (a Protocol of its own, as simulations/tier2/harness.py
# does for the chaos runner); simulations/cluster.py is being rewritten around the
# core's leader, so that is left to that work. Listed one by one, so no other edge
# into simulations.world can join the knot unseen.
SIMULATOR_WORLD_BACK_EDGES: tuple[tuple[str, str], ...] = (
    ("simulations.checkers", "simulations.world"),
    ("simulations.cluster", "simulations.world"),
    ("simulations.faults", "simulations.world"),
    ("simulations.participant", "simulations.world"),
    ("simulations.workload", "simulations.world"),
)


@dataclass(frozen=True, slots=True)
class Edge:
    source: str
    target: str
    where: str  # file:line

    def __str__(self) -> str:
        return f"{self.where}: {self.source} -> {self.target}"


@dataclass(frozen=True, slots=True)
class Module:
    name: str
    source: str
    is_package: bool  # an __init__.py: relative imports resolve against itself
    path: str


# ---------------------------------------------------------------------- the graph


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _literal_import(node: ast.Call) -> str | None:
    """The module named by ``importlib.import_module("x")`` or ``__import__("x")``."""
    func = node.func
    named = (isinstance(func, ast.Name) and func.id in ("__import__", "import_module")) or (
        isinstance(func, ast.Attribute) and func.attr == "import_module"
    )
    if named and node.args and isinstance(node.args[0], ast.Constant):
        value = node.args[0].value
        return value if isinstance(value, str) else None
    return None


def imports_of(module: Module, known: Iterable[str]) -> list[Edge]:
    """Every first-party module ``module`` imports, each with file:line. ``from a
    import b`` is an edge to ``a.b`` when that is a module, else to ``a``."""
    known = set(known)
    edges: list[Edge] = []

    def add(target: str, line: int) -> None:
        if target.split(".")[0] in FIRST_PARTY:
            edges.append(Edge(module.name, target, f"{module.path}:{line}"))

    for node in ast.walk(ast.parse(module.source, filename=module.path)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.name.split(".")
                if not module.is_package:
                    base = base[:-1]
                base = base[: len(base) - (node.level - 1)]
                parent = ".".join([*base, *([node.module] if node.module else [])])
            else:
                parent = node.module or ""
            for alias in node.names:
                child = f"{parent}.{alias.name}"
                add(child if child in known else parent, node.lineno)
        elif isinstance(node, ast.Call):
            named = _literal_import(node)
            if named is not None:
                add(named, node.lineno)
    return edges


def _left_out(edge: Edge) -> bool:
    return (
        any(
            _under(edge.source, source) and _under(edge.target, target)
            for source, target in KNOWN_EDGES_BEING_REMOVED
        )
        or (edge.source, edge.target) in SIMULATOR_WORLD_BACK_EDGES
    )


def build_edges(modules: Mapping[str, Module]) -> list[Edge]:
    """The graph's edges, once per import line, without self-imports and without the
    edges left out (``KNOWN_EDGES_BEING_REMOVED``, ``SIMULATOR_WORLD_BACK_EDGES``)."""
    edges = {edge for module in modules.values() for edge in imports_of(module, modules)}
    kept = [e for e in edges if e.source != e.target and not _left_out(e)]
    return sorted(kept, key=lambda e: (e.source, e.target, e.where))


def repository_modules() -> dict[str, Module]:
    modules: dict[str, Module] = {}
    for top in SCANNED:
        for path in sorted((REPO_ROOT / top).rglob("*.py")):
            parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            if is_package:
                parts = parts[:-1]
            modules[".".join(parts)] = Module(
                ".".join(parts),
                path.read_text(encoding="utf-8"),
                is_package,
                str(path.relative_to(REPO_ROOT)),
            )
    return modules


# ---------------------------------------------------------------------- the rules


def package_of(name: str, modules: Mapping[str, Module]) -> str:
    module = modules.get(name)
    if module is not None and module.is_package:
        return name
    if module is None and name.startswith("concord"):
        return "concord"
    return name.rpartition(".")[0] or name


def _placed(package: str) -> tuple[str, int] | None:
    """The LAYERS entry ``package`` belongs to, and its layer."""
    best: tuple[str, int] | None = None
    for layer, entries in enumerate(LAYERS):
        for entry in entries:
            matches = package == entry if entry == "coordinator" else _under(package, entry)
            if matches and (best is None or len(entry) > len(best[0])):
                best = (entry, layer)
    return best


def layer_of(package: str) -> int | None:
    placed = _placed(package)
    return None if placed is None else placed[1]


def unit_of(name: str, modules: Mapping[str, Module]) -> str:
    """The package a module counts in for the package rules: its LAYERS entry (a
    subpackage such as participant_sdk.storage counts with its parent), or where it
    lies when it is on no layer."""
    package = package_of(name, modules)
    placed = _placed(package)
    return package if placed is None else placed[0]


def layering_violations(modules: Mapping[str, Module], edges: Iterable[Edge]) -> list[str]:
    problems = []
    for edge in edges:
        if _under(edge.target, "tests"):
            problems.append(f"{edge}  (nothing imports tests)")
            continue
        source_package = unit_of(edge.source, modules)
        target_package = unit_of(edge.target, modules)
        source_layer, target_layer = layer_of(source_package), layer_of(target_package)
        if source_layer is None or target_layer is None:
            unplaced = source_package if source_layer is None else target_package
            problems.append(f"{edge}  ({unplaced} is on no layer of LAYERS)")
        elif target_layer > source_layer:
            problems.append(
                f"{edge}  ({source_package}, layer {source_layer}, may not import "
                f"{target_package}, layer {target_layer})"
            )
    return problems


def sdk_violations(edges: Iterable[Edge]) -> list[str]:
    allowed = SDK_PROTOCOL | SDK_SHARED
    problems = []
    for edge in edges:
        if not _under(edge.target, "coordinator"):
            continue
        if _under(edge.source, SDK) and edge.target not in allowed:
            problems.append(
                f"{edge}  (the SDK imports from the coordinator only SDK_PROTOCOL and SDK_SHARED)"
            )
        elif edge.source in allowed and edge.target not in allowed:
            problems.append(
                f"{edge}  ({edge.source} is imported by the SDK, so it may import only "
                "other SDK_PROTOCOL and SDK_SHARED modules)"
            )
    return problems


def _strongly_connected(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """Tarjan's components of more than one node, each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(node: str) -> None:
        nonlocal counter
        # Iterative, so a deep graph cannot hit the recursion limit.
        work = [(node, iter(sorted(graph.get(node, ()))))]
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        while work:
            current, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[current] = min(low[current], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[current])
            if low[current] == index[current]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == current:
                        break
                if len(component) > 1:
                    found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _one_cycle(graph: Mapping[str, set[str]], component: list[str]) -> list[str]:
    """A shortest cycle through the component's first node, as a path back to it."""
    start, members = component[0], set(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(graph.get(node, ())):
                if child == start:
                    return [*paths[node], start]
                if child in members and child not in paths:
                    paths[child] = [*paths[node], child]
                    following.append(child)
        frontier = following
    raise AssertionError(f"no cycle through {start} in {component}")


def cycles(edges: Iterable[Edge], node_of: Mapping[str, str] | None = None) -> list[str]:
    """Each cycle of the graph, as ``a -> b -> a`` and the edges (file:line) that make
    it; ``node_of`` maps a module to the node it counts as (its package), if given."""
    graph: dict[str, set[str]] = {}
    where: dict[tuple[str, str], list[Edge]] = {}
    for edge in edges:
        source = node_of.get(edge.source, edge.source) if node_of else edge.source
        target = node_of.get(edge.target, edge.target) if node_of else edge.target
        if source == target:
            continue
        graph.setdefault(source, set()).add(target)
        where.setdefault((source, target), []).append(edge)
    problems = []
    for component in _strongly_connected(graph):
        path = _one_cycle(graph, component)
        steps = [str(where[(a, b)][0]) for a, b in itertools.pairwise(path)]
        knot = (
            f"\n    (one cycle of a knot of {len(component)}: {', '.join(component)})"
            if len(component) > len(path) - 1
            else ""
        )
        problems.append(" -> ".join(path) + knot + "\n    " + "\n    ".join(steps))
    return problems


# ---------------------------------------------------------------------- the repository

MODULES = repository_modules()
EDGES = build_edges(MODULES)


def _report(what: str, problems: list[str]) -> str:
    return f"{what}:\n" + "\n".join(problems)


def test_the_graph_is_read() -> None:
    assert {"coordinator.core.types", "participant_sdk", "simulations"} <= set(MODULES)
    assert any(edge.target == "coordinator.core.types" for edge in EDGES)


def test_every_package_is_placed() -> None:
    unplaced = [name for name, m in MODULES.items() if m.is_package and layer_of(name) is None]
    assert not unplaced, f"packages on no layer of LAYERS: {unplaced}"


def test_layers() -> None:
    problems = layering_violations(MODULES, EDGES)
    assert not problems, _report("imports against the layers", problems)


def test_the_sdk_imports_only_the_protocol_and_shared_code() -> None:
    problems = sdk_violations(EDGES)
    assert not problems, _report("the SDK's imports of the coordinator", problems)


def test_every_allowed_module_exists() -> None:
    missing = sorted((SDK_PROTOCOL | SDK_SHARED) - set(MODULES))
    assert not missing, f"SDK_PROTOCOL/SDK_SHARED name modules that do not exist: {missing}"


def test_no_cycle_between_modules() -> None:
    problems = cycles(EDGES)
    assert not problems, _report("import cycles between modules", problems)


def test_no_cycle_between_packages() -> None:
    node_of = {edge.source: unit_of(edge.source, MODULES) for edge in EDGES}
    node_of.update({edge.target: unit_of(edge.target, MODULES) for edge in EDGES})
    problems = cycles(EDGES, node_of)
    assert not problems, _report("import cycles between packages", problems)


@pytest.mark.parametrize(
    ("name", "listed"),
    [
        ("KNOWN_EDGES_BEING_REMOVED", KNOWN_EDGES_BEING_REMOVED),
        ("SIMULATOR_WORLD_BACK_EDGES", SIMULATOR_WORLD_BACK_EDGES),
    ],
)
def test_edges_left_out_still_exist(name: str, listed: tuple[tuple[str, str], ...]) -> None:
    raw = [edge for module in MODULES.values() for edge in imports_of(module, MODULES)]
    gone = [
        f"{source} -> {target}"
        for source, target in listed
        if not any(_under(e.source, source) and _under(e.target, target) for e in raw)
    ]
    assert not gone, f"{name} lists edges that no longer exist: {gone}; delete them from it"


# ---------------------------------------------------------------------- the checker


def _modules(sources: Mapping[str, str]) -> dict[str, Module]:
    """Every module of the repository, empty, with the planted ones (name -> source)
    over them; a planted name ending in ``.__init__`` is a package."""
    planted = {
        name: Module(name, "", module.is_package, module.path) for name, module in MODULES.items()
    }
    for name, source in sources.items():
        is_package = name.endswith(".__init__")
        real = name.removesuffix(".__init__")
        planted[real] = Module(real, source, is_package, name.replace(".", "/") + ".py")
    return planted


def _planted(sources: Mapping[str, str]) -> tuple[dict[str, Module], list[Edge]]:
    modules = _modules(sources)
    return modules, build_edges(modules)


@pytest.mark.parametrize(
    "sources",
    [
        {"coordinator.core.state": "from coordinator.rpc import edge"},
        {"coordinator.core.state": "from coordinator import protomap"},
        {"coordinator.core.state": "import concord.v1.log_pb2"},
        {"coordinator.replication.node": "def f():\n    from coordinator.runtime import node"},
        {
            "coordinator.replication.node": "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n    from coordinator.runtime.serve import serve"
        },
        {"coordinator.rpc.edge": "import importlib\nimportlib.import_module('coordinator.bench')"},
        {"coordinator.runtime.serve": "__import__('coordinator.bench.command')"},
        {"coordinator.runtime.serve": "import simulations.cluster"},
        {"coordinator.runtime.serve": "from tests.rpc import serving"},
        {"participant_sdk.client": "from tests import conftest"},
        {"coordinator.security.transport": "from coordinator.runtime import config"},
        {"coordinator.newpackage.thing": "import coordinator.core.types"},
    ],
)
def test_checker_catches_a_layering_violation(sources: dict[str, str]) -> None:
    modules, edges = _planted(sources)
    problems = layering_violations(modules, edges)
    assert problems, f"missed: {sources}"
    assert next(iter(sources)) in problems[0]


@pytest.mark.parametrize(
    "source",
    [
        "from coordinator.rpc.edge import check_request",
        "from coordinator.core.entries import BeginTxn",
        "from coordinator.core.state import CoordinatorState",
        "from coordinator.security.secret import ClusterSecret",
        "from coordinator.audit.log import AuditLog",
        "def f():\n    from coordinator.replication import node",
    ],
)
def test_checker_catches_an_sdk_import_beyond_the_protocol(source: str) -> None:
    _, edges = _planted({"participant_sdk.server": source})
    problems = sdk_violations(edges)
    assert problems and "participant_sdk.server ->" in problems[0], source


def test_checker_catches_a_shared_module_that_pulls_in_the_leader() -> None:
    _, edges = _planted({"coordinator.security.authz": "from coordinator.audit import log"})
    problems = sdk_violations(edges)
    assert problems and "coordinator.security.authz -> coordinator.audit.log" in problems[0]


def test_checker_allows_the_protocol_and_shared_modules() -> None:
    source = "\n".join(
        [
            "from concord.v1 import participant_pb2",
            "from coordinator.core.messages import Prepare",
            "from coordinator import protomap, tracing",
            "from coordinator.security.transport import Transport",
            "from participant_sdk import errors",
        ]
    )
    modules, edges = _planted({"participant_sdk.server": source, "participant_sdk.errors": ""})
    assert sdk_violations(edges) == []
    assert layering_violations(modules, edges) == []


def test_checker_names_a_module_cycle_and_its_edges() -> None:
    _, edges = _planted(
        {
            "coordinator.runtime.commands": "from coordinator.runtime import operator_commands",
            "coordinator.runtime.operator_commands": "def f():\n"
            "    from coordinator.runtime import commands",
        }
    )
    (problem,) = cycles(edges)
    assert problem.startswith(
        "coordinator.runtime.commands -> coordinator.runtime.operator_commands -> "
        "coordinator.runtime.commands"
    )
    assert "coordinator/runtime/operator_commands.py:2" in problem


def test_checker_finds_a_cycle_through_relative_and_type_checking_imports(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sys.modules[__name__], "KNOWN_EDGES_BEING_REMOVED", ())
    _, edges = _planted(
        {
            "participant_sdk.__init__": "from .participant import Participant",
            "participant_sdk.participant": "from . import server",
            "participant_sdk.server": "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n    from .participant import Participant",
        }
    )
    (problem,) = cycles(edges)
    assert "participant_sdk.participant -> participant_sdk.server -> participant_sdk." in problem


def test_checker_finds_a_package_cycle_of_acyclic_modules() -> None:
    modules, edges = _planted(
        {
            "coordinator.rpc.a": "import coordinator.replication.b",
            "coordinator.replication.b": "",
            "coordinator.replication.c": "import coordinator.rpc.d",
            "coordinator.rpc.d": "",
        }
    )
    assert cycles(edges) == []
    node_of = {name: unit_of(name, modules) for name in modules}
    (problem,) = cycles(edges, node_of)
    assert problem.startswith(
        "coordinator.replication -> coordinator.rpc -> coordinator.replication"
    )


def test_checker_leaves_out_the_known_edges_being_removed(monkeypatch: pytest.MonkeyPatch) -> None:
    known = (("coordinator.rpc", "coordinator.runtime"),)
    monkeypatch.setattr(sys.modules[__name__], "KNOWN_EDGES_BEING_REMOVED", known)
    _, edges = _planted(
        {
            "coordinator.rpc.a": "import coordinator.runtime.b",
            "coordinator.runtime.b": "import coordinator.rpc.a",
        }
    )
    assert [(e.source, e.target) for e in edges] == [("coordinator.runtime.b", "coordinator.rpc.a")]
