"""dymu: controllable dynamic multi-task networks.

Train one controller once; then, for any task preference and compute budget given at inference,
``build_model(preferences, budget)`` returns a tree-structured multi-task network that favours the
preferred tasks and stays within the budget.
"""

from affinity.tree import Tree

from . import backbones, data, metrics
from .controller import BuildPlan, Controller
from .derived import DerivedModel
from .evaluation import EvaluationTable
from .registry import register_backbone, register_task_set
from .tasks import Task
from .training import AnchorConfig, EdgeConfig, WeightConfig
from .stage_configs import SupernetConfig
from hyper import RegulariserConfig

__version__ = "0.1.0"


def load(path, *, tasks=None, backbone=None, map_location="cpu") -> Controller:
    """Load a controller saved with :meth:`Controller.save` (see :meth:`Controller.load`)."""
    return Controller.load(path, tasks=tasks, backbone=backbone, map_location=map_location)


__all__ = [
    "AnchorConfig",
    "SupernetConfig",
    "BuildPlan",
    "Controller",
    "DerivedModel",
    "EdgeConfig",
    "EvaluationTable",
    "RegulariserConfig",
    "Task",
    "Tree",
    "WeightConfig",
    "__version__",
    "backbones",
    "data",
    "load",
    "metrics",
    "register_backbone",
    "register_task_set",
]
