"""End to end: ``benchmarks.run.main`` on synthetic sources in the real file formats, with tiny budgets."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks import run
from dymu.data import write_synthetic_sources

REQUIRED = ("hv", "hv_ref", "uniformity", "controllability", "delta_mtl", "mean_flops", "params", "train_seconds")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = write_synthetic_sources(tmp_path_factory.mktemp("sources"), n_train=120, n_test=60, digits_per_class=12)
    out = tmp_path_factory.mktemp("results")
    threads = torch.get_num_threads()
    argv = ["multifashion", "--quick", "--data-root", str(root), "--out", str(out), "--steps", "2", "2", "2",
            "--supernet-steps", "2", "--n-preferences", "3", "--hs-preferences", "2", "--test-examples", "40", "--cost-preferences", "8",
            "--batch-size", "16", "--eval-batch-size", "20", "--calibration-steps", "1", "--threads", "1"]
    assert run.main(argv) == 0
    assert torch.get_num_threads() == threads  # the run restores the caller's thread count
    return out, json.loads((out / "multifashion-quick-custom.json").read_text()), argv


def test_the_results_file_holds_every_required_field_for_every_method(tiny_run):
    out, results, argv = tiny_run
    assert results["benchmark"] == "multifashion" and results["complete"] is True and results["seeds"] == [0]
    assert results["command"].endswith(" ".join(argv))
    assert set(results["versions"]) >= {"python", "torch", "numpy", "dymu"}
    assert results["steps"] == {"anchor": 2, "edge": 2, "weights": 2, "batch_size": 16, "supernet": 2}
    # the equal training budget: every method's training sees the controller's 8 steps x 16 images
    assert results["training_budget"]["steps"] == 8 and results["training_budget"]["images"] == 128
    for name, row in results["methods"].items():
        totals = row["per_seed"][0]["training_totals"]
        assert totals["budget_steps"] == 8 and totals["block_passes"] > 0, name
        assert totals["equal_budget"] is (name not in ("dymu_no_weight_hypernet", *run.ABLATIONS)), name
    assert results["methods"]["static_equal_cost"]["per_seed"][0]["training_totals"]["models"] == 2
    assert results["methods"]["hard_sharing"]["per_seed"][0]["training_totals"]["images_all"] == 2 * 128
    assert set(results["methods"]) == set(run.METHODS)
    for name, row in results["methods"].items():
        for key in REQUIRED:
            assert key in row, (name, key)
        for key in ("hv", "uniformity", "delta_mtl", "mean_flops", "params", "train_seconds"):
            assert set(row[key]) >= {"mean", "std"} and row[key]["mean"] is not None, (name, key)
        assert row["hv_ref"] == [2.0, 2.0]
    dymu = results["methods"]["dymu"]
    # budgets 0.4 and 0.5 are below the cheapest two-task tree: skipped, and the results say so
    assert set(dymu["settings"]) == {"c=0", "c=1", "budget=min", "budget=0.6", "budget=0.8", "budget=1"}
    assert [s["name"] for s in results["protocol"]["settings_skipped"]] == ["budget=0.4", "budget=0.5"]
    assert set(results["methods"]["dymu_paper"]["settings"]) == set(dymu["settings"])
    # dynamic against static at equal cost, where a static tree fits: 0.6 and 0.8
    assert set(results["methods"]["static_equal_cost"]["settings"]) == {"budget=0.6", "budget=0.8"}
    assert set(dymu["equal_cost"]) == {"budget=0.6", "budget=0.8"}
    for entry in dymu["equal_cost"].values():
        assert 0 <= entry["win_fraction"]["mean"] <= 1 and entry["n"]["mean"] == 3
    curve = dymu["budget_curve"]
    assert curve["budget"] == [0.7, 0.9] and curve["skipped"] == [0.3, 0.5]
    assert all(f <= b + 1e-9 for b, f in zip(curve["budget"], curve["flops_fraction"]))
    control = {t["target"]: t for t in results["control_targets"]}
    assert len(control) == 8
    below_minimum = [t for name, t in control.items() if "budget=0.4" in name or "budget=0.5" in name]
    assert len(below_minimum) == 3 and all(t["met"] is None and t["why_undecided"] for t in below_minimum)
    assert dymu["settings"]["budget=min"]["mean_flops"]["mean"] == results["controller_views"]["min_flops"]
    assert len(dymu["cost_curve"]["c"]) == len(dymu["cost_curve"]["mean_flops"])
    assert set(results["methods"]["dymu_no_inactive"]["settings"]) == {"c=0", "c=1"}
    assert results["methods"]["single_task"]["delta_mtl"]["mean"] == pytest.approx(0.0)
    # the supernet stage: its effect on the anchor tree and the cheapest tree, measured on test, plotted
    effect = results["methods"]["dymu"]["per_seed"][0]["supernet_effect"]
    for tree in ("anchor", "one_stream"):
        assert len(effect[tree]["before"]) == len(effect[tree]["after"]) == 2
    assert effect["anchor"]["assignment"] == [[0, 1]] * 4 and len(set(effect["one_stream"]["assignment"][0])) == 1
    assert (out / "multifashion-quick-custom-supernet.png").is_file()
    # what each validated stage kept, per seed, with the step counts the run gave it
    kept = results["methods"]["dymu"]["per_seed"][0]["kept_states"]
    assert {"supernet", "edge", "weights"} <= set(kept)
    for stage in ("supernet", "edge", "weights"):
        assert kept[stage]["steps"] == results["steps"][stage] and 0 <= kept[stage]["best_step"] <= kept[stage]["steps"]
        assert kept[stage]["kept_start"] == (kept[stage]["best_step"] == 0)
    # the distilled trunk serves a hard-sharing network; cross-stitch runs a stream per task plus its units
    methods = results["methods"]
    assert set(methods["distilled_trunk"]["settings"]) == set(methods["cross_stitch"]["settings"]) == {"static"}
    assert methods["distilled_trunk"]["mean_flops"]["mean"] == methods["hard_sharing"]["mean_flops"]["mean"]
    assert methods["cross_stitch"]["mean_flops"]["mean"] > methods["single_task"]["mean_flops"]["mean"]
    assert {"distilled_trunk", "cross_stitch"} <= set(results["estimate_seconds"])
    hs = results["methods"]["hard_sharing"]
    assert len(hs["trained_preferences"]) == 2 and "2 of the 3" in hs["trained_preferences_note"]
    assert hs["train_seconds_all_preferences"]["mean"] == pytest.approx(1.5 * hs["train_seconds"]["mean"])
    assert "hv_subset" in dymu["settings"]["c=0"]
    assert results["protocol"]["loss_space"]["reference"] == [2.0, 2.0]
    assert len(results["protocol"]["evaluation_preferences"]) == 3
    targets = {t["target"]: t for t in results["targets"]}
    assert len(targets) == 10 and all(t["met"] in (True, False) for t in targets.values())
    assert results["estimate_seconds"]["total"] > 0 and results["measured_costs"]["anchor"] > 0


def test_plots_are_written(tiny_run):
    out, results, _ = tiny_run
    for suffix in ("front", "task-losses", "cost", "cost-vs-c", "cost-vs-budget", "equal-cost", "trees"):
        path = out / f"multifashion-quick-custom-{suffix}.png"
        assert path.stat().st_size > 10_000, path
    assert len(list(out.glob("multifashion-quick-custom-tree-*.png"))) == 6
    assert all(p.endswith(".png") for p in results["plots"])


def test_the_markdown_table_has_a_row_per_method_and_setting(tiny_run):
    _, results, _ = tiny_run
    table = run.format_markdown(results)
    assert "| dymu | budget=min |" in table and "| phn | static |" in table and "reference point (2, 2)" in table
    assert table.count("\n- [") == len(results["targets"]) + len(results["control_targets"]) + len(results["shared_node_targets"])
    assert "| budget=0.6 |" in table and "wins vs static tree" in table
    assert "train images (k)" in table and "Training budget: equal training images" in table
    assert "Below the budget by construction (variants of the trained controller): dymu_no_weight_hypernet" in table
    assert "Supernet stage, seed 0: per-task test loss" in table and "| cheapest tree | " in table


def test_configs_reject_unknown_names_and_mark_changed_budgets():
    with pytest.raises(ValueError, match="unknown benchmark"):
        run.make_config("cifar", "quick")
    with pytest.raises(ValueError, match="unknown method"):
        run.make_config("multifashion", "quick", methods=["dymu", "magic"])
    full = run.make_config("multifashion", "full")
    assert full.mode == "full" and full.seeds == [0, 1, 2] and full.stem == "multifashion"
    assert run.make_config("multifashion", "full", steps=(1, 1, 1)).mode == "custom"
    picked = run.make_config("fashion_digits", "quick", methods=["phn"])
    assert picked.methods == ["dymu", "single_task", "phn"] and picked.stem == "fashion_digits-quick"


def test_six_tasks_normalise_losses_by_the_single_task_run_and_plot_cost_at_corners(tmp_path):
    root = write_synthetic_sources(tmp_path / "sources", n_train=120, n_test=60, digits_per_class=12)
    out = tmp_path / "results"
    argv = ["fashion_digits", "--data-root", str(root), "--out", str(out), "--methods", "phn", "--steps", "1", "1", "1",
            "--n-preferences", "3", "--test-examples", "20", "--cost-preferences", "6", "--batch-size", "8",
            "--eval-batch-size", "20", "--calibration-steps", "1", "--threads", "1"]
    assert run.main(argv) == 0
    results = json.loads((out / "fashion_digits-quick-custom.json").read_text())
    assert set(results["methods"]) == {"dymu", "single_task", "phn"}
    space = results["protocol"]["loss_space"]
    ref = space["reference"]
    # the reference point is the input-blind losses: about ln 10 for a 10-class task, ln 2 for parity
    assert len(ref) == 6 and ref[0] == pytest.approx(2.30, abs=0.05) and ref[3] == pytest.approx(0.69, abs=0.01)
    assert space["uniformity_losses"] == "test loss / single-task test loss"
    st_loss = [results["single_task"]["0"][t]["loss"] for t in results["tasks"]]
    expected = 1.0
    for r, s in zip(ref, st_loss):
        expected *= max(r - s, 0.0)
    assert results["methods"]["single_task"]["hv"]["mean"] == pytest.approx(expected, rel=1e-6, abs=1e-12)
    assert results["methods"]["single_task"]["hv_ref"] == pytest.approx(ref)
    assert "budget=0.5" in results["methods"]["dymu"]["settings"]  # the cheapest of six streams is below half
    assert len(results["controller_views"]["cost_corners"]["labels"]) == 7
    assert (out / "fashion_digits-quick-custom-cost.png").exists() and not (out / "fashion_digits-quick-custom-front.png").exists()


def test_reprint_decides_the_targets_again_from_the_file(tiny_run, capsys):
    from benchmarks import reprint

    out, results, _ = tiny_run
    assert reprint.main([str(out / "multifashion-quick-custom.json")]) == 0
    printed = capsys.readouterr().out
    assert printed.strip() == run.format_markdown(reprint.retarget(results)).strip()
    assert "Shared-node targets:" in printed and "dymu hv at budget=1 > cross_stitch hv" in printed
    with pytest.raises(SystemExit):
        reprint.main([str(out / "missing.json")])
    (out / "partial.json").write_text(json.dumps({**results, "protocol": None}))
    with pytest.raises(SystemExit):
        reprint.main([str(out / "partial.json")])
    assert "has no summarised results yet" in capsys.readouterr().err


def test_reprint_against_sets_two_controllers_side_by_side_and_refuses_incomparable_files(tiny_run, capsys):
    from benchmarks import reprint

    out, results, _ = tiny_run
    # a second controller: the same baselines, a different controller's HV at every setting
    other = json.loads(json.dumps(results))
    for setting in other["methods"]["dymu"]["settings"].values():
        setting["hv"]["mean"] = 0.5 * (setting["hv"]["mean"] or 0.0)
    (out / "other.json").write_text(json.dumps(other))
    assert reprint.main([str(out / "multifashion-quick-custom.json"), "--against", str(out / "other.json"),
                         "--labels", "new", "old"]) == 0
    printed = capsys.readouterr().out
    settings = list(results["methods"]["dymu"]["settings"])
    rows = [line for line in printed.splitlines() if line.startswith("| ") and not line.startswith("| dymu setting")]
    assert [row.split(" | ")[0].lstrip("| ") for row in rows] == settings
    first = results["methods"]["dymu"]["settings"][settings[0]]["hv"]["mean"]
    assert f"{first:.5f} / {0.5 * first:.5f}" in rows[0]
    baselines = sorted(m for m in results["methods"] if not m.startswith("dymu"))
    assert f"Baselines with the same HV in both files: {', '.join(baselines)}." in printed

    moved = json.loads(json.dumps(results))
    moved["protocol"]["loss_space"]["reference"] = [2 * v for v in moved["protocol"]["loss_space"]["reference"]]
    (out / "moved.json").write_text(json.dumps(moved))
    with pytest.raises(SystemExit):
        reprint.main([str(out / "multifashion-quick-custom.json"), "--against", str(out / "moved.json")])
    assert "reference points differ" in capsys.readouterr().err

def test_stage_configs_over_the_preset_from_the_command_line():
    from benchmarks.run import _parser, stage_overrides
    from benchmarks.config import make_config

    args = _parser().parse_args(["fashion_digits", "--full", "--supernet-config", "budget_trees=2,solo=false",
                                 "--edge-config", "warm_start=merge"])
    config = stage_overrides(make_config("fashion_digits", "full"), args.supernet_config, args.edge_config)
    preset = make_config("fashion_digits", "full")
    assert config.supernet_config == {**preset.supernet_config, "budget_trees": 2, "solo": False}
    assert config.edge_config == {**preset.edge_config, "warm_start": "merge"}
    assert config.stem == preset.stem  # the same results file: a rerun of a run made under an earlier preset
    with pytest.raises(ValueError, match="has no field 'trees'"):
        stage_overrides(preset, "trees=2", None)
    with pytest.raises(ValueError, match="budget_trees must be >= 0"):
        stage_overrides(preset, "budget_trees=-1", None)
    with pytest.raises(ValueError, match=r"\['seed'\] are the run's to set"):
        stage_overrides(preset, "seed=3", None)
    with pytest.raises(ValueError, match="expected int"):
        stage_overrides(preset, "budget_trees=two", None)
