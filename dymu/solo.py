"""Solo streams: a task alone on its own stream runs a single-task stream, not the supernet's.

[choice] beyond the paper. The supernet stage (:mod:`dymu.supernet`) asks every stream to serve every
task that a tree may put on it, so the anchor tree, every task on its own stream, is no longer what a
single-task network would be: on fashion_digits the full-budget model lost 9 % ΔMTL to the single-task
streams of the same run. With ``SupernetConfig(solo=True)`` the stage also continues a copy of the
stage-0 streams on their own tasks, on the very batches the supernet trains on (no extra training
image), each stream keeping its best validation state, and each task keeps its solo stream only where it
scores a lower validation loss than the supernet's own stream (:meth:`dymu.Controller.fit_supernet`; the
supernet's joint training can win, as on multifashion). A derived tree then takes, for every task whose
whole path is its own stream and that no other task shares, that task's solo stream and head; every
other node comes from the supernet. The anchor tree is then the single-task streams, and in a tree
under a binding budget the tasks kept alone run single-task features.

What it costs: the solo streams are stored beside the supernet (a second copy of the streams and
heads), and each supernet step runs the streams once more. A derived model's FLOPs and parameters do
not change: a solo node replaces the supernet's node of the same block.

>>> solo_tasks([[0, 1, 2], [0, 1, 2]])      # the anchor tree: every task alone on its own stream
(0, 1, 2)
>>> solo_tasks([[0, 0, 2], [0, 1, 2]])      # task 1 reads stream 0's first block: tasks 0 and 1 share it
(2,)
>>> solo_tasks([[1, 1, 2], [1, 1, 2]])      # task 0 runs stream 1: not its own
(2,)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import Tensor, nn

from .anchor import AnchorNet

__all__ = ["solo_tasks", "with_solo", "solo_adaptation"]

NodeDeltas = Callable[[int, int], Sequence[tuple[Tensor, Tensor]] | None]
HeadAdaptation = Callable[[int], Tensor | None]


def solo_tasks(assignment: Sequence[Sequence[int]]) -> tuple[int, ...]:
    """The tasks ``k`` whose node is stream ``k`` at every layer and that no other task's path touches.

    ``assignment[l][k]``: task ``k``'s stream at layer ``l``. Paths of a tree only merge toward the
    input, so a task that shares any node shares its first one; every layer is checked all the same.
    """
    n_tasks = len(assignment[0])
    return tuple(
        k for k in range(n_tasks)
        if all(row[k] == k and sum(node == k for node in row) == 1 for row in assignment)
    )


def with_solo(anchor: AnchorNet, solo: AnchorNet | None, assignment: Sequence[Sequence[int]]) -> AnchorNet:
    """``anchor`` as one tree sees it: the streams and heads of :func:`solo_tasks` taken from ``solo``.

    A view, not a copy: the modules are the anchor's and the solo net's own (nothing is copied, the anchor
    is not modified). ``solo=None`` or a tree without a solo task returns ``anchor`` itself.
    """
    chosen = solo_tasks(assignment) if solo is not None else ()
    if not chosen:
        return anchor
    view = AnchorNet.__new__(AnchorNet)
    view.__dict__ = dict(anchor.__dict__)
    view._modules = dict(anchor._modules)
    view._modules["streams"] = nn.ModuleList(
        solo.streams[i] if i in chosen else stream for i, stream in enumerate(anchor.streams))
    view._modules["heads"] = nn.ModuleDict({
        name: solo.heads[name] if k in chosen else anchor.heads[name] for k, name in enumerate(anchor.task_names)})
    return view


def solo_adaptation(
    assignment: Sequence[Sequence[int]],
    has_solo: bool,
    node_deltas: NodeDeltas | None,
    head_adaptation: HeadAdaptation | None,
) -> tuple[NodeDeltas | None, HeadAdaptation | None]:
    """The weight hypernet's lookups with the solo tasks' nodes and heads left at their own weights
    (the hypernet was trained on the supernet's nodes, not on the solo streams)."""
    chosen = set(solo_tasks(assignment)) if has_solo else set()
    if not chosen:
        return node_deltas, head_adaptation
    nodes = node_deltas and (lambda layer, node: None if node in chosen else node_deltas(layer, node))
    heads = head_adaptation and (lambda k: None if k in chosen else head_adaptation(k))
    return nodes, heads
