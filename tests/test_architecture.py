"""The package's shape, checked: the layers are packages, and imports point down only;
no cycle among our modules; no module but the glue imports more than a few of ours;
nothing below the glue imports Invoke, nothing pure imports the Docker SDK; importing the
package the way a tasks.py does pulls in neither the Docker SDK nor rich, and leaves the garbage
collector as it was. No engine."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "invoke_compimg"

# Bottom to top. A module may import its own package and the layers below it, never above.
# The foundation is the package's top-level modules (FOUNDATION: every one of them is listed).
LAYERS = ["", "dockerfile", "progress", "engine", "host", "building", "builders", "run", "tasks"]
# The package's API (`invoke_compimg/__init__.py`) re-exports the glue.
API = "__init__"
PURE = ("", "dockerfile")  # know nothing of the Docker SDK or of Invoke
# Composition roots, which put the others together: the Invoke glue and one run of a build.
GLUE = {"tasks", "run"}
FOUNDATION = {"errors", "names", "procs", "patterns", "placing", "links", "words", "records", "ahead"}
MOST_IMPORTS = 6  # of other packages' modules, the foundation not counted


def module_name(path: Path) -> str:
    """`invoke_compimg/engine/client.py` -> `engine.client`; a package's `__init__` is the package."""
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> str:
    head = module.split(".")[0]
    return head if head in LAYERS else ""


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py") if "_pb2" not in p.name}


def _resolve(current: str, is_package: bool, level: int, target: str | None) -> str:
    parts = current.split(".")
    base = parts if is_package else parts[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join([*base, *([target] if target else [])]).strip(".")


def imports_of(module: str, path: Path, known: set[str]) -> set[str]:
    """Our modules that `module` imports at run time (lazy imports inside functions count;
    imports only for type checking do not). `from . import a` counts module `a`."""
    found: set[str] = set()
    is_package = path.name == "__init__.py"

    class Visitor(ast.NodeVisitor):
        def visit_If(self, node: ast.If) -> None:
            if isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
                for child in node.orelse:
                    self.visit(child)
                return
            self.generic_visit(node)

        def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
            if node.level:
                base = _resolve(module if module != API else "", is_package or module == API, node.level, node.module)
            elif node.module and node.module.startswith("invoke_compimg"):
                base = node.module.partition(".")[2]
            else:
                return
            for alias in node.names:
                candidate = f"{base}.{alias.name}".strip(".")
                found.add(candidate if candidate in known else base)

        def visit_Import(self, node: ast.Import) -> None:
            for alias in node.names:
                if alias.name.startswith("invoke_compimg."):
                    found.add(alias.name.partition(".")[2])

    Visitor().visit(ast.parse(path.read_text()))
    return {m for m in found if m in known} - {module}


def graph() -> dict[str, set[str]]:
    known = modules()
    names = set(known) | {""}
    return {m: imports_of(m, p, names) for m, p in known.items()}


def third_party(path: Path) -> set[str]:
    """Top-level names of what `path` imports from outside the package, at any depth."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_imports_point_down_the_layers() -> None:
    wrong = []
    for module, deps in graph().items():
        if module in (API, ""):
            continue
        mine = LAYERS.index(layer_of(module))
        for dep in deps:
            theirs = LAYERS.index(layer_of(dep))
            if theirs > mine:
                wrong.append(f"{module} -> {dep}")
    assert wrong == []


def test_the_model_knows_nothing_of_the_engine() -> None:
    deps = graph()
    for module in deps:
        if layer_of(module) == "dockerfile":
            assert not {d for d in deps[module] if layer_of(d) not in ("", "dockerfile")}, module


def test_no_cycle_among_our_modules() -> None:
    deps = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        if state.get(module) == 1:
            raise AssertionError("import cycle: " + " -> ".join([*path, module]))
        if state.get(module) == 2:
            return
        state[module] = 1
        for dep in sorted(deps.get(module, ())):
            visit(dep, [*path, module])
        state[module] = 2

    for module in sorted(deps):
        visit(module, [])


def test_no_hub_outside_the_glue() -> None:
    def glue(module: str) -> bool:
        return module == API or module in GLUE or layer_of(module) in GLUE

    def others(module: str, deps: set[str]) -> set[str]:
        return {d for d in deps if d not in FOUNDATION and layer_of(d) != layer_of(module)}

    too_many = {m: sorted(others(m, d)) for m, d in graph().items()
                if not glue(m) and len(others(m, d)) > MOST_IMPORTS}
    assert too_many == {}


def test_nothing_below_the_glue_imports_invoke() -> None:
    below = {m: p for m, p in modules().items() if layer_of(m) != "tasks" and m != API}
    assert sorted(m for m, p in below.items() if "invoke" in third_party(p)) == []


def test_the_pure_layers_know_nothing_of_docker() -> None:
    pure = {m: p for m, p in modules().items() if layer_of(m) in PURE and m != API}
    assert sorted(m for m, p in pure.items()
                  if third_party(p) & {"docker", "requests", "urllib3", "grpc", "h2", "google", "invoke"}) == []


def test_the_foundation_is_the_top_level_modules() -> None:
    top = {m for m in modules() if "." not in m and layer_of(m) == "" and m != API}
    assert top == FOUNDATION


def test_importing_the_package_loads_no_engine_sdk_and_no_rich() -> None:
    heavy = ('docker', 'requests', 'rich', 'grpc', 'h2', 'google.protobuf')
    code = ("import sys, invoke_compimg; invoke_compimg.collection; "
            f"print(sorted(m for m in {heavy!r} if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("host", [
    "pass",  # the collector running, nothing frozen: as Python starts
    "gc.disable()",  # a program that runs without it keeps it off
    "gc.freeze()",  # a program that froze its objects (before forking, say) keeps them frozen
])
def test_importing_the_package_leaves_the_garbage_collector_as_it_found_it(host: str) -> None:
    """The collector rests while the package is imported (start-up time): afterwards it is as
    the importing program had it, and what that program froze stays frozen."""
    code = (f"import gc; {host}; before = (gc.isenabled(), gc.get_freeze_count()); import invoke_compimg; "
            "after = (gc.isenabled(), gc.get_freeze_count()); "
            "print(before[0] == after[0], 0 < after[1] <= before[1] if before[1] else after[1] == 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["True", "True"]
