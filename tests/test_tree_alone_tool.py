"""python -m benchmarks.tree_alone: one tree cut from a saved controller against the same tree trained alone."""

from __future__ import annotations

import json

import pytest
import torch

import dymu
from benchmarks import run, tree_alone
from benchmarks.baselines.common import evaluate_model
from benchmarks.loaders import run_loaders
from dymu.data import build_benchmark, write_synthetic_sources
from dymu.supernet import frozen_copy

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_tree_cut_from_the_controller_and_trained_alone_from_its_stage0_streams_and_fresh(tmp_path, capsys):
    root = write_synthetic_sources(tmp_path / "sources", n_train=120, n_test=60, digits_per_class=12)
    out = tmp_path / "run"
    assert run.main(["multifashion", "--data-root", str(root), "--out", str(out), "--steps", "2", "2", "2",
                     "--supernet-steps", "2", "--n-preferences", "3", "--test-examples", "20", "--cost-preferences", "6",
                     "--batch-size", "16", "--eval-batch-size", "20", "--calibration-steps", "1", "--threads", "1",
                     "--no-plots", "--supernet-config", "solo=true", "--edge-config", "bn_stats=batch"]) == 0
    state = out / "multifashion-quick-custom-state"
    controller = state / "seed0-dymu.pt"
    tasks = build_benchmark("multifashion", 0, None, str(root)).tasks()
    ctrl = dymu.load(controller, tasks=tasks)
    one_stream = [[1, 1]] * ctrl.n_layers
    common = ["--benchmark", "multifashion", "--quick", "--seed", "0", "--data-root", str(root), "--val-examples", "40"]

    assert tree_alone.main([str(controller), *common, "--tree", json.dumps(one_stream), "--out", str(tmp_path / "one.json")]) == 0
    result = json.loads((tmp_path / "one.json").read_text())
    assert result["tree"]["assignment"] == one_stream
    assert result["flops_fraction"] == pytest.approx(ctrl.min_budget)
    assert [result["ways"][w]["steps"] for w in tree_alone.WAYS] == [0, 6, 8]   # after stage 0, and the total
    assert all(set(result["ways"][w]["metrics"]) == {"top_left", "bottom_right"} for w in tree_alone.WAYS)
    assert result["git"] is not None and "torch" in result["versions"]
    assert "stage0: top_left loss" in capsys.readouterr().out
    assert tree_alone.main(["plot", str(tmp_path / "one.png"), str(tmp_path / "one.json"), str(tmp_path / "one.json")]) == 0
    assert (tmp_path / "one.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(SystemExit):
        tree_alone.main(["plot", str(tmp_path / "two.png"), str(tmp_path / "none.json")])
    assert "none.json" in capsys.readouterr().err

    # the cut way scores what build_model serves for that tree, without the weight hypernet: the anchor tree runs the
    # solo streams, and every tree's BatchNorm statistics are re-estimated as the controller's builds do
    # (two supernet steps keep no solo stream on validation: give the controller its stage-0 streams as solo streams)
    ctrl.solo = frozen_copy(ctrl.anchor)
    ctrl.solo.load_state_dict(torch.load(state / "seed0-teacher.pt", weights_only=True))
    ctrl.save(controller)
    assert ctrl.bn_stats == "batch"
    config = run.make_config("multifashion", "quick", data_root=str(root), val_examples=40, batch_size=16, eval_batch_size=20)
    _, val, _ = run_loaders(build_benchmark("multifashion", 0, None, str(root)), config, 0)
    for budget in (1.0, ctrl.min_budget):
        served = ctrl.build_model([0.7, 0.3], budget=budget, use_weight_hypernet=False)
        tree = [list(row) for row in served.tree.assignment]
        assert tree_alone.main([str(controller), *common, "--tree", json.dumps(tree), "--ways", "cut",
                                "--out", str(tmp_path / "served.json")]) == 0
        expected = evaluate_model(served, ctrl.tasks, list(val), torch.device("cpu"))
        cut = json.loads((tmp_path / "served.json").read_text())["ways"]["cut"]["metrics"]
        for task in ("top_left", "bottom_right"):
            assert cut[task]["loss"] == pytest.approx(expected[task]["loss"], rel=1e-5), (budget, task)
    # the seed is the controller file's: another one is refused, naming both
    with pytest.raises(SystemExit):
        tree_alone.main([str(controller), "--benchmark", "multifashion", "--seed", "1", "--tree", json.dumps(one_stream), "--ways", "cut"])
    assert "seed 0's" in capsys.readouterr().err

    # bad input: a tree of the wrong depth, a missing stage-0 file (named), a budget below the cheapest tree
    with pytest.raises(ValueError, match=f"must have {ctrl.n_layers} layers"):
        tree_alone.main([str(controller), *common, "--tree", json.dumps([[0, 0]])])
    (state / "seed0-teacher.pt").rename(tmp_path / "moved.pt")
    with pytest.raises(SystemExit):
        tree_alone.main([str(controller), *common, "--budget", "1.0"])
    assert "seed0-teacher.pt" in capsys.readouterr().err
    with pytest.raises(ValueError, match="below the cheapest tree"):
        tree_alone.main([str(controller), *common, "--budget", "0.01", "--ways", "cut"])
