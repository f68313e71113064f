"""benchmarks/speed.py end to end on a fresh six-task controller (tiny repeats: only the structure of
the report and the budget arithmetic are checked, never a timing)."""

import json

import pytest
import torch

import dymu
from benchmarks import speed


@pytest.fixture
def restore_threads():
    # --threads sets torch's process-wide thread count; the rest of the suite must not inherit it
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_speed_report_has_every_budget_within_its_budget(tmp_path, restore_threads):
    out = tmp_path / "speed.json"
    assert speed.main(["--out", str(out), "--batch", "4", "--repeats", "2", "--threads", "1"]) == 0
    report = json.loads(out.read_text())
    assert report["n_tasks"] == 6 and report["threads"] == 1 and report["batch"] == 4
    assert set(report["budgets"]) == {"minimum", "0.5", "1"}
    for row in report["budgets"].values():
        assert 0 < row["flops_ratio"] <= row["budget"] + 1e-12
        assert row["time_ratio"] > 0 and row["forward_ms"] > 0
        assert row["handwritten_forward_ms"] > 0
        assert row["derived_over_handwritten"] == pytest.approx(row["forward_ms"] / row["handwritten_forward_ms"])
        assert row["overhead_target_met"] == (row["derived_over_handwritten"] <= report["overhead_target"])
    # the cheapest tree is one stream: one node per branchable layer
    layers = report["budgets"]["minimum"]["nodes"]
    assert report["budgets"]["1"]["nodes"] >= layers
    assert report["build_model_ms_median"] > 0
    assert set(report["train_step_ratio"]) == {"edge", "weights"}
    assert report["versions"]["torch"].startswith("2.")
    assert report["build_model_target_met"] == (report["build_model_ms_median"] <= 5.0)
    # the profile is there exactly when the 5 ms target is missed
    assert (report["build_model_profile"] is None) == report["build_model_target_met"]
    assert report["config"] == {"checkpoint": None, "batch": 4, "repeats": 2, "seed": 0, "threads": 1}
    assert report["git_commit"] is None or len(report["git_commit"].split("+")[0]) == 40


def test_handwritten_tree_is_straight_line_code_over_the_same_modules():
    torch.manual_seed(0)
    ctrl = dymu.Controller(dymu.backbones.lenet(width_mult=0.25), "fashion_digits")
    # a tree with sharing and branching: stream 0 for everyone up to layer 2, then two branches
    tree = dymu.Tree(ctrl.task_names, [[0] * 6, [0] * 6, [0, 0, 0, 3, 3, 3], [0, 1, 0, 3, 3, 5]])
    from dymu.derived import derive_model

    model = derive_model(ctrl.anchor, tree)
    hand = speed.handwritten_tree(model)
    assert "run_tree" not in hand.source and hand.source.count("self.l0_s0(") == 1
    assert hand.source.count("self.l2_s3(h1_0)") == 1 and hand.source.count("self.l3_s") == 4
    assert {id(m) for m in hand.children()} == {id(m) for m in [*model.nodes.values(), *model.heads.values()]}
    x = torch.rand(3, 1, 36, 36)
    with torch.no_grad():
        want, got = model(x), hand(x)
    assert list(got) == list(want) and all(torch.equal(want[t], got[t]) for t in want)
