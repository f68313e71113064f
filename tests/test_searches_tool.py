"""python -m benchmarks.searches: a saved controller's planned costs per search, and the rises on foreign streams."""

from __future__ import annotations

import numpy as np
import pytest

from _tiny import trained_streams
from benchmarks.searches import planned_cost

pytestmark = pytest.mark.usefixtures("one_thread")


def test_planned_cost_is_the_mean_fraction_at_each_budget_and_leaves_the_search_as_it_was():
    ctrl, _ = trained_streams(3, steps=2)
    prefs = np.random.default_rng(0).dirichlet(np.ones(3), size=5)
    before = ctrl.search
    low = ctrl.min_budget
    costs = planned_cost(ctrl, "merge", [1.0, low, 0.6], prefs)
    assert costs[0] == pytest.approx(1.0) and costs[1] == pytest.approx(low) and low <= costs[2] <= 0.6
    assert ctrl.search == before
