"""``Invoke`` as Lambda does it: limits, invocation types, errors, throttling and log tails.

The front door hands every ``POST /2015-03-31/functions/{name}/invocations`` here with the
function's current :class:`~dask_lambda.emulator.runtimes.FunctionSpec`. What the caller sees is
what AWS answers (botocore parses both the same way):

- request over 6 MB (1 MB for ``Event``): 413 ``RequestEntityTooLargeException``;
- a payload that is not JSON: 400 ``InvalidRequestContentException``;
- over the account's or the function's reserved concurrency: 429 ``TooManyRequestsException``
  with its ``Reason``;
- ``DryRun``: 204; ``Event``: 202, the function runs in the background;
- ``RequestResponse``: 200 with the handler's result, or with ``X-Amz-Function-Error: Unhandled``
  and ``{errorMessage, errorType, stackTrace}`` for a handler error, a timeout
  (``Sandbox.Timedout``), a runtime that died or ran out of memory (``Runtime.ExitError``), or a
  response over 6 MB (``Function.ResponseSizeTooLarge``);
- ``LogType: Tail``: the last 4 KB of the invocation's log (``START``/``END``/``REPORT`` lines
  included) in ``X-Amz-Log-Result``.
"""

from __future__ import annotations

import base64
import json
import math
import random
import threading
import time

from .. import limits
from .faults import FaultInjector
from .runtimes import FunctionSpec, Invocation, MiB, RuntimeManager, Throttled

SYNC_PAYLOAD_LIMIT = limits.SYNC_PAYLOAD_BYTES
ASYNC_PAYLOAD_LIMIT = 1_048_576
RESPONSE_LIMIT = limits.SYNC_PAYLOAD_BYTES
LOG_TAIL_BYTES = 4096
INIT_TIMEOUT_S = 10.0
ASYNC_RETRY_WINDOW_S = 60.0

Response = tuple[int, dict[str, str], bytes]


def error_response(status: int, code: str, message: str, **extra: object) -> Response:
    """An AWS REST-JSON error, as botocore expects it."""
    body = json.dumps({"Type": "User", "message": message, **extra}).encode()
    return status, {"x-amzn-ErrorType": code, "Content-Type": "application/json"}, body


class InvokeService:
    """Runs invocations on the runtimes of a :class:`RuntimeManager`."""

    def __init__(self, runtimes: RuntimeManager, faults: FaultInjector | None = None):
        self.runtimes = runtimes
        self.faults = faults or FaultInjector()
        self.counts = {"invocations": 0, "cold_starts": 0, "throttles": 0}
        self._counts_lock = threading.Lock()

    def _count(self, name: str) -> None:
        with self._counts_lock:
            self.counts[name] += 1

    def handle(self, spec: FunctionSpec, headers: dict[str, str], payload: bytes) -> Response:
        invocation_type = headers.get("x-amz-invocation-type", "RequestResponse")
        limit = ASYNC_PAYLOAD_LIMIT if invocation_type == "Event" else SYNC_PAYLOAD_LIMIT
        if len(payload) > limit:
            return error_response(
                413,
                "RequestEntityTooLargeException",
                f"Request must be smaller than {limit} bytes for the InvokeFunction operation",
            )
        if payload.strip():
            try:
                json.loads(payload)
            except (ValueError, RecursionError):  # too deep to parse is bad input, not a crash
                return error_response(
                    400, "InvalidRequestContentException", "Could not parse request body into json"
                )
        else:
            payload = b"{}"
        if invocation_type == "DryRun":
            return 204, {}, b""
        if invocation_type == "Event":
            threading.Thread(
                target=self._run_async, args=(spec, payload), daemon=True, name="async-invoke"
            ).start()
            return 202, {}, b""
        if invocation_type != "RequestResponse":
            return error_response(
                400,
                "InvalidParameterValueException",
                f"Unsupported InvocationType {invocation_type!r}:"
                " use RequestResponse, Event or DryRun",
            )
        try:
            inv = self.run(spec, payload)
        except Throttled as e:
            self._count("throttles")
            return error_response(
                429, "TooManyRequestsException", "Rate Exceeded.", Reason=e.reason
            )
        out = {"Content-Type": "application/json", "X-Amz-Executed-Version": spec.version,
               "x-amzn-RequestId": inv.request_id}  # fmt: skip
        if inv.error_type:
            out["X-Amz-Function-Error"] = inv.error_type
        if headers.get("x-amz-log-type") == "Tail":
            tail = "\n".join(inv.log_lines).encode()[-LOG_TAIL_BYTES:]
            out["X-Amz-Log-Result"] = base64.b64encode(tail).decode()
        return 200, out, inv.body

    def _run_async(self, spec: FunctionSpec, payload: bytes) -> None:
        deadline = time.monotonic() + ASYNC_RETRY_WINDOW_S
        delay = 0.05
        while True:
            try:
                self.run(spec, payload)
                return
            except Throttled:
                if time.monotonic() > deadline:
                    return
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    def run(self, spec: FunctionSpec, payload: bytes) -> Invocation:
        """Run one invocation to its end; raises :class:`Throttled` before it starts."""
        injected = self.faults.config_for(spec.name)
        if injected.invoke_latency_ms:
            time.sleep(injected.invoke_latency_ms / 1000)
        fault = self.faults.draw(spec.name)
        if fault == "throttle":
            raise Throttled("ConcurrentInvocationLimitExceeded")
        runtime, cold = self.runtimes.acquire(spec)
        self._count("invocations")
        if cold:
            self._count("cold_starts")
            if injected.cold_start_ms:
                time.sleep(injected.cold_start_ms / 1000)
        inv = Invocation(payload=payload, function_arn=spec.arn, timeout_s=spec.timeout_s)
        inv.doomed = fault is not None
        inv.log_lines.append(f"START RequestId: {inv.request_id} Version: {spec.version}")
        self.runtimes.record_log(spec.name, runtime.log_stream, inv.log_lines[0])
        try:
            runtime.assign(inv)
            if fault is not None:
                self._inject(fault, inv, runtime, spec)
            if not inv.picked.wait(INIT_TIMEOUT_S + spec.timeout_s):
                inv.fail("Sandbox.Timedout", _timed_out(spec))
                runtime.kill("timeout")
            remaining = inv.started + spec.timeout_s - time.monotonic() if inv.started else 0
            timed_out = not inv.done.wait(max(0.0, remaining))
            if timed_out and inv.fail("Sandbox.Timedout", _timed_out(spec)):
                runtime.kill("timeout")
            if len(inv.body) > RESPONSE_LIMIT and inv.error_type is None:
                inv.body = json.dumps(
                    {
                        "errorType": "Function.ResponseSizeTooLarge",
                        "errorMessage": "Response payload size exceeded maximum allowed payload "
                        f"size ({RESPONSE_LIMIT} bytes).",
                    }
                ).encode()
                inv.error_type = "Unhandled"
            inv.max_rss = max(inv.max_rss, runtime.rss())
            runtime.drain_logs()
        finally:
            self.runtimes.release(runtime)
        self._frame_logs(inv, spec, cold, runtime.log_stream)
        return inv

    @staticmethod
    def _inject(fault: str, inv: Invocation, runtime, spec: FunctionSpec) -> None:
        """Let the handler start (its side effects are real), then fail the invocation."""
        inv.picked.wait(INIT_TIMEOUT_S)
        time.sleep(random.uniform(0, 0.02))
        if fault == "timeout":
            inv.fail("Sandbox.Timedout", _timed_out(spec))
            runtime.kill("timeout")
        else:
            runtime.kill("memory" if fault == "oom" else "crash")

    def _frame_logs(self, inv: Invocation, spec: FunctionSpec, cold: bool, stream: str) -> None:
        rid = inv.request_id
        ended = inv.ended or time.monotonic()
        duration_ms = (ended - inv.started) * 1000 if inv.started else 0.0
        report = (
            f"REPORT RequestId: {rid}\tDuration: {duration_ms:.2f} ms\t"
            f"Billed Duration: {max(1, math.ceil(duration_ms))} ms\t"
            f"Memory Size: {spec.memory_mb} MB\t"
            f"Max Memory Used: {math.ceil(inv.max_rss / MiB)} MB\t"
        )
        if cold and inv.init_duration_ms is not None:  # SnapStart's restore replaces the init
            label = "Restore Duration" if inv.restored else "Init Duration"
            report += f"{label}: {inv.init_duration_ms:.2f} ms\t"
        inv.log_lines += [f"END RequestId: {rid}", report]  # START was recorded at the start
        for line in inv.log_lines[-2:]:
            self.runtimes.record_log(spec.name, stream, line)


def _timed_out(spec: FunctionSpec) -> str:
    return f"Task timed out after {spec.timeout_s:.2f} seconds"
