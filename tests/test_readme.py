"""The README's Python quick start runs as written, on synthetic sources and with a few steps per stage."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from dymu.data import write_synthetic_sources

README = Path(__file__).resolve().parent.parent / "README.md"


def quick_start_code(text: str) -> str:
    """The first ```python block under the "Python quick start" heading."""
    section = text.split("## Python quick start", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None, "no python block under the quick start heading"
    return match.group(1)


def test_the_quick_start_runs_and_keeps_its_promises(tmp_path, monkeypatch):
    code = quick_start_code(README.read_text())
    assert "steps=" in code
    short = re.sub(r"steps=\d+", "steps=2", code)
    monkeypatch.setenv("DYMU_DATA", str(write_synthetic_sources(tmp_path / "sources", n_train=120, n_test=40,
                                                                 digits_per_class=12)))
    monkeypatch.chdir(tmp_path)  # it saves ctrl.pt and eval.json in the working directory
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        scope: dict = {}
        exec(compile(short, str(README), "exec"), scope)
    finally:
        torch.set_num_threads(threads)
    ctrl, model, out, x = scope["ctrl"], scope["model"], scope["out"], scope["x"]
    assert set(out) == set(ctrl.task_names) == {"fashion", "fashion_group", "digit", "parity", "segment", "clean"}
    assert out["fashion"].shape == (x.shape[0], 10) and out["segment"].shape == (x.shape[0], 3, 36, 36)
    assert out["clean"].shape == (x.shape[0], 1, 36, 36)
    assert model.flops() <= 0.5 * ctrl.cost_table.anchor_flops
    assert (tmp_path / "ctrl.pt").exists() and (tmp_path / "eval.json").exists()
    assert len(scope["table"].rows) == 4  # two preferences x two budgets
