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

    started = time.perf_counter()
    with dask_lambda_local() as cluster, LambdaExecutor(cluster=cluster) as executor:
        startup = time.perf_counter() - started
        assert list(executor.map(noop, range(100))) == list(range(100))  # warm-up
        before = cluster.invoker.stats.invocations
        began = time.perf_counter()
        results = list(executor.map(noop, range(CALLS)))
        seconds = time.perf_counter() - began
        invocations = cluster.invoker.stats.invocations - before
    assert results == list(range(CALLS))
    return _row(seconds, invocations=invocations, tasks=CALLS,
                tasks_per_invocation=CALLS / invocations, startup_seconds=startup)  # fmt: skip


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


# What dask-lambda's executor puts in one invocation here (lambda.batch.max-tasks caps it): the
# process pool gets the same batching, in a row of its own, so the ratio compares like with like.
BATCH = 1000


def process_pool(chunksize: int = 1) -> dict:
    with ProcessPoolExecutor(2) as executor:
        list(executor.map(noop, range(100)))  # warm-up
        began = time.perf_counter()
        results = list(executor.map(noop, range(CALLS), chunksize=chunksize))
        seconds = time.perf_counter() - began
    assert results == list(range(CALLS))
    return _row(seconds, note=f"stdlib reference, chunksize={chunksize}")


PEERS = {
    "dask-lambda LambdaExecutor.map": dask_lambda_executor,
    "Lithops localhost map": lithops_map,
    "ProcessPoolExecutor(2).map, chunksize=1": process_pool,
    f"ProcessPoolExecutor(2).map, chunksize={BATCH}": lambda: process_pool(BATCH),
}
