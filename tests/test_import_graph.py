"""
The package's layering: no import cycle between hf_fga's modules, nor between its subpackages.

Each module under hf_fga is parsed with `ast` (nothing is imported). An edge A → B is a module-level import in A of B
(relative or absolute, `import hf_fga.x.y` or `from .x import y`, where `y` may itself be a module); imports inside
functions and under `if TYPE_CHECKING:` do not run at import time and are left out. Two graphs are checked:

- modules: A → B as written (importing `hf_fga.a.b` also runs `hf_fga/a/__init__.py`, so A → `hf_fga.a` too,
  unless A lies inside `hf_fga.a`, whose `__init__` is then already running);
- subpackages: every module collapsed to its top-level unit under hf_fga (`hf_fga.sae`, `hf_fga.attribution`,
  `hf_fga.introspection`, …): two subpackages that import each other (even through modules that never import each
  other) are one concept split in two, which the layering forbids. The package root is left out of this graph
  (it re-exports everything and is never imported from inside).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = "hf_fga"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _module_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Import statements that run when the module is imported: top level, in `try` / `if`, not under TYPE_CHECKING."""
    found, stack = [], list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        elif isinstance(node, ast.If):
            stack.extend(node.orelse if _is_type_checking(node.test) else node.body + node.orelse)
        elif isinstance(node, ast.Try):
            stack.extend(node.body + node.orelse + node.finalbody + [n for h in node.handlers for n in h.body])
    return found


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module → the package's modules it imports at module level (see the module docstring)."""
    files = {module_name(path, root): path for path in sorted(root.rglob("*.py"))}
    package = root.name
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        current = name if is_package else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in _module_level_imports(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Import):
                bases = [alias.name for alias in node.names]
                candidates = bases
            else:
                if node.level:
                    anchor = current.split(".")
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                bases = [base]
                candidates = [base] + [f"{base}.{alias.name}" for alias in node.names]
            for base in bases:  # importing a.b.c runs a/__init__ and a/b/__init__ first
                parts = base.split(".")
                candidates += [".".join(parts[:n]) for n in range(2, len(parts))]
            targets |= {c for c in candidates if c in files and c.split(".")[0] == package}
        # the module itself and the packages that contain it are being initialised already when it runs
        ancestors = {".".join(name.split(".")[:n]) for n in range(1, name.count(".") + 2)}
        targets -= ancestors
        graph[name] = targets
    return graph


def subpackage_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The module graph collapsed to top-level units (`hf_fga.x`), self-edges and the package root left out."""

    def unit(name: str) -> str | None:
        parts = name.split(".")
        return ".".join(parts[:2]) if len(parts) > 1 else None

    collapsed: dict[str, set[str]] = {}
    for source, targets in graph.items():
        if unit(source) is None:
            continue
        edges = collapsed.setdefault(unit(source), set())
        edges |= {unit(t) for t in targets if unit(t) not in (None, unit(source))}
    return collapsed


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a list of nodes (first repeated at the end), or None; depth-first search."""
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return path[path.index(target) :] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_modules_have_no_import_cycle():
    cycle = find_cycle(import_graph(ROOT))
    assert cycle is None, f"import cycle between hf_fga modules: {' -> '.join(cycle)}"


def test_subpackages_have_no_import_cycle():
    cycle = find_cycle(subpackage_graph(import_graph(ROOT)))
    assert cycle is None, f"import cycle between hf_fga subpackages: {' -> '.join(cycle)}"


def test_introspection_is_the_bottom_layer():
    """hf_fga.introspection imports no other module of the package."""
    assert import_graph(ROOT)[f"{PACKAGE}.introspection"] == set()


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_old_sae_attribution_cycle_is_found(tmp_path):
    """The layout before issue 12: sae/activations.py read attribution/targets.py, attribution/fga.py read sae."""
    root = tmp_path / PACKAGE
    _write(
        root,
        {
            "__init__.py": "from .attribution import FeatureGradientAttribution\n",
            "sae/__init__.py": "from .modeling_sae import SparseAutoencoder\n",
            "sae/modeling_sae.py": "import torch\n",
            "sae/activations.py": "from ..attribution.targets import is_clip, vision_layers\n",
            "attribution/__init__.py": "from .feature_gradient_attribution import FeatureGradientAttribution\n",
            "attribution/targets.py": "from transformers import CLIPModel\n",
            "attribution/fga.py": "from ..sae import SparseAutoencoder\n",
            "attribution/feature_gradient_attribution.py": "from .fga import VARIANTS\n",
        },
    )
    graph = import_graph(root)
    assert f"{PACKAGE}.attribution" in graph[f"{PACKAGE}.sae.activations"]  # the package __init__ runs first
    assert find_cycle(graph) is None  # no module-level cycle: only the subpackage graph sees this one
    cycle = find_cycle(subpackage_graph(graph))
    assert cycle is not None and set(cycle) == {f"{PACKAGE}.attribution", f"{PACKAGE}.sae"}


@pytest.mark.parametrize(
    "files, expected",
    [
        (  # a direct module cycle
            {"__init__.py": "", "a.py": "from . import b\n", "b.py": "from .a import thing\n"},
            {f"{PACKAGE}.a", f"{PACKAGE}.b"},
        ),
        (  # absolute imports, through a package __init__
            {
                "__init__.py": "",
                "p/__init__.py": "from .m import x\n",
                "p/m.py": "import hf_fga.q.n\n",
                "q/__init__.py": "",
                "q/n.py": "from hf_fga.p import x\n",
            },
            {f"{PACKAGE}.p", f"{PACKAGE}.p.m", f"{PACKAGE}.q.n"},
        ),
    ],
)
def test_cycles_are_named(tmp_path, files, expected):
    root = tmp_path / PACKAGE
    _write(root, files)
    cycle = find_cycle(import_graph(root))
    assert cycle is not None and set(cycle) == expected and cycle[0] == cycle[-1]


def test_function_level_and_type_checking_imports_are_ignored(tmp_path):
    root = tmp_path / PACKAGE
    _write(
        root,
        {
            "__init__.py": "",
            "a.py": "from . import b\n",
            "b.py": (
                "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import x\n\n"
                "def f():\n    from .a import y\n"
            ),
        },
    )
    assert find_cycle(import_graph(root)) is None
