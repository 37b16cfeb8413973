"""A ``distributed.Client``-shaped front to a :class:`~.cluster.LambdaCluster`.

Code written for ``dask.distributed`` runs with its ``Client(...)`` line changed: ``submit``
(``key=``, ``pure=``, ``retries=``), ``map`` over several iterables returning futures,
``gather`` keeping the shape it is given, ``scatter``, ``compute`` and ``persist``, ``cancel``,
and this module's :func:`as_completed` and :func:`wait`. The client becomes dask's default
scheduler, as distributed's does, so ``.compute()`` and ``dask.persist(...)`` run on Lambda too.
Calls go through a :class:`~.executor.LambdaExecutor` (batched into invocations, results kept
remote until gathered); futures are :class:`~.executor.LambdaFuture`, also
``concurrent.futures`` futures (``done``, ``exception``, ``add_done_callback``, ``cancel``).
"""

from __future__ import annotations

import concurrent.futures
import threading
import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import dask
from dask.base import tokenize
from dask.utils import funcname

from .executor import LambdaExecutor, LambdaFuture, _collect

__all__ = ["Client", "as_completed", "wait"]

# distributed's placement options: there are no workers to place on.
_NO_WORKERS = ("workers", "allow_other_workers", "actor", "actors", "resources")
_IGNORED = ("priority", "fifo_timeout")


class Client:
    """Futures on AWS Lambda, called as ``distributed.Client`` is.

    Parameters
    ----------
    cluster
        The :class:`LambdaCluster` to use; by default the client starts (and closes) its own
        with ``cluster_kwargs``.
    set_as_default
        Make the cluster dask's default scheduler while the client is open (as distributed).
    **cluster_kwargs
        Passed to :class:`LambdaCluster` when the client starts its own.

    Examples
    --------
    >>> with Client() as client:                                        # doctest: +SKIP
    ...     futures = client.map(pow, [2, 3], [5, 2])
    ...     client.gather(futures)
    [32, 9]
    """

    def __init__(self, cluster=None, set_as_default: bool = True, **cluster_kwargs: Any):
        self.executor = LambdaExecutor(cluster=cluster, **cluster_kwargs)
        self.cluster = self.executor.cluster
        self._pure: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
        self._lock = threading.Lock()
        self._computing = concurrent.futures.ThreadPoolExecutor(
            4, thread_name_prefix="dask-lambda-client-compute"
        )
        self._previous_scheduler = None
        self._set_as_default = set_as_default
        if set_as_default:
            self._previous_scheduler = dask.config.get("scheduler", None)
            dask.config.set(scheduler=self.cluster)
        self.status = "running"

    # -- futures --------------------------------------------------------------------------------
    def submit(
        self,
        func: Callable,
        *args: Any,
        key: str | None = None,
        pure: bool = True,
        retries: int | None = None,
        **kwargs: Any,
    ) -> LambdaFuture:
        """Run ``func(*args, **kwargs)`` in Lambda; return its future.

        With ``pure`` (the default, as distributed) a call with the same function and
        arguments as one whose future is still referenced returns that future; ``key`` names
        the future (and dedupes the same way); ``retries`` reruns a call whose code raised.
        Futures among the arguments are passed by reference.
        """
        _check_placement(kwargs)
        if key is None:
            token = tokenize(func, args, kwargs) if pure else uuid.uuid4().hex
            key = f"{funcname(func)}-{token}"
        with self._lock:  # a key named twice is one future (an impure key is never reused)
            known = self._pure.get(key)
            if known is not None and not known.cancelled():
                return known
            future = self.executor.submit_as(key, func, *args, retries=retries, **kwargs)
            self._pure[key] = future
        return future

    def map(
        self,
        func: Callable,
        *iterables: Iterable,
        key: str | list[str] | None = None,
        pure: bool = True,
        retries: int | None = None,
        **kwargs: Any,
    ) -> list[LambdaFuture]:
        """A future per element of ``zip(*iterables)`` (``func(*elements, **kwargs)``).

        ``key``: a list of keys, one per call, or a prefix for them.
        """
        _check_placement(kwargs)
        calls = list(zip(*iterables, strict=False))
        if isinstance(key, (list, tuple)):
            if len(key) != len(calls):
                raise ValueError(f"map got {len(key)} keys for {len(calls)} calls")
            keys = list(key)
        else:
            prefix = key or funcname(func)
            tokens = (tokenize(func, c, kwargs) if pure else uuid.uuid4().hex for c in calls)
            keys = [f"{prefix}-{token}" for token in tokens]
        return [
            self.submit(func, *call, key=k, pure=pure, retries=retries, **kwargs)
            for call, k in zip(calls, keys, strict=True)
        ]

    def gather(self, futures: Any, errors: str = "raise") -> Any:
        """The values of ``futures``, in the shape given: a future, or lists, tuples, sets and
        dicts of them, nested; an iterator gives an iterator. ``errors="skip"`` leaves out
        the futures that failed (from a list)."""
        if errors not in ("raise", "skip"):
            raise ValueError(f"errors must be 'raise' or 'skip', not {errors!r}")
        if isinstance(futures, Iterator):
            return (self.gather(future, errors) for future in futures)
        if errors == "skip" and isinstance(futures, (list, tuple)):
            done = [f for f in futures if not _failed(f)]
            return type(futures)(self.executor.gather(done))
        return self.executor.gather(futures)

    def scatter(self, data: Any, **_placement: Any) -> Any:
        """Upload ``data`` once (a future; lists and dicts of them for lists and dicts)."""
        return self.executor.scatter(data)

    def cancel(self, futures: Any) -> None:
        """Cancel the futures that have not started running."""
        found: list = []
        _collect(futures, found)
        for future in found:
            future.cancel()

    # -- collections ----------------------------------------------------------------------------
    def compute(self, collections: Any, sync: bool = False, **kwargs: Any) -> Any:
        """Compute dask collections on the cluster in the background: a future per collection
        (a list for a list), or with ``sync`` the results."""
        single = not isinstance(collections, (list, tuple))
        items = [collections] if single else list(collections)
        futures = [
            self._computing.submit(lambda c=c: dask.compute(c, scheduler=self.cluster, **kwargs)[0])
            for c in items
        ]
        if sync:
            values = [future.result() for future in futures]
            return values[0] if single else values
        return futures[0] if single else futures

    def persist(self, collections: Any, **kwargs: Any) -> Any:
        """Collections whose results stay in the cluster's S3 (:meth:`LambdaCluster.persist`)."""
        return self.cluster.persist(collections, **kwargs)

    # -- lifecycle ------------------------------------------------------------------------------
    def close(self) -> None:
        """Wait for running calls, stop the executor (and the cluster it started), and give
        dask back the scheduler it had."""
        if self.status == "closed":
            return
        self.status = "closed"
        self._computing.shutdown(wait=True)
        self.executor.shutdown(wait=True)
        if self._set_as_default and dask.config.get("scheduler", None) is self.cluster:
            dask.config.set(scheduler=self._previous_scheduler)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<dask_lambda.Client {self.status}: {self.cluster!r}>"


def _check_placement(kwargs: dict) -> None:
    for name in _IGNORED:
        kwargs.pop(name, None)
    for name in _NO_WORKERS:
        if name in kwargs:
            raise TypeError(
                f"{name}= places a call on distributed workers; Lambda has none: each call"
                " gets an execution environment of the function's memory. For more memory,"
                " annotate dask graphs (dask.annotate(resources={'memory': MB})) and deploy"
                " memory tiers."
            )


def _failed(future: Any) -> bool:
    if not isinstance(future, concurrent.futures.Future):
        return False
    return future.cancelled() or future.exception() is not None


def as_completed(
    futures: Iterable[concurrent.futures.Future],
    with_results: bool = False,
    raise_errors: bool = True,
    timeout: float | None = None,
) -> Iterator:
    """The futures as they finish (``distributed.as_completed``); ``with_results`` yields
    ``(future, result)``, a failed future's exception as its result unless
    ``raise_errors``."""
    for future in concurrent.futures.as_completed(list(futures), timeout=timeout):
        if not with_results:
            yield future
        elif future.exception() is not None and not raise_errors:
            yield future, future.exception()
        else:
            yield future, future.result()


def wait(
    futures: Any, timeout: float | None = None, return_when: str = "ALL_COMPLETED"
) -> concurrent.futures._base.DoneAndNotDoneFutures:
    """Wait for futures (a future, or containers of them): ``(done, not_done)`` sets, as
    ``distributed.wait``; ``return_when`` is ``ALL_COMPLETED``, ``FIRST_COMPLETED`` or
    ``FIRST_EXCEPTION``; past ``timeout`` a ``TimeoutError``."""
    found: list = []
    _collect(futures, found)
    done = concurrent.futures.wait(found, timeout=timeout, return_when=return_when)
    if timeout is not None and return_when == "ALL_COMPLETED" and done.not_done:
        raise TimeoutError(f"{len(done.not_done)} futures not done after {timeout} s")
    return done
