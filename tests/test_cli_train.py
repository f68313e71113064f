"""dymu train / eval / build / plot on a user's own tasks and data, end to end, and config errors.

The own-task example is the README's ("Train on your own tasks"): a module with a task list and a
data callable, written to tmp_path and put on PYTHONPATH, a TOML config, and the README's commands run
as written (``dymu`` as ``python -m dymu.cli``; its ``python -c`` line in an interpreter that cannot
import dymu), the exported model then compared, without dymu, with the model built in Python.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from _shipping import run_isolated, run_without_dymu
from dymu import cli
from dymu.runconfig import ConfigError, load_config, parse_config, stage_steps

ROOT = Path(__file__).resolve().parent.parent

TASKS_MODULE = '''
"""Three tasks on 16x16 images: is it bright, is its left half brighter, and its mean brightness."""
import torch
import torch.nn.functional as F
from torch import nn

import dymu


def head(outputs):
    def make(shape):                       # shape: the backbone's output (C, H, W)
        c, h, w = shape
        return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, outputs))
    return make


TASKS = [
    dymu.Task("bright", head(2), F.cross_entropy, {"acc": dymu.metrics.accuracy}, primary="acc",
              higher_is_better=True, n_classes=2),
    dymu.Task("left", head(2), F.cross_entropy, {"acc": dymu.metrics.accuracy}, primary="acc",
              higher_is_better=True, n_classes=2),
    dymu.Task("level", head(1), F.mse_loss, target_dtype="float"),
]


def make_data(batch_size=32, seed=0, n_train=1024):
    """(train, val, test): lists of (x [B, 1, 16, 16], {task: target}) batches."""
    g = torch.Generator().manual_seed(seed)

    def split(n):
        bright = torch.randint(0, 2, (n,), generator=g)
        left = torch.randint(0, 2, (n,), generator=g)
        x = 0.3 * torch.rand(n, 1, 16, 16, generator=g) + 0.4 * bright.view(n, 1, 1, 1).float()
        x[:, :, :, :8] += 0.3 * left.view(n, 1, 1, 1).float()
        targets = {"bright": bright, "left": left, "level": x.mean((1, 2, 3)).unsqueeze(1)}
        return [(x[i:i + batch_size], {k: v[i:i + batch_size] for k, v in targets.items()})
                for i in range(0, n, batch_size)]

    return split(n_train), split(256), split(256)
'''

CONFIG = '''
tasks = "tinytasks:TASKS"          # your task list (module:attribute), or a registered set like "fashion_digits"
seed = 0
out = "out"

[data]
source = "tinytasks:make_data"     # a callable returning (train, val, test)
batch_size = 32

[backbone]
name = "lenet"
options = { width_mult = 0.25, input_size = [16, 16] }

[anchor]
epochs = 2                         # 2 passes over the 32 training batches
[edge]
steps = 40
[weights]
steps = 20
'''


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)]), "OMP_NUM_THREADS": "1", "DYMU_QUIET": "1"})
    return env


def _dymu(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "dymu.cli", *args], cwd=tmp_path, env=_env(tmp_path),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done


def readme_commands() -> list[list[str]]:
    """The shell commands of the README's "Train on your own tasks" section, comments dropped."""
    section = (ROOT / "README.md").read_text().split("## Train on your own tasks", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block is not None, "no bash block in the README's own-tasks section"
    return [shlex.split(line, comments=True) for line in block.group(1).splitlines() if line.strip()]


def test_train_build_export_on_own_tasks(tmp_path, monkeypatch, capsys):
    (tmp_path / "tinytasks.py").write_text(TASKS_MODULE)
    (tmp_path / "tiny.toml").write_text(CONFIG)
    train_cmd, build_cmd, run_cmd = readme_commands()
    assert train_cmd[:2] == ["dymu", "train"] and build_cmd[:2] == ["dymu", "build"] and run_cmd[:2] == ["python", "-c"]

    trained = _dymu(train_cmd[1:], tmp_path)
    out = tmp_path / "out"
    assert {"controller.pt", "config.toml", "results.json"} <= {p.name for p in out.iterdir()}
    assert (out / "config.toml").read_text() == CONFIG
    results = json.loads((out / "results.json").read_text())
    assert results["tasks"] == ["bright", "left", "level"]
    # the supernet stage takes the cpu preset's one epoch
    assert results["steps"] == {"anchor": 64, "supernet": 32, "edge": 40, "weights": 20} and results["train_batches_per_epoch"] == 32
    assert set(results["stage_seconds"]) == {"anchor", "affinity", "supernet", "edge", "weights", "evaluate"}
    assert results["versions"]["torch"] == torch.__version__ and results["seed"] == 0
    assert results["config"]["data"]["source"] == "tinytasks:make_data"
    rows = results["evaluation"]["rows"]
    assert len(rows) == 4 * 2  # uniform + each task alone, budgets 1 and 0.5
    assert all(r["flops"] <= r["budget"] * results["anchor_flops"] for r in rows)
    uniform_full = rows[0]
    assert uniform_full["preference"] == pytest.approx([1 / 3] * 3) and uniform_full["budget"] == 1.0
    # the data is learnable and the streams learnt it (chance is 0.5)
    assert uniform_full["metrics"]["bright"]["acc"] > 0.8, uniform_full["metrics"]
    assert "bright:acc" in trained.stdout

    _dymu(build_cmd[1:], tmp_path)
    exported = tmp_path / build_cmd[build_cmd.index("--export") + 1]
    assert exported.is_file()
    # the README's last line, as written, where dymu cannot be imported: the program needs torch alone
    printed = run_isolated(run_cmd[2], tmp_path).stdout
    assert all(f"'{task}': tensor(" in printed for task in ("bright", "left", "level")), printed

    # the same request built here, to compare the shipped program with
    pref = [float(v) for v in build_cmd[build_cmd.index("--pref") + 1 : build_cmd.index("--budget")]]
    budget = float(build_cmd[build_cmd.index("--budget") + 1])
    monkeypatch.syspath_prepend(str(tmp_path))
    from dymu.run import load_run_controller

    ctrl = load_run_controller(out / "controller.pt")
    model = ctrl.build_model(pref, budget)
    inputs = {"batch1": torch.rand(1, 1, 16, 16), "batch5": torch.rand(5, 1, 16, 16)}
    with torch.no_grad():
        expected = {k: model(x) for k, x in inputs.items()}
    diffs = run_without_dymu(exported, inputs, expected, tmp_path)
    assert set(diffs) == set(inputs)
    for name, per_task in diffs.items():  # BatchNorm folded: equal to float32 rounding
        scale = max(1.0, max(float(y.abs().max()) for y in expected[name].values()))
        assert set(per_task) == {"bright", "left", "level"} and max(per_task.values()) <= 1e-5 * scale, (name, per_task)

    # eval and the plots, in this process (the commands' code paths; the module is on sys.path)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["eval", "out/controller.pt", "--split", "val", "--pref", "1", "1", "1", "--pref", "0", "0", "1",
                     "--budget", "1", "0.5", "--out", "ev.json"]) == 0
    table = json.loads((tmp_path / "ev.json").read_text())
    assert table["split"] == "val" and len(table["rows"]) == 4 and table["tasks"] == ["bright", "left", "level"]
    assert cli.main(["plot", "front", "out/results.json", "--out", "front.png", "--tasks", "bright", "level"]) == 0
    assert cli.main(["plot", "tree", "out/controller.pt", "--pref", "1", "0", "0", "--budget", "0.8", "--out", "tree.png"]) == 0
    assert cli.main(["plot", "affinity", "out/controller.pt", "--out", "aff.png"]) == 0
    for name in ("front.png", "tree.png", "aff.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # what each stage kept, from the file alone (the report names every trained stage with its steps)
    capsys.readouterr()
    assert cli.main(["info", "out/controller.pt"]) == 0
    report = capsys.readouterr().out
    for stage, steps in (("stage 0 (streams)", 64), ("supernet", 32), ("edge hypernet", 40), ("weight hypernet", 20)):
        assert f"\n{stage}: {steps} steps in " in report, report
    assert "searches on validation (lower is better): " in report


def test_train_resume_continues_a_killed_run_to_the_same_weights(tmp_path):
    (tmp_path / "tinytasks.py").write_text(TASKS_MODULE)
    (tmp_path / "tiny.toml").write_text("checkpoint_every = 10\n" + CONFIG.replace("epochs = 2 ", "steps = 20"))
    _dymu(["train", "tiny.toml", "--out", "full"], tmp_path)
    command = [sys.executable, "-m", "dymu.cli", "train", "tiny.toml", "--out", "killed"]
    process = subprocess.Popen(command, cwd=tmp_path, env=_env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    edge = tmp_path / "killed" / "checkpoints" / "edge.pt"
    while not edge.exists():  # the anchor is done and the edge hypernet is 10 of its 40 steps in
        assert process.poll() is None, process.stderr.read()[-3000:]
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    killed = torch.load(edge, weights_only=True)
    assert killed["step"] == 10 and not killed["finished"] and not (tmp_path / "killed" / "controller.pt").exists()
    resumed = _dymu(["train", "tiny.toml", "--out", "killed", "--resume"], tmp_path)
    assert "bright:acc" in resumed.stdout
    full, again = (torch.load(tmp_path / run / "controller.pt", weights_only=True) for run in ("full", "killed"))
    for part in ("anchor", "edge", "weight"):
        assert all(torch.equal(full[part][k], again[part][k]) for k in full[part]), part
    assert torch.equal(full["loss_scales"], again["loss_scales"])
    assert {p.name for p in (tmp_path / "killed" / "checkpoints").iterdir() if p.suffix == ".pt"} == {"anchor.pt", "supernet.pt", "edge.pt", "weights.pt"}


def _config(**changes) -> dict:
    raw = {"tasks": "fashion_digits", "data": {"source": "fashion_digits"}, "backbone": {"name": "lenet"}}
    raw.update(changes)
    return raw


@pytest.mark.parametrize(
    "raw, message",
    [
        (_config(epochs=3), "unknown key(s) ['epochs']"),
        (_config(data={"source": "x", "batchsize": 3}), "unknown key(s) ['data.batchsize']"),
        ({"data": {"source": "fashion_digits"}, "backbone": {"name": "lenet"}}, "missing key 'tasks'"),
        (_config(backbone={"options": {}}), "missing key 'backbone.name'"),
        ({"tasks": "fashion_digits", "backbone": {"name": "lenet"}}, "missing table [data]"),
        (_config(seed="zero"), "key 'seed' must be an integer, got 'zero'"),
        (_config(anchor={"steps": 10, "epochs": 1}), "[anchor] gives both steps and epochs"),
        (_config(edge={"steps": 0}), "key 'edge.steps' must be positive, got 0"),
        (_config(preset="fast"), "key 'preset' must be one of ['cpu', 'paper'], got 'fast'"),
        (_config(evaluate={"budgets": [1.5]}), "key 'evaluate.budgets' must be a list of numbers in (0, 1]"),
        (_config(supernet={"solo": "yes"}), "key 'supernet.solo' must be true or false, got 'yes'"),
        (_config(edge={"solo": True}), "unknown key(s) ['edge.solo']"),
    ],
)
def test_config_errors_name_the_key(raw, message):
    with pytest.raises(ConfigError) as info:
        parse_config(raw, "cfg.toml")
    assert message in str(info.value) and "cfg.toml" in str(info.value)


def test_the_supernet_table_switches_solo_streams_on():
    assert parse_config(_config(supernet={"solo": True, "steps": 5}), "cfg.toml").solo is True
    assert parse_config(_config(), "cfg.toml").solo is False


def test_bad_module_attribute_names_key_and_value(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mytasks.py").write_text("TASKS = []\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cases = {
        'tasks = "no_such_module:TASKS"': ("key 'tasks'", "cannot import module 'no_such_module'"),
        'tasks = "mytasks:NOPE"': ("key 'tasks'", "module 'mytasks' has no attribute 'NOPE'"),
        'tasks = "mytasks:TASKS"': ("key 'tasks'", "must be a list of dymu.Task"),
        'tasks = "nonsense"': ("key 'tasks'", "unknown task set 'nonsense'"),
    }
    for line, expected in cases.items():
        (tmp_path / "c.toml").write_text(line + '\n[data]\nsource = "fashion_digits"\n[backbone]\nname = "lenet"\n')
        assert cli.main(["train", "c.toml"]) == 2
        err = capsys.readouterr().err
        assert all(e in err for e in expected), (line, err)
    (tmp_path / "c.toml").write_text('tasks = "fashion_digits"\n[data]\nsource = "mytasks:missing"\n[backbone]\nname = "lenet"\n')
    assert cli.main(["train", "c.toml"]) == 2
    assert "key 'data.source'" in capsys.readouterr().err
    (tmp_path / "c.toml").write_text("tasks = [1\n")
    assert cli.main(["train", "c.toml"]) == 2
    assert "not valid TOML" in capsys.readouterr().err


def test_step_defaults_and_preset(tmp_path):
    base = {"tasks": "fashion_digits", "data": {"source": "fashion_digits"}, "backbone": {"name": "lenet"}}
    config = parse_config(base, tmp_path / "c.toml")
    assert stage_steps(config, 422) == {"anchor": 844, "supernet": 422, "edge": 422, "weights": 211}
    assert stage_steps(config, 100_000) == {"anchor": 3000, "supernet": 1500, "edge": 2000, "weights": 1000}  # capped
    assert stage_steps(config, None) == {"anchor": 600, "supernet": 300, "edge": 400, "weights": 200}  # data without len()
    paper = parse_config({**base, "preset": "paper", "weights": {"epochs": 0.25}}, tmp_path / "c.toml")
    assert stage_steps(paper, 400) == {"anchor": 30000, "supernet": 0, "edge": 30000, "weights": 100}  # the paper has no supernet
    with pytest.raises(ConfigError, match=r"\[weights\] epochs = 0.25 needs the training data's len\(\)"):
        stage_steps(paper, None)
    (tmp_path / "c.toml").write_text('tasks = "multifashion"\nout = "x"\n[data]\nsource = "multifashion"\n[backbone]\nname = "lenet"\n')
    loaded = load_config(tmp_path / "c.toml")
    assert loaded.out == Path("x") and loaded.batch_size == 64 and loaded.preset == "cpu" and loaded.seed == 0


def test_help_texts(capsys):
    for command in ([], ["train"], ["eval"], ["build"], ["plot"]):
        with pytest.raises(SystemExit) as info:
            cli.main([*command, "--help"])
        assert info.value.code == 0
    text = capsys.readouterr().out
    assert "dymu train tiny.toml" in text and "--export" in text and "config.toml beside the checkpoint" in text


def test_train_help_mentions_readme_example():
    text = textwrap.dedent(cli._EPILOG)
    assert "Train on your own tasks" in text


def test_readme_shows_this_example_verbatim():
    readme = (ROOT / "README.md").read_text()
    assert "## Train on your own tasks" in readme
    assert TASKS_MODULE.strip("\n") in readme and CONFIG.strip("\n") in readme
