"""Per-block features of single-task networks on a common set of inputs, gathered with forward hooks.

The RSA affinity (:mod:`affinity.rsa`) compares how ``N`` single-task networks represent the same
``K`` images at every branchable layer. :func:`collect_features` runs every network on those images
and records the output of each of its blocks. It works for any ``nn.Module``: the blocks are given
explicitly, found by a callable, or (by default) read from the model's ``blocks`` attribute, which is
how a block-structured backbone exposes them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["collect_features", "default_blocks"]

BlockSpec = Union[Mapping[str, Sequence[nn.Module]], Callable[[nn.Module], Sequence[nn.Module]], None]


class _StopForward(Exception):
    """Raised from the last hook of a batch: the rest of the forward (e.g. a task head) is not needed."""


def default_blocks(model: nn.Module) -> list[nn.Module]:
    """The blocks of ``model``: its ``blocks`` attribute, else its ``backbone.blocks``.

    Raises:
        ValueError: if neither exists or it is not a sequence of modules.
    """
    for owner, where in ((model, "model.blocks"), (getattr(model, "backbone", None), "model.backbone.blocks")):
        blocks = getattr(owner, "blocks", None) if owner is not None else None
        if blocks is None:
            continue
        if isinstance(blocks, nn.Module) and not isinstance(blocks, (nn.ModuleList, nn.Sequential)):
            raise ValueError(f"{where} is a {type(blocks).__name__}, expected an nn.ModuleList of blocks")
        blocks = list(blocks)
        if not blocks or not all(isinstance(b, nn.Module) for b in blocks):
            raise ValueError(f"{where} must be a non-empty sequence of nn.Module blocks")
        return blocks
    raise ValueError(
        f"{type(model).__name__} has no 'blocks' (nor 'backbone.blocks') attribute; "
        "pass blocks= as a mapping task -> modules or a callable model -> modules"
    )


def collect_features(
    models: Mapping[str, nn.Module],
    blocks: BlockSpec = None,
    inputs: Tensor | Iterable | None = None,
    *,
    max_samples: int | None = 256,
    batch_size: int = 64,
    device: torch.device | str | None = None,
    spatial_size: int | tuple[int, int] | None = None,
    stop_after_last_block: bool = True,
) -> dict[str, dict[int, Tensor]]:
    """Record every block's output of every model on the same ``K`` inputs.

    Args:
        models: task name -> single-task network. Each is run in eval mode without gradients; the
            train/eval mode of every submodule is restored afterwards and the hooks are removed even
            when the forward fails.
        blocks: which modules' outputs to record: a mapping task -> blocks, a callable model -> blocks,
            or ``None`` for :func:`default_blocks` (``model.blocks``, e.g. a ``BlockBackbone``).
        inputs: (required) a tensor ``[M, *input_shape]``, or an iterable of batches (tensors
            ``[B, *input_shape]``, or tuples/lists whose first element is such a tensor, as a
            ``DataLoader`` of ``(images, targets)`` yields). The first ``K = min(M, max_samples)``
            samples are taken once and fed to every model in the same order, so a shuffling loader cannot give the models
            different images.
        max_samples: ``K``, the most samples to use (``None``: all of ``inputs``).
        batch_size: samples per forward pass.
        device: where to run. ``None``: each model's own device (CPU for a model without tensors).
            Otherwise a model is moved there for the call and moved back afterwards.
        spatial_size: if given, 4-D block outputs ``[B, C, H, W]`` larger than it are average-pooled
            to at most ``[B, C, *spatial_size]`` before being stored; this bounds memory for dense networks
            (``K`` full-resolution feature maps per layer per task can take gigabytes).
        stop_after_last_block: abort each forward once the last recorded block has run, skipping
            whatever follows (e.g. a task head).

    Returns:
        ``features[task][l]``: a float32 CPU tensor ``[K, *shape_l]`` holding the output of block
        ``l`` (``l = 0 .. L_task - 1``) for the ``K`` samples.

    Raises:
        ValueError: no models, no samples, a batch that is not a tensor, blocks that cannot be
            found, a block that did not run or returned a non-tensor, a model spread over devices.
    """
    if not isinstance(models, Mapping) or len(models) == 0:
        raise ValueError("models must be a non-empty mapping task name -> nn.Module")
    for task, model in models.items():
        if not isinstance(model, nn.Module):
            raise ValueError(f"models[{task!r}] is a {type(model).__name__}, expected an nn.Module")
    if max_samples is not None and max_samples < 1:
        raise ValueError(f"max_samples must be >= 1 or None, got {max_samples}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if inputs is None:
        raise ValueError("inputs is required: a tensor [M, ...] or an iterable of batches")
    size = _pair(spatial_size)

    samples = _gather_samples(inputs, max_samples)
    return {
        task: _run_one(
            task, model, _blocks_of(task, model, blocks), samples, batch_size, device, size, stop_after_last_block
        )
        for task, model in models.items()
    }


def _pair(size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    pair = (size, size) if isinstance(size, int) else tuple(size)
    if len(pair) != 2 or any(not isinstance(s, int) or s < 1 for s in pair):
        raise ValueError(f"spatial_size must be a positive int or a pair of them, got {size!r}")
    return pair  # type: ignore[return-value]


def _gather_samples(inputs: Tensor | Iterable, max_samples: int | None) -> Tensor:
    """The first ``max_samples`` samples of ``inputs`` as one CPU tensor ``[K, ...]``."""
    if isinstance(inputs, Tensor):
        samples = inputs if max_samples is None else inputs[:max_samples]
        if samples.dim() == 0 or len(samples) == 0:
            raise ValueError(f"inputs must hold at least one sample, got a tensor of shape {tuple(inputs.shape)}")
        return samples.detach().cpu()
    chunks: list[Tensor] = []
    count = 0
    for index, batch in enumerate(inputs):
        if isinstance(batch, (tuple, list)) and batch:
            batch = batch[0]
        if not isinstance(batch, Tensor) or batch.dim() == 0:
            raise ValueError(
                f"batch {index} of inputs is a {type(batch).__name__}; expected a tensor [B, ...] "
                "or a tuple/list whose first element is one"
            )
        if chunks and batch.shape[1:] != chunks[0].shape[1:]:
            raise ValueError(
                f"batch {index} of inputs has sample shape {tuple(batch.shape[1:])}, "
                f"earlier batches {tuple(chunks[0].shape[1:])}"
            )
        take = len(batch) if max_samples is None else min(len(batch), max_samples - count)
        chunks.append(batch[:take].detach().cpu())
        count += take
        if max_samples is not None and count >= max_samples:
            break
    if count == 0:
        raise ValueError("inputs yielded no samples")
    return torch.cat(chunks)


def _blocks_of(task: str, model: nn.Module, blocks: BlockSpec) -> list[nn.Module]:
    if blocks is None:
        found = default_blocks(model)
    elif isinstance(blocks, Mapping):
        if task not in blocks:
            raise ValueError(f"blocks has no entry for task {task!r}; it has {sorted(blocks)}")
        found = list(blocks[task])
    elif callable(blocks):
        found = list(blocks(model))
    else:
        raise ValueError(f"blocks must be a mapping, a callable or None, got {type(blocks).__name__}")
    if not found:
        raise ValueError(f"no blocks to record for task {task!r}")
    for index, block in enumerate(found):
        if not isinstance(block, nn.Module):
            raise ValueError(f"block {index} of task {task!r} is a {type(block).__name__}, expected an nn.Module")
    if len({id(b) for b in found}) != len(found):
        raise ValueError(f"the blocks of task {task!r} list the same module twice")
    return found


def _model_device(task: str, model: nn.Module) -> torch.device | None:
    devices = {t.device for t in list(model.parameters()) + list(model.buffers())}
    if len(devices) > 1:
        raise ValueError(f"model {task!r} has tensors on several devices {sorted(map(str, devices))}")
    return next(iter(devices)) if devices else None


def _run_one(
    task: str,
    model: nn.Module,
    blocks: list[nn.Module],
    samples: Tensor,
    batch_size: int,
    device: torch.device | str | None,
    spatial_size: tuple[int, int] | None,
    stop_early: bool,
) -> dict[int, Tensor]:
    home = _model_device(task, model)
    run_on = torch.device(device) if device is not None else (home or torch.device("cpu"))
    modes = {module: module.training for module in model.modules()}
    outputs: list[list[Tensor]] = [[] for _ in blocks]
    seen: list[bool] = [False] * len(blocks)

    def make_hook(index: int) -> Callable:
        def hook(module: nn.Module, args: object, output: object) -> None:
            if seen[index]:
                return  # a block called twice in one forward: keep its first output
            if not isinstance(output, Tensor):
                raise ValueError(
                    f"block {index} of task {task!r} returned a {type(output).__name__}, expected a tensor"
                )
            # clone: a later in-place op (e.g. ReLU(inplace=True)) must not change the stored output
            out = output.detach()
            if spatial_size is not None and out.dim() == 4:
                target = (min(out.shape[-2], spatial_size[0]), min(out.shape[-1], spatial_size[1]))
                if target != tuple(out.shape[-2:]):
                    out = F.adaptive_avg_pool2d(out, target)
            outputs[index].append(out.to("cpu", torch.float32, copy=True))
            seen[index] = True
            if stop_early and all(seen):
                raise _StopForward

        return hook

    handles = [block.register_forward_hook(make_hook(i)) for i, block in enumerate(blocks)]
    try:
        if home is not None and run_on != home:
            model.to(run_on)
        model.eval()
        with torch.no_grad():
            for start in range(0, len(samples), batch_size):
                seen[:] = [False] * len(blocks)
                try:
                    model(samples[start : start + batch_size].to(run_on))
                except _StopForward:
                    pass
                missing = [i for i, done in enumerate(seen) if not done]
                if missing:
                    raise ValueError(f"blocks {missing} of task {task!r} did not run in the model's forward")
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes.items():
            module.training = training
        if home is not None and run_on != home:
            model.to(home)
    return {index: torch.cat(chunks) for index, chunks in enumerate(outputs)}
