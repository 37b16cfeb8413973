"""The schedulers compared: context managers yielding what ``compute(scheduler=...)`` takes."""

from __future__ import annotations

import contextlib
import warnings


@contextlib.contextmanager
def dask_named(name: str):
    yield name


@contextlib.contextmanager
def distributed_local(workers: int = 2):
    from distributed import Client, LocalCluster

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with (
            LocalCluster(
                n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None
            ) as cluster,
            Client(cluster) as client,
        ):
            yield client.get


@contextlib.contextmanager
def dask_lambda_local():
    import cloudpickle

    from benchmarks import workloads
    from dask_lambda import LambdaCluster

    cloudpickle.register_pickle_by_value(workloads)
    with LambdaCluster() as cluster:
        yield cluster


PEERS = {
    "dask sync": lambda: dask_named("sync"),
    "dask threads": lambda: dask_named("threads"),
    "dask processes": lambda: dask_named("processes"),
    "distributed LocalCluster(2)": distributed_local,
    "dask-lambda (local Lambda)": dask_lambda_local,
}
