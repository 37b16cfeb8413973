"""The few exceptions dask-lambda raises itself; user exceptions keep their own type.

:class:`~dask_lambda.protocol.IntegrityError` (an object read back from S3 is not the one
dask-lambda wrote) lives with the protocol, because the Lambda side raises it too.
"""

from __future__ import annotations


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
        log_tail: str = "",
    ):
        self.function_name = function_name
        self.error_type = error_type
        self.error_message = error_message
        self.task_keys = list(task_keys or [])
        self.request_id = request_id
        self.attempts = attempts
        self.log_tail = log_tail
        keys = ", ".join(map(repr, self.task_keys[:3]))
        more = f" and {len(self.task_keys) - 3} more" if len(self.task_keys) > 3 else ""
        tasks = f" running task {keys}{more}" if self.task_keys else ""
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        super().__init__(
            f"Lambda function {function_name!r} failed{tasks}{tries}: {error_type}: {error_message}"
        )


class VersionMismatchError(RuntimeError):
    """The function runs other versions of Python or libraries than this client."""


class NoActiveClusterError(RuntimeError):
    """``scheduler="lambda"`` was asked for with no LambdaCluster running."""
