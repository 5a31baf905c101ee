"""The pipeline is one-way: read from the source (imports inside functions included), a stage imports only the
stages below it. ops know nothing of the IR, the passes or the back ends; passes know no back end."""
from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parents[1]


def _stage(module: str) -> str:
    """archdsl.passes.fold_bn -> archdsl.passes; codegen.triton.plan -> codegen.triton; archdsl.quant -> itself."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else parts[0]


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
    return {m for m in found if m.split(".")[0] in ("archdsl", "codegen")}


def _graph() -> nx.DiGraph:
    """stage -> stages it imports, over every module of archdsl/ and codegen/."""
    G = nx.DiGraph()
    for path in [*ROOT.glob("archdsl/**/*.py"), *ROOT.glob("codegen/**/*.py")]:
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        src = _stage(module)
        for target in _imports(path):
            if _stage(target) != src:
                G.add_edge(src, _stage(target), via=module)
    return G


FRONT_DOORS = {"archdsl.api", "archdsl.cli", "archdsl.__init__"}  # the user's entry points import every stage


def test_no_package_imports_another_that_imports_it_back():
    G = _graph()
    G.remove_nodes_from(FRONT_DOORS | {"archdsl.errors"})  # errors: imported by every stage, imports none
    assert [sorted(c) for c in nx.simple_cycles(G)] == []


def test_passes_never_import_a_back_end():
    G = _graph()
    bad = [(G.edges[e]["via"], e[1]) for e in G.edges if e[0] == "archdsl.passes" and e[1].startswith("codegen")]
    assert bad == []


def test_the_op_registry_stands_below_the_ir_the_passes_and_the_back_ends():
    G = _graph()
    above = ("archdsl.ir", "archdsl.passes", "archdsl.frontend", "archdsl.search", "codegen")
    bad = [(G.edges[e]["via"], e[1]) for e in G.edges if e[0] == "archdsl.ops" and e[1].startswith(above)]
    assert bad == []
    assert ("archdsl.passes", "archdsl.ops") in G.edges  # the check reads real imports
