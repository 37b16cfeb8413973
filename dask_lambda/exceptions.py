"""Errors on the client: the few exceptions dask-lambda raises itself, and re-raising a task's.

A task's exception keeps its own type: :func:`rebuild_exception` turns a protocol error entry
(:mod:`.function.errors`) back into the exception with its remote traceback attached.
:class:`~dask_lambda.function.protocol.IntegrityError` (an object read back from S3 is not the
one dask-lambda wrote) lives with the protocol, because the Lambda side raises it too.
"""

from __future__ import annotations

import builtins
from typing import NoReturn

import cloudpickle


class LambdaFunctionError(RuntimeError):
    """The Lambda function failed outside user code (crash, timeout, out of memory, bad deploy).

    Attributes
    ----------
    function_name, error_type, error_message, request_id
        What Lambda reported.
    task_keys
        Keys of the tasks the failed invocation was running.
    attempts
        Invocations tried, retries included.
    """

    def __init__(
        self,
        function_name: str,
        error_type: str,
        error_message: str,
        task_keys: list | None = None,
        request_id: str | None = None,
        attempts: int = 1,
    ):
        self.function_name = function_name
        self.error_type = error_type
        self.error_message = error_message
        self.task_keys = list(task_keys or [])
        self.request_id = request_id
        self.attempts = attempts
        keys = ", ".join(map(repr, self.task_keys[:3]))
        more = f" and {len(self.task_keys) - 3} more" if len(self.task_keys) > 3 else ""
        tasks = f" running task {keys}{more}" if self.task_keys else ""
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        super().__init__(
            f"Lambda function {function_name!r} failed{tasks}{tries}: {error_type}: {error_message}"
        )


class VersionMismatchError(RuntimeError):
    """The function runs other versions of Python or libraries than this client."""


class VersionWarning(UserWarning):
    """A library (numpy, pandas, ...) differs by a minor version between client and function."""


class DataReleasedError(RuntimeError):
    """A persisted collection or future whose stored values were deleted (unpersist, its cluster
    or executor closed)."""


class ForeignDataError(ValueError):
    """A persisted collection or future that belongs to another cluster (another bucket,
    function or ledger): refused before anything runs."""


class NoActiveClusterError(RuntimeError):
    """``scheduler="lambda"`` was asked for with no LambdaCluster running."""


class RemoteTaskError(RuntimeError):
    """Stands in for a remote exception that could not be unpickled on the client."""


def rebuild_exception(error: dict) -> BaseException:
    """The exception a protocol error entry describes, with its remote traceback attached (an
    entry of :mod:`.attempts` carries the client's own ``"failure"``)."""
    if isinstance(error.get("failure"), BaseException):
        return error["failure"]
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


def deployment_hint(
    exc: BaseException, function_name: str | None = None, deployed_by_cluster: bool | None = None
) -> str | None:
    """What to deploy or grant when ``exc`` shows the function lacks a module or an S3 grant.

    A function sees only its deployment package, its layers and the managed runtime's boto3 (as
    the local Lambda enforces), and touches only what its role allows. The fix named fits where
    the function came from: ``LambdaCluster(...)`` arguments for a function the cluster deployed
    itself (``deployed_by_cluster``), ``dask-lambda update`` for a named one, both if unknown.
    """
    name = function_name or "NAME"
    by_cluster, by_cli = deployed_by_cluster in (True, None), deployed_by_cluster in (False, None)
    if isinstance(exc, ModuleNotFoundError) and exc.name and {"tests", "test"} & set(
        exc.name.split(".")[1:]
    ):
        return (
            f"Lambda function {name!r} has no module {exc.name!r}: if its dependencies are in"
            " S3, they were deployed without packages' tests folders. Keep them with"
            " lambda.ship-tests: true"
            " (DASK_LAMBDA__SHIP_TESTS=true) and deploy again"
            + (f" (dask-lambda update {name} --deps-on-s3)" if by_cli else "") + "."
        )
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        module = exc.name.split(".")[0]
        import importlib.metadata

        providers = importlib.metadata.packages_distributions().get(module)
        if not providers:
            files = (f" deploy its files with the function (dask-lambda update {name} PATHS...)"
                     " or" if by_cli else "")  # fmt: skip
            return (
                f"Lambda function {name!r} has no module {module!r}. If it is your own code,"
                f"{files} have it pickled by value (cloudpickle.register_pickle_by_value(module))."
            )
        package = providers[0]
        fixes = [f"dask-lambda update {name} --include {package} (or -r requirements.txt)"] * by_cli
        fixes += [f"cluster.add_packages([{package!r}])"] * by_cluster
        return (
            f"Lambda function {name!r} has no module {module!r}: a function sees only its"
            " deployment package, its layers and the runtime's boto3, not this client's"
            f" packages. Deploy {package!r} with it: {', or '.join(fixes)}."
        )
    try:
        text = str(exc)
    except Exception:  # an exception whose __str__ raises still reaches the user
        return None
    if any(marker in text for marker in ("AccessDenied", "ACCESS_DENIED", "Access Denied")):
        fixes = [f"dask-lambda update {name} --create-role --s3-read s3://BUCKET[/PREFIX] (to"
                 " read) or --s3-write (to write)"] * by_cli  # fmt: skip
        fixes += ["a new LambdaCluster(s3_read=[...], s3_write=[...])"] * by_cluster
        return (
            f"Lambda function {name!r}'s role may not use that S3 location. Grant it:"
            f" {', or '.join(fixes)}."
        )
    return None


def raise_task_error(
    error: dict, key, function_name: str | None = None, deployed_by_cluster: bool | None = None
) -> NoReturn:
    """Raise the exception a task raised in Lambda, noting which task it was."""
    exc = rebuild_exception(error)
    exc.add_note(f"(raised in AWS Lambda by dask task {key!r})")
    hint = deployment_hint(exc, function_name, deployed_by_cluster)
    if hint:
        exc.add_note(hint)
    raise exc


def raise_fatal(
    error: dict, function_name: str, deployed_by_cluster: bool | None = None
) -> NoReturn:
    """Raise a failure to load a batch at all (typically a module missing from the function)."""
    exc = rebuild_exception(error)
    hint = deployment_hint(exc, function_name, deployed_by_cluster)
    if hint:
        exc.add_note(hint)
    elif isinstance(exc, ImportError):
        deploy = (f" Deploy the module with the function (dask-lambda update {function_name}"
                  " PATHS...) or have it" if not deployed_by_cluster else " Have it")  # fmt: skip
        exc.add_note(
            f"Lambda function {function_name!r} cannot import what the tasks reference.{deploy}"
            " pickled by value (cloudpickle.register_pickle_by_value(module))."
        )
    else:
        exc.add_note(f"(raised in AWS Lambda while loading a batch in {function_name!r})")
    raise exc
