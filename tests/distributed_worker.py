"""One rank of the distributed training test (run by tests/test_distributed.py under torchrun).

Every rank trains the same tiny controller on its own shard of data; with DistributedDataParallel the
ranks' gradients are averaged, so their weights must stay identical after every stage.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))

import dymu  # noqa: E402
from _tiny import tiny_batches, tiny_tasks  # noqa: E402


def digest(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def main(out_dir: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    ctrl = dymu.Controller(dymu.backbones.lenet(width_mult=0.25), tiny_tasks(3), seed=0)
    shard = tiny_batches(3, n_batches=2, batch=16, seed=100 + rank)  # each rank its own data
    ctrl.fit_anchor(shard, None, steps=3, verbose=False)
    anchor = digest(ctrl.anchor)
    ctrl.fit_affinity(tiny_batches(3, n_batches=2, batch=16, seed=0), n_samples=32, calibration_samples=16)
    ctrl.fit_edge(shard, steps=3, verbose=False)
    ctrl.fit_weights(shard, steps=3, verbose=False)
    result = {"rank": rank, "world": dist.get_world_size(), "anchor": anchor, "edge": digest(ctrl.edge),
              "weight": digest(ctrl.weight), "data": digest(torch.nn.ParameterList([torch.nn.Parameter(shard[0][0])]))}
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as handle:
        json.dump(result, handle)
    gc.collect()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
