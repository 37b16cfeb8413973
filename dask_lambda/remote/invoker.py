"""Invoking the function: one boto3 client, bounded retries, payload spill, error mapping.

botocore's own invoke retries are off (``total_max_attempts=1``): a botocore retry after a read
timeout would run the function again behind our back. ``read_timeout`` sits above the function's
timeout. Whether and when to try again is :mod:`.attempts`' decision (the one attempt policy):
bounded, with exponential backoff and full jitter, and only for failures of the infrastructure.
An exception raised by user code is part of a successful response and is never retried here.

A request whose envelope would exceed Lambda's 6 MB limit is stored in S3 first and the event
carries a reference (see :mod:`.protocol`).

Requests go out through a :mod:`.transport`: the lean one (botocore's SigV4 signer over pooled
keep-alive connections) by default, boto3's ``invoke`` with ``lambda.invoke-client: boto3``;
both give the invoker the same answers and errors, so retries do not depend on the choice.
"""

from __future__ import annotations

import collections
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from botocore.config import Config

from .. import limits
from ..attempts import (
    THROTTLED,
    InvocationAttempts,
    SplitBatch,
    Verdict,
    failure_kind,
    retryable_function_error,
    retryable_service_error,
)
from ..exceptions import LambdaFunctionError
from ..function import protocol
from ..function.storage import S3Store
from ..settings import INVOKE_CLIENTS, Settings
from .transport import Boto3Transport, ConnectionFailure, LeanTransport, ServiceError

REQUEST_LIMIT = limits.SYNC_PAYLOAD_BYTES - 4096  # room for the event around the payload
RECORDS_KEPT = 200_000  # per-invocation records an invoker keeps (for timelines)


@dataclass
class InvokeStats:
    """Counters over the invocations of one :class:`Invoker` (thread-safe updates)."""

    invocations: int = 0
    infra_retries: int = 0
    task_retries: int = 0
    throttles: int = 0
    cold_starts: int = 0
    request_bytes: int = 0
    response_bytes: int = 0
    spilled_requests: int = 0
    spilled_request_bytes: int = 0  # requests too large for Lambda, uploaded to S3
    splits: int = 0  # batches re-run in halves after a runtime failure
    escalations: int = 0  # tasks re-run on a larger memory tier after running out of memory
    records: collections.deque = field(
        default_factory=lambda: collections.deque(maxlen=RECORDS_KEPT)
    )
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **counts: int) -> None:
        with self.lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)


class Invoker:
    """Invokes one function with the dask-lambda protocol.

    Parameters
    ----------
    function_name
        Name or ARN of the function.
    lambda_client_factory
        ``factory(config) -> boto3 Lambda client``.
    max_concurrency
        Invocations in flight at most (sizes the connection pool).
    function_timeout
        The function's timeout in seconds (``read_timeout`` is set above it).
    store
        Where oversized request payloads are spilled.
    infra_retries, retry_backoff
        Bounded retry policy for infrastructure failures.
    signing_key
        The function's key (:mod:`.signing`); every event is signed with it.
    credentials
        The boto3 session's credentials, for the lean transport (None: boto3's ``invoke``).
    invoke_client
        ``"lean"`` or ``"boto3"`` (None: ``lambda.invoke-client``); see :mod:`.transport`.
    """

    def __init__(
        self,
        function_name: str,
        lambda_client_factory,
        max_concurrency: int,
        function_timeout: float,
        store: S3Store | None,
        payload_prefix: str = "dask-lambda",
        infra_retries: int = 3,
        retry_backoff: float = 0.1,
        signing_key: bytes | None = None,
        credentials=None,
        invoke_client: str | None = None,
        throttle_retries: int | None = None,
        throttle_backoff: float | None = None,
    ):
        self.function_name = function_name
        self.max_concurrency = max_concurrency
        if None in (throttle_retries, throttle_backoff, invoke_client):  # lambda.yaml's
            defaults = Settings.from_config(local=False)
            if throttle_retries is None:
                throttle_retries = defaults.throttle_retries
            if throttle_backoff is None:
                throttle_backoff = defaults.throttle_backoff
            invoke_client = invoke_client or defaults.invoke_client
        self.throttle_retries, self.throttle_backoff = throttle_retries, throttle_backoff
        self.signing_key = signing_key
        self.signature_ttl = function_timeout + 900
        self.store = store
        self.payload_prefix = payload_prefix
        self.infra_retries = infra_retries
        self.retry_backoff = retry_backoff
        self.stats = InvokeStats()
        config = Config(
            read_timeout=function_timeout + 60,
            connect_timeout=10,
            retries={"total_max_attempts": 1},
            max_pool_connections=max(10, max_concurrency + 2),
            tcp_keepalive=True,
        )
        self.client = lambda_client_factory(config)
        kind = invoke_client
        if kind not in INVOKE_CLIENTS:
            raise ValueError(
                f"lambda.invoke-client is {kind!r}: use one of {', '.join(INVOKE_CLIENTS)}"
            )
        if kind == "lean" and credentials is not None and LeanTransport.usable(self.client):
            self.transport = LeanTransport(
                self.client, credentials, max(10, max_concurrency + 2),
                config.connect_timeout, config.read_timeout,
            )  # fmt: skip
        else:
            self.transport = Boto3Transport(self.client)

    def close(self) -> None:
        """Close the transport's idle connections."""
        self.transport.close()

    def call(
        self,
        payload: dict[str, Any],
        task_keys: list | None = None,
        stats: InvokeStats | None = None,
        payload_prefix: str | None = None,
        split: bool = False,
        confirm_memory: bool = True,
    ) -> dict[str, Any]:
        """Invoke with ``payload``; return the decoded response payload.

        Counts go to ``stats`` as well as to the invoker's own totals. A request too large for
        Lambda is stored under ``payload_prefix`` (the invoker's default if None) for the call.

        A runtime that crashed, ran out of memory or timed out is retried, except that with
        ``split`` (a batch of several tasks the caller can divide) it raises :class:`SplitBatch`
        at once, and that a single task running out of memory or time twice in a row is not
        retried again: the same memory and timeout would fail the same way. With
        ``confirm_memory`` False, one that ran out of memory once is not retried at all (the
        caller moves it to a larger memory tier).

        Raises
        ------
        LambdaFunctionError
            The function failed outside user code, after the allowed retries.
        SplitBatch
            With ``split``: the runtime failed; re-run the batch in parts.
        """
        counters = _Counters(self.stats, stats)
        data = protocol.encode_payload(payload)
        spilled_key = None
        if protocol.envelope_size(data) > REQUEST_LIMIT:
            if self.store is None:
                raise ValueError(
                    f"A request of {len(data)} bytes exceeds Lambda's 6 MB limit and no spill"
                    " bucket is configured: pass bucket= (or set lambda.bucket)"
                )
            prefix = (payload_prefix or self.payload_prefix).rstrip("/")
            spilled_key = f"{prefix}/payloads/{uuid.uuid4().hex}"
            stored = self.store.put(spilled_key, data)
            ref = {"bucket": self.store.bucket, "key": spilled_key, "size": stored.nbytes,
                   "sha256": stored.sha256}  # fmt: skip
            event = protocol.reference_envelope(ref, self.signing_key, self.signature_ttl)
            counters.add(spilled_requests=1, request_bytes=len(data),
                         spilled_request_bytes=len(data))  # fmt: skip
        else:
            event = protocol.envelope(data, self.signing_key, self.signature_ttl)
        body = json.dumps(event).encode()
        try:
            return self._call_with_retries(body, task_keys or [], counters, split, confirm_memory)
        finally:
            if spilled_key is not None:
                self.store.delete([spilled_key])

    def _call_with_retries(
        self,
        body: bytes,
        task_keys: list,
        stats: _Counters,
        split: bool = False,
        confirm_memory: bool = True,
    ) -> dict[str, Any]:
        attempts = InvocationAttempts(
            self.infra_retries, self.retry_backoff, self.throttle_retries,
            self.throttle_backoff, len(task_keys), split, confirm_memory,
        )  # fmt: skip
        while True:
            attempt = attempts.start()
            try:
                return self._call_once(body, task_keys, attempt, stats)
            except _Retryable as e:
                verdict = attempts.failed(e.error)
                if verdict.action == "retry":
                    stats.add(infra_retries=1)
                    time.sleep(verdict.delay)
                elif verdict.action == "split":
                    raise SplitBatch(e.error) from None
                else:
                    raise self._give_up(e.error, verdict, attempt) from None

    def _call_once(self, body: bytes, task_keys: list, attempt: int, stats: _Counters) -> dict:
        started = time.time()
        try:
            answer = self.transport.invoke(self.function_name, body)
        except ServiceError as e:
            message = e.message or str(e)
            if e.code == THROTTLED:
                stats.add(throttles=1)
            if e.code == "ResourceNotFoundException":
                message += (
                    f". Was it deleted, or is it in another region? Deploy it:"
                    f" dask-lambda deploy {self.function_name}"
                )
            error = LambdaFunctionError(self.function_name, e.code, message, task_keys)
            if retryable_service_error(e.code, e.status):
                raise _Retryable(error) from None
            raise error from None
        except ConnectionFailure as e:
            raise _Retryable(
                LambdaFunctionError(self.function_name, e.kind, str(e), task_keys)
            ) from None
        raw = answer.payload
        stats.add(invocations=1, request_bytes=len(body), response_bytes=len(raw))
        if answer.function_error:
            stopped = time.time()
            stats.record(  # billed too: Lambda charges for the time a failed invocation ran
                {"start": started, "stop": stopped, "tasks": len(task_keys), "attempt": attempt,
                 "request_bytes": len(body), "response_bytes": len(raw),
                 "duration": stopped - started, "failed": True}
            )  # fmt: skip
            self._function_error(raw, task_keys, answer.request_id)
        decoded = protocol.open_envelope(raw)
        remote = decoded.get("stats", {})
        if remote.get("cold_start"):
            stats.add(cold_starts=1)
        stats.record(
            {
                "start": started,
                "stop": time.time(),
                "tasks": len(task_keys),
                "attempt": attempt,
                "request_bytes": len(body),
                "response_bytes": len(raw),
                **{k: remote.get(k) for k in ("cold_start", "duration", "peak_memory_mb",
                                              "task_seconds")},  # fmt: skip
                "request_id": remote.get("request_id"),
                "runtime_id": remote.get("runtime_id"),
                "task_timings": decoded.get("timings"),
                **({"dependencies": remote["dependencies"]} if "dependencies" in remote else {}),
                **({"restored": True} if remote.get("restored") else {}),
            }
        )
        return decoded

    def _give_up(self, error: LambdaFunctionError, verdict: Verdict, attempts: int):
        """The error to raise when no attempt is left, with what to change said once."""
        advice = self._advice(error, verdict, attempts)
        message = f"{error.error_message}. {advice}" if advice else error.error_message
        return LambdaFunctionError(self.function_name, error.error_type, message,
                                   error.task_keys, error.request_id, attempts)  # fmt: skip

    def _advice(self, error: LambdaFunctionError, verdict: Verdict, attempts: int) -> str | None:
        name = self.function_name
        if verdict.action == "throttled":
            return (
                f"Lambda throttled every attempt ({attempts}): more invocations run at once than"
                f" the function's concurrency allows. Lower max_concurrency (now"
                f" {self.max_concurrency}: LambdaCluster(max_concurrency=...) or"
                f" lambda.max-concurrency), raise the function's reserved concurrency (aws lambda"
                f" put-function-concurrency --function-name {name}"
                " --reserved-concurrent-executions N) or the account's concurrency quota, or"
                " allow more retries (lambda.throttle-retries)"
            )
        repeated = verdict.action == "repeated"
        kind = verdict.kind or failure_kind(error)
        if kind == "memory":
            times = "twice" if attempts > 1 else "once"
            return (
                f"It ran out of memory {times} at this memory size: not retried here. Give it"
                f" more memory (dask-lambda update {name} --memory MB, up to"
                f" {limits.MAX_MEMORY_MB}, or LambdaCluster(memory=...); or a memory tier for"
                " this task alone: dask.annotate(resources={'memory': MB}) with memory_tiers)"
                " or make the task's chunks smaller"
            ) if repeated else None  # fmt: skip
        if kind == "timeout":
            what = ("It timed out twice at the same timeout: not retried again" if repeated
                    else "A batch ran longer than the function's timeout")  # fmt: skip
            return (
                f"{what}. Raise the timeout (dask-lambda update {name} --timeout SECONDS, at"
                f" most {limits.MAX_TIMEOUT_SECONDS}) or split the work into smaller tasks (or"
                " lower lambda.batch.max-tasks)"
            )
        return None

    def _function_error(self, raw: bytes, task_keys: list, request_id: str | None) -> None:
        try:
            error = json.loads(raw)
        except ValueError:
            error = {"errorType": "Unknown", "errorMessage": raw[:500].decode(errors="replace")}
        error_type = error.get("errorType", "Unknown")
        message = error.get("errorMessage", "")
        if error_type == "IntegrityError":
            raise protocol.IntegrityError(f"{message} (function {self.function_name!r})")
        failure = LambdaFunctionError(
            self.function_name,
            error_type,
            message,
            task_keys,
            request_id=request_id,
        )
        if retryable_function_error(error_type):
            raise _Retryable(failure)
        raise failure


class _Counters:
    """Counts go to the invoker's totals and, if given, to one compute's counters too."""

    def __init__(self, *targets: InvokeStats | None):
        self.targets = [t for t in targets if t is not None]

    def add(self, **counts: int) -> None:
        for target in self.targets:
            target.add(**counts)

    def record(self, record: dict) -> None:
        for target in self.targets:
            with target.lock:
                target.records.append(record)


class _Retryable(Exception):
    def __init__(self, error: LambdaFunctionError):
        super().__init__(str(error))
        self.error = error
