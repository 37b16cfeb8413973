"""Dependencies deployed as an S3 archive, unpacked into ``/tmp`` on a cold start.

A package over Lambda's 250 MB (code and layers together) cannot be deployed as a zip; its
dependencies can live in S3 instead (``dask-lambda deploy --deps-on-s3``, automatic past the limit
when a bucket is given; the approach of serverless-python-requirements' ``zip: true``). The
function's environment names the archive, its size, SHA-256 and unpacked size
(:data:`.contract.DEPENDENCIES`). On a cold start, before anything imports them, :func:`mount`
refuses an archive of another size before reading it, then streams it with the managed
runtime's boto3 (ranged GETs, several at once) straight into the unpacking (members inflated on
every CPU as their bytes arrive: the archive is never stored), into a staging folder that is on
no path. Only if the digest of what streamed in is the deployed one (write access to the bucket
must not become code execution) does the folder become ``/tmp/dask-lambda-deps/<sha256>``, put
on ``sys.path`` right after the task root, where a zipped dependency would be; otherwise it is
deleted unused. Nothing past the deployed unpacked size is written.
A warm environment finds the folder already there. :data:`mounted` records what it cost.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any

from . import contract

mounted: dict[str, Any] = {}


class DependencyError(RuntimeError):
    """The dependency archive is missing or not the one deployed."""


def mount() -> None:
    """Unpack (once per environment) and import-enable the function's dependency archive."""
    spec = os.environ.get(contract.DEPENDENCIES)
    if not spec or mounted:
        return
    started = time.perf_counter()
    ref = json.loads(spec)
    root = Path(tempfile.gettempdir()) / "dask-lambda-deps" / ref["sha256"]
    unpacked = not (root / ".complete").exists()
    if unpacked:
        mounted.update(_unpack(ref, root))
    task_root = os.environ.get("LAMBDA_TASK_ROOT", "")
    position = sys.path.index(task_root) + 1 if task_root in sys.path else 0
    sys.path.insert(position, str(root))
    mounted.update(seconds=time.perf_counter() - started, unpacked=unpacked, bytes=int(ref["size"]))


def _unpack(ref: dict, root: Path) -> dict[str, float]:
    """Stream the archive from S3 into a staging folder, check it, move it into place; the
    seconds until its last byte arrived and the unpacking left after that."""
    import boto3

    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name[:12]}-", dir=root.parent))
    try:
        started = time.perf_counter()
        s3 = boto3.client("s3")
        length = s3.head_object(Bucket=ref["bucket"], Key=ref["key"])["ContentLength"]
        if length != int(ref["size"]):  # refused before a byte of a swapped archive is read
            raise DependencyError(
                f"s3://{ref['bucket']}/{ref['key']} is not the dependency archive this function"
                f" was deployed with ({length} bytes, expected {ref['size']}): it was not"
                " downloaded. Redeploy the function (dask-lambda update NAME --deps-on-s3)."
            )
        arrived: list[float] = []
        chunks = _ranged_chunks(s3, ref["bucket"], ref["key"], length, arrived)
        site = staging / "site"
        digest, size = stream_extract(chunks, site, unpacked_limit=ref.get("unpacked"))
        done = time.perf_counter()
        if size != int(ref["size"]) or digest != ref["sha256"]:
            raise DependencyError(
                f"s3://{ref['bucket']}/{ref['key']} is not the dependency archive this function"
                " was deployed with (size or SHA-256 differ): what was unpacked of it was"
                " deleted unused. Redeploy the function (dask-lambda update NAME --deps-on-s3)."
            )
        (site / ".complete").touch()
        try:
            site.rename(root)
        except OSError:  # another runtime sharing this /tmp unpacked it first
            pass
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    last_byte = arrived[-1] if arrived else done
    return {"download_seconds": last_byte - started, "extract_seconds": done - last_byte}


RANGE_BYTES = 8 << 20  # one ranged GET
RANGES_IN_FLIGHT = 4  # at most 32 MiB of the archive held at once


def _ranged_chunks(s3: Any, bucket: str, key: str, size: int, arrived: list[float]):
    """The object's bytes in order, from ranged GETs ``RANGES_IN_FLIGHT`` at a time (one S3
    connection is slower than the unpacking it feeds); ``arrived`` gets the time the last one
    came in."""
    from concurrent.futures import ThreadPoolExecutor

    def get(start: int) -> bytes:
        end = min(size, start + RANGE_BYTES) - 1
        body = s3.get_object(Bucket=bucket, Key=key, Range=f"bytes={start}-{end}")["Body"]
        data = body.read()
        if len(data) != end - start + 1:
            raise DependencyError(f"s3://{bucket}/{key} changed while it was read: redeploy")
        return data

    starts = iter(range(0, size, RANGE_BYTES))
    with ThreadPoolExecutor(RANGES_IN_FLIGHT, thread_name_prefix="dask-lambda-get") as pool:
        pending = [pool.submit(get, start) for start in islice(starts, RANGES_IN_FLIGHT)]
        while pending:
            data = pending.pop(0).result()
            pending += [pool.submit(get, start) for start in islice(starts, 1)]
            if not pending:
                arrived.append(time.perf_counter())
            yield data


_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")
_CENTRAL_HEADER = struct.Struct("<4sHHHHHHIIIHHHHHII")
_LOCAL, _CENTRAL = b"PK\x03\x04", b"PK\x01\x02"
_STORED, _DEFLATED = 0, 8
_PENDING_BYTES = 64 << 20  # compressed bytes queued for the unpacking threads at most


class _ZipStream:
    """The members of a zip as its bytes arrive, read from their local headers in the order
    they are stored; meanwhile the SHA-256 and size of every byte, and the central directory
    (which follows the last member) kept for the end."""

    def __init__(self, chunks: Iterable[bytes]):
        self._chunks = chunks
        self.digest = hashlib.sha256()
        self.size = 0
        self.central = bytearray()

    def members(self) -> Iterator[tuple[str, int, bytes, int]]:
        """``(name, compression method, compressed bytes, unpacked size)`` of each member."""
        buffer, position = bytearray(), 0
        for chunk in self._chunks:
            self.digest.update(chunk)
            self.size += len(chunk)
            if self.central:
                self.central += chunk
                continue
            buffer += chunk
            while (member := self._next_member(buffer, position)) is not None:
                if member is _CENTRAL:
                    self.central += buffer[position:]
                    buffer, position = bytearray(), 0
                    break
                position, *fields = member
                yield tuple(fields)
            if position > RANGE_BYTES:
                del buffer[:position]
                position = 0
        if buffer[position:]:
            raise DependencyError("The dependency archive ends inside an entry: refused")

    @staticmethod
    def _next_member(buffer: bytearray, position: int):
        """The member at ``position`` with the position after it, ``_CENTRAL`` where the
        central directory starts, or None until more bytes arrive."""
        signature = bytes(buffer[position : position + 4])
        if len(signature) < 4:
            return None
        if signature == _CENTRAL:
            return _CENTRAL
        if signature != _LOCAL:
            raise DependencyError("The dependency archive is not a zip: refused")
        if len(buffer) - position < _LOCAL_HEADER.size:
            return None
        (_, _, flags, method, _, _, _, packed, full, name_length,
         extra_length) = _LOCAL_HEADER.unpack_from(buffer, position)  # fmt: skip
        begin = position + _LOCAL_HEADER.size + name_length + extra_length
        if len(buffer) < begin:
            return None
        name = bytes(buffer[position + _LOCAL_HEADER.size : begin - extra_length])
        name = name.decode("utf-8" if flags & 0x800 else "cp437")
        _check_name(name)
        if flags & 0x8 or packed == 0xFFFFFFFF or full == 0xFFFFFFFF:
            raise DependencyError(
                f"The dependency archive's {name!r} has no sizes in its header"
                " (a data descriptor or ZIP64): refused; redeploy the function."
            )
        if method not in (_STORED, _DEFLATED):
            raise DependencyError(
                f"The dependency archive's {name!r} uses compression {method}: refused"
            )
        if len(buffer) < begin + packed:
            return None
        return begin + packed, name, method, bytes(buffer[begin : begin + packed]), full


def _write_member(target: Path, name: str, method: int, data: bytes, expected: int) -> None:
    """Inflate (or copy) member ``name`` into ``target``, refused unless ``expected`` bytes."""
    path = target / name
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as out:
            if method == _STORED:
                out.write(data)
                written = len(data)
            else:
                inflater, written, view = zlib.decompressobj(-15), 0, memoryview(data)
                for offset in range(0, len(data), 1 << 20):
                    piece = inflater.decompress(view[offset : offset + (1 << 20)])
                    written += len(piece)
                    if written > expected:
                        break
                    out.write(piece)
                else:
                    tail = inflater.flush()
                    written += len(tail)
                    out.write(tail)
        if written != expected:
            raise zlib.error("wrong size")
    except zlib.error:
        raise DependencyError(
            f"The dependency archive's {name!r} is damaged: refused; redeploy the function."
        ) from None


def stream_extract(
    chunks: Iterable[bytes], target: Path, threads: int | None = None,
    unpacked_limit: int | None = None,
) -> tuple[str, int]:  # fmt: skip
    """Unpack a zip archive as its bytes arrive (``chunks``, in order) into ``target``, members
    inflated on ``threads`` threads (the machine's CPUs: inflating releases the GIL); return
    the archive's SHA-256 and size, for the caller to check before using what was unpacked.

    The central directory at the end gives the executable bits. Refused, with ``target``
    removed: a name that would land outside ``target``, a compression other than stored or
    deflate, an entry whose sizes are not in its local header, a damaged entry, and more than
    ``unpacked_limit`` bytes unpacked.
    """
    from concurrent.futures import ThreadPoolExecutor

    stream = _ZipStream(chunks)
    unpacked = queued = 0  # queued: compressed bytes handed to the threads, not yet written
    drained = threading.Condition()
    failures: list[BaseException] = []

    def unpack(name: str, method: int, data: bytes, expected: int) -> None:
        nonlocal queued
        try:
            _write_member(target, name, method, data, expected)
        except BaseException as e:
            failures.append(e)
        finally:
            with drained:
                queued -= len(data)
                drained.notify_all()

    try:
        with ThreadPoolExecutor(max(1, threads or os.cpu_count() or 1),
                                thread_name_prefix="dask-lambda-unpack") as pool:  # fmt: skip
            for name, method, data, full in stream.members():
                unpacked += full
                if unpacked_limit is not None and unpacked > unpacked_limit:
                    raise DependencyError(
                        "The dependency archive unpacks to more than the deployed"
                        f" {unpacked_limit} bytes: refused; redeploy the function."
                    )
                if failures:  # a damaged member: stop reading
                    raise failures[0]
                if name.endswith("/"):
                    (target / name).mkdir(parents=True, exist_ok=True)
                    continue
                with drained:
                    while queued and queued + len(data) > _PENDING_BYTES:
                        drained.wait()
                    queued += len(data)
                pool.submit(unpack, name, method, data, full)
        if failures:
            raise failures[0]
        _apply_modes(bytes(stream.central), target)
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
    return stream.digest.hexdigest(), stream.size


def _check_name(name: str) -> None:
    parts = name.split("/")
    if name.startswith("/") or "\\" in name or ".." in parts:
        raise DependencyError(f"The dependency archive names {name!r}: refused")


def _apply_modes(central: bytes, target: Path) -> None:
    """Make executable what the central directory marks so (native helpers, scripts)."""
    position = 0
    while central[position : position + 4] == _CENTRAL:
        fields = _CENTRAL_HEADER.unpack_from(central, position)
        name_length, extra_length, comment_length, external = (
            fields[10], fields[11], fields[12], fields[15],
        )  # fmt: skip
        start = position + _CENTRAL_HEADER.size
        name = central[start : start + name_length].decode("utf-8", "replace")
        if external >> 16 & 0o111 and not name.endswith("/"):
            _check_name(name)
            path = target / name
            if path.is_file():
                os.chmod(path, 0o755)
        position = start + name_length + extra_length + comment_length
