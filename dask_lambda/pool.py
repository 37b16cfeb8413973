"""``LambdaPool``: ``multiprocessing.Pool``'s interface on a Lambda function.

Built on :class:`~dask_lambda.executor.LambdaExecutor`. The semantics follow
``multiprocessing.pool.Pool``: ``apply``/``map``/``starmap`` block, their ``_async`` forms return
:class:`AsyncResult` (``get``, ``wait``, ``ready``, ``successful``; ``callback`` and
``error_callback``), ``imap`` yields in order and ``imap_unordered`` as results arrive; ``close``
then ``join`` waits for the work, ``terminate`` drops what has not started, and leaving a ``with``
block terminates, as it does for multiprocessing. An ``initializer`` runs once per Lambda runtime
(the counterpart of once per worker process).
"""

from __future__ import annotations

import multiprocessing
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, wait
from typing import Any

from .cluster import LambdaCluster
from .executor import LambdaExecutor, chunked
from .function.calls import call, run_chunk


class AsyncResult:
    """The result of an ``*_async`` call, as in ``multiprocessing.pool.AsyncResult``."""

    def __init__(
        self,
        futures: list[Future],
        combine: Callable[[list], Any],
        callback=None,
        error_callback=None,
    ):
        self._futures = futures
        self._combine = combine
        self._outcome: Future = Future()
        self._callback, self._error_callback = callback, error_callback
        self._remaining = len(futures)
        self._lock = threading.Lock()
        if not futures:
            self._settle()
        for future in futures:
            future.add_done_callback(self._one_done)

    def _one_done(self, _: Future) -> None:
        with self._lock:
            self._remaining -= 1
            last = self._remaining == 0
        if last:
            self._settle()

    def _settle(self) -> None:
        try:
            value = self._combine([f.result() for f in self._futures])
        except BaseException as e:
            self._outcome.set_exception(e)
            if self._error_callback is not None:
                self._error_callback(e)
        else:
            if self._callback is not None:
                self._callback(value)
            self._outcome.set_result(value)

    def get(self, timeout: float | None = None) -> Any:
        """The result; raises the call's exception, or ``multiprocessing.TimeoutError``."""
        try:
            return self._outcome.result(timeout)
        except TimeoutError:
            if not self._outcome.done():
                raise multiprocessing.TimeoutError from None
            raise

    def wait(self, timeout: float | None = None) -> None:
        wait([self._outcome], timeout)

    def ready(self) -> bool:
        return self._outcome.done()

    def successful(self) -> bool:
        if not self.ready():
            raise ValueError(f"{self!r} not ready")
        return self._outcome.exception() is None


class LambdaPool:
    """A process pool whose workers are AWS Lambda invocations.

    Parameters
    ----------
    processes
        Invocations in flight at most (the cluster's ``max_concurrency`` by default).
    initializer, initargs
        Run ``initializer(*initargs)`` once in every Lambda runtime before its first call.
    cluster
        The :class:`LambdaCluster` to use; by default the pool starts (and closes) its own.
    **cluster_kwargs
        Passed to :class:`LambdaCluster` when the pool starts its own.

    Examples
    --------
    >>> with LambdaPool() as pool:                                      # doctest: +SKIP
    ...     pool.map(abs, [-1, -2, 3])
    [1, 2, 3]
    """

    def __init__(
        self,
        processes: int | None = None,
        initializer: Callable | None = None,
        initargs: tuple = (),
        cluster: LambdaCluster | None = None,
        **cluster_kwargs: Any,
    ):
        if processes is not None and processes < 1:
            raise ValueError("Number of processes must be at least 1")
        self._executor = LambdaExecutor(cluster=cluster, max_workers=processes, **cluster_kwargs)
        self._initializer, self._initargs = initializer, tuple(initargs)
        self._token = uuid.uuid4().hex
        self._state = "RUN"
        self._outstanding: set[Future] = set()

    @property
    def cluster(self) -> LambdaCluster:
        return self._executor.cluster

    def _check_running(self) -> None:
        if self._state != "RUN":
            raise ValueError("Pool not running")

    def _submit(self, func: Callable, args: tuple = (), kwds: dict | None = None) -> Future:
        self._check_running()
        if self._initializer is None:
            future = self._executor.submit(func, *args, **(kwds or {}))
        else:
            future = self._executor.submit(
                call,
                func,
                tuple(args),
                dict(kwds or {}),
                self._initializer,
                self._initargs,
                self._token,
            )
        self._outstanding.add(future)
        future.add_done_callback(self._outstanding.discard)
        return future

    def _submit_chunks(
        self, func: Callable, iterable: Iterable, chunksize: int | None, star: bool
    ) -> list[Future]:
        calls = [tuple(args) if star else (args,) for args in iterable]
        if chunksize is None:
            chunksize = max(1, -(-len(calls) // (4 * self._executor.max_workers)))
        return [self._submit(run_chunk, (func, chunk)) for chunk in chunked(calls, chunksize)]

    # -- apply ----------------------------------------------------------------------------------
    def apply(self, func: Callable, args: tuple = (), kwds: dict | None = None) -> Any:
        """``func(*args, **kwds)`` in Lambda; blocks until done."""
        return self.apply_async(func, args, kwds).get()

    def apply_async(
        self,
        func: Callable,
        args: tuple = (),
        kwds: dict | None = None,
        callback=None,
        error_callback=None,
    ) -> AsyncResult:
        return AsyncResult(
            [self._submit(func, args, kwds)], lambda r: r[0], callback, error_callback
        )

    # -- map ------------------------------------------------------------------------------------
    def map(self, func: Callable, iterable: Iterable, chunksize: int | None = None) -> list:
        """``list(map(func, iterable))`` in Lambda; blocks until done."""
        return self.map_async(func, iterable, chunksize).get()

    def map_async(
        self,
        func: Callable,
        iterable: Iterable,
        chunksize: int | None = None,
        callback=None,
        error_callback=None,
    ) -> AsyncResult:
        return self._map_async(func, iterable, chunksize, callback, error_callback, star=False)

    def _map_async(self, func, iterable, chunksize, callback, error_callback, star: bool):
        futures = self._submit_chunks(func, iterable, chunksize, star=star)
        return AsyncResult(futures, _concat, callback, error_callback)

    def starmap(self, func: Callable, iterable: Iterable, chunksize: int | None = None) -> list:
        """``[func(*args) for args in iterable]`` in Lambda; blocks until done."""
        return self.starmap_async(func, iterable, chunksize).get()

    def starmap_async(
        self,
        func: Callable,
        iterable: Iterable,
        chunksize: int | None = None,
        callback=None,
        error_callback=None,
    ) -> AsyncResult:
        return self._map_async(func, iterable, chunksize, callback, error_callback, star=True)

    def imap(self, func: Callable, iterable: Iterable, chunksize: int = 1) -> Iterator:
        """Results in order, each as soon as it and those before it are done."""
        futures = self._submit_chunks(func, iterable, chunksize, star=False)
        return (value for future in futures for value in future.result())

    def imap_unordered(self, func: Callable, iterable: Iterable, chunksize: int = 1) -> Iterator:
        """Results in the order they finish."""
        futures = set(self._submit_chunks(func, iterable, chunksize, star=False))

        def results() -> Iterator:
            pending = futures
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    yield from future.result()

        return results()

    # -- lifecycle ------------------------------------------------------------------------------
    def close(self) -> None:
        """Accept no more work; running and queued calls complete."""
        if self._state == "RUN":
            self._state = "CLOSE"

    def terminate(self) -> None:
        """Cancel calls that have not started and stop; an owned cluster is closed."""
        self._state = "TERMINATE"
        for future in list(self._outstanding):
            future.cancel()
        self._executor.shutdown(wait=True, cancel_futures=True)

    def join(self) -> None:
        """Wait for all calls; ``close`` or ``terminate`` first."""
        if self._state == "RUN":
            raise ValueError("Pool is still running")
        wait(list(self._outstanding))
        self._executor.shutdown(wait=True)

    def __enter__(self) -> LambdaPool:
        self._check_running()
        return self

    def __exit__(self, *exc: object) -> None:
        self.terminate()

    def __repr__(self) -> str:
        return f"<LambdaPool state={self._state} processes={self._executor.max_workers}>"


def _concat(chunks: list[list]) -> list:
    return [value for chunk in chunks for value in chunk]
