"""Every ``>>>`` example in the packages runs and shows what it says.

Modules are found by reading files (collection imports nothing); a module is imported only by its own
test. Left out: :data:`conftest.DOCTEST_EXCLUDED`, and ``__main__`` modules (they run on import).
"""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

from conftest import DOCTEST_EXCLUDED

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("dymu", "affinity", "hyper", "benchmarks")
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules_with_examples() -> list[str]:
    return sorted(
        _module_name(path)
        for package in PACKAGES
        for path in (ROOT / package).rglob("*.py")
        if path.name != "__main__.py" and ">>>" in path.read_text()
    )


MODULES = _modules_with_examples()


def _run_examples(name: str) -> tuple[int, int, str]:
    """(examples, failures, report) of the module's doctests."""
    module = importlib.import_module(name)
    tests = doctest.DocTestFinder().find(module)
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    report: list[str] = []
    for test in tests:
        runner.run(test, out=report.append)
    return sum(len(t.examples) for t in tests), runner.failures, "".join(report)


def test_the_packages_have_examples_to_run():
    assert len(MODULES) >= 10 and "benchmarks.protocol.summary" in MODULES


@pytest.mark.parametrize("name", [m for m in MODULES if m not in DOCTEST_EXCLUDED])
def test_examples_run(name, monkeypatch):
    # examples show what a user sees; the suite's DYMU_QUIET=1 would silence the progress lines they print
    monkeypatch.delenv("DYMU_QUIET", raising=False)
    examples, failures, report = _run_examples(name)
    assert examples > 0, f"{name}: '>>>' appears but no example was found"
    assert failures == 0, report


def test_excluded_modules_are_real_modules_with_examples():
    stale = [name for name in DOCTEST_EXCLUDED if name not in MODULES]
    assert not stale, f"excluded from the doctests but without a '>>>' example (or not a module): {stale}"


def test_a_wrong_example_fails():
    # the runner above can fail: an example whose output differs is counted
    test = doctest.DocTestParser().get_doctest(">>> 1 + 1\n3\n", {}, "wrong", None, 0)
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    runner.run(test, out=lambda text: None)
    assert runner.failures == 1
