"""The client's settings, read once: :class:`Settings`, from arguments and dask.config.

Every setting of ``lambda.yaml`` that the client acts on is a field of :class:`Settings`, typed
and named after its key (``batch.max-tasks`` is ``max_tasks``). :meth:`Settings.from_config`
reads them all in one loop, each overridable by an argument that is not None (dask's
``override_with``), converts each to its field's type, and checks the values a wrong type or
range would make fail later; the error names the key. A cluster builds one and passes it down:
no other module reads dask.config for these. What a user may change between two computes of one
cluster, as dask's own options (``with dask.config.set({"lambda.allow-local-paths": True})``), is
read per compute where it applies, and is not a field here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from typing import Any

from . import config, limits


def _key(name: str) -> Any:
    return field(metadata={"key": name})


def _tiers(value: Any) -> tuple[int, ...]:
    return tuple(sorted({int(mb) for mb in value or ()}))


def _names(value: Any) -> tuple[str, ...]:
    return tuple(str(item) for item in value or ())


@dataclass(frozen=True)
class Settings:
    """A cluster's settings (each documented in ``lambda.yaml`` under its key)."""

    # Which function, where.
    function_name: str | None = _key("function-name")
    bucket: str | None = _key("bucket")
    region: str | None = _key("region")
    endpoint_url: str | None = _key("endpoint-url")
    # The function the cluster deploys itself.
    memory: int = _key("memory")
    timeout: int = _key("timeout")
    packages: tuple[str, ...] = _key("packages")
    s3_read: tuple[str, ...] = _key("s3-read")
    s3_write: tuple[str, ...] = _key("s3-write")
    memory_tiers: tuple[int, ...] = _key("memory-tiers")
    # Scheduling.
    max_concurrency: int | None = _key("max-concurrency")  # None only before from_config
    max_tasks: int = _key("batch.max-tasks")
    max_bytes: int = _key("batch.max-bytes")
    per_slot: int = _key("batch.per-slot")
    target_seconds: float = _key("batch.target-seconds")
    probe_tasks: int = _key("batch.probe-tasks")
    inline_limit: int = _key("spill.inline-limit")
    max_object_bytes: int = _key("spill.max-object-bytes")
    kms_key_id: str | None = _key("spill.kms-key-id")
    # Attempts.
    task_retries: int = _key("task-retries")
    escalate_memory: bool = _key("escalate-memory")
    speculation: bool = _key("speculation.enabled")
    speculation_multiplier: float = _key("speculation.multiplier")
    speculation_min_seconds: float = _key("speculation.min-seconds")
    infra_retries: int = _key("infra-retries")
    retry_backoff: float = _key("retry-backoff")
    throttle_retries: int = _key("throttle-retries")
    throttle_backoff: float = _key("throttle-backoff")
    invoke_client: str = _key("invoke-client")
    # What the cluster holds.
    lease_refresh: float = _key("lease.refresh")
    lease_ttl: float = _key("lease.ttl")
    # The embedded local Lambda.
    local_concurrency_limit: int = _key("local.concurrency-limit")
    local_idle_timeout: float = _key("local.idle-timeout")

    @classmethod
    def from_config(cls, local: bool | None = None, **overrides: Any) -> Settings:
        """The settings of dask.config, with ``overrides`` (not None) taking precedence.

        ``max-concurrency`` null becomes 100 against AWS and the number of cores (at least 2)
        on a local Lambda (``local``; by default, when no function is named or the endpoint is
        this machine's)."""
        unknown = set(overrides) - {spec.name for spec in fields(cls)}
        if unknown:
            raise TypeError(f"Unknown settings: {', '.join(sorted(unknown))}")
        values = {}
        for spec in fields(cls):
            key = spec.metadata["key"]
            value = config.setting(key, override_with=overrides.get(spec.name))
            try:
                values[spec.name] = _convert(str(spec.type), value)
            except (TypeError, ValueError):
                raise ValueError(
                    f"lambda.{key} is {value!r}, which is not {_TYPE_NAMES[str(spec.type)]}:"
                    f" fix it where it is set (an argument, dask.config, or the environment"
                    f" variable DASK_LAMBDA__{key.upper().replace('-', '_').replace('.', '__')})"
                ) from None
        if values["max_concurrency"] is None:
            if local is None:
                from .aws import is_loopback, lambda_endpoint

                local = values["function_name"] is None or is_loopback(
                    lambda_endpoint(values["endpoint_url"])
                )
            values["max_concurrency"] = max(2, os.cpu_count() or 2) if local else 100
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        """``ValueError`` naming the setting whose value cannot work."""
        if self.max_concurrency is None or self.max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, got {self.max_concurrency}")
        if self.invoke_client not in INVOKE_CLIENTS:
            raise ValueError(
                f"lambda.invoke-client is {self.invoke_client!r}: use one of"
                f" {', '.join(INVOKE_CLIENTS)}"
            )
        memories = [("memory", self.memory), *(("memory-tiers", mb) for mb in self.memory_tiers)]
        for name, value in memories:
            if not limits.MIN_MEMORY_MB <= value <= limits.MAX_MEMORY_MB:
                raise ValueError(
                    f"lambda.{name} is {value} MB: Lambda allows {limits.MIN_MEMORY_MB} to"
                    f" {limits.MAX_MEMORY_MB} MB"
                )
        if not 1 <= self.timeout <= limits.MAX_TIMEOUT_SECONDS:
            raise ValueError(
                f"lambda.timeout is {self.timeout} s: Lambda allows 1 to"
                f" {limits.MAX_TIMEOUT_SECONDS} s"
            )


INVOKE_CLIENTS = ("lean", "boto3")

_CONVERT = {
    "int": int,
    "float": float,
    "bool": lambda v: v if isinstance(v, bool) else {"true": True, "false": False}[str(v).lower()],
    "str": str,
    "tuple[str, ...]": _names,
    "tuple[int, ...]": _tiers,
}
_TYPE_NAMES = {
    "int": "a whole number", "float": "a number", "bool": "true or false", "str": "a string",
    "tuple[str, ...]": "a list of strings", "tuple[int, ...]": "a list of MB",
    "str | None": "a string or null", "int | None": "a whole number or null",
}  # fmt: skip


def _convert(kind: str, value: Any) -> Any:
    optional = kind.endswith(" | None")
    if value is None:
        if optional:
            return None
        raise TypeError(kind)
    return _CONVERT.get(kind.removesuffix(" | None"), lambda v: v)(value)
