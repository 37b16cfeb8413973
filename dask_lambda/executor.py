"""``LambdaExecutor``: the ``concurrent.futures`` interface on a Lambda function.

Calls submitted while invocations are in flight queue up; a dispatcher thread sends whatever is
queued when a concurrency slot frees, split evenly over the free slots (``max_tasks`` at most per
invocation), so a burst of ``submit`` or ``map`` calls costs a few invocations, not one each,
while a lone call is sent at once. Each call is one task of the same protocol the scheduler uses;
results above the inline limit come back through S3 and are deleted once read. The executor is
also a Dask get function, so ``scheduler=executor`` runs graphs with data kept remote.
"""

from __future__ import annotations

import itertools
import math
import queue
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future
from typing import Any

from dask._task_spec import Task

from . import batch as batches
from .cluster import LambdaCluster
from .exceptions import LambdaFunctionError, rebuild_exception
from .function.calls import run_chunk
from .function.protocol import BatchSpec

_STOP = object()


class LambdaExecutor(Executor):
    """A ``concurrent.futures.Executor`` whose calls run in AWS Lambda.

    Parameters
    ----------
    cluster
        The :class:`LambdaCluster` to use; by default the executor starts (and closes) its own.
    max_workers
        Invocations in flight at most; the cluster's ``max_concurrency`` by default.
    **cluster_kwargs
        Passed to :class:`LambdaCluster` when the executor starts its own.

    Examples
    --------
    >>> with LambdaExecutor() as ex:                                    # doctest: +SKIP
    ...     list(ex.map(pow, [2, 3], [5, 2]))
    [32, 9]
    """

    def __init__(
        self, cluster: LambdaCluster | None = None, max_workers: int | None = None, **cluster_kwargs
    ):
        self._owns_cluster = cluster is None
        self.cluster = cluster if cluster is not None else LambdaCluster(**cluster_kwargs)
        self._backend = self.cluster.backend
        self._max_workers = max_workers or self._backend.settings.max_concurrency
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._slots = threading.Condition()
        self._in_flight = 0
        self._shutdown = False
        self._lock = threading.Lock()
        self._counter = itertools.count()
        self._id = uuid.uuid4().hex[:16]
        self._prefix = f"{self._backend.prefix}/executor"
        self._dispatcher = threading.Thread(
            target=self._dispatch, daemon=True, name="dask-lambda-executor"
        )
        self._dispatcher.start()

    # -- concurrent.futures API -----------------------------------------------------------------
    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> Future:
        """Schedule ``fn(*args, **kwargs)`` in Lambda; return its Future."""
        return self._submit(Task(("call", next(self._counter)), fn, *args, **kwargs))

    def _submit(self, task: Task) -> Future:
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            future: Future = Future()
            self._queue.put((future, task))
        return future

    def map(
        self,
        fn: Callable,
        *iterables: Iterable,
        timeout: float | None = None,
        chunksize: int = 1,
    ) -> Iterator:
        """Like :meth:`concurrent.futures.Executor.map`; ``chunksize`` calls share one task."""
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1")
        if chunksize == 1:
            return super().map(fn, *iterables, timeout=timeout)
        chunks = chunked(zip(*iterables, strict=False), chunksize)
        futures = [self.submit(run_chunk, fn, chunk) for chunk in chunks]
        results = _results_in_order(futures, timeout)
        return itertools.chain.from_iterable(results)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop accepting calls; with ``wait``, block until queued and running calls are done."""
        with self._lock:
            if self._shutdown:
                already = True
            else:
                already, self._shutdown = False, True
                if cancel_futures:
                    self._cancel_queued()
                self._queue.put(_STOP)
        if wait and not already:
            self._dispatcher.join()

    def _cancel_queued(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not _STOP:
                item[0].cancel()

    @property
    def max_workers(self) -> int:
        """Invocations in flight at most."""
        return self._max_workers

    # -- Dask scheduler -------------------------------------------------------------------------
    def get(self, dsk, keys, **kwargs):
        """Dask get function (``scheduler=executor``): runs on the executor's cluster."""
        return self.cluster.get(dsk, keys, **kwargs)

    __call__ = get

    # -- dispatch -------------------------------------------------------------------------------
    def _dispatch(self) -> None:
        stopping = False
        pending: list = []
        while not (stopping and not pending):
            if not pending:
                item = self._queue.get()
                if item is _STOP:
                    stopping = True
                    continue
                pending.append(item)
            with self._slots:
                self._slots.wait_for(lambda: self._in_flight < self._max_workers)
                free = self._max_workers - self._in_flight
            while True:  # take everything queued by now
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stopping = True
                else:
                    pending.append(item)
            size = min(self._backend.settings.max_tasks, math.ceil(len(pending) / free))
            batch, pending = pending[:size], pending[size:]
            batch = [(f, t) for f, t in batch if f.set_running_or_notify_cancel()]
            if batch:
                with self._slots:
                    self._in_flight += 1
                self._backend.pool.submit(self._run, batch)
        with self._slots:
            self._slots.wait_for(lambda: self._in_flight == 0)
        try:
            self._backend.store.delete_prefix(f"{self._prefix}/{self._id}")
        finally:
            if self._owns_cluster:
                self.cluster.close()

    def _run(self, batch: list[tuple[Future, Task]]) -> None:
        try:
            self._invoke(batch)
        except BaseException as e:  # infrastructure failure: every call of the batch fails
            for future, _ in batch:
                if not future.done():
                    future.set_exception(e)
        finally:
            with self._slots:
                self._in_flight -= 1
                self._slots.notify_all()

    def _invoke(self, batch: list[tuple[Future, Task]]) -> None:
        try:
            spec_bytes = self._spec_bytes(batch)
        except Exception:
            batch = self._fail_unpicklable(batch)
            if not batch:
                return
            spec_bytes = self._spec_bytes(batch)
        keys = [task.key for _, task in batch]
        response = batches.invoke(
            self._backend, spec_bytes, keys, f"{self._prefix}/{self._id}", prefix=self._prefix
        )
        self._deliver(batch, response)

    def _spec_bytes(self, batch: list[tuple[Future, Task]]) -> bytes:
        keys = [task.key for _, task in batch]
        return batches.pickle_spec(BatchSpec(self._id, keys, [t for _, t in batch], keys))

    def _fail_unpicklable(self, batch: list[tuple[Future, Task]]) -> list[tuple[Future, Task]]:
        """Fail the calls that cannot be pickled (with pickle_spec's error); return the others."""
        picklable = []
        for call in batch:
            try:
                self._spec_bytes([call])
            except TypeError as e:
                call[0].set_exception(e)
            else:
                picklable.append(call)
        return picklable

    def _deliver(self, batch: list[tuple[Future, Task]], response: batches.BatchResponse) -> None:
        if response.fatal is not None:
            error = rebuild_exception(response.fatal)
            for future, _ in batch:
                future.set_exception(error)
            return
        store = self._backend.store
        spilled: list[str] = []
        outcomes: list[tuple[Future, bool, object]] = []  # (future, failed, value or exception)
        for index, ((future, _), result) in enumerate(zip(batch, response.results, strict=True)):
            if index in response.errors:
                outcomes.append((future, True, rebuild_exception(response.errors[index])))
            elif result.status != "ok":
                name = self._backend.function_name
                error = LambdaFunctionError(name, "MissingResult", result.status)
                outcomes.append((future, True, error))
            else:
                where = result.location()
                if result.where == "s3":
                    spilled.append(where.name)
                try:
                    outcomes.append((future, False, batches.fetch_value(store, where)[0]))
                except Exception as e:
                    outcomes.append((future, True, e))
        if spilled:  # before anyone sees a result, so nothing of a finished call is left in S3
            store.delete(spilled)
        for future, failed, outcome in outcomes:
            if failed:
                future.set_exception(outcome)
            else:
                future.set_result(outcome)

    def __repr__(self) -> str:
        return f"<LambdaExecutor max_workers={self._max_workers} on {self.cluster!r}>"


def chunked(iterable: Iterable, size: int) -> Iterator[list]:
    """Lists of ``size`` items (the last may be shorter)."""
    iterator = iter(iterable)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def _results_in_order(futures: list[Future], timeout: float | None) -> Iterator:
    import time

    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        for future in futures:
            left = None if deadline is None else deadline - time.monotonic()
            yield future.result(left)
    finally:
        for future in futures:
            future.cancel()
