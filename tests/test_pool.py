"""LambdaPool follows multiprocessing.Pool's semantics."""

from __future__ import annotations

import multiprocessing
import threading

import pytest
import tasks

from dask_lambda import LambdaPool


@pytest.fixture
def pool(cluster):
    with LambdaPool(cluster=cluster) as p:
        yield p


def test_apply_and_apply_async(pool):
    assert pool.apply(tasks.add, (1,), {"y": 2}) == 3
    got, done = [], threading.Event()
    result = pool.apply_async(tasks.inc, (1,), callback=lambda v: (got.append(v), done.set()))
    assert result.get(timeout=60) == 2
    assert done.wait(10) and got == [2]
    assert result.ready() and result.successful()


def test_errors_and_error_callback(pool):
    errors = []
    result = pool.apply_async(tasks.fail, (1,), error_callback=errors.append)
    with pytest.raises(ValueError):
        result.get(timeout=60)
    assert not result.successful()
    assert isinstance(errors[0], ValueError)
    with pytest.raises(ValueError):
        pool.map(tasks.fail, [1, 2])


def test_not_ready_and_timeout(pool):
    result = pool.apply_async(tasks.slow, (1, 2.0))
    with pytest.raises(ValueError):
        result.successful()
    with pytest.raises(multiprocessing.TimeoutError):
        result.get(timeout=0.01)
    result.wait()
    assert result.get() == 1


def test_map_starmap_and_async(pool):
    assert pool.map(tasks.inc, range(100)) == list(range(1, 101))
    assert pool.map(tasks.inc, range(10), chunksize=3) == list(range(1, 11))
    assert pool.starmap(tasks.add, [(1, 2), (3, 4)]) == [3, 7]
    assert pool.map_async(tasks.double, [1, 2, 3]).get(timeout=60) == [2, 4, 6]
    assert pool.starmap_async(tasks.add, [(1, 1)]).get(timeout=60) == [2]
    assert pool.map(tasks.inc, []) == []


def test_imap_and_imap_unordered(pool):
    assert list(pool.imap(tasks.inc, range(20))) == list(range(1, 21))
    assert list(pool.imap(tasks.inc, range(20), chunksize=4)) == list(range(1, 21))
    assert sorted(pool.imap_unordered(tasks.double, range(20))) == [2 * i for i in range(20)]


def test_close_join_terminate(cluster):
    pool = LambdaPool(cluster=cluster)
    results = [pool.apply_async(tasks.slow, (i, 0.1)) for i in range(3)]
    with pytest.raises(ValueError, match="still running"):
        pool.join()
    pool.close()
    with pytest.raises(ValueError, match="Pool not running"):
        pool.apply(tasks.inc, (1,))
    pool.join()
    assert [r.get() for r in results] == [0, 1, 2]

    pool = LambdaPool(processes=1, cluster=cluster)
    pool.apply_async(tasks.slow, (0, 0.5))
    pending = [pool.apply_async(tasks.inc, (i,)) for i in range(5)]
    pool.terminate()
    assert all(r.ready() for r in pending)
    with pytest.raises(ValueError):
        pool.map(tasks.inc, [1])


def test_initializer_runs_once_per_runtime(cluster):
    with LambdaPool(cluster=cluster, initializer=tasks.initializer, initargs=("ready",)) as pool:
        values = pool.map(tasks.initialized_value, range(20))
    assert values == [("ready", "1")] * 20  # every call saw it; no runtime ran it twice
