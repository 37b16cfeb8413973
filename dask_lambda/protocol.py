"""The wire protocol between the client and the Lambda handler (version 1).

Both sides import this module; it needs only the standard library, msgpack and cloudpickle.

Event (the JSON document sent to ``Invoke``)
    ``{"dask_lambda": 1, "payload": "<base64 msgpack>", "expires": T, "signature": S}``, or, when
    the encoded payload would not fit Lambda's 6 MB request limit, ``"payload_ref": {"bucket": B,
    "key": K}`` in place of ``payload`` with the same bytes stored in S3 (the handler fetches
    them). The ``dask_lambda`` field marks the event as ours and names the protocol version; any
    other event is refused with a :class:`ProtocolError` that says what the function expected.

Signature
    ``S = hex(HMAC-SHA256(key, b"1.<T>." + SHA256(payload bytes)))`` with the key the client and
    the function share (:mod:`.keys`); ``T`` is a Unix time after which the event is refused. The
    handler checks it before it unpickles anything, so being allowed to invoke the function is
    not enough to make it run code, and a captured event stops working when it expires.
    Responses are not signed: they come back over Lambda's authenticated API.

Request payload (msgpack map)
    ``op``
        ``"ping"`` (answer versions only) or ``"run"``.
    ``spec`` (``run``)
        cloudpickle of a :class:`BatchSpec`: the batch's graph nodes in execution order, the keys
        to return, and its inputs. Keys and values travel pickled, so any Dask key survives.
    ``store`` (``run``)
        ``{"bucket": B, "prefix": P}``: where spilled inputs are and spilled results go.
    ``inline_limit``, ``response_limit`` (``run``)
        A result up to ``inline_limit`` pickled bytes returns inline while the response stays
        under ``response_limit`` bytes; anything else is written to S3 by the handler.

Response (the handler's return value, JSON)
    ``{"dask_lambda": 1, "payload": "<base64 msgpack>"}`` with a msgpack map:

    ``results``
        One entry per requested key, in request order: ``[status, where, data, nbytes]`` with
        status ``"ok"``, ``"error"`` or ``"skipped"`` (a dependency failed); ``where`` is
        ``"inline"`` (``data`` = pickled value) or ``"s3"`` (``data`` = object key).
    ``errors``
        ``{"index": i, ...}`` for each failed task (index into the spec's tasks), with the
        exception's ``type``, ``message``, pickled ``exception`` (or None if unpicklable) and
        ``traceback`` (a tblib dict), so the client re-raises the original type with the remote
        traceback.
    ``timings``
        ``[start, stop]`` seconds since the invocation began, per task.
    ``stats``
        cold start flag, peak memory, bytes read and written to S3, handler duration.
    ``versions``
        Python, dask, cloudpickle, msgpack and dask_lambda versions of the function.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import time
from dataclasses import dataclass, field
from typing import Any

import msgpack

PROTOCOL_VERSION = 1
MARKER = "dask_lambda"


class ProtocolError(ValueError):
    """An event or response that is not (this version of) the dask-lambda protocol."""


class TransientError(RuntimeError):
    """The handler's own S3 traffic failed; the client retries the whole batch."""


class SignatureError(ProtocolError):
    """An event that is unsigned, tampered with, expired or signed with another key."""


@dataclass
class BatchSpec:
    """One invocation's work: graph nodes in execution order, outputs and inputs.

    ``inputs`` maps each key the batch needs from outside to ``("inline", pickled_bytes)`` or
    ``("s3", object_key, nbytes)``.
    """

    compute_id: str
    tasks: list
    outputs: list
    inputs: dict = field(default_factory=dict)


def encode_payload(payload: dict[str, Any]) -> bytes:
    return msgpack.packb(payload, use_bin_type=True)


def decode_payload(data: bytes) -> dict[str, Any]:
    try:
        payload = msgpack.unpackb(data, raw=False)
    except (ValueError, msgpack.UnpackException) as e:
        raise ProtocolError(f"dask-lambda payload is not valid msgpack: {e}") from e
    if not isinstance(payload, dict):
        raise ProtocolError("dask-lambda payload must be a msgpack map")
    return payload


def signature(key: bytes, payload_bytes: bytes, expires: int) -> str:
    material = f"{PROTOCOL_VERSION}.{expires}.".encode() + hashlib.sha256(payload_bytes).digest()
    return hmac.new(key, material, hashlib.sha256).hexdigest()


def sign(document: dict[str, Any], payload_bytes: bytes, key: bytes, ttl: float) -> dict[str, Any]:
    """Add ``expires`` and ``signature`` for ``payload_bytes`` to an event."""
    expires = int(time.time() + ttl)
    return {**document, "expires": expires, "signature": signature(key, payload_bytes, expires)}


def envelope(payload_bytes: bytes, key: bytes | None = None, ttl: float = 900) -> dict[str, Any]:
    """The JSON event/response carrying ``payload_bytes`` inline; signed if ``key`` is given."""
    document = {MARKER: PROTOCOL_VERSION, "payload": base64.b64encode(payload_bytes).decode()}
    return sign(document, payload_bytes, key, ttl) if key is not None else document


def envelope_size(payload_bytes: bytes) -> int:
    """Bytes of ``json.dumps(envelope(payload_bytes))``, without building it."""
    return 4 * -(-len(payload_bytes) // 3) + len(MARKER) + 32


def open_envelope(document: Any, fetch=None, key: bytes | None = None) -> dict[str, Any]:
    """The payload of an event or response; ``fetch(bucket, key)`` reads a spilled payload.

    With ``key``, the event must carry a valid, unexpired signature (:class:`SignatureError`).
    """
    if isinstance(document, (bytes, str)):
        try:
            document = json.loads(document)
        except ValueError as e:
            raise ProtocolError(f"not a JSON document: {e}") from e
    if not isinstance(document, dict) or MARKER not in document:
        keys = sorted(document)[:5] if isinstance(document, dict) else type(document).__name__
        raise ProtocolError(
            "This function runs dask-lambda task batches and expects an event with a"
            f" '{MARKER}' field; got {keys}. Invoke it through dask_lambda (LambdaCluster,"
            " LambdaExecutor), not with a hand-written event."
        )
    version = document[MARKER]
    if version != PROTOCOL_VERSION:
        raise ProtocolError(
            f"The event uses dask-lambda protocol version {version!r}, this side speaks version"
            f" {PROTOCOL_VERSION}. Deploy the function from the same dask-lambda version as the"
            " client (dask-lambda deploy / update)."
        )
    if "payload" in document:
        try:
            data = base64.b64decode(document["payload"], validate=True)
        except (ValueError, TypeError) as e:
            raise ProtocolError(f"dask-lambda payload is not valid base64: {e}") from e
    elif "payload_ref" in document and fetch is not None:
        ref = document["payload_ref"]
        data = fetch(ref["bucket"], ref["key"])
    else:
        raise ProtocolError("dask-lambda event has neither 'payload' nor 'payload_ref'")
    if key is not None:
        verify(document, data, key)
    return decode_payload(data)


def verify(document: dict, payload_bytes: bytes, key: bytes) -> None:
    """Raise :class:`SignatureError` unless ``document`` is signed for ``payload_bytes``."""
    given, expires = document.get("signature"), document.get("expires")
    if not isinstance(given, str) or not isinstance(expires, int):
        raise SignatureError(
            "Refused an unsigned event: this function runs only task batches signed with its"
            " key. Invoke it through dask_lambda, whose clients sign with the key in SSM."
        )
    if not hmac.compare_digest(given, signature(key, payload_bytes, expires)):
        raise SignatureError(
            "Refused an event whose signature does not match: it was altered, or signed with"
            " another key (was the function's key rotated? restart the client)."
        )
    if time.time() > expires:
        raise SignatureError(
            f"Refused an event that expired at {expires}: is the client's clock right?"
        )


@functools.cache
def versions() -> dict[str, str]:
    """Versions that must match between client and function for pickles to be safe.

    Constant for a process, so computed once (the handler returns it with every response).
    """
    import platform

    import cloudpickle
    import dask

    from . import __version__

    return {
        "python": ".".join(platform.python_version_tuple()[:2]),
        "python_full": platform.python_version(),
        "dask": dask.__version__,
        "cloudpickle": cloudpickle.__version__,
        "msgpack": ".".join(map(str, msgpack.version)),
        "dask_lambda": __version__,
        "protocol": str(PROTOCOL_VERSION),
    }


MUST_MATCH = ("python", "cloudpickle", "dask", "protocol")


def version_mismatches(client: dict[str, str], function: dict[str, str]) -> list[str]:
    """Human-readable differences in the versions that must match."""
    return [
        f"{name}: function has {function.get(name, 'unknown')}, client has {client[name]}"
        for name in MUST_MATCH
        if function.get(name) != client[name]
    ]
