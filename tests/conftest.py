"""Shared fixtures."""

from __future__ import annotations

import os

import pytest
import torch

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


@pytest.fixture
def one_thread():
    """Run the test on one intra-op thread: tiny networks only pay for a second thread's synchronisation,
    up to many times slower on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
