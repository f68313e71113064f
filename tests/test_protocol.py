"""The benchmark protocol on fake methods whose test losses are known exactly."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dymu
from benchmarks import protocol
from benchmarks.methods import Method
from dymu.metrics import mean_absolute_error, pareto_rays, uniformity


# --------------------------------------------------------------------------------------- fakes
def _tasks(n: int = 2) -> list[dymu.Task]:
    """Tasks whose loss is the squared prediction (targets are 0) and whose primary metric is its absolute value."""
    return [
        dymu.Task(f"t{i}", head=lambda shape: nn.Identity(), loss=F.mse_loss, metrics={"mae": mean_absolute_error},
                  primary="mae", higher_is_better=False)
        for i in range(n)
    ]


class _Constant(nn.Module):
    """Predicts ``sqrt(loss_i)`` for task ``i`` whatever the input, so the MSE against 0 is ``loss_i``."""

    def __init__(self, losses):
        super().__init__()
        self.values = torch.tensor([math.sqrt(v) for v in losses], dtype=torch.float32)
        self.scale = nn.Parameter(torch.ones(()))  # one parameter, so the model has a size

    def forward(self, x):
        batch = x.shape[0]
        return {f"t{i}": self.scale * v.expand(batch) for i, v in enumerate(self.values)}


class _FakeMethod(Method):
    """Model losses are a known function of the preference (and of c when dynamic)."""

    def __init__(self, loss_of, dynamic: bool = False, name: str = "fake"):
        super().__init__()
        self.loss_of, self.dynamic_cost, self.name = loss_of, dynamic, name
        self.fixed = None if dynamic else _Constant(loss_of(None, None))

    def fit(self, train, val, *, device, verbose=True):
        self.train_seconds = 1.0

    def model_for(self, preference, *, c=None, budget=None):
        return self.fixed if self.fixed is not None else _Constant(self.loss_of(np.asarray(preference), c))

    def stored_modules(self):
        return [self.fixed] if self.fixed is not None else []


class _CountingData:
    """Two batches of zeros; counts how often it is read."""

    def __init__(self, n_tasks: int = 2):
        self.reads = 0
        self.batches = [(torch.zeros(4, 1, 2, 2), {f"t{i}": torch.zeros(4) for i in range(n_tasks)}) for _ in range(2)]

    def __iter__(self):
        self.reads += 1
        return iter(self.batches)


def _record(setting, pref, losses, primary=None, flops=100, params=10):
    return protocol.ModelRecord(setting, list(pref), list(losses), list(primary if primary is not None else losses), {},
                                flops, params)


# ---------------------------------------------------------------------------------- preferences
def test_two_task_preferences_are_the_phn_rays_and_more_tasks_a_fixed_dirichlet_draw():
    assert np.allclose(protocol.evaluation_preferences(2), pareto_rays(25))
    six = protocol.evaluation_preferences(6)
    assert six.shape == (20, 6) and np.allclose(six.sum(axis=1), 1) and (six >= 0).all()
    assert np.array_equal(six, protocol.evaluation_preferences(6))
    assert not np.array_equal(six, protocol.evaluation_preferences(6, seed=protocol.PREFERENCE_SEED + 1))
    assert protocol.cost_preferences(3).shape == (protocol.N_COST_PREFERENCES, 3)
    with pytest.raises(ValueError, match="at least 2 tasks"):
        protocol.evaluation_preferences(1)


def test_settings_skip_a_budget_below_the_minimum_and_say_why():
    dynamic = _FakeMethod(lambda r, c: [1.0, 1.0], dynamic=True)
    settings, skipped = protocol.settings_for(dynamic, min_budget=0.52)
    assert [s.name for s in settings] == ["c=0", "c=1", "budget=min", "budget=0.6", "budget=0.8", "budget=1"]
    assert settings[2].budget == pytest.approx(0.52) and settings[0].c == 0.0 and settings[0].budget is None
    assert [s["name"] for s in skipped] == ["budget=0.4", "budget=0.5"] and "0.5200" in skipped[0]["reason"]
    settings, skipped = protocol.settings_for(dynamic, min_budget=0.3)
    assert [s.name for s in settings] == ["c=0", "c=1", "budget=min", "budget=0.4", "budget=0.5", "budget=0.6",
                                          "budget=0.8", "budget=1"] and not skipped
    static = _FakeMethod(lambda r, c: [1.0, 1.0])
    assert protocol.settings_for(static) == ([protocol.STATIC], [])
    with pytest.raises(ValueError, match="minimum budget"):
        protocol.settings_for(dynamic)


def test_settings_take_the_minimum_budget_from_the_controller(controller):
    method = _FakeMethod(lambda r, c: [1.0] * 3, dynamic=True)
    method.controller = controller
    settings, _ = protocol.settings_for(method)
    assert settings[2].budget == pytest.approx(controller.min_budget)


# ------------------------------------------------------------------------------------ loss space
def test_multifashion_uses_raw_losses_and_the_phn_reference_point():
    space = protocol.loss_space("multifashion", [0.4, 0.5])
    assert space.reference == (2.0, 2.0) and not space.normalise_uniformity
    assert np.array_equal(space.uniformity_losses(np.array([[1.0, 3.0]])), [[1.0, 3.0]])


def test_other_benchmarks_take_the_input_blind_losses_as_reference_and_normalise_uniformity():
    space = protocol.loss_space("fashion_digits", [0.5, 0.01, 2.0], [2.3, 0.05, 3.0])
    assert space.reference == (2.3, 0.05, 3.0) and space.normalise_uniformity
    assert np.allclose(space.uniformity_losses(np.array([[0.5, 0.02, 1.0]])), [[1.0, 2.0, 0.5]])
    assert "input" in space.as_dict()["rule"]
    with pytest.raises(ValueError, match="input_blind_loss"):
        protocol.loss_space("fashion_digits", [0.5, 0.01, 2.0])
    with pytest.raises(ValueError, match="finite and > 0"):
        protocol.loss_space("fashion_digits", [0.5, 0.0, 1.0], [1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="coordinates"):
        protocol.loss_space("multifashion", [0.5, 0.5, 0.5])


def test_input_blind_losses_are_the_entropy_of_the_class_frequencies_and_the_target_variance():
    tasks = [
        dymu.Task("label", head=lambda s: nn.Identity(), loss=F.cross_entropy),
        dymu.Task("mask", head=lambda s: nn.Identity(), loss=F.cross_entropy),
        dymu.Task("image", head=lambda s: nn.Identity(), loss=F.mse_loss),
    ]
    labels = torch.tensor([0, 0, 0, 1])  # frequencies 3/4, 1/4
    mask = torch.zeros(4, 1, 2, dtype=torch.long)
    mask[:, 0, 1] = torch.tensor([0, 1, 0, 1])  # pixel 0 always class 0, pixel 1 half and half
    image = torch.tensor([[1.0], [3.0], [1.0], [3.0]])  # mean 2, variance 1
    data = [(torch.zeros(2, 1), {"label": labels[:2], "mask": mask[:2], "image": image[:2]}),
            (torch.zeros(2, 1), {"label": labels[2:], "mask": mask[2:], "image": image[2:]})]
    blind = protocol.input_blind_losses(tasks, data)
    entropy = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert blind == pytest.approx([entropy, (0.0 + math.log(2)) / 2, 1.0], abs=1e-6)
    with pytest.raises(ValueError, match="cross-entropy and squared error"):
        protocol.input_blind_losses([dymu.Task("x", head=lambda s: nn.Identity(), loss=F.l1_loss)], data)


# ------------------------------------------------------------------------------------ evaluation
def test_evaluation_measures_the_known_losses_and_reads_the_test_data_once_per_distinct_model():
    tasks = _tasks()
    prefs = pareto_rays(3)
    example = torch.zeros(1, 1, 2, 2)

    static = _FakeMethod(lambda r, c: [0.25, 0.64])
    data = _CountingData()
    records = protocol.evaluate_method(static, tasks, data, prefs, [protocol.STATIC], example=example)
    assert data.reads == 1  # one stored model for all three preferences
    assert len(records) == 3 and all(r.setting == "static" for r in records)
    assert records[0].losses == pytest.approx([0.25, 0.64]) and records[0].primary == pytest.approx([0.5, 0.8])
    assert records[0].params == 1 and records[0].preference == pytest.approx(prefs[0].tolist())

    dynamic = _FakeMethod(lambda r, c: [float(1 - r[0] + c), float(1 - r[1])], dynamic=True)
    data = _CountingData()
    settings = [protocol.Setting("c=0", c=0.0), protocol.Setting("c=1", c=1.0)]
    records = protocol.evaluate_method(dynamic, tasks, data, prefs, settings, example=example)
    assert data.reads == 6 and [r.setting for r in records] == ["c=0"] * 3 + ["c=1"] * 3
    assert records[4].losses == pytest.approx([1 - prefs[1, 0] + 1.0, 1 - prefs[1, 1]])


def test_controller_models_with_the_same_tree_and_request_are_evaluated_once(controller):
    """budget = 1 gives the c = 0 tree: the same network, measured once; without the weight hypernet equal
    trees are equal networks whatever the preference."""
    class Wrapped(Method):
        dynamic_cost = True
        name = "dymu"

        def __init__(self, ctrl, use_weight_hypernet=True):
            super().__init__()
            self.controller, self.use = ctrl, use_weight_hypernet

        def fit(self, *a, **k):
            pass

        def model_for(self, preference, *, c=None, budget=None):
            return self.controller.build_model(list(preference), budget, c=c, use_weight_hypernet=self.use)

        def stored_modules(self):
            return [self.controller.anchor]

    from _tiny import tiny_batches, tiny_tasks

    tasks = tiny_tasks(3)
    prefs = protocol.evaluation_preferences(3, 4)
    example = tiny_batches(3, 1)[0][0][:1]
    data = _CountingDataFrom(tiny_batches(3, 1))
    settings = [protocol.Setting("c=0", c=0.0), protocol.Setting("budget=1", budget=1.0)]
    records = protocol.evaluate_method(Wrapped(controller), tasks, data, prefs, settings, example=example)
    same_tree = sum(records[i].info["tree"] == records[i + 4].info["tree"] and records[i].info["c"] == records[i + 4].info["c"]
                    for i in range(4))
    assert data.reads == 8 - same_tree and same_tree >= 1
    for i in range(4):
        if records[i].info == records[i + 4].info:
            assert records[i].losses == records[i + 4].losses
    data = _CountingDataFrom(tiny_batches(3, 1))
    records = protocol.evaluate_method(Wrapped(controller, False), tasks, data, prefs, settings, example=example)
    assert data.reads == len({str(r.info["tree"]) for r in records})


class _CountingDataFrom(_CountingData):
    def __init__(self, batches):
        self.reads, self.batches = 0, batches


# ------------------------------------------------------------------------------------- summaries
def test_summary_numbers_match_hand_computed_values():
    tasks = _tasks()
    prefs = np.array([[0.75, 0.25], [0.5, 0.5], [0.25, 0.75]])
    losses = np.array([[1.0, 3.0], [2.0, 2.0], [3.0, 1.0]])
    records = [_record("c=0", p, l, primary=np.sqrt(l)) for p, l in zip(prefs, losses)]
    space = protocol.LossSpace((4.0, 4.0), (2.0, 2.0), False, "test")
    single = {"t0": {"loss": 2.0, "mae": 2.0}, "t1": {"loss": 2.0, "mae": 2.0}}
    cost = {"settings": {"c=0": {"mean_flops": 55.0, "params": 7.0}}}
    out = protocol.summarise(records, tasks, space, single, cost)["c=0"]
    # a staircase over the reference box (4, 4): widths 1, 1, 1 and heights 1, 2, 3
    assert out["hv"] == pytest.approx(6.0)
    assert out["uniformity"] == pytest.approx(uniformity(losses, prefs))
    assert out["uniformity"] == pytest.approx(1.0)  # r_j L_j equal for every preference
    assert out["controllability"] == pytest.approx(1.0)  # more preference, lower error, for both tasks
    expected = np.mean([np.mean([-100 * (np.sqrt(l) - 2.0) / 2.0 for l in row]) for row in losses])
    assert out["delta_mtl"] == pytest.approx(expected)
    assert out["mean_flops"] == 55.0 and out["params"] == 7.0 and out["mean_flops_eval"] == 100.0
    assert out["n_models"] == 3 and out["mean_loss"]["t0"] == pytest.approx(2.0)

    normalised = protocol.LossSpace((4.0, 4.0), (1.0, 3.0), True, "test")
    out = protocol.summarise(records, tasks, normalised, single, subset=prefs[:1])["c=0"]
    assert out["hv"] == pytest.approx(6.0)  # the hypervolume is over raw losses whatever uniformity sees
    assert out["uniformity"] == pytest.approx(uniformity(losses / [1.0, 3.0], prefs)) and out["uniformity"] < 1
    assert out["hv_subset"] == pytest.approx((4 - 1) * (4 - 3))
    assert out["mean_flops"] == 100.0  # no planned cost: the built models' mean


def test_a_model_that_ignores_the_preference_has_no_controllability_and_single_task_has_zero_delta():
    tasks = _tasks()
    prefs = pareto_rays(4)
    records = [_record("static", p, [1.0, 1.0]) for p in prefs]
    space = protocol.LossSpace((2.0, 2.0), (1.0, 1.0), False, "test")
    out = protocol.summarise(records, tasks, space, {"t0": {"loss": 1.0, "mae": 1.0}, "t1": {"loss": 1.0, "mae": 1.0}})
    assert out["static"]["controllability"] is None and out["static"]["delta_mtl"] == pytest.approx(0.0)
    assert out["static"]["hv"] == pytest.approx(1.0)


def test_aggregate_gives_mean_and_sample_std_over_seeds_and_skips_undefined_values():
    out = protocol.aggregate([{"hv": 1.0, "name": "x", "inner": {"a": 2.0}}, {"hv": 2.0, "name": "y", "inner": {"a": None}},
                              {"hv": 3.0, "name": "z", "inner": {"a": float("nan")}}])
    assert out["hv"] == {"mean": 2.0, "std": pytest.approx(1.0), "n": 3}
    assert out["name"] == "x"
    assert out["inner"]["a"] == {"mean": 2.0, "std": None, "n": 1}
    assert protocol.aggregate([None, None]) == {"mean": None, "std": None, "n": 0}
    with pytest.raises(ValueError):
        protocol.aggregate([])


# --------------------------------------------------------------------------------------- targets
def _agg(value):
    return {"mean": value, "std": None, "n": 1}


def _methods(dymu_hv=2.5, phn_hv=2.0, dymu_u=0.8, phn_u=0.9, curve=(10.0, 8.0, 6.0), dymu_s=100.0, hs_s=300.0):
    dyn = {"c=0": {"hv": _agg(dymu_hv), "uniformity": _agg(dymu_u)}, "c=1": {"hv": _agg(dymu_hv - 0.1), "uniformity": _agg(dymu_u)}}
    static = lambda hv, u: {"static": {"hv": _agg(hv), "uniformity": _agg(u)}}  # noqa: E731
    return {
        "dymu": {"settings": dyn, "train_seconds": _agg(dymu_s), "cost_curve": {"c": [0.0, 0.5, 1.0], "mean_flops": list(curve)}},
        "phn": {"settings": static(phn_hv, phn_u)},
        "phn_bn": {"settings": static(phn_hv + 1.0, phn_u - 0.5)},
        "hard_sharing": {"settings": static(1.0, 0.5), "train_seconds": _agg(30.0), "train_seconds_all_preferences": _agg(hs_s)},
    }


def test_targets_are_decided_on_the_means_with_the_numbers_beside_them():
    targets = protocol.check_targets(_methods(), hv_reference=[2, 2])
    by_text = {t["target"]: t for t in targets}
    hv_phn = by_text["dymu hv at c=0 > phn hv (mean over seeds)"]
    assert hv_phn["met"] is True and hv_phn["dymu"] == 2.5 and hv_phn["phn"] == 2.0 and hv_phn["hv_ref"] == [2, 2]
    assert by_text["dymu hv at c=0 > phn_bn hv (mean over seeds)"]["met"] is False
    assert by_text["dymu uniformity at c=1 > phn uniformity (mean over seeds)"]["met"] is False
    assert by_text["dymu uniformity at c=1 > phn_bn uniformity (mean over seeds)"]["met"] is True
    cost = [t for t in targets if "FLOPs fall" in t["target"]][0]
    assert cost["met"] is True and cost["c0_to_c1_ratio"] == pytest.approx(0.6)
    time_target = [t for t in targets if "training time" in t["target"]][0]
    assert time_target["met"] is True and time_target["hard_sharing_seconds"] == 300.0  # all preferences, not the subset


def test_targets_missed_or_undecided():
    targets = protocol.check_targets(_methods(curve=(10.0, 11.0, 9.0), dymu_s=400.0))
    assert [t["met"] for t in targets if "FLOPs fall" in t["target"]] == [False]
    assert [t["met"] for t in targets if "training time" in t["target"]] == [False]
    partial = _methods()
    del partial["phn_bn"], partial["dymu"]["cost_curve"]
    targets = protocol.check_targets(partial)
    undecided = [t for t in targets if t["met"] is None]
    assert len(undecided) == 5 and all("why_undecided" in t for t in undecided)


# ------------------------------------------------------------------------------------------- cost
def test_planned_cost_is_the_mean_of_the_controllers_plans(controller):
    method = _FakeMethod(lambda r, c: [1.0] * 3, dynamic=True)
    method.controller = controller
    prefs = protocol.cost_preferences(3, 12)
    settings = [protocol.Setting("c=1", c=1.0), protocol.Setting("budget=min", budget=controller.min_budget)]
    cost = protocol.planned_cost(method, settings, prefs, curve_cs=(0.0, 1.0))
    plans = [controller.plan(p, c=1.0) for p in prefs]
    assert cost["settings"]["c=1"]["mean_flops"] == pytest.approx(np.mean([p.flops for p in plans]))
    assert cost["settings"]["c=1"]["params"] == pytest.approx(np.mean([p.params for p in plans]))
    assert cost["settings"]["budget=min"]["mean_flops"] == pytest.approx(controller.cost_table.min_flops)
    assert cost["curve"]["c"] == [0.0, 1.0] and cost["curve"]["mean_flops"][1] == pytest.approx(np.mean([p.flops for p in plans]))
    assert cost["n_preferences"] == 12 and cost["anchor_flops"] == controller.cost_table.anchor_flops
    assert protocol.planned_cost(_FakeMethod(lambda r, c: [1.0, 1.0]), settings, prefs) is None


def test_planned_cost_reports_whether_the_cost_follows_the_budget(controller):
    method = _FakeMethod(lambda r, c: [1.0] * 3, dynamic=True)
    method.controller = controller
    prefs = protocol.cost_preferences(3, 10)
    low = controller.min_budget / 2
    cost = protocol.planned_cost(method, [], prefs, curve_cs=(), curve_budgets=(low, 0.7, 1.0))
    curve = cost["budget_curve"]
    assert curve["budget"] == [0.7, 1.0] and curve["skipped"] == [low]
    for budget, fraction, fallback in zip(curve["budget"], curve["flops_fraction"], curve["fallback_fraction"]):
        plans = [controller.plan(p, budget) for p in prefs]
        assert fraction == pytest.approx(np.mean([p.flops for p in plans]) / controller.cost_table.anchor_flops)
        assert fraction <= budget + 1e-9
        assert fallback == pytest.approx(np.mean([p.fallback for p in plans]))


# ------------------------------------------------------------------------------ equal cost, control
def test_preference_loss_weighs_each_task_loss_by_its_preference_over_its_single_task_loss():
    tasks = _tasks(2)
    records = [_record("budget=0.5", [0.75, 0.25], [2.0, 3.0]), _record("budget=0.5", [0.25, 0.75], [1.0, 1.0])]
    space = protocol.LossSpace((9.0, 9.0), (1.0, 1.0), False, "example")
    out = protocol.summarise(records, tasks, space, {"t0": {"loss": 1.0, "mae": 1.0}, "t1": {"loss": 2.0, "mae": 2.0}})["budget=0.5"]
    assert out["preference_loss_per_model"] == pytest.approx([0.75 * 2 + 0.25 * 1.5, 0.25 * 1 + 0.75 * 0.5])
    assert set(out["controllability_per_task"]) == {"t0", "t1"}
    assert out["distinct_trees"] is None and out["fallback_fraction"] is None  # no trees in these records
    with pytest.raises(ValueError, match="positive"):
        protocol.preference_losses(np.ones((1, 2)), np.ones((1, 2)), [1.0, 0.0])


def test_summary_counts_distinct_trees_and_fallback_merges():
    tasks = _tasks(2)
    rows = []
    for k, (tree, shrunk) in enumerate([([[0, 1], [0, 1]], False), ([[0, 0], [0, 1]], True), ([[0, 1], [0, 1]], False)]):
        record = _record("budget=0.6", [0.5 + 0.1 * k, 0.5 - 0.1 * k], [1.0 + k, 2.0 - k])
        record.info = {"tree": tree, "shrunk": shrunk}
        rows.append(record)
    space = protocol.LossSpace((9.0, 9.0), (1.0, 1.0), False, "example")
    out = protocol.summarise(rows, tasks, space, {"t0": {"loss": 1.0, "mae": 1.0}, "t1": {"loss": 1.0, "mae": 1.0}})["budget=0.6"]
    assert out["distinct_trees"] == 2 and out["fallback_fraction"] == pytest.approx(1 / 3)


def test_equal_cost_comparison_counts_the_preferences_the_controller_wins():
    ours = {"budget=0.4": {"preference_loss_per_model": [1.0, 2.0]}, "budget=0.6": {"preference_loss_per_model": [1.0, 1.0]}}
    static = {"budget=0.4": {"preference_loss_per_model": [1.5, 1.0]}, "budget=0.6": {"preference_loss_per_model": [1.0, 0.5]}}
    out = protocol.compare_at_equal_cost(ours, static, budgets=(0.4, 0.6, 0.8))
    assert set(out) == {"budget=0.4", "budget=0.6"}  # 0.8 is on neither side
    assert out["budget=0.4"]["wins"] == 1 and out["budget=0.6"]["wins"] == 0  # a tie is no win
    with pytest.raises(ValueError, match="same preferences"):
        protocol.compare_at_equal_cost(ours, {"budget=0.4": {"preference_loss_per_model": [1.0]}}, budgets=(0.4,))


def _control_methods(ctrl=0.8, per_task=(0.5, 0.4), trees=9.0, delta=-5.0, hv_half=0.5, hv_full=1.0, hv_single=1.0,
                     wins=0.8, fractions=(0.28, 0.45, 0.66, 0.85), fallback=0.01):
    setting = {"controllability": _agg(ctrl), "controllability_per_task": {f"t{k}": _agg(v) for k, v in enumerate(per_task)},
               "distinct_trees": _agg(trees)}
    settings = {"budget=0.4": setting, "budget=0.6": setting, "budget=0.5": {"delta_mtl": _agg(delta), "hv": _agg(hv_half)},
                "budget=1": {"hv": _agg(hv_full)}}
    equal = {f"budget={b:g}": {"win_fraction": _agg(wins), "mean_ours": _agg(1.0), "mean_static": _agg(1.1)} for b in (0.4, 0.6, 0.8)}
    curve = {"budget": [0.3, 0.5, 0.7, 0.9], "flops_fraction": list(fractions), "fallback_fraction": [fallback] * 4, "skipped": []}
    return {"dymu": {"settings": settings, "equal_cost": equal, "budget_curve": curve},
            "single_task": {"settings": {"static": {"hv": _agg(hv_single)}}}}


def test_control_targets_are_met_only_when_every_condition_holds():
    assert all(t["met"] for t in protocol.check_control_targets(_control_methods()))
    for change, missed in [({"per_task": (0.9, 0.2)}, "controllability"), ({"trees": 7.0}, "distinct trees"),
                           ({"delta": -11.0}, "budget=0.5"), ({"hv_half": 0.0}, "budget=0.5"),
                           ({"hv_full": 0.9}, "budget=1"), ({"wins": 0.7}, "static tree"),
                           ({"fractions": (0.2, 0.45, 0.66, 0.85)}, "planned mean FLOPs"), ({"fallback": 0.06}, "planned mean FLOPs")]:
        targets = protocol.check_control_targets(_control_methods(**change))
        failed = [t["target"] for t in targets if t["met"] is False]
        assert failed and all(missed in t for t in failed), (change, failed)
    undecided = protocol.check_control_targets({"dymu": {"settings": {}}})
    assert all(t["met"] is None and "why_undecided" in t for t in undecided)


def test_static_trees_at_equal_cost_fit_their_budgets(controller):
    from benchmarks.baselines import StaticTreesAtBudgets
    from benchmarks.baselines.equal_cost import extra_share_for_budget
    from benchmarks.methods import StepBudget
    from dymu.metrics import count_flops
    from tests._tiny import tiny_batches

    table = controller.cost_table
    budgets = [b for b in (0.4, 0.6, 0.8, 1.0) if b >= table.min_budget]
    method = StaticTreesAtBudgets(lambda: dymu.backbones.lenet(width_mult=0.25), controller.tasks, StepBudget(2, 1, 1),
                                  controller.affinity, table, budgets, loss_scales=[1.0, 1.0, 1.0])
    assert [s.budget for s in protocol.settings_for(method)[0]] == budgets
    data = tiny_batches(3)
    method.fit(data, data, device="cpu", verbose=False)
    example = data[0][0][:1]
    sizes = []
    for budget in budgets:
        model = method.model_for(np.full(3, 1 / 3), budget=budget)
        sizes.append(count_flops(model, example))
        assert sizes[-1] <= budget * table.anchor_flops
    assert sizes == sorted(sizes)  # a larger budget never buys a smaller tree
    with pytest.raises(ValueError, match="budget among"):
        method.model_for(np.full(3, 1 / 3), budget=0.55)
    with pytest.raises(ValueError, match="cheapest tree"):
        extra_share_for_budget(table, table.min_budget / 2)


def test_the_package_exports_every_name_of_its_modules_as_the_same_object():
    import importlib
    import pkgutil

    modules = [importlib.import_module(f"benchmarks.protocol.{m.name}") for m in pkgutil.iter_modules(protocol.__path__)]
    assert len(modules) == 10
    names = [name for module in modules for name in module.__all__]
    assert sorted(protocol.__all__) == sorted(names) and len(set(names)) == len(names)
    for module in modules:
        for name in module.__all__:
            assert getattr(protocol, name) is getattr(module, name), name
    # the function, not the module of the same name
    assert callable(protocol.loss_space) and protocol.loss_space.__module__ == "benchmarks.protocol.loss_space"


def test_shared_node_targets_compare_budget1_with_every_baseline_that_ran():
    from benchmarks.protocol import check_shared_node_targets

    agg = lambda v: {"mean": v, "std": None, "n": 1}  # noqa: E731
    methods = {
        "dymu": {"settings": {"budget=1": {"hv": agg(2.5), "hv_subset": agg(2.0), "delta_mtl": agg(1.0), "uniformity": agg(0.96)},
                              "budget=min": {"hv": agg(2.2), "hv_subset": agg(1.9)},
                              "budget=0.6": {"controllability": agg(0.8)}, "budget=0.8": {"controllability": agg(0.95)}}},
        "phn": {"settings": {"static": {"hv": agg(2.4)}}},
        "hard_sharing": {"settings": {"static": {"hv": agg(1.95)}}},
    }
    targets = {t["target"].split(" (")[0]: t for t in check_shared_node_targets(methods, "multifashion")}
    assert targets["dymu hv at budget=1 > phn hv"]["met"] is True
    # hard sharing trained on a subset of the preferences: compared on the controller's hv over that subset
    hs = targets["dymu hv at budget=1 > hard_sharing hv"]
    assert hs["met"] is True and hs["dymu"] == 2.0
    assert targets["dymu hv at budget=min >= hard_sharing hv"]["met"] is False  # 1.9 < 1.95
    assert targets["dymu at budget=1: hv >= 2.45 at"]["met"] is True
    assert targets["dymu controllability >= 0.9 at a binding budget"]["met"] is True  # the higher of 0.8 and 0.95
    assert not any("cross_stitch" in t for t in targets)  # a baseline that did not run is left out
    methods["dymu"]["settings"]["budget=1"]["delta_mtl"] = agg(-0.1)
    assert [t["met"] for t in check_shared_node_targets(methods, "fashion_digits") if "ΔMTL" in t["target"]] == [False]
    assert not any("2.45" in t["target"] for t in check_shared_node_targets(methods, "fashion_digits"))


def test_the_training_budget_note_says_how_each_rows_block_passes_were_counted():
    from benchmarks.protocol import BLOCK_PASSES_RULE
    from benchmarks.protocol.report import _training_budget_lines

    budget = {"rule": "equal training images", "steps": 10, "images": 100}
    new = {"training_totals": {"steps": 10, "block_passes": 5, "block_passes_counted": "forward"}}
    old = {"training_totals": {"steps": 10, "block_passes": 4}}
    both = " ".join(_training_budget_lines({"training_budget": budget, "methods": {"dymu": old, "phn": new}}))
    assert BLOCK_PASSES_RULE in both and "Counted before that rule" in both and both.rstrip(".").endswith("dymu")
    only_old = " ".join(_training_budget_lines({"training_budget": budget, "methods": {"dymu": old}}))
    assert BLOCK_PASSES_RULE not in only_old and "the supernet stage counted as every stream once" in only_old
    only_new = " ".join(_training_budget_lines({"training_budget": budget, "methods": {"phn": new}}))
    assert BLOCK_PASSES_RULE in only_new and "Counted before" not in only_new
    # seeds of one row counted under both rules (a resumed run): the row is named, whichever seed came first
    mixed = {**new, "per_seed": [new, old]}
    assert " ".join(_training_budget_lines({"training_budget": budget, "methods": {"phn": new, "dymu": mixed}})).rstrip(
        ".").endswith("dymu")
