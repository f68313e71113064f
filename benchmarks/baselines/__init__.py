"""The baselines the controller is compared with, each a :class:`benchmarks.methods.Method`.

* :class:`HardSharing`: one shared backbone + N heads trained per evaluation preference.
* :class:`PHN`: Pareto HyperNetworks, ``mode="full"`` (all weights from the hypernet) or ``"bn"``
  (PHN-BN: only the BatchNorm affine parameters).
* :class:`StaticTree`: a static branched network from the task affinity under a FLOP budget.
* :class:`StaticTreesAtBudgets`: one static tree per controller budget (dynamic against static at equal cost).
* :class:`DistilledTrunk`: one hard-sharing trunk distilled from the frozen single-task streams (Li & Bilen 2020).
* :class:`CrossStitch`: N task streams mixed by learned cross-stitch units after every block (Misra et al. 2016).

All get the same data, backbone family, step budget (:class:`benchmarks.methods.StepBudget`), loss
scales and seeds as the controller (the settings :class:`benchmarks.baselines.base.Baseline` holds for
every one of them), and return plain :class:`dymu.DerivedModel` networks.
"""

from .cross_stitch import CrossStitch, CrossStitchNetwork
from .distilled_trunk import DistilledTrunk
from .hard_sharing import HardSharing
from .phn import PHN, ChunkedHypernet
from .equal_cost import StaticTreesAtBudgets
from .static_tree import StaticTree

__all__ = ["HardSharing", "PHN", "ChunkedHypernet", "StaticTree", "StaticTreesAtBudgets", "DistilledTrunk", "CrossStitch",
           "CrossStitchNetwork"]
