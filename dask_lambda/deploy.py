"""Packaging dask-lambda's handler and creating or updating the function that runs it.

``package_zip`` builds a reproducible zip (fixed timestamps, sorted entries), so the same code
always has the same ``CodeSha256`` and an unchanged function is never re-uploaded.
``ensure_function`` creates the function or updates only what changed, waits until it is active,
and tags it as dask-lambda's.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import dask_lambda

from .local.code_store import code_sha256

HANDLER = "dask_lambda.handler.lambda_handler"
TAGS = {"createdBy": "dask-lambda"}
PACKAGE_ROOT = Path(dask_lambda.__file__).parent
_EXCLUDED_PARTS = {"__pycache__", "local"}
_ZIP_TIME = (2020, 1, 1, 0, 0, 0)
TRUST_POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Principal": {"Service": "lambda.amazonaws.com"},
            "Action": "sts:AssumeRole",
        }
    ],
}


def _add(archive: zipfile.ZipFile, source: Path, name: str) -> None:
    info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
    info.external_attr = 0o644 << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    archive.writestr(info, source.read_bytes())


def package_files() -> Iterable[tuple[Path, str]]:
    """``(file, archive name)`` for the parts of dask_lambda that run inside Lambda."""
    for path in sorted(PACKAGE_ROOT.rglob("*")):
        relative = path.relative_to(PACKAGE_ROOT)
        if (
            path.is_file()
            and path.suffix in (".py", ".yaml")
            and not (_EXCLUDED_PARTS & set(relative.parts))
        ):
            yield path, f"dask_lambda/{relative.as_posix()}"


def package_zip(extra: Iterable[tuple[Path, str]] = ()) -> bytes:
    """A reproducible zip of dask_lambda's Lambda-side code plus ``extra`` files."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for source, name in sorted([*package_files(), *extra], key=lambda item: item[1]):
            _add(archive, source, name)
    return buffer.getvalue()


def ensure_role(iam: Any, name: str) -> str:
    """The ARN of role ``name``, created (assumable by Lambda) if it does not exist."""
    try:
        return iam.get_role(RoleName=name)["Role"]["Arn"]
    except iam.exceptions.NoSuchEntityException:
        role = iam.create_role(
            RoleName=name,
            AssumeRolePolicyDocument=json.dumps(TRUST_POLICY),
            Description="Runs dask-lambda tasks",
            Tags=[{"Key": k, "Value": v} for k, v in TAGS.items()],
        )
        return role["Role"]["Arn"]


def ensure_function(
    client: Any,
    name: str,
    code: bytes,
    role_arn: str,
    memory: int,
    timeout: int,
    environment: dict[str, str] | None = None,
    tags: dict[str, str] | None = None,
    handler: str = HANDLER,
    runtime: str = "python3.11",
) -> dict[str, Any]:
    """Create ``name`` or bring it up to date (code and configuration); return its configuration."""
    config = {
        "Role": role_arn,
        "Handler": handler,
        "Runtime": runtime,
        "MemorySize": int(memory),
        "Timeout": int(timeout),
        "Environment": {"Variables": dict(environment or {})},
    }
    try:
        current = client.get_function(FunctionName=name)["Configuration"]
    except client.exceptions.ResourceNotFoundException:
        client.create_function(
            FunctionName=name, Code={"ZipFile": code}, Tags={**TAGS, **(tags or {})}, **config
        )
        client.get_waiter("function_active_v2").wait(FunctionName=name)
        return client.get_function_configuration(FunctionName=name)
    if current.get("CodeSha256") != code_sha256(code):
        client.update_function_code(FunctionName=name, ZipFile=code)
        client.get_waiter("function_updated_v2").wait(FunctionName=name)
    changed = {k: v for k, v in config.items() if _differs(current, k, v)}
    if changed:
        client.update_function_configuration(FunctionName=name, **changed)
        client.get_waiter("function_updated_v2").wait(FunctionName=name)
    return client.get_function_configuration(FunctionName=name)


def _differs(current: dict, key: str, wanted: Any) -> bool:
    if key == "Environment":
        return (current.get("Environment") or {}).get("Variables", {}) != wanted["Variables"]
    return current.get(key) != wanted
