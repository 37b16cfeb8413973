"""Who holds each stored object of a cluster, when it may be deleted, and the lease that says so.

One :class:`Ledger` per running cluster is the only thing on the client that deletes stored
values. It counts, per object, the :class:`Claim` objects holding it, as distributed's scheduler
counts who wants a key:

- a compute in flight holds the persisted values it reads, for as long as it runs;
- a persist holds the values it keeps (a second persist of the same data holds them again);
- a :class:`~.executor.LambdaFuture` and a scattered value hold their object;
- a call queued or running in an executor holds the futures it reads until it has finished.

An object is deleted when its last claim is released (garbage collected, ``unpersist``,
shutdown), never before; cleaning up after a compute (:meth:`Ledger.sweep`, also the late
cleanup after speculative copies) deletes only what nothing holds. Closing the cluster
(:meth:`Ledger.close`) deletes everything it still holds; a claim used afterwards says why.

Ids are unique per client process and carry the ledger's :attr:`~Ledger.token`: every compute
and executor writes under ``<prefix>/<id>/`` with ``id = token + 8 hex digits``
(:meth:`Ledger.new_id`), and graph keys made here (:func:`new_key`) are unique too, so two
executors, two clusters or two processes never mix their values up.

The lease: while it runs, a ledger keeps ``<prefix>/leases/<token>.json`` (host, pid, when it was
refreshed, how long it stays valid) fresh from a background thread. ``dask-lambda clean`` spares
every object under an id that starts with a live lease's token and lists it as held; when a
client dies its lease stops being refreshed, and after ``lambda.lease.ttl`` seconds its data is
cleanable. Objects held for longer than a compute (persisted, futures, scattered) also lose the
``dask-lambda-lifetime=scratch`` tag while they are held, so the bucket's expiry rule, which
matches only scratch objects, spares them.
"""

from __future__ import annotations

import itertools
import json
import os
import secrets
import socket
import threading
import time
import uuid
import warnings
import weakref
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .function.protocol import Inline, Stored
from .function.storage import MARKER_TAG
from .function.values import Store

PROCESS_TOKEN = uuid.uuid4().hex[:8]
_keys = itertools.count()
LEASE_FOLDER = "leases"


def new_key(kind: str) -> tuple[str, str]:
    """A graph key no other executor, cluster or process uses: ``(kind, "<token>-<n>")``."""
    return (kind, f"{PROCESS_TOKEN}-{next(_keys)}")


class Claim:
    """One holder's hold on some stored objects; released once (explicitly or when collected).

    ``released_by`` says why a released claim's data is gone (``"unpersist"``, ``"closing
    cluster 'x'"``).
    """

    __slots__ = ("ledger", "names", "released_by", "_finalizer", "__weakref__")

    def __init__(self, ledger: Ledger, names: tuple[str, ...], lasting: bool):
        self.ledger, self.names = ledger, names
        self.released_by: str | None = None
        self._finalizer = weakref.finalize(self, ledger._release, names, lasting)

    @property
    def alive(self) -> bool:
        return self._finalizer.alive and self.ledger.closed_by is None

    def release(self, reason: str = "released") -> None:
        """Give the hold up now (idempotent); objects nothing else holds are deleted."""
        if self.released_by is None:
            self.released_by = reason
        self._finalizer()

    def why_released(self) -> str:
        return self.ledger.closed_by or self.released_by or "released"


class Ledger:
    """The owner of a cluster's stored objects (see the module docstring).

    Parameters
    ----------
    store
        Where the objects are.
    prefix
        The cluster's spill prefix (its lease lives under ``<prefix>/leases/``).
    owner
        Names the cluster in errors (``"cluster 'dask-lambda-1234'"``).
    lease_ttl, lease_refresh
        Seconds a lease stays valid without a refresh, and between refreshes.
    """

    def __init__(self, store: Store, prefix: str, owner: str, lease_ttl: float = 600,
                 lease_refresh: float = 60):  # fmt: skip
        self.store, self.prefix, self.owner = store, prefix.strip("/"), owner
        self.token = secrets.token_hex(4)
        self.lease_ttl, self.lease_refresh = float(lease_ttl), float(lease_refresh)
        self.closed_by: str | None = None
        self._holders: Counter[str] = Counter()
        self._lasting: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self._stop = threading.Event()
        self._refresher: threading.Thread | None = None
        self._tagger: ThreadPoolExecutor | None = None
        self._tag_warned = False

    # -- ids and claims -------------------------------------------------------------------------
    def new_id(self) -> str:
        """16 hex digits starting with :attr:`token`: a compute's or executor's folder."""
        return f"{self.token}{next(self._ids) % 16**4:04x}{secrets.token_hex(2)}"

    @property
    def lease_name(self) -> str:
        return f"{self.prefix}/{LEASE_FOLDER}/{self.token}.json"

    def claim(self, locations: Iterable[Inline | Stored | Any], lasting: bool = False) -> Claim:
        """Hold the stored objects among ``locations`` until the returned claim is released.

        ``lasting`` marks a hold beyond a compute (persist, futures, scattered values): those
        objects stop being scratch for the expiry rule while held.
        """
        names = tuple(dict.fromkeys(w.name for w in locations if isinstance(w, Stored)))
        if self.closed_by is not None:
            raise RuntimeError(f"{self.owner} is closed: its stored values were deleted")
        newly_lasting = []
        with self._lock:
            self._holders.update(names)
            if lasting:
                for name in names:
                    self._lasting[name] += 1
                    if self._lasting[name] == 1:
                        newly_lasting.append(name)
        if newly_lasting:
            self._retag(newly_lasting, {MARKER_TAG[0]: MARKER_TAG[1]})
        return Claim(self, names, lasting)

    def holds(self, name: str) -> bool:
        with self._lock:
            return self._holders[name] > 0

    def held_names(self) -> list[str]:
        with self._lock:
            return [name for name, count in self._holders.items() if count > 0]

    def _release(self, names: tuple[str, ...], lasting: bool) -> None:
        unheld = []
        with self._lock:
            for name in names:
                self._holders[name] -= 1
                if lasting:
                    self._lasting[name] -= 1
                    if self._lasting[name] <= 0:
                        del self._lasting[name]
                if self._holders[name] <= 0:
                    del self._holders[name]
                    unheld.append(name)
        if unheld and self.closed_by is None:
            _delete_quietly(self.store, unheld)

    def sweep(self, folder: str) -> int:
        """Delete every object under ``folder`` that nothing holds; return how many are left."""
        names = self.store.list(folder.rstrip("/") + "/")
        with self._lock:
            unheld = [name for name in names if self._holders[name] <= 0]
        self.store.delete(unheld)
        return len(names) - len(unheld)

    def _retag(self, names: list[str], tags: dict[str, str]) -> None:
        tag = getattr(self.store, "tag", None)
        if tag is None:
            return
        if self._tagger is None:
            self._tagger = ThreadPoolExecutor(8, thread_name_prefix="dask-lambda-tag")
        try:
            list(self._tagger.map(lambda name: tag(name, tags), names))
        except Exception as e:  # the expiry rule may still expire them: say so once
            if not self._tag_warned:
                self._tag_warned = True
                warnings.warn(
                    f"Could not mark held objects as held ({e}): the bucket's expiry rule may"
                    " delete them if they are kept longer than its days. Allow these"
                    " credentials s3:PutObjectTagging on the spill prefix.",
                    RuntimeWarning,
                    stacklevel=3,
                )

    # -- the lease ------------------------------------------------------------------------------
    def start(self) -> Ledger:
        """Write the lease and keep it fresh until :meth:`close`."""
        self._write_lease()
        self._refresher = threading.Thread(target=self._refresh, daemon=True,
                                           name="dask-lambda-lease")  # fmt: skip
        self._refresher.start()
        return self

    def _write_lease(self) -> None:
        now = time.time()
        lease = {"token": self.token, "owner": self.owner, "host": socket.gethostname(),
                 "pid": os.getpid(), "refreshed": now, "ttl": self.lease_ttl}  # fmt: skip
        self.store.put(self.lease_name, json.dumps(lease).encode())

    def _refresh(self) -> None:
        while not self._stop.wait(self.lease_refresh):
            try:
                self._write_lease()
            except Exception:  # the next refresh tries again; the TTL leaves room for misses
                pass

    def close(self, reason: str) -> None:
        """Delete everything still held and the lease; claims used later name ``reason``."""
        if self.closed_by is not None:
            return
        self.closed_by = reason
        self._stop.set()
        held = self.held_names()
        _delete_quietly(self.store, [*held, self.lease_name])
        if self._refresher is not None:
            self._refresher.join(timeout=5)
        if self._tagger is not None:
            self._tagger.shutdown(wait=False)


def _delete_quietly(store: Store, names: list[str]) -> None:
    try:
        store.delete(names)
    except Exception:  # the endpoint is gone: once the lease expires, `clean` removes them
        pass


def read_leases(store: Store, names: Iterable[str], now: float | None = None) -> dict[str, dict]:
    """``{lease name: lease}`` for the lease objects among ``names``, each with ``"live"``."""
    now = time.time() if now is None else now
    leases = {}
    for name in names:
        try:
            lease = json.loads(store.get(name))
            lease["live"] = float(lease["refreshed"]) + float(lease["ttl"]) > now
        except Exception:  # unreadable: treat as expired
            lease = {"token": None, "live": False}
        leases[name] = lease
    return leases
