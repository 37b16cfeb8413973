"""Collections persisted in the cloud: ``cluster.persist(x)`` / ``x.persist(scheduler=cluster)``.

A persist runs the graph like a compute (:class:`~.scheduler.Compute` with ``persist=True``) but
downloads nothing: each requested key's value stays where the function left it (an S3 object, or
the few inline bytes of a small one), and the collection is rebuilt (dask's
``__dask_postpersist__``) with one task per key, ``load_persisted(ref)``. The lambda scheduler
recognises those tasks and hands the :class:`PersistedRef`'s location straight to the batches
that need it, so later computes read the data in Lambda and it never crosses the client. Any
other scheduler simply runs ``load_persisted``, which downloads the value (checked), so a
persisted collection gives the right answer everywhere.

Lifetime: every ref of one persist shares a :class:`PersistedData`, which deletes the objects
when it is garbage collected (the collection and everything built on it are gone), when
``cluster.unpersist(...)`` releases it, or when the cluster closes. A killed client's objects
expire with the spill prefix's lifecycle rule.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

from dask._task_spec import DataNode, Task

from .function.calls import PersistedValue, load_persisted
from .function.protocol import Inline, Stored
from .function.storage import S3Store


class PersistedData:
    """The S3 objects of one persist; deleted once, when released or garbage collected."""

    def __init__(self, store: S3Store, locations: dict[Any, Inline | Stored]):
        self.store = store
        self.locations = locations
        names = [where.name for where in locations.values() if isinstance(where, Stored)]
        self.nbytes = sum(
            where.nbytes if isinstance(where, Stored) else len(where.data)
            for where in locations.values()
        )
        self._finalizer = weakref.finalize(self, _delete, store, names)

    @property
    def alive(self) -> bool:
        return self._finalizer.alive

    def release(self) -> None:
        """Delete the objects now (idempotent)."""
        self._finalizer()


def _delete(store: S3Store, names: list[str]) -> None:
    if names:
        try:
            store.delete(names)
        except Exception:  # the endpoint is gone: the prefix's lifecycle rule expires them
            pass


class PersistedRef:
    """Where one persisted key's value is: kept alive by the collection that holds it."""

    __slots__ = ("key", "data")

    def __init__(self, key, data: PersistedData):
        self.key, self.data = key, data

    @property
    def location(self) -> Inline | Stored:
        if not self.data.alive:
            raise RuntimeError(
                f"The persisted value of {self.key!r} was released (unpersist or cluster"
                " closed): persist the collection again"
            )
        return self.data.locations[self.key]

    def __reduce__(self):  # into a task for Lambda (fused by dask's optimisation): a reference
        return PersistedValue, (self.key, self.location)

    def load(self) -> Any:
        """Download the value (checked): for schedulers other than the cluster's."""
        import cloudpickle

        where = self.location
        if isinstance(where, Inline):
            return cloudpickle.loads(where.data)
        return cloudpickle.loads(self.data.store.get(where.name, expected=where))

    def __repr__(self) -> str:
        return f"<PersistedRef {self.key!r}>"


def persisted_ref(node) -> PersistedRef | None:
    """The :class:`PersistedRef` a graph node stands for, if it is a ``load_persisted`` task."""
    if isinstance(node, Task) and node.func is load_persisted and node.args:
        argument = node.args[0]
        value = argument.value if isinstance(argument, DataNode) else argument
        if isinstance(value, PersistedRef):
            return value
    return None


class Persisted:
    """What a cluster persisted and still holds (to release on close)."""

    def __init__(self) -> None:
        self._data: weakref.WeakSet[PersistedData] = weakref.WeakSet()
        self._lock = threading.Lock()

    def add(self, data: PersistedData) -> None:
        with self._lock:
            self._data.add(data)

    @property
    def nbytes(self) -> int:
        with self._lock:
            return sum(data.nbytes for data in self._data if data.alive)

    def release_all(self) -> None:
        with self._lock:
            held = list(self._data)
        for data in held:
            data.release()


def persist_collections(get, store: S3Store, held: Persisted, collections: list,
                        optimize_graph: bool = True, **kwargs) -> list:  # fmt: skip
    """Persist ``collections`` with ``get(expr, keys, **kwargs) -> [location per key]``; return
    them rebuilt on :class:`PersistedRef` tasks (as ``dask.persist`` does with its results)."""
    from dask._expr import CompositeExpr, _ExprSequence
    from dask.base import _rebuild_composite_collection, collections_to_expr
    from dask.core import flatten

    expr = collections_to_expr(collections, optimize_graph)
    exprs = list(expr.operands) if isinstance(expr, _ExprSequence) else [expr]
    composite = any(isinstance(e, CompositeExpr) for e in exprs)
    expr = expr.optimize()
    if composite:
        exprs = list(expr.operands) if isinstance(expr, _ExprSequence) else [expr]
        if len(exprs) != len(collections):
            exprs = [None] * len(collections)
    else:
        exprs = [None] * len(collections)
    keys, rebuilds = [], []
    for collection, collection_expr, collection_keys in zip(
        collections, exprs, expr.__dask_keys__(), strict=True
    ):
        flat = list(flatten(collection_keys))
        keys.extend(flat)
        if isinstance(collection_expr, CompositeExpr):
            rebuilds.append((collection, collection_expr, None))
        else:
            rebuild, state = collection.__dask_postpersist__()
            rebuilds.append((rebuild, flat, state))
    locations = dict(zip(keys, get(expr, keys, **kwargs), strict=True))
    data = PersistedData(store, locations)
    held.add(data)
    tasks = {key: Task(key, load_persisted, PersistedRef(key, data)) for key in locations}
    rebuilt = []
    for rebuild, flat, state in rebuilds:
        if state is None:
            rebuilt.append(_rebuild_composite_collection(rebuild, flat, tasks,
                                                         cull_to_child_keys=True))  # fmt: skip
        else:
            rebuilt.append(rebuild({key: tasks[key] for key in flat}, *state))
    return rebuilt


def release_collections(collections: list) -> int:
    """Release the persisted data ``collections`` refer to; return how many persists it was."""
    from dask.base import collections_to_expr

    released = set()
    graph = collections_to_expr(collections, optimize_graph=False).__dask_graph__()
    for node in dict(graph).values():
        ref = persisted_ref(node)
        if ref is not None and ref.data.alive and id(ref.data) not in released:
            released.add(id(ref.data))
            ref.data.release()
    return len(released)
