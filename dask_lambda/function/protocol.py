"""The wire protocol between the client and the Lambda handler (version 3).

Both sides import this module; it needs only the standard library, msgpack and cloudpickle.

Event (the JSON document sent to ``Invoke``)
    ``{"dask_lambda": 3, "payload": "<base64 msgpack>", "expires": T, "signature": S}``, or, when
    the encoded payload would not fit Lambda's 6 MB request limit, ``"payload_ref": {"bucket": B,
    "key": K, "size": N, "sha256": H}`` in place of ``payload`` with the same bytes stored in S3.
    The ``dask_lambda`` field marks the event as ours and names the protocol version; any other
    event is refused with a :class:`ProtocolError` that says what the function expected.

Signature
    ``S = hex(HMAC-SHA256(key, b"3.<T>." + SHA256(payload bytes) + R))`` with the key the client and
    the function share (:mod:`.contract`); ``T`` is a Unix time after which the event is refused;
    ``R`` is empty for an inline payload and the canonical JSON of ``payload_ref`` otherwise, so the
    reference, its size and its digest are signed too. The handler checks the signature before it
    reads or unpickles anything: an unsigned reference is never fetched, and a signed one is fetched
    only from the function's own bucket and prefix, only if S3 reports the signed size (and that
    size is within a quarter of the function's memory), and is unpickled only if its SHA-256
    matches. Being allowed to invoke the function is not enough to make it run code, and a captured
    event stops working when it expires. Responses are not signed: they come back over Lambda's
    authenticated API.

Integrity of what travels through S3
    Whoever can write the spill bucket cannot sign. So every object dask-lambda reads back is
    named by a :class:`Stored` reference carrying its size and SHA-256, and the reader checks
    both before it unpickles (:class:`IntegrityError` otherwise): inputs' references travel inside
    the signed batch; results' references come back in the function's response, computed by the
    function that wrote them.

Payload bytes
    A msgpack map, or that map's msgpack compressed with zlib when that makes it a tenth smaller
    or more (a zlib stream's first byte, ``0x78``, never starts a msgpack map).

Request payload (msgpack map)
    ``op``
        ``"ping"`` (answer versions only) or ``"run"``.
    ``spec`` (``run``)
        cloudpickle of a :class:`BatchSpec`: the batch's graph nodes in execution order with their
        keys, the keys to return, and its inputs (:class:`Inline` or :class:`Stored`).
    ``store`` (``run``)
        ``{"bucket": B, "prefix": P}``: where spilled inputs are and spilled results go.
    ``inline_limit``, ``response_limit`` (``run``)
        A result up to ``inline_limit`` pickled bytes returns inline while the response stays
        under ``response_limit`` bytes; anything else is written to S3 by the handler.

Response (the handler's return value, JSON)
    ``{"dask_lambda": 3, "payload": "<base64 msgpack>"}`` with a msgpack map:

    ``results``
        One entry per requested key, in request order: ``[status, where, data, nbytes, sha256]``
        with status ``"ok"``, ``"error"`` or ``"skipped"`` (a dependency failed); ``where`` is
        ``"inline"`` (``data`` = pickled value) or ``"s3"`` (``data`` = object key, ``sha256`` its
        digest).
    ``errors``
        ``{"index": i, ...}`` for each failed task (index into the spec's tasks), with the
        exception's ``type``, ``module``, ``message`` (truncated and marked past a limit), pickled
        ``exception`` (or None) and ``traceback`` (a tblib dict of the first and last frames), so
        the client re-raises the original type with the remote traceback. Past an error budget
        further errors are summarised (type and a short message), so a response always fits.
    ``fatal``
        Instead of ``results``: the batch could not be loaded at all (an import error, an
        integrity error), as one error entry.
    ``timings``, ``timing_step``
        ``[start, stop, nbytes]`` of every ``timing_step``-th task (tasks 0, step, 2 step, ...;
        :func:`timing_step` keeps it to :data:`TIMING_SAMPLE` a batch): seconds since the
        invocation began, and the size of its value (``dask.sizeof``), which the scheduler
        learns batch sizes from; None for a task that did not run. ``stats["task_seconds"]``
        sums the run time of all of them.
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
import zlib
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import msgpack

PROTOCOL_VERSION = 3
# Payloads above this many bytes of msgpack are compressed when it pays (encode_payload): level 1
# takes about 1 ms per 300 kB here, and a 1,000-task batch shrinks 3 to 5 times.
COMPRESS_ABOVE = 2048
_ZLIB_HEADER = b"\x78"
MARKER = "dask_lambda"
_HEX = frozenset("0123456789abcdef")


class ProtocolError(ValueError):
    """An event or response that is not (this version of) the dask-lambda protocol."""


class TransientError(RuntimeError):
    """The handler's own S3 traffic failed; the client retries the whole batch."""


class SignatureError(ProtocolError):
    """An event that is unsigned, tampered with, expired or signed with another key."""


class IntegrityError(RuntimeError):
    """An object read back from S3 is not the one dask-lambda wrote (size or SHA-256 differ)."""


class MissingDataError(LookupError):
    """A stored value is gone (deleted, expired, or never written): not retried as transient.

    Only the tasks that need it fail; the message names the object and what usually removed it.
    """


class Inline(NamedTuple):
    """A pickled value carried inside the request itself."""

    data: bytes


class Stored(NamedTuple):
    """A pickled value in the spill bucket, with what its reader must check before unpickling."""

    name: str
    nbytes: int
    sha256: str


class Result(NamedTuple):
    """One requested key's outcome in a response (a msgpack list on the wire)."""

    status: str  # "ok", "error" or "skipped" (a dependency failed)
    where: str | None  # "inline" or "s3"
    data: bytes | str | None  # the pickled value, or the object's name
    nbytes: int
    sha256: str | None  # of a stored object

    def location(self) -> Inline | Stored:
        """Where the value is: :class:`Inline` bytes or a :class:`Stored` object."""
        if self.where == "inline":
            return Inline(self.data)
        return Stored(self.data, self.nbytes, self.sha256)


@dataclass
class BatchResponse:
    """A decoded ``run`` response: one :class:`Result` per output, errors by task index."""

    results: list[Result]
    errors: dict[int, dict]  # task index -> error entry
    stats: dict
    fatal: dict | None = None  # the batch could not be loaded at all
    timings: list | None = None  # [start, stop, nbytes] per task; None: not run, or not sampled

    @classmethod
    def from_payload(cls, response: dict[str, Any]) -> BatchResponse:
        """The response from the function's decoded answer."""
        if "fatal" in response:
            return cls([], {}, response.get("stats", {}), fatal=response["fatal"])
        return cls(
            results=[Result(*entry) for entry in response["results"]],
            errors={error["index"]: error for error in response["errors"]},
            stats=response.get("stats", {}),
            timings=expand_timings(response.get("timings"), response.get("timing_step", 1)),
        )


TIMING_SAMPLE = 64  # tasks of a batch whose timings a response carries in full


def timing_step(tasks: int) -> int:
    """Every how many tasks a response carries one's timing: at most :data:`TIMING_SAMPLE` a
    batch, evenly spread (each costs ~25 bytes; a 1,000-task batch's were most of its answer)."""
    return max(1, -(-tasks // TIMING_SAMPLE))


def expand_timings(sampled: list | None, step: int) -> list | None:
    """A response's sampled timings as one entry per task, None for the tasks not sampled."""
    if not sampled or step == 1:
        return sampled
    timings: list = [None] * ((len(sampled) - 1) * step + 1)
    timings[::step] = sampled
    return timings


def run_request(
    spec: bytes,
    bucket: str,
    prefix: str,
    inline_limit: int,
    response_limit: int,
    max_object_bytes: int | None = None,
    kms_key_id: str | None = None,
) -> dict[str, Any]:
    """The ``run`` request for a pickled :class:`BatchSpec` (see the module docstring)."""
    return {
        "op": "run",
        "spec": spec,
        "store": {"bucket": bucket, "prefix": prefix, "kms_key_id": kms_key_id},
        "inline_limit": inline_limit,
        "response_limit": response_limit,
        "max_object_bytes": max_object_bytes,
    }


@dataclass
class BatchSpec:
    """One invocation's work: graph nodes in execution order, outputs and inputs.

    ``keys[i]`` is the graph's key of ``tasks[i]`` (a node's own ``.key`` may differ from the key
    it is stored under). ``inputs`` maps each key the batch needs from outside to an
    :class:`Inline` or a :class:`Stored`.
    """

    compute_id: str
    keys: list
    tasks: list
    outputs: list
    inputs: dict = field(default_factory=dict)


def task(key: Any, func: Any, args: tuple, kwargs: dict, data_producer: bool) -> Any:
    """A dask ``Task`` rebuilt from its fields: how a batch carries one (the client's
    :func:`~dask_lambda.remote.invocation.pickle_spec` reduces a ``Task`` to this call; its
    dependencies and caches are derived again here, not pickled)."""
    from dask._task_spec import Task

    return Task(key, func, *args, _data_producer=data_producer, **kwargs)


def digest(data: bytes) -> str:
    """Hex SHA-256, as :class:`Stored` and ``payload_ref`` carry it."""
    return hashlib.sha256(data).hexdigest()


def check_integrity(name: str, data: bytes, expected: Stored | None) -> bytes:
    """``data`` if it is what ``expected`` describes, else :class:`IntegrityError`."""
    if expected is not None and (len(data) != expected.nbytes or digest(data) != expected.sha256):
        raise IntegrityError(
            f"The S3 object {name!r} is not the one dask-lambda wrote ({len(data)} bytes, expected"
            f" {expected.nbytes} with SHA-256 {expected.sha256[:16]}...): something else wrote to"
            " the spill prefix. It was not unpickled. Restrict who may write the spill bucket."
        )
    return data


def encode_payload(payload: dict[str, Any]) -> bytes:
    """The payload's msgpack, zlib-compressed (level 1) when that saves a tenth or more of a
    payload above :data:`COMPRESS_ABOVE` bytes (a batch's keys and pickles repeat a lot)."""
    data = msgpack.packb(payload, use_bin_type=True)
    if len(data) > COMPRESS_ABOVE:
        packed = zlib.compress(data, 1)
        if len(packed) <= 0.9 * len(data):
            return packed
    return data


def decode_payload(data: bytes) -> dict[str, Any]:
    if data[:1] == _ZLIB_HEADER:  # never the first byte of a msgpack map
        try:
            data = zlib.decompress(data)
        except zlib.error as e:
            raise ProtocolError(f"dask-lambda payload is not valid zlib: {e}") from e
    try:
        payload = msgpack.unpackb(data, raw=False)
    except (ValueError, msgpack.UnpackException) as e:
        raise ProtocolError(f"dask-lambda payload is not valid msgpack: {e}") from e
    if not isinstance(payload, dict):
        raise ProtocolError("dask-lambda payload must be a msgpack map")
    return payload


def _canonical(ref: dict | None) -> bytes:
    return json.dumps(ref, sort_keys=True, separators=(",", ":")).encode() if ref else b""


def signature(key: bytes, payload_digest: bytes, expires: int, ref: dict | None = None) -> str:
    """The HMAC of an event: version, expiry, the payload's SHA-256 and its reference, if any."""
    material = f"{PROTOCOL_VERSION}.{expires}.".encode() + payload_digest + _canonical(ref)
    return hmac.new(key, material, hashlib.sha256).hexdigest()


def envelope(payload_bytes: bytes, key: bytes | None = None, ttl: float = 900) -> dict[str, Any]:
    """The JSON event/response carrying ``payload_bytes`` inline; signed if ``key`` is given."""
    document = {MARKER: PROTOCOL_VERSION, "payload": base64.b64encode(payload_bytes).decode()}
    if key is None:
        return document
    expires = int(time.time() + ttl)
    sig = signature(key, hashlib.sha256(payload_bytes).digest(), expires)
    return {**document, "expires": expires, "signature": sig}


def reference_envelope(ref: dict, key: bytes | None, ttl: float = 900) -> dict[str, Any]:
    """The event for a payload stored in S3: ``ref`` is ``{bucket, key, size, sha256}``."""
    document = {MARKER: PROTOCOL_VERSION, "payload_ref": ref}
    if key is None:
        return document
    expires = int(time.time() + ttl)
    sig = signature(key, bytes.fromhex(ref["sha256"]), expires, ref)
    return {**document, "expires": expires, "signature": sig}


def envelope_size(payload_bytes: bytes) -> int:
    """Bytes of ``json.dumps(envelope(payload_bytes))``, without building it."""
    return 4 * -(-len(payload_bytes) // 3) + len(MARKER) + 32


def open_envelope(document: Any, fetch=None, key: bytes | None = None) -> dict[str, Any]:
    """The payload of an event or response.

    With ``key``, the event must carry a valid, unexpired signature (:class:`SignatureError`),
    checked before anything is read or decoded. ``fetch(ref)`` reads a ``payload_ref`` (already
    verified: signed, well formed); the bytes it returns must match the signed size and digest.
    """
    if isinstance(document, (bytes, str)):
        try:
            document = json.loads(document)
        except (ValueError, RecursionError) as e:
            raise ProtocolError(f"not a JSON document: {e}") from e
    if not isinstance(document, dict) or MARKER not in document:
        keys = sorted(map(str, document))[:5] if isinstance(document, dict) else type(document)
        raise ProtocolError(
            "This function runs dask-lambda task batches and expects an event with a"
            f" '{MARKER}' field; got {keys}. Invoke it through dask_lambda (LambdaCluster,"
            " LambdaExecutor), not with a hand-written event."
        )
    version = document[MARKER]
    if version != PROTOCOL_VERSION:
        raise ProtocolError(
            f"The event uses dask-lambda protocol version {version!r:.40}, this side speaks version"
            f" {PROTOCOL_VERSION}. Deploy the function from the same dask-lambda version as the"
            " client (dask-lambda deploy / update)."
        )
    if "payload" in document:
        try:
            data = base64.b64decode(document["payload"], validate=True)
        except (ValueError, TypeError) as e:
            raise ProtocolError(f"dask-lambda payload is not valid base64: {e}") from e
        if key is not None:
            verify(document, hashlib.sha256(data).digest(), key)
        return decode_payload(data)
    if "payload_ref" in document and fetch is not None:
        ref = payload_ref(document["payload_ref"])
        if key is None:
            raise SignatureError("Refused an unsigned payload_ref: references are never fetched")
        verify(document, bytes.fromhex(ref["sha256"]), key, ref)
        data = fetch(ref)
        check_integrity(ref["key"], data, Stored(ref["key"], ref["size"], ref["sha256"]))
        return decode_payload(data)
    raise ProtocolError("dask-lambda event has neither 'payload' nor 'payload_ref'")


def payload_ref(ref: Any) -> dict:
    """``ref`` if it is a well-formed ``payload_ref``, else :class:`ProtocolError`."""
    fields = {"bucket": str, "key": str, "size": int, "sha256": str}
    if (
        not isinstance(ref, dict)
        or set(ref) != set(fields)
        or not all(type(ref[name]) is kind for name, kind in fields.items())
        or ref["size"] < 0
        or len(ref["sha256"]) != 64
        or not _HEX.issuperset(ref["sha256"])
    ):
        raise ProtocolError(
            "Refused a malformed payload_ref: expected {bucket, key, size, sha256} (str, str,"
            " int, 64 hex digits)."
        )
    return ref


def verify(document: dict, payload_digest: bytes, key: bytes, ref: dict | None = None) -> None:
    """Raise :class:`SignatureError` unless ``document`` is signed for this payload digest."""
    given, expires = document.get("signature"), document.get("expires")
    if not isinstance(given, str) or type(expires) is not int:
        raise SignatureError(
            "Refused an unsigned event: this function runs only task batches signed with its"
            " key. Invoke it through dask_lambda, whose clients sign with the key in SSM."
        )
    expected = signature(key, payload_digest, expires, ref).encode()
    if not hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected):
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

    from .. import __version__

    return {
        "python": ".".join(platform.python_version_tuple()[:2]),
        "python_full": platform.python_version(),
        "dask": dask.__version__,
        "cloudpickle": cloudpickle.__version__,
        "msgpack": ".".join(map(str, msgpack.version)),
        "dask_lambda": __version__,
        "protocol": str(PROTOCOL_VERSION),
    }


@functools.cache
def runtime_libraries() -> dict[str, str]:
    """``{normalized name: version}`` of the distributions importable here (a ping reports
    them, so the client can compare numpy, pandas, pyarrow... with its own)."""
    import importlib.metadata
    import re

    found: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name:  # PEP 503 normalization, as packaging.utils.canonicalize_name does
            found.setdefault(re.sub(r"[-_.]+", "-", name).lower(), dist.version)
    return found


MUST_MATCH = ("python", "cloudpickle", "dask", "protocol")


def version_mismatches(client: dict[str, str], function: dict[str, str]) -> list[str]:
    """Human-readable differences in the versions that must match."""
    return [
        f"{name}: function has {function.get(name, 'unknown')}, client has {client[name]}"
        for name in MUST_MATCH
        if function.get(name) != client[name]
    ]
