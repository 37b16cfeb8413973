"""Client side of remote failures: re-raise a task's exception with its type and traceback."""

from __future__ import annotations

import builtins
from typing import NoReturn

import cloudpickle


class RemoteTaskError(RuntimeError):
    """Stands in for a remote exception that could not be unpickled on the client."""


def rebuild_exception(error: dict) -> BaseException:
    """The exception a protocol error entry describes, with its remote traceback attached."""
    exc = None
    if error.get("exception") is not None:
        try:
            exc = cloudpickle.loads(error["exception"])
        except Exception:
            exc = None
    if not isinstance(exc, BaseException):
        exc = _builtin_exception(error) or RemoteTaskError(
            f"{error['module']}.{error['type']}: {error['message']}"
        )
    if error.get("traceback"):
        try:
            from tblib import Traceback

            exc = exc.with_traceback(Traceback.from_dict(error["traceback"]).as_traceback())
        except Exception:
            pass
    return exc


def _builtin_exception(error: dict) -> BaseException | None:
    """A built-in exception type rebuilt from a summarised entry (no pickle travelled)."""
    if error.get("module") != "builtins":
        return None
    kind = getattr(builtins, error.get("type", ""), None)
    if isinstance(kind, type) and issubclass(kind, Exception):
        try:
            return kind(error.get("message", ""))
        except Exception:
            return None
    return None


def raise_task_error(error: dict, key) -> NoReturn:
    """Raise the exception a task raised in Lambda, noting which task it was."""
    exc = rebuild_exception(error)
    exc.add_note(f"(raised in AWS Lambda by dask task {key!r})")
    raise exc


def raise_fatal(error: dict, function_name: str) -> NoReturn:
    """Raise a failure to load a batch at all (typically a module missing from the function)."""
    exc = rebuild_exception(error)
    if isinstance(exc, ImportError):
        exc.add_note(
            f"Lambda function {function_name!r} cannot import what the tasks reference. Deploy"
            " the module with the function (dask-lambda deploy NAME PATHS...) or have it pickled"
            " by value (cloudpickle.register_pickle_by_value(module))."
        )
    else:
        exc.add_note(f"(raised in AWS Lambda while loading a batch in {function_name!r})")
    raise exc
