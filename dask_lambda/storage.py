"""The S3 spill store, used on both sides: payloads, task results and literals too big to inline.

Everything one compute writes lives under ``<prefix>/<compute id>/``; :meth:`S3Store.delete_prefix`
removes it when the compute ends. Object names are derived from the Dask key
(:func:`object_name`), so a task that runs twice (Lambda runs code at least once) writes the same
object with the same bytes. Large objects go through boto3's transfer manager (multipart,
parallel parts); small ones through a single request.
"""

from __future__ import annotations

import hashlib
import io
import threading
from typing import Any

MULTIPART_THRESHOLD = 16 * 1024 * 1024
_clients: dict[str, Any] = {}
_clients_lock = threading.Lock()


def object_name(prefix: str, compute_id: str, key: object) -> str:
    """The S3 key for the result of Dask key ``key`` in a compute."""
    digest = hashlib.sha256(repr(key).encode()).hexdigest()[:32]
    return f"{prefix.rstrip('/')}/{compute_id}/{digest}"


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

    def put(self, name: str, data: bytes) -> int:
        """Write ``data`` (private, encrypted at rest) and return its size."""
        extra = (
            {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": self.kms_key_id}
            if self.kms_key_id
            else {"ServerSideEncryption": "AES256"}
        )
        if len(data) >= MULTIPART_THRESHOLD:
            self.client.upload_fileobj(
                io.BytesIO(data), self.bucket, name, ExtraArgs=extra, Config=self.transfer_config
            )
        else:
            self.client.put_object(Bucket=self.bucket, Key=name, Body=data, **extra)
        return len(data)

    def get(self, name: str, size: int | None = None) -> bytes:
        """Read an object; ``size`` (if known) picks the transfer manager for big ones."""
        if size is not None and size >= MULTIPART_THRESHOLD:
            buffer = io.BytesIO()
            self.client.download_fileobj(self.bucket, name, buffer, Config=self.transfer_config)
            return buffer.getvalue()
        return self.client.get_object(Bucket=self.bucket, Key=name)["Body"].read()

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
