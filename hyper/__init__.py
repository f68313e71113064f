"""The hypernetworks of the controller: preferences and budget to branching (edge) and to BatchNorm
deltas (weight), Gumbel-softmax sampling and the branching regulariser. Independent of ``dymu``."""

from .cost import budget_pressure, expected_cost_fraction
from .edge import EdgeHypernet, most_likely_parents
from .embedding import PreferenceEmbedding
from .gumbel import TemperatureSchedule, gumbel_softmax
from .regulariser import RegulariserConfig, active_tasks, branching_regulariser, usage_probability
from .weight import WeightHypernet, tree_code

__all__ = [
    "EdgeHypernet",
    "PreferenceEmbedding",
    "RegulariserConfig",
    "TemperatureSchedule",
    "WeightHypernet",
    "active_tasks",
    "budget_pressure",
    "expected_cost_fraction",
    "branching_regulariser",
    "gumbel_softmax",
    "most_likely_parents",
    "tree_code",
    "usage_probability",
]
