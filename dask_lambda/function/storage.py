"""The S3 implementation of the data plane's :class:`~.values.Store`, used on both sides.

It holds payloads, task results and literals too big to inline.

Everything one compute writes lives under ``<prefix>/<compute id>/``; :meth:`S3Store.delete_prefix`
removes it when the compute ends. Every object it writes carries the object tag
``createdBy=dask-lambda`` (:data:`MARKER_TAG`): ``dask-lambda clean`` and the lifecycle expiry
rule touch only objects with that tag, never the user's own data under the same prefix.
:meth:`S3Store.put` returns a :class:`~.protocol.Stored` reference with the object's size and
SHA-256, and :meth:`S3Store.get` given that reference refuses an object of another size before
downloading it and one with another digest before anyone unpickles it. Object names are derived
from the Dask key (:func:`object_name`), so a task that runs twice (Lambda runs code at least
once) writes the same object with the same bytes. Large objects go through boto3's transfer
manager (multipart, parallel parts); small ones through a single request.
"""

from __future__ import annotations

import io
import threading
from typing import Any

from .protocol import IntegrityError, MissingDataError, Stored, check_integrity, digest

MULTIPART_THRESHOLD = 16 * 1024 * 1024
MARKER_TAG = ("createdBy", "dask-lambda")
# Every object is written as scratch (the expiry rule's filter); one a client holds for longer (a
# persisted value, a future, a scattered value) loses this tag while it is held (ownership).
SCRATCH_TAG = ("dask-lambda-lifetime", "scratch")
WRITE_TAGGING = "&".join("=".join(tag) for tag in (MARKER_TAG, SCRATCH_TAG))
_clients: dict[str, Any] = {}
_clients_lock = threading.Lock()


def compute_folder(prefix: str, compute_id: str) -> str:
    """The S3 folder (no trailing slash) of everything one compute writes under ``prefix``."""
    return f"{prefix.rstrip('/')}/{compute_id}"


def object_name(prefix: str, compute_id: str, key: object) -> str:
    """The S3 key for the result of Dask key ``key`` in a compute."""
    return f"{compute_folder(prefix, compute_id)}/{digest(repr(key).encode())[:32]}"


def forget_clients() -> None:
    """Drop the shared clients: the next use connects anew (after a SnapStart restore, so that
    environments restored from one snapshot share no connection)."""
    with _clients_lock:
        _clients.clear()


def s3_client() -> Any:
    """The process's shared S3 client, configured by the environment (boto3 imported lazily)."""
    with _clients_lock:
        if "s3" not in _clients:
            import boto3
            from botocore.config import Config

            config = Config(
                retries={"mode": "standard", "max_attempts": 5},
                max_pool_connections=32,
                signature_version="s3v4",
                connect_timeout=10,
                read_timeout=30,
            )
            _clients["s3"] = boto3.session.Session().client("s3", config=config)
        return _clients["s3"]


class S3Store:
    """Puts, gets and deletes bytes under one bucket.

    Parameters
    ----------
    bucket
        The spill bucket.
    client
        A boto3 S3 client; by default one from :func:`s3_client` with the environment's settings.
    kms_key_id
        Encrypt objects with this KMS key (SSE-KMS) instead of S3-managed keys (SSE-S3).
    """

    def __init__(self, bucket: str, client: Any = None, kms_key_id: str | None = None):
        self.bucket = bucket
        self.client = client if client is not None else s3_client()
        self.kms_key_id = kms_key_id
        self._transfer_config = None

    @property
    def transfer_config(self):
        if self._transfer_config is None:
            from boto3.s3.transfer import TransferConfig

            self._transfer_config = TransferConfig(
                multipart_threshold=MULTIPART_THRESHOLD,
                multipart_chunksize=MULTIPART_THRESHOLD,
                max_concurrency=8,
            )
        return self._transfer_config

    def put(self, name: str, data: bytes) -> Stored:
        """Write ``data`` (private, encrypted at rest, tagged); return its reference."""
        extra: dict[str, Any] = (
            {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": self.kms_key_id}
            if self.kms_key_id
            else {"ServerSideEncryption": "AES256"}
        )
        extra["Tagging"] = WRITE_TAGGING
        if len(data) >= MULTIPART_THRESHOLD:
            self.client.upload_fileobj(
                io.BytesIO(data), self.bucket, name, ExtraArgs=extra, Config=self.transfer_config
            )
        else:
            self.client.put_object(Bucket=self.bucket, Key=name, Body=data, **extra)
        return Stored(name, len(data), digest(data))

    def get(self, name: str, size: int | None = None, expected: Stored | None = None) -> bytes:
        """Read an object; ``size`` (if known) picks the transfer manager for big ones.

        With ``expected``, an object whose size differs is refused before its body is read, and
        one whose SHA-256 differs after (:class:`~.protocol.IntegrityError`). A missing object is
        a :class:`~.protocol.MissingDataError`.
        """
        try:
            return self._get(name, size, expected)
        except Exception as e:
            if _missing(e):
                raise MissingDataError(
                    f"The stored value s3://{self.bucket}/{name} is gone: it was deleted (by"
                    " unpersist, a closed cluster or executor, `dask-lambda clean`, the bucket's"
                    " expiry rule) or never written. Compute it again."
                ) from None
            raise

    def _get(self, name: str, size: int | None, expected: Stored | None) -> bytes:
        size = expected.nbytes if expected is not None else size
        if size is not None and size >= MULTIPART_THRESHOLD:
            if expected is not None:
                head = self.client.head_object(Bucket=self.bucket, Key=name)
                self._check_length(name, head["ContentLength"], expected)
            buffer = io.BytesIO()
            self.client.download_fileobj(self.bucket, name, buffer, Config=self.transfer_config)
            return check_integrity(name, buffer.getvalue(), expected)
        response = self.client.get_object(Bucket=self.bucket, Key=name)
        body = response["Body"]
        if expected is not None:
            try:
                self._check_length(name, response["ContentLength"], expected)
            except IntegrityError:
                body.close()
                raise
        return check_integrity(name, body.read(), expected)

    @staticmethod
    def _check_length(name: str, length: int, expected: Stored) -> None:
        if length != expected.nbytes:
            raise IntegrityError(
                f"The S3 object {name!r} has {length} bytes where dask-lambda wrote"
                f" {expected.nbytes}: something else wrote to the spill prefix. It was not read."
            )

    def tag(self, name: str, tags: dict[str, str]) -> None:
        """Replace the object's tags with ``tags``."""
        self.client.put_object_tagging(
            Bucket=self.bucket, Key=name,
            Tagging={"TagSet": [{"Key": k, "Value": v} for k, v in tags.items()]},
        )  # fmt: skip

    def is_ours(self, name: str) -> bool:
        """True if ``name`` carries the tag every object dask-lambda writes has."""
        tags = self.client.get_object_tagging(Bucket=self.bucket, Key=name)["TagSet"]
        return {"Key": MARKER_TAG[0], "Value": MARKER_TAG[1]} in tags

    def delete(self, names: list[str]) -> None:
        for start in range(0, len(names), 1000):
            chunk = names[start : start + 1000]
            self.client.delete_objects(
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": n} for n in chunk], "Quiet": True},
            )

    def list(self, prefix: str) -> list[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        return [
            item["Key"]
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix)
            for item in page.get("Contents", ())
        ]

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under ``prefix``; return how many there were."""
        names = self.list(prefix.rstrip("/") + "/")
        self.delete(names)
        return len(names)


def _missing(error: Exception) -> bool:
    """True for S3's answer about an object that does not exist (GET: NoSuchKey, HEAD: 404)."""
    response = getattr(error, "response", None)
    if not isinstance(response, dict):
        return False
    code = str(response.get("Error", {}).get("Code", ""))
    return code in ("NoSuchKey", "404", "NotFound")
