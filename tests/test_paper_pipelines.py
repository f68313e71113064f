"""The paper's benchmarks end to end on tiny format-true copies: train, save, reload, evaluate, report."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import dymu
from benchmarks import paper
from benchmarks.datasets import BENCHMARKS
from benchmarks.datasets import fixtures
from benchmarks.paper import DatasetError, main, paper_steps, run_paper_benchmark
from benchmarks.paper_data import paper_backbone

# A few steps per stage on narrow, small networks: every stage and the whole protocol still run.
TINY = dict(
    device="cpu",
    anchor_steps=2,
    edge_steps=2,
    weight_steps=2,
    n_preferences=3,
    cost_preferences=20,
    width_mult=0.0625,
    verbose=False,
)

CASES = {
    # 200 training images: 10 per superclass task, one of them held out for validation.
    "cifar100": (lambda root: fixtures.write_tiny_cifar100(root), {"batch_size": 40}, 20),
    # Sides that are multiples of the output stride 16.
    "nyuv2": (lambda root: fixtures.write_tiny_nyuv2(root, size=(32, 48)), {"batch_size": 2}, 3),
    # Six training images: the held-out validation image then shows a person with parts (human_parts
    # needs at least one labelled pixel in validation).
    "pascal_context": (lambda root: fixtures.write_tiny_pascal_context(root, n_train=6), {"batch_size": 2, "input_size": (32, 32)}, 5),
    "pascal_context_3": (lambda root: fixtures.write_tiny_pascal_context(root, n_train=6), {"batch_size": 2, "input_size": (32, 32)}, 3),
}

RESULT_FIELDS = {
    "benchmark", "tasks", "primary_metrics", "higher_is_better", "seed", "versions", "config", "run", "deviations",
    "data", "protocol", "anchor", "stage_seconds", "single_task", "single_task_val", "loss_scales", "affinity",
    "per_c", "cost", "preferences", "evaluations", "checkpoint", "seconds",
}
PER_C_FIELDS = {
    "c", "n_models", "hv", "hv_ref", "uniformity", "controllability", "controllability_loss", "delta_mtl",
    "delta_mtl_per_model", "flops_fraction", "mean_flops", "params", "params_fraction", "mean_nodes", "mean_primary",
    "mean_loss",
}


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny convolutions run fastest on one thread, and far slower with two on a busy 2-core machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _numbers(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from _numbers(v)
    elif isinstance(value, list):
        for v in value:
            yield from _numbers(v)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield value


def _check_results(results: dict, name: str, n_tasks: int, out) -> None:
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk == results
    assert RESULT_FIELDS <= set(results)
    assert results["benchmark"] == name and len(results["tasks"]) == n_tasks
    assert all(math.isfinite(v) for v in _numbers(results))
    assert {"torch", "numpy", "dymu", "python"} <= set(results["versions"])
    assert results["run"]["steps"] == {"anchor": 2, "edge": 2, "weights": 2}
    assert results["run"]["stage_configs"]["edge"]["lr_milestones"] == pytest.approx([14 / 30, 28 / 30])
    assert results["run"]["stage_configs"]["edge"]["lr_decay"] == pytest.approx(0.3)

    single = results["single_task"]
    assert set(single) == set(results["tasks"])
    for task, primary in results["primary_metrics"].items():
        assert single[task]["loss"] > 0 and primary in single[task]
    space = results["protocol"]["loss_space"]
    factor = space["reference"][0]
    assert space["reference"] == [factor] * n_tasks and factor == paper.HV_REFERENCE_FACTOR
    assert space["reference_raw"] == pytest.approx([factor * single[t]["loss"] for t in results["tasks"]])

    assert [s["c"] for s in results["per_c"]] == [0.0, 1.0]
    rows = results["evaluations"]["rows"]
    assert len(rows) == 2 * 3
    # the same evaluation preferences whatever the training seed
    assert np.allclose(results["preferences"], dymu.metrics.dirichlet_preferences(3, n_tasks, seed=paper.PREFERENCE_SEED))
    assert np.allclose([r["preference"] for r in rows], np.repeat(results["preferences"], 2, axis=0))
    for s in results["per_c"]:
        assert PER_C_FIELDS <= set(s) and s["n_models"] == 3
        # normalised losses live in [0, factor]^N at most
        assert 0.0 <= s["hv"] <= factor**n_tasks and s["hv_ref"] == space["reference"]
        assert 1.0 - math.log(n_tasks) - 1e-9 <= s["uniformity"] <= 1.0 + 1e-9
        for key in ("controllability", "controllability_loss"):
            assert s[key] is None or -1.0 <= s[key] <= 1.0
        assert s["delta_mtl"] is not None
        assert 0.0 < s["flops_fraction"] <= 1.0 + 1e-9 and 0.0 < s["params_fraction"] <= 1.0 + 1e-9
        models = [r for r in rows if r["c"] == s["c"]]
        assert s["mean_flops"] == pytest.approx(np.mean([r["flops"] for r in models]))
    assert set(results["cost"]["settings"]) == {"c=0", "c=1"}
    for cost in results["cost"]["settings"].values():
        assert 0.0 < cost["flops_fraction"] <= 1.0 + 1e-9
    # Delta_MTL recomputed from the table for the first model
    tasks = results["tasks"]
    first = rows[0]
    kept = [t for t in tasks if single[t][results["primary_metrics"][t]] != 0]
    changes = []
    for t in kept:
        p = results["primary_metrics"][t]
        sign = 1.0 if results["higher_is_better"][t] else -1.0
        changes.append(100 * sign * (first["metrics"][t][p] - single[t][p]) / abs(single[t][p]))
    assert results["per_c"][0]["delta_mtl_per_model"][0] == pytest.approx(np.mean(changes))


def _check_checkpoint(results: dict, root, name: str, extra: dict) -> None:
    ctrl = dymu.load(results["checkpoint"])
    assert ctrl.task_names == results["tasks"]
    assert ctrl.stages.keys() >= {"anchor", "edge", "weights"}
    budget = max(ctrl.min_budget, 0.6)
    preference = np.linspace(1.0, 2.0, ctrl.n_tasks)
    model = ctrl.build_model(preference, budget=budget)
    assert model.flops() <= budget * ctrl.cost_table.anchor_flops
    test = BENCHMARKS[name].load(root, "test", **({"output_size": extra["input_size"]} if "input_size" in extra else {}))
    x, _ = next(iter(torch.utils.data.DataLoader(test, batch_size=2)))
    with torch.no_grad():
        outputs = model(x)
    assert set(outputs) == set(results["tasks"])
    assert all(torch.isfinite(o).all() for o in outputs.values())


@pytest.mark.parametrize("name", ["cifar100", "nyuv2", "pascal_context"])
def test_pipeline_end_to_end(name, tmp_path):
    write, extra, n_tasks = CASES[name]
    root = tmp_path / "data"
    write(root)
    out = tmp_path / "out"
    results = run_paper_benchmark(name, root, out, **TINY, **extra)
    _check_results(results, name, n_tasks, out)
    _check_checkpoint(results, root, name, extra)


def test_command_line_runs_pascal_context_3_and_prints_the_table(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("DYMU_QUIET", raising=False)
    write, extra, n_tasks = CASES["pascal_context_3"]
    root = tmp_path / "data"
    write(root)
    out = tmp_path / "out"
    argv = [
        "pascal_context_3", "--root", str(root), "--out", str(out), "--device", "cpu", "--anchor-steps", "2",
        "--edge-steps", "2", "--weight-steps", "2", "--batch-size", "2", "--n-preferences", "3",
        "--cost-preferences", "20", "--width-mult", "0.0625", "--input-size", "32", "32",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr()
    for stage in ("[paper:pascal_context_3] stage 0", "[anchor]", "[edge]", "[weights]", "[evaluate]"):
        assert stage in printed.err + printed.out  # progress lines
    assert "uniformity" in printed.out and "HV(ref 2x ST)" in printed.out  # the table
    results = json.loads((out / "results.json").read_text())
    _check_results(results, "pascal_context_3", n_tasks, out)
    assert results["tasks"] == ["semseg", "human_parts", "saliency"]
    assert not any("sgd" in d for d in results["deviations"])  # stage 0 runs the CONFIG's own SGD and poly schedule
    stage0 = json.dumps(results).split('"stage_configs"')[1]
    assert '"optimizer": "sgd"' in stage0 and '"schedule": "poly"' in stage0
    _check_checkpoint(results, root, "pascal_context_3", extra)


def test_paper_steps_follow_the_configs():
    # CIFAR-100: 45,000 training images, batch 128, 75 epochs; stages 1-2: 30K steps.
    assert paper_steps("cifar100", 45_000) == {"anchor": 75 * 351, "edge": 30_000, "weights": 30_000}
    assert paper_steps("cifar100", 45_000, steps_scale=0.0002) == {"anchor": 5, "edge": 6, "weights": 6}
    assert paper_steps("nyuv2", 716) == {"anchor": 200 * 89, "edge": 30_000, "weights": 30_000}
    assert paper_steps("pascal_context", 10, steps_scale=1e-9) == {"anchor": 1, "edge": 1, "weights": 1}
    with pytest.raises(ValueError, match="unknown benchmark"):
        paper_steps("imagenet", 10)


def test_task_sets_are_registered_by_name():
    for name, (_, _, n_tasks) in CASES.items():
        tasks = dymu.registry.resolve_tasks(name)
        assert len(tasks) == n_tasks


def test_missing_cifar_folder_names_the_layout(tmp_path):
    with pytest.raises(DatasetError, match=r"cifar-100-python.*expected the CIFAR-100"):
        run_paper_benchmark("cifar100", tmp_path / "nowhere", tmp_path / "out", **TINY)
    assert not (tmp_path / "out").exists()


def test_missing_nyuv2_file_names_the_file(tmp_path):
    root = fixtures.write_tiny_nyuv2(tmp_path / "data")
    missing = root / "val" / "depth" / "1.npy"
    missing.unlink()
    with pytest.raises(DatasetError, match=rf"{missing}.*expected the preprocessed NYUv2 layout"):
        run_paper_benchmark("nyuv2", root, tmp_path / "out", **TINY)


def test_missing_pascal_file_fails_on_the_command_line(tmp_path, capsys):
    root = fixtures.write_tiny_pascal_context(tmp_path / "data", n_train=6)
    missing = root / "sal_distill" / "2008_000001.png"
    missing.unlink()
    status = main(["pascal_context_3", "--root", str(root), "--out", str(tmp_path / "out"), "--quiet"])
    assert status == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "expected the multi-task PASCAL-Context layout" in err


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown benchmark"):
        run_paper_benchmark("imagenet", tmp_path, tmp_path / "out")
    with pytest.raises(ValueError, match="n_preferences"):
        run_paper_benchmark("cifar100", tmp_path, tmp_path / "out", n_preferences=1)
    with pytest.raises(ValueError, match="hv_reference_factor"):
        run_paper_benchmark("cifar100", tmp_path, tmp_path / "out", hv_reference_factor=1.0)


def test_backbone_weights_initialise_the_template(tmp_path):
    from dymu.backbones import deeplab_resnet34

    source = deeplab_resnet34(width_mult=0.0625, input_size=(32, 48))
    path = tmp_path / "weights.pt"
    torch.save(source.state_dict(), path)
    built = paper_backbone("nyuv2", 0.0625, (32, 48), path)
    assert all(torch.equal(built.state_dict()[k], v) for k, v in source.state_dict().items())

    wrong = tmp_path / "wider.pt"
    torch.save(deeplab_resnet34(width_mult=0.125, input_size=(32, 48)).state_dict(), wrong)
    root = fixtures.write_tiny_nyuv2(tmp_path / "data", size=(32, 48))
    with pytest.raises(ValueError, match="do not fit the nyuv2 backbone"):
        run_paper_benchmark("nyuv2", root, tmp_path / "out", backbone_weights=wrong, **TINY)
