"""The package layering of ARCHITECTURE.md, read from the source: map_core imports no modality and
has no import cycle (imports inside functions and under TYPE_CHECKING count too)."""
import ast
from pathlib import Path
from typing import Dict, List, Set

ROOT = Path(__file__).resolve().parents[1]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, known: Set[str]) -> Set[str]:
    """Every module of ``known`` that ``path`` imports anywhere in it; ``from package import name``
    counts as the submodule ``package.name`` when there is one, else as the package."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return {m for m in found if m in known or m.split(".")[0] in ("image", "pointcloud")}


def import_graph(package: str) -> Dict[str, Set[str]]:
    files = sorted((ROOT / package).rglob("*.py"))
    known = {module_name(p) for p in files}
    return {module_name(p): imported_modules(p, known) - {module_name(p)} for p in files}


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """One cycle through each module that is on one (depth-first search), package faces left out:
    an ``__init__.py`` that only imports its submodules is how Python finds them, not a dependency."""
    faces = {m for m in graph if (ROOT / m.replace(".", "/") / "__init__.py").is_file()}
    found, state, stack = [], {}, []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, set()) - faces):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for module in sorted(set(graph) - faces):
        if module not in state:
            visit(module)
    return found


def test_map_core_has_no_import_cycle():
    assert cycles(import_graph("map_core")) == []


def test_the_cycle_finder_finds_one():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c", "a"]]


def test_map_core_imports_no_modality():
    leaks = {m: sorted(i for i in imports if i.split(".")[0] in ("image", "pointcloud"))
             for m, imports in import_graph("map_core").items()}
    assert {m: i for m, i in leaks.items() if i} == {}


def test_map_core_names_no_point_cloud_key():
    """The core iterates over what modalities register: no op, class-count key or fold protocol of the
    point clouds is spelt in it."""
    for path in (ROOT / "map_core").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        for word in ('"fps"', '"knn"', "cls_dim", "fewshot", '"way"', '"shot"'):
            assert word not in text, f"{path.relative_to(ROOT)} names {word}"


def test_the_torch_floor_is_stated_once_and_checked():
    import types

    import torch

    import map_core

    setup = (ROOT / "setup.py").read_text(encoding="utf-8")
    assert f'"torch>={map_core.TORCH_FLOOR}"' in setup
    assert map_core.missing_torch_apis() == []  # the installed torch has every API the code uses
    # an older torch: no RMSNorm, no custom_op, no safe_globals (torch 2.3)
    old = types.SimpleNamespace(nn=types.SimpleNamespace(), library=types.SimpleNamespace(),
                                serialization=types.SimpleNamespace(add_safe_globals=None),
                                compiler=torch.compiler)
    assert map_core.missing_torch_apis(old) == ["torch.nn.RMSNorm", "torch.library.custom_op",
                                                "torch.serialization.safe_globals"]
    for api in map_core.TORCH_APIS:  # each listed API is one the code calls
        used = any(f"torch.{api}" in p.read_text(encoding="utf-8") or f"nn.{api.split('.')[-1]}(" in
                   p.read_text(encoding="utf-8") for p in (ROOT / "map_core").rglob("*.py") if p.name != "__init__.py")
        assert used, api
