"""What to do when an attempt fails: the one attempt policy of the scheduler, executor and pool.

Pure decisions, no I/O: the callers pass the function that makes one attempt.

*One invocation* (:class:`InvocationAttempts`, asked by the invoker after each failure). Only the
infrastructure's failures are retried: throttling (its own budget, ``lambda.throttle-retries``),
Lambda service errors (5xx and :data:`RETRYABLE_CODES`), lost connections, and a runtime that
crashed, ran out of memory or timed out (:data:`RETRYABLE_FUNCTION_ERRORS`); never an error of
the deployment (a missing handler, a bad package) and never a task's own exception. Backoff is
exponential with full jitter. A runtime failure of a batch of several tasks is not retried whole
but split (:class:`SplitBatch`), and a single task that runs out of memory or time twice in a
row is not retried again: the same settings fail the same way (deterministic failure).

*One batch* (:func:`run_batch`). A task whose own code raised runs again up to its retry budget
(``retries=``, ``dask.annotate(retries=N)``); only the tasks that failed are charged an attempt,
so a batch of many tasks does not share one budget. A batch split after a runtime failure runs in
halves, recursively, until the task at fault is alone. A task out of memory runs once more on the
next larger memory tier (``lambda.escalate-memory``).

*Speculation* (:func:`straggler_limit`): a batch running far longer than the median of the
finished ones gets a second copy; the first to finish wins (the scheduler's in-flight table).
"""

from __future__ import annotations

import collections
import random
import statistics
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

from .exceptions import LambdaFunctionError
from .function.protocol import BatchResponse, BatchSpec, Result

# Lambda service error codes worth another attempt (besides every 5xx).
RETRYABLE_CODES = frozenset({
    "TooManyRequestsException",
    "ServiceException",
    "ResourceNotReadyException",
    "EC2ThrottledException",
    "EC2UnexpectedException",
    "ENILimitReachedException",
    "RequestTimeoutException",
    "SlowDown",
    "InternalError",
})  # fmt: skip
THROTTLED = "TooManyRequestsException"
# Function errors (X-Amz-Function-Error) of the runtime, not of the deployment: retried.
RETRYABLE_FUNCTION_ERRORS = (
    "Runtime.ExitError",
    "Sandbox.Timedout",
    "Runtime.Unknown",
    "TransientError",
)
# Failures of the runtime running a batch: with more than one task, the batch is split instead
# of retried whole (see SplitBatch).
RUNTIME_FAILURES = (
    "Runtime.ExitError",
    "Sandbox.Timedout",
    "Runtime.Unknown",
    "Runtime.OutOfMemory",
)
MAX_BACKOFF = 20.0  # seconds, at most, before another attempt
MAX_THROTTLE_BACKOFF = 30.0


def retryable_service_error(code: str, status: int) -> bool:
    """Whether a Lambda API error (``code`` as botocore reports it, HTTP ``status``) is worth
    another attempt."""
    return code in RETRYABLE_CODES or status >= 500


def retryable_function_error(error_type: str) -> bool:
    """Whether a function error (the runtime's ``errorType``) is worth another attempt."""
    return error_type.startswith(RETRYABLE_FUNCTION_ERRORS)


def failure_kind(error: LambdaFunctionError) -> str | None:
    """``"memory"`` or ``"timeout"`` for the failures that repeat at the same settings."""
    if error.error_type == "Sandbox.Timedout":
        return "timeout"
    if "OutOfMemory" in error.error_type or "Runtime.OutOfMemory" in (error.error_message or ""):
        return "memory"
    return None


class SplitBatch(Exception):
    """The runtime running a batch of several tasks crashed, ran out of memory or timed out.

    Not retried whole: :func:`run_batch` re-runs it in halves, so tasks that did not cause the
    failure keep their retry budget and a task that does is isolated in a batch of its own.
    """

    def __init__(self, error: LambdaFunctionError):
        super().__init__(str(error))
        self.error = error


class Verdict(NamedTuple):
    """What to do after a failed invocation: ``action`` is ``"retry"`` (after ``delay``
    seconds), ``"split"``, or why to give up: ``"throttled"``, ``"repeated"`` (a deterministic
    failure of ``kind`` memory or timeout) or ``"exhausted"``."""

    action: str
    delay: float = 0.0
    kind: str | None = None


class InvocationAttempts:
    """The retry budget of one invocation (see the module docstring).

    Parameters
    ----------
    retries, backoff
        Retries of infrastructure failures, and the first backoff in seconds.
    throttle_retries, throttle_backoff
        The same for throttling, counted apart.
    tasks
        How many tasks the invocation runs (a single task's repeated failure is deterministic).
    split
        Answer a runtime failure with ``"split"`` (the caller can divide the batch).
    confirm_memory
        False: a task out of memory once is not retried at the same size (the caller moves it
        to a larger memory tier).
    """

    def __init__(
        self,
        retries: int,
        backoff: float,
        throttle_retries: int,
        throttle_backoff: float,
        tasks: int = 1,
        split: bool = False,
        confirm_memory: bool = True,
        uniform: Callable[[float, float], float] = random.uniform,
    ):
        self.retries, self.backoff = retries, backoff
        self.throttle_retries, self.throttle_backoff = throttle_retries, throttle_backoff
        self.tasks, self.split, self.confirm_memory = tasks, split, confirm_memory
        self.uniform = uniform
        self.attempt = 0  # attempts started, throttled ones included
        self.throttled = 0
        self.previous_kind: str | None = None

    def start(self) -> int:
        """Count one more attempt; its number."""
        self.attempt += 1
        return self.attempt

    def failed(self, error: LambdaFunctionError) -> Verdict:
        """The verdict on a retryable failure of the current attempt."""
        if error.error_type == THROTTLED:
            self.throttled += 1
            if self.throttled > self.throttle_retries:
                return Verdict("throttled")
            delay = self.throttle_backoff * 2 ** (self.throttled - 1)
            return Verdict("retry", self.uniform(0, min(delay, MAX_THROTTLE_BACKOFF)))
        if self.split and error.error_type.startswith(RUNTIME_FAILURES):
            return Verdict("split")
        kind = failure_kind(error)
        if (
            self.tasks == 1
            and kind is not None
            and (kind == self.previous_kind or (kind == "memory" and not self.confirm_memory))
        ):
            return Verdict("repeated", kind=kind)
        self.previous_kind = kind
        if self.attempt > self.retries:
            return Verdict("exhausted")
        delay = self.backoff * 2 ** (self.attempt - 1)
        return Verdict("retry", self.uniform(0, min(delay, MAX_BACKOFF)))


class Counts(Protocol):
    """Where :func:`run_batch` counts what it did (an :class:`~.invoker.InvokeStats`)."""

    def add(self, **counts: int) -> None: ...


class Send(Protocol):
    """Runs ``spec`` once on memory tier ``tier`` (None: the function's own memory).

    With ``split``, a runtime failure raises :class:`SplitBatch`; with ``confirm_memory``
    False, a task out of memory raises at once (:class:`~.exceptions.LambdaFunctionError`)."""

    def __call__(
        self, spec: BatchSpec, tier: int | None, split: bool, confirm_memory: bool
    ) -> BatchResponse: ...


class BatchPolicy(NamedTuple):
    """How a batch's tasks are retried: ``retries_of(key)`` is a task's budget for its own
    errors; ``tier_of(key)`` its memory tier; ``next_tier(tier)`` the tier to escalate to after
    running out of memory (None: no escalation). With ``isolate``, a task that alone still
    fails the runtime after its retries fails alone (an error entry whose ``"failure"`` is the
    :class:`~.exceptions.LambdaFunctionError`) and the rest of its batch still runs: the
    executor's independent calls; a compute fails as a whole instead."""

    retries_of: Callable[[Any], int]
    tier_of: Callable[[Any], int | None] = lambda key: None
    next_tier: Callable[[int | None], int | None] | None = None
    isolate: bool = False


def run_batch(spec: BatchSpec, send: Send, policy: BatchPolicy, counts: Counts) -> BatchResponse:
    """Run ``spec`` until its tasks succeed, one runs out of retries, or it cannot be loaded.

    Returns the last response: the caller raises (or delivers) the errors it still holds and
    the ``fatal`` error of a batch that could not be loaded. An infrastructure failure that
    outlasted its retries raises :class:`~.exceptions.LambdaFunctionError`.
    """
    charged: collections.Counter = collections.Counter()  # attempts per task whose code raised
    while True:
        response = _run_splitting(spec, send, policy, counts)
        if response.fatal is not None or not response.errors:
            return response
        if any("failure" in error for error in response.errors.values()):
            return response  # the infrastructure's retries are spent: not a task's to repeat
        failed = [spec.keys[index] for index in response.errors]
        charged.update(failed)
        if any(charged[key] > policy.retries_of(key) for key in failed):
            return response
        counts.add(task_retries=1)


def _run_splitting(spec: BatchSpec, send: Send, policy: BatchPolicy, counts: Counts):
    """Run ``spec`` once on its memory tier; a runtime failure of several tasks re-runs them in
    halves; a task out of memory runs once more on the next larger tier, if escalating."""
    tier = policy.tier_of(spec.keys[0])
    larger = policy.next_tier(tier) if policy.next_tier is not None else None
    while True:
        try:
            return send(spec, tier, len(spec.keys) > 1, larger is None)
        except SplitBatch:
            counts.add(infra_retries=1, splits=1)
            return _run_halves(spec, send, policy, counts)
        except LambdaFunctionError as e:
            if larger is None or failure_kind(e) != "memory":
                raise
            counts.add(infra_retries=1, escalations=1)
            tier, larger = larger, None


def _run_halves(spec: BatchSpec, send: Send, policy: BatchPolicy, counts: Counts):
    """Run the first half of ``spec``'s tasks, then the second with what it needs of the first;
    one response for ``spec`` (indices and outputs as if it had run whole)."""
    half = len(spec.keys) // 2
    parts = ((spec.keys[:half], spec.tasks[:half]), (spec.keys[half:], spec.tasks[half:]))
    wanted = set(spec.outputs)
    later_needs = {dep for task in spec.tasks[half:] for dep in task.dependencies}
    locations: dict = dict(spec.inputs)
    results: dict = {}
    errors: dict[int, dict] = {}
    timings: list = [None] * len(spec.keys)
    moved: collections.Counter = collections.Counter()
    for offset, (keys, nodes) in zip((0, half), parts, strict=True):
        needs = {dep for task in nodes for dep in task.dependencies} - set(keys)
        if any(key not in locations for key in needs):  # an input failed in the first half
            break
        outputs = [k for k in keys if k in wanted or (offset == 0 and k in later_needs)]
        part = BatchSpec(spec.compute_id, keys, nodes, outputs, {k: locations[k] for k in needs})
        try:
            response = _run_splitting(part, send, policy, counts)
        except LambdaFunctionError as failure:
            if not (policy.isolate and len(keys) == 1):
                raise
            failed = Result("error", None, None, 0, None)
            response = BatchResponse(
                [failed] * len(outputs), {0: {"index": 0, "failure": failure}}, {}
            )
        if response.fatal is not None:
            return response
        for key, result in zip(outputs, response.results, strict=True):
            results[key] = result
            if result.status == "ok":
                locations[key] = result.location()
        for index, error in response.errors.items():
            errors[index + offset] = {**error, "index": index + offset}
        for index, span in enumerate(response.timings or ()):
            timings[index + offset] = span
        moved.update({k: v for k, v in response.stats.items()
                      if k in ("inline_bytes", "s3_bytes_written")})  # fmt: skip
    skipped = Result("skipped", None, None, 0, None)
    outcome = [results.get(k, skipped) for k in spec.outputs]
    return BatchResponse(outcome, errors, dict(moved), timings=timings)


def straggler_limit(durations: list[float], multiplier: float, min_seconds: float) -> float | None:
    """Seconds after which a running batch is a straggler worth a second copy: ``multiplier``
    times the median of the finished batches, at least ``min_seconds``; None before three have
    finished (too few to know what is slow)."""
    if len(durations) < 3:
        return None
    return max(min_seconds, multiplier * statistics.median(durations))
