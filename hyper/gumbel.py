"""Gumbel-softmax sampling of parent choices and its temperature schedule."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["gumbel_softmax", "TemperatureSchedule"]


def gumbel_softmax(logits: Tensor, tau: float, hard: bool = False, generator: torch.Generator | None = None) -> Tensor:
    """Sample relaxed one-hot vectors along the last dimension of ``logits`` (any shape ``[..., N]``).

    ``hard=True`` returns exact one-hot samples in the forward pass with the relaxed sample's gradient
    (straight-through). ``generator`` makes the noise reproducible without touching global RNG state.
    """
    if tau <= 0:
        raise ValueError(f"temperature must be > 0, got {tau}")
    uniform = torch.rand(logits.shape, generator=generator, device="cpu").to(logits.device, logits.dtype)
    gumbels = -torch.log(-torch.log(uniform.clamp(1e-10, 1 - 1e-10)))
    soft = ((logits + gumbels) / tau).softmax(-1)
    if not hard:
        return soft
    index = soft.argmax(-1, keepdim=True)
    one_hot = torch.zeros_like(soft).scatter_(-1, index, 1.0)
    return one_hot - soft.detach() + soft


class TemperatureSchedule:
    """``tau(step) = max(start * decay ** (step // every), minimum)`` (paper: start 5, x0.97 every 300 steps).

    [choice] The paper anneals 100 times over 30K steps; :meth:`for_steps` keeps 100 decays over any
    number of steps, so a short CPU run ends at the same temperature as the paper's.
    """

    def __init__(self, start: float = 5.0, decay: float = 0.97, every: int = 300, minimum: float = 0.1):
        if start <= 0 or not 0 < decay <= 1 or every < 1 or minimum <= 0:
            raise ValueError("temperature schedule needs start > 0, 0 < decay <= 1, every >= 1, minimum > 0")
        self.start, self.decay, self.every, self.minimum = start, decay, every, minimum

    @classmethod
    def for_steps(cls, total_steps: int, start: float = 5.0, decay: float = 0.97, n_decays: int = 100) -> TemperatureSchedule:
        return cls(start=start, decay=decay, every=max(1, math.ceil(total_steps / n_decays)))

    def __call__(self, step: int) -> float:
        return max(self.start * self.decay ** (step // self.every), self.minimum)
