"""A stage killed between checkpoints resumes exactly: SIGKILL, resume in a new process, the weights, histories
and logs of an uninterrupted run (CPU; one process, and two gloo ranks under torchrun). Checkpoints refuse
another config, another stage and corrupt files, and a finished stage is loaded, not retrained."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import dymu
from _tiny import tiny_batches, tiny_tasks
from dymu.checkpoint import CheckpointError
from resume_worker import STEPS

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks

WORKER = Path(__file__).with_name("resume_worker.py")
ROOT = Path(__file__).resolve().parent.parent
TORCHRUN = Path(sys.executable).with_name("torchrun")


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "DYMU_QUIET": "1",
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def _command(out: Path, ranks: int, resume: bool) -> list[str]:
    out.mkdir(parents=True, exist_ok=True)
    launcher = [sys.executable] if ranks == 1 else [str(TORCHRUN), "--standalone", f"--nproc_per_node={ranks}"]
    return [*launcher, str(WORKER), str(out), str(out / "checkpoints"), *(["--resume"] if resume else [])]


def _train(out: Path, ranks: int = 1, resume: bool = False) -> list[dict]:
    done = subprocess.run(_command(out, ranks, resume), env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return [torch.load(out / f"result{r}.pt", weights_only=True) for r in range(ranks)]


def _train_and_kill(out: Path, stage: str, ranks: int = 1) -> dict:
    """Start training, SIGKILL every rank as soon as ``stage`` wrote its first checkpoint; that checkpoint."""
    process = subprocess.Popen(_command(out, ranks, False), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    checkpoint = out / "checkpoints" / f"{stage}.pt"
    deadline = time.time() + 240
    while not checkpoint.exists():
        assert process.poll() is None, f"finished before {stage} checkpointed: {process.stderr.read()[-3000:]!r}"
        assert time.time() < deadline, "no checkpoint in time"
        time.sleep(0.002)
    for rank in range(ranks):  # torchrun starts its workers in sessions of their own: kill them by id
        os.kill(int((out / f"pid{rank}").read_text()), signal.SIGKILL)
    process.wait(timeout=60)  # torchrun sees its workers die and exits
    payload = torch.load(checkpoint, weights_only=True)
    assert not payload["finished"] and 0 < payload["step"] < payload["steps"], "killed too late to test a resume"
    return payload


def _assert_same(resumed: dict, uninterrupted: dict) -> None:
    for part, state in uninterrupted["state"].items():
        for key, tensor in state.items():
            assert torch.equal(tensor, resumed["state"][part][key]), f"{part}.{key} differs after the resume"
    assert torch.equal(resumed["loss_scales"], uninterrupted["loss_scales"])
    assert repr(resumed["results"]) == repr(uninterrupted["results"]), "histories, logs or selections differ"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    return _train(tmp_path_factory.mktemp("uninterrupted"))[0]


@pytest.mark.parametrize("stage", ["anchor", "supernet", "edge", "weights"])
def test_a_stage_killed_mid_run_resumes_bit_identical(stage, uninterrupted, tmp_path):
    killed = _train_and_kill(tmp_path, stage)
    assert killed["stage"] == stage
    resumed = _train(tmp_path, resume=True)[0]
    earlier = {"anchor": [], "supernet": ["anchor"], "edge": ["anchor", "supernet"], "weights": ["anchor", "supernet", "edge"]}[stage]
    assert resumed["resumed_at"][stage] == killed["step"] > 0
    assert all(resumed["resumed_at"][s] == STEPS for s in earlier), resumed["resumed_at"]  # loaded, not retrained
    _assert_same(resumed, uninterrupted)


@pytest.mark.skipif(not TORCHRUN.exists() and shutil.which("torchrun") is None, reason="torchrun is not installed beside this Python")
def test_two_gloo_ranks_killed_mid_run_resume_bit_identical(tmp_path):
    full = _train(tmp_path / "full", ranks=2)
    killed = _train_and_kill(tmp_path / "killed", "edge", ranks=2)
    assert killed["world_size"] == 2 and len(killed["ranks"]) == 2
    resumed = _train(tmp_path / "killed", ranks=2, resume=True)
    assert [r["resumed_at"]["edge"] for r in resumed] == [killed["step"]] * 2
    for rank in range(2):
        _assert_same(resumed[rank], full[rank])
    assert all(torch.equal(a, b) for a, b in zip(resumed[0]["state"]["edge"].values(), resumed[1]["state"]["edge"].values()))


# ----------------------------------------------------------------------------- in-process checks
def _controller() -> dymu.Controller:
    return dymu.Controller(dymu.backbones.lenet(width_mult=0.25), tiny_tasks(3), seed=0)


class _Counting:
    """``batches``, counting the batches drawn and the passes started."""

    def __init__(self, batches):
        self.batches, self.drawn, self.passes = batches, 0, 0

    def __iter__(self):
        self.passes += 1
        for batch in self.batches:
            self.drawn += 1
            yield batch


def test_a_finished_stage_is_loaded_not_retrained(tmp_path):
    data = tiny_batches(3, n_batches=3)
    first, trained = _controller(), _Counting(data)
    done = first.fit_anchor(trained, data, config=dymu.AnchorConfig(steps=4, eval_every=2), checkpoint=tmp_path, verbose=False)
    assert done["resumed_at"] == 0 and (tmp_path / "anchor.pt").is_file()
    second, loaded = _controller(), _Counting(data)
    again = second.fit_anchor(loaded, data, config=dymu.AnchorConfig(steps=4, eval_every=2), checkpoint=tmp_path,
                              resume=True, verbose=False)
    assert again["resumed_at"] == 4 and again["history"] == done["history"] and again["best"] == done["best"]
    # the loaded stage draws what the trained one drew (4 batches, 2 passes begun) and trains on none of them: a
    # source whose order moves on with each pass (TensorLoader) is left where the uninterrupted stage left it
    assert (loaded.drawn, loaded.passes) == (trained.drawn, trained.passes) == (4, 2)
    for key, tensor in first.anchor.state_dict().items():
        assert torch.equal(tensor, second.anchor.state_dict()[key]), key
    assert torch.equal(first.loss_scales, second.loss_scales)


def test_resuming_with_another_config_names_the_fields(tmp_path):
    data = tiny_batches(3, n_batches=2)
    _controller().fit_anchor(data, steps=4, checkpoint=tmp_path / "a.pt", checkpoint_every=2, verbose=False)
    with pytest.raises(CheckpointError, match=r"a\.pt: cannot resume stage 'anchor' with another config \(steps: 4 in the "
                                              r"checkpoint, 5 now; lr: 0\.001 in the checkpoint, 0\.01 now\)"):
        _controller().fit_anchor(data, config=dymu.AnchorConfig(steps=5, lr=0.01), checkpoint=tmp_path / "a.pt",
                                 resume=True, verbose=False)
    with pytest.raises(CheckpointError, match=r"a\.pt holds stage 'anchor', not 'edge'"):
        ctrl = _controller()
        ctrl.fit_affinity(data, n_samples=32)
        ctrl.fit_edge(data, steps=4, checkpoint=tmp_path / "a.pt", resume=True, verbose=False)
    # an edge checkpoint does not resume on another anchor
    trained = _controller()
    trained.fit_anchor(data, steps=2, verbose=False)
    trained.fit_affinity(data, n_samples=32)
    trained.fit_edge(data, steps=3, checkpoint=tmp_path, verbose=False)
    other = _controller()
    other.fit_anchor(data, steps=3, verbose=False)
    other.fit_affinity(data, n_samples=32)
    with pytest.raises(CheckpointError, match=r"edge\.pt: the frozen modules this stage trains on \(e\.g\. the anchor\) differ"):
        other.fit_edge(data, steps=3, checkpoint=tmp_path, resume=True, verbose=False)
    # without resume the file is overwritten by a fresh start
    fresh = _controller().fit_anchor(data, steps=5, checkpoint=tmp_path / "a.pt", resume=False, verbose=False)
    assert fresh["resumed_at"] == 0 and torch.load(tmp_path / "a.pt", weights_only=True)["steps"] == 5


def test_a_truncated_or_foreign_checkpoint_is_named(tmp_path):
    data = tiny_batches(3, n_batches=2)
    _controller().fit_anchor(data, steps=2, checkpoint=tmp_path, verbose=False)
    path = tmp_path / "anchor.pt"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=rf"{path} is not a readable stage checkpoint \(truncated or corrupt\?\)"):
        _controller().fit_anchor(data, steps=2, checkpoint=tmp_path, resume=True, verbose=False)
    torch.save({"format": "something/else"}, path)
    with pytest.raises(CheckpointError, match=r"anchor\.pt is not a dymu stage checkpoint \(format 'something/else'"):
        _controller().fit_anchor(data, steps=2, checkpoint=tmp_path, resume=True, verbose=False)
    with pytest.raises(ValueError, match="need a checkpoint path"):
        _controller().fit_anchor(data, steps=2, checkpoint_every=1, verbose=False)
