"""Metrics: per-task metrics (accuracy, mIoU, depth and normal errors, saliency maxF) and, for a set of
models built for many preferences, the multi-objective ones (hypervolume, uniformity, controllability,
Delta_MTL) and cost counts (FLOPs, parameters)."""

from .task_metrics import (
    DepthErrors,
    MeanIoU,
    NormalAngleError,
    PixelAccuracy,
    SaliencyMaxF,
    accuracy,
    mean_absolute_error,
)

__all__ = [
    "DepthErrors",
    "MeanIoU",
    "NormalAngleError",
    "PixelAccuracy",
    "SaliencyMaxF",
    "accuracy",
    "mean_absolute_error",
]
