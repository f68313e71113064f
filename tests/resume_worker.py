"""Train the stages of a tiny controller with checkpoints (run by tests/test_resume.py, alone or under torchrun).

    python resume_worker.py OUT_DIR CHECKPOINT_DIR [--resume]

Each stage trains ``STEPS`` steps and checkpoints every ``EVERY`` into CHECKPOINT_DIR; the training data
sleeps a little per batch, so that a test can kill the process between two checkpoints. Writes
``OUT_DIR/result{rank}.pt``: every module's state, each stage's record, and the step each stage resumed
from; and ``OUT_DIR/pid{rank}`` at start (a test kills the ranks by these ids).
"""

from __future__ import annotations

import gc
import os
import sys
import time

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))

import dymu  # noqa: E402
from _tiny import tiny_batches, tiny_tasks  # noqa: E402

STEPS, EVERY, DELAY_S = 12, 4, 0.02


class SlowBatches:
    """``batches``, re-iterable, each one ``DELAY_S`` late (the time between two checkpoints a test kills in)."""

    def __init__(self, batches):
        self.batches = batches

    def __iter__(self):
        for batch in self.batches:
            time.sleep(DELAY_S)
            yield batch


def main(out_dir: str, checkpoints: str, resume: bool) -> None:
    distributed = "RANK" in os.environ
    if distributed:
        dist.init_process_group("gloo")
    rank = dist.get_rank() if distributed else 0
    with open(os.path.join(out_dir, f"pid{rank}"), "w") as handle:
        handle.write(str(os.getpid()))
    torch.set_num_threads(1)
    ctrl = dymu.Controller(dymu.backbones.lenet(width_mult=0.25), tiny_tasks(3), seed=0)
    plain = tiny_batches(3, n_batches=3, batch=16, seed=100 + rank)  # each rank its own shard
    train, val = SlowBatches(plain), tiny_batches(3, n_batches=1, batch=16, seed=7)
    saving = {"checkpoint": checkpoints, "checkpoint_every": EVERY, "resume": resume, "verbose": False}
    results = {
        "anchor": ctrl.fit_anchor(train, val, config=dymu.AnchorConfig(steps=STEPS, eval_every=EVERY), **saving),
    }
    ctrl.fit_affinity(tiny_batches(3, n_batches=2, batch=16, seed=0), n_samples=32, calibration_samples=16)
    if not distributed:  # the supernet stage runs in one process
        results["supernet"] = ctrl.fit_supernet(train, val, config=dymu.SupernetConfig(steps=STEPS, eval_every=EVERY, solo=True,
                                                                                   own_trees=(0.0,)), **saving)
    results["edge"] = ctrl.fit_edge(train, val, steps=STEPS, config=dymu.EdgeConfig(eval_every=EVERY), **saving)
    results["weights"] = ctrl.fit_weights(train, val, steps=STEPS, config=dymu.WeightConfig(eval_every=EVERY), **saving)
    for result in results.values():
        result.pop("seconds")
    torch.save({
        "state": {part: getattr(ctrl, part).state_dict() for part in ("anchor", "edge", "weight", "solo", "own_trees")
                  if getattr(ctrl, part) is not None},
        "resumed_at": {stage: result.pop("resumed_at") for stage, result in results.items()},
        "results": results,
        "loss_scales": ctrl.loss_scales,
    }, os.path.join(out_dir, f"result{rank}.pt"))
    if distributed:
        gc.collect()
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], "--resume" in sys.argv[3:])
