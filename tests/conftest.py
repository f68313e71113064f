"""Shared fixtures."""

from __future__ import annotations

import os

import pytest

import dymu
from _tiny import make_controller

os.environ.setdefault("DYMU_QUIET", "1")


@pytest.fixture
def controller() -> dymu.Controller:
    return make_controller()
