"""Lambda side of failures: a task's exception as a bounded protocol error entry.

An entry (see :mod:`.protocol`) keeps what the client needs to re-raise the exception with its
type and remote traceback, and never more than a response can carry: the message is cut at
:data:`MESSAGE_LIMIT` characters (the cut is marked), the traceback keeps the first and last
:data:`FRAMES_KEPT` frames (a ``RecursionError`` has a thousand), a pickled exception larger than
:data:`PICKLE_LIMIT` is replaced by one of the same type carrying the cut message, and an
exception whose ``__str__`` raises is still reported by type. :class:`ErrorBudget` gives the
first errors of a batch in full and summarises the rest, so a batch in which a thousand tasks fail
still answers within Lambda's response limit.

Imports only the standard library, msgpack and cloudpickle (it runs inside Lambda).
"""

from __future__ import annotations

import collections
import io
import types
from typing import Any

import cloudpickle
import msgpack

MESSAGE_LIMIT = 4000  # characters of a full entry's message
SUMMARY_MESSAGE_LIMIT = 120  # characters of a summarised entry's message
FRAMES_KEPT = 10  # frames kept at each end of a traceback
PICKLE_LIMIT = 64_000  # bytes of a pickled exception
FULL_BUDGET = 256_000  # bytes of full entries per response
SUMMARY_BUDGET = 640_000  # bytes of full and summarised entries per response
RESERVED = 768_000  # response bytes a handler keeps free of inline results for errors and timings
_TBLIB = "tblib.pickling_support"


def safe_message(exc: BaseException, limit: int = MESSAGE_LIMIT) -> str:
    """``str(exc)``, cut at ``limit`` characters (marked), even if ``__str__`` raises."""
    try:
        message = str(exc)
    except BaseException as e:  # noqa: BLE001 - a broken __str__ must not hide the error
        message = f"<{type(exc).__name__}.__str__ raised {type(e).__name__}>"
    if len(message) > limit:
        message = message[:limit] + f"... [truncated: {len(message) - limit} more characters]"
    return message


def traceback_dict(tb: types.TracebackType | None) -> dict | None:
    """A tblib ``Traceback.as_dict()`` of ``tb``'s first and last frames, built without recursion.

    Between the kept frames stands one marker frame naming how many were left out.
    """
    frames = []
    while tb is not None:
        code = tb.tb_frame.f_code
        module = tb.tb_frame.f_globals.get("__name__", "?")
        frames.append((code.co_filename, code.co_name, tb.tb_lineno, module))
        tb = tb.tb_next
    if not frames:
        return None
    if len(frames) > 2 * FRAMES_KEPT:
        omitted = len(frames) - 2 * FRAMES_KEPT
        marker = ("...", f"<{omitted} frames omitted>", 0, "...")
        frames = [*frames[:FRAMES_KEPT], marker, *frames[-FRAMES_KEPT:]]
    entry = None
    for filename, name, lineno, module in reversed(frames):
        entry = {
            "tb_frame": {
                "f_globals": {"__name__": str(module), "__file__": filename},
                "f_locals": {},
                "f_code": {"co_filename": filename, "co_name": name},
                "f_lineno": lineno,
            },
            "tb_lineno": lineno,
            "tb_next": entry,
        }
    return entry


def _dumps(exc: BaseException) -> bytes:
    """cloudpickle of ``exc`` by its own ``__reduce__``.

    ``tblib.pickling_support.install()`` (which ``dask.multiprocessing`` runs on import) makes
    every exception pickle its whole traceback and rebuilds some types without their
    constructor (``SystemExit`` loses its ``code``); the traceback travels separately here.
    """

    class Pickler(cloudpickle.Pickler):  # the C pickler reads dispatch_table when created
        dispatch_table = collections.ChainMap(
            *(
                {k: v for k, v in table.items() if getattr(v, "__module__", "") != _TBLIB}
                for table in cloudpickle.Pickler.dispatch_table.maps
            )
        )

    buffer = io.BytesIO()
    Pickler(buffer, protocol=5).dump(exc)
    return buffer.getvalue()


def _pickled(exc: BaseException, message: str) -> bytes | None:
    """The pickled exception, or a stand-in of its type carrying ``message`` if it is too big."""
    try:
        data = _dumps(exc)
        if len(data) <= PICKLE_LIMIT:
            return data
    except Exception:
        pass
    try:
        stand_in = type(exc).__new__(type(exc))
        stand_in.args = (message,)
        data = _dumps(stand_in)
        return data if len(data) <= PICKLE_LIMIT else None
    except Exception:
        return None


def error_info(index: int, exc: BaseException) -> dict[str, Any]:
    """The full protocol entry for ``exc``, raised by task number ``index`` (-1: the batch)."""
    message = safe_message(exc)
    return {
        "index": index,
        "type": type(exc).__qualname__,
        "module": type(exc).__module__,
        "message": message,
        "exception": _pickled(exc, message),
        "traceback": traceback_dict(exc.__traceback__),
    }


def error_summary(index: int, exc: BaseException) -> dict[str, Any]:
    """A short entry: type and the start of the message, no pickle, no traceback."""
    return {
        "index": index,
        "type": type(exc).__qualname__,
        "module": type(exc).__module__,
        "message": safe_message(exc, SUMMARY_MESSAGE_LIMIT),
        "exception": None,
        "traceback": None,
        "summarised": True,
    }


class ErrorBudget:
    """Entries for a batch's failures: full while they fit, then summarised, then bare."""

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []
        self.used = 0

    def add(self, index: int, exc: BaseException) -> None:
        entry = None
        if self.used < FULL_BUDGET:
            entry = error_info(index, exc)
            if self.used + _size(entry) > FULL_BUDGET and self.entries:
                entry = None
        if entry is None and self.used < SUMMARY_BUDGET:
            entry = error_summary(index, exc)
        if entry is None:
            entry = {**error_summary(index, exc), "module": "", "message": ""}
        self.used += _size(entry)
        self.entries.append(entry)


def _size(entry: dict) -> int:
    return len(msgpack.packb(entry, use_bin_type=True))
