"""The Lambda entry point: ``dask_lambda.handler.lambda_handler``.

Runs on the Lambda side only and imports nothing of the client (no scheduler, cluster, CLI,
``distributed`` or the local Lambda): just :mod:`.protocol` and :mod:`.storage`. boto3 is imported
on first use of S3, so a batch with only inline data never pays for it.

Every event must be signed with the function's key (:mod:`.protocol`); a function deployed with
an allowlist unpickles through it (:mod:`.allowlist`). For a ``run`` request it unpickles the
batch, fetches the inputs that live in S3 (in parallel),
runs the nodes in the order given (a topological order, chosen on the client by ``dask.order``),
frees each intermediate value once its last consumer in the batch has run, and returns every
requested result inline or, past the inline limit or the response budget, as an S3 reference it
wrote itself. A failing task fails only the tasks that depend on it; its exception travels back
pickled with its traceback. See :mod:`.protocol` for the message formats.
"""

from __future__ import annotations

import os
import resource
import time
import uuid
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import cloudpickle

from . import allowlist, protocol
from .storage import S3Store, object_name

KEY_VARIABLE = "DASK_LAMBDA_KEY_PARAMETER"  # see dask_lambda.keys (client side)
_state: dict[str, Any] = {"cold": True, "pool": None, "runtime_id": uuid.uuid4().hex[:12]}


def lambda_handler(event: dict, context: Any) -> dict:
    """Run one dask-lambda request; see :mod:`dask_lambda.protocol`."""
    started = time.perf_counter()
    cold, _state["cold"] = _state["cold"], False
    try:
        payload = protocol.open_envelope(event, fetch=_fetch_payload, key=_signing_key())
    except protocol.ProtocolError as e:
        print(f"dask-lambda refused an event: {e}")  # the function's log: who sent what
        raise
    op = payload.get("op")
    if op == "ping":
        body: dict[str, Any] = {"stats": {}}
    elif op == "run":
        body = _run(payload, started)
    else:
        raise protocol.ProtocolError(f"Unknown dask-lambda operation {op!r}: expected ping or run")
    body["versions"] = protocol.versions()
    body["stats"].update(
        cold_start=cold,
        peak_memory_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        duration=time.perf_counter() - started,
        request_id=getattr(context, "aws_request_id", None),
        runtime_id=_state["runtime_id"],
        memory_limit_mb=int(getattr(context, "memory_limit_in_mb", 0) or 0),
    )
    return protocol.envelope(protocol.encode_payload(body))


def _fetch_payload(bucket: str, key: str) -> bytes:
    try:
        return S3Store(bucket).get(key)
    except Exception as e:
        raise protocol.TransientError(f"Could not read the spilled request {key}: {e}") from e


def _signing_key() -> bytes:
    """The function's key, read once per runtime from the SSM parameter its environment names."""
    if "key" not in _state:
        name = os.environ.get(KEY_VARIABLE)
        if not name:
            raise protocol.SignatureError(
                f"This function has no signing key ({KEY_VARIABLE} is not set), so it runs"
                " nothing. Deploy it with `dask-lambda deploy`, which creates one."
            )
        import boto3

        value = boto3.client("ssm").get_parameter(Name=name, WithDecryption=True)
        _state["key"] = bytes.fromhex(value["Parameter"]["Value"])
    return _state["key"]


def _loads(data: bytes) -> Any:
    """Unpickle; through the allowlist when the function has one (see :mod:`.allowlist`)."""
    if "allowed" not in _state:
        _state["allowed"] = allowlist.parse(os.environ.get(allowlist.ENV_VARIABLE))
    if _state["allowed"]:
        return allowlist.loads(data, _state["allowed"])
    return cloudpickle.loads(data)


def _io_pool() -> ThreadPoolExecutor:
    if _state["pool"] is None:
        _state["pool"] = ThreadPoolExecutor(16, thread_name_prefix="dask-lambda-io")
    return _state["pool"]


def _run(payload: dict, started: float) -> dict:
    stats = {"s3_bytes_read": 0, "s3_bytes_written": 0, "inline_bytes": 0}
    try:
        spec: protocol.BatchSpec = _loads(payload["spec"])
    except Exception as e:
        return {"fatal": error_info(-1, e), "stats": stats}
    store = S3Store(payload["store"]["bucket"], kms_key_id=payload["store"].get("kms_key_id"))
    prefix = payload["store"]["prefix"]
    values = _load_inputs(spec, store, stats)

    remaining_uses: Counter = Counter(dep for node in spec.tasks for dep in node.dependencies)
    output_index = {key: i for i, key in enumerate(spec.outputs)}
    results: list = [["skipped", None, None, 0] for _ in spec.outputs]
    uploads: list[tuple[list, Future]] = []
    budget = {
        "inline": payload["inline_limit"],
        "response": payload["response_limit"],
        "largest": payload.get("max_object_bytes") or float("inf"),
    }
    failed: set = set()
    errors, timings = [], []
    for index, node in enumerate(spec.tasks):
        key = node.key
        if failed.intersection(node.dependencies):
            failed.add(key)
            timings.append(None)
            continue
        began = time.perf_counter()
        try:
            value = node(values)
            values[key] = value
            if key in output_index:
                name = object_name(prefix, spec.compute_id, key)
                results[output_index[key]] = _output(value, name, store, budget, uploads, stats)
        except Exception as e:
            failed.add(key)
            values.pop(key, None)
            errors.append(error_info(index, e))
            if key in output_index:
                results[output_index[key]] = ["error", None, None, 0]
        timings.append([began - started, time.perf_counter() - started])
        for dep in node.dependencies:
            remaining_uses[dep] -= 1
            if remaining_uses[dep] <= 0:
                values.pop(dep, None)
        if not remaining_uses.get(key):
            values.pop(key, None)
    for entry, upload in uploads:
        try:
            stats["s3_bytes_written"] += upload.result()
        except Exception as e:
            raise protocol.TransientError(f"Could not write a result to S3: {e}") from e
        entry[0] = "ok"
    return {"results": results, "errors": errors, "timings": timings, "stats": stats}


def _load_inputs(spec: protocol.BatchSpec, store: S3Store, stats: dict) -> dict:
    values: dict = {}
    remote = []
    for key, ref in spec.inputs.items():
        if ref[0] == "inline":
            values[key] = _loads(ref[1])
        else:
            remote.append((key, ref[1], ref[2]))
    try:
        fetched = list(_io_pool().map(lambda item: store.get(item[1], item[2]), remote))
    except Exception as e:
        raise protocol.TransientError(f"Could not read an input from S3: {e}") from e
    for (key, _, size), data in zip(remote, fetched, strict=True):
        values[key] = _loads(data)
        stats["s3_bytes_read"] += size
    return values


def _output(value, name: str, store: S3Store, budget: dict, uploads: list, stats: dict) -> list:
    data = cloudpickle.dumps(value, protocol=5)
    if len(data) > budget["largest"]:
        raise ValueError(
            f"This task's result is {len(data)} bytes pickled, over the largest object dask-lambda"
            f" may store ({budget['largest']} bytes, lambda.spill.max-object-bytes). Split it into"
            " smaller chunks, or raise the limit (within the function's memory and /tmp)."
        )
    if len(data) <= budget["inline"] and len(data) <= budget["response"]:
        budget["response"] -= len(data)
        stats["inline_bytes"] += len(data)
        return ["ok", "inline", data, len(data)]
    entry = ["pending", "s3", name, len(data)]
    uploads.append((entry, _io_pool().submit(store.put, name, data)))
    return entry


def error_info(index: int, exc: BaseException) -> dict:
    """An exception as the protocol carries it (see :mod:`.protocol`)."""
    from tblib import Traceback

    try:
        pickled = cloudpickle.dumps(exc)
    except Exception:
        pickled = None
    try:
        traceback = Traceback(exc.__traceback__).to_dict() if exc.__traceback__ else None
    except Exception:
        traceback = None
    return {
        "index": index,
        "type": type(exc).__qualname__,
        "module": type(exc).__module__,
        "message": str(exc),
        "exception": pickled,
        "traceback": traceback,
    }
