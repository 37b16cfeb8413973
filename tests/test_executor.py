"""LambdaExecutor: the concurrent.futures API, batching of bursts, errors, as a Dask scheduler."""

from __future__ import annotations

import concurrent.futures
import threading

import dask
import dask.bag as db
import numpy as np
import pytest
import tasks
from conftest import spill_objects, wait_until

from dask_lambda import LambdaCluster, LambdaExecutor, LambdaFunctionError


@pytest.fixture
def executor(cluster):
    ex = LambdaExecutor(cluster=cluster)
    yield ex
    ex.shutdown()


def test_submit_and_result(executor):
    future = executor.submit(tasks.add, 1, y=2)
    assert isinstance(future, concurrent.futures.Future)
    assert future.result(timeout=60) == 3


def test_map_keeps_order_and_batches_bursts(executor, cluster):
    before = cluster.invoker.stats.invocations
    assert list(executor.map(tasks.inc, range(500))) == list(range(1, 501))
    assert cluster.invoker.stats.invocations - before < 100  # not one invocation per call


def test_map_with_chunksize_and_several_iterables(executor):
    assert list(executor.map(tasks.add, range(100), range(100), chunksize=7)) == [
        2 * i for i in range(100)
    ]
    with pytest.raises(ValueError):
        executor.map(tasks.inc, [1], chunksize=0)


def test_gather_of_an_iterator_is_a_list(executor):
    gathered = executor.gather(executor.map(tasks.inc, range(3)))  # as distributed users write
    assert gathered == [1, 2, 3]
    assert executor.gather({executor.submit(tasks.inc, 1)}) == {2}  # sets keep their shape


def test_exceptions_keep_their_type(executor):
    future = executor.submit(tasks.fail, 5)
    with pytest.raises(ValueError, match="task failed on 5"):
        future.result(timeout=60)
    ok = executor.submit(tasks.inc, 1)  # the executor keeps working
    assert ok.result(timeout=60) == 2


def test_failures_in_a_batch_stay_with_their_call(executor):
    futures = [executor.submit(tasks.fail if i == 3 else tasks.inc, i) for i in range(10)]
    concurrent.futures.wait(futures, timeout=60)
    assert isinstance(futures[3].exception(), ValueError)
    assert [f.result() for i, f in enumerate(futures) if i != 3] == [
        i + 1 for i in range(10) if i != 3
    ]


def test_unpicklable_call_fails_alone(executor):
    bad = executor.submit(tasks.noop, threading.Lock())
    good = executor.submit(tasks.inc, 1)
    with pytest.raises(TypeError, match="picklable"):
        bad.result(timeout=60)
    assert good.result(timeout=60) == 2


def test_large_results_come_through_s3_and_are_deleted(executor, cluster):
    import gc

    future = executor.submit(tasks.big_array, 2)
    result = future.result(timeout=120)
    np.testing.assert_array_equal(result, tasks.big_array(2))
    assert len(spill_objects(cluster)) == 1  # kept while its future lives (to pass it on)
    del future
    gc.collect()
    assert spill_objects(cluster) == []


def test_as_completed_and_wait(executor):
    futures = [executor.submit(tasks.slow, i, 0.05) for i in range(6)]
    assert sorted(f.result() for f in concurrent.futures.as_completed(futures, timeout=60)) == list(
        range(6)
    )


def test_shutdown_semantics(cluster):
    ex = LambdaExecutor(cluster=cluster)
    futures = [ex.submit(tasks.slow, i, 0.1) for i in range(4)]
    ex.shutdown(wait=True)
    assert [f.result() for f in futures] == [0, 1, 2, 3]
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(tasks.inc, 1)
    ex.shutdown()  # twice is fine

    with LambdaExecutor(cluster=cluster, max_workers=1) as ex:
        running = ex.submit(tasks.slow, "first", 1.0)
        assert wait_until(running.running)
        queued = [ex.submit(tasks.inc, i) for i in range(20)]
        ex.shutdown(wait=True, cancel_futures=True)
    assert running.result() == "first"
    assert all(f.cancelled() or f.result() == i + 1 for i, f in enumerate(queued))


def test_executor_as_dask_scheduler(executor):
    bag = db.from_sequence(range(100), npartitions=10).map(tasks.inc)
    assert bag.sum().compute(scheduler=executor) == 5050
    assert dask.delayed(tasks.add)(1, 2).compute(scheduler=executor) == 3


def test_executor_owning_its_cluster():
    with LambdaExecutor(max_concurrency=1) as ex:
        assert ex.submit(tasks.inc, 41).result(timeout=60) == 42
        cluster = ex.cluster
    assert cluster.status.value == "closed"


def test_futures_as_arguments_travel_by_reference(executor):
    big = executor.submit(tasks.big_array, 4)  # 4 MB: left in S3
    sizes = executor.submit(tasks.nbytes_of, big)
    nested = executor.submit(tasks.total, *[executor.submit(tasks.inc, i) for i in range(5)])
    in_list = executor.submit(sum, [executor.submit(tasks.inc, 1), 10])
    before = executor.bytes_to_client
    assert sizes.result(timeout=120) == 4 * 1024 * 1024 // 8  # its length, read in Lambda
    assert nested.result(timeout=60) == 15 and in_list.result(timeout=60) == 12
    assert executor.bytes_to_client - before < 100_000  # big never came back to the client
    failing = executor.submit(tasks.fail, 3)
    with pytest.raises(ValueError, match="task failed on 3"):
        executor.submit(tasks.inc, failing).result(timeout=60)


def test_scatter_once_gather_in_parallel(executor):
    data = np.arange(1_000_000)  # 8 MB
    before_up, before_down = executor.bytes_from_client, executor.bytes_to_client
    shared = executor.scatter(data)
    assert executor.bytes_from_client - before_up >= data.nbytes  # uploaded once, counted
    futures = [executor.submit(tasks.nbytes_of, shared) for _ in range(6)]
    assert executor.gather(futures) == [len(data)] * 6
    assert executor.bytes_from_client - before_up < data.nbytes * 1.1  # not once per call
    parts = executor.scatter({"a": [1, 2], "b": 3})
    assert executor.gather(parts) == {"a": [1, 2], "b": 3}
    copies = [executor.submit(tasks.double, shared) for _ in range(2)]
    values = executor.gather(copies)
    np.testing.assert_array_equal(values[0], data * 2)
    assert executor.bytes_to_client - before_down >= 2 * data.nbytes  # downloads are counted


def test_a_call_that_kills_its_runtime_fails_alone():
    """The attempt policy of compute: a batch of calls whose runtime crashes is split until the
    call at fault is alone; it fails (after its infrastructure retries) with
    LambdaFunctionError, and every other call of the batch succeeds. (A function without
    dependencies to load: every crash costs a cold start.)"""
    with LambdaCluster(infra_retries=1, retry_backoff=0.01) as light, LambdaExecutor(
        cluster=light, max_workers=1  # one slot: the calls batch up behind the blocker
    ) as ex:
        blocker = ex.submit(tasks.slow, 0, 1.0)
        futures = [ex.submit(tasks.crash if i == 5 else tasks.inc, i) for i in range(10)]
        assert blocker.result(timeout=120) == 0
        error = futures[5].exception(timeout=300)
        others = [f.result(timeout=300) for i, f in enumerate(futures) if i != 5]
    assert isinstance(error, LambdaFunctionError), error
    assert error.error_type == "Runtime.ExitError" and error.attempts > 1
    assert others == [i + 1 for i in range(10) if i != 5]
