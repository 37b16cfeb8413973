"""Collections persisted in the cloud: ``cluster.persist(x)`` / ``x.persist(scheduler=cluster)``.

A persist runs the graph like a compute (:class:`~.compute.Compute` with ``persist=True``) but
downloads nothing: each requested key's value stays where the function left it (an S3 object, or
the few inline bytes of a small one), and the collection is rebuilt (dask's
``__dask_postpersist__``) with one task per key, ``load_persisted(ref)``. The lambda scheduler
recognises those tasks (:func:`persisted_refs`, also inside tasks dask's optimisation fused) and
hands the :class:`PersistedRef`'s location straight to the batches that need it, so later
computes read the data in Lambda and it never crosses the client. Any other scheduler simply runs
``load_persisted``, which downloads the value through the data plane (checked), so a persisted
collection gives the right answer everywhere.

Lifetime: every ref of one persist shares a :class:`PersistedData`, which holds its objects with
one :class:`~.ownership.Claim` of the cluster's ledger. The claim is released when the collection
and everything built on it are garbage collected, or by ``cluster.unpersist(...)``; the objects
are deleted once nothing else holds them (a second persist of the same data, a compute reading
them) — or when the cluster closes. A ref used afterwards says which of these released it.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

from dask._task_spec import DataNode, Task

from .exceptions import DataReleasedError, ForeignDataError
from .function import values
from .function.calls import PersistedValue, load_persisted
from .function.protocol import Inline, Stored
from .ownership import Claim, Ledger


class PersistedData:
    """The stored values of one persist, held by one claim of the cluster's ledger."""

    def __init__(self, claim: Claim, locations: dict[Any, Inline | Stored]):
        self.claim = claim
        self.locations = locations
        self.nbytes = sum(
            where.nbytes if isinstance(where, Stored) else len(where.data)
            for where in locations.values()
        )

    @property
    def ledger(self) -> Ledger:
        return self.claim.ledger

    @property
    def alive(self) -> bool:
        return self.claim.alive

    def release(self, reason: str = "unpersist") -> None:
        """Give up this persist's hold now (idempotent)."""
        self.claim.release(reason)


class PersistedRef:
    """Where one persisted key's value is: kept alive by the collection that holds it."""

    __slots__ = ("key", "data")

    def __init__(self, key, data: PersistedData):
        self.key, self.data = key, data

    @property
    def location(self) -> Inline | Stored:
        if not self.data.alive:
            raise DataReleasedError(
                f"The persisted value of {self.key!r} was released by"
                f" {self.data.claim.why_released()}: persist the collection again"
            )
        return self.data.locations[self.key]

    def check_owner(self, ledger: Ledger) -> None:
        """Refuse a released value, then one persisted on another cluster (its objects are not
        this one's)."""
        self.location  # noqa: B018 - raises if released
        if self.data.ledger is not ledger:
            raise ForeignDataError(
                f"The persisted value of {self.key!r} belongs to {self.data.ledger.owner}"
                f" (bucket {self.data.ledger.store.bucket!r}), not to {ledger.owner}: compute"
                " it on that cluster, or persist the collection again on this one."
            )

    def __reduce__(self):  # into a task for Lambda (fused by dask's optimisation): a reference
        return PersistedValue, (self.key, self.location)

    def load(self) -> Any:
        """Download the value (checked): for schedulers other than the cluster's."""
        return values.load(self.location, self.data.ledger.store)

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


def persisted_refs(dsk: dict) -> list[PersistedRef]:
    """Every :class:`PersistedRef` a graph reads: its own ``load_persisted`` nodes and those
    inside tasks (fused subgraphs, nested tasks)."""
    found: dict[int, PersistedRef] = {}
    stack = list(dsk.values())
    while stack:  # tasks, nested tasks (containers are tasks too) and fused subgraphs: not data
        node = stack.pop()
        if isinstance(node, Task):
            ref = persisted_ref(node)
            if ref is not None:
                found.setdefault(id(ref), ref)
                continue
            stack.extend(arg for arg in (*node.args, *node.kwargs.values())
                         if isinstance(arg, (Task, dict)))  # fmt: skip
        elif isinstance(node, dict):
            stack.extend(node.values())
    return list(found.values())


class Persisted:
    """What a cluster persisted and still holds (for :attr:`persisted_bytes`)."""

    def __init__(self) -> None:
        self._data: weakref.WeakSet[PersistedData] = weakref.WeakSet()
        self._lock = threading.Lock()

    def add(self, data: PersistedData) -> None:
        with self._lock:
            self._data.add(data)

    @property
    def nbytes(self) -> int:
        """Bytes held, each object counted once however many persists hold it."""
        with self._lock:
            held = [data for data in self._data if data.alive]
        seen: dict[Any, int] = {}
        for data in held:
            for where in data.locations.values():
                if isinstance(where, Stored):
                    seen[where.name] = where.nbytes
                else:
                    seen[id(where)] = len(where.data)
        return sum(seen.values())


def persist_collections(run, held: Persisted, collections: list, optimize_graph: bool = True,
                        **kwargs) -> list:  # fmt: skip
    """Persist ``collections`` with ``run(expr, keys, **kwargs) -> ([location per key], claim)``;
    return them rebuilt on :class:`PersistedRef` tasks (as ``dask.persist`` does)."""
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
    found, claim = run(expr, keys, **kwargs)
    data = PersistedData(claim, dict(zip(keys, found, strict=True)))
    held.add(data)
    tasks = {key: Task(key, load_persisted, PersistedRef(key, data)) for key in data.locations}
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
    for ref in persisted_refs(dict(graph)):
        if ref.data.alive and id(ref.data) not in released:
            released.add(id(ref.data))
            ref.data.release("unpersist")
    return len(released)
