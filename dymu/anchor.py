"""The anchor net: N single-task streams of one backbone, one head each, and routing between streams.

Node ``(l, i)`` is block ``l`` of stream ``i``. During stage 1 the routed forward lets every child node
read a mixture (or a hard choice) of the previous layer's nodes; stage 2 and derived trees run only
the nodes of one tree, optionally with BatchNorm deltas.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call

from .adaptation import BatchNorm, BatchNormLayout, adapt_head_input, adapted_parameters, batchnorm_layers
from .backbones.base import BlockBackbone
from .tasks import Task

__all__ = ["AnchorNet", "batchnorm_layers", "frozen_batchnorm_statistics", "scoring_mode", "run_tree", "tree_forward",
           "tree_losses"]


@contextlib.contextmanager
def frozen_batchnorm_statistics(module: nn.Module) -> Iterator[None]:
    """Run ``module`` in train mode (batch statistics) without moving its running statistics.

    Sets every BatchNorm's momentum to 0 (running = 1 * running + 0 * batch) and restores it after, with
    the batch counters (which a layer with ``momentum=None`` would average by).
    """
    saved = [(m, m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone())
             for m in module.modules() if isinstance(m, BatchNorm)]
    try:
        for m, _, _ in saved:
            m.momentum = 0.0
        yield
    finally:
        with torch.no_grad():
            for m, momentum, tracked in saved:
                m.momentum = momentum
                if tracked is not None:
                    m.num_batches_tracked.copy_(tracked)


@contextlib.contextmanager
def scoring_mode(anchor: nn.Module, batch_statistics: bool) -> Iterator[None]:
    """Run ``anchor`` as the hypernet stages run its trees: BatchNorm on batch statistics without moving the
    running ones when ``batch_statistics`` (``bn_stats="batch"``), else eval mode; eval mode after."""
    anchor.train(batch_statistics)
    try:
        with frozen_batchnorm_statistics(anchor):
            yield
    finally:
        anchor.eval()


class AnchorNet(nn.Module):
    """N streams of the same backbone, stream ``i`` with task ``i``'s head.

    Args:
        backbone: the template; each stream is an independent deep copy of it.
        tasks: the N tasks; heads are built from the backbone's output shape.
        seed: initialisation seed of the heads.

    [choice] All streams start from the template's weights. Streams trained from a common
    initialisation keep more compatible features, which makes cross-task edges (a child of stream j
    reading stream i) less harmful before the weight hypernet repairs them.
    """

    def __init__(self, backbone: BlockBackbone, tasks: Sequence[Task], seed: int = 0):
        super().__init__()
        if not isinstance(backbone, BlockBackbone):
            raise ValueError(
                f"the backbone must be a dymu.backbones.BlockBackbone (an ordered list of blocks), got {type(backbone).__name__}"
            )
        self.task_names = [t.name for t in tasks]
        self.skip_layers = backbone.skip_layers
        self.streams = nn.ModuleList()
        self.heads = nn.ModuleDict()
        out_shape, skip_shapes = backbone.out_shape, backbone.skip_shapes
        for i, task in enumerate(tasks):
            self.streams.append(copy.deepcopy(backbone))
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed + i)
                self.heads[task.name] = task.build_head(out_shape, skip_shapes)
        # Lazy layers in heads need one forward to get their shapes.
        with torch.no_grad():
            was = self.training
            self.eval()
            self.forward_single(torch.zeros(2, backbone.in_channels, *backbone.input_size))
            self.train(was)
        self.layout = BatchNormLayout.of(self.streams[0].blocks)
        self.head_channels = int(out_shape[0])

    @property
    def n_tasks(self) -> int:
        return len(self.streams)

    @property
    def n_layers(self) -> int:
        return self.streams[0].n_blocks

    @property
    def backbone(self) -> BlockBackbone:
        return self.streams[0]

    def block(self, layer: int, stream: int) -> nn.Module:
        return self.streams[stream].blocks[layer]

    def forward_single(self, x: Tensor) -> dict[str, Tensor]:
        """Every stream on its own task: ``x [B, C, H, W]`` -> ``{task: prediction}``."""
        out = {}
        for i, name in enumerate(self.task_names):
            h, skips = x, []
            for layer, block in enumerate(self.streams[i].blocks):
                h = block(h)
                if layer in self.skip_layers:
                    skips.append(h)
            out[name] = self.heads[name](h, *skips)
        return out

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return self.forward_single(x)

    def routed_forward(self, x: Tensor, nu: Tensor) -> dict[str, Tensor]:
        """All nodes, each child reading ``sum_i nu[l, j, i] * y_i`` of the layer below.

        ``nu [L, N, N]`` are parent choices (soft, or straight-through one-hot). Skip features reach
        head ``k`` along its soft path: ``q_k(l) = q_k(l + 1) @ nu[l]``.
        """
        n_layers = self.n_layers
        outputs: list[Tensor] = []
        for layer in range(n_layers):
            if layer == 0:
                ys = [self.streams[i].blocks[0](x) for i in range(self.n_tasks)]
            else:
                stacked = outputs[-1]  # [N, B, ...]
                mixed = torch.einsum("ji,i...->j...", nu[layer - 1], stacked)
                ys = [self.streams[j].blocks[layer](mixed[j]) for j in range(self.n_tasks)]
            outputs.append(torch.stack(ys))
        head_in = torch.einsum("ki,i...->k...", nu[n_layers - 1], outputs[-1])
        skip_in: dict[int, Tensor] = {}
        if self.skip_layers:
            path = nu[n_layers - 1]  # [heads, nodes of layer L-1]
            for layer in range(n_layers - 2, -1, -1):
                path = path @ nu[layer]  # [heads, nodes of layer `layer`]
                if layer in self.skip_layers:
                    skip_in[layer] = torch.einsum("ki,i...->k...", path, outputs[layer])
        out = {}
        for k, name in enumerate(self.task_names):
            skips = [skip_in[s][k] for s in self.skip_layers]
            out[name] = self.heads[name](head_in[k], *skips)
        return out


def run_tree(
    assignment: Sequence[Sequence[int]],
    x: Tensor,
    run_node: Callable[[int, int, Tensor], Tensor],
    run_head: Callable[[int, Tensor, Sequence[Tensor]], Tensor],
    skip_layers: Sequence[int] = (),
) -> list[Tensor]:
    """Evaluate a tree, each distinct node exactly once, shared prefixes computed once.

    ``assignment[l][k]``: task ``k``'s node at layer ``l``. ``run_node(l, node, input)`` computes one
    node; ``run_head(k, last, skips)`` task ``k``'s head on the last node of its path (and the outputs of
    its path at ``skip_layers``). Returns the N head outputs in task order.
    """
    current: dict[int, Tensor] = {}
    kept: dict[int, dict[int, Tensor]] = {}
    for layer, row in enumerate(assignment):
        computed: dict[int, Tensor] = {}
        for k, node in enumerate(row):
            if node not in computed:
                computed[node] = run_node(layer, node, x if layer == 0 else current[assignment[layer - 1][k]])
        if layer in skip_layers:
            kept[layer] = computed
        current = computed
    last = assignment[-1]
    return [run_head(k, current[last[k]], [kept[s][assignment[s][k]] for s in skip_layers]) for k in range(len(last))]


def tree_forward(
    anchor: AnchorNet,
    assignment: Sequence[Sequence[int]],
    x: Tensor,
    node_deltas: Callable[[int, int], Sequence[tuple[Tensor, Tensor]] | None] | None = None,
    head_adaptation: Callable[[int], Tensor | None] | None = None,
) -> dict[str, Tensor]:
    """Run only the nodes of one tree of the anchor: ``x [B, C, H, W]`` -> ``{task: prediction}``.

    ``node_deltas(l, i)`` returns the ``(dgamma, dbeta)`` pairs of node ``(l, i)``'s BatchNorm layers (or
    None for the anchor's own) and ``head_adaptation(k)`` task ``k``'s head input adaptation
    ``[2 * C]`` (or None); both are applied functionally (:mod:`dymu.adaptation`), so the anchor is
    never modified and gradients reach them.
    """

    def run_node(layer: int, node: int, inp: Tensor) -> Tensor:
        block = anchor.block(layer, node)
        deltas = node_deltas(layer, node) if node_deltas is not None else None
        if deltas is None:
            return block(inp)
        return functional_call(block, adapted_parameters(block, anchor.layout, layer, deltas), (inp,), strict=False)

    def run_head(k: int, last: Tensor, skips: Sequence[Tensor]) -> Tensor:
        packed = head_adaptation(k) if head_adaptation is not None else None
        if packed is not None:
            last = adapt_head_input(last, packed)
        return anchor.heads[anchor.task_names[k]](last, *skips)

    outputs = run_tree(assignment, x, run_node, run_head, anchor.skip_layers)
    return dict(zip(anchor.task_names, outputs))


@torch.no_grad()
def tree_losses(
    anchor: AnchorNet,
    tasks: Sequence[Task],
    assignment: Sequence[Sequence[int]],
    batches: Sequence[tuple[Tensor, dict[str, Tensor]]],
    device: torch.device,
    node_deltas: Callable[[int, int], Sequence[tuple[Tensor, Tensor]] | None] | None = None,
    head_adaptation: Callable[[int], Tensor | None] | None = None,
) -> Tensor:
    """Each task's mean loss ``[N]`` over ``batches`` for one tree of ``anchor`` (as it is: the caller sets
    train or eval mode), adaptations as in :func:`tree_forward`."""
    totals, count = torch.zeros(len(tasks), device=device), 0
    for x, targets in batches:
        x = x.to(device)
        outputs = tree_forward(anchor, assignment, x, node_deltas, head_adaptation)
        n = x.shape[0]
        totals += torch.stack([t.loss(outputs[t.name], targets[t.name].to(device)).float() for t in tasks]) * n
        count += n
    return totals / max(count, 1)
