"""The house rules of docs/architecture.md, checked on the source: imports run downward only, no module imports
itself back through others, and no new function grows past 100 lines.

Imports inside functions count too: they are how heavy dependencies stay out of `--help`, and they must not be how
a cycle or an upward dependency hides.
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

PACKAGE = Path(__file__).resolve().parents[1] / "sonosynth"

# Floors, lowest first; a module may import from its own floor or any floor below, never from one above.
FLOORS: list[tuple[str, ...]] = [
    ("errors", "seeds", "files", "settings", "version", "progress", "devices"),
    ("data", "augment", "depth_gain", "phantom", "metrics"),
    ("models", "segmentation.nets"),
    ("training",),
    ("diffusion", "autoencoder", "segmentation", "classification"),
    ("stable_diffusion",),
    ("synthesis", "generator_training"),
    ("evaluation",),
    ("app", "commands", "cli", "demo", "__main__"),
]

# Functions allowed over 100 lines: the Gradio wiring, one block of layout by design.
LONG_FUNCTIONS = {("app/ui.py", "build_app")}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(path: Path, known: set[str]) -> set[str]:
    """The sonosynth modules `path` imports anywhere in it (module level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sonosynth"):
            candidates = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            continue
        found |= {c.removeprefix("sonosynth.") for c in candidates if c.startswith("sonosynth.")} & known
    return found


def floor(module: str) -> int:
    best = None
    for number, names in enumerate(FLOORS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and (best is None or len(name) > best[1]):
                best = (number, len(name))
    assert best is not None, f"sonosynth.{module} is on no floor: add it to FLOORS (and docs/architecture.md)"
    return best[0]


def graph() -> nx.DiGraph:
    found = modules()
    known = set(found) - {""}
    edges = nx.DiGraph()
    for name, path in found.items():
        edges.add_node(name)
        edges.add_edges_from((name, target) for target in imports(path, known) if target != name)
    return edges


def test_no_import_cycles() -> None:
    cycles = list(nx.simple_cycles(graph()))
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_imports_run_downward() -> None:
    upward = [f"{a} (floor {floor(a)}) imports {b} (floor {floor(b)})"
              for a, b in graph().edges if a and floor(b) > floor(a)]
    assert not upward, "\n".join(upward)


def test_no_long_functions() -> None:
    long = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno >= 100:
                long.add((str(path.relative_to(PACKAGE)), node.name))
    assert long <= LONG_FUNCTIONS, f"functions over 100 lines: {sorted(long - LONG_FUNCTIONS)}"


def test_the_rules_can_fail(tmp_path: Path) -> None:
    """The checks see a function-level import and a made-up upward one."""
    source = tmp_path / "x.py"
    source.write_text("def f():\n    from sonosynth.evaluation.report import worth_rows\n")
    assert imports(source, set(modules())) == {"evaluation.report"}
    assert floor("data.format") < floor("evaluation.report")
