"""The Tree type: construction rules, inspection, and its JSON and networkx round trips."""

from __future__ import annotations

import json

import networkx as nx
import numpy as np
import pytest

from affinity.tree import Tree

TASKS = ("seg", "depth", "normals", "edges")


def branched() -> Tree:
    # all share layer 0; normals leaves at layer 1; seg/depth split at layer 2; edges keeps its own id
    return Tree(TASKS, [[0, 0, 0, 0], [0, 0, 2, 0], [0, 1, 2, 3]])


TREES = {
    "shared": Tree.shared(TASKS, 3),
    "independent": Tree.independent(TASKS, 3),
    "branched": branched(),
    "one task": Tree(["only"], [[5], [5]]),
}


# ----------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("name", sorted(TREES))
def test_json_round_trip_gives_an_equal_tree(name):
    tree = TREES[name]
    text = tree.to_json()
    assert json.loads(text)["tasks"] == list(tree.tasks)
    assert Tree.from_json(text) == tree
    assert Tree.from_dict(json.loads(json.dumps(tree.to_dict()))) == tree


@pytest.mark.parametrize("name", sorted(TREES))
def test_networkx_round_trip_gives_an_equal_tree(name):
    tree = TREES[name]
    graph = tree.to_networkx()
    assert nx.is_tree(graph.to_undirected())
    assert graph.number_of_nodes() == 1 + tree.n_nodes + tree.n_tasks
    assert Tree.from_networkx(graph) == tree


def test_networkx_graph_points_from_parents_to_children_and_carries_the_tasks():
    tree = branched()
    graph = tree.to_networkx()
    assert list(graph.successors("input")) == [(0, 0)]
    assert set(graph.successors((1, 0))) == {(2, 0), (2, 1), (2, 3)}
    assert graph.nodes[(1, 0)]["tasks"] == ("seg", "depth", "edges")
    assert list(graph.predecessors(("head", "normals"))) == [(2, 2)]


def test_from_networkx_without_a_task_list_reads_the_heads():
    graph = branched().to_networkx()
    del graph.graph["tasks"]
    rebuilt = Tree.from_networkx(graph)
    assert set(rebuilt.tasks) == set(TASKS)
    for task in TASKS:
        assert rebuilt.path(task) == branched().path(task)


def test_from_networkx_rejects_a_node_with_two_parents():
    graph = branched().to_networkx()
    graph.add_edge((0, 0), (2, 2))  # normals' last node now also hangs from layer 0
    with pytest.raises(ValueError, match="2 parents"):
        Tree.from_networkx(graph)


def test_from_networkx_rejects_a_missing_head():
    graph = branched().to_networkx()
    graph.remove_node(("head", "depth"))
    with pytest.raises(ValueError, match="no head node for task 'depth'"):
        Tree.from_networkx(graph)


# ------------------------------------------------------------------------------ validation
@pytest.mark.parametrize(
    "tasks, assignment, message",
    [
        (("a", "b"), [[0, 0], [0]], "layer 1 assigns 1 tasks, expected 2"),
        (("a", "b"), [[0, 0, 0]], "assigns 3 tasks, expected 2"),
        (("a", "b"), [], "at least one layer"),
        ((), [[]], "at least one task"),
        (("a", "a"), [[0, 0]], "repeat"),
        (("a", ""), [[0, 0]], "non-empty strings"),
        (("a", "b"), [[0, -1]], "non-negative ints"),
        (("a", "b"), [[0, 1.0]], "non-negative ints"),
        (("a", "b"), [[0, True]], "non-negative ints"),
        (("a", "b"), [[0, "1"]], "non-negative ints"),
    ],
)
def test_invalid_trees_are_rejected(tasks, assignment, message):
    with pytest.raises(ValueError, match=message):
        Tree(tasks, assignment)


def test_a_path_that_re_merges_after_splitting_is_rejected():
    with pytest.raises(ValueError, match="'a' and 'b' split before layer 2 and re-merge"):
        Tree(["a", "b", "c"], [[0, 0, 0], [0, 1, 2], [0, 0, 2]])


def test_re_merge_under_another_node_id_is_still_rejected():
    # a and b part at layer 0 and meet again at node 7 of layer 1
    with pytest.raises(ValueError, match="re-merge"):
        Tree(["a", "b"], [[3, 4], [7, 7]])


def test_node_ids_are_local_to_a_layer():
    tree = Tree(["a", "b"], [[0, 1], [1, 0]])  # swapped ids, still two separate paths
    assert tree.branch_layer("a", "b") == 0
    assert tree.canonical() == Tree.independent(["a", "b"], 2)


def test_numpy_integer_ids_are_accepted_and_stored_as_ints():
    tree = Tree(["a", "b", "c"], np.array([[0, 0, 0], [0, 0, 2]]))
    assert tree == Tree(["a", "b", "c"], [[0, 0, 0], [0, 0, 2]])
    assert all(type(node) is int for row in tree.assignment for node in row)
    assert Tree.from_json(tree.to_json()) == tree
    assert tree.groups(np.int64(1)) == [("a", "b"), ("c",)]


@pytest.mark.parametrize(
    "data, message",
    [
        ({"tasks": ["a"]}, "'tasks' and 'assignment'"),
        ({"format": "other/9", "tasks": ["a"], "assignment": [[0]]}, "unknown tree format"),
        ([["a"], [[0]]], "'tasks' and 'assignment'"),
    ],
)
def test_from_dict_rejects_malformed_data(data, message):
    with pytest.raises(ValueError, match=message):
        Tree.from_dict(data)


def test_from_branch_points_builds_a_canonical_tree_and_checks_the_partitions():
    tree = Tree.from_branch_points(TASKS, [[TASKS], [("seg", "depth", "edges"), ("normals",)], [(t,) for t in TASKS]])
    assert tree == Tree(TASKS, [[0, 0, 0, 0], [0, 0, 2, 0], [0, 1, 2, 3]])
    with pytest.raises(ValueError, match="in two groups"):
        Tree.from_branch_points(["a", "b"], [[("a", "b"), ("b",)]])
    with pytest.raises(ValueError, match=r"tasks \['b'\] are in no group"):
        Tree.from_branch_points(["a", "b"], [[("a",)]])
    with pytest.raises(ValueError, match="unknown task 'z'"):
        Tree.from_branch_points(["a", "b"], [[("a", "z")]])


# ------------------------------------------------------------------------------ inspection
def test_groups_nodes_and_counts():
    tree = branched()
    assert tree.n_layers == 3 and tree.n_tasks == 4
    assert tree.groups(0) == [TASKS]
    assert tree.groups(1) == [("seg", "depth", "edges"), ("normals",)]
    assert tree.groups(2) == [("seg",), ("depth",), ("normals",), ("edges",)]
    assert tree.nodes(1) == [0, 2]
    assert tree.nodes_per_layer() == [1, 2, 4]
    assert tree.n_nodes == 7
    assert Tree.shared(TASKS, 5).n_nodes == 5
    assert Tree.independent(TASKS, 5).n_nodes == 20


def test_parent_path_and_branch_layer():
    tree = branched()
    assert tree.parent(0, 0) is None
    assert tree.parent(1, 2) == 0
    assert tree.parent(2, 1) == 0
    assert tree.parent(2, 2) == 2
    assert tree.path("normals") == (0, 2, 2)
    assert tree.path("edges") == (0, 0, 3)
    assert tree.branch_layer("seg", "depth") == 2
    assert tree.branch_layer("seg", "normals") == 1
    assert tree.branch_layer("seg", "seg") == 3
    assert tree.node_tasks(1, 0) == ("seg", "depth", "edges")


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda t: t.path("sky"), "unknown task 'sky'"),
        (lambda t: t.groups(3), r"layer must be an int in \[0, 2\]"),
        (lambda t: t.groups(-1), "layer must be an int"),
        (lambda t: t.node_tasks(1, 1), r"layer 1 has no node 1; its nodes are \[0, 2\]"),
        (lambda t: t.parent(2, 9), "has no node 9"),
    ],
)
def test_inspection_rejects_unknown_layers_nodes_and_tasks(call, message):
    with pytest.raises(ValueError, match=message):
        call(branched())


def test_str_lists_every_layer_with_its_groups():
    text = str(branched())
    lines = text.splitlines()
    assert lines[0] == "Tree: 4 tasks, 3 layers, 7 nodes"
    assert len(lines) == 4
    assert "0:[seg depth normals edges]" in lines[1]
    assert "0:[seg depth edges]" in lines[2] and "2:[normals]" in lines[2]
    assert "3:[edges]" in lines[3]
    assert eval(repr(branched())) == branched()


# -------------------------------------------------------------------------- equality, hash
def test_equal_trees_are_equal_and_hash_alike():
    a, b = branched(), Tree(list(TASKS), [[0, 0, 0, 0], [0, 0, 2, 0], [0, 1, 2, 3]])
    assert a == b and hash(a) == hash(b)
    assert len({a, b, Tree.shared(TASKS, 3)}) == 2
    assert {a: "x"}[b] == "x"


def test_trees_differing_in_ids_tasks_or_depth_are_not_equal():
    tree = branched()
    renamed = Tree(TASKS, [[5, 5, 5, 5], [5, 5, 9, 5], [5, 1, 9, 3]])
    assert renamed != tree
    assert renamed.same_structure(tree)
    assert renamed.canonical() == tree.canonical()
    assert Tree(("a", "b", "c", "d"), tree.assignment) != tree
    assert Tree.shared(TASKS, 3) != Tree.shared(TASKS, 4)
    assert not Tree.shared(TASKS, 3).same_structure(tree)
    assert tree != "not a tree"
