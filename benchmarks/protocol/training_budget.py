"""The training budget every compared method gets (:data:`TRAINING_BUDGET_RULE`), and what each one's training amounted to.

[choice] **Equal training images.** Every method's training, counting everything it depends on (the
controller's stage-0 streams that its variants start from, the streams the single-task baseline continues),
sees ``StepBudget.total x batch_size`` training images: as many as the controller's stages together. A
method that trains one model per request kind (hard sharing: one per preference; the static trees at equal
cost: one per budget) gives each of those models that budget, since each model alone answers its requests.
Steps of equal batch size are the unit, not wall time or FLOPs: a step of a static tree runs fewer blocks
than a step of the anchor's streams, and a step of the supernet stage runs several trees, so the image-block
passes (every block an image runs forward, with or without gradient) are recorded beside the images as a
compute indicator.

:func:`allocation` says what a method is allowed, :func:`training_totals` what it used.

>>> from benchmarks.methods import StepBudget
>>> steps = StepBudget(anchor=600, edge=400, weights=250, batch_size=128)
>>> allocation("hard_sharing", steps).steps, allocation("single_task", steps).parts
(1250, (Part(name='anchor', steps=600, blocks='streams', shared=True), Part(name='continuation', steps=650, blocks='streams', shared=False)))
>>> totals = training_totals(allocation("static_tree", steps), n_tasks=2, n_layers=4, tree_nodes=[6])
>>> totals["steps"], totals["images"], totals["block_passes"], totals["equal_budget"]
(1250, 160000, 960000, True)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

__all__ = ["TRAINING_BUDGET_RULE", "BLOCK_PASSES_RULE", "Part", "Allocation", "allocation", "training_totals"]

TRAINING_BUDGET_RULE = (
    "equal training images: every method's training, counting everything it depends on (the controller's "
    "stage-0 streams its variants start from, the streams single_task continues), sees StepBudget.total x "
    "batch_size training images; a method with one model per preference or budget gives each model that budget"
)
#: how ``block_passes`` counts; totals counted so carry ``"block_passes_counted": "forward"`` (earlier ones counted the
#: supernet stage as ``N x L`` blocks per image and the distilled trunk's teachers not at all)
BLOCK_PASSES_RULE = (
    "training images x backbone blocks run forward per image, over all its models (computed from what each part "
    "runs: the supernet stage's sandwich of trees, its teacher and solo streams replayed from its seed, the "
    "distilled trunk's teachers; the controller's weight stage counted at every stream, an upper bound)"
)
#: what one training step runs per image: every stream of the anchor (``N x L`` blocks), one backbone
#: (``L``: hard sharing, PHN's target net), the nodes of a static tree, one backbone and its frozen teachers
#: (``L + N x L``: the distilled trunk), or the supernet stage's sandwich of trees (measured per run: its trees
#: vary by step, see :func:`dymu.supernet.sandwich_blocks_per_image`)
BlockKind = Literal["streams", "backbone", "tree", "trunk_and_teachers", "sandwich"]


class _Budget(Protocol):
    """The fields of :class:`benchmarks.methods.StepBudget` this module reads (no import: methods imports us)."""

    anchor: int
    supernet: int
    edge: int
    weights: int
    batch_size: int

    @property
    def total(self) -> int: ...


@dataclass(frozen=True)
class Part:
    """One part of a method's training.

    Attributes:
        name: ``anchor``, ``supernet``, ``edge``, ``weights`` (the controller's stages), ``continuation``
            (single_task's extra stream steps) or ``training`` (a baseline's one loop).
        steps: its optimisation steps (per model, for methods with several models).
        blocks: what a step runs per image (see :data:`BlockKind`).
        shared: trained once by the controller and reused (counted here because the method depends on it).
    """

    name: str
    steps: int
    blocks: BlockKind
    shared: bool = False


@dataclass(frozen=True)
class Allocation:
    """What one method may train under :data:`TRAINING_BUDGET_RULE`: its parts, per model."""

    method: str
    parts: tuple[Part, ...]
    batch_size: int
    budget_steps: int  # StepBudget.total: the rule's steps

    @property
    def steps(self) -> int:
        """Steps one of its models' training sees, shared parts included."""
        return sum(p.steps for p in self.parts)

    def part(self, name: str) -> int:
        """Steps of the part ``name`` (0 when it has none)."""
        return sum(p.steps for p in self.parts if p.name == name)


#: the controller's variants that reuse its trained stages; with stage 2 (weights) or without
_CONTROLLER_STAGES = ("anchor", "supernet", "edge", "weights")
_ABLATIONS = ("dymu_no_inactive", "dymu_no_affinity_depth", "dymu_all_active")


def allocation(method: str, steps: _Budget, *, ablation_weight_hypernet: bool = False) -> Allocation:
    """The training ``method`` (a result key of :mod:`benchmarks.config`, or a static tree named
    ``static_tree@<budget>``) is allowed under :data:`TRAINING_BUDGET_RULE` for the run's ``steps``.

    The controller and its paper mode train every stage (``total``); single_task continues the stage-0
    streams for ``total - anchor`` more steps; PHN, PHN-BN, hard sharing and the static trees train for
    ``total``. Two variants stay below the budget by construction, as the results say: the controller
    without its weight hypernet (stages 0 and 1 of the same controller) and the ablations without stage 2
    (``ablation_weight_hypernet`` False), which compare with it.

    Raises:
        ValueError: an unknown method name.
    """
    total = steps.total
    stage = {"anchor": steps.anchor, "supernet": steps.supernet, "edge": steps.edge, "weights": steps.weights}

    def controller(*names: str, shared: Sequence[str] = ()) -> tuple[Part, ...]:
        # parts of zero steps (no supernet stage) are left out: they ran nothing
        return tuple(Part(n, stage[n], "sandwich" if n == "supernet" else "streams", n in shared)
                     for n in names if stage[n] > 0)

    if method == "dymu":
        parts = controller(*_CONTROLLER_STAGES)
    elif method == "dymu_paper":
        # its own edge and weight stages on the controller's anchor (and supernet stage, when there is one)
        parts = controller(*_CONTROLLER_STAGES, shared=("anchor", "supernet"))
    elif method == "dymu_no_weight_hypernet":
        parts = controller("anchor", "supernet", "edge", shared=("anchor", "supernet", "edge"))
    elif method in _ABLATIONS:
        names = _CONTROLLER_STAGES if ablation_weight_hypernet else _CONTROLLER_STAGES[:3]
        parts = controller(*names, shared=("anchor", "supernet"))
    elif method == "single_task":
        parts = (Part("anchor", steps.anchor, "streams", True),) + (
            (Part("continuation", total - steps.anchor, "streams"),) if total > steps.anchor else ()
        )
    elif method == "distilled_trunk":
        # its teachers are the controller's stage-0 streams; the trunk trains for the rest
        parts = (Part("anchor", steps.anchor, "streams", True),
                 Part("training", total - steps.anchor, "trunk_and_teachers"))
    elif method == "cross_stitch":
        parts = (Part("training", total, "streams"),)
    elif method in ("phn", "phn_bn", "hard_sharing"):
        parts = (Part("training", total, "backbone"),)
    elif method in ("static_tree", "static_equal_cost") or method.startswith("static_tree@"):
        parts = (Part("training", total, "tree"),)
    else:
        raise ValueError(f"no training budget is defined for method {method!r}")
    return Allocation(method, parts, int(steps.batch_size), int(total))


def training_totals(
    alloc: Allocation, *, n_tasks: int, n_layers: int, models: int = 1, tree_nodes: Sequence[int] | None = None,
    sandwich_blocks: float | None = None,
) -> dict[str, Any]:
    """What a method's training amounted to (the per-seed ``training_totals`` entry of a results file).

    Args:
        alloc: its :func:`allocation`.
        n_tasks, n_layers: N and the backbone's blocks L.
        models: how many models it trained with these steps (hard sharing: one per trained preference).
        tree_nodes: for static trees, each model's node count (blocks per image); its length sets ``models``.
        sandwich_blocks: for a controller with a supernet stage, the mean blocks one image ran forward per
            step of that stage (:meth:`dymu.Controller.supernet_blocks_per_image`).

    Returns:
        ``steps`` and ``images`` one model's training sees (shared parts included), ``models``, ``steps_all``
        and ``images_all`` over its models, ``block_passes`` (images x backbone blocks a step runs forward,
        summed over parts and models: computed from what each part runs, not timed; the controller's weight
        stage runs only each step's tree, counted as all ``N x L`` blocks, an upper bound), ``budget_steps`` /
        ``budget_images`` (the rule's), ``equal_budget`` (its steps are the rule's), and per part its steps and
        blocks per image.

    Raises:
        ValueError: a tree method without ``tree_nodes``; a supernet part without ``sandwich_blocks``.

    >>> from benchmarks.methods import StepBudget
    >>> steps = StepBudget(anchor=600, supernet=300, edge=100, weights=50, batch_size=10)
    >>> totals = training_totals(allocation("dymu", steps), n_tasks=2, n_layers=4, sandwich_blocks=13.5)
    >>> totals["parts"]["supernet"]["blocks_per_image"], totals["block_passes"] == 10 * (750 * 8 + 300 * 13.5)
    (13.5, True)
    """
    if any(p.blocks == "tree" for p in alloc.parts):
        if not tree_nodes:
            raise ValueError(f"{alloc.method}: the block passes of a tree need its node counts")
        per_model_blocks = [int(n) for n in tree_nodes]
    else:
        per_model_blocks = [0] * models  # unused: the blocks of a stream or backbone do not vary by model
    if any(p.blocks == "sandwich" for p in alloc.parts) and sandwich_blocks is None:
        raise ValueError(f"{alloc.method}: the block passes of a supernet stage need its blocks per image "
                         "(Controller.supernet_blocks_per_image)")
    n_models = len(per_model_blocks)
    blocks_of: dict[str, float] = {"streams": n_tasks * n_layers, "backbone": n_layers,
                                   "trunk_and_teachers": n_layers + n_tasks * n_layers}
    if sandwich_blocks is not None:
        blocks_of["sandwich"] = float(sandwich_blocks)
    passes = 0.0
    for nodes in per_model_blocks:
        for p in alloc.parts:
            passes += p.steps * alloc.batch_size * (nodes if p.blocks == "tree" else blocks_of[p.blocks])
    return {
        "steps": alloc.steps,
        "images": alloc.steps * alloc.batch_size,
        "models": n_models,
        "steps_all": alloc.steps * n_models,
        "images_all": alloc.steps * alloc.batch_size * n_models,
        "block_passes": int(round(passes)),
        "block_passes_counted": "forward",  # BLOCK_PASSES_RULE; a resumed run keeps older entries' counts as they were
        "budget_steps": alloc.budget_steps,
        "budget_images": alloc.budget_steps * alloc.batch_size,
        "equal_budget": alloc.steps == alloc.budget_steps,
        "parts": {p.name: {"steps": p.steps, "shared": p.shared,
                           "blocks_per_image": per_model_blocks if p.blocks == "tree" else blocks_of[p.blocks]}
                  for p in alloc.parts},
    }
