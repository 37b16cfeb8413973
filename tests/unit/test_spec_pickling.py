"""How a batch is pickled (``pickle_spec``): a ``Task`` travels as its fields and is rebuilt
whole, under the allowlist too."""

from __future__ import annotations

import operator
import pickle

from dask._task_spec import DataNode, List, Task, TaskRef

from dask_lambda.function import allowlist
from dask_lambda.function.protocol import BatchSpec
from dask_lambda.remote.invocation import pickle_spec


def _spec() -> BatchSpec:
    nodes = [
        Task("a", operator.add, 1, 2),
        Task("b", sorted, TaskRef("a"), key=abs, _data_producer=True),
        Task("c", sum, List(TaskRef("a"), Task("inner", operator.neg, TaskRef("b")))),
        DataNode("d", [1, 2]),
    ]
    return BatchSpec("compute", [n.key for n in nodes], nodes, ["c"], {})


def test_a_task_is_rebuilt_with_its_dependencies_kwargs_and_flags():
    original = _spec()
    loaded = pickle.loads(pickle_spec(original))
    for before, after in zip(original.tasks, loaded.tasks, strict=True):
        assert type(after) is type(before) and after.key == before.key
        assert after.dependencies == before.dependencies
        assert after.data_producer == before.data_producer
    assert loaded.tasks[1].kwargs == {"key": abs}
    assert loaded.tasks[2].dependencies == {"a", "b"}
    assert loaded.tasks[0]({}) == 3 and loaded.tasks[2]({"a": 3, "b": -4}) == 7


def test_the_rebuilt_task_loads_under_the_allowlist():
    loaded = allowlist.loads(pickle_spec(_spec()), ["_operator.*", "builtins.*"])
    assert [t.key for t in loaded.tasks] == ["a", "b", "c", "d"]


def test_a_batch_of_tasks_pickles_smaller_than_dasks_own_reduction():
    import cloudpickle

    spec = BatchSpec("c", [f"k{i}" for i in range(200)],
                     [Task(f"k{i}", operator.add, TaskRef(f"k{i - 1}"), 1) for i in range(200)],
                     ["k199"], {})  # fmt: skip
    assert len(pickle_spec(spec)) < len(cloudpickle.dumps(spec, protocol=5))


def test_each_key_travels_once_however_many_tasks_name_it():
    """A key is named by its task, by each task depending on it and maybe as an output: the
    spec carries its string once (pickle's memo), the rest are 2-byte references."""
    import collections
    import pickletools

    import dask
    from dask._task_spec import convert_legacy_graph

    parts = [dask.delayed(operator.neg)(i) for i in range(300)]
    total = dask.delayed(sum)([dask.delayed(abs)(p) for p in parts] + parts)
    graph = convert_legacy_graph(dict(total.__dask_graph__()))
    keys = list(graph)
    spec = pickle_spec(BatchSpec("compute", keys, [graph[k] for k in keys], keys, {}))
    strings = collections.Counter(
        arg for _, arg, _ in pickletools.genops(spec) if isinstance(arg, str)
    )
    assert all(strings[key] == 1 for key in keys), strings.most_common(3)
    assert len(spec) < 100 * len(keys)


class _Registered:
    """Pickled through a reducer registered with copyreg after the first batch was pickled."""


def _rebuild_registered(marker):
    return ("rebuilt by the registered reducer", marker)


def test_a_reducer_registered_after_a_batch_still_counts():
    import copyreg

    def spec():
        return BatchSpec("r", ["r"], [DataNode("r", _Registered())], ["r"], {})

    assert type(pickle.loads(pickle_spec(spec())).tasks[0].value) is _Registered
    copyreg.pickle(_Registered, lambda obj: (_rebuild_registered, ("marker",)))
    try:
        loaded = pickle.loads(pickle_spec(spec()))
        assert loaded.tasks[0].value == ("rebuilt by the registered reducer", "marker")
    finally:
        del copyreg.dispatch_table[_Registered]
