"""``LambdaExecutor``: the ``concurrent.futures`` interface on a Lambda function.

Calls submitted while invocations are in flight queue up; a dispatcher thread sends whatever is
queued when a concurrency slot frees, split evenly over the free slots (``max_tasks`` at most per
invocation), so a burst of ``submit`` or ``map`` calls costs a few invocations, not one each,
while a lone call is sent at once. Each call is one task of the same protocol the scheduler uses.

Results stay where the function left them (inline bytes, or an S3 object for a large one) until
someone asks: :class:`LambdaFuture` downloads its value on the first ``result()``. Each future
holds its object with a claim of the cluster's ledger (:mod:`.ownership`), so the object goes
when the future is garbage collected and nothing else (a queued call reading it) holds it, or
when the cluster closes. A future passed as an argument to ``submit`` (also inside lists, tuples
and dicts) travels by reference: the call waits for it, holds it until the call has finished,
and reads the value in Lambda, so it never crosses the client. Keys are unique per process, so
futures of several executors on one cluster mix freely; one of another cluster is refused.
:meth:`scatter` uploads data once for many calls; :meth:`gather` downloads many results in
parallel. The executor counts the bytes it moves (:attr:`LambdaExecutor.bytes_to_client`,
``bytes_from_client``). The executor is also a Dask get function, so ``scheduler=executor`` runs
graphs with data kept remote.
"""

from __future__ import annotations

import itertools
import math
import queue
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any

from dask._task_spec import Task, TaskRef, parse_input

from .attempts import BatchPolicy, run_batch
from .cluster import LambdaCluster
from .exceptions import (
    DataReleasedError,
    ForeignDataError,
    LambdaFunctionError,
    deployment_hint,
    rebuild_exception,
)
from .function import values
from .function.calls import run_chunk
from .function.protocol import BatchResponse, BatchSpec, Inline, Stored
from .function.storage import compute_folder, object_name
from .ownership import Claim, Ledger, new_key
from .remote.invocation import fetch_value, pickle_spec, send_batch
from .remote.invoker import InvokeStats


class _Remote:
    """A finished call's value, still where the function left it."""

    __slots__ = ("location",)

    def __init__(self, location: Inline | Stored):
        self.location = location


class LambdaFuture(Future):
    """A :class:`concurrent.futures.Future` whose value stays remote until ``result()``.

    Passed to :meth:`LambdaExecutor.submit` it is read in Lambda, by reference. Its S3 object
    (if the value was large) is held by the future (:mod:`.ownership`) and deleted once the
    future is garbage collected and nothing else holds it.
    """

    def __init__(self, executor: LambdaExecutor, key):
        super().__init__()
        self.key = key
        self.ledger: Ledger = executor._backend.ledger
        self._executor = weakref.ref(executor)
        self._fetch_lock = threading.Lock()
        self._location: Inline | Stored | None = None
        self._claim: Claim | None = None

    @property
    def location(self) -> Inline | Stored | None:
        """Where the value is, once the call succeeded (None while it runs or if it failed)."""
        if self._claim is not None and not self._claim.alive:
            raise DataReleasedError(
                f"The value of future {self.key!r} was released by {self._claim.why_released()}"
            )
        return self._location

    def _hold(self, location: Inline | Stored) -> None:
        """Succeed with the value at ``location``, held by this future."""
        self._location = location
        self._claim = self.ledger.claim([location], lasting=True)
        self.set_result(_Remote(location))

    def result(self, timeout: float | None = None) -> Any:
        value = super().result(timeout)
        if not isinstance(value, _Remote):
            return value
        with self._fetch_lock:
            if isinstance(self._result, _Remote):
                value, downloaded = fetch_value(self.ledger.store, self.location)
                executor = self._executor()
                if executor is not None:
                    executor._count(to_client=downloaded)
                self._result = value
            return self._result


_STOP = object()
_WAKE = object()  # a call waiting for its arguments was settled without being queued


class LambdaExecutor(Executor):
    """A ``concurrent.futures.Executor`` whose calls run in AWS Lambda.

    Parameters
    ----------
    cluster
        The :class:`LambdaCluster` to use; by default the executor starts (and closes) its own.
    max_workers
        Invocations in flight at most; the cluster's ``max_concurrency`` by default.
    retries
        Times a call whose own code raised runs again (as distributed's ``submit(retries=)``);
        ``lambda.task-retries`` by default. Failures of the infrastructure are retried, a crash
        of a batch of calls split and a call out of memory escalated as for ``compute``
        (:mod:`.attempts`).
    **cluster_kwargs
        Passed to :class:`LambdaCluster` when the executor starts its own.

    Examples
    --------
    >>> with LambdaExecutor() as ex:                                    # doctest: +SKIP
    ...     list(ex.map(pow, [2, 3], [5, 2]))
    [32, 9]
    """

    def __init__(
        self,
        cluster: LambdaCluster | None = None,
        max_workers: int | None = None,
        retries: int | None = None,
        **cluster_kwargs,
    ):
        self._owns_cluster = cluster is None
        self.cluster = cluster if cluster is not None else LambdaCluster(**cluster_kwargs)
        self._backend = self.cluster.backend
        self._max_workers = max_workers or self._backend.settings.max_concurrency
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._slots = threading.Condition()
        self._in_flight = 0
        self._shutdown = False
        self._cancelling = False
        self._waiting = 0  # calls waiting for their arguments to finish
        self._lock = threading.Lock()
        self._ledger = self._backend.ledger
        self._id = self._ledger.new_id()
        self._bytes_lock = threading.Lock()
        self.bytes_to_client = 0  # results downloaded
        self.bytes_from_client = 0  # requests, scattered data and spilled requests uploaded
        self._prefix = f"{self._backend.prefix}/executor"
        self._folder = compute_folder(self._prefix, self._id)
        settings = self._backend.settings
        budget = int(settings.task_retries if retries is None else retries)
        self._retries: dict = {}  # the calls submitted with retries= of their own
        self._policy = BatchPolicy(
            retries_of=lambda key: self._retries.get(key, budget),
            next_tier=self._backend.next_tier if settings.escalate_memory else None,
            isolate=True,
        )
        self._dispatcher = threading.Thread(
            target=self._dispatch, daemon=True, name="dask-lambda-executor"
        )
        self._dispatcher.start()

    # -- concurrent.futures API -----------------------------------------------------------------
    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> LambdaFuture:
        """Schedule ``fn(*args, **kwargs)`` in Lambda; return its future.

        :class:`LambdaFuture` arguments (also inside lists, tuples and dicts) are passed by
        reference: the call runs once they have succeeded, and fails with their error if one
        failed.
        """
        return self.submit_as(None, fn, *args, **kwargs)

    def submit_as(
        self, key: Any, fn: Callable, /, *args: Any, retries: int | None = None, **kwargs: Any
    ) -> LambdaFuture:
        """:meth:`submit` with the future named ``key`` (a new one if None), and ``retries``
        for this call instead of the executor's (as ``distributed.Client.submit``)."""
        task_key = new_key("call")  # unique, whatever the future's name
        needed: dict = {}
        args, kwargs = _by_reference((args, kwargs), needed)
        for dependency in needed.values():  # before anything is queued
            self._check_ours(dependency)
        if needed:  # references inside containers become graph nodes that resolve them
            args = tuple(parse_input(a) for a in args)
            kwargs = {k: parse_input(v) for k, v in kwargs.items()}
        if retries is not None:
            self._retries[task_key] = int(retries)
        task = Task(task_key, fn, *args, **kwargs)
        future = self._submit(task, task_key if key is None else key, needed)
        if retries is not None:
            future.add_done_callback(lambda _: self._retries.pop(task_key, None))
        return future

    def _submit(self, task: Task, key=None, needed: dict | None = None) -> LambdaFuture:
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            future = LambdaFuture(self, key if key is not None else task.key)
            if needed:
                self._waiting += 1  # shutdown(wait=True) waits for it too
        if not needed:
            self._queue.put((future, task, {}, None))
            return future
        waiting = [len(needed)]
        lock = threading.Lock()

        def ready(_done: Future) -> None:
            with lock:
                waiting[0] -= 1
                if waiting[0]:
                    return
            try:
                item = self._queued_when_ready(future, task, needed)
            except BaseException as e:
                future.set_exception(e)
                item = _WAKE
            with self._lock:  # both at once, as the dispatcher sees them (see _done)
                self._queue.put(item)
                self._waiting -= 1

        for dependency in needed.values():
            dependency.add_done_callback(ready)
        return future

    def scatter(self, data: Any) -> Any:
        """Upload ``data`` once; return a future (a list or dict of them for a list or dict)
        to pass to :meth:`submit` as often as needed."""
        if isinstance(data, dict):
            return {k: self.scatter(v) for k, v in data.items()}
        if isinstance(data, (list, tuple)):
            return type(data)(self.scatter(v) for v in data)
        key = new_key("scatter")
        pickled = values.dumps(data)
        self._count(from_client=len(pickled))
        future = LambdaFuture(self, key)
        future.set_running_or_notify_cancel()
        settings = self._backend.settings
        location = values.place(pickled, object_name(self._prefix, self._id, key),
                                self._backend.store, settings.inline_limit,
                                settings.max_object_bytes, "The scattered value")  # fmt: skip
        future._hold(location)
        return future

    def _check_ours(self, future: LambdaFuture) -> None:
        """Refuse a released future, then one of another cluster (its objects are that
        cluster's)."""
        future.location  # noqa: B018 - raises if released
        if future.ledger is not self._ledger:
            raise ForeignDataError(
                f"Future {future.key!r} belongs to {future.ledger.owner}, not to"
                f" {self._ledger.owner}: pass its value (future.result()) or use an executor on"
                " that cluster."
            )

    def gather(self, futures: Any) -> Any:
        """The values of ``futures`` (a future, or lists, tuples, sets and dicts of them,
        nested), downloaded in parallel; of an iterator (such as :meth:`map`'s), a list."""
        if isinstance(futures, Iterator):
            futures = list(futures)
        found: list[Future] = []
        _collect(futures, found)
        if len(found) > 1:
            with ThreadPoolExecutor(min(16, len(found))) as pool:
                list(pool.map(lambda f: f.exception() or f.result(), found))
        return _replace_futures(futures)

    def _count(self, to_client: int = 0, from_client: int = 0) -> None:
        with self._bytes_lock:
            self.bytes_to_client += to_client
            self.bytes_from_client += from_client

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

    def _queued_when_ready(self, future: LambdaFuture, task: Task, needed: dict):
        """What to queue for a call whose arguments have all finished: the call, holding them
        until it has finished, or :data:`_WAKE` if it failed (or was cancelled) without running."""
        if self._cancelling:
            future.cancel()
            return _WAKE
        failed = next((f for f in needed.values() if f.cancelled() or f.exception()), None)
        if failed is not None:
            if future.set_running_or_notify_cancel():
                future.set_exception(
                    failed.exception() if not failed.cancelled() else RuntimeError(
                        f"an argument of this call ({failed.key!r}) was cancelled"
                    )
                )  # fmt: skip
            return _WAKE
        try:
            inputs = {dep: f.location for dep, f in needed.items()}
        except DataReleasedError as e:
            if future.set_running_or_notify_cancel():
                future.set_exception(e)
            return _WAKE
        # Held until the call has finished, whatever happens to the futures meanwhile.
        return (future, task, inputs, self._ledger.claim(inputs.values()))

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop accepting calls; with ``wait``, block until queued and running calls are done."""
        with self._lock:
            if self._shutdown:
                already = True
            else:
                already, self._shutdown = False, True
                if cancel_futures:
                    self._cancelling = True
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
            if item is not _STOP and item is not _WAKE:
                item[0].cancel()
                if item[3] is not None:
                    item[3].release("a cancelled call")

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
        while not (stopping and not pending and self._done()):
            if not pending:
                item = self._queue.get()
                if item is _STOP:
                    stopping = True
                if item is _STOP or item is _WAKE:
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
                elif item is not _WAKE:
                    pending.append(item)
            size = min(self._backend.settings.max_tasks, math.ceil(len(pending) / free))
            batch, pending = pending[:size], pending[size:]
            batch = _running(batch)
            if batch:
                with self._slots:
                    self._in_flight += 1
                self._backend.pool.submit(self._run, batch)
            batch = item = None  # the futures' lifetime is their holders', not this loop's
        with self._slots:
            self._slots.wait_for(lambda: self._in_flight == 0)
        try:  # what no future holds any more; held results stay readable after shutdown
            self._ledger.sweep(self._folder)
        finally:
            if self._owns_cluster:
                self.cluster.close()

    def _done(self) -> bool:
        """Nothing queued, and no call still waiting for its arguments (after shutdown)."""
        with self._lock:
            return not self._waiting and self._queue.empty()

    def _run(self, batch: list[tuple[LambdaFuture, Task, dict, Claim | None]]) -> None:
        try:
            self._invoke(batch)
        except BaseException as e:  # infrastructure failure: every call of the batch fails
            for future, *_ in batch:
                if not future.done():
                    future.set_exception(e)
        finally:
            for *_, claim in batch:
                if claim is not None:
                    claim.release("the end of the call")
            with self._slots:
                self._in_flight -= 1
                self._slots.notify_all()

    def _invoke(self, batch: list[tuple[LambdaFuture, Task, dict, Claim | None]]) -> None:
        try:
            whole = self._spec(batch)
            spec_bytes = pickle_spec(whole)
        except Exception:
            batch = self._fail_unpicklable(batch)
            if not batch:
                return
            whole = self._spec(batch)
            spec_bytes = pickle_spec(whole)
        stats = InvokeStats()

        def send(spec: BatchSpec, tier: int | None, split: bool, confirm_memory: bool):
            pickled = spec_bytes if spec is whole else pickle_spec(spec)
            return send_batch(self._backend, pickled, spec.keys, self._folder, stats,
                              prefix=self._prefix, split=split, memory_tier=tier,
                              confirm_memory=confirm_memory)  # fmt: skip

        try:
            response = run_batch(whole, send, self._policy, stats)
        finally:
            self._count(to_client=stats.response_bytes, from_client=stats.request_bytes)
        self._deliver(batch, response)

    def _spec(self, batch: list[tuple[LambdaFuture, Task, dict, Claim | None]]) -> BatchSpec:
        keys = [call[1].key for call in batch]
        inputs = {k: where for call in batch for k, where in call[2].items()}
        return BatchSpec(self._id, keys, [call[1] for call in batch], keys, inputs)

    def _fail_unpicklable(self, batch: list) -> list:
        """Fail the calls that cannot be pickled (with pickle_spec's error); return the others."""
        picklable = []
        for call in batch:
            try:
                pickle_spec(self._spec([call]))
            except TypeError as e:
                call[0].set_exception(e)
            else:
                picklable.append(call)
        return picklable

    def _deliver(self, batch: list, response: BatchResponse) -> None:
        if response.fatal is not None:
            error = self._rebuilt(response.fatal)
            for future, *_ in batch:
                future.set_exception(error)
            return
        for index, ((future, *_), result) in enumerate(zip(batch, response.results, strict=True)):
            if index in response.errors:
                future.set_exception(self._rebuilt(response.errors[index]))
            elif result.status != "ok":
                name = self._backend.function_name
                future.set_exception(LambdaFunctionError(name, "MissingResult", result.status))
            else:
                future._hold(result.location())

    def _rebuilt(self, error: dict) -> BaseException:
        """The call's exception, with what to deploy or grant when it shows that is missing."""
        exc = rebuild_exception(error)
        hint = deployment_hint(exc, self._backend.function_name, self._backend.deployed_by_cluster)
        if hint:
            exc.add_note(hint)
        return exc

    def __repr__(self) -> str:
        return f"<LambdaExecutor max_workers={self._max_workers} on {self.cluster!r}>"


def _running(batch: list) -> list:
    """The calls of ``batch`` not cancelled, now running; a cancelled one's hold is given up."""
    running = []
    for future, task, inputs, claim in batch:
        if future.set_running_or_notify_cancel():
            running.append((future, task, inputs, claim))
        elif claim is not None:
            claim.release("a cancelled call")
    return running


def _by_reference(value: Any, needed: dict) -> Any:
    """``value`` with each :class:`LambdaFuture` (in lists, tuples, dicts) replaced by a
    reference to its key, recorded in ``needed``."""
    if isinstance(value, LambdaFuture):
        needed[value.key] = value
        return TaskRef(value.key)
    if isinstance(value, list):
        return [_by_reference(v, needed) for v in value]
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return tuple(_by_reference(v, needed) for v in value)
    if isinstance(value, dict):
        return {k: _by_reference(v, needed) for k, v in value.items()}
    return value


def _collect(value: Any, found: list) -> None:
    if isinstance(value, Future):
        found.append(value)
    elif isinstance(value, dict):
        for item in value.values():
            _collect(item, found)
    elif isinstance(value, (list, tuple, set, frozenset)):
        for item in value:
            _collect(item, found)


def _replace_futures(value: Any) -> Any:
    if isinstance(value, Future):
        return value.result()
    if isinstance(value, dict):
        return {k: _replace_futures(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return type(value)(_replace_futures(v) for v in value)
    return value


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
