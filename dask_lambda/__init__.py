"""Run Dask graphs on AWS Lambda.

``import dask_lambda`` registers ``scheduler="lambda"`` (the most recently started
:class:`LambdaCluster`) and is cheap: the client classes load on first use, so the Lambda-side
handler, which imports this package, pulls in none of them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

__all__ = [
    "LambdaCluster",
    "LambdaExecutor",
    "LambdaPool",
    "Client",
    "as_completed",
    "wait",
    "MissingPackagesWarning",
    "LambdaFunctionError",
    "VersionMismatchError",
    "NoActiveClusterError",
    "IntegrityError",
    "MissingDataError",
    "DataReleasedError",
    "ForeignDataError",
    "current_cluster",
    "__version__",
]

_LAZY = {
    "LambdaCluster": "cluster",
    "current_cluster": "cluster",
    "LambdaExecutor": "executor",
    "LambdaPool": "pool",
    "Client": "client",
    "as_completed": "client",
    "wait": "client",
    "MissingPackagesWarning": "packages",
    "LambdaFunctionError": "exceptions",
    "VersionMismatchError": "exceptions",
    "NoActiveClusterError": "exceptions",
    "IntegrityError": "function.protocol",
    "MissingDataError": "function.protocol",
    "DataReleasedError": "exceptions",
    "ForeignDataError": "exceptions",
}

if TYPE_CHECKING:
    from .client import Client, as_completed, wait
    from .cluster import LambdaCluster, current_cluster
    from .exceptions import (
        DataReleasedError,
        ForeignDataError,
        LambdaFunctionError,
        NoActiveClusterError,
        VersionMismatchError,
    )
    from .executor import LambdaExecutor
    from .function.protocol import IntegrityError, MissingDataError
    from .packages import MissingPackagesWarning
    from .pool import LambdaPool


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'dask_lambda' has no attribute {name!r}")


def _lambda_get(dsk, keys, **kwargs):
    """``scheduler="lambda"``: run on the most recently started LambdaCluster."""
    from .cluster import current_cluster

    return current_cluster().get(dsk, keys, **kwargs)


def _lambda_persist(collections, **kwargs):
    """``x.persist(scheduler="lambda")``: dask's persist protocol (a ``persist`` attribute on
    the scheduler) keeps the values in the cloud, as ``scheduler=cluster`` does."""
    from .cluster import current_cluster

    return current_cluster().persist(collections, **kwargs)


_lambda_get.persist = _lambda_persist
NO_SCHEDULER_ENV = "DASK_LAMBDA_NO_SCHEDULER"  # set for a process that registers no scheduler


def _register() -> None:
    import os
    import sys

    if os.environ.get("LAMBDA_TASK_ROOT"):
        # Inside Lambda there is no client to register for, and dependencies deployed on S3 are
        # not importable until dask_lambda.function has mounted them.
        return
    if os.environ.get(NO_SCHEDULER_ENV):  # the local Lambda's own process: it runs no computes,
        return  # and not importing dask is a third of its start-up

    base = sys.modules.get("dask.base")
    if base is None:  # dask not imported yet: register when it is (cheap either way)
        import dask.base as base
    base.named_schedulers.setdefault("lambda", _lambda_get)
    if "joblib" in sys.modules:  # joblib's backend "lambda"; else import dask_lambda.joblib
        from . import joblib  # noqa: F401


_register()
