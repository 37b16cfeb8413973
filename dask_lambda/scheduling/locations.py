"""Where each value of one compute is, and moving the client's own values in and out.

A value is held by the client (:class:`~.graph.Value`: a graph literal or a ``cache=`` entry not
yet serialized), carried inline (:class:`~dask_lambda.function.protocol.Inline`) or stored
(:class:`~dask_lambda.function.protocol.Stored`). :class:`Locations` decides, through the data
plane (:mod:`dask_lambda.function.values`), whether a client value travels inline or is stored
when a batch first needs it, and downloads the requested results at the end. It counts the bytes
it moves into the compute's report.
"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import Executor
from typing import Any

from ..function import values
from ..function.protocol import Inline, Stored
from ..function.storage import object_name
from ..function.values import Store
from ..remote.invocation import fetch_value
from ..report import ComputeReport
from .graph import Location, Value


class Locations:
    """The locations of one compute's values (see the module docstring).

    Parameters
    ----------
    known
        What is known before anything runs (:attr:`.graph.PreparedGraph.location`).
    store, prefix, compute_id
        Where client values that are too large to travel inline are stored.
    inline_limit, max_object_bytes
        The data plane's size limits.
    report
        Counts ``bytes_from_client``, ``bytes_spilled`` and ``bytes_to_client``.
    """

    def __init__(
        self,
        known: dict[Any, Location],
        store: Store,
        prefix: str,
        compute_id: str,
        inline_limit: int,
        max_object_bytes: int,
        report: ComputeReport,
    ):
        self.where = known
        self.store, self.prefix, self.compute_id = store, prefix, compute_id
        self.inline_limit, self.max_object_bytes = inline_limit, max_object_bytes
        self.report = report

    def __contains__(self, key) -> bool:
        return key in self.where

    def __iter__(self):
        return iter(self.where)

    def record(self, key, where: Location) -> None:
        self.where[key] = where

    def alias(self, key, target) -> None:
        """``key`` is ``target``'s value (an alias), wherever that is."""
        self.where[key] = self.where[target]

    def drop(self, key) -> None:
        self.where.pop(key, None)

    def inline_size(self, key) -> int:
        """Bytes ``key``'s value adds to a request: its inline data, 0 when stored (or not yet
        serialized: a client value is counted when it is placed)."""
        where = self.where.get(key)
        return len(where.data) if isinstance(where, Inline) else 0

    def ref(self, key) -> Inline | Stored:
        """Where a batch reads ``key`` from; a client value is placed now, once."""
        where = self.where[key]
        if isinstance(where, Value):
            where = self._place(key, where.value)
        return where

    def refs(self, keys: Iterable) -> dict:
        """``{key: Inline | Stored}`` of ``keys``, left where they are: what a persist returns."""
        return {key: self.ref(key) for key in dict.fromkeys(keys)}

    def fetch(self, keys: Iterable, pool: Executor) -> dict:
        """The values of ``keys``, downloaded in parallel through ``pool`` (client values as
        they are)."""
        wanted = {k: self.where[k] for k in dict.fromkeys(keys)}
        remote = [w for w in wanted.values() if not isinstance(w, Value)]
        store = self.store
        # Only downloads go through the pool; an inline value is unpickled here, without a
        # hand-off to a thread and back (most of a small compute's result's cost).
        stored = [w for w in remote if isinstance(w, Stored)]
        fetched = dict(zip(stored, pool.map(lambda where: fetch_value(store, where), stored),
                           strict=True))  # fmt: skip
        fetched.update((w, fetch_value(store, w)) for w in remote if not isinstance(w, Stored))
        found = {}
        for key, where in wanted.items():
            if isinstance(where, Value):
                found[key] = where.value
            else:
                found[key], downloaded = fetched[where]
                self.report.bytes_to_client += downloaded
        return found

    def _place(self, key, value) -> Inline | Stored:
        try:
            data = values.dumps(value)
        except Exception as e:
            raise TypeError(f"Could not serialize the graph literal {key!r}: {e}") from e
        self.report.bytes_from_client += len(data)
        where = values.place(data, object_name(self.prefix, self.compute_id, key), self.store,
                             self.inline_limit, self.max_object_bytes,
                             f"The graph literal {key!r}")  # fmt: skip
        if isinstance(where, Stored):
            self.report.bytes_spilled += len(data)
        self.where[key] = where
        return where
