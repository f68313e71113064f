"""Metrics: per-task metrics (accuracy, mIoU, depth and normal errors, saliency maxF) and, for a set of
models built for many preferences, the multi-objective ones (hypervolume, uniformity, controllability,
Delta_MTL) and cost counts (FLOPs, parameters)."""

from .cost import BlockCost, block_cost_table, count_flops, count_params
from .pareto import (
    controllability,
    controllability_per_task,
    delta_mtl,
    dirichlet_preferences,
    hypervolume,
    pareto_front,
    pareto_rays,
    relative_changes,
    simplex_grid,
    uniformity,
    uniformity_per_preference,
)
from .task_metrics import (
    Accuracy,
    DepthErrors,
    MeanIoU,
    NormalAngleError,
    PixelAccuracy,
    SaliencyMaxF,
    accuracy,
    mean_absolute_error,
)

__all__ = [
    "Accuracy",
    "BlockCost",
    "block_cost_table",
    "controllability",
    "controllability_per_task",
    "count_flops",
    "count_params",
    "delta_mtl",
    "dirichlet_preferences",
    "hypervolume",
    "pareto_front",
    "pareto_rays",
    "relative_changes",
    "simplex_grid",
    "uniformity",
    "uniformity_per_preference",
    "DepthErrors",
    "MeanIoU",
    "NormalAngleError",
    "PixelAccuracy",
    "SaliencyMaxF",
    "accuracy",
    "mean_absolute_error",
]
