"""W3: 10,000 no-op calls through a futures interface, one peer per function here."""

from __future__ import annotations

import time
from concurrent.futures import ProcessPoolExecutor

from benchmarks.peers import LITHOPS_CONFIG, dask_lambda_local
from benchmarks.workloads import noop

CALLS = 10_000


def _row(seconds: float, **extra) -> dict:
    return {"seconds": seconds, "calls_per_second": CALLS / seconds, **extra}


def dask_lambda_executor() -> dict:
    from dask_lambda import LambdaExecutor

    with dask_lambda_local() as cluster, LambdaExecutor(cluster=cluster) as executor:
        assert list(executor.map(noop, range(100))) == list(range(100))  # warm-up
        before = cluster.invoker.stats.invocations
        began = time.perf_counter()
        results = list(executor.map(noop, range(CALLS)))
        seconds = time.perf_counter() - began
        invocations = cluster.invoker.stats.invocations - before
    assert results == list(range(CALLS))
    return _row(seconds, invocations=invocations, tasks=CALLS,
                tasks_per_invocation=CALLS / invocations)  # fmt: skip


def lithops_map() -> dict:
    import lithops

    executor = lithops.FunctionExecutor(config=LITHOPS_CONFIG)
    try:
        executor.get_result(executor.map(noop, range(10)))  # warm-up
        began = time.perf_counter()
        results = executor.get_result(executor.map(noop, range(CALLS)))
        seconds = time.perf_counter() - began
    finally:
        executor.clean()
    assert list(results) == list(range(CALLS))
    return _row(seconds)


def process_pool() -> dict:
    with ProcessPoolExecutor(2) as executor:
        list(executor.map(noop, range(100)))  # warm-up
        began = time.perf_counter()
        results = list(executor.map(noop, range(CALLS)))
        seconds = time.perf_counter() - began
    assert results == list(range(CALLS))
    return _row(seconds, note="stdlib reference, chunksize=1")


PEERS = {
    "dask-lambda LambdaExecutor.map": dask_lambda_executor,
    "Lithops localhost map": lithops_map,
    "ProcessPoolExecutor(2).map": process_pool,
}
