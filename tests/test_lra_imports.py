"""bort.lra's modules import one another without a cycle.

The graph is read statically (`ast`) and counts every import, module-level or inside a function: a
function-local import that dodges a cycle at import time is still a cycle in the design.
"""
from __future__ import annotations

import ast
from pathlib import Path

import bort.lra

PACKAGE = "bort.lra"
ROOT = Path(bort.lra.__file__).parent


def _modules() -> dict[str, Path]:
    return {f"{PACKAGE}.{p.stem}" if p.stem != "__init__" else PACKAGE: p for p in sorted(ROOT.glob("*.py"))}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The bort.lra modules that `path` (module `name`) imports anywhere in its body."""
    package = name if path.stem == "__init__" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(_without_main_block(ast.parse(path.read_text(), str(path)))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            # `from . import x` imports the submodule x
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return {m for m in found if m in known and m != name}


def _without_main_block(tree: ast.Module) -> ast.Module:
    """`tree` less its `if __name__ == "__main__":` block: that code runs only when the module is the program
    (`python -m`), as `__main__`, so an import there (e.g. of the CLI that drives the module) closes no cycle."""
    def is_main(node: ast.stmt) -> bool:
        test = node.test if isinstance(node, ast.If) else None
        return (isinstance(test, ast.Compare) and isinstance(test.left, ast.Name) and test.left.id == "__name__"
                and any(isinstance(c, ast.Constant) and c.value == "__main__" for c in test.comparators))

    tree.body = [node for node in tree.body if not is_main(node)]
    return tree


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, set(modules)) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `graph` as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_find_cycle_sees_a_cycle_through_a_function_local_import(tmp_path):
    # The checker itself: the shape bort.lra had (data → image inside a function, image → data at the top).
    assert find_cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]
    source = "def f():\n    from .image import load_image\n"
    (tmp_path / "data.py").write_text(source)
    assert _imports("bort.lra.data", tmp_path / "data.py", {"bort.lra.image", "bort.lra.data"}) == {"bort.lra.image"}
    # an import in the `__main__` block (run as a program only) is not an edge
    source = "from . import data as d\n\nif __name__ == '__main__':\n    from .cli import main\n"
    (tmp_path / "image.py").write_text(source)
    known = {"bort.lra.image", "bort.lra.data", "bort.lra.cli"}
    assert _imports("bort.lra.image", tmp_path / "image.py", known) == {"bort.lra.data"}


def test_lra_has_no_import_cycle():
    graph = import_graph()
    assert "bort.lra.data" in graph and graph["bort.lra.data"] >= {"bort.lra.splits", "bort.lra.text"}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle in bort.lra: " + " → ".join(cycle)


def test_readers_depend_on_the_shared_types_not_on_data():
    graph = import_graph()
    for reader in ("image", "text", "retrieval", "pathfinder", "splitting"):
        assert "bort.lra.data" not in graph[f"{PACKAGE}.{reader}"], reader
        assert "bort.lra.splits" in graph[f"{PACKAGE}.{reader}"], reader
