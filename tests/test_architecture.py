"""The package's shape, checked: dependencies point one way (no cycle among our modules),
no module but the glue imports more than four of ours, and importing the package the way
a tasks.py does pulls in neither the Docker SDK nor rich. No engine."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "invoke_compimg"
# Composition roots: the Invoke glue (tasks, the command, the package's API) and a build's
# session, which puts the builders, reuse, scheduler and reporter together.
GLUE = {"plugin", "cli", "__init__", "session"}
MOST_IMPORTS = 4


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """Our modules that `path` imports at run time (lazy imports inside functions count;
    imports only for type checking do not)."""
    found: set[str] = set()

    class Visitor(ast.NodeVisitor):
        def visit_If(self, node: ast.If) -> None:
            if isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
                return
            self.generic_visit(node)

        def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
            if node.level == 1:
                found.update([node.module.split(".")[0]] if node.module else [a.name for a in node.names])
            elif node.module and node.module.startswith("invoke_compimg."):
                found.add(node.module.split(".")[1])

    Visitor().visit(ast.parse(path.read_text()))
    return (found & modules) - {path.stem}


def graph() -> dict[str, set[str]]:
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    return {p.stem: imports_of(p, modules) for p in PACKAGE.glob("*.py")}


def test_no_cycle_among_our_modules() -> None:
    deps = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        if state.get(module) == 1:
            raise AssertionError("import cycle: " + " -> ".join([*path, module]))
        if state.get(module) == 2:
            return
        state[module] = 1
        for dep in sorted(deps[module]):
            visit(dep, [*path, module])
        state[module] = 2

    for module in sorted(deps):
        visit(module, [])


def test_no_hub_outside_the_glue() -> None:
    too_many = {m: sorted(d) for m, d in graph().items() if m not in GLUE and len(d) > MOST_IMPORTS}
    assert too_many == {}


def test_the_pure_modules_know_nothing_of_docker_or_invoke() -> None:
    for module in ("graph", "syntax", "lowering", "render", "scheduler", "names", "procs"):
        text = (PACKAGE / f"{module}.py").read_text()
        assert "import docker" not in text and "from invoke" not in text, module


def test_importing_the_package_loads_no_engine_sdk_and_no_rich() -> None:
    code = ("import sys, invoke_compimg; invoke_compimg.collection; "
            "print(sorted(m for m in ('docker', 'requests', 'rich') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
