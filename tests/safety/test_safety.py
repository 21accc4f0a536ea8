"""The bad-input catalogue (docs/safety.md) stays true, and the package's error discipline holds:
every class names a test that exists and checks that exception, every ``raise`` of a simmerge
error gives a fix, and there is no ``assert`` or bare ``except:`` in the package."""

from __future__ import annotations

import ast
import importlib
import inspect
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _error_classes() -> dict[str, type]:
    from simmerge.errors import SimmergeError

    errors = importlib.import_module("simmerge.errors")
    return {
        attr: obj
        for attr, obj in vars(errors).items()
        if inspect.isclass(obj) and issubclass(obj, SimmergeError)
    }


def _catalogue() -> list[tuple[str, str, str, str]]:
    section = (ROOT / "docs" / "safety.md").read_text().split("**Bad-input catalogue.**", 1)[1]
    rows = re.findall(r"^\| (\d+) \| (.+?) \| `(\w+)` \| `([^`]+)` \|$", section, re.M)
    return rows


def test_catalogue_has_at_least_15_classes_with_distinct_tests():
    rows = _catalogue()
    assert len(rows) >= 15
    assert [int(r[0]) for r in rows] == list(range(1, len(rows) + 1))
    assert len({r[3] for r in rows}) == len(rows)


@pytest.mark.parametrize("number, what, error, test_id", _catalogue())
def test_catalogue_row_names_a_test_that_checks_its_exception(number, what, error, test_id):
    classes = _error_classes()
    assert error in classes, f"row {number}: {error} is not a simmerge error"
    file, _, name = test_id.partition("::")
    tree = ast.parse((ROOT / file).read_text())
    funcs = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert name in funcs, f"row {number}: {test_id} does not exist"
    # the test's code (comments dropped) or its parametrize decorator must use the exception
    names = {n.id for n in ast.walk(funcs[name]) if isinstance(n, ast.Name)}
    assert error in names, f"row {number}: {test_id} does not check {error}"


def _package_files() -> list[Path]:
    return sorted((ROOT / "simmerge").rglob("*.py"))


def test_every_raised_simmerge_error_gives_a_fix():
    """``raise SomeError(what)`` without the ``fix`` argument leaves a user without a next step."""
    names = set(_error_classes())
    missing = []
    for path in _package_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
                func = node.exc.func
                called = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
                if called in names and len(node.exc.args) + len(node.exc.keywords) < 2:
                    missing.append(f"{path.relative_to(ROOT)}:{node.lineno} {called}")
    assert missing == []


def test_every_error_class_is_defined_in_simmerge_errors():
    """One module holds the error hierarchy, so a user finds every type they may catch there."""
    names = set(_error_classes())
    elsewhere = [
        f"{path.relative_to(ROOT)}:{node.lineno} {node.name}"
        for path in _package_files()
        if path.name != "errors.py" or path.parent.name != "simmerge"
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ClassDef)
        and any(getattr(b, "id", getattr(b, "attr", None)) in names for b in node.bases)
    ]
    assert elsewhere == []


def test_no_assert_and_no_bare_except_in_the_package():
    found = []
    for path in _package_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Assert):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} assert")
            if isinstance(node, ast.ExceptHandler) and node.type is None:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} bare except")
    assert found == []
