"""Task affinity by representation similarity analysis, static branching trees, and their plots."""

from .tree import Tree

__all__ = ["Tree"]
