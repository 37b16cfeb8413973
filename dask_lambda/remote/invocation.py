"""One batch, start to end: pickle it, build the request, invoke, read the response, fetch values.

The single path the scheduler (:mod:`.compute`), the executor (:mod:`.executor`) and through it
the pool send work by, one attempt at a time (:mod:`.attempts` decides on the next).
:func:`send_batch` returns a :class:`BatchResponse` whose results are
:class:`~.function.protocol.Result` tuples and whose errors are indexed by task; what to do with a
task's error (raise it, retry, fail one future) is the caller's choice. :func:`fetch_value`
downloads a value the function left in S3 through the data plane (:mod:`.function.values`):
checked against the size and SHA-256 the function reported
(:class:`~.function.protocol.IntegrityError` otherwise), then unpickled.
"""

from __future__ import annotations

import functools
import io
from typing import Any

import cloudpickle
from dask._task_spec import Task

from ..backend import Backend
from ..exceptions import DataReleasedError, ForeignDataError
from ..function import protocol, values
from ..function.protocol import BatchResponse, BatchSpec, Inline, Stored
from ..function.values import Store
from .invoker import InvokeStats

__all__ = ["BatchResponse", "fetch_value", "pickle_spec", "send_batch"]

RESPONSE_BUDGET = 4_000_000  # raw bytes of a response (6 MB after base64)
MISSING_PACKAGE_ROUNDS = 3  # a package added, the batch sent again, then the next import fails


def _reduce_task(node: Task) -> tuple:
    return protocol.task, (node.key, node.func, node.args, node.kwargs, node._data_producer)


class _SpecPickler(cloudpickle.Pickler):
    """cloudpickle with a dispatch table that is a plain dict (cloudpickle's is a ``ChainMap``,
    looked up in Python for every object) and a ``Task`` sent as its fields (dask's
    ``__getstate__`` builds a tuple of ten slots in Python per task): three times faster for a
    batch of small tasks, and smaller."""

    def __init__(self, file: io.BytesIO):
        # Set before the C pickler's __init__, which is where it reads the attribute.
        self.dispatch_table = _dispatch_table()
        super().__init__(file, protocol=5)


@functools.cache
def _dispatch_table_of(sizes: tuple[int, ...]) -> dict:
    # cloudpickle's reducers before copyreg's, as its ChainMap has them (0.07 ms to flatten).
    return {**dict(cloudpickle.Pickler.dispatch_table), Task: _reduce_task}


def _dispatch_table() -> dict:
    """The flattened table, made again when a reducer is registered after import (with
    copyreg, or in cloudpickle's own table), so it still counts."""
    return _dispatch_table_of(tuple(map(len, cloudpickle.Pickler.dispatch_table.maps)))


def pickle_spec(spec: BatchSpec) -> bytes:
    """The pickled batch, or a ``TypeError`` naming the first task and the fix."""
    try:
        buffer = io.BytesIO()
        _SpecPickler(buffer).dump(spec)
        return buffer.getvalue()
    except (DataReleasedError, ForeignDataError):
        raise  # a persisted value that is gone or not this cluster's: its own message
    except Exception as e:
        raise TypeError(
            f"Could not serialize task {spec.keys[0]!r} for Lambda: {e}. Tasks must be"
            " picklable: use module-level functions and picklable arguments (no open files,"
            " locks or sockets)."
        ) from e


def send_batch(
    backend: Backend,
    spec_bytes: bytes,
    keys: list,
    payload_prefix: str,
    stats: InvokeStats | None = None,
    prefix: str | None = None,
    split: bool = False,
    memory_tier: int | None = None,
    confirm_memory: bool = True,
) -> BatchResponse:
    """Run one pickled batch on the backend's function.

    Infrastructure failures are retried by the invoker; a task's own errors come back in the
    response. Results the function spills go under ``prefix`` (the backend's by default), an
    oversized request under ``payload_prefix``. With ``split``, a runtime failure raises
    :class:`~.attempts.SplitBatch` instead of re-running the whole batch. ``memory_tier`` runs it
    on that memory tier of the function; ``confirm_memory=False`` does not retry a task that ran
    out of memory at the same size (the caller escalates it).
    """
    settings = backend.settings
    sync = backend.packages
    if sync is not None:  # what the batch references, on the function first
        sync.ensure(spec_bytes, stats)
    request = protocol.run_request(
        spec_bytes,
        bucket=backend.store.bucket,
        prefix=prefix or backend.prefix,
        inline_limit=settings.inline_limit,
        response_limit=RESPONSE_BUDGET,
        max_object_bytes=settings.max_object_bytes,
        kms_key_id=settings.kms_key_id,
    )
    for _ in range(MISSING_PACKAGE_ROUNDS + 1):
        response = BatchResponse.from_payload(backend.invoker_for(memory_tier).call(
            request, task_keys=keys, stats=stats, payload_prefix=payload_prefix, split=split,
            confirm_memory=confirm_memory,
        ))  # fmt: skip
        # An import the pickle did not show: with packages="auto" it is added, and sent again.
        if sync is None or not response.errors or not sync.added_for(response.errors.values()):
            break
    return response


def fetch_value(store: Store, where: Inline | Stored) -> tuple[Any, int]:
    """``(value, bytes downloaded)`` for an inline or stored result."""
    data = values.read(where, store)
    return values.loads(data), len(data) if isinstance(where, Stored) else 0
