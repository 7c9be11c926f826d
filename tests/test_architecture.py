"""The package's layer order, the absence of import cycles, and a size limit per module.

Every module of ``proxygap/`` is parsed with :mod:`ast` (nothing is imported), and every import
statement in it counts: top-level ones, those inside functions, under ``if TYPE_CHECKING:`` or in
``try`` blocks, and ``importlib.import_module("proxygap....")`` with a literal name.

- Layers: a module may import modules of its own layer or of lower layers, never of a higher one.
- Cycles: the module-to-module import graph has no strongly connected component with more than
  one module (and no module imports itself).
- Size: no library module is longer than ``MAX_LINES`` lines.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "proxygap"
PACKAGE_DIR = ROOT / PACKAGE
MAX_LINES = 400

# Lower layers never import from higher ones. A name covers the module of that name and every
# module below it (``proxygap.optimize`` covers ``proxygap.optimize.rl``), except the package
# itself: ``proxygap`` means only ``proxygap/__init__.py``, the public API, at the top.
LAYERS: dict[int, tuple[str, ...]] = {
    0: ("proxygap.schema", "proxygap.errors", "proxygap.seeds"),
    1: ("proxygap.estimators", "proxygap.losses", "proxygap.analysis"),
    2: ("proxygap.models", "proxygap.sampling", "proxygap.data", "proxygap.store"),
    3: ("proxygap.tasks", "proxygap.rewards"),
    4: ("proxygap.mitigations", "proxygap.monitor"),
    5: ("proxygap.optimize",),
    6: ("proxygap.config", "proxygap.study", "proxygap.report", "proxygap.runs"),
    7: (
        "proxygap.cli",
        "proxygap.commands",
        "proxygap.sweep",
        "proxygap.integrations",
        "proxygap",
    ),
}
LAYER_OF: dict[str, int] = {name: layer for layer, names in LAYERS.items() for name in names}


def layer_of(module: str) -> int | None:
    """The layer of ``module`` (its longest table entry), or None if the table does not cover it."""
    if module == PACKAGE:
        return LAYER_OF[PACKAGE]
    parts = module.split(".")
    for end in range(len(parts), 1, -1):  # never down to the bare package name
        layer = LAYER_OF.get(".".join(parts[:end]))
        if layer is not None:
            return layer
    return None


def module_name(path: Path, package_dir: Path = PACKAGE_DIR) -> str:
    """``proxygap/a/b.py -> proxygap.a.b``; ``proxygap/a/__init__.py -> proxygap.a``."""
    rel = path.relative_to(package_dir.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_modules(package_dir: Path = PACKAGE_DIR) -> dict[str, Path]:
    """Every module of the package by dotted name."""
    return {module_name(p, package_dir): p for p in sorted(package_dir.rglob("*.py"))}


@dataclass(frozen=True)
class Import:
    """One import of a package module: who imports what, and where."""

    source: str  # the importing module
    target: str  # the imported module (a package's ``__init__`` when a name is taken from it)
    path: Path
    line: int

    @property
    def where(self) -> str:
        try:
            shown = self.path.relative_to(ROOT)
        except ValueError:
            shown = self.path
        return f"{shown}:{self.line}"


def _resolve_relative(module: str, is_package: bool, level: int, name: str | None) -> str:
    """The absolute name of ``from <level dots><name> import ...`` inside ``module``."""
    parts = module.split(".")
    base = parts if is_package else parts[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join([*base, name] if name else base)


def imports_of(
    source: str, tree: ast.AST, path: Path, known: Iterable[str], *, is_package: bool = False
) -> list[Import]:
    """Every import of a ``proxygap`` module in ``tree`` (the parsed module ``source``).

    ``from X import Y`` counts as an import of ``X.Y`` when that is a module of the package
    (``from proxygap.tasks import reviews``), otherwise of ``X`` (a name defined in ``X``).
    """
    known = set(known)
    found: list[Import] = []

    def add(target: str, node: ast.AST) -> None:
        imp = Import(source, target, path, getattr(node, "lineno", 0))
        if (target == PACKAGE or target.startswith(PACKAGE + ".")) and imp not in found:
            found.append(imp)  # one per statement and target: ``from m import a, b`` is one

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = _resolve_relative(source, is_package, node.level, node.module)
            else:
                base = node.module or ""
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                add(sub if sub in known else base, node)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and (getattr(node.func, "attr", None) or getattr(node.func, "id", None))
            == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            add(node.args[0].value, node)
    return found


def all_imports(package_dir: Path = PACKAGE_DIR) -> list[Import]:
    modules = package_modules(package_dir)
    out: list[Import] = []
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        out += imports_of(name, tree, path, modules, is_package=path.name == "__init__.py")
    return out


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of ``graph`` (Tarjan), each sorted, in no set order."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        # iterative depth-first search: (node, iterator over its successors)
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, successors = work[-1]
            advanced = False
            for nxt in successors:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph.get(nxt, ())))))
                    advanced = True
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(sorted(component))
    return components


def find_cycles(imports: list[Import], modules: Iterable[str]) -> list[str]:
    """One message per import cycle: its modules and the imports that close it."""
    modules = set(modules)
    graph: dict[str, set[str]] = {m: set() for m in modules}
    by_edge: dict[tuple[str, str], Import] = {}
    for imp in imports:
        if imp.target in modules:
            graph[imp.source].add(imp.target)
            by_edge.setdefault((imp.source, imp.target), imp)
    messages = []
    for component in strongly_connected(graph):
        members = set(component)
        if len(component) == 1 and component[0] not in graph[component[0]]:
            continue
        edges = sorted(
            (imp for (a, b), imp in by_edge.items() if a in members and b in members),
            key=lambda i: (i.source, i.target),
        )
        lines = "\n".join(f"    {i.where}: {i.source} -> {i.target}" for i in edges)
        messages.append(f"import cycle between {', '.join(component)}:\n{lines}")
    return messages


def upward_imports(imports: list[Import]) -> list[str]:
    messages = []
    for imp in imports:
        src, dst = layer_of(imp.source), layer_of(imp.target)
        if src is not None and dst is not None and dst > src:
            messages.append(
                f"{imp.where}: {imp.source} (layer {src}) -> {imp.target} (layer {dst})"
            )
    return messages


# --- the checks on the package ----------------------------------------------------------------


def test_every_module_has_a_layer():
    missing = [
        f"{path.relative_to(ROOT)}: {name} is in no layer"
        for name, path in package_modules().items()
        if layer_of(name) is None
    ]
    missing += [
        f"{imp.where}: {imp.source} -> {imp.target}, which is in no layer"
        for imp in all_imports()
        if layer_of(imp.target) is None
    ]
    assert not missing, (
        "add these modules (or their package) to LAYERS in tests/test_architecture.py and to the "
        "README's layout section:\n" + "\n".join(missing)
    )


def test_no_module_imports_from_a_higher_layer():
    problems = upward_imports(all_imports())
    assert not problems, (
        "imports from a higher layer (move the code down, or pass it in as an argument):\n"
        + "\n".join(problems)
    )


def test_no_import_cycles():
    cycles = find_cycles(all_imports(), package_modules())
    assert not cycles, "\n".join(cycles)


def test_no_library_module_is_too_long():
    long = [
        f"{path.relative_to(ROOT)}: {n} lines"
        for path in package_modules().values()
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    ]
    assert not long, f"modules over {MAX_LINES} lines (split them by concept):\n" + "\n".join(long)


# --- the checker itself, on made-up modules ---------------------------------------------------


def test_layer_lookup():
    assert layer_of("proxygap") == 7
    assert layer_of("proxygap.schema") == 0
    assert layer_of("proxygap.optimize.rl") == 5
    assert layer_of("proxygap.tasks.reviews.build") == 3
    assert layer_of("proxygap.unknown") is None
    assert layer_of("proxygap.schemas") is None  # a prefix of a name is not a package


def _imports(source: str, text: str, known: set[str], *, is_package: bool = False) -> set[str]:
    tree = ast.parse(text)
    return {i.target for i in imports_of(source, tree, Path("x.py"), known, is_package=is_package)}


def test_every_kind_of_import_is_seen():
    known = {
        "proxygap.tasks",
        "proxygap.tasks.reviews",
        "proxygap.config",
        "proxygap.study.env",
        "proxygap.optimize.sibling",
    }
    text = """
from __future__ import annotations
import numpy
from typing import TYPE_CHECKING
import proxygap.schema
from proxygap.tasks import reviews, get_task
from proxygap import config
from . import sibling
from ..data.preferences import Pairs
if TYPE_CHECKING:
    from proxygap.study.env import Env
def f():
    from proxygap.sweep import run
    import importlib
    return importlib.import_module("proxygap.report.render")
"""
    assert _imports("proxygap.optimize.rl", text, known) == {
        "proxygap.schema",
        "proxygap.tasks.reviews",
        "proxygap.tasks",
        "proxygap.config",
        "proxygap.optimize.sibling",
        "proxygap.data.preferences",
        "proxygap.study.env",
        "proxygap.sweep",
        "proxygap.report.render",
    }
    # in a package's __init__, one dot is the package itself
    assert _imports("proxygap.optimize", "from .rl import x", set(), is_package=True) == {
        "proxygap.optimize.rl"
    }


def test_upward_imports_and_cycles_are_reported_with_their_place():
    p = Path("proxygap/x.py")
    imports = [
        Import("proxygap.losses.a", "proxygap.optimize.b", p, 3),  # 1 -> 5: upward
        Import("proxygap.optimize.b", "proxygap.losses.a", p, 4),
        Import("proxygap.optimize.b", "proxygap.optimize.c", p, 5),
        Import("proxygap.optimize.c", "proxygap.optimize.b", p, 6),
        Import("proxygap.optimize.d", "proxygap.optimize.d", p, 7),  # imports itself
        Import("proxygap.optimize.e", "proxygap.losses.a", p, 8),  # downward, no cycle
    ]
    up = upward_imports(imports)
    assert up == [
        f"{p}:3: proxygap.losses.a (layer 1) -> proxygap.optimize.b (layer 5)",
    ]
    modules = {i.source for i in imports} | {i.target for i in imports}
    cycles = find_cycles(imports, modules)
    assert len(cycles) == 2
    big = next(c for c in cycles if "proxygap.optimize.c" in c)
    assert big.startswith(
        "import cycle between proxygap.losses.a, proxygap.optimize.b, proxygap.optimize.c:"
    )
    assert f"{p}:6: proxygap.optimize.c -> proxygap.optimize.b" in big
    assert any(c.startswith("import cycle between proxygap.optimize.d:") for c in cycles)
