"""The layer contract: every module of simmerge imports only from its own layer or the layers
below it, lazy imports inside functions included, and no two modules import each other in a
cycle. This is what lets a reader follow a catalog up the stages by opening folders in order;
a handler or a helper placed in the wrong layer shows up here as an upward import."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "simmerge"

# Bottom to top. A module may import from its own entry and any entry before it.
LAYERS = (
    "simmerge.errors",
    "simmerge.infra",
    "simmerge.io",
    "simmerge.catalog",
    "simmerge.merging",
    "simmerge.evaluation",
    "simmerge.signals",
    "simmerge.outcomes",
    "simmerge.learn",
    "simmerge.pairwise",
    "simmerge.multiway",
    "simmerge.online",
    "simmerge.zoo",
    "simmerge.scanning",
    "simmerge.demo",
    "simmerge.cli",
)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str, path: Path) -> set[str]:
    """Every simmerge module ``path`` imports, at any depth of its code (lazy imports count)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    known = set(modules())
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            submodules = {f"{base}.{a.name}" for a in node.names} & known
            # `from pkg import module` depends on the module; `from pkg import name`, on pkg
            found.update(submodules if len(submodules) == len(node.names) else {base})
    return {m for m in found if m in known and m != name}


def layer_of(module: str) -> int | None:
    for i, layer in enumerate(LAYERS):
        if module == layer or module.startswith(layer + "."):
            return i
    return None


def test_every_module_has_a_layer():
    unplaced = [m for m in modules() if m != "simmerge" and layer_of(m) is None]
    assert not unplaced, f"add these modules to a layer of LAYERS: {unplaced}"


@pytest.mark.parametrize("module", sorted(set(modules()) - {"simmerge"}))
def test_module_imports_only_from_its_layer_or_below(module):
    path = modules()[module]
    upward = sorted(
        m
        for m in imports_of(module, path)
        if m != "simmerge" and layer_of(m) > layer_of(module)  # the root: __version__ only
    )
    assert not upward, f"{module} imports from higher layers: {upward}"


def test_the_root_package_is_imported_only_for_its_version():
    for module, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "simmerge" and not node.level:
                names = [a.name for a in node.names]
                assert names == ["__version__"], f"{module} imports {names} from simmerge"


def test_no_import_cycles():
    graph = {m: imports_of(m, p) - {"simmerge"} for m, p in modules().items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycle = stack[stack.index(n) :] + [n]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_contract_sees_lazy_and_relative_imports(tmp_path):
    """The checker itself: an import inside a function and a relative import are both found,
    so the contract cannot pass by missing the imports it exists to catch."""
    found = imports_of("simmerge.zoo.build", PACKAGE / "zoo" / "build.py")
    assert "simmerge.zoo.tasks" in found  # `from .tasks import ...`
    lazy = imports_of("simmerge.cli.models", PACKAGE / "cli" / "models.py")
    assert "simmerge.zoo" in lazy  # imported inside a function


def test_no_subpackage_or_module_shadows_a_public_name():
    """Importing ``simmerge.X`` sets the attribute ``simmerge.X`` to that module, so a module
    named like a public function (``scan``, ``verify``) would replace it after first use."""
    import simmerge

    direct = {m.split(".")[1] for m in modules() if m.count(".") >= 1}
    assert not direct & set(simmerge.__all__)
