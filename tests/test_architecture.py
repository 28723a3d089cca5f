"""The import graph, checked: no circles, and the floors the layers stand on.

Every import counts, those inside functions too (a lazy import still ties two modules
together). ``shared`` is the floor: it imports no other package of the product. ``device/`` (the
runtime an app embeds, and its own tools) imports only ``shared``: training and export
are the cloud's (``cloud/training/``). ``cloud/`` never imports the simulator: the
offline evaluations are the simulator's (``simulator/bench/``), above both.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("cloud", "device", "shared", "simulator", "protos")


def _module(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return "dcrec." + ".".join(parts)


def _graph() -> dict[str, set[str]]:
    """module -> the product modules it imports (a ``from pkg import sub`` counts the submodule)."""
    files = {_module(p): p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")
             if "proto" not in p.relative_to(REPO).parts[1:2] or pkg != "shared"}
    graph: dict[str, set[str]] = {}
    for mod, path in files.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("dcrec."):
                deps.add(node.module)
                deps.update(f"{node.module}.{a.name}" for a in node.names
                            if f"{node.module}.{a.name}" in files)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.startswith("dcrec."))
        graph[mod] = {d for d in deps if d in files and d != mod}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_circles() -> None:
    assert _cycles(_graph()) == []


def test_shared_imports_no_other_package_of_the_product() -> None:
    bad = {m: sorted(d for d in deps if not d.startswith(("dcrec.shared", "dcrec.protos")))
           for m, deps in _graph().items() if m.startswith("dcrec.shared")}
    # the command line registers every area's commands by name (strings), not imports
    assert {m: d for m, d in bad.items() if d} == {}


def test_device_imports_only_shared() -> None:
    bad = {m: sorted(d for d in deps if not d.startswith(("dcrec.shared", "dcrec.device", "dcrec.protos")))
           for m, deps in _graph().items() if m.startswith("dcrec.device")}
    assert {m: d for m, d in bad.items() if d} == {}


def test_cloud_never_imports_the_simulator() -> None:
    bad = {m: sorted(d for d in deps if d.startswith("dcrec.simulator"))
           for m, deps in _graph().items() if m.startswith("dcrec.cloud")}
    assert {m: d for m, d in bad.items() if d} == {}
