"""Managing what dask-lambda created: listing, deleting, inspecting, logs and cleaning up.

Everything here acts only on resources tagged ``createdBy: dask-lambda`` (see :mod:`.deploy`), so
a command can never delete someone else's function or role by mistake.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .functions import NotOursError, is_ours

FOLLOW_OVERLAP = 30  # seconds


def function_tags(lambda_client: Any, configuration: dict) -> dict[str, str]:
    return lambda_client.list_tags(Resource=configuration["FunctionArn"]).get("Tags", {})


def require_ours(lambda_client: Any, name: str) -> dict[str, Any]:
    """The function's configuration; :class:`NotOursError` unless dask-lambda created it."""
    configuration = lambda_client.get_function_configuration(FunctionName=name)
    if not is_ours(function_tags(lambda_client, configuration)):
        raise NotOursError(
            f"Function {name!r} was not created by dask-lambda (no createdBy: dask-lambda tag);"
            " dask-lambda will not change or delete it. Use the AWS console or CLI."
        )
    return configuration


@dataclass
class FunctionSummary:
    name: str
    memory: int
    timeout: int
    architecture: str
    last_modified: str
    tags: dict[str, str]
    package_type: str = "Zip"


def list_functions(lambda_client: Any) -> list[FunctionSummary]:
    """Functions created by dask-lambda, by name."""
    found = []
    for page in lambda_client.get_paginator("list_functions").paginate():
        for config in page["Functions"]:
            tags = function_tags(lambda_client, config)
            if is_ours(tags):
                found.append(
                    FunctionSummary(
                        name=config["FunctionName"],
                        memory=config.get("MemorySize", 128),
                        timeout=config.get("Timeout", 3),
                        architecture=(config.get("Architectures") or ["x86_64"])[0],
                        last_modified=config.get("LastModified", ""),
                        tags=tags,
                        package_type=config.get("PackageType") or "Zip",
                    )
                )
    return sorted(found, key=lambda f: f.name)


def delete_function(
    lambda_client: Any, iam_client: Any, name: str, delete_role: bool, ssm_client: Any = None,
    ecr: Any = None,
) -> list[str]:  # fmt: skip
    """Delete a dask-lambda function, its signing key and, if asked, its role and (given
    ``ecr``) an image function's repository; say what went."""
    from .images import delete_repository, repository_of
    from .signing import delete_key

    configuration = require_ours(lambda_client, name)
    image_uri = None
    if ecr is not None and configuration.get("PackageType") == "Image":
        image_uri = lambda_client.get_function(FunctionName=name)["Code"]["ImageUri"]
    lambda_client.delete_function(FunctionName=name)
    removed = [f"function {name}"]
    for tier in list_functions(lambda_client):  # its memory tiers (deploy.tier_name)
        if tier.name.startswith(f"{name}--") and tier.name.endswith("mb"):
            lambda_client.delete_function(FunctionName=tier.name)
            removed.append(f"memory tier {tier.name}")
    if ssm_client is not None and delete_key(ssm_client, name):
        removed.append(f"signing key of {name}")
    if delete_role:
        role = configuration["Role"].rsplit("/", 1)[-1]
        removed += delete_role_if_ours(iam_client, role)
    if image_uri is not None and delete_repository(ecr, repository_of(image_uri)):
        removed.append(f"ECR repository {repository_of(image_uri)} and its images")
    return removed


def delete_role_if_ours(iam_client: Any, role: str) -> list[str]:
    try:
        tags = {t["Key"]: t["Value"] for t in iam_client.list_role_tags(RoleName=role)["Tags"]}
    except iam_client.exceptions.NoSuchEntityException:
        return []
    if not is_ours(tags):
        return []
    for policy in iam_client.list_role_policies(RoleName=role)["PolicyNames"]:
        iam_client.delete_role_policy(RoleName=role, PolicyName=policy)
    iam_client.delete_role(RoleName=role)
    return [f"role {role}"]


def parse_since(text: str) -> float:
    """``'10m'``, ``'2h'``, ``'30s'``, ``'1d'`` -> seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not match:
        raise ValueError(f"Cannot read {text!r} as a duration: use e.g. 30s, 10m, 2h or 1d")
    unit = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match[2]]
    return float(match[1]) * unit


def log_events(
    logs_client: Any,
    function_name: str,
    since_seconds: float,
    pattern: str | None = None,
    follow: bool = False,
    poll_interval: float = 2.0,
) -> Iterator[dict[str, Any]]:
    """The function's log events (CloudWatch Logs ``FilterLogEvents``), oldest first.

    With ``follow``, keeps polling for new events until the caller stops iterating. Each poll
    looks back ``FOLLOW_OVERLAP`` seconds before the newest event seen (events can arrive late,
    on CloudWatch as here); event ids keep anything from being shown twice.
    """
    group = f"/aws/lambda/{function_name}"
    start = int((time.time() - since_seconds) * 1000)
    seen: set[str] = set()
    while True:
        kwargs: dict[str, Any] = {"logGroupName": group, "startTime": start}
        if pattern:
            kwargs["filterPattern"] = pattern
        newest = start
        try:
            for page in logs_client.get_paginator("filter_log_events").paginate(**kwargs):
                for event in page.get("events", []):
                    if event["eventId"] in seen:
                        continue
                    seen.add(event["eventId"])
                    newest = max(newest, event["timestamp"])
                    yield event
        except logs_client.exceptions.ResourceNotFoundException:
            if not follow:
                return
        if not follow:
            return
        start = max(start, newest - FOLLOW_OVERLAP * 1000)
        time.sleep(poll_interval)


_SPILL_NAME = (
    r"(?:[A-Za-z0-9_.-]{1,140}/)??"  # the function's folder (per-function spill prefixes)
    r"(?:(?:executor/)?(?:(?P<id>[0-9a-f]{16})/)?(?:payloads/)?[0-9a-f]{32}"  # values, requests
    r"|deploy/[0-9a-f]{32}\.zip"  # zips staged for CreateFunction
    r"|leases/(?P<lease>[0-9a-f]{8})\.json)"  # a client's lease (see .ownership)
)


@dataclass
class CleanPlan:
    """What ``dask-lambda clean`` found under a prefix.

    Attributes
    ----------
    stale
        Objects dask-lambda wrote, older than the cutoff, that no running client holds.
    held
        ``{object: lease}`` for objects a running client holds (spared, whatever their age).
    """

    stale: list[str]
    held: dict[str, dict]


def stale_objects(s3_client: Any, bucket: str, prefix: str, older_than: float) -> CleanPlan:
    """Objects dask-lambda wrote under ``prefix`` more than ``older_than`` seconds ago.

    An object counts as dask-lambda's only if its name has the shape dask-lambda gives its
    objects (a compute id and a digest under the prefix) *and* it carries the
    ``createdBy=dask-lambda`` tag every write sets (:mod:`.storage`): anything else under the
    prefix — the user's own data — is never listed, so never deleted. An object under the id of
    a client whose lease is live (:mod:`.ownership`) is held, not stale; an expired lease is
    stale itself.
    """
    from ..function.storage import S3Store
    from ..ownership import read_leases

    store = S3Store(bucket, s3_client)
    cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=older_than)
    shape = re.compile(re.escape(prefix.strip("/")) + "/" + _SPILL_NAME)
    candidates, lease_names = {}, []
    for page in s3_client.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=prefix.strip("/") + "/"
    ):
        for item in page.get("Contents", ()):
            match = shape.fullmatch(item["Key"])
            if match is None:
                continue
            if match["lease"]:
                lease_names.append(item["Key"])
            candidates[item["Key"]] = (item["LastModified"], match["id"] or match["lease"])
    leases = read_leases(store, lease_names)
    live = {lease["token"]: lease for lease in leases.values() if lease["live"] and lease["token"]}
    stale, held = [], {}
    for name, (modified, owner_id) in candidates.items():
        lease = live.get((owner_id or "")[:8])
        if lease is not None:
            if name not in leases:  # a live lease itself is neither held data nor stale
                held[name] = lease
        elif modified <= cutoff and store.is_ours(name):
            stale.append(name)
    return CleanPlan(stale, held)


def tagged_roles(iam_client: Any) -> list[str]:
    roles = []
    for page in iam_client.get_paginator("list_roles").paginate():
        for role in page["Roles"]:
            tags = {t["Key"]: t["Value"] for t in iam_client.list_role_tags(
                RoleName=role["RoleName"])["Tags"]}  # fmt: skip
            if is_ours(tags):
                roles.append(role["RoleName"])
    return roles
