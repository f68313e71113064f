"""An interrupted benchmark run resumed with ``--resume``: finished (seed, method) entries are kept as they are,
not retrained, and the rest run; a different config is refused, naming the field."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks import run
from benchmarks.baselines import PHN, HardSharing
from benchmarks.methods import ControllerMethod, SingleTask
from dymu import Controller
from dymu.data import write_synthetic_sources

STEM = "multifashion-quick-custom"


def _argv(root, out, *extra: str) -> list[str]:
    return ["multifashion", "--data-root", str(root), "--out", str(out), "--steps", "2", "2", "2", "--n-preferences", "3",
            "--hs-preferences", "2", "--test-examples", "20", "--cost-preferences", "6", "--batch-size", "16",
            "--eval-batch-size", "20", "--calibration-steps", "1", "--threads", "1", "--no-plots", *extra]


def _killed(name: str):
    def fit(self, *args, **kwargs):
        raise KeyboardInterrupt(f"killed while training {name}")
    return fit


def _not_again(name: str):
    def fit(self, *args, **kwargs):
        raise AssertionError(f"{name} is finished in the file and must not be trained again")
    return fit


def _shift_one_weight(saved_streams) -> None:
    """Change one weight of the stage-0 streams saved at ``saved_streams``: another stage 0."""
    state = torch.load(saved_streams, weights_only=True)
    key = next(k for k, v in state.items() if v.is_floating_point())
    state[key] = state[key] + 1.0
    torch.save(state, saved_streams)


def _kept(results: dict, name: str) -> str:
    """A method's per-seed entries with their records, as the file holds them."""
    row = results["methods"][name]
    return json.dumps([row["per_seed"], row["records"]], sort_keys=True)


def test_an_interrupted_run_resumes_without_redoing_finished_methods(tmp_path, monkeypatch):
    root = write_synthetic_sources(tmp_path / "sources", n_train=120, n_test=60, digits_per_class=12)
    out = tmp_path / "results"
    path = out / f"{STEM}.json"
    methods = ["--methods", "phn", "hard_sharing"]

    # 1. killed in single_task: the controller's entry waits for the seed's single-task metrics
    with monkeypatch.context() as patch:
        patch.setattr(SingleTask, "fit", _killed("single_task"))
        with pytest.raises(KeyboardInterrupt):
            run.main(_argv(root, out, *methods))
    first = json.loads(path.read_text())
    assert first["complete"] is False and first["methods"] == {} and list(first["pending"]) == ["dymu"]
    assert (out / f"{STEM}-state" / "seed0-dymu.pt").exists()
    dymu_entry = first["pending"]["dymu"][0]
    assert dymu_entry["git"] == first["git"] and dymu_entry["finished_at"]

    # 2. resumed, killed in hard_sharing: the controller is loaded, not trained; its entry is summarised now
    with monkeypatch.context() as patch:
        patch.setattr(ControllerMethod, "fit", _not_again("dymu"))
        patch.setattr(HardSharing, "fit", _killed("hard_sharing"))
        with pytest.raises(KeyboardInterrupt):
            run.main(_argv(root, out, *methods, "--resume"))
    second = json.loads(path.read_text())
    assert second["complete"] is False and set(second["methods"]) == {"dymu", "single_task", "phn"} and not second["pending"]
    kept_dymu = {k: v for k, v in second["methods"]["dymu"]["per_seed"][0].items() if k != "settings"}
    assert kept_dymu == {k: v for k, v in dymu_entry.items() if k != "records"}
    assert second["methods"]["dymu"]["records"] == [dymu_entry["records"]]
    assert set(second["methods"]["dymu"]["settings"]) >= {"c=0", "c=1"}
    single = second["methods"]["single_task"]
    assert single["delta_mtl"]["mean"] == pytest.approx(0.0)
    # the equal training budget: stage 0 (2 steps) continued for the rest of the total (6)
    assert single["per_seed"][0]["training_totals"]["parts"] == {
        "anchor": {"steps": 2, "shared": True, "blocks_per_image": 8},
        "continuation": {"steps": 4, "shared": False, "blocks_per_image": 8}}

    # 3. resumed with one more method: nothing finished is trained again, the rest runs, the file is complete
    with monkeypatch.context() as patch:
        for cls, name in ((ControllerMethod, "dymu"), (SingleTask, "single_task"), (PHN, "phn")):
            patch.setattr(cls, "fit", _not_again(name))
        assert run.main(_argv(root, out, "--methods", "phn", "hard_sharing", "static_tree", "--resume")) == 0
    final = json.loads(path.read_text())
    assert final["complete"] is True and not final["pending"]
    assert set(final["methods"]) == {"dymu", "single_task", "phn", "hard_sharing", "static_tree"}
    for name in ("dymu", "single_task", "phn"):
        assert _kept(final, name) == _kept(second, name), name
    assert [len(r["kept"]) for r in final["resumed"]] == [1, 3]
    for name in ("hard_sharing", "static_tree", "phn"):
        totals = final["methods"][name]["per_seed"][0]["training_totals"]
        assert totals["steps"] == 6 and totals["equal_budget"] is True, name
    assert final["methods"]["hard_sharing"]["per_seed"][0]["training_totals"]["models"] == 2
    assert all(e["git"] == final["git"] for row in final["methods"].values() for e in row["per_seed"])
    assert "Training budget: equal training images" in run.format_markdown(final)

    # a different config is refused, naming the field; so is dropping a finished method
    with pytest.raises(ValueError, match=r"steps \(file"):
        run.main(_argv(root, out, "--methods", "phn", "hard_sharing", "static_tree", "--resume", "--steps", "3", "2", "2"))
    with pytest.raises(ValueError, match=r"methods \(the file has \['phn'"):
        run.main(_argv(root, out, "--methods", "hard_sharing", "static_tree", "--resume"))


def test_baselines_from_a_run_with_another_controller_split(tmp_path, monkeypatch):
    """``--baselines-from``: a run whose config differs only in the controller's split after stage 0 takes the
    other run's baselines as they are and trains the controller (and what depends on it) again."""
    root = write_synthetic_sources(tmp_path / "sources", n_train=120, n_test=60, digits_per_class=12)
    first_out, second_out = tmp_path / "first", tmp_path / "second"
    methods = ["--methods", "phn", "static_tree"]
    assert run.main(_argv(root, first_out, *methods, "--supernet-steps", "2")) == 0
    first = json.loads((first_out / f"{STEM}.json").read_text())

    # the same stage 0 (2 steps) and total (8), split 4 / 1 / 1 instead of 2 / 2 / 2
    source = str(first_out / f"{STEM}.json")
    with monkeypatch.context() as patch:
        for cls, name in ((SingleTask, "single_task"), (PHN, "phn")):
            patch.setattr(cls, "fit", _not_again(name))
        assert run.main([*_argv(root, second_out, *methods, "--supernet-steps", "4"), "--steps", "2", "1", "1",
                         "--baselines-from", source]) == 0
    second = json.loads((second_out / f"{STEM}.json").read_text())
    assert second["complete"] is True
    for name in ("single_task", "phn"):
        assert _kept(second, name) == _kept(first, name), name
    assert second["methods"]["dymu"]["per_seed"][0]["training_totals"]["parts"]["supernet"]["steps"] == 4
    assert _kept(second, "dymu") != _kept(first, "dymu")
    assert second["resumed"][0]["baselines_from"] == source
    assert sorted(name for _, name in second["resumed"][0]["kept"]) == ["phn", "single_task"]
    assert f"Taken from {source}" in run.format_markdown(second)

    # another stage 0 is refused before anything trains, naming the steps
    with pytest.raises(ValueError, match="only the controller's split"):
        run.main([*_argv(root, tmp_path / "third", *methods, "--supernet-steps", "3"), "--steps", "3", "1", "1",
                  "--baselines-from", source])
    # stage-0 streams that do not match the saved teacher stop the run before the controller's entry is written
    teacher = first_out / f"{STEM}-state" / "seed0-teacher.pt"
    _shift_one_weight(teacher)
    with pytest.raises(ValueError, match="stage-0 streams differ"):
        run.main([*_argv(root, tmp_path / "fourth", *methods, "--supernet-steps", "4"), "--steps", "2", "1", "1",
                  "--baselines-from", source])
    assert not (tmp_path / "fourth" / f"{STEM}.json").exists()
    assert not (tmp_path / "fourth" / f"{STEM}-state" / "seed0-dymu.pt").exists()
    # without the saved stage-0 streams, the file's record of them checks this run's stage 0: a SHA-256 of the streams
    teacher.unlink()
    args = [*methods, "--supernet-steps", "4"]
    assert run.main([*_argv(root, tmp_path / "fifth", *args), "--steps", "2", "1", "1", "--baselines-from", source]) == 0
    digest = first["methods"]["dymu"]["per_seed"][0]["stage0_digest"]
    fifth = json.loads((tmp_path / "fifth" / f"{STEM}.json").read_text())
    assert fifth["methods"]["dymu"]["per_seed"][0]["stage0_digest"] == digest
    assert "SHA-256" in fifth["resumed"][0]["stage0_checked_by"]["0"]

    def rewritten(name: str, change) -> str:
        data = json.loads((first_out / f"{STEM}.json").read_text())
        change(data["methods"]["dymu"]["per_seed"][0])
        path = tmp_path / name / f"{STEM}.json"
        path.parent.mkdir()
        path.write_text(json.dumps(data))
        return str(path)

    other = rewritten("digest", lambda e: e.update(stage0_digest="0" * 64))
    with pytest.raises(ValueError, match=r"differ from those of .* \(checked by their SHA-256"):
        run.main([*_argv(root, tmp_path / "sixth", *args), "--steps", "2", "1", "1", "--baselines-from", other])
    assert not (tmp_path / "sixth" / f"{STEM}.json").exists()
    assert not (tmp_path / "sixth" / f"{STEM}-state" / "seed0-dymu.pt").exists()  # refused before the controller is saved
    # a file from before the digest: the stage-0 anchor tree's per-task test losses, float for float
    old = rewritten("losses", lambda e: e.pop("stage0_digest"))
    assert run.main([*_argv(root, tmp_path / "seventh", *args), "--steps", "2", "1", "1", "--baselines-from", old]) == 0
    taken = json.loads((tmp_path / "seventh" / f"{STEM}.json").read_text())["resumed"][0]
    assert "test losses" in taken["stage0_checked_by"]["0"]

    def shifted_loss(entry):
        entry.pop("stage0_digest")
        entry["supernet_effect"]["anchor"]["before"][0] += 1e-6

    shifted = rewritten("shifted", shifted_loss)
    with pytest.raises(ValueError, match=r"differ from those of .* \(checked by their anchor tree's per-task test losses"):
        run.main([*_argv(root, tmp_path / "eighth", *args), "--steps", "2", "1", "1", "--baselines-from", shifted])
    assert not (tmp_path / "eighth" / f"{STEM}.json").exists()
    assert not (tmp_path / "eighth" / f"{STEM}-state" / "seed0-dymu.pt").exists()  # refused before the controller is saved
    # with neither the streams nor a record of them nothing trains: the check would be impossible
    bare = rewritten("bare", lambda e: (e.pop("stage0_digest"), e.pop("supernet_effect")))
    with pytest.raises(FileNotFoundError, match="seed0-teacher.pt"):
        run.main([*_argv(root, tmp_path / "ninth", *args), "--steps", "2", "1", "1", "--baselines-from", bare])
    assert not (tmp_path / "ninth" / f"{STEM}-state").exists()


def test_a_method_trains_on_the_same_batches_whichever_methods_ran_before_it(tmp_path):
    root = write_synthetic_sources(tmp_path / "sources", n_train=120, n_test=60, digits_per_class=12)
    alone, after = tmp_path / "alone", tmp_path / "after"
    assert run.main(_argv(root, alone, "--methods", "phn")) == 0
    # dymu_paper runs before phn (the methods run in benchmarks.config.METHODS order) and draws training batches
    assert run.main(_argv(root, after, "--methods", "dymu_paper", "phn")) == 0
    records = [json.loads((out / f"{STEM}.json").read_text())["methods"]["phn"]["records"] for out in (alone, after)]
    assert records[0] == records[1]


def test_two_runs_of_one_stage0_share_their_baselines_on_resume(tmp_path, monkeypatch):
    """``--resume --baselines-from``: a copy of a run finishes another baseline side by side; the first run takes it
    over instead of training it, and refuses it when the copies' stage-0 streams differ."""
    import shutil

    root = write_synthetic_sources(tmp_path / "sources", n_train=120, n_test=60, digits_per_class=12)
    first, second = tmp_path / "first", tmp_path / "second"
    assert run.main(_argv(root, first, "--methods", "phn")) == 0
    shutil.copytree(first, second)
    assert run.main(_argv(root, second, "--methods", "phn", "hard_sharing", "--resume")) == 0
    theirs = json.loads((second / f"{STEM}.json").read_text())

    source = str(second / f"{STEM}.json")
    with monkeypatch.context() as patch:
        for cls, name in ((ControllerMethod, "dymu"), (SingleTask, "single_task"), (PHN, "phn"), (HardSharing, "hard_sharing")):
            patch.setattr(cls, "fit", _not_again(name))
        assert run.main(_argv(root, first, "--methods", "phn", "hard_sharing", "--resume", "--baselines-from", source)) == 0
    mine = json.loads((first / f"{STEM}.json").read_text())
    assert mine["complete"] is True and _kept(mine, "hard_sharing") == _kept(theirs, "hard_sharing")
    assert mine["resumed"][-1]["kept"] == [[0, "hard_sharing"]] and mine["resumed"][-1]["baselines_from"] == source
    assert f"Taken from {source}" in run.format_markdown(mine)

    # the other copy's stage 0 must be this one's, bit for bit
    shutil.rmtree(first)
    shutil.copytree(tmp_path / "second", first)
    mine_path = first / f"{STEM}.json"
    data = json.loads(mine_path.read_text())
    data["methods"].pop("hard_sharing")
    data["config"]["methods"] = [m for m in data["config"]["methods"] if m != "hard_sharing"]
    mine_path.write_text(json.dumps(data))
    teacher = second / f"{STEM}-state" / "seed0-teacher.pt"
    _shift_one_weight(teacher)
    with pytest.raises(ValueError, match="stage-0 streams differ"):
        run.main(_argv(root, first, "--methods", "phn", "hard_sharing", "--resume", "--baselines-from", source))


def test_a_run_killed_in_single_task_takes_it_from_a_copy_that_finished_it(tmp_path, monkeypatch):
    import shutil

    root = write_synthetic_sources(tmp_path / "sources", n_train=120, n_test=60, digits_per_class=12)
    first, second = tmp_path / "first", tmp_path / "second"
    with monkeypatch.context() as patch:
        patch.setattr(SingleTask, "fit", _killed("single_task"))
        with pytest.raises(KeyboardInterrupt):
            run.main(_argv(root, first, "--methods", "phn"))
    shutil.copytree(first, second)
    assert run.main(_argv(root, second, "--methods", "phn", "--resume")) == 0
    theirs = json.loads((second / f"{STEM}.json").read_text())

    source = str(second / f"{STEM}.json")
    with monkeypatch.context() as patch:
        for cls, name in ((ControllerMethod, "dymu"), (SingleTask, "single_task"), (PHN, "phn")):
            patch.setattr(cls, "fit", _not_again(name))
        assert run.main(_argv(root, first, "--methods", "phn", "--resume", "--baselines-from", source)) == 0
    mine = json.loads((first / f"{STEM}.json").read_text())
    # the seed's single-task metrics came with its entry: every entry is summarised, none left pending
    assert mine["complete"] is True and not mine["pending"] and mine["single_task"] == theirs["single_task"]
    for name in ("single_task", "phn", "dymu"):
        assert _kept(mine, name) == _kept(theirs, name), name


def test_seeds_run_as_separate_processes_gather_into_the_run_over_all_of_them(tmp_path, monkeypatch):
    """``--seeds-from``: seeds run one per process give, gathered, the records of one run over every seed, nothing
    retrained; another config is refused naming the field, and a state file of the run's own is never overwritten."""
    root = write_synthetic_sources(tmp_path / "sources", n_train=120, n_test=60, digits_per_class=12)
    methods = ["--methods", "phn"]
    assert run.main(_argv(root, tmp_path / "both", *methods, "--seeds", "0", "1")) == 0
    for seed in ("0", "1"):
        assert run.main(_argv(root, tmp_path / f"seed{seed}", *methods, "--seeds", seed)) == 0
    sources = [str(tmp_path / f"seed{seed}" / f"{STEM}.json") for seed in ("0", "1")]

    with monkeypatch.context() as patch:
        for cls, name in ((ControllerMethod, "dymu"), (SingleTask, "single_task"), (PHN, "phn")):
            patch.setattr(cls, "fit", _not_again(name))
        assert run.main(_argv(root, tmp_path / "gathered", *methods, "--seeds", "0", "1", "--seeds-from", *sources)) == 0
    both = json.loads((tmp_path / "both" / f"{STEM}.json").read_text())
    gathered = json.loads((tmp_path / "gathered" / f"{STEM}.json").read_text())
    assert gathered["complete"] is True and gathered["seeds"] == [0, 1]
    for name in ("dymu", "single_task", "phn"):
        assert gathered["methods"][name]["records"] == both["methods"][name]["records"], name
        assert gathered["methods"][name]["hv"] == both["methods"][name]["hv"], name
    assert [part["seeds_from"] for part in gathered["resumed"]] == sources
    assert gathered["controller_views"] == both["controller_views"]
    assert all((tmp_path / "gathered" / f"{STEM}-state" / f"seed{s}-dymu.pt").exists() for s in (0, 1))
    assert f"Seeds 1 ran as another process of the same options: taken from {sources[1]}" in run.format_markdown(gathered)

    # killed while training a seed of its own, a gathered run resumes with the seeds it took (their copies kept)
    three = tmp_path / "three"
    with monkeypatch.context() as patch:
        patch.setattr(ControllerMethod, "fit", _killed("dymu"))
        with pytest.raises(KeyboardInterrupt):
            run.main(_argv(root, three, *methods, "--seeds", "0", "1", "2", "--seeds-from", *sources))
    assert json.loads((three / f"{STEM}.json").read_text())["seeds"] == [0, 1]
    assert run.main(_argv(root, three, *methods, "--seeds", "0", "1", "2", "--resume", "--seeds-from", *sources)) == 0
    resumed = json.loads((three / f"{STEM}.json").read_text())
    assert resumed["complete"] is True and resumed["seeds"] == [0, 1, 2]
    assert resumed["methods"]["phn"]["records"][:2] == both["methods"]["phn"]["records"]

    with pytest.raises(ValueError, match=r"--seeds-from: .* test_examples \(file 20, now 30\)"):
        run.main([*_argv(root, tmp_path / "other", *methods, "--seeds", "0", "1", "--seeds-from", *sources),
                  "--test-examples", "30"])
    with pytest.raises(FileNotFoundError, match="no results file at"):
        run.main(_argv(root, tmp_path / "other", *methods, "--seeds", "0", "1", "--seeds-from", str(tmp_path / "none.json")))
    # a run killed after saving seed 0's controller, before its entry: that file is its own and stays
    mine = tmp_path / "mine" / f"{STEM}-state"
    mine.mkdir(parents=True)
    (mine / "seed0-dymu.pt").write_bytes(b"this run's own controller")
    with pytest.raises(ValueError, match="already has .*seed0-dymu.pt"):
        run.main(_argv(root, tmp_path / "mine", *methods, "--seeds", "0", "1", "--seeds-from", sources[0]))
    assert (mine / "seed0-dymu.pt").read_bytes() == b"this run's own controller"


def test_a_run_on_another_thread_count_is_not_continued():
    # more threads sum in another order: stage 0 would not be the one the file's entries were trained from
    from benchmarks.config import make_config
    from benchmarks.partial import config_differences

    one, two = (make_config("fashion_digits", "full", threads=n).as_dict() for n in (1, 2))
    assert [d.split(" ")[0] for d in config_differences(one, two)] == ["threads"]
    assert config_differences(one, dict(one, out="elsewhere", plots=False)) == []


def test_a_controller_interrupted_between_stages_continues_from_its_stage_checkpoints(tmp_path, monkeypatch):
    root = write_synthetic_sources(tmp_path / "sources", n_train=120, n_test=60, digits_per_class=12)
    whole, interrupted = tmp_path / "whole", tmp_path / "interrupted"
    argv = ("--methods", "dymu", "--supernet-steps", "2")
    assert run.main(_argv(root, whole, *argv)) == 0

    def killed_in_stage1(self, *args, **kwargs):
        raise KeyboardInterrupt("killed in stage 1")

    with monkeypatch.context() as patch:
        patch.setattr(Controller, "fit_edge", killed_in_stage1)
        with pytest.raises(KeyboardInterrupt):
            run.main(_argv(root, interrupted, *argv))
    stages = interrupted / f"{STEM}-state" / "seed0-dymu-stages"
    assert sorted(p.name for p in stages.iterdir()) == ["anchor.pt", "supernet.pt"]

    assert run.main(_argv(root, interrupted, *argv, "--resume")) == 0
    assert not stages.exists()  # the saved controller supersedes them
    done, resumed = (json.loads((out / f"{STEM}.json").read_text()) for out in (whole, interrupted))
    entry = resumed["methods"]["dymu"]["per_seed"][0]
    assert entry["resumed_stages"] == {"anchor": 2, "supernet": 2}  # both loaded finished (2 steps each), not retrained
    assert "resumed_stages" not in done["methods"]["dymu"]["per_seed"][0]
    assert resumed["methods"]["dymu"]["records"] == done["methods"]["dymu"]["records"]
    assert resumed["methods"]["single_task"]["records"] == done["methods"]["single_task"]["records"]
