"""The package's layers as the README draws them: the method ← experiments ← front ends.

A module may import from its own layer or from the layers before it, never from a later one, so
the method modules read on their own (README "How the code is layered")."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "dkm"
LAYERS = {
    1: {"rows", "spectral", "train", "kmeans", "sharing", "accounting", "export", "energy",
        "inventory", "plan", "planner", "authors", "models", "data", "evaluation", "checkpoint",
        "coding", "_checks", "_io", "_threads", "_allocator", "accelerators", "energy_shares",
        "_kmeans_numba", "distributed"},
    2: {"profiles", "runs", "pipeline", "sweep", "study", "zigzag_ref", "nn_dataflow_ref",
        "energy_validation", "energy_savings", "ray_sweep"},
    3: {"cli", "figdata", "plots", "sliders", "saving", "tables", "notebooks", "book", "__main__"},
}  # fmt: skip
LAYER = {name: n for n, names in LAYERS.items() for name in names}


def _imports(path: Path) -> set:
    """The dkm modules that `path` imports (relative imports or `dkm.x`), anywhere in the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                found.add(node.module.split(".")[0])
            elif node.level == 1:
                found.update(alias.name for alias in node.names)
            elif (node.module or "").startswith("dkm."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("dkm."))
    return found


def test_every_module_has_a_layer():
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    assert modules == set(LAYER), f"unplaced: {modules - set(LAYER)}, gone: {set(LAYER) - modules}"


@pytest.mark.parametrize("module", sorted(LAYER))
def test_imports_go_to_earlier_layers_only(module):
    later = {m for m in _imports(PACKAGE / f"{module}.py") if LAYER.get(m, 0) > LAYER[module]}
    assert not later, f"dkm.{module} (layer {LAYER[module]}) imports later layers: {sorted(later)}"
