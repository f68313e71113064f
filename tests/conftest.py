"""Shared fixtures."""

from __future__ import annotations

import os

import pytest

import dymu
from _tiny import make_controller

os.environ.setdefault("DYMU_QUIET", "1")

#: Modules whose ``>>>`` examples do not run yet, left out of tests/test_doctests.py: module -> why.
#: Only modules another engineer is rewriting belong here (their examples are fixed with the rewrite);
#: test_doctests.py checks that every entry is a real module that has examples, so the list stays exact.
DOCTEST_EXCLUDED: dict[str, str] = {}


@pytest.fixture
def controller() -> dymu.Controller:
    return make_controller()
