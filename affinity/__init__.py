"""Task affinity by representation similarity analysis, static branching trees, and their plots.

A standalone package (torch, numpy, scipy, networkx, matplotlib): collect per-block features of
single-task networks (:func:`collect_features`), measure how alike the tasks' representations are
at every layer (:func:`rsa_affinity`), derive a branched architecture under a compute budget
(:func:`branching_tree`), and draw all of it (:mod:`affinity.plots`).

Example::

    features = collect_features({"seg": seg_net, "depth": depth_net, "normals": normals_net}, inputs=images)
    result = rsa_affinity(features)               # result.matrix: the symmetric [N, N] Aff
    tree = branching_tree(result, extra_share=0.3, layer_costs=flops_per_block)
    plot_tree(tree, "tree.png", layer_costs=flops_per_block)
"""

from .branching import branching_sequence, branching_tree, relative_cost, tree_cost, tree_dissimilarity
from .features import collect_features, default_blocks
from .rsa import MEASURES, AffinityResult, rsa_affinity, similarity_matrix
from .tree import Tree

__all__ = [
    "MEASURES",
    "AffinityResult",
    "Tree",
    "branching_sequence",
    "branching_tree",
    "collect_features",
    "default_blocks",
    "plot_affinity",
    "plot_dendrogram",
    "plot_tree",
    "plot_trees",
    "relative_cost",
    "rsa_affinity",
    "similarity_matrix",
    "tree_cost",
    "tree_dissimilarity",
]

_PLOTS = ("plot_affinity", "plot_dendrogram", "plot_tree", "plot_trees")


def __getattr__(name: str):
    # matplotlib loads only when a plot is asked for: importing the Tree type stays light
    if name in _PLOTS:
        from . import plots

        return getattr(plots, name)
    raise AttributeError(f"module 'affinity' has no attribute {name!r}")
