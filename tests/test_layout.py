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
              "dgl_deploy.limits",
              "dgl_deploy.__main__", "dgl_deploy.api")  # packages and modules; the package's own __init__ too
TORCH_BACKENDS = ("dgl_deploy.runtime.backends.torch_backend", "dgl_deploy.runtime.backends.meanpool")


def _modules() -> dict[str, Path]:
    found = {}
    for package, folder in SOURCES.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            name = ".".join((package, *parts)).removesuffix(".__init__")
            found[name] = path
    return found


MODULES = _modules()


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


def _imports(name: str, path: Path) -> tuple[set[str], set[str]]:
    """(module-level imports, all imports that can run) of one module, as absolute names."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    every = {n for node in _runtime_nodes(tree) for n in _imports_of(node, package)}
    top = set()
    for node in tree.body:  # what runs at import time: the body, class bodies, try/if blocks; not functions
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        children = node.body if isinstance(node, ast.ClassDef) else ast.walk(node)
        top |= {n for child in children for n in _imports_of(child, package)}
    return top, every


def _imports_of(node: ast.AST, package: str) -> set[str]:
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names}
    if not isinstance(node, ast.ImportFrom):
        return set()
    base = node.module or ""
    if node.level:
        parts = package.split(".")
        base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
    return {f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names}


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


def _resolve(target: str) -> str | None:
    """The dgl_deploy module an import name refers to (a module, or the module that defines the name)."""
    while target and target not in MODULES:
        target = target.rpartition(".")[0]
    return target or None


@pytest.mark.parametrize("level", [0, 1], ids=["module-level", "with-imports-in-functions"])
def test_import_graph_has_no_cycle(level: int) -> None:
    graph = {name: {m for t in _imports(name, path)[level] if (m := _resolve(t)) and m != name}
             for name, path in MODULES.items()}
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt] if nxt in stack else [node, nxt]
                pytest.fail(f"import cycle: {' -> '.join(cycle)}")
            if nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_the_contract_sees_the_torch_modules() -> None:
    """Guard against a checker that sees nothing: model/ does import torch at module level."""
    assert _hits(_imports("dgl_deploy.model.model", MODULES["dgl_deploy.model.model"])[0], ("torch",))
    assert "dgl_deploy.cli.demo" in MODULES and "dgl_deploy.training.loop" in MODULES
    top, every = _imports("dgl_deploy.retrieval.serve_metrics", MODULES["dgl_deploy.retrieval.serve_metrics"])
    assert not _hits(every, ("dgl_deploy.retrieval.serve",))  # its `if TYPE_CHECKING:` import is left out...
    top, every = _imports("dgl_deploy.retrieval.serve", MODULES["dgl_deploy.retrieval.serve"])
    assert _hits(every - top, ("dgl_deploy.retrieval.serve_metrics",))  # ...an import inside a function is seen
