"""A joblib backend, ``"lambda"``: ``joblib.Parallel`` (and scikit-learn's ``n_jobs``) on Lambda.

``import dask_lambda.joblib`` registers it (``import dask_lambda`` does too when joblib is
already imported)::

    import joblib
    import dask_lambda.joblib

    with joblib.parallel_config(backend="lambda"):      # the running LambdaCluster, or a new one
        search.fit(X, y)                                 # GridSearchCV(n_jobs=-1)

Each joblib batch (joblib's ``BatchedCalls``, whose size joblib tunes from the durations it
sees, as for loky) is one call of a :class:`~.executor.LambdaExecutor`, which batches the calls
queued at the same moment into shared invocations. ``n_jobs=-1`` means the cluster's
concurrency.
"""

from __future__ import annotations

from typing import Any

from joblib.parallel import AutoBatchingMixin, ParallelBackendBase, register_parallel_backend


class LambdaBackend(AutoBatchingMixin, ParallelBackendBase):
    """joblib's parallel backend on a :class:`~.cluster.LambdaCluster`.

    Parameters
    ----------
    cluster
        The cluster to run on: by default the most recently started running one, or a new
        ``LambdaCluster()`` (closed with the backend) when none runs.
    """

    supports_retrieve_callback = True
    supports_timeout = True
    default_n_jobs = -1

    def __init__(self, cluster=None, nesting_level: int | None = None, **kwargs: Any):
        super().__init__(nesting_level=nesting_level, **kwargs)
        self._cluster = cluster
        self._owned = None
        self._executor = None

    def _running_cluster(self):
        from .cluster import LambdaCluster, current_cluster

        if self._cluster is not None:
            return self._cluster
        if self._owned is not None:
            return self._owned
        try:
            return current_cluster()
        except RuntimeError:  # none running: one of our own, closed with the backend
            self._owned = LambdaCluster()
            return self._owned

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        concurrency = self._running_cluster().settings.max_concurrency
        if n_jobs is None or n_jobs < 0:
            return max(1, concurrency + 1 + (n_jobs or -1))
        return min(n_jobs, concurrency)

    def configure(self, n_jobs: int = 1, parallel=None, **backend_kwargs: Any) -> int:
        from .executor import LambdaExecutor

        n_jobs = self.effective_n_jobs(n_jobs)
        self.parallel = parallel
        if self._executor is None:
            self._executor = LambdaExecutor(cluster=self._running_cluster(), max_workers=n_jobs)
        return n_jobs

    def submit(self, func, callback=None):
        future = self._executor.submit(func)
        if callback is not None:
            future.add_done_callback(callback)
        return future

    def retrieve_result_callback(self, future):
        return future.result()

    def abort_everything(self, ensure_ready: bool = True) -> None:
        self.terminate()
        if ensure_ready:
            self.configure(n_jobs=self.parallel.n_jobs, parallel=self.parallel)

    def terminate(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
        if self._owned is not None:
            self._owned.close()
            self._owned = None


register_parallel_backend("lambda", LambdaBackend)
