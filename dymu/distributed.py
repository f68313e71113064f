"""What training needs from ``torch.distributed``: rank and world, DDP wrapping, rank means, one writer.

Every function works unchanged without ``torch.distributed`` initialised (one process: rank 0 of
a world of 1), so the training code has no separate single-process path.
"""

from __future__ import annotations

import gc
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["rank_world", "maybe_ddp", "collect_if_distributed", "broadcast_state", "mean_over_ranks", "barrier", "gather"]

T = TypeVar("T")


def rank_world() -> tuple[int, int]:
    """``(rank, world_size)``: ``(0, 1)`` unless ``torch.distributed`` is initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def maybe_ddp(module: nn.Module, device: torch.device, find_unused: bool = False) -> nn.Module:
    """``module`` wrapped in DistributedDataParallel under more than one rank, else ``module`` itself."""
    if rank_world()[1] == 1:
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=find_unused)


def collect_if_distributed() -> None:
    """Free dropped DDP wrappers now: a reducer that outlives its process group aborts the process at exit."""
    if rank_world()[1] > 1:
        gc.collect()


def broadcast_state(module: nn.Module) -> None:
    """Give every rank rank 0's parameters and buffers (BatchNorm running statistics are rank-local)."""
    if rank_world()[1] == 1:
        return
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=0)


def _leaves(tree: Any) -> list[float]:
    if isinstance(tree, dict):
        return [v for value in tree.values() for v in _leaves(value)]
    if isinstance(tree, (list, tuple)):
        return [v for value in tree for v in _leaves(value)]
    return [float(tree)]


def _rebuild(tree: Any, values: list[float]) -> Any:
    """``tree`` with its numbers replaced, in order, by ``values`` (consumed from the front)."""
    if isinstance(tree, dict):
        return {key: _rebuild(value, values) for key, value in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [_rebuild(value, values) for value in tree]
    return values.pop(0)


def mean_over_ranks(tree: T, device: torch.device) -> T:
    """The mean over ranks of every number in ``tree`` (nested dicts and lists of numbers), in float64.

    Validation scores go through it so that every rank selects the same checkpoint.

    >>> mean_over_ranks({"score": 0.5, "t0": {"acc": 1}}, torch.device("cpu"))  # one process: unchanged
    {'score': 0.5, 't0': {'acc': 1}}
    """
    world = rank_world()[1]
    if world == 1:
        return tree
    values = torch.tensor(_leaves(tree), dtype=torch.float64, device=device)
    dist.all_reduce(values)
    values /= world
    return _rebuild(tree, values.tolist())


def barrier() -> None:
    """Wait for every rank (nothing to wait for in one process)."""
    if rank_world()[1] > 1:
        dist.barrier()


def gather(value: T) -> list[T]:
    """Every rank's ``value`` (any picklable object), in rank order, on every rank."""
    world = rank_world()[1]
    if world == 1:
        return [value]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, value)
    return out

