"""The import graph runs one way (benchmarks -> dymu -> {affinity, hyper}), and task sets that dymu does not
define are found through the ``dymu.task_sets`` entry points, never by dymu naming their package."""

from __future__ import annotations

import ast
import importlib.metadata
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import dymu
from dymu import registry

ROOT = Path(__file__).resolve().parent.parent


def _imported_modules(path: Path) -> set[str]:
    """Every module an ``import`` or ``from ... import`` statement of ``path`` names (absolute imports)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def _importers(package: str, forbidden: str) -> list[str]:
    """``file: module`` for every import of ``forbidden`` (or a submodule) under ``package``."""
    found = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for name in _imported_modules(path):
            if name == forbidden or name.startswith(forbidden + "."):
                found.append(f"{path.relative_to(ROOT)}: {name}")
    return found


def test_the_import_parser_sees_imports():
    # the check below can fail: benchmarks itself imports dymu, in both statement forms
    assert _importers("benchmarks", "dymu")
    assert {"dymu", "dymu.results"} <= _imported_modules(ROOT / "benchmarks" / "paper.py")


@pytest.mark.parametrize("package", ["dymu", "affinity", "hyper"])
def test_library_packages_do_not_import_benchmarks(package):
    assert _importers(package, "benchmarks") == []


@pytest.mark.parametrize("package", ["affinity", "hyper"])
def test_affinity_and_hyper_do_not_import_dymu(package):
    assert _importers(package, "dymu") == []


def test_the_registry_names_no_benchmark_module():
    assert not any(module.startswith("benchmarks") for module, _ in registry._BUILTIN_TASK_SETS.values())


def _fake_entry_points(points: list[importlib.metadata.EntryPoint]):
    def entry_points(**selection):
        return importlib.metadata.EntryPoints(p for p in points if all(getattr(p, k) == v for k, v in selection.items()))
    return entry_points


def test_an_unknown_task_set_is_found_through_an_entry_point(monkeypatch):
    monkeypatch.setattr(registry, "TASK_SETS", dict(registry.TASK_SETS))
    point = importlib.metadata.EntryPoint("entry_point_multifashion", "dymu.data.tasks:multifashion_tasks", registry.ENTRY_POINT_GROUP)
    other = importlib.metadata.EntryPoint("entry_point_multifashion", "no.such:module", "another.group")
    monkeypatch.setattr(importlib.metadata, "entry_points", _fake_entry_points([other, point]))
    tasks = registry.resolve_tasks("entry_point_multifashion")
    assert [t.name for t in tasks] == ["top_left", "bottom_right"]
    assert "entry_point_multifashion" in registry.TASK_SETS  # loaded once, then registered
    with pytest.raises(ValueError, match=r"unknown task set 'nowhere'.*entry_point_multifashion"):
        registry.resolve_tasks("nowhere")


def test_without_the_entry_point_an_unregistered_name_is_unknown(monkeypatch):
    monkeypatch.setattr(registry, "TASK_SETS", {})
    monkeypatch.setattr(importlib.metadata, "entry_points", _fake_entry_points([]))
    with pytest.raises(ValueError, match="unknown task set 'cifar100'"):
        dymu.Controller(dymu.backbones.lenet(), "cifar100")


def test_the_declared_entry_points_resolve_the_paper_task_sets_in_a_fresh_process():
    """The entry points of pyproject.toml, as an installed distribution would expose them (``.ci/run``
    reinstalls the package, so there they are real; here they are read from pyproject.toml)."""
    tomllib = pytest.importorskip("tomllib")
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"][registry.ENTRY_POINT_GROUP]
    assert set(declared) == {"cifar100", "nyuv2", "pascal_context", "pascal_context_3"}
    script = textwrap.dedent(f"""
        import importlib.metadata, sys
        points = [importlib.metadata.EntryPoint(n, v, {registry.ENTRY_POINT_GROUP!r}) for n, v in {sorted(declared.items())!r}]
        importlib.metadata.entry_points = lambda **kw: importlib.metadata.EntryPoints(
            p for p in points if kw.get("group") in (None, p.group))
        import dymu
        assert not any(m == "benchmarks" or m.startswith("benchmarks.") for m in sys.modules), "dymu imported benchmarks"
        sizes = {{name: len(dymu.registry.resolve_tasks(name)) for name in ["cifar100", "nyuv2", "pascal_context", "pascal_context_3"]}}
        print(sizes)
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "{'cifar100': 20, 'nyuv2': 3, 'pascal_context': 5, 'pascal_context_3': 3}"


def test_a_module_over_about_400_lines_says_why_in_its_docstring():
    long = []
    for package in ("dymu", "affinity", "hyper", "benchmarks"):
        for path in sorted((ROOT / package).rglob("*.py")):
            text = path.read_text()
            if text.count("\n") > 420 and "[why" not in (ast.get_docstring(ast.parse(text)) or ""):
                long.append(f"{path.relative_to(ROOT)}: {text.count(chr(10))} lines")
    assert long == []
