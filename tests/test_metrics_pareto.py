import itertools
import math

import numpy as np
import pytest

from dymu.metrics.pareto import (
    controllability,
    controllability_per_task,
    delta_mtl,
    dirichlet_preferences,
    hypervolume,
    pareto_front,
    pareto_rays,
    relative_changes,
    simplex_grid,
    uniformity,
    uniformity_per_preference,
)


def grid_hypervolume(points: np.ndarray, ref: np.ndarray) -> float:
    """Exact hypervolume by cutting space at every coordinate and testing each cell's lower corner."""
    axes = [np.unique(np.concatenate([points[:, d], [ref[d]]])) for d in range(points.shape[1])]
    axes = [a[a <= ref[d]] for d, a in enumerate(axes)]
    total = 0.0
    for cell in itertools.product(*[range(len(a) - 1) for a in axes]):
        corner = np.array([axes[d][i] for d, i in enumerate(cell)])
        if np.any(np.all(points <= corner, axis=1)):
            total += float(np.prod([axes[d][i + 1] - axes[d][i] for d, i in enumerate(cell)]))
    return total


# --- hypervolume ---


def test_hypervolume_2d_staircase():
    # Slabs x in [1,2): height 1; [2,3): 2; [3,4): 3.
    assert hypervolume([[1, 3], [2, 2], [3, 1]], reference=[4, 4]) == pytest.approx(6.0)


def test_hypervolume_single_point_is_a_box():
    assert hypervolume([[1.0, 1.0, 1.0]], [3.0, 2.0, 4.0]) == pytest.approx(2 * 1 * 3)
    assert hypervolume([[0.5]], [2.0]) == pytest.approx(1.5)


def test_hypervolume_3d_overlapping_boxes():
    # Boxes 2x2x1 and 1x1x2 overlapping on a unit cube: 4 + 2 - 1.
    assert hypervolume([[0, 0, 1], [1, 1, 0]], [2, 2, 2]) == pytest.approx(5.0)


def test_dominated_and_outside_points_add_nothing():
    base = [[1, 3], [2, 2], [3, 1]]
    assert hypervolume(base + [[2.5, 2.5]], [4, 4]) == pytest.approx(6.0)  # dominated by (2, 2)
    assert hypervolume(base + [[0.5, 5.0]], [4, 4]) == pytest.approx(6.0)  # beyond the reference in y
    assert hypervolume(base + [[0.0, 4.0]], [4, 4]) == pytest.approx(6.0)  # on the reference boundary
    assert hypervolume([[5.0, 5.0]], [4, 4]) == 0.0
    assert hypervolume(np.zeros((0, 2)), [1, 1]) == 0.0


def test_hypervolume_matches_grid_count_on_random_3d_sets():
    rng = np.random.default_rng(0)
    for _ in range(3):
        points = rng.uniform(0, 1, size=(6, 3))
        ref = np.array([1.1, 1.0, 1.2])
        assert hypervolume(points, ref) == pytest.approx(grid_hypervolume(points, ref), rel=1e-12)


def test_hypervolume_rejects_bad_input():
    with pytest.raises(ValueError, match="reference"):
        hypervolume([[1, 2]], [3, 3, 3])
    with pytest.raises(ValueError, match="NaN or inf"):
        hypervolume([[1, np.nan]], [3, 3])
    with pytest.raises(ValueError, match="NaN or inf"):
        hypervolume([[1, np.inf]], [3, 3])
    with pytest.raises(ValueError, match="reference contains"):
        hypervolume([[1, 1]], [3, np.inf])
    with pytest.raises(ValueError, match="2-D"):
        hypervolume([1, 2], [3, 3])
    with pytest.raises(TypeError):
        hypervolume([[1, 2]])  # no implicit reference point


# --- uniformity ---


def test_uniformity_is_one_when_weighted_losses_are_equal():
    assert uniformity([[3.0, 1.0]], [[0.25, 0.75]]) == pytest.approx(1.0, abs=1e-15)
    assert uniformity([[2.0, 2.0, 2.0]], [[1 / 3, 1 / 3, 1 / 3]]) == pytest.approx(1.0, abs=1e-15)


def test_uniformity_hand_computed_and_lower_otherwise():
    # r L = (0.5, 1.5): Lhat = (0.25, 0.75); KL to uniform = 0.25 ln 0.5 + 0.75 ln 1.5.
    expected = 1 - (0.25 * math.log(0.5) + 0.75 * math.log(1.5))
    assert uniformity([[1.0, 3.0]], [[0.5, 0.5]]) == pytest.approx(expected)
    assert expected < 1


def test_uniformity_zero_preference_term_is_zero_log_zero():
    # r = (1, 0): Lhat = (1, 0); KL = 1 * ln 2 + 0 log 0 = ln 2, the minimum for 2 tasks.
    assert uniformity([[1.0, 5.0]], [[1.0, 0.0]]) == pytest.approx(1 - math.log(2))


def test_uniformity_averages_over_preferences():
    losses = [[3.0, 1.0], [1.0, 5.0]]
    prefs = [[0.25, 0.75], [1.0, 0.0]]
    per = uniformity_per_preference(losses, prefs)
    assert per == pytest.approx([1.0, 1 - math.log(2)])
    assert uniformity(losses, prefs) == pytest.approx((2 - math.log(2)) / 2)


def test_uniformity_rejects_bad_input():
    with pytest.raises(ValueError, match="same shape"):
        uniformity([[1.0, 2.0]], [[0.5, 0.25, 0.25]])
    with pytest.raises(ValueError, match="non-negative losses"):
        uniformity([[-1.0, 2.0]], [[0.5, 0.5]])
    with pytest.raises(ValueError, match="non-negative"):
        uniformity([[1.0, 2.0]], [[1.5, -0.5]])
    with pytest.raises(ValueError, match="is 0 for rows"):
        uniformity([[0.0, 2.0]], [[1.0, 0.0]])


# --- controllability ---


def two_task_sweep():
    r1 = np.linspace(0.1, 0.9, 5)
    prefs = np.stack([r1, 1 - r1], axis=1)
    losses = np.stack([1.0 - r1**2, 0.2 + r1], axis=1)  # each loss falls as its own preference rises
    return prefs, losses


def test_controllability_monotone_is_one_and_reversed_is_minus_one():
    prefs, losses = two_task_sweep()
    assert controllability(prefs, losses, higher_is_better=False) == pytest.approx(1.0)
    assert controllability(prefs, -losses, higher_is_better=True) == pytest.approx(1.0)
    assert controllability(prefs, losses, higher_is_better=True) == pytest.approx(-1.0)
    assert controllability(prefs, losses[::-1], higher_is_better=False) == pytest.approx(-1.0)


def test_controllability_per_task_directions():
    prefs, losses = two_task_sweep()
    accuracy_task1 = 1 - losses[:, 1]
    perf = np.stack([losses[:, 0], accuracy_task1], axis=1)
    assert controllability_per_task(prefs, perf, [False, True]) == pytest.approx([1.0, 1.0])
    assert controllability_per_task(prefs, perf, [False, False]) == pytest.approx([1.0, -1.0])
    assert controllability(prefs, perf, [False, False]) == pytest.approx(0.0)


def test_controllability_partial_order():
    prefs = np.array([[0.1, 0.9], [0.3, 0.7], [0.6, 0.4], [0.9, 0.1]])
    # Task 0 accuracy ranks 1, 3, 2, 4 against preference ranks 1..4: rho = 1 - 6 * 2 / (4 * 15) = 0.8.
    perf = np.array([[0.1, 0.5], [0.3, 0.4], [0.2, 0.3], [0.4, 0.2]])
    assert controllability_per_task(prefs, perf, True)[0] == pytest.approx(0.8)


def test_controllability_constant_task_is_nan_and_left_out():
    prefs, losses = two_task_sweep()
    losses[:, 1] = 0.5
    with pytest.warns(RuntimeWarning, match="task depth's performance is constant"):
        per = controllability_per_task(prefs, losses, False, task_names=["seg", "depth"])
    assert per[0] == pytest.approx(1.0) and math.isnan(per[1])
    with pytest.warns(RuntimeWarning):
        assert controllability(prefs, losses, False) == pytest.approx(1.0)
    with pytest.warns(RuntimeWarning, match="preference is constant"):
        assert math.isnan(controllability([[0.5, 0.5], [0.5, 0.5]], [[1.0, 2.0], [2.0, 1.0]], False))


def test_controllability_rejects_bad_input():
    with pytest.raises(ValueError, match="at least 2"):
        controllability([[0.5, 0.5]], [[1.0, 1.0]], False)
    with pytest.raises(ValueError, match="one flag per task"):
        controllability([[0.2, 0.8], [0.8, 0.2]], [[1.0, 2.0], [2.0, 1.0]], [True])
    with pytest.raises(ValueError, match="NaN"):
        controllability([[0.2, 0.8], [0.8, 0.2]], [[1.0, np.nan], [2.0, 1.0]], False)


# --- delta_mtl ---


def test_delta_mtl_signs_for_both_directions():
    hib = {"acc": True, "err": False}
    # Accuracy up 10 % and error down 20 %: both improvements.
    assert relative_changes({"acc": 0.55, "err": 0.8}, {"acc": 0.5, "err": 1.0}, hib) == pytest.approx(
        {"acc": 10.0, "err": 20.0}
    )
    assert delta_mtl({"acc": 0.55, "err": 0.8}, {"acc": 0.5, "err": 1.0}, hib) == pytest.approx(15.0)
    # Accuracy down 10 % and error up 20 %: both worse.
    assert delta_mtl({"acc": 0.45, "err": 1.2}, {"acc": 0.5, "err": 1.0}, hib) == pytest.approx(-15.0)
    assert delta_mtl({"acc": 0.5, "err": 1.0}, {"acc": 0.5, "err": 1.0}, hib) == 0.0


def test_delta_mtl_single_direction_flag():
    assert delta_mtl({"a": 2.0, "b": 4.0}, {"a": 1.0, "b": 4.0}, True) == pytest.approx(50.0)
    assert delta_mtl({"a": 2.0, "b": 4.0}, {"a": 1.0, "b": 4.0}, False) == pytest.approx(-50.0)


def test_delta_mtl_errors_name_the_task():
    with pytest.raises(ValueError, match="baseline for task.*'depth'"):
        delta_mtl({"seg": 0.5, "depth": 0.4}, {"seg": 0.5}, False)
    with pytest.raises(ValueError, match="no multi-task metric.*'normals'"):
        delta_mtl({"seg": 0.5}, {"seg": 0.5, "normals": 20.0}, False)
    with pytest.raises(ValueError, match="no direction.*'depth'"):
        delta_mtl({"seg": 0.5, "depth": 0.4}, {"seg": 0.5, "depth": 0.3}, {"seg": True})
    with pytest.raises(ValueError, match="'seg' has a single-task baseline of 0"):
        delta_mtl({"seg": 0.5}, {"seg": 0.0}, True)
    with pytest.raises(ValueError, match="non-finite"):
        delta_mtl({"seg": float("nan")}, {"seg": 0.5}, True)


# --- pareto front ---


def test_pareto_front_mask():
    losses = [[1, 3], [2, 2], [3, 1], [2.5, 2.5], [2, 2], [1, 4]]
    # (2.5, 2.5) is dominated by (2, 2); (1, 4) by (1, 3); the duplicate (2, 2) rows do not dominate each other.
    assert pareto_front(losses).tolist() == [True, True, True, False, True, False]
    assert pareto_front(np.zeros((0, 3))).tolist() == []


def test_pareto_front_points_have_the_same_hypervolume_as_the_set():
    rng = np.random.default_rng(1)
    points = rng.uniform(0, 1, size=(30, 3))
    front = points[pareto_front(points)]
    assert 0 < len(front) < len(points)
    assert hypervolume(front, [1, 1, 1]) == pytest.approx(hypervolume(points, [1, 1, 1]))


# --- preference sampling ---


def test_simplex_grid():
    grid = simplex_grid(3, 4)
    assert grid.shape == (math.comb(6, 2), 3)
    assert np.allclose(grid.sum(axis=1), 1.0)
    assert np.allclose(grid * 4, np.round(grid * 4))
    assert len({tuple(row) for row in grid.tolist()}) == len(grid)
    assert [1.0, 0.0, 0.0] in grid.tolist() and [0.0, 0.0, 1.0] in grid.tolist()
    assert simplex_grid(1, 5).tolist() == [[1.0]]
    with pytest.raises(ValueError, match="points"):
        simplex_grid(20, 10)


def test_dirichlet_preferences():
    prefs = dirichlet_preferences(20, 3, alpha=1.0, seed=7)
    assert prefs.shape == (20, 3)
    assert np.all(prefs >= 0) and np.allclose(prefs.sum(axis=1), 1.0)
    assert np.array_equal(prefs, dirichlet_preferences(20, 3, alpha=1.0, seed=7))
    assert not np.array_equal(prefs, dirichlet_preferences(20, 3, alpha=1.0, seed=8))
    # Small concentration pushes mass to the corners: the largest coordinate is large on average.
    corners = dirichlet_preferences(2000, 3, alpha=0.2, seed=0).max(axis=1).mean()
    uniform = dirichlet_preferences(2000, 3, alpha=1.0, seed=0).max(axis=1).mean()
    assert corners > uniform + 0.1
    with pytest.raises(ValueError, match="alpha"):
        dirichlet_preferences(5, 3, alpha=[1.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="alpha"):
        dirichlet_preferences(5, 3, alpha=[1.0, 1.0])


def test_pareto_rays_match_phn_angles():
    rays = pareto_rays()
    assert rays.shape == (25, 2)
    assert np.allclose(rays.sum(axis=1), 1.0)
    angles = np.arctan2(rays[:, 1], rays[:, 0])
    assert angles[0] == pytest.approx(0.1) and angles[-1] == pytest.approx(np.pi / 2 - 0.1)
    assert np.allclose(np.diff(angles), (np.pi / 2 - 0.2) / 24)
    assert rays[0, 0] == pytest.approx(math.cos(0.1) / (math.cos(0.1) + math.sin(0.1)))
    assert np.allclose(rays[12], [0.5, 0.5])
    with pytest.raises(ValueError):
        pareto_rays(1)
