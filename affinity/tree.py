"""The one tree type of the project: a branched multi-task architecture over a stack of blocks.

A tree over ``N`` tasks and ``L`` branchable layers is an ``L x N`` table of node ids:
``assignment[l][k]`` is the node of layer ``l`` that task ``k``'s path passes through. Tasks that
pass through the same node at a layer share that node's computation. A node id is a label local to
its layer; in trees derived from a controller it is the anchor stream whose block weights the node
uses, so ``assignment[l][k] == k`` everywhere is the full anchor (no sharing).

Validity: once two tasks' paths split they never meet again, i.e. sharing a node at layer ``l``
implies sharing a node at every layer below ``l``. The tree is plain data (tuples of ints and task
names), hashable, and round-trips through JSON (``to_dict`` / ``from_dict``) and networkx.
"""

from __future__ import annotations

import json
import numbers
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import networkx as nx

__all__ = ["Tree"]

_FORMAT = "dymu.tree/1"


class Tree:
    """A branched multi-task architecture: which node each task passes through at each layer.

    Args:
        tasks: the task names, in the order of the columns of ``assignment``.
        assignment: ``L`` rows of ``N`` non-negative ints; ``assignment[l][k]`` is the node id of
            task ``k`` at layer ``l``.

    Raises:
        ValueError: if the sizes disagree, an id is not a non-negative int, task names repeat, or a
            path re-merges after splitting.

    Example:
        >>> tree = Tree(["seg", "depth", "normals"], [[0, 0, 0], [0, 0, 2], [0, 1, 2]])
        >>> tree.groups(1)
        [('seg', 'depth'), ('normals',)]
        >>> tree.n_nodes
        6
    """

    __slots__ = ("_tasks", "_assignment")

    def __init__(self, tasks: Sequence[str], assignment: Sequence[Sequence[int]]):
        tasks = tuple(tasks)
        if len(tasks) == 0:
            raise ValueError("a tree needs at least one task")
        if any(not isinstance(name, str) or not name for name in tasks):
            raise ValueError(f"task names must be non-empty strings, got {tasks!r}")
        if len(set(tasks)) != len(tasks):
            raise ValueError(f"task names repeat: {tasks!r}")
        rows: list[tuple[int, ...]] = []
        for layer, row in enumerate(assignment):
            row = tuple(row)
            if len(row) != len(tasks):
                raise ValueError(
                    f"layer {layer} assigns {len(row)} tasks, expected {len(tasks)} ({', '.join(tasks)})"
                )
            for node in row:
                # numbers.Integral admits numpy ints (e.g. from an argmax); stored as plain ints below
                if isinstance(node, bool) or not isinstance(node, numbers.Integral) or node < 0:
                    raise ValueError(f"layer {layer}: node ids must be non-negative ints, got {node!r}")
            rows.append(tuple(int(node) for node in row))
        if not rows:
            raise ValueError("a tree needs at least one layer")
        for layer in range(1, len(rows)):
            for a in range(len(tasks)):
                for b in range(a + 1, len(tasks)):
                    if rows[layer][a] == rows[layer][b] and rows[layer - 1][a] != rows[layer - 1][b]:
                        raise ValueError(
                            f"tasks {tasks[a]!r} and {tasks[b]!r} split before layer {layer} and "
                            f"re-merge at node {rows[layer][a]} of layer {layer}: a path may not re-merge"
                        )
        self._tasks = tasks
        self._assignment = tuple(rows)

    # ----------------------------------------------------------------- construction helpers
    @classmethod
    def independent(cls, tasks: Sequence[str], n_layers: int) -> Tree:
        """The anchor: every task has its own node at every layer (node id = task index)."""
        return cls(tasks, [list(range(len(tasks)))] * n_layers)

    @classmethod
    def shared(cls, tasks: Sequence[str], n_layers: int, node: int = 0) -> Tree:
        """Hard sharing: one node per layer, used by every task."""
        return cls(tasks, [[node] * len(tasks)] * n_layers)

    @classmethod
    def from_branch_points(cls, tasks: Sequence[str], partitions: Sequence[Iterable[Iterable[str]]]) -> Tree:
        """Build a tree from one partition of the tasks per layer (groups of task names).

        Node ids are the index of the group's first task, so a tree built this way is canonical.
        """
        index = {name: k for k, name in enumerate(tasks)}
        rows = []
        for layer, partition in enumerate(partitions):
            row = [-1] * len(tasks)
            for group in partition:
                members = [index[name] if name in index else _unknown(name, tasks) for name in group]
                for k in members:
                    if row[k] != -1:
                        raise ValueError(f"layer {layer}: task {tasks[k]!r} is in two groups")
                    row[k] = min(members)
            missing = [tasks[k] for k, node in enumerate(row) if node == -1]
            if missing:
                raise ValueError(f"layer {layer}: tasks {missing} are in no group")
            rows.append(row)
        return cls(tasks, rows)

    # ------------------------------------------------------------------------- inspection
    @property
    def tasks(self) -> tuple[str, ...]:
        return self._tasks

    @property
    def assignment(self) -> tuple[tuple[int, ...], ...]:
        """``[L][N]`` node ids."""
        return self._assignment

    @property
    def n_layers(self) -> int:
        return len(self._assignment)

    @property
    def n_tasks(self) -> int:
        return len(self._tasks)

    def nodes(self, layer: int) -> list[int]:
        """The distinct node ids of ``layer``, sorted."""
        return sorted(set(self._assignment[self._check_layer(layer)]))

    @property
    def n_nodes(self) -> int:
        """The number of distinct nodes over all layers (each computed once)."""
        return sum(len(set(row)) for row in self._assignment)

    def nodes_per_layer(self) -> list[int]:
        return [len(set(row)) for row in self._assignment]

    def groups(self, layer: int) -> list[tuple[str, ...]]:
        """The tasks that share each node of ``layer``, ordered by node id."""
        row = self._assignment[self._check_layer(layer)]
        return [tuple(self._tasks[k] for k in range(self.n_tasks) if row[k] == node) for node in self.nodes(layer)]

    def node_tasks(self, layer: int, node: int) -> tuple[str, ...]:
        """The tasks whose paths pass through ``node`` of ``layer``."""
        row = self._assignment[self._check_layer(layer)]
        served = tuple(self._tasks[k] for k in range(self.n_tasks) if row[k] == node)
        if not served:
            raise ValueError(f"layer {layer} has no node {node}; its nodes are {self.nodes(layer)}")
        return served

    def parent(self, layer: int, node: int) -> int | None:
        """The node of ``layer - 1`` that feeds ``node`` of ``layer``; ``None`` at layer 0 (the input)."""
        task = self._tasks.index(self.node_tasks(layer, node)[0])
        return None if layer == 0 else self._assignment[layer - 1][task]

    def path(self, task: str) -> tuple[int, ...]:
        """The node ids that ``task`` passes through, layer 0 first."""
        if task not in self._tasks:
            _unknown(task, self._tasks)
        k = self._tasks.index(task)
        return tuple(row[k] for row in self._assignment)

    def branch_layer(self, a: str, b: str) -> int:
        """The first layer at which tasks ``a`` and ``b`` use different nodes (``n_layers`` if never)."""
        pa, pb = self.path(a), self.path(b)
        for layer, (na, nb) in enumerate(zip(pa, pb)):
            if na != nb:
                return layer
        return self.n_layers

    def canonical(self) -> Tree:
        """The same architecture with node ids renamed to the index of each node's first task."""
        rows = [[row.index(node) for node in row] for row in self._assignment]
        return Tree(self._tasks, rows)

    def same_structure(self, other: Tree) -> bool:
        """True when both trees group the tasks identically at every layer, whatever the node ids."""
        return self._tasks == other._tasks and self.canonical() == other.canonical()

    # ----------------------------------------------------------------------- conversions
    def to_dict(self) -> dict[str, Any]:
        return {"format": _FORMAT, "tasks": list(self._tasks), "assignment": [list(row) for row in self._assignment]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Tree:
        if not isinstance(data, Mapping) or "tasks" not in data or "assignment" not in data:
            raise ValueError("a tree dict needs the keys 'tasks' and 'assignment'")
        if data.get("format", _FORMAT) != _FORMAT:
            raise ValueError(f"unknown tree format {data.get('format')!r}, expected {_FORMAT!r}")
        return cls(data["tasks"], data["assignment"])

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> Tree:
        return cls.from_dict(json.loads(text))

    def to_networkx(self) -> nx.DiGraph:
        """A directed graph from ``"input"`` through nodes ``(layer, id)`` to nodes ``("head", task)``.

        Every block node carries ``layer``, ``node`` and ``tasks`` attributes; edges point from
        parent to child.
        """
        graph = nx.DiGraph(tasks=list(self._tasks))
        graph.add_node("input", kind="input")
        for layer in range(self.n_layers):
            for node in self.nodes(layer):
                graph.add_node((layer, node), kind="block", layer=layer, node=node, tasks=self.node_tasks(layer, node))
                parent = self.parent(layer, node)
                graph.add_edge("input" if parent is None else (layer - 1, parent), (layer, node))
        for k, task in enumerate(self._tasks):
            graph.add_node(("head", task), kind="head", tasks=(task,))
            graph.add_edge((self.n_layers - 1, self._assignment[-1][k]), ("head", task))
        return graph

    @classmethod
    def from_networkx(cls, graph: nx.DiGraph) -> Tree:
        """Inverse of :meth:`to_networkx`: follow each head back to the input."""
        tasks = graph.graph.get("tasks")
        if tasks is None:
            tasks = [n[1] for n in graph.nodes if isinstance(n, tuple) and n[0] == "head"]
        columns = []
        for task in tasks:
            head = ("head", task)
            if head not in graph:
                raise ValueError(f"the graph has no head node for task {task!r}")
            path = []
            node = head
            while True:
                parents = list(graph.predecessors(node))
                if len(parents) != 1:
                    raise ValueError(f"node {node!r} has {len(parents)} parents; a tree node has exactly one")
                node = parents[0]
                if node == "input":
                    break
                path.append(node[1])
            columns.append(path[::-1])
        depths = {len(c) for c in columns}
        if len(depths) != 1:
            raise ValueError(f"task paths have different depths {sorted(depths)}")
        return cls(tasks, [list(row) for row in zip(*columns)])

    # --------------------------------------------------------------------------- dunders
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Tree):
            return NotImplemented
        return self._tasks == other._tasks and self._assignment == other._assignment

    def __hash__(self) -> int:
        return hash((self._tasks, self._assignment))

    def __repr__(self) -> str:
        return f"Tree(tasks={list(self._tasks)!r}, assignment={[list(r) for r in self._assignment]!r})"

    def __str__(self) -> str:
        lines = [f"Tree: {self.n_tasks} tasks, {self.n_layers} layers, {self.n_nodes} nodes"]
        width = len(str(self.n_layers - 1))
        for layer in range(self.n_layers):
            cells = []
            for node, group in zip(self.nodes(layer), self.groups(layer)):
                cells.append(f"{node}:[{' '.join(group)}]")
            lines.append(f"  layer {layer:>{width}}  " + "  ".join(cells))
        return "\n".join(lines)

    def _check_layer(self, layer: int) -> int:
        if isinstance(layer, bool) or not isinstance(layer, numbers.Integral) or not 0 <= layer < self.n_layers:
            raise ValueError(f"layer must be an int in [0, {self.n_layers - 1}], got {layer!r}")
        return int(layer)


def _unknown(name: str, tasks: Sequence[str]) -> int:
    raise ValueError(f"unknown task {name!r}; the tasks are {list(tasks)}")
