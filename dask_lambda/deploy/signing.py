"""The signing key a function and its clients share, kept in SSM Parameter Store (client side).

Every dask-lambda function has a 256-bit key in a ``SecureString`` parameter
(``/dask-lambda/<function>/signing-key``) named by its ``DASK_LAMBDA_KEY_PARAMETER`` environment
variable (:mod:`.function.contract`). Clients read it with their own AWS credentials; the
function's role may read only its own parameter. The key never travels in an event: events carry
an HMAC made with it (see :mod:`.function.protocol`).
"""

from __future__ import annotations

import secrets
from typing import Any

from ..function.contract import key_parameter_name, read_key

__all__ = ["create_key", "delete_key", "read_key"]


def create_key(ssm: Any, function_name: str) -> str:
    """Create the function's key if it has none; return the parameter's name."""
    name = key_parameter_name(function_name)
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


def delete_key(ssm: Any, function_name: str) -> bool:
    try:
        ssm.delete_parameter(Name=key_parameter_name(function_name))
    except ssm.exceptions.ParameterNotFound:
        return False
    return True
