"""The schedulers compared: context managers yielding what ``compute(scheduler=...)`` takes."""

from __future__ import annotations

import contextlib
import sys
import warnings

LITHOPS_CONFIG = {
    "lithops": {"backend": "localhost", "storage": "localhost", "log_level": "WARNING"},
    # Lithops' v1 localhost backend: ~100 calls/s here; its default v2 starts one process per
    # call (~5 calls/s), which would make the comparison meaningless.
    "localhost": {"version": 1, "runtime": sys.executable},
}


@contextlib.contextmanager
def dask_named(name: str):
    yield name


@contextlib.contextmanager
def distributed_local(workers: int = 2, processes: bool = True):
    from distributed import Client, LocalCluster

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with (
            LocalCluster(
                n_workers=workers,
                threads_per_worker=1,
                processes=processes,
                dashboard_address=None,
            ) as cluster,
            Client(cluster) as client,
        ):
            yield client.get


@contextlib.contextmanager
def dask_lambda_local(**cluster_kwargs):
    import cloudpickle

    from benchmarks import workloads
    from dask_lambda import LambdaCluster

    cloudpickle.register_pickle_by_value(workloads)
    with LambdaCluster(**cluster_kwargs) as cluster:
        yield cluster


@contextlib.contextmanager
def lithops_executor():
    """Lithops' concurrent.futures executor on its localhost backend, as a Dask scheduler."""
    from lithops.concurrent.futures import FunctionExecutor

    executor = FunctionExecutor(config=LITHOPS_CONFIG)
    try:
        yield executor
    finally:
        executor.shutdown(wait=True)


GRAPH_PEERS = {
    "dask sync": lambda: dask_named("sync"),
    "dask threads": lambda: dask_named("threads"),
    "dask processes": lambda: dask_named("processes"),
    "distributed LocalCluster(2)": distributed_local,
    "Lithops localhost (cf executor)": lithops_executor,
    "dask-lambda (local Lambda)": dask_lambda_local,
}
