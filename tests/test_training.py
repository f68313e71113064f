"""Training stages: seeded determinism, progress output, mixed precision, clear errors."""

from __future__ import annotations

import pytest
import torch

import dymu
from _tiny import tiny_batches, tiny_tasks


def _train(seed: int = 0, **edge):
    torch.manual_seed(123)
    ctrl = dymu.Controller(dymu.backbones.lenet(width_mult=0.25), tiny_tasks(3), seed=0)
    data = tiny_batches(3, n_batches=2)
    ctrl.fit_anchor(data, data, config=dymu.AnchorConfig(steps=4, eval_every=2, seed=seed), verbose=False)
    ctrl.fit_affinity(data, n_samples=32)
    ctrl.fit_edge(data, config=dymu.EdgeConfig(steps=4, seed=seed, **edge), verbose=False)
    ctrl.fit_weights(data, config=dymu.WeightConfig(steps=3, seed=seed), verbose=False)
    return ctrl


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_stages_are_deterministic_on_cpu_and_depend_on_the_seed():
    a, b, c = _train(0), _train(0), _train(1)
    for part in ("anchor", "edge", "weight"):
        assert _same(getattr(a, part), getattr(b, part)), part
    assert not _same(a.edge, c.edge)
    assert not _same(a.weight, c.weight)


def test_training_changes_the_hypernets_and_records_the_stages():
    ctrl = _train(0)
    fresh = dymu.Controller(dymu.backbones.lenet(width_mult=0.25), tiny_tasks(3), seed=0)
    assert not _same(ctrl.edge, fresh.edge)
    assert not _same(ctrl.weight, fresh.weight)
    assert set(ctrl.stages) == {"anchor", "affinity", "edge", "weights"}
    assert ctrl.stages["edge"]["log"][-1]["step"] == 4
    assert torch.isfinite(ctrl.loss_scales).all() and (ctrl.loss_scales > 0).all()


def test_progress_lines_name_the_stage_and_the_time_left(capsys, monkeypatch):
    monkeypatch.delenv("DYMU_QUIET", raising=False)
    ctrl = dymu.Controller(dymu.backbones.lenet(width_mult=0.25), tiny_tasks(3))
    data = tiny_batches(3, n_batches=1)
    ctrl.fit_anchor(data, data, config=dymu.AnchorConfig(steps=2, eval_every=1))
    err = capsys.readouterr().err
    assert "[anchor] step 2/2 (100%)" in err and "ETA" in err and "loss_t0" in err
    assert "[anchor] val t0 acc" in err


@pytest.mark.parametrize("routing", ["soft", "hard"])
def test_both_routings_and_bfloat16_autocast_train(routing):
    ctrl = _train(0, routing=routing, amp=True)
    assert all(torch.isfinite(p).all() for p in ctrl.edge.parameters())


def test_bad_configs_and_batches_raise_clear_errors():
    with pytest.raises(ValueError, match="routing"):
        dymu.EdgeConfig(routing="mixed")
    with pytest.raises(ValueError, match="steps"):
        dymu.WeightConfig(steps=0)
    with pytest.raises(ValueError, match="optimizer"):
        dymu.AnchorConfig(optimizer="lbfgs")
    ctrl = dymu.Controller(dymu.backbones.lenet(width_mult=0.25), tiny_tasks(3))
    x, targets = tiny_batches(3, n_batches=1)[0]
    del targets["t1"]
    with pytest.raises(ValueError, match=r"lacks targets for task\(s\) \['t1'\]"):
        ctrl.fit_anchor([(x, targets)], steps=1, verbose=False)
    with pytest.raises(ValueError, match="no batch"):
        ctrl.fit_anchor([], steps=1, verbose=False)
    with pytest.raises(ValueError, match="fit_affinity"):
        ctrl.fit_edge(tiny_batches(3, n_batches=1), steps=1, verbose=False)
    with pytest.raises(ValueError, match="fit_edge"):
        ctrl.fit_weights(tiny_batches(3, n_batches=1), steps=1, verbose=False)


def test_controller_rejects_a_single_task_and_foreign_backbones():
    with pytest.raises(ValueError, match="at least 2 tasks"):
        dymu.Controller(dymu.backbones.lenet(width_mult=0.25), tiny_tasks(1))
    with pytest.raises(ValueError, match="BlockBackbone"):
        dymu.Controller(torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3)), tiny_tasks(2))
    with pytest.raises(ValueError, match="unknown task set"):
        dymu.Controller(dymu.backbones.lenet(width_mult=0.25), "imagenet")


def test_the_seed_controls_everything_whatever_was_drawn_before():
    """Two controllers trained with the same seed in one process have identical weights (CPU)."""

    def trained(seed: int) -> dymu.Controller:
        torch.rand(17)  # any earlier draw of the global generator must not matter
        ctrl = dymu.Controller(dymu.backbones.lenet(width_mult=0.25), tiny_tasks(3), seed=seed)
        data = tiny_batches(3)
        ctrl.fit_anchor(data, data, steps=3, verbose=False)
        ctrl.fit_affinity(data, n_samples=32, calibration_samples=32)
        ctrl.fit_edge(data, data, steps=3, verbose=False)
        ctrl.fit_weights(data, data, steps=2, verbose=False)
        return ctrl

    first = trained(5)
    torch.randn(1000)
    second, other = trained(5), trained(6)
    for module in ("anchor", "edge", "weight"):
        a, b, c = (getattr(x, module).state_dict() for x in (first, second, other))
        assert all(torch.equal(a[k], b[k]) for k in a), module
    a, c = first.anchor.state_dict(), other.anchor.state_dict()
    assert not all(torch.equal(a[k], c[k]) for k in a), "another seed should give other weights"


def test_a_weight_hypernet_that_never_beats_the_unadapted_trees_on_validation_adapts_nothing():
    torch.manual_seed(0)
    ctrl = dymu.Controller(dymu.backbones.lenet(width_mult=0.25), tiny_tasks(3), seed=0)
    data = tiny_batches(3, n_batches=2)
    val = tiny_batches(3, n_batches=1, seed=5)
    ctrl.fit_anchor(data, data, config=dymu.AnchorConfig(steps=6, eval_every=3), verbose=False)
    ctrl.fit_affinity(data, n_samples=32)
    ctrl.fit_edge(data, config=dymu.EdgeConfig(steps=2), verbose=False)
    batches = ctrl._validation_batches(val, 512)
    unadapted = ctrl._validation_score(batches, adapted=False)
    # a learning rate that wrecks every adaptation it makes
    ctrl.fit_weights(data, val, config=dymu.WeightConfig(steps=4, eval_every=2, lr=2.0), verbose=False)
    selection = ctrl.stages["weights"]["selection"]
    assert [h["step"] for h in selection["history"]] == [2, 4]
    assert min(h["score"] for h in selection["history"]) > unadapted   # training only made it worse...
    assert selection["best_step"] == 0                                 # ...so the starting, zero-output state is kept
    assert ctrl._validation_score(batches, adapted=True) == pytest.approx(unadapted, rel=1e-6)
    x = val[0][0]
    model = ctrl.build_model([0.6, 0.3, 0.1], budget=0.7).eval()
    plain = ctrl.build_model([0.6, 0.3, 0.1], budget=0.7, use_weight_hypernet=False).eval()
    with torch.no_grad():
        assert all(torch.allclose(model(x)[k], plain(x)[k], atol=1e-6) for k in ctrl.task_names)
