"""Saving and loading controllers: identical outputs, clear errors, no half-written files."""

from __future__ import annotations

import pytest
import torch

import dymu
from _tiny import make_controller, tiny_tasks
from dymu.checkpoint import CheckpointError


def _outputs(ctrl, x):
    model = ctrl.build_model([0.6, 0.1, 0.3], 0.7)
    with torch.no_grad():
        return model.tree, model(x)


def test_save_and_load_give_identical_models(tmp_path):
    ctrl = make_controller()
    path = ctrl.save(tmp_path / "ctrl.pt")
    again = dymu.load(path, tasks=tiny_tasks(3))
    x = torch.rand(5, 1, 36, 36)
    tree_a, out_a = _outputs(ctrl, x)
    tree_b, out_b = _outputs(again, x)
    assert tree_a == tree_b
    for name in ctrl.task_names:
        assert torch.equal(out_a[name], out_b[name])
    assert again.cost_table == ctrl.cost_table
    assert again.affinity.tasks == ctrl.affinity.tasks
    assert again.calibration is None  # only kept when trees re-estimate BatchNorm statistics


def test_calibration_inputs_travel_when_batchnorm_is_re_estimated(tmp_path):
    ctrl = make_controller()
    ctrl.bn_stats = "batch"
    again = dymu.load(ctrl.save(tmp_path / "ctrl.pt"), tasks=tiny_tasks(3))
    assert again.bn_stats == "batch" and torch.equal(again.calibration, ctrl.calibration)
    x = torch.rand(3, 1, 36, 36)
    with torch.no_grad():
        a = ctrl.build_model([0.2, 0.3, 0.5], 0.8)(x)
        b = again.build_model([0.2, 0.3, 0.5], 0.8)(x)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_registered_backbone_and_task_set_rebuild_by_name(tmp_path):
    ctrl = dymu.Controller(dymu.backbones.lenet(width_mult=0.25), "multifashion")
    path = ctrl.save(tmp_path / "mf.pt")
    again = dymu.load(path)
    assert again.task_names == ["top_left", "bottom_right"]
    assert again.anchor.backbone.width_mult == 0.25
    x = torch.rand(2, 1, 36, 36)
    with torch.no_grad():
        a, b = ctrl.anchor(x), again.anchor(x)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_custom_tasks_must_be_passed_and_must_match(tmp_path):
    path = make_controller().save(tmp_path / "c.pt")
    with pytest.raises(ValueError, match="pass tasks="):
        dymu.load(path)
    with pytest.raises(ValueError, match="differ from the checkpoint"):
        dymu.load(path, tasks=[*tiny_tasks(2), dymu.Task("other", tiny_tasks(1)[0].head, tiny_tasks(1)[0].loss)])


def test_truncated_and_foreign_files_raise_clear_errors(tmp_path):
    good = make_controller().save(tmp_path / "good.pt")
    data = good.read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        dymu.load(truncated, tasks=tiny_tasks(3))
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match="not a readable dymu checkpoint"):
        dymu.load(text, tasks=tiny_tasks(3))
    foreign = tmp_path / "state_dict.pt"
    torch.save({"weight": torch.zeros(3)}, foreign)
    with pytest.raises(CheckpointError, match="not a dymu controller checkpoint"):
        dymu.load(foreign, tasks=tiny_tasks(3))
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        dymu.load(tmp_path / "missing.pt", tasks=tiny_tasks(3))


def test_dymu_info_reads_any_controller_file_and_names_a_bad_one(tmp_path, capsys):
    from dymu import cli

    ctrl = make_controller()  # custom tasks: dymu.load would need their code, the report does not
    ctrl.stages["anchor"] = {"config": {"steps": 7}, "seconds": 3.0, "best_val": {"t0": {"loss": 0.5, "acc": 0.75}}}
    ctrl.stages["weights"] = {"config": {"steps": 20}, "seconds": 90.0,
                              "selection": {"best_step": 15, "best_score": 0.81, "history": [{"step": 15, "score": 0.81}]}}
    path = ctrl.save(tmp_path / "c.pt")
    assert cli.main(["info", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("controller: 3 tasks (") and f"minimum budget {ctrl.min_budget:.3f}" in lines[0]
    assert "stage 0 (streams): 7 steps in 3 s; best validation: t0 acc 0.750" in lines
    assert "weight hypernet: 20 steps in 1.5 min; kept step 15 of 20 (score 0.8100)" in lines
    assert not any(line.startswith("edge hypernet") for line in lines)  # the fixture's randomised edge was never trained
    (tmp_path / "notes.pt").write_text("hello")
    for bad, message in (("notes.pt", "notes.pt is not a readable dymu checkpoint"), ("missing.pt", "no checkpoint at")):
        assert cli.main(["info", str(tmp_path / bad)]) == 2
        assert message in capsys.readouterr().err


def test_weights_of_another_architecture_are_refused(tmp_path):
    path = make_controller(width=0.25).save(tmp_path / "narrow.pt")
    with pytest.raises(CheckpointError, match="do not fit"):
        dymu.load(path, tasks=tiny_tasks(3), backbone=dymu.backbones.lenet(width_mult=0.5))


def test_a_failed_save_leaves_the_previous_file_intact(tmp_path, monkeypatch):
    ctrl = make_controller()
    path = ctrl.save(tmp_path / "ctrl.pt")
    before = path.read_bytes()
    real_save = torch.save

    def broken_save(obj, handle, *args, **kwargs):
        handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        ctrl.save(path)
    monkeypatch.setattr(torch, "save", real_save)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ctrl.pt"]
