"""The import contract of the package layout, checked on the source (no imports run):

- data/, runtime/, retrieval/, evaluation/, cli/ and the top-level modules (the API too) never import torch, torchvision,
  open_clip, safetensors, the onnx tooling or dgl_deploy.model at module level (the torch backend and the
  mean-pool baseline under runtime/backends/ are the two torch modules outside model/, training/, export/);
- only cli/ imports dgl_deploy.training and dgl_deploy.export (at any level);
- the import graph of dgl_deploy has no cycle, at module level nor with the imports inside functions (which
  run later, but still tie the two modules together); only `if TYPE_CHECKING:` blocks, which never run, are left
  out.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = {"dgl_deploy": ROOT / "dgl_deploy", "dgl_deploy.training": ROOT / "training",
           "dgl_deploy.export": ROOT / "export"}
TORCH_SIDE = ("torch", "torchvision", "open_clip", "safetensors", "onnx", "onnxscript", "onnxslim",
              "dgl_deploy.model", "dgl_deploy.training", "dgl_deploy.export")
TORCH_FREE = ("dgl_deploy.data", "dgl_deploy.runtime", "dgl_deploy.retrieval", "dgl_deploy.evaluation",
              "dgl_deploy.cli", "dgl_deploy.errors", "dgl_deploy.extras", "dgl_deploy.files", "dgl_deploy.defaults",
              "dgl_deploy.limits", "dgl_deploy.__main__", "dgl_deploy.api",
              "dgl_deploy.demo")  # packages and modules; the package's own __init__ too
TORCH_BACKENDS = ("dgl_deploy.runtime.backends.torch_backend", "dgl_deploy.runtime.backends.meanpool")


def find_modules(sources: dict[str, Path]) -> dict[str, Path]:
    """Module name -> source file, for packages given as name -> folder (the tests below also run on throwaway
    packages, to show the checker finds what it should)."""
    found = {}
    for package, folder in sources.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            name = ".".join((package, *parts)).removesuffix(".__init__")
            found[name] = path
    return found


MODULES = find_modules(SOURCES)


def _type_checking(node: ast.AST) -> bool:
    """Whether `node` is an `if TYPE_CHECKING:` block (imports for annotations only; never run)."""
    return isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node of `tree` outside `if TYPE_CHECKING:` blocks."""
    found, todo = [], [tree]
    while todo:
        node = todo.pop()
        found.append(node)
        todo += [child for child in ast.iter_child_nodes(node) if not _type_checking(child)]
    return found


def _imports(name: str, path: Path, modules: dict[str, Path] = MODULES) -> tuple[set[str], set[str]]:
    """(module-level imports, all imports that can run) of one module of `modules`, as absolute names."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    every = {n for node in _runtime_nodes(tree) for n in _imports_of(node, package, modules)}
    top = set()
    for node in tree.body:  # what runs at import time: the body, class bodies, try/if blocks; not functions
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        children = node.body if isinstance(node, ast.ClassDef) else ast.walk(node)
        top |= {n for child in children for n in _imports_of(child, package, modules)}
    return top, every


def _imports_of(node: ast.AST, package: str, modules: dict[str, Path]) -> set[str]:
    """The absolute names one import statement imports (`from m import x` is m.x where that is a module)."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names}
    if not isinstance(node, ast.ImportFrom):
        return set()
    base = node.module or ""
    if node.level:
        parts = package.split(".")
        base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
    return {f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names}


def _hits(names: set[str], prefixes: tuple[str, ...]) -> set[str]:
    return {n for n in names if any(n == p or n.startswith(p + ".") for p in prefixes)}


def _torch_free(name: str) -> bool:
    return (name == "dgl_deploy" or bool(_hits({name}, TORCH_FREE))) and name not in TORCH_BACKENDS


@pytest.mark.parametrize("name", sorted(n for n in MODULES if _torch_free(n)))
def test_torch_free_modules_import_no_torch_at_module_level(name: str) -> None:
    top, _ = _imports(name, MODULES[name])
    assert not _hits(top, TORCH_SIDE), f"{name} imports {sorted(_hits(top, TORCH_SIDE))} at module level"


def test_only_cli_imports_training_and_export() -> None:
    offenders = {}
    for name, path in MODULES.items():
        if name.startswith(("dgl_deploy.cli", "dgl_deploy.training", "dgl_deploy.export")):
            continue
        hits = _hits(_imports(name, path)[1], ("dgl_deploy.training", "dgl_deploy.export"))
        if hits:
            offenders[name] = sorted(hits)
    assert not offenders


def _resolve(target: str, modules: dict[str, Path]) -> str | None:
    """The module of `modules` an import name refers to (a module, or the module that defines the name)."""
    while target and target not in modules:
        target = target.rpartition(".")[0]
    return target or None


def import_graph(modules: dict[str, Path], level: int) -> dict[str, set[str]]:
    """Module -> the modules it imports: at module level (`level` 0), or with the imports inside functions (1)."""
    return {name: {m for t in _imports(name, path, modules)[level] if (m := _resolve(t, modules)) and m != name}
            for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as [a, b, ..., a], or None (depth-first, in name order, so the answer is stable)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt, [*path, nxt])):
                return cycle
        state[node] = 2
        return None

    for name in sorted(graph):
        if name not in state and (cycle := visit(name, [name])):
            return cycle
    return None


@pytest.mark.parametrize("level", [0, 1], ids=["module-level", "with-imports-in-functions"])
def test_import_graph_has_no_cycle(level: int) -> None:
    cycle = find_cycle(import_graph(MODULES, level))
    assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


def test_the_contract_sees_the_torch_modules() -> None:
    """Guard against a checker that sees nothing: model/ does import torch at module level."""
    assert _hits(_imports("dgl_deploy.model.model", MODULES["dgl_deploy.model.model"])[0], ("torch",))
    assert "dgl_deploy.cli.demo" in MODULES and "dgl_deploy.training.loop" in MODULES


def _package(root: Path, sources: dict[str, str]) -> dict[str, Path]:
    """A throwaway package `pkg` under `root` made of `sources` (module name -> code); its modules."""
    (root / "pkg").mkdir(parents=True)
    for name, code in {"__init__": "", **sources}.items():
        (root / "pkg" / f"{name}.py").write_text(code)
    return find_modules({"pkg": root / "pkg"})


def test_cycle_through_an_import_inside_a_function_is_found(tmp_path: Path) -> None:
    """pkg.a imports pkg.b only when load() runs, pkg.b imports pkg.a at module level: a cycle that exists only
    with the function-level import, which the module-level graph cannot see and the full graph must."""
    modules = _package(tmp_path, {"a": "def load():\n    from pkg import b\n    return b\n", "b": "from . import a\n"})
    assert find_cycle(import_graph(modules, 0)) is None
    assert find_cycle(import_graph(modules, 1)) == ["pkg.a", "pkg.b", "pkg.a"]


def test_type_checking_imports_are_left_out(tmp_path: Path) -> None:
    """An import under `if TYPE_CHECKING:` never runs, so it makes no cycle; the same import outside it does."""
    guarded = "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    from pkg.b import Thing\n"
    modules = _package(tmp_path / "guarded", {"a": guarded, "b": "import pkg.a\n\nclass Thing: ...\n"})
    assert find_cycle(import_graph(modules, 1)) is None
    modules = _package(tmp_path / "plain", {"a": "from pkg.b import Thing\n", "b": "import pkg.a\n\nclass Thing: ...\n"})
    assert find_cycle(import_graph(modules, 0)) == ["pkg.a", "pkg.b", "pkg.a"]
