"""Small functions that tasks built by the client call inside Lambda.

They live in the deployed package, so tasks refer to them by import instead of pickling them.
"""

from __future__ import annotations

from typing import Any

_initialized: set[str] = set()
# The spill store of the batch the handler is running (set by the handler), for persisted
# values that dask's optimisation fused into the tasks that use them.
current: dict[str, Any] = {"store": None}


class PersistedValue:
    """A value a client's ``cluster.persist`` left in S3, named inside a task: read and
    unpickled by the data plane (:func:`.values.load`: size and SHA-256 checked, allowlisted,
    like any input) when the task runs."""

    __slots__ = ("key", "location")

    def __init__(self, key, location):
        self.key, self.location = key, location

    def __reduce__(self):
        return PersistedValue, (self.key, self.location)

    def load(self) -> Any:
        from . import values

        return values.load(self.location, current["store"])


def load_persisted(ref) -> Any:
    """The value behind a persisted reference (on the client, or inside Lambda)."""
    return ref.load()


def run_chunk(function, chunk: list[tuple]) -> list:
    """``[function(*args) for args in chunk]``: one task for a chunk of ``Executor.map``."""
    return [function(*args) for args in chunk]


def call(
    function, args: tuple, kwargs: dict, initializer=None, initargs=(), token: str = ""
) -> Any:
    """``function(*args, **kwargs)``, after running ``initializer`` once per runtime."""
    if initializer is not None and token not in _initialized:
        initializer(*initargs)
        _initialized.add(token)
    return function(*args, **kwargs)
