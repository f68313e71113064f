"""benchmarks/speed.py end to end on a fresh six-task controller (tiny repeats: only the structure of
the report and the budget arithmetic are checked, never a timing)."""

import json

import pytest
import torch

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
    # the cheapest tree is one stream: one node per branchable layer
    layers = report["budgets"]["minimum"]["nodes"]
    assert report["budgets"]["1"]["nodes"] >= layers
    assert report["build_model_ms_median"] > 0
    assert set(report["train_step_ratio"]) == {"edge", "weights"}
    assert report["versions"]["torch"].startswith("2.")
