"""A workload class before a model has ever run: static features of its Python server script.

As job classification from source does, the script's syntax tree is counted, never run: calls and
constructs that point at each class score for it, the top score wins (ties: wait < io < memory <
cpu, the cheaper mistake first). It is a prior only: ``workload.prior`` at start, replaced by the
measured class (``workload``) once a model's servers have been busy for a few samples.

- cpu: loops and arithmetic in them, numpy/scipy linear algebra and math calls
- memory: large allocations (``np.zeros/ones/empty/full/random`` or ``bytearray`` with a size of
  at least ``BIG_ELEMENTS``, list repetition), copies (``copy``, ``np.copy``, ``concatenate``)
- io: ``open``, ``write``, ``flush``, ``fsync``, ``os``/``shutil`` file calls, ``np.save``/``load``
- wait: ``time.sleep``, ``asyncio.sleep``, sockets, HTTP clients, ``subprocess``, ``select``
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BIG_ELEMENTS = 10_000_000  # an allocation this large (elements or bytes) is a memory feature (~80 MB)

_CPU_CALLS = {"dot", "matmul", "eig", "eigh", "eigvals", "svd", "solve", "inv", "fft", "exp", "sin",
              "cos", "sqrt", "einsum", "cholesky", "det", "lstsq", "pow", "factorial", "isprime"}  # fmt: skip
_ALLOC_CALLS = {"zeros", "ones", "empty", "full", "rand", "randn", "random", "standard_normal", "bytearray",
                "arange", "bytes"}  # fmt: skip
_COPY_CALLS = {"copy", "deepcopy", "concatenate", "copyto", "tobytes", "stack", "vstack", "hstack", "tile"}
_IO_CALLS = {"open", "write", "writelines", "flush", "fsync", "fdatasync", "read", "readinto", "pwrite",
             "pread", "save", "savez", "load", "unlink", "remove", "rename", "replace", "makedirs",
             "copyfile", "rmtree", "write_bytes", "write_text", "read_bytes", "read_text", "tofile",
             "fromfile", "memmap"}  # fmt: skip
_WAIT_CALLS = {"sleep", "socket", "create_connection", "connect", "recv", "accept", "urlopen", "get",
               "post", "request", "run", "check_output", "Popen", "communicate", "select", "wait",
               "poll", "gethostbyname", "wait_for"}  # fmt: skip
_WAIT_MODULES = {"socket", "requests", "urllib", "http", "httpx", "aiohttp", "subprocess", "select"}
_IO_MODULES = {"shutil", "tempfile", "h5py", "netCDF4", "sqlite3"}


@dataclass(frozen=True)
class Prior:
    cls: str | None  # None: no Python script, or nothing counted
    counts: dict[str, int]
    script: str | None
    why: str


def _size(node: ast.expr, consts: dict[str, int]) -> int:
    """The element count an allocation's size argument stands for, where the script says it."""
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
        return node.value
    if isinstance(node, ast.Name):
        return consts.get(node.id, 0)
    if isinstance(node, (ast.Tuple, ast.List)):
        n = 1
        for e in node.elts:
            n *= max(_size(e, consts), 1)
        return n
    if isinstance(node, ast.Call) and _name(node.func) in ("int", "float") and node.args:
        arg = node.args[0]  # int(os.environ.get("N", "512")): the default the script runs with
        if isinstance(arg, ast.Call) and _name(arg.func) in ("get", "getenv") and len(arg.args) == 2:
            arg = arg.args[1]
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            try:
                return int(float(arg.value))
            except ValueError:
                return 0
        return _size(arg, consts)
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Mult, ast.Pow, ast.LShift, ast.FloorDiv)):
        a, b = _size(node.left, consts), _size(node.right, consts)
        if isinstance(node.op, ast.Mult):
            return a * b
        if isinstance(node.op, ast.FloorDiv):
            return a // b if b else 0
        if isinstance(node.op, ast.LShift):
            return a << min(b, 62)
        return a ** min(b, 8) if a < 2**16 else 0
    return 0


def _name(func: ast.expr) -> str:
    if isinstance(func, ast.Attribute):
        return func.attr
    if isinstance(func, ast.Name):
        return func.id
    return ""


def _module_constants(tree: ast.AST) -> dict[str, int]:
    """Module-level size constants (``N = 50_000_000``), so ``np.zeros(N)`` counts as big."""
    consts: dict[str, int] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            n = _size(node.value, consts)
            if n:
                consts[node.targets[0].id] = n
    return consts


def _count_import(node: ast.Import | ast.ImportFrom, counts: dict[str, int]) -> None:
    mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
    for m in mods:
        root = m.split(".")[0]
        counts["wait"] += root in _WAIT_MODULES
        counts["io"] += root in _IO_MODULES


def _count_call(node: ast.Call, counts: dict[str, int], consts: dict[str, int]) -> None:
    name = _name(node.func)
    if name in _CPU_CALLS:
        counts["cpu"] += 2
    if name in _ALLOC_CALLS and node.args and _size(node.args[0], consts) >= BIG_ELEMENTS:
        counts["memory"] += 4
    if name in _COPY_CALLS:
        counts["memory"] += 1
    if name in _IO_CALLS:
        counts["io"] += 2 if name in ("fsync", "fdatasync", "flush") else 1
    if name in _WAIT_CALLS:
        counts["wait"] += 3 if name == "sleep" else 1


def count_features(source: str) -> dict[str, int]:
    """Per class, how many features of it the source has."""
    tree = ast.parse(source)
    counts = dict.fromkeys(("cpu", "memory", "io", "wait"), 0)
    consts = _module_constants(tree)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            _count_import(node, counts)
        elif isinstance(node, (ast.For, ast.While)):
            arith = sum(isinstance(n, (ast.BinOp, ast.AugAssign)) for n in ast.walk(node))
            counts["cpu"] += 1 + min(arith, 5)
        elif isinstance(node, ast.ListComp | ast.GeneratorExp):
            counts["cpu"] += 1
        elif isinstance(node, ast.Call):
            _count_call(node, counts, consts)
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
            if isinstance(node.left, ast.List) and _size(node.right, consts) >= BIG_ELEMENTS:
                counts["memory"] += 4  # [0] * N
        elif isinstance(node, ast.With):
            opens = [i.context_expr for i in node.items if isinstance(i.context_expr, ast.Call)]
            counts["io"] += sum(_name(c.func) == "open" for c in opens)
    return counts


def script_of(command: list[str], cwd: str | None = None) -> Path | None:
    """The Python script a server command runs (``python x.py``, ``x.py``), if it is one."""
    base = Path(cwd) if cwd else Path.cwd()
    for i, arg in enumerate(command):
        if arg.endswith(".py"):
            p = Path(arg)
            p = p if p.is_absolute() else base / p
            return p if p.is_file() else None
        if arg == "-m" and i + 1 < len(command):
            return None  # a module: its file is wherever the interpreter finds it; no guess
    return None


_ORDER = ("cpu", "memory", "io", "wait")  # ties go to the later one: see the module docstring


def prior_of_source(source: str, script: str | None = None) -> Prior:
    counts = count_features(source)
    if not any(counts.values()):
        return Prior(None, counts, script, "no feature of any class in the source")
    best = max(_ORDER, key=lambda c: (counts[c], _ORDER.index(c)))
    return Prior(best, counts, script, f"{counts[best]} {best} features of {sum(counts.values())}")


def prior_of(command: list[str], cwd: str | None = None) -> Prior:
    """The prior of a server command; blocking (reads a file): call it off the event loop."""
    script = script_of(command, cwd)
    if script is None:
        return Prior(None, {}, None, "the command runs no Python script")
    try:
        return prior_of_source(script.read_text(errors="replace"), str(script))
    except (OSError, SyntaxError, ValueError) as exc:
        return Prior(None, {}, str(script), f"cannot read the script: {exc}")


def as_fields(p: Prior) -> dict[str, Any]:
    return {"cls": p.cls, "counts": p.counts, "script": p.script, "why": p.why}
