"""Pareto HyperNetworks (Navon et al., ICLR 2021) with linear scalarisation: PHN and PHN-BN.

A hypernetwork maps a task preference ``r`` to the weights of one fixed multi-task network (the target
net: one shared backbone + N heads, the architecture of one anchor stream with every head). Its cost never
changes with ``r``; only its weights do.

* ``mode="full"`` (PHN): the hypernet outputs every parameter of the target net, chunk by chunk.
* ``mode="bn"`` (PHN-BN): backbone and heads are ordinary weights shared by all preferences; the hypernet
  outputs only the affine parameters (gamma, beta) of every BatchNorm layer.

The hypernet (:class:`ChunkedHypernet`)::

    p   = r @ E                                   E [N, embed_dim], learned
    z   = MLP(p)                                  depth hidden layers of width `hidden`, ReLU
    h_j = ReLU(W_c [z ; e_j] + b_c)               e_j [chunk_dim] a learned embedding of chunk j
    θ_j = W_o h_j + b_j                           W_o [chunk_size, hidden] shared by all chunks,
                                                  b_j [chunk_size] the output bias of chunk j

and the target's parameters are ``θ_0 ; θ_1 ; ...`` cut to length and reshaped. [choice] The chunk layer
``W_c`` is nonlinear: with a purely linear map of ``[z ; e_j]`` every chunk would receive the same
preference-dependent offset. [choice] Initialisation: ``b`` holds a default-initialised target net's
flattened parameters (for PHN-BN: its gamma = 1, beta = 0) and ``W_o`` PyTorch's default initialisation
times ``output_scale`` (0.01), so the predicted weights start at that default initialisation plus a
preference-dependent part of about 3e-4 per weight (on lenet; its weights are 0.02-0.2). On
multifashion after 1500 steps, 0.1 and 1 gave no larger trade-off between the tasks' losses, and 1 gave
higher losses. The per-chunk output biases are as many numbers as the target has parameters: like the
original PHN, whose per-tensor output layers carry a bias per target weight, the hypernet stores a
preference-independent part of every weight plus the shared map that modulates it.

The target net runs with :func:`torch.func.functional_call` on the predicted parameters. Its buffers
(BatchNorm running statistics) live in the target net, are updated in train mode during training (one set
shared by all preferences) and used in eval mode at evaluation. ``model_for(r)`` runs the hypernet once
and returns a plain :class:`dymu.DerivedModel` holding the predicted weights, so its FLOPs and outputs are
those of the target net alone.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call

from dymu.anchor import batchnorm_layers
from dymu.derived import DerivedModel
from dymu.loop import KeepBest, StepInfo, TrainLoop
from dymu.metrics import dirichlet_preferences
from dymu.preferences import normalize_preferences, sample_preferences
from dymu.tasks import Task
from dymu.training import adam
from hyper.embedding import mlp

from ..methods import StepBudget
from .base import Baseline
from .common import BackboneFactory, default_eval_every, shared_network, validation_losses, weighted_task_loss

__all__ = ["PHN", "ChunkedHypernet", "MODES"]

MODES = ("full", "bn")


class ChunkedHypernet(nn.Module):
    """A preference ``r [B, N]`` to a flat vector ``[B, n_outputs]``, produced in chunks (see the module docstring).

    Args:
        n_tasks: N.
        initial: ``[n_outputs]`` the vector the output starts near (the output biases).
        chunk_size: outputs per chunk; ``ceil(n_outputs / chunk_size)`` chunks (the last one's tail unused).
        embed_dim, hidden, depth: the preference embedding and MLP (as the controller's hypernets: 32, 100, 2).
        chunk_dim: size of the chunk embeddings.
        output_scale: the shared output weight starts at PyTorch's default initialisation times this.
    """

    def __init__(
        self,
        n_tasks: int,
        initial: Tensor,
        chunk_size: int = 10_000,
        *,
        embed_dim: int = 32,
        hidden: int = 100,
        depth: int = 2,
        chunk_dim: int = 32,
        output_scale: float = 0.01,
    ):
        super().__init__()
        initial = initial.detach().reshape(-1).float()
        if initial.numel() < 1:
            raise ValueError("the hypernet needs at least one output")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.n_tasks = int(n_tasks)
        self.n_outputs = initial.numel()
        self.chunk_size = min(int(chunk_size), self.n_outputs)
        self.n_chunks = math.ceil(self.n_outputs / self.chunk_size)
        self.embedding = nn.Linear(n_tasks, embed_dim, bias=False)
        self.body = mlp(embed_dim, hidden, depth)
        self.chunk_embeddings = nn.Parameter(torch.randn(self.n_chunks, chunk_dim) / chunk_dim**0.5)
        self.chunk_layer = nn.Linear(hidden + chunk_dim, hidden)
        self.output = nn.Linear(hidden, self.chunk_size, bias=False)
        padded = torch.zeros(self.n_chunks * self.chunk_size)
        padded[: self.n_outputs] = initial
        self.output_bias = nn.Parameter(padded.view(self.n_chunks, self.chunk_size))
        with torch.no_grad():
            self.output.weight.mul_(output_scale)

    def forward(self, r: Tensor) -> Tensor:
        """``r [B, N]`` -> ``[B, n_outputs]``."""
        z = self.body(self.embedding(r))  # [B, hidden]
        batch = z.shape[0]
        chunks = self.chunk_embeddings.unsqueeze(0).expand(batch, -1, -1)  # [B, C, chunk_dim]
        joined = torch.cat([z.unsqueeze(1).expand(-1, self.n_chunks, -1), chunks], dim=-1)
        h = torch.relu(self.chunk_layer(joined))  # [B, C, hidden]
        out = self.output(h) + self.output_bias  # [B, C, chunk_size]
        return out.reshape(batch, -1)[:, : self.n_outputs]


class PHN(Baseline):
    """Pareto HyperNetwork (``mode="full"``) or PHN-BN (``mode="bn"``), linear scalarisation.

    Args:
        backbone_factory: builds a fresh :class:`~dymu.backbones.BlockBackbone` (the target's backbone).
        tasks: the N tasks.
        steps: the step budget; training runs ``steps.total`` steps (as many as the controller's stages).
        mode: ``"full"`` or ``"bn"`` (see the module docstring).
        loss_scales: ``w_i`` ``[N]`` (default: ``1 / L_i`` of the initial model for the equal preference on
            validation batches); the protocol passes the controller's.
        seed: initialisation, and the training preferences (a numpy Generator seeded with it).
        lr, weight_decay: Adam with cosine decay to 0 (weight decay 1e-5, as every baseline). [choice] lr
            1e-3 for both modes. Navon et al. used 1e-4 for their hypernets; on multifashion (lenet, batch
            128, 1500 steps) 1e-4 left both task losses about 15% (PHN) and 35% (PHN-BN) higher at every
            preference than 1e-3 (validation loss 0.57-0.60 and 0.66-0.69 against 0.50).
        chunk_size: [choice] 10,000 outputs per chunk (lenet's target, 360k parameters: 36 chunks).
        embed_dim, hidden, depth, chunk_dim, output_scale: the hypernet (:class:`ChunkedHypernet`).
        dirichlet_alpha: every training batch draws ``r ~ Dirichlet(alpha)``; [choice] 1.0, uniform on the
            simplex: the controller's training default and the evaluation preferences' distribution.
        eval_every: validate every this many steps (default: about ten times per run) and at the end.
        val_batches: validation batches per validation (default 8: cheap; the same batches each time).
        n_val_preferences: model selection keeps the state with the lowest mean scalarised validation loss
            ``sum_i r_i w_i L_i`` over this many fixed preferences: the equal one and Dirichlet(1) draws
            seeded by ``seed``.
        scale_batches: as for :class:`~benchmarks.baselines.base.Baseline`.
        name: the result key (default ``"phn"``, or ``"phn_bn"`` for ``mode="bn"``).

    ``model_for(r)`` accepts any preference (``c`` and ``budget`` are ignored: the cost is fixed).
    """

    def __init__(
        self,
        backbone_factory: BackboneFactory,
        tasks: Sequence[Task],
        steps: StepBudget,
        mode: str = "full",
        loss_scales: Sequence[float] | Tensor | None = None,
        seed: int = 0,
        *,
        lr: float = 1e-3,
        weight_decay: float = 1e-5,
        chunk_size: int = 10_000,
        embed_dim: int = 32,
        hidden: int = 100,
        depth: int = 2,
        chunk_dim: int = 32,
        output_scale: float = 0.01,
        dirichlet_alpha: float = 1.0,
        eval_every: int | None = None,
        val_batches: int = 8,
        n_val_preferences: int = 5,
        scale_batches: int = 10,
        name: str | None = None,
    ):
        # the arguments only PHN has are checked first, before the shared ones
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if dirichlet_alpha <= 0:
            raise ValueError(f"dirichlet_alpha must be > 0, got {dirichlet_alpha}")
        if n_val_preferences < 1:
            raise ValueError(f"n_val_preferences must be >= 1, got {n_val_preferences}")
        super().__init__(backbone_factory, tasks, steps, loss_scales, seed, lr=lr, weight_decay=weight_decay,
                         eval_every=eval_every, val_batches=val_batches, scale_batches=scale_batches,
                         name=name or ("phn" if mode == "full" else "phn_bn"))
        self.mode = mode
        self.hyper_options = {
            "chunk_size": chunk_size, "embed_dim": embed_dim, "hidden": hidden, "depth": depth,
            "chunk_dim": chunk_dim, "output_scale": output_scale,
        }
        self.dirichlet_alpha = float(dirichlet_alpha)
        n = len(self.tasks)
        equal = np.full((1, n), 1.0 / n)
        drawn = dirichlet_preferences(n_val_preferences - 1, n, 1.0, seed=self.seed) if n_val_preferences > 1 else np.zeros((0, n))
        self.val_preferences = np.concatenate([equal, drawn])
        self.history: dict[str, Any] = {}
        self._build()

    # --------------------------------------------------------------------------- structure
    def _build(self) -> None:
        """A fresh target net and hypernet (deterministic in ``seed``)."""
        self.target = shared_network(self.backbone_factory, self.tasks, self.seed)
        if self.mode == "full":
            names = [name for name, _ in self.target.named_parameters()]
        else:
            names = [f"{bn}.{what}" for bn, _ in batchnorm_layers(self.target) for what in ("weight", "bias")]
            if not names:
                raise ValueError("PHN-BN needs a target net with affine BatchNorm layers; this backbone has none")
        self.generated: list[tuple[str, torch.Size]] = [(n, self.target.get_parameter(n).shape) for n in names]
        initial = torch.cat([self.target.get_parameter(n).detach().reshape(-1) for n in names])
        for n in names:
            # the hypernet's outputs replace these; the target's own values are never used
            self.target.get_parameter(n).requires_grad_(False)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed + 1)
            self.hypernet = ChunkedHypernet(len(self.tasks), initial, **self.hyper_options)
        self.history = {}

    @property
    def n_generated(self) -> int:
        """How many target parameters the hypernet outputs."""
        return self.hypernet.n_outputs

    def shared_parameters(self) -> list[nn.Parameter]:
        """The target's own trained parameters (PHN-BN's backbone and heads; none for PHN)."""
        return [p for p in self.target.parameters() if p.requires_grad]

    def _device(self) -> torch.device:
        return self.hypernet.output_bias.device

    def predicted_parameters(self, r: Tensor) -> dict[str, Tensor]:
        """The hypernet's output for one preference ``r [N]`` as ``{target parameter name: tensor}``."""
        flat = self.hypernet(r.reshape(1, -1).to(self._device(), torch.float32))[0]
        # one split, not a slice per tensor: its backward is one concatenation, where every slice's
        # backward would write a zero tensor the size of the whole output
        pieces = torch.split(flat, [math.prod(shape) for _, shape in self.generated])
        return {name: piece.view(shape) for (name, shape), piece in zip(self.generated, pieces)}

    def forward_with(self, r: Tensor, x: Tensor) -> dict[str, Tensor]:
        """The target net on ``x [B, C, H, W]`` with the weights predicted for ``r [N]`` (differentiable)."""
        return functional_call(self.target, self.predicted_parameters(r), (x,), strict=False)

    @torch.no_grad()
    def _materialise(self, r: np.ndarray) -> DerivedModel:
        params = self.predicted_parameters(torch.tensor(r, dtype=torch.float32))
        model = copy.deepcopy(self.target)
        for name, value in params.items():
            model.get_parameter(name).copy_(value)
        model.requires_grad_(True)
        model.info = {"method": self.name, "preference": [float(v) for v in r]}
        return model.eval()

    # ----------------------------------------------------------------------------- method
    def _fit(self, train: Iterable, val: Iterable, device: torch.device, verbose: bool) -> None:
        self._build()
        self.target.to(device)
        self.hypernet.to(device)
        n = len(self.tasks)
        # the default scales come from the untrained target at the equal preference
        val_batches = self._validation_batches(val, device, lambda: self._materialise(np.full(n, 1.0 / n)))
        scales = self.loss_scales.to(device)
        steps = self.steps.total
        if steps < 1:
            raise ValueError(f"{self.name}: the step budget's total must be >= 1, got {steps}")
        every = default_eval_every(steps, self.eval_every)
        parameters = [*self.hypernet.parameters(), *self.shared_parameters()]
        optimizer = adam(parameters, self.lr, self.weight_decay)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
        rng = np.random.default_rng(self.seed)
        self.target.train()

        def step(info: StepInfo, x: Tensor, targets: dict[str, Tensor]) -> dict[str, float]:
            r_np, _ = sample_preferences(n, self.dirichlet_alpha, rng)
            r = torch.tensor(r_np, dtype=torch.float32, device=device)
            loss = weighted_task_loss(self.forward_with(r, x), targets, self.tasks, r * scales, info)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            return {"loss": float(loss.detach())}

        def validate(step: int) -> dict[str, Any]:
            losses, score = self._validate(val_batches, device)
            return {"val_losses": losses.tolist(), "val_score": score}

        keep = KeepBest.lowest(self.hypernet, self.target, key="val_score", label="mean scalarised loss")
        state = {"hypernet": self.hypernet, "target": self.target, "optimizer": optimizer, "scheduler": scheduler}
        loop = TrainLoop(self.name, steps, device, self.tasks, state=state, generators={"preferences": rng},
                         validate=validate, keep=keep, eval_every=every, log_every=1, verbose=verbose)
        result = loop.run(train, step)
        self.hypernet.eval()
        self.target.eval()
        self.history = {"train_loss": [entry["loss"] for entry in result.log], "history": result.history,
                        "best_step": keep.steps["val_score"], "best_score": keep.scores["val_score"]}

    def _validate(self, val_batches: Sequence, device: torch.device) -> tuple[np.ndarray, float]:
        """Per-preference task losses ``[P, N]`` over the fixed validation preferences, and the mean
        scalarised loss ``mean_r sum_i r_i w_i L_i`` over them."""
        scales = self.loss_scales.double().numpy()
        losses = np.stack([
            validation_losses(self._materialise(r), self.tasks, val_batches, device) for r in self.val_preferences
        ])
        score = float((self.val_preferences * scales * losses).sum(axis=1).mean())
        return losses, score

    def model_for(self, preference, *, c=None, budget=None) -> nn.Module:
        if not self.history:
            raise ValueError(f"{self.name}: call fit() first")
        return self._materialise(normalize_preferences(preference, self.task_names))

    def stored_modules(self) -> Sequence[nn.Module]:
        modules: list[nn.Module] = [self.hypernet]
        shared = self.shared_parameters()
        if shared:
            modules.append(nn.ParameterList(shared))
        return modules
