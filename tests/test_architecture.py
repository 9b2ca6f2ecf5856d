"""The package's layers, checked: no import cycles, and no module imports a layer above its own.

Every import counts, also the ones inside functions (a lazy import is still a dependency).
Layers, bottom to top (a module may import its own layer and those below):

0. ``fedbarrier.errors``, ``fedbarrier.config``, ``fedbarrier.seeds``: everything uses them
1. ``fedbarrier.data``, ``fedbarrier.learn``, ``partitions``: data and plain PyTorch
2. ``fedbarrier.measure``: the barrier math and its hook (no Flower, no disk)
3. ``fedbarrier.fl.protocol``, ``fedbarrier.runtime``: the wire keys; disk and process machinery
4. ``strategies``: Flower strategies, which speak the protocol; ``fedbarrier.plots``: drawing
   from a run's records (a run draws its plots when it ends); ``fedbarrier.outputs``: tables,
   TensorBoard events and progress from records
5. ``fedbarrier.fl``: the round pipeline, the adapter and Flower's apps
6. the commands: ``fedbarrier.cli``, ``compare``, ``offline``, ``analysis``, and the Python API
   (``fedbarrier.api``)
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("fedbarrier", "strategies", "partitions")

LAYERS: list[tuple[str, int]] = [  # the longest matching prefix decides
    ("fedbarrier.errors", 0), ("fedbarrier.config", 0), ("fedbarrier.seeds", 0),
    ("fedbarrier.data", 1), ("fedbarrier.learn", 1), ("partitions", 1),
    ("fedbarrier.measure", 2),
    ("fedbarrier.fl.protocol", 3), ("fedbarrier.runtime", 3),
    ("strategies", 4), ("fedbarrier.plots", 4), ("fedbarrier.outputs", 4),
    ("fedbarrier.fl", 5),
    ("fedbarrier.cli", 6), ("fedbarrier.compare", 6), ("fedbarrier.offline", 6),
    ("fedbarrier.analysis", 6), ("fedbarrier.__main__", 6), ("fedbarrier.api", 6),
    ("fedbarrier", 0),  # the package's own __init__
]


def layer(module: str) -> int:
    matches = [(len(prefix), rank) for prefix, rank in LAYERS
               if module == prefix or module.startswith(prefix + ".")]
    assert matches, f"{module} is in no layer: add it to LAYERS"
    return max(matches)[1]


def modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def imports_of(module: str, path: Path, known: set[str]) -> set[str]:
    """The project modules ``module`` imports (``from a import b`` counts ``a.b`` if a module)."""
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            names = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for name in names:
            # the longest known module that the name is or lies in
            candidates = [m for m in known if name == m or name.startswith(m + ".")]
            if candidates:
                found.add(max(candidates, key=len))
    found.discard(module)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {m: imports_of(m, p, known) for m, p in mods.items()}


def test_every_module_has_a_layer() -> None:
    for module in modules():
        layer(module)


def test_no_module_imports_a_layer_above_its_own() -> None:
    upward = sorted(f"{m} (layer {layer(m)}) imports {d} (layer {layer(d)})"
                    for m, deps in graph().items() for d in deps
                    # a package's __init__ may re-export what lies inside it
                    if layer(d) > layer(m) and not d.startswith(m + "."))
    assert upward == []


def find_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    cycles = []
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    return cycles


def test_no_import_cycles() -> None:
    # a package's __init__ imports its contents; its contents importing the package's names
    # back is how Python packages re-export, not a cycle between modules: check modules only
    edges = {m: {d for d in ds if not m.startswith(d + ".") and not d.startswith(m + ".")}
             for m, ds in graph().items()}
    assert find_cycles(edges) == []


def test_the_checker_sees_a_cycle_and_an_upward_import(tmp_path: Path) -> None:
    # The checks above must be able to fail: a hand-made package with both faults.
    (tmp_path / "a.py").write_text("from pkg import b\n")
    (tmp_path / "b.py").write_text("def f():\n    import pkg.a\n")
    known = {"pkg.a", "pkg.b"}
    assert imports_of("pkg.a", tmp_path / "a.py", known) == {"pkg.b"}
    assert imports_of("pkg.b", tmp_path / "b.py", known) == {"pkg.a"}
    assert find_cycles({"pkg.a": {"pkg.b"}, "pkg.b": {"pkg.a"}}) == [["pkg.a", "pkg.b", "pkg.a"]]
    assert layer("fedbarrier.measure.barriers") < layer("fedbarrier.fl.round")
