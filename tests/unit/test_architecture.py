"""The package's layering, checked on the import graph read from the source (no module is imported).

Every ``import`` of every module under ``balancer/`` counts, those inside functions too (a lazy import
is still a dependency, only a hidden one); imports under ``if TYPE_CHECKING:`` do not, as they never
run. The rules say which way dependencies point: contracts at the bottom import nothing of the
balancer, the launcher (run on compute nodes) only itself, the command line sits on top.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterable
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "balancer"

# Modules every layer may import: they import nothing of the balancer themselves.
CONTRACTS = (
    "balancer.units",
    "balancer.config.schema",
    "balancer.launcher.contract",
    "balancer.observe.events",
    "balancer.observe.histogram",  # a leaf too: the profiler and the dashboard bin durations alike
)

# A package (prefix) -> the prefixes its modules may import (itself included).
ALLOWED: dict[str, tuple[str, ...]] = {
    "balancer.launcher": ("balancer.launcher",),
    "balancer.backends": (
        "balancer.backends",
        "balancer.config.schema",
        "balancer.units",
        "balancer.launcher",
        "balancer.profiling.gpus",
        "balancer.observe.events",
    ),
    "balancer.http": ("balancer.http",),
    "balancer.policy": ("balancer.policy", "balancer.config.schema", "balancer.units"),
}

# Data flows one way (client -> frontend -> calls -> dispatcher -> pool -> server), so the folders form
# layers, bottom first; a module may import its own folder, the contracts and lower layers only. This
# is the "no upward import" rule: e.g. the pool may not import the call path (it did, for the
# dispatcher), nor anything below the command line the runner or the app.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("balancer.launcher", "balancer.http"),
    ("balancer.policy", "balancer.observe", "balancer.profiling"),
    ("balancer.backends",),
    ("balancer.config", "balancer.pool", "balancer.capacity"),
    ("balancer.ops", "balancer.analysis"),
    ("balancer.control", "balancer.sim"),
    ("balancer.calls",),
    ("balancer.routes",),
    ("balancer.app",),
    ("balancer.runner",),
    ("balancer.cli", "balancer.demo", "balancer.session"),
)

# The top of the stack: a module of it -> who may import it. The runner owns one balancer's life
# cycle and builds the app's wiring (``app.Balancer``) inside it, so it may import the app; the app
# never imports the runner, and nothing below the top imports either.
TOP = ("balancer.cli", "balancer.demo", "balancer.session")  # session: the Python API
TOP_ONLY: dict[str, tuple[str, ...]] = {
    "balancer.cli": TOP,
    "balancer.runner": TOP,
    "balancer.app": (*TOP, "balancer.runner"),
}


def _under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imported(tree: ast.AST, module: str, is_package: bool) -> Iterable[str]:
    """Names of the modules (or module attributes) ``tree`` imports, TYPE_CHECKING blocks skipped."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = module.split(".") if is_package else module.split(".")[:-1]
                pkg = pkg[: len(pkg) - node.level + 1]
                base = ".".join([*pkg, base] if base else pkg)
            yield base
            yield from (f"{base}.{a.name}" for a in node.names)
        stack.extend(ast.iter_child_nodes(node))


@cache
def graph() -> dict[str, set[str]]:
    """Module -> the balancer modules it imports."""
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    out: dict[str, set[str]] = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text(), str(path))
        deps = {m for m in _imported(tree, name, path.name == "__init__.py") if m in files}
        deps.discard(name)
        # ``from balancer.x import y`` names both balancer.x and balancer.x.y: keep the most precise.
        packages = {d for d in deps if files[d].name == "__init__.py"}
        deps -= {d for d in packages if any(o.startswith(d + ".") for o in deps)}
        out[name] = deps
    return out


def _cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for root in sorted(g):
        if root in index:
            continue
        work = [(root, iter(sorted(g[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(g[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def _violations(allowed_for: dict[str, tuple[str, ...]]) -> list[str]:
    bad = []
    for mod, deps in sorted(graph().items()):
        for prefix, allowed in allowed_for.items():
            if _under(mod, prefix):
                bad += [f"{mod} -> {d}" for d in sorted(deps) if not any(_under(d, a) for a in allowed)]
    return bad


def test_the_graph_sees_the_package() -> None:
    g = graph()
    assert "balancer.launcher.main" in g and "balancer.config.parse" in g
    assert "balancer.config.schema" in g["balancer.config.parse"]


def test_the_cycle_finder_names_a_cycle() -> None:
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert _cycles(g) == [["a", "b", "c"]]


def test_no_import_cycles() -> None:
    cycles = _cycles(graph())
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_contract_modules_import_nothing_of_the_balancer() -> None:
    g = graph()
    bad = [f"{c} -> {d}" for c in CONTRACTS for d in sorted(g[c])]
    assert not bad, bad


def test_layers_import_only_what_they_may() -> None:
    bad = _violations(ALLOWED)
    assert not bad, "\n".join(bad)


def _layer(module: str) -> tuple[int, str] | None:
    if module in CONTRACTS or module == "balancer":
        return None
    for i, folders in enumerate(LAYERS):
        for f in folders:
            if _under(module, f):
                return i, f
    raise AssertionError(f"{module} is in no layer: add its folder to LAYERS")


def test_every_import_points_down_the_layers() -> None:
    bad = []
    for mod, deps in sorted(graph().items()):
        here = _layer(mod)
        for d in sorted(deps):
            there = _layer(d)
            if here is None or there is None or there[1] == here[1]:
                continue
            if there[0] >= here[0]:
                bad.append(f"{mod} (layer {here[0]}) -> {d} (layer {there[0]})")
    assert not bad, "upward or sideways imports:\n" + "\n".join(bad)


def test_the_layer_rule_catches_an_upward_import() -> None:
    pool, calls = _layer("balancer.pool.pool"), _layer("balancer.calls.path")
    assert pool is not None and calls is not None and pool[0] < calls[0]
    assert _layer("balancer.units") is None


def test_only_the_top_imports_the_command_line_app_and_runner() -> None:
    bad = [
        f"{mod} -> {d}"
        for mod, deps in sorted(graph().items())
        for d in sorted(deps)
        for top, importers in TOP_ONLY.items()
        if _under(d, top) and not any(_under(mod, i) for i in (*importers, top))
    ]
    assert not bad, "\n".join(bad)


def test_the_launcher_loads_nothing_of_the_balancer_but_itself() -> None:
    """On a compute node ``python -m balancer.launcher`` must not pay for (or depend on) the
    configuration, policy or backends, nor numpy or aiohttp (its HTTP client is ``launcher.client``)."""
    code = "import balancer.launcher.main, sys; print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    loaded = out.stdout.split()
    banned = ("balancer.config", "balancer.policy", "balancer.backends", "numpy", "aiohttp")
    bad = [m for m in loaded if any(_under(m, b) for b in banned)]
    assert not bad, bad
    assert "balancer.launcher.contract" in loaded
