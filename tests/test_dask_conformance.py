"""Wrong answers and hangs found by running Dask's own test suites through the lambda scheduler,
each with a test of its own, and the fast slice of those suites (``ci/conformance --fast``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import dask
import dask.bag as db
import pytest
import tasks

from dask_lambda import LambdaCluster

REPO = Path(__file__).parents[1]


def test_bag_groupby_built_with_a_cluster_running_is_right(cluster):
    """dask's default disk shuffle lost data on Lambda; with a cluster running, bags and
    dataframes default to the task-based shuffle and the answer is right."""
    bag = db.Bag({("x", i): (range, 5) for i in range(3)}, "x", 3).groupby(lambda x: x)
    result = dict(bag.compute(scheduler=cluster))
    assert result == {i: [i, i, i] for i in range(5)}


def test_graph_with_a_local_disk_shuffle_is_refused(cluster):
    bag = db.Bag({("x", i): (range, 5) for i in range(3)}, "x", 3).groupby(
        lambda x: x, shuffle="disk"
    )
    with pytest.raises(ValueError, match="shuffle through local disk.*shuffle='tasks'"):
        bag.compute(scheduler=cluster)


def test_dataframe_disk_shuffle_is_refused_and_tasks_is_right(cluster):
    import dask.dataframe as dd
    import pandas as pd

    frame = pd.DataFrame({"a": [i % 7 for i in range(200)], "b": range(200)})
    with dask.config.set({"dataframe.shuffle.method": "disk"}):
        shuffled = dd.from_pandas(frame, npartitions=4).shuffle("a")
        with pytest.raises(ValueError, match="shuffle through local disk"):
            shuffled.compute(scheduler=cluster)
    ddf = dd.from_pandas(frame, npartitions=4)
    result = ddf.shuffle("a").compute(scheduler=cluster)
    pd.testing.assert_frame_equal(result.sort_values("b"), frame)


@pytest.mark.slow
def test_the_default_shuffle_is_restored_when_the_last_cluster_closes():
    script = """
import dask
from dask_lambda import LambdaCluster
assert dask.config.get("dataframe.shuffle.method", None) is None
with LambdaCluster(check_versions=False):
    assert dask.config.get("dataframe.shuffle.method") == "tasks"
assert dask.config.get("dataframe.shuffle.method") is None
with dask.config.set({"dataframe.shuffle.method": "disk"}), LambdaCluster(check_versions=False):
    assert dask.config.get("dataframe.shuffle.method") == "disk"  # the user's choice stays
print("ok")
"""
    process = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                             timeout=120)  # fmt: skip
    assert process.stdout.strip() == "ok", process.stderr


def test_graph_key_differs_from_the_nodes_own_key(cluster):
    """dask's from_delayed(verify_meta=False) stores Alias((container, i)) under another key."""
    import dask.dataframe as dd
    import pandas as pd

    parts = [dask.delayed(pd.DataFrame)({"x": [i, i + 1]}) for i in range(3)]
    frame = dd.from_delayed(parts, meta=pd.DataFrame({"x": [0]}), verify_meta=False)
    result = frame.compute(scheduler=cluster)
    assert result["x"].tolist() == [0, 1, 1, 2, 2, 3]

    from dask._task_spec import Alias, Task, TaskRef

    graph = {
        "a": Task("a", tasks.inc, 1),
        "b": Task("not-b", tasks.inc, TaskRef("a")),  # runs in the same batch as "a"
        "renamed": Alias("other-name", "b"),
    }
    assert cluster.get(graph, ["renamed", "b"]) == (3, 3)


def test_missing_dependency_is_dasks_value_error(cluster):
    from dask._task_spec import Task, TaskRef

    graph = {"y": Task("y", tasks.inc, TaskRef("x"))}
    with pytest.raises(ValueError, match="Missing dependency x"):
        cluster.get(graph, "y")


@pytest.mark.timeout(900)
def test_printing_and_silent_tasks_never_stall():
    """The log reader never blocks under its lock: 300 computes alternating tasks that print
    and tasks that don't, and no retry at all: a stalled reader times an invocation out (each
    takes milliseconds; the function's timeout leaves room for a machine many times slower)."""
    with LambdaCluster(timeout=30, infra_retries=0, max_concurrency=1) as cluster:
        for i in range(300):
            task = tasks.shout if i % 2 else tasks.inc
            assert dask.delayed(task)(i).compute(scheduler=cluster) in (i, i + 1)
            assert cluster.last_report.infra_retries == 0
        logs = cluster.local.client("logs").filter_log_events(
            logGroupName=f"/aws/lambda/{cluster.function_name}", filterPattern="line 2 of task"
        )
        assert len(logs["events"]) >= 100


@pytest.mark.timeout(1200)
@pytest.mark.slow
def test_dask_suites_fast_slice_passes_through_lambda():
    """Dask's bag, delayed and get-function tests, every compute routed through Lambda."""
    process = subprocess.run(
        [sys.executable, str(REPO / "ci/dask_suites/run.py"), "--fast", "--routed-only"],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    print(process.stdout)
    assert process.returncode == 0, process.stdout + process.stderr[-5000:]
    rows = [line.split() for line in process.stdout.splitlines()[1:] if line.strip()]
    assert {row[0] for row in rows} == {"bag", "delayed", "local"}
    for row in rows:
        assert int(row[2]) > 0 and int(row[8]) > 0  # passed tests, Lambda invocations


def test_store_into_a_local_array_is_refused(cluster, tmp_path):
    """da.store into a numpy array or memmap of this process cannot be written from Lambda
    (dask's test_memmap found the target silently left as it was)."""
    import dask.array as da
    import numpy as np

    x = da.arange(100, chunks=15)
    memmap = np.memmap(tmp_path / "t.npy", shape=(100,), mode="w+", dtype=x.dtype)
    for target in (np.zeros(100, dtype=x.dtype), memmap):
        with pytest.raises(ValueError, match="stores into a numpy array .* x.compute"):
            da.store(x, target, scheduler=cluster)
        assert not target.any()
    assert (x.compute(scheduler=cluster) == np.arange(100)).all()  # the way that works
