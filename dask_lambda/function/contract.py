"""The function's contract: what a deployed dask-lambda function reads from its environment.

One place for the environment variable names, the signing key's parameter name and how the key is
read, used by the handler inside Lambda and by everything that deploys a function (the CLI and
the cluster's auto-deployed function), so the two sides cannot drift apart.
"""

from __future__ import annotations

from typing import Any

HANDLER = "dask_lambda.function.handler.lambda_handler"
KEY_PARAMETER = "DASK_LAMBDA_KEY_PARAMETER"  # SSM parameter holding the signing key
BUCKET = "DASK_LAMBDA_BUCKET"  # the spill bucket
PREFIX = "DASK_LAMBDA_PREFIX"  # the spill prefix the role may write
ALLOWED = "DASK_LAMBDA_ALLOWED"  # allowlist (see .allowlist)
DEPENDENCIES = "DASK_LAMBDA_DEPENDENCIES"  # archive unpacked on cold starts (see .dependencies)


def dependencies_reference(
    bucket: str, key: str, sha256: str, size: int, unpacked: int | None = None
) -> str:
    """The value of :data:`DEPENDENCIES`: where the archive is and what it must be (its size,
    SHA-256 and the bytes it unpacks to)."""
    import json

    reference = {"bucket": bucket, "key": key, "sha256": sha256, "size": size}
    if unpacked is not None:
        reference["unpacked"] = unpacked
    return json.dumps(reference)


def key_parameter_name(function_name: str) -> str:
    """The SSM parameter holding ``function_name``'s signing key."""
    return f"/dask-lambda/{function_name}/signing-key"


def read_key(ssm: Any, parameter: str) -> bytes:
    """The signing key stored in SSM ``parameter`` (a hex SecureString)."""
    value = ssm.get_parameter(Name=parameter, WithDecryption=True)["Parameter"]["Value"]
    return bytes.fromhex(value)


def function_environment(
    key_parameter: str | None = None,
    bucket: str | None = None,
    prefix: str | None = None,
    allowed: list[str] | tuple[str, ...] | None = None,
) -> dict[str, str]:
    """The environment variables a dask-lambda function is deployed with (those given)."""
    environment = {KEY_PARAMETER: key_parameter} if key_parameter else {}
    if bucket:
        environment[BUCKET] = bucket
        if prefix:
            environment[PREFIX] = prefix.strip("/")
    if allowed:
        environment[ALLOWED] = ",".join(allowed)
    return environment
