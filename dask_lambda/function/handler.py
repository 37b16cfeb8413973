"""The Lambda entry point: ``dask_lambda.function.handler.lambda_handler``.

Runs on the Lambda side only and imports nothing outside :mod:`dask_lambda.function` (no
scheduler, cluster, CLI, emulator or ``distributed``; a test enforces it). boto3 is imported on
first use of S3 or SSM, so a batch with only inline data never pays for it.

Every event must be signed with the function's key (:mod:`.protocol`), checked before anything is
read or unpickled; a spilled request is fetched only from the function's own bucket and prefix,
only at its signed size (at most a quarter of the function's memory) and digest. A function
deployed with an allowlist unpickles through it (:mod:`.allowlist`). For a ``run`` request it
unpickles the batch, fetches the inputs that live in S3 (in parallel, each checked against the
size and SHA-256 the signed batch names), runs the nodes in the order given (a topological order,
chosen on the client by ``dask.order``), frees each intermediate value once its last consumer in
the batch has run, and returns every requested result inline or, past the inline limit or the
response budget, as an S3 reference it wrote itself, with its digest. A failing task fails only
the tasks that depend on it; its exception travels back with its traceback
(:mod:`.errors`), whatever it derives from: ``SystemExit`` and ``KeyboardInterrupt`` raised
by a task are that task's errors, while a real interrupt of the runtime still ends it.
"""

from __future__ import annotations

import os
import resource
import signal
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from . import calls, contract, dependencies, protocol, storage, values
from .errors import RESERVED, ErrorBudget, error_info
from .storage import S3Store, object_name

_state: dict[str, Any] = {"cold": True, "pool": None, "runtime_id": uuid.uuid4().hex[:12]}


def _after_restore() -> None:
    """SnapStart: every environment restored from one snapshot starts with the snapshot's
    memory, so what must be unique (random state, this runtime's id) is made anew here, and
    connections made during init are dropped rather than shared."""
    import random
    import sys

    random.seed()
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed()
    _state["runtime_id"] = uuid.uuid4().hex[:12]
    _state.pop("key", None)  # read again with this environment's connection
    storage.forget_clients()
    dependencies.mounted.clear()  # the snapshot mounted them: this environment paid nothing
    _state["restored"] = True


# What a first task imports, loaded into a SnapStart snapshot rather than by every restored
# environment; the collections whose libraries the function lacks are skipped.
SNAPSHOT_IMPORTS = ("numpy", "dask.array", "dask.bag", "dask.dataframe")


def _before_snapshot() -> None:
    """SnapStart: the snapshot is taken after this, so what it imports costs restores nothing
    (AWS's advice: do the expensive start-up work in init). Only a SnapStart version's init
    runs it; a plain cold start imports what its tasks need, when they need it."""
    import importlib

    for name in SNAPSHOT_IMPORTS:
        try:
            importlib.import_module(name)
        except ImportError:
            continue


try:  # Lambda's managed python runtime (3.12+) has it; SnapStart runs what it registers
    from snapshot_restore_py import register_after_restore, register_before_snapshot
except ImportError:  # pragma: no cover - outside Lambda
    pass
else:
    register_before_snapshot(_before_snapshot)
    register_after_restore(_after_restore)


def lambda_handler(event: dict, context: Any) -> dict:
    """Run one dask-lambda request; see :mod:`dask_lambda.function.protocol`."""
    started = time.perf_counter()
    cold, _state["cold"] = _state["cold"], False
    if cold:
        _watch_interrupts()
    try:
        payload = protocol.open_envelope(event, fetch=_fetch_payload, key=_signing_key())
    except (protocol.ProtocolError, protocol.IntegrityError) as e:
        print(f"dask-lambda refused an event: {e}")  # the function's log: who sent what
        raise
    op = payload.get("op")
    if op == "ping":
        body: dict[str, Any] = {"stats": {}, "libraries": protocol.runtime_libraries()}
    elif op == "run":
        body = _run(payload, started)
    else:
        raise protocol.ProtocolError(f"Unknown dask-lambda operation {op!r}: expected ping or run")
    body["versions"] = protocol.versions()
    if cold and dependencies.mounted:
        body["stats"]["dependencies"] = dict(dependencies.mounted)
    if cold and _state.get("restored"):
        body["stats"]["restored"] = True  # a SnapStart restore, not an init
    body["stats"].update(
        cold_start=cold,
        peak_memory_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        duration=time.perf_counter() - started,
        request_id=getattr(context, "aws_request_id", None),
        runtime_id=_state["runtime_id"],
    )
    return protocol.envelope(protocol.encode_payload(body))


def _watch_interrupts() -> None:
    """Remember a real SIGINT, so a task's own ``KeyboardInterrupt`` can be told from it."""
    if threading.current_thread() is not threading.main_thread():
        return  # handlers run in threads only in the local Lambda's simulation mode

    def interrupted(signum, frame):
        _state["interrupted"] = True
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupted)


def _fetch_payload(ref: dict) -> bytes:
    """Read a signed ``payload_ref``: own bucket and prefix only, signed size within the limit."""
    bucket, prefix = os.environ.get(contract.BUCKET), os.environ.get(contract.PREFIX)
    if bucket and ref["bucket"] != bucket:
        raise protocol.ProtocolError(
            f"Refused a payload_ref in bucket {ref['bucket']!r}: this function reads requests"
            f" only from its own bucket {bucket!r}."
        )
    if prefix and not ref["key"].startswith(prefix.strip("/") + "/"):
        raise protocol.ProtocolError(
            f"Refused a payload_ref outside this function's prefix {prefix!r}."
        )
    memory_mb = int(os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE") or 128)
    limit = memory_mb * 1024 * 1024 // 4
    if ref["size"] > limit:
        raise protocol.ProtocolError(
            f"Refused a spilled request of {ref['size']} bytes: over a quarter of this function's"
            f" {memory_mb} MB. Use smaller tasks or give the function more memory."
        )
    expected = protocol.Stored(ref["key"], ref["size"], ref["sha256"])
    return _read_checked(S3Store(ref["bucket"]), expected, "the spilled request")


def _read_checked(store: S3Store, expected: protocol.Stored, what: str) -> bytes:
    """The object's bytes, checked (:func:`.values.read`); a tampered object stays an
    ``IntegrityError`` and a missing one a ``MissingDataError``, any other failure to read is
    transient (the client retries the batch)."""
    try:
        return values.read(expected, store)
    except (protocol.IntegrityError, protocol.MissingDataError):
        raise
    except Exception as e:
        raise protocol.TransientError(f"Could not read {what} {expected.name}: {e}") from e


def _signing_key() -> bytes:
    """The function's key, read once per runtime from the SSM parameter its environment names."""
    if "key" not in _state:
        name = os.environ.get(contract.KEY_PARAMETER)
        if not name:
            raise protocol.SignatureError(
                f"This function has no signing key ({contract.KEY_PARAMETER} is not set), so it"
                " runs nothing. Deploy it with `dask-lambda deploy`, which creates one."
            )
        import boto3

        _state["key"] = contract.read_key(boto3.client("ssm"), name)
    return _state["key"]


def _io_pool() -> ThreadPoolExecutor:
    if _state["pool"] is None:
        _state["pool"] = ThreadPoolExecutor(16, thread_name_prefix="dask-lambda-io")
    return _state["pool"]


def _size(sizeof, value) -> int:
    try:
        return int(sizeof(value))
    except Exception:  # a value dask cannot size still ran
        return 0


def _run(payload: dict, started: float) -> dict:
    stats = {"s3_bytes_read": 0, "s3_bytes_written": 0, "inline_bytes": 0}
    try:
        spec: protocol.BatchSpec = values.loads(payload["spec"])
        store = S3Store(payload["store"]["bucket"], kms_key_id=payload["store"].get("kms_key_id"))
        calls.current["store"] = store
        known, missing = _load_inputs(spec, store, stats)
    except protocol.TransientError:
        raise
    except Exception as e:
        return {"fatal": error_info(-1, e), "stats": stats}
    from dask.sizeof import sizeof  # dask is loaded already: the tasks are dask's task specs

    prefix = payload["store"]["prefix"]
    remaining_uses: Counter = Counter(dep for node in spec.tasks for dep in node.dependencies)
    output_index = {key: i for i, key in enumerate(spec.outputs)}
    results: list = [["skipped", None, None, 0, None] for _ in spec.outputs]
    uploads: list[tuple[list, Future]] = []
    budget = {
        "inline": payload["inline_limit"],
        "response": payload["response_limit"] - RESERVED,
        "largest": payload.get("max_object_bytes"),
    }
    failed: set = set()
    errors, timings = ErrorBudget(), []
    for index, (key, node) in enumerate(zip(spec.keys, spec.tasks, strict=True)):
        gone = [missing[dep] for dep in node.dependencies if dep in missing]
        if gone or failed.intersection(node.dependencies):
            failed.add(key)
            timings.append(None)
            if gone:  # an input that is no longer stored: this task's error, not the batch's
                errors.add(index, gone[0])
                if key in output_index:
                    results[output_index[key]] = ["error", None, None, 0, None]
            continue
        began = time.perf_counter()
        nbytes = 0
        try:
            value = node(known)
            known[key] = value
            nbytes = _size(sizeof, value)
            if key in output_index:
                name = object_name(prefix, spec.compute_id, key)
                results[output_index[key]] = _output(value, name, store, budget, uploads, stats)
        except BaseException as e:
            if isinstance(e, KeyboardInterrupt) and _state.get("interrupted"):
                raise  # the runtime itself is being interrupted, not this task
            failed.add(key)
            known.pop(key, None)
            errors.add(index, e)
            if key in output_index:
                results[output_index[key]] = ["error", None, None, 0, None]
        timings.append([began - started, time.perf_counter() - started, nbytes])
        for dep in node.dependencies:
            remaining_uses[dep] -= 1
            if remaining_uses[dep] <= 0:
                known.pop(dep, None)
        if not remaining_uses.get(key):
            known.pop(key, None)
    for entry, upload in uploads:
        try:
            stored = upload.result()
        except Exception as e:
            raise protocol.TransientError(f"Could not write a result to S3: {e}") from e
        stats["s3_bytes_written"] += stored.nbytes
        entry[0], entry[4] = "ok", stored.sha256
    stats["task_seconds"] = sum(span[1] - span[0] for span in timings if span)
    step = protocol.timing_step(len(timings))
    return {"results": results, "errors": errors.entries, "timings": timings[::step],
            "timing_step": step, "stats": stats}  # fmt: skip


def _load_inputs(spec: protocol.BatchSpec, store: S3Store, stats: dict) -> tuple[dict, dict]:
    """``(values, missing)``: the batch's inputs, read and checked (:mod:`.values`), and the
    ``MissingDataError`` of each stored input that is gone (only the tasks needing it fail)."""

    def fetch(item):
        try:
            return _read_checked(store, item[1], "an input")
        except protocol.MissingDataError as e:
            return e

    inputs, missing = {}, {}
    remote = [(key, ref) for key, ref in spec.inputs.items() if isinstance(ref, protocol.Stored)]
    fetched = dict(zip([key for key, _ in remote], _io_pool().map(fetch, remote), strict=True))
    for key, ref in spec.inputs.items():
        data = fetched[key] if key in fetched else values.read(ref, store)
        if isinstance(data, protocol.MissingDataError):
            missing[key] = data
            continue
        inputs[key] = values.loads(data)
        stats["s3_bytes_read"] += len(data) if key in fetched else 0
    return inputs, missing


def _output(value, name: str, store: S3Store, budget: dict, uploads: list, stats: dict) -> list:
    data = values.dumps(value)
    stored = values.placement(len(data), min(budget["inline"], budget["response"]),
                              budget["largest"], "This task's result")  # fmt: skip
    if not stored:
        budget["response"] -= len(data)
        stats["inline_bytes"] += len(data)
        return ["ok", "inline", data, len(data), None]
    entry = ["pending", "s3", name, len(data), None]  # the digest comes with the upload
    uploads.append((entry, _io_pool().submit(store.put, name, data)))
    return entry
