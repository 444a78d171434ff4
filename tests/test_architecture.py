"""The import structure of the product packages (weights/, mlx_model/, coreml_convert/,
ios_bridge/), read statically with ``ast`` -- nothing here imports the packages.

Every ``import``/``from ... import`` anywhere in a module counts, function-local ones
included; relative imports are resolved against the importing module's package, and
``from pkg import name`` is an edge to ``pkg.name`` when that is a module, else to ``pkg``.
An edge goes to the named module only (not to the parent packages Python also initialises).
Imports guarded by ``if TYPE_CHECKING:`` are left out of the cycle check (they never run)
but count for the layering rules.  Imports built at run time (``importlib.import_module``)
are not seen.

Rules:
  (a) no import cycle among the modules;
  (b) package level: each product package imports only the packages ALLOWED says (weights/
      none; coreml_convert/ writes the manifest through ios_bridge/, which never imports
      the converter back; neither imports mlx_model/);
  (c) floors inside a package (FLOORS): a module imports its own floor and the ones below,
      never a floor above; in mlx_model/ no library module (support, components, pipelines)
      imports a command, the CLI kit or the server;
  (d) no component module of coreml_convert/components/ imports another one
      (shared blocks live in a shared module).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("weights", "mlx_model", "coreml_convert", "ios_bridge")

# (b) which product package may import which
ALLOWED = {
    "weights": {"weights"},
    "mlx_model": {"weights", "mlx_model"},
    "coreml_convert": {"weights", "coreml_convert", "ios_bridge"},
    "ios_bridge": {"weights", "ios_bridge"},
}

# (c) floors from the ground up; a module outside every listed floor of its package stands on
# the top floor (mlx_model's commands and server).  weights.bundles stands on weights.core alone.
FLOORS = {
    "weights": ("weights.core", "weights.mapping", "weights.references", "weights.loading"),
    "mlx_model": ("mlx_model.support", "mlx_model.components", "mlx_model.pipelines"),
}
BESIDE = {"weights.bundles": {"weights.core", "weights.bundles"}}


@dataclass(frozen=True)
class Edge:
    src: str
    dst: str
    path: str  # the importing file, relative to the repository root
    line: int
    type_only: bool  # under `if TYPE_CHECKING:`

    def __str__(self) -> str:
        return f"{self.src} -> {self.dst}  ({self.path}:{self.line})"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@lru_cache(maxsize=None)
def modules() -> dict[str, Path]:
    """Every product module: dotted name -> file."""
    found = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            if not any(part.startswith(".") for part in path.relative_to(ROOT).parts):  # .build/ etc.
                found[module_name(path)] = path
    assert found, f"no product modules found under {ROOT}"
    return found


@lru_cache(maxsize=None)
def trees() -> dict[str, ast.Module]:
    return {name: ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            for name, path in modules().items()}


def _resolve(name: str, known) -> str | None:
    """The product module ``name`` refers to (itself, else its nearest known parent); None if
    it is not a product module."""
    if name.split(".")[0] not in PACKAGES:
        return None
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def import_targets(node: ast.Import | ast.ImportFrom, package: str, known) -> list[str]:
    """The product modules one import statement in ``package`` (the importing module's
    package: itself for an ``__init__``) refers to; ``known`` is the set of module names."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        if node.level:
            parts = package.split(".")
            up = node.level - 1
            if up >= len(parts):
                raise ValueError(f"line {node.lineno}: relative import beyond the top level")
            base = ".".join(parts[:len(parts) - up])
            base = f"{base}.{node.module}" if node.module else base
        else:
            base = node.module
        names = []
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            names.append(sub if alias.name != "*" and sub in known else base)
    return [t for t in (_resolve(n, known) for n in names) if t is not None]


def _is_type_checking(test: ast.expr) -> bool:
    return ((isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
            or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def _imports(tree: ast.Module):
    """(node, type_only) for every import statement in ``tree``, at any depth."""
    stack = [(tree, False)]
    while stack:
        node, type_only = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, type_only
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend((child, True) for child in node.body)
            stack.extend((child, type_only) for child in node.orelse)
            continue
        stack.extend((child, type_only) for child in ast.iter_child_nodes(node))


@lru_cache(maxsize=None)
def edges() -> tuple[Edge, ...]:
    """Every import from one product module to another (self-imports dropped)."""
    known = modules()
    out = set()
    for src, tree in trees().items():
        path = known[src]
        is_pkg = path.name == "__init__.py"
        package = src if is_pkg else src.rpartition(".")[0]
        rel = str(path.relative_to(ROOT))
        for node, type_only in _imports(tree):
            for dst in import_targets(node, package, known):
                if dst != src:
                    out.add(Edge(src, dst, rel, node.lineno, type_only))
    return tuple(sorted(out, key=lambda e: (e.src, e.dst, e.line)))


def _in(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def _report(title: str, bad: list[Edge]) -> str:
    return f"{title} ({len(bad)} import(s)):\n  " + "\n  ".join(map(str, bad))


# ---------------------------------------------------------------------------------------
# Graph helpers


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components (iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    comps: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
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
                    comp = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        comp.append(member)
                        if member == node:
                            break
                    comps.append(sorted(comp))
    return comps


def shortest_cycle(graph: dict[str, set[str]], start: str, members: set[str]) -> list[str]:
    """The shortest path start -> ... -> start inside ``members`` (BFS)."""
    parent: dict[str, str] = {}
    frontier = [start]
    seen = {start}
    while frontier:
        nxt = []
        for node in frontier:
            for child in sorted(graph[node] & members):
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parent[path[-1]])
                    return path[::-1] + [start]
                if child not in seen:
                    seen.add(child)
                    parent[child] = node
                    nxt.append(child)
        frontier = nxt
    return []


def find_cycles(edge_list) -> list[tuple[list[str], list[str], list[Edge]]]:
    """(members, one shortest cycle, the edges inside) for every strongly connected component
    with more than one module."""
    graph: dict[str, set[str]] = {name: set() for name in modules()}
    for e in edge_list:
        graph[e.src].add(e.dst)
    found = []
    for comp in strongly_connected(graph):
        if len(comp) < 2:
            continue
        members = set(comp)
        cycle = min((shortest_cycle(graph, m, members) for m in comp), key=len)
        inside = [e for e in edge_list if e.src in members and e.dst in members]
        found.append((comp, cycle, inside))
    return found


# ---------------------------------------------------------------------------------------
# The scanner itself


def test_scanner_sees_the_product_packages():
    names = modules()
    for pkg in PACKAGES:
        assert pkg in names, f"{pkg}/__init__.py was not found"
    assert edges(), "no imports between the product packages were found"
    assert any(e.src == "mlx_model.pipelines.generation" and e.dst == "mlx_model.components.dit" for e in edges()), \
        "relative imports are not resolved (mlx_model.pipelines.generation -> mlx_model.components.dit missing)"


def test_resolution_of_relative_and_local_imports():
    """``from . import x``, ``from .. import y``, ``from .m import name``, ``import a.b`` and
    imports inside functions or under TYPE_CHECKING resolve to modules; cycles are found."""
    known = {"mlx_model", "mlx_model.llm", "mlx_model.dit", "weights", "weights.configs",
             "coreml_convert", "coreml_convert.ane", "coreml_convert.components",
             "coreml_convert.components.dit"}
    tree = ast.parse("from . import llm, VERSION\n"
                     "from .llm import X\n"
                     "from weights.configs import DiTConfig\n"
                     "import numpy, weights.configs.sub\n"
                     "def f():\n    import mlx_model.dit as d\n"
                     "if TYPE_CHECKING:\n    from weights import configs\n")
    found = {(ast.unparse(n), t): import_targets(n, "mlx_model", known) for n, t in _imports(tree)}
    assert found == {
        ("from . import llm, VERSION", False): ["mlx_model.llm", "mlx_model"],
        ("from .llm import X", False): ["mlx_model.llm"],
        ("from weights.configs import DiTConfig", False): ["weights.configs"],
        ("import numpy, weights.configs.sub", False): ["weights.configs"],
        ("import mlx_model.dit as d", False): ["mlx_model.dit"],
        ("from weights import configs", True): ["weights.configs"],
    }, found
    node = ast.parse("from .. import ane\nfrom .dit import Block\n").body
    assert import_targets(node[0], "coreml_convert.components", known) == ["coreml_convert.ane"]
    assert import_targets(node[1], "coreml_convert.components", known) == ["coreml_convert.components.dit"]

    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert [c for c in strongly_connected(graph) if len(c) > 1] == [["a", "b", "c"]]
    assert shortest_cycle(graph, "a", {"a", "b", "c"}) == ["a", "b", "c", "a"]


# ---------------------------------------------------------------------------------------
# (a) - (d)


def test_no_import_cycles():
    cycles = find_cycles([e for e in edges() if not e.type_only])
    msg = []
    for comp, cycle, inside in cycles:
        msg.append(f"cycle of {len(comp)} modules: {' -> '.join(cycle)}\n"
                   f"  members: {', '.join(comp)}\n  imports inside it:\n    "
                   + "\n    ".join(map(str, inside)))
    assert not cycles, f"{len(cycles)} import cycle(s) among the product modules:\n" + "\n".join(msg)


def test_packages_import_only_what_they_may():
    bad = [e for e in edges() if e.dst.split(".")[0] not in ALLOWED[e.src.split(".")[0]]]
    assert not bad, _report("a product package imports one it may not (tests/test_architecture.py ALLOWED)", bad)
    mutual = {(a, b) for a, uses in ALLOWED.items() for b in uses if a != b and a in ALLOWED[b]}
    assert not mutual, f"ALLOWED lets packages import each other: {sorted(mutual)}"


def floor(name: str) -> tuple[str, int] | None:
    """(package, floor index) of a module; None for a package's own __init__."""
    pkg = name.split(".")[0]
    if pkg not in FLOORS or name == pkg:
        return None
    for i, sub in enumerate(FLOORS[pkg]):
        if _in(name, sub):
            return pkg, i
    return pkg, len(FLOORS[pkg])  # the top floor


def test_no_import_runs_up_a_floor():
    bad = []
    for e in edges():
        beside = next((allowed for sub, allowed in BESIDE.items() if _in(e.src, sub)), None)
        if beside is not None:
            if _in(e.dst, e.src.split(".")[0]) and not any(_in(e.dst, a) for a in beside):
                bad.append(e)
            continue
        if any(_in(e.dst, sub) for sub in BESIDE):
            continue
        src, dst = floor(e.src), floor(e.dst)
        if src and dst and src[0] == dst[0] and dst[1] > src[1]:
            bad.append(e)
    assert not bad, _report("an import runs up a floor (tests/test_architecture.py FLOORS: library code never "
                            "imports a command, the CLI kit or the server)", bad)


def test_floors_name_real_subpackages():
    for subs in (*FLOORS.values(), BESIDE):
        for sub in subs:
            assert sub in modules(), f"{sub} is not a package"


def component_modules() -> set[str]:
    """The modules named in weights.bundles.contract.COMPONENT_NAMES (read statically), or every
    public module of components/ when that tuple cannot be read; others there are shared."""
    pkg = "coreml_convert.components"
    names = None
    for node in trees().get("weights.bundles.contract", ast.Module(body=[])).body:
        if (isinstance(node, (ast.Assign, ast.AnnAssign))
                and any(isinstance(t, ast.Name) and t.id == "COMPONENT_NAMES"
                        for t in (node.targets if isinstance(node, ast.Assign) else [node.target]))):
            try:
                names = set(ast.literal_eval(node.value))
            except ValueError:
                names = None
    subs = {n for n in modules() if n.startswith(pkg + ".")}
    if names is None:
        return {n for n in subs if not n.rpartition(".")[2].startswith("_")}
    return {f"{pkg}.{n}" for n in names} & subs


def test_components_do_not_import_each_other():
    comps = component_modules()
    assert comps, "no component modules found in coreml_convert/components/"
    bad = [e for e in edges() if e.src in comps and e.dst in comps]
    assert not bad, _report("a component module of coreml_convert/components/ must not import "
                            "another; move what they share into a shared module", bad)


COMMANDS = {"mlx_model.generate", "mlx_model.edit", "mlx_model.understand", "mlx_model.chat", "mlx_model.convert",
            "mlx_model.server.cli"}


def test_only_commands_import_the_cli_kit():
    """Library code (support, components, pipelines) and the server's app take the settings
    object and its checks from mlx_model.support.image_settings, never from the CLI kit."""
    bad = [e for e in edges() if e.dst == "mlx_model.cli_common" and e.src not in COMMANDS]
    assert not bad, _report("only the commands may import mlx_model.cli_common", bad)
    assert all(c in modules() for c in COMMANDS)
