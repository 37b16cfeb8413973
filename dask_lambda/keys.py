"""The signing key a function and its clients share, kept in SSM Parameter Store.

Every dask-lambda function has a 256-bit key in a ``SecureString`` parameter
(``/dask-lambda/<function>/signing-key``) named by its ``DASK_LAMBDA_KEY_PARAMETER`` environment
variable. Clients read it with their own AWS credentials; the function's role may read only its
own parameter. The key never travels in an event: events carry an HMAC made with it (see
:mod:`.protocol`).
"""

from __future__ import annotations

import secrets
from typing import Any

ENV_VARIABLE = "DASK_LAMBDA_KEY_PARAMETER"


def parameter_name(function_name: str) -> str:
    return f"/dask-lambda/{function_name}/signing-key"


def ensure_key(ssm: Any, function_name: str) -> str:
    """Create the function's key if it has none; return the parameter's name."""
    name = parameter_name(function_name)
    try:
        ssm.put_parameter(
            Name=name,
            Value=secrets.token_hex(32),
            Type="SecureString",
            Description="dask-lambda: HMAC key that signs task batches",
            Tags=[{"Key": "createdBy", "Value": "dask-lambda"}],
        )
    except ssm.exceptions.ParameterAlreadyExists:
        pass
    return name


def fetch_key(ssm: Any, name: str) -> bytes:
    """The key stored in parameter ``name``."""
    value = ssm.get_parameter(Name=name, WithDecryption=True)["Parameter"]["Value"]
    return bytes.fromhex(value)


def delete_key(ssm: Any, function_name: str) -> bool:
    try:
        ssm.delete_parameter(Name=parameter_name(function_name))
    except ssm.exceptions.ParameterNotFound:
        return False
    return True
