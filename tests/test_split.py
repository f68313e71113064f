"""``python -m benchmarks.split``: candidate splits of the controller's steps after stage 0 are trained on one
stage 0 and scored on validation; the best is chosen, and malformed candidates are refused by name."""

from __future__ import annotations

import json

import pytest

import dymu
from benchmarks import split
from benchmarks.methods import StepBudget
from benchmarks.config import make_config
from dymu.data import build_benchmark, write_synthetic_sources


def test_candidates_are_scored_on_validation_and_the_best_is_chosen(tmp_path):
    root = write_synthetic_sources(tmp_path / "sources", n_train=120, n_test=60, digits_per_class=12)
    out = tmp_path / "split.json"
    candidates = [split.parse_candidate("supernet=0,edge=3,weights=1,warm_start=merge"),
                  split.parse_candidate("supernet=3,edge=1,weights=0,lr=0.001,distill=none")]
    results = split.score_candidates("multifashion", "quick", 0, candidates, out=out, data_root=str(root), threads=1,
                                     steps=StepBudget(2, 2, 2, batch_size=16), n_preferences=3, val_examples=40,
                                     batch_size=16, eval_batch_size=20)
    assert json.loads(out.read_text()) == json.loads(json.dumps(results))
    scored = results["candidates"]
    assert [c["candidate"] for c in scored] == candidates
    for c in scored:
        assert c["score"] == pytest.approx(c["hv_full"] + c["hv_mid"] + c["hv_min"])
        assert len(c["mean_loss_full"]) == 2 and all(v > 0 for v in c["mean_loss_min"])
    assert scored[0]["edge_config"]["warm_start"] == "merge" and scored[0]["warm_start"]["steps"] > 0
    assert scored[1]["edge_config"]["warm_start"] == "none" and scored[1]["warm_start"] is None
    assert all(c["search"]["chosen"] in ("hypernet", "merge") for c in scored)  # which budget search validation kept
    assert scored[1]["supernet_config"]["lr"] == 0.001 and scored[1]["supernet_config"]["distill"] == "none"
    for c in scored:
        # the control bars are measured on the validation-chosen controller of every candidate
        assert c["controllability_mid"] is None or -1 <= c["controllability_mid"] <= 1
        assert len(c["controllability_mid_per_task"]) == 2
        assert c["cost_budgets"] and all(f <= b + 1e-9 for b, f in zip(c["cost_budgets"], c["cost_fraction"]))
        assert isinstance(c["cost_band"], bool) and 0 <= c["fallback"] <= 1
    cleared = [c for c in scored if c["controllability_mid"] is not None and c["controllability_mid"] >= 0.7 and c["cost_band"]
               and all(v is not None and v > 0.3 for v in c["controllability_mid_per_task"])]
    assert results["chosen"] == max(cleared or scored, key=lambda c: c["score"])["candidate"]
    assert "chosen" in split.format_table(results)
    config = make_config("multifashion", "quick", seeds=[0], data_root=str(root))
    tasks = build_benchmark("multifashion", config.data_seed, config.limit, config.data_root).tasks()
    for index, c in enumerate(scored):  # each candidate's controller is kept, to look inside without training it again
        saved = dymu.load(c["controller"], tasks=tasks)
        assert c["controller"] == str(split.candidate_path(out, index + 1)) and "edge" in saved.stages
        assert ("supernet" in saved.stages) == (c["candidate"]["supernet"] > 0)
        assert saved.search == c["search"]["chosen"]

    # the candidates must spend exactly the steps stage 0 leaves (total 6 - 2)
    with pytest.raises(ValueError, match="leaves 4 steps after stage 0"):
        split.score_candidates("multifashion", "quick", 0, [split.parse_candidate("supernet=3,edge=3,weights=3")],
                               out=out, data_root=str(root), steps=StepBudget(2, 2, 2, batch_size=16))


@pytest.mark.parametrize("text, message", [
    ("supernet=1,edge=1", r"missing \['weights'\]"),
    ("supernet=1,edge=1,weights=1,depth=3", "unknown key 'depth'"),
    ("supernet=1,edge=1,weights=1,lr=fast", "lr must be a float"),
    ("supernet=1,edge=1,weights=1,warm_start_steps=many", "warm_start_steps must be a int"),
    ("supernet=1,edge 1,weights=1", "is not KEY=VALUE"),
])
def test_malformed_candidates_are_refused_by_name(text, message):
    with pytest.raises(ValueError, match=message):
        split.parse_candidate(text)


def _file(score: float, losses=(0.5, 0.4), seed: int = 0, control: float | None | str = "absent", band: bool = True) -> dict:
    cand = {"supernet": int(score * 10), "edge": 1, "weights": 1}
    scored = {"candidate": cand, "hv_full": score, "hv_mid": score, "hv_min": score, "score": 3 * score}
    if control != "absent":
        scored.update(controllability_mid=control, controllability_mid_per_task=[control, control], cost_band=band,
                      cost_budgets=[0.5, 0.7, 0.9], cost_fraction=[0.45, 0.6, 0.8], fallback=0.0)
    return {"benchmark": "multifashion", "mode": "full", "seed": seed, "rule": "r", "stage0": {"val_anchor_losses": list(losses)},
            "candidates": [scored]}


def test_show_merges_files_of_one_stage0_and_refuses_others():
    merged = split.merge([_file(1.0), _file(2.0), _file(1.5)])
    assert merged["chosen"] == {"supernet": 20, "edge": 1, "weights": 1} and len(merged["candidates"]) == 3
    with pytest.raises(ValueError, match="different stage-0 streams"):
        split.merge([_file(1.0), _file(2.0, losses=(0.5, 0.41))])
    with pytest.raises(ValueError, match="differ in seed"):
        split.merge([_file(1.0), _file(2.0, seed=1)])


def test_the_highest_score_wins_only_among_candidates_that_clear_the_control_bars():
    files = [_file(1.0, control=0.9), _file(2.0, control=0.5), _file(1.5, control=0.8, band=False), _file(1.2, control=0.75)]
    merged = split.merge(files)
    assert merged["chosen"] == {"supernet": 12, "edge": 1, "weights": 1}
    table = split.format_table(merged)
    assert table.count("MISSED") == 2 and table.count("cleared") == 2 and "0.9: 0.80" in table
    # when none clears them the highest score is chosen, and the table says so
    merged = split.merge([_file(1.0, control=0.2), _file(2.0, control=None)])
    assert merged["chosen"] == {"supernet": 20, "edge": 1, "weights": 1}
    assert "No candidate cleared the control bars" in split.format_table(merged)


def test_a_candidate_scores_the_same_whichever_candidates_ran_before_it(tmp_path):
    root = write_synthetic_sources(tmp_path / "sources", n_train=120, n_test=60, digits_per_class=12)
    kwargs = dict(data_root=str(root), threads=1, steps=StepBudget(2, 2, 2, batch_size=16), n_preferences=3,
                  val_examples=40, batch_size=16, eval_batch_size=20)
    first, second = split.parse_candidate("supernet=3,edge=1,weights=0"), split.parse_candidate("supernet=1,edge=2,weights=1")
    both = split.score_candidates("multifashion", "quick", 0, [first, second], out=tmp_path / "a.json", **kwargs)
    alone = split.score_candidates("multifashion", "quick", 0, [second], out=tmp_path / "b.json", **kwargs)
    assert both["candidates"][1]["mean_loss_full"] == alone["candidates"][0]["mean_loss_full"]
    assert both["candidates"][1]["mean_loss_min"] == alone["candidates"][0]["mean_loss_min"]


def test_a_bad_setting_is_refused_before_stage0_trains(tmp_path, monkeypatch):
    import dymu
    monkeypatch.setattr(dymu.Controller, "fit_anchor", lambda *a, **k: pytest.fail("stage 0 must not start"))
    root = write_synthetic_sources(tmp_path / "sources", n_train=120, n_test=60, digits_per_class=12)
    for bad, message in (("warm_start=planner", "warm_start must be"), ("anchor_weight=0", "anchor_weight")):
        with pytest.raises(ValueError, match=message):
            split.score_candidates("multifashion", "quick", 0, [split.parse_candidate(f"supernet=2,edge=1,weights=1,{bad}")],
                                   out=tmp_path / "x.json", data_root=str(root), steps=StepBudget(2, 2, 2, batch_size=16))
