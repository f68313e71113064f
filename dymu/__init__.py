"""dymu: controllable dynamic multi-task networks.

Train one controller once; then, for any task preference and compute budget given at inference,
``build_model(preferences, budget)`` returns a tree-structured multi-task network that favours the
preferred tasks and stays within the budget.
"""

from affinity.tree import Tree

from . import backbones, metrics
from .tasks import Task

__version__ = "0.1.0"

__all__ = ["Task", "Tree", "backbones", "metrics", "__version__"]
