"""GraphState, the planner's bookkeeping, on its own: no Lambda, no I/O."""

from __future__ import annotations

import operator

import pytest
from dask._task_spec import Alias, Task, TaskRef

from dask_lambda.scheduling.planner import GraphState, Limits, TaskProfile


def inc(x):
    return x + 1


def chain(name: str, length: int) -> dict:
    graph = {f"{name}0": Task(f"{name}0", inc, 0)}
    for i in range(1, length):
        graph[f"{name}{i}"] = Task(f"{name}{i}", inc, TaskRef(f"{name}{i - 1}"))
    return graph


def roots(n: int) -> dict:
    return {f"r{i}": Task(f"r{i}", inc, i) for i in range(n)}


def test_a_wave_of_ready_tasks_is_spread_over_the_free_slots():
    state = GraphState(roots(10), [f"r{i}" for i in range(10)])
    sizes = []
    while (batch := state.next_batch(4 - len(sizes), Limits())) is not None:
        sizes.append(len(batch.keys))
    assert sizes == [3, 3, 2, 2]  # ceil(ready / free slots), recomputed per batch
    assert state.state["running"] == {f"r{i}" for i in range(10)}


def test_max_tasks_caps_a_batch_and_no_slot_means_no_batch():
    state = GraphState(roots(10), [f"r{i}" for i in range(10)])
    assert state.next_batch(0, Limits()) is None
    batch = state.next_batch(1, Limits(max_tasks=4))
    assert len(batch.keys) == 4


def test_max_tasks_caps_a_batch_with_what_is_fused_into_it():
    graph = {k: v for i in range(6) for k, v in chain(f"c{i}-", 5).items()}
    state = GraphState(graph, [f"c{i}-4" for i in range(6)])
    sizes = []
    while (batch := state.next_batch(1, Limits(max_tasks=8))) is not None:
        sizes.append(len(batch.keys))
        state.finish(batch.keys)
    assert max(sizes) <= 8 and sum(sizes) == 30


def tree(leaves: int) -> tuple[dict, str]:
    """A binary tree reduction, as dask.delayed builds it (W2)."""
    graph = {f"leaf{i}": Task(f"leaf{i}", inc, i) for i in range(leaves)}
    level, depth = list(graph), 0
    while len(level) > 1:
        depth += 1
        level = [f"add{depth}-{i}" for i in range(len(level) // 2)]
        for i, key in enumerate(level):
            below = [f"leaf{2 * i}", f"leaf{2 * i + 1}"] if depth == 1 else [
                f"add{depth - 1}-{2 * i}", f"add{depth - 1}-{2 * i + 1}"]  # fmt: skip
            graph[key] = Task(key, operator.add, TaskRef(below[0]), TaskRef(below[1]))
    return graph, level[0]


def test_a_reduction_fills_a_full_batch_with_whole_subtrees_not_with_roots():
    """Fusion happens as each root joins: a batch of max_tasks holds subtrees and returns only
    their tops. (Filling it with roots first left nothing to fuse: every batch returned all of
    its 1,000 values and the next one sent them back.)"""
    graph, top = tree(4096)
    state = GraphState(graph, [top])
    batches = []
    while not state.complete:
        batch = state.next_batch(2, Limits(max_tasks=1000))
        batches.append(batch)
        state.finish(batch.keys)
    assert max(len(b.keys) for b in batches) <= 1000
    assert sum(len(b.keys) for b in batches) == len(graph)
    full = [b for b in batches if len(b.keys) == 1000]
    assert len(full) >= 6 and all(len(b.outputs) <= 16 for b in full)
    assert sum(len(b.inputs) for b in batches) < 100


def test_a_chain_is_fused_into_one_batch_and_only_its_end_is_returned():
    state = GraphState(chain("c", 5), ["c4"])
    batch = state.next_batch(2, Limits())
    assert batch.keys == ["c0", "c1", "c2", "c3", "c4"]
    assert batch.outputs == ["c4"] and batch.inputs == []
    state.finish(batch.keys)
    assert state.complete


def test_outputs_are_what_something_outside_the_batch_needs():
    graph = {**roots(2), "sum": Task("sum", operator.add, TaskRef("r0"), TaskRef("r1"))}
    state = GraphState(graph, ["sum"])
    first = state.next_batch(2, Limits())
    second = state.next_batch(1, Limits())
    # "sum" waits for the other root, so it is not fused: each root is returned
    assert sorted([first.keys, second.keys]) == [["r0"], ["r1"]]
    assert first.outputs == first.keys and second.outputs == second.keys
    state.finish(first.keys)
    state.finish(second.keys)
    third = state.next_batch(1, Limits())
    assert third.keys == ["sum"] and third.inputs == ["r0", "r1"]
    assert state.releasable("r0") is False  # "sum" is running, not finished
    state.finish(third.keys)
    assert state.releasable("r0") and not state.releasable("sum")  # sum is requested


def test_inline_input_bytes_cap_a_batch_after_its_first_task():
    graph = {f"t{i}": Task(f"t{i}", inc, TaskRef(f"in{i}")) for i in range(4)}
    state = GraphState(graph, list(graph), done=[f"in{i}" for i in range(4)])
    batch = state.next_batch(1, Limits(max_bytes=250, input_bytes=lambda key: 100))
    assert len(batch.keys) == 2  # 100 + 100 fit under 250, a third would not
    alone = GraphState(graph, list(graph), done=[f"in{i}" for i in range(4)])
    assert (
        len(alone.next_batch(1, Limits(max_bytes=50, input_bytes=lambda key: 100)).keys) == 1
    )  # never empty


def test_aliases_finish_on_the_client():
    graph = {**chain("c", 2), "alias": Alias("alias", "c1")}
    state = GraphState(graph, ["alias"])
    batch = state.next_batch(1, Limits())
    assert "alias" in batch.keys  # fused with its target when it can be
    graph = {**roots(1), "alias": Alias("alias", "r0")}
    state = GraphState(graph, ["alias"])
    state.finish(state.next_batch(1, Limits(max_tasks=1)).keys[:1])
    assert state.pop_ready_aliases() in ([], ["alias"])


def test_values_known_up_front_count_as_finished():
    graph = {"y": Task("y", inc, TaskRef("x"))}
    state = GraphState(graph, ["y"], done=["x"])
    assert [k for _, k in state.state["ready"]] == ["y"]
    assert "x" in state.state["finished"]


def test_a_missing_dependency_is_dasks_value_error():
    with pytest.raises(ValueError, match="Missing dependency x for dependents"):
        GraphState({"y": Task("y", inc, TaskRef("x"))}, ["y"])


def test_state_has_the_fields_dask_callbacks_read():
    state = GraphState(chain("c", 3), ["c2"])
    assert {"ready", "waiting", "running", "finished", "cache"} <= set(state.state)
    assert state.state["waiting"] == {"c1": 1, "c2": 1}


def fan_out(branches: int) -> dict:
    graph = {"root": Task("root", inc, 0)}
    for i in range(branches):
        graph[f"branch{i}"] = Task(f"branch{i}", inc, TaskRef("root"))
    return graph


def test_a_fan_out_is_not_fused_while_slots_are_idle():
    """One ready task whose ten dependents need only it (a to_zarr-shaped graph): fusing them
    all would run ten independent tasks one after another in one invocation."""
    state = GraphState(fan_out(10), [f"branch{i}" for i in range(10)])
    batch = state.next_batch(4, Limits())
    assert batch.keys[0] == "root" and len(batch.keys) == 2  # the root and one branch
    state.finish(batch.keys)
    sizes = []
    while (batch := state.next_batch(4 - len(sizes), Limits())) is not None:
        sizes.append(len(batch.keys))
    assert sizes == [3, 2, 2, 2]  # the other nine branches, spread over the four slots


def test_a_fan_out_is_fused_when_every_slot_has_work():
    state = GraphState(fan_out(10), [f"branch{i}" for i in range(10)])
    assert len(state.next_batch(1, Limits()).keys) == 11


def test_learned_run_times_size_batches_to_the_target():
    graph = {f"load-{i}": Task(f"load-{i}", inc, i) for i in range(100)}
    state = GraphState(graph, list(graph))
    profile = TaskProfile()
    limits = Limits(target_seconds=1.0, probe_tasks=4, profile=profile)
    first = state.next_batch(1, limits)
    assert len(first.keys) == 4  # nothing learned yet: a probe
    profile.observe(first.keys, [[0.0, 0.1, 10]] * 4)  # 100 ms each
    second = state.next_batch(1, limits)
    assert len(second.keys) == 10  # one second of work


def test_learned_sizes_keep_a_batch_within_memory():
    graph = {f"chunk-{i}": Task(f"chunk-{i}", inc, i) for i in range(100)}
    state = GraphState(graph, list(graph))
    profile = TaskProfile()
    profile.observe(["chunk-999"], [[0.0, 0.001, 64 * 2**20]])  # chunk-* values: 64 MiB each
    limits = Limits(memory_bytes=512 * 2**20, profile=profile)
    batch = state.next_batch(1, limits)
    assert len(batch.keys) == 8


def test_a_task_is_ready_only_when_its_last_dependency_finished():
    graph = {
        "a": Task("a", inc, 1),
        "b": Task("b", inc, 2),
        "c": Task("c", inc, 3),
        "abc": Task("abc", add3, TaskRef("a"), TaskRef("b"), TaskRef("c")),
    }
    state = GraphState(graph, ["abc"])
    assert state.state["waiting"] == {"abc": 3}
    for finished, waiting in (("a", 2), ("b", 1)):
        state.finish([finished])
        assert state.state["waiting"] == {"abc": waiting}
        assert "abc" not in [key for _, key in state.state["ready"]]
    state.finish(["c"])
    assert "abc" in [key for _, key in state.state["ready"]]
    assert state.state["waiting"] == {}


def add3(a, b, c):
    return a + b + c
