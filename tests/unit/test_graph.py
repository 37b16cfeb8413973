"""What ``prepare`` refuses before anything runs, on hand-built graphs: no Lambda, no I/O."""

from __future__ import annotations

import numpy as np
import pytest
from dask._task_spec import DataNode, Task, TaskRef, _execute_subgraph
from dask.array.core import load_store_chunk

from dask_lambda.scheduling.graph import refuse_what_cannot_run_remotely


def _store_in_a_fused_subgraph(target) -> dict:
    """``da.store`` fused by dask into another task: the target is the subgraph's input ``t``,
    bound to the outer task's argument, a reference to the graph's ``target``."""
    store = Task("s", load_store_chunk, TaskRef("x"), TaskRef("t"), slice(None), None, False, False)
    inner = {"s": store}
    return {
        "x": DataNode("x", np.arange(3)),
        "target": DataNode("target", target),
        "outer": Task("outer", _execute_subgraph, inner, "s", ("t",), TaskRef("target")),
    }


def test_a_store_into_client_memory_inside_a_fused_subgraph_is_refused():
    with pytest.raises(ValueError, match="stores into a numpy array"):
        refuse_what_cannot_run_remotely(_store_in_a_fused_subgraph(np.zeros(3)))


def test_a_store_into_anything_else_inside_a_fused_subgraph_is_allowed():
    assert refuse_what_cannot_run_remotely(_store_in_a_fused_subgraph({"not": "an array"})) == []


def test_a_local_file_passed_as_a_keyword_is_refused(tmp_path):
    import fsspec

    opened = fsspec.open(str(tmp_path / "data.csv"))
    graph = {"read": Task("read", sorted, [3, 1], key=opened)}
    with pytest.raises(ValueError, match="on this machine's filesystem"):
        refuse_what_cannot_run_remotely(graph)
