"""The data plane's verbs, the same on both sides: place a value, read or load a location.

Every value dask-lambda keeps outside a process is either :class:`~.protocol.Inline` (its pickled
bytes travel in a request or response) or :class:`~.protocol.Stored` (an object in a
:class:`Store`, named with its size and SHA-256). This module is the one place that decides
between the two (:func:`placement`, :func:`place`), the one place that reads a location back
(:func:`read`: a stored object only at the size and digest it was written with; a missing one is
a :class:`~.protocol.MissingDataError`, never a transient failure), and the one function that
unpickles what came from outside the process (:func:`loads`: through the function's allowlist
when it has one, :mod:`.allowlist`). The scheduler, the executor and pool, persist and the
Lambda handler all go through it, so a check added here guards every path.

A store is anything with :class:`Store`'s four methods; :class:`~.storage.S3Store` is the S3 one.
Another backend (an S3 Express One Zone directory bucket, GCS) is one more module with those
methods, handed to the cluster in place of ``S3Store``; nothing here or in the callers changes.

Imports only the standard library and cloudpickle (it runs inside Lambda).
"""

from __future__ import annotations

import os
from typing import Any, Protocol

import cloudpickle

from . import allowlist, contract
from .protocol import Inline, Stored

_allowed: dict[str, list[str]] = {}


class Store(Protocol):
    """Bytes under names in one bucket: what the data plane needs of a storage backend."""

    bucket: str

    def put(self, name: str, data: bytes) -> Stored:
        """Write ``data``; return its reference (name, size, SHA-256)."""

    def get(self, name: str, size: int | None = None, expected: Stored | None = None) -> bytes:
        """Read an object; with ``expected``, refuse another size before reading its body and
        another digest after (``IntegrityError``); a missing object is ``MissingDataError``."""

    def delete(self, names: list[str]) -> None:
        """Delete the objects (missing ones are no error)."""

    def list(self, prefix: str) -> list[str]:
        """The names under ``prefix``."""


def allowed() -> list[str]:
    """This process's allowlist (``DASK_LAMBDA_ALLOWED``; empty: unrestricted), read once."""
    if "entries" not in _allowed:
        _allowed["entries"] = allowlist.parse(os.environ.get(contract.ALLOWED))
    return _allowed["entries"]


def dumps(value: Any) -> bytes:
    return cloudpickle.dumps(value, protocol=5)


def loads(data: bytes) -> Any:
    """Unpickle bytes that came from outside this process: through the allowlist if one is set."""
    entries = allowed()
    if entries:
        return allowlist.loads(data, entries)
    return cloudpickle.loads(data)


def placement(nbytes: int, inline_limit: float, largest: float | None, what: str) -> bool:
    """True if ``nbytes`` pickled bytes go to the store, False if they travel inline;
    ``ValueError`` naming ``what`` and the fix past the largest object allowed."""
    if largest and nbytes > largest:
        raise ValueError(
            f"{what} is {nbytes} bytes pickled, over the largest object dask-lambda may store"
            f" ({int(largest)} bytes, lambda.spill.max-object-bytes). Split it into smaller"
            " chunks (or load it inside a task, e.g. from S3), or raise the limit within the"
            " function's memory and /tmp."
        )
    return nbytes > inline_limit


def place(
    data: bytes, name: str, store: Store, inline_limit: float, largest: float | None, what: str
) -> Inline | Stored:
    """Pickled ``data`` as a location: inline up to ``inline_limit``, else written as ``name``."""
    if placement(len(data), inline_limit, largest, what):
        return store.put(name, data)
    return Inline(data)


def read(location: Inline | Stored, store: Store | None) -> bytes:
    """The pickled bytes at ``location``: a stored object only at its size and digest."""
    if isinstance(location, Inline):
        return location.data
    if not isinstance(location, Stored):
        raise TypeError(f"Not a dask-lambda location: {type(location).__name__}")
    if store is None:
        raise RuntimeError(
            f"The stored value {location.name!r} can be read only by a dask-lambda function or"
            " the client that holds it"
        )
    return store.get(location.name, expected=location)


def load(location: Inline | Stored, store: Store | None) -> Any:
    """The value at ``location``, read (checked) and unpickled (allowlisted)."""
    return loads(read(location, store))
