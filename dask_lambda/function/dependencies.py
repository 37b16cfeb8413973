"""Dependencies deployed as an S3 archive, unpacked into ``/tmp`` on a cold start.

A package over Lambda's 250 MB (code and layers together) cannot be deployed as a zip; its
dependencies can live in S3 instead (``dask-lambda deploy --deps-on-s3``, automatic past the limit
when a bucket is given; the approach of serverless-python-requirements' ``zip: true``). The
function's environment names the archive and its SHA-256 (:data:`.contract.DEPENDENCIES`). On a
cold start, before anything imports them, :func:`mount` downloads it with the managed runtime's
boto3, refuses it unless its size and digest are the deployed ones (write access to the bucket
must not become code execution), unpacks it into ``/tmp/dask-lambda-deps/<sha256>`` and puts
that folder on ``sys.path`` right after the task root, where a zipped dependency would be.
A warm environment finds the folder already there. :data:`mounted` records what it cost.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
import zipfile
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
    """Download, check and unpack; the seconds each step took."""
    import boto3

    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name[:12]}-", dir=root.parent))
    archive = staging / "dependencies.zip"
    steps = {}
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
        s3.download_file(ref["bucket"], ref["key"], str(archive))
        steps["download_seconds"] = time.perf_counter() - started
        digest = hashlib.sha256()
        with open(archive, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        if archive.stat().st_size != int(ref["size"]) or digest.hexdigest() != ref["sha256"]:
            raise DependencyError(
                f"s3://{ref['bucket']}/{ref['key']} is not the dependency archive this function"
                " was deployed with (size or SHA-256 differ): it was not unpacked. Redeploy the"
                " function (dask-lambda update NAME --deps-on-s3)."
            )
        started = time.perf_counter()
        extract(archive, staging / "site")
        steps["extract_seconds"] = time.perf_counter() - started
        archive.unlink()
        (staging / "site" / ".complete").touch()
        try:
            (staging / "site").rename(root)
        except OSError:  # another runtime sharing this /tmp unpacked it first
            pass
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return steps


def extract(archive: Path, target: Path, threads: int | None = None) -> None:
    """Unpack ``archive`` into ``target`` on ``threads`` threads (the machine's CPUs: inflating
    releases the GIL, and two threads unpack pandas + pyarrow in 1.25-1.6 s here against
    1.6-2.7 s for one). Names that would land outside ``target`` are refused."""
    from concurrent.futures import ThreadPoolExecutor

    with zipfile.ZipFile(archive) as zipped:
        members = [info for info in zipped.infolist() if not info.is_dir()]
    for info in members:
        parts = info.filename.split("/")
        if info.filename.startswith("/") or "\\" in info.filename or ".." in parts:
            raise DependencyError(f"The dependency archive names {info.filename!r}: refused")
    for folder in sorted({(target / info.filename).parent for info in members}):
        folder.mkdir(parents=True, exist_ok=True)
    threads = max(1, min(threads or os.cpu_count() or 1, len(members)))
    shares: list[list[zipfile.ZipInfo]] = [[] for _ in range(threads)]
    loads = [0] * threads
    for info in sorted(members, key=lambda member: -member.compress_size):  # balanced by bytes
        least = loads.index(min(loads))
        shares[least].append(info)
        loads[least] += info.compress_size

    def unpack(share: list[zipfile.ZipInfo]) -> None:
        with zipfile.ZipFile(archive) as zipped:  # a handle per thread: reads seek
            for info in share:
                with zipped.open(info) as source, open(target / info.filename, "wb") as out:
                    shutil.copyfileobj(source, out, 1 << 20)
                if info.external_attr >> 16 & 0o111:
                    os.chmod(target / info.filename, 0o755)

    with ThreadPoolExecutor(threads, thread_name_prefix="dask-lambda-unpack") as pool:
        list(pool.map(unpack, shares))
