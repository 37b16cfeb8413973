"""Creating and updating functions that run dask-lambda, and the roles they run as.

:func:`deploy` validates the configuration before any AWS call, uploads the zip directly (up to
50 MB) or through S3, creates the function or updates only what changed (code when its
``CodeSha256`` differs, configuration when a setting does), waits until it is ready, and tags it
``createdBy: dask-lambda`` with the versions it was built from. :func:`role_policy` is the least
privilege a function needs: its spill prefix and its own log group.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from .. import limits
from ..function.contract import HANDLER, dependencies_reference, key_parameter_name
from ..function.protocol import versions
from ..function.storage import MARKER_TAG, SCRATCH_TAG, WRITE_TAGGING
from .build import DIRECT_UPLOAD_LIMIT, code_sha256

CREATED_BY = {"createdBy": "dask-lambda"}
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


class DeployError(ValueError):
    """A deployment request that cannot work; the message says how to fix it."""


@dataclass
class FunctionSettings:
    """A function's configuration as dask-lambda deploys it; ``None`` keeps the current value."""

    memory: int | None = None
    timeout: int | None = None
    ephemeral_storage: int | None = None
    architecture: str | None = None
    layers: list[str] | None = None
    environment: dict[str, str] | None = None
    role: str | None = None
    snapstart: bool | None = None

    def validate(self) -> None:
        """Raise :class:`DeployError` for values Lambda would refuse."""
        checks = [
            ("memory", self.memory, limits.MIN_MEMORY_MB, limits.MAX_MEMORY_MB, "MB", "--memory"),
            ("timeout", self.timeout, 1, limits.MAX_TIMEOUT_SECONDS, "seconds", "--timeout"),
            ("ephemeral storage", self.ephemeral_storage, limits.MIN_EPHEMERAL_MB,
             limits.MAX_EPHEMERAL_MB, "MB",
             "--ephemeral-storage"),
        ]  # fmt: skip
        for name, value, low, high, unit, option in checks:
            if value is not None and not low <= value <= high:
                raise DeployError(
                    f"Lambda {name} must be between {low} and {high} {unit}; got {value}."
                    f" Pass {option} in that range."
                )
        if self.architecture not in (None, "x86_64", "arm64"):
            raise DeployError(f"--architecture must be x86_64 or arm64, not {self.architecture!r}")

    def configuration(self) -> dict[str, Any]:
        """The UpdateFunctionConfiguration fields that are set."""
        config: dict[str, Any] = {}
        if self.memory is not None:
            config["MemorySize"] = int(self.memory)
        if self.timeout is not None:
            config["Timeout"] = int(self.timeout)
        if self.ephemeral_storage is not None:
            config["EphemeralStorage"] = {"Size": int(self.ephemeral_storage)}
        if self.layers is not None:
            config["Layers"] = list(self.layers)
        if self.environment is not None:
            config["Environment"] = {"Variables": dict(self.environment)}
        if self.role is not None:
            config["Role"] = self.role
        if self.snapstart is not None:
            config["SnapStart"] = {"ApplyOn": "PublishedVersions" if self.snapstart else "None"}
        return config


@dataclass
class DeployResult:
    configuration: dict[str, Any]
    created: bool = False
    code_updated: bool = False
    configuration_changes: dict[str, Any] = field(default_factory=dict)
    version: str | None = None  # the version published for SnapStart (invoke that, not $LATEST)

    @property
    def invoke_target(self) -> str:
        """What to invoke: the published version (``name:N``) or the function."""
        name = self.configuration["FunctionName"]
        return f"{name}:{self.version}" if self.version else name


# The alias that points at the version dask-lambda published last for a SnapStart function:
# how a client finds what to invoke (and pins it for its lifetime).
SNAPSTART_ALIAS = "dask-lambda"
SNAPSTART_MIN_PYTHON = (3, 12)
SNAPSTART_TMP_LIMIT_MB = limits.MIN_EPHEMERAL_MB  # SnapStart's /tmp is at most 512 MB


def snapstart_on(settings: FunctionSettings, current: dict | None) -> bool:
    """Whether the function will have SnapStart: as asked, or as it is when not asked."""
    if settings.snapstart is not None:
        return settings.snapstart
    return (current or {}).get("SnapStart", {}).get("ApplyOn") == "PublishedVersions"


IMAGE_SNAPSTART_REFUSED = (
    "Lambda does not apply SnapStart to container images: deploy the image without --snapstart"
    " (an image is cached by Lambda across cold starts instead), or deploy a zip (without"
    " --image) with --snapstart."
)


def check_snapstart(runtime: str, settings: FunctionSettings, image: bool = False) -> None:
    """Raise :class:`DeployError` where AWS would refuse SnapStart for this function."""
    if not settings.snapstart:
        return
    if image:
        raise DeployError(IMAGE_SNAPSTART_REFUSED)
    version = tuple(int(part) for part in runtime.removeprefix("python").split("."))
    if version < SNAPSTART_MIN_PYTHON:
        raise DeployError(
            f"SnapStart needs python3.12 or later, and dask-lambda deploys the client's Python"
            f" ({runtime}): deploy from a Python 3.12+ environment, or without --snapstart"
            " (snapstart=False)."
        )
    if (settings.ephemeral_storage or 512) > SNAPSTART_TMP_LIMIT_MB:
        raise DeployError(
            f"SnapStart allows a /tmp of at most {SNAPSTART_TMP_LIMIT_MB} MB, and this function"
            f" asks for {settings.ephemeral_storage} MB (--ephemeral-storage, or dependencies"
            " unpacked into /tmp from S3): ship the dependencies in the zip (up to 250 MB) or in"
            " a layer, or deploy without --snapstart."
        )


def publish(lambda_client: Any, name: str) -> str:
    """Publish the function's code and configuration as a version (SnapStart snapshots its
    init then), wait until the version is active, and point :data:`SNAPSTART_ALIAS` at it;
    return the version. Nothing changed since the last version: that version."""
    import botocore.exceptions as bce

    version = lambda_client.publish_version(FunctionName=name)["Version"]
    try:
        lambda_client.get_waiter("published_version_active").wait(
            FunctionName=name, Qualifier=version
        )
    except bce.WaiterError as e:
        reason = (e.last_response or {}).get("StateReason") or str(e)
        raise DeployError(
            f"Version {version} of {name!r} did not become active: its SnapStart snapshot"
            f" failed. The init (the handler's imports and before-snapshot hooks) said:"
            f" {reason}. Fix it and deploy again."
        ) from None
    try:
        lambda_client.update_alias(FunctionName=name, Name=SNAPSTART_ALIAS, FunctionVersion=version)
    except lambda_client.exceptions.ResourceNotFoundException:
        lambda_client.create_alias(FunctionName=name, Name=SNAPSTART_ALIAS,
                                   FunctionVersion=version,
                                   Description="The version dask-lambda invokes")  # fmt: skip
    return version


def invoke_target(lambda_client: Any, configuration: dict[str, Any]) -> str:
    """What a client invokes: the function, or for a SnapStart function ``name:N``, the
    version :data:`SNAPSTART_ALIAS` points at (resolved once: a later deploy does not move a
    running client to other code)."""
    name = configuration["FunctionName"]
    if (configuration.get("SnapStart") or {}).get("ApplyOn") != "PublishedVersions":
        return name
    try:
        alias = lambda_client.get_alias(FunctionName=name, Name=SNAPSTART_ALIAS)
    except lambda_client.exceptions.ResourceNotFoundException:
        raise DeployError(
            f"Lambda function {name!r} has SnapStart on but no version published by"
            f" dask-lambda (alias {SNAPSTART_ALIAS!r}): publish one with dask-lambda update"
            f" {name} --snapstart"
        ) from None
    return f"{name}:{alias['FunctionVersion']}"


def version_tags() -> dict[str, str]:
    """Tags recording what a function was built from."""
    import cloudpickle
    import dask

    from .. import __version__

    return {
        "dask-lambda:version": __version__,
        "dask:version": dask.__version__,
        "cloudpickle:version": cloudpickle.__version__,
        "python:version": versions()["python"],
    }


_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


def check_location(bucket: str, prefix: str) -> tuple[str, str]:
    """``(bucket, prefix)`` normalised, or :class:`DeployError` for what a policy cannot name.

    ``*``, ``?`` and ``$`` are wildcards and variables in IAM resource names: a prefix holding
    them would grant far more than the prefix, so it is refused rather than escaped.
    """
    prefix = prefix.strip("/")
    if not _BUCKET_NAME.fullmatch(bucket or ""):
        raise DeployError(
            f"{bucket!r} is not an S3 bucket name (3-63 lowercase letters, digits, dots and"
            " hyphens): pass --bucket with the spill bucket's name."
        )
    if not prefix or any(c in prefix for c in "*?$"):
        raise DeployError(
            f"--prefix {prefix!r} cannot be used: it must be a plain, non-empty S3 prefix"
            " without *, ? or $ (they are wildcards in IAM policies). Use e.g. dask-lambda."
        )
    return bucket, prefix


def role_policy(
    bucket: str,
    prefix: str,
    function_name: str,
    s3_read: list[str] | tuple[str, ...] = (),
    s3_write: list[str] | tuple[str, ...] = (),
) -> dict[str, Any]:
    """Least privilege for a dask-lambda function: its spill prefix, its dependency archives
    (read only), its key, its own logs, and the data locations ``s3_read`` / ``s3_write``
    (``s3://bucket[/prefix]``) its tasks use.

    Writing a location implies reading it (writers list and check what is there). The key is a
    SecureString under the AWS-managed ``aws/ssm`` KMS key, which SSM decrypts for any caller
    allowed ``ssm:GetParameter``: no KMS statement is needed.
    """
    bucket, prefix = check_location(bucket, prefix)
    statements = [
        {
            "Sid": "SpillObjects",
            "Effect": "Allow",
            "Action": [
                "s3:GetObject",
                "s3:PutObject",
                "s3:PutObjectTagging",
                "s3:DeleteObject",
            ],
            "Resource": f"arn:aws:s3:::{bucket}/{prefix}/*",
        },
        {
            "Sid": "DependencyArchives",  # read only: see upload_dependencies
            "Effect": "Allow",
            "Action": "s3:GetObject",
            "Resource": f"arn:aws:s3:::{bucket}/{dependencies_prefix(prefix)}/*",
        },
        {
            "Sid": "OwnSigningKey",
            "Effect": "Allow",
            "Action": "ssm:GetParameter",
            "Resource": f"arn:aws:ssm:*:*:parameter{key_parameter_name(function_name)}",
        },
        {
            "Sid": "OwnLogs",
            "Effect": "Allow",
            "Action": ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"],
            "Resource": [  # and its memory tiers' (tier_name)
                f"arn:aws:logs:*:*:log-group:/aws/lambda/{function_name}",
                f"arn:aws:logs:*:*:log-group:/aws/lambda/{function_name}:*",
                f"arn:aws:logs:*:*:log-group:/aws/lambda/{function_name}--*",
            ],
        },
    ]
    writes = [parse_s3_location(url, "--s3-write") for url in s3_write]
    reads = [parse_s3_location(url, "--s3-read") for url in s3_read]
    for number, (data_bucket, data_prefix) in enumerate(dict.fromkeys(reads + writes)):
        statements += _data_statements(f"Data{number}", data_bucket, data_prefix,
                                       write=(data_bucket, data_prefix) in writes)  # fmt: skip
    return {"Version": "2012-10-17", "Statement": statements}


def parse_s3_location(url: str, option: str) -> tuple[str, str]:
    """``(bucket, prefix)`` of ``s3://bucket[/prefix]``; :class:`DeployError` says what is wrong."""
    if not url.startswith("s3://"):
        raise DeployError(f"{option} {url!r}: expected s3://bucket or s3://bucket/prefix")
    bucket, _, prefix = url[len("s3://") :].partition("/")
    if not _BUCKET_NAME.fullmatch(bucket):
        raise DeployError(
            f"{option} {url!r}: {bucket!r} is not an S3 bucket name (3-63 lowercase letters,"
            " digits, dots and hyphens)"
        )
    return bucket, prefix.strip("/")


def iam_escape(text: str) -> str:
    """``text`` as a literal in an IAM resource or condition (``*``, ``?``, ``$`` are special)."""
    return "".join("${" + c + "}" if c in "*?$" else c for c in text)


def _data_statements(sid: str, bucket: str, prefix: str, write: bool) -> list[dict[str, Any]]:
    objects = f"arn:aws:s3:::{bucket}/{iam_escape(prefix) + '/' if prefix else ''}*"
    actions = ["s3:GetObject"]
    if write:
        actions += ["s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"]
    listing: dict[str, Any] = {
        "Sid": f"{sid}List",
        "Effect": "Allow",
        "Action": "s3:ListBucket",
        "Resource": f"arn:aws:s3:::{bucket}",
    }
    if prefix:
        listing["Condition"] = {
            "StringLike": {"s3:prefix": [iam_escape(prefix), iam_escape(prefix) + "/*"]}
        }
    return [{"Sid": f"{sid}Objects", "Effect": "Allow", "Action": actions, "Resource": objects},
            listing]  # fmt: skip


def ensure_expiry(s3: Any, bucket: str, prefix: str, days: int) -> None:
    """A lifecycle rule that deletes spill objects under ``prefix`` after ``days`` days.

    Computes delete their objects themselves; the rule catches what a killed client left. It
    applies only to objects tagged ``createdBy=dask-lambda`` and ``dask-lambda-lifetime=scratch``
    (every object dask-lambda writes, until a client holds it for longer than a compute: see
    :mod:`.ownership`), so the user's own objects under the same prefix never expire, and neither
    do persisted values, futures and scattered values a running client holds. Other rules are
    kept.
    """
    rule_id = f"dask-lambda-expire-{prefix.strip('/')}"[:255]
    try:
        rules = s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    except s3.exceptions.ClientError as e:
        if e.response.get("Error", {}).get("Code") != "NoSuchLifecycleConfiguration":
            raise
        rules = []
    rules = [rule for rule in rules if rule.get("ID") != rule_id]
    rules.append(
        {
            "ID": rule_id,
            "Filter": {  # only what dask-lambda wrote: never the user's data under the prefix
                "And": {
                    "Prefix": prefix.strip("/") + "/",
                    "Tags": [
                        {"Key": key, "Value": value} for key, value in (MARKER_TAG, SCRATCH_TAG)
                    ],
                }
            },
            "Status": "Enabled",
            "Expiration": {"Days": int(days)},
            "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1},
        }
    )
    s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": rules})


class NotOursError(PermissionError):
    """The resource was not created by dask-lambda, so dask-lambda will not change it."""


def is_ours(tags: dict[str, str]) -> bool:
    return all(tags.get(k) == v for k, v in CREATED_BY.items())


def ensure_role(iam: Any, name: str, policy: dict | None = None, adopt: bool = False) -> str:
    """The ARN of role ``name`` (assumable by Lambda), created if missing.

    ``policy``, if given, is set as the role's inline policy — on a role dask-lambda created, or
    with ``adopt`` on any role (which is then tagged as dask-lambda's); otherwise a role that
    exists without the ``createdBy: dask-lambda`` tag raises :class:`NotOursError`.
    """
    try:
        arn = iam.get_role(RoleName=name)["Role"]["Arn"]
        if policy is not None:
            tags = {t["Key"]: t["Value"] for t in iam.list_role_tags(RoleName=name)["Tags"]}
            if not is_ours(tags) and not adopt:
                raise NotOursError(
                    f"Role {name!r} exists and was not created by dask-lambda: --create-role"
                    " will not overwrite its policy. Pass --role with its ARN to use it as it"
                    " is, or --adopt to let dask-lambda replace its policy and manage it."
                )
            if not is_ours(tags):
                iam.tag_role(RoleName=name, Tags=[{"Key": k, "Value": v}
                                                  for k, v in CREATED_BY.items()])  # fmt: skip
    except iam.exceptions.NoSuchEntityException:
        arn = iam.create_role(
            RoleName=name,
            AssumeRolePolicyDocument=json.dumps(TRUST_POLICY),
            Description="Runs dask-lambda tasks",
            Tags=[{"Key": k, "Value": v} for k, v in CREATED_BY.items()],
        )["Role"]["Arn"]
    if policy is not None:
        iam.put_role_policy(
            RoleName=name, PolicyName="dask-lambda", PolicyDocument=json.dumps(policy)
        )
    return arn


def deploy(
    lambda_client: Any,
    name: str,
    code: bytes | None,
    settings: FunctionSettings,
    s3_client: Any = None,
    bucket: str | None = None,
    prefix: str = "dask-lambda",
    tags: dict[str, str] | None = None,
    handler: str = HANDLER,
    runtime: str | None = None,
    adopt: bool = False,
    stage_code: bool = False,
    image_uri: str | None = None,
) -> DeployResult:
    """Create ``name`` or update only what changed; wait until it is ready.

    ``image_uri`` (``repository@sha256:...``, in place of ``code``) deploys a container image
    (``PackageType=Image``). ``code`` None updates the configuration only. Zips over 50 MB, or
    any with ``stage_code`` (which spares both ends base64 and JSON of the zip), are uploaded
    to ``bucket`` first (and deleted from it once Lambda has taken them). An existing function
    that dask-lambda did not create is left alone (:class:`NotOursError`) unless ``adopt``,
    which tags it as dask-lambda's.
    """
    settings.validate()
    runtime = runtime or f"python{versions()['python']}"
    check_snapstart(runtime, settings, image=image_uri is not None)
    result = _create_or_update(lambda_client, name, code, settings, s3_client, bucket, prefix,
                               tags, handler, runtime, adopt, stage_code, image_uri)  # fmt: skip
    if snapstart_on(settings, result.configuration):
        result.version = publish(lambda_client, name)
    return result


def _create_or_update(
    lambda_client: Any, name: str, code: bytes | None, settings: FunctionSettings,
    s3_client: Any, bucket: str | None, prefix: str, tags: dict[str, str] | None, handler: str,
    runtime: str, adopt: bool, stage_code: bool, image_uri: str | None = None,
) -> DeployResult:  # fmt: skip
    if code is not None and len(code) > DIRECT_UPLOAD_LIMIT and bucket is None:
        raise DeployError(
            f"The zip is {len(code) / 1e6:.1f} MB, over the 50 MB Lambda accepts directly:"
            " pass --bucket so it is uploaded through S3, or move dependencies into a layer."
        )
    image = image_uri is not None  # an image has its runtime and handler in it
    package = {"PackageType": "Image"} if image else {"Runtime": runtime, "Handler": handler}
    new_code = _code_location(code, s3_client, bucket, prefix, stage_code, image_uri)
    current = current_configuration(lambda_client, name)
    if current is None:
        if new_code.sha is None:
            raise DeployError(f"Function {name!r} does not exist; deploy it first")
        if settings.role is None:
            raise DeployError("A new function needs a role: pass --role ARN or --create-role")
        config = settings.configuration()
        if settings.architecture:
            config["Architectures"] = [settings.architecture]
        with new_code as location:
            lambda_client.create_function(
                FunctionName=name, Code=location,
                Tags={**CREATED_BY, **version_tags(), **(tags or {})}, **package, **config,
            )  # fmt: skip
            lambda_client.get_waiter("function_active_v2").wait(FunctionName=name)
        configuration = lambda_client.get_function_configuration(FunctionName=name)
        return DeployResult(configuration, created=True)

    if new_code.sha is not None:
        _check_package_type(current, package.get("PackageType", "Zip"))
    if check_ownership(lambda_client, current, adopt):
        lambda_client.tag_resource(Resource=current["FunctionArn"], Tags=CREATED_BY)
    if tags:
        lambda_client.tag_resource(Resource=current["FunctionArn"], Tags=tags)
    result = DeployResult(current)
    arch_changed = settings.architecture and current.get("Architectures", ["x86_64"]) != [
        settings.architecture
    ]
    if new_code.sha is not None and (current.get("CodeSha256") != new_code.sha or arch_changed):
        with new_code as location:
            extra = {"Architectures": [settings.architecture]} if arch_changed else {}
            lambda_client.update_function_code(FunctionName=name, **location, **extra)
            lambda_client.get_waiter("function_updated_v2").wait(FunctionName=name)
        result.code_updated = True
        lambda_client.tag_resource(Resource=current["FunctionArn"], Tags=version_tags())
    wanted = settings.configuration()
    if (current.get("PackageType") or "Zip") == "Zip":  # an image has its own (settings only)
        wanted.update({"Handler": handler, "Runtime": runtime})
    changes = {k: v for k, v in wanted.items() if _differs(current, k, v)}
    if changes:
        lambda_client.update_function_configuration(FunctionName=name, **changes)
        lambda_client.get_waiter("function_updated_v2").wait(FunctionName=name)
        result.configuration_changes = changes
    result.configuration = lambda_client.get_function_configuration(FunctionName=name)
    return result


def _check_package_type(current: dict, wanted: str) -> None:
    """Lambda cannot turn a zip function into an image one, or back: say what to do instead."""
    found = current.get("PackageType") or "Zip"
    if found != wanted:
        name = current["FunctionName"]
        raise DeployError(
            f"Function {name!r} is deployed as {'an image' if found == 'Image' else 'a zip'},"
            " and Lambda cannot change a function's package type: "
            + ("update it as an image (dask-lambda update keeps --image), or" if found == "Image"
               else "update it as a zip (without --image), or")
            + f" delete it first (dask-lambda delete {name}), or deploy under another name."
        )  # fmt: skip


def check_ownership(lambda_client: Any, current: dict | None, adopt: bool) -> bool:
    """Whether deploying over ``current`` adopts it; :class:`NotOursError` if that needs --adopt.

    ``current`` is the function's configuration (None: it does not exist yet).
    """
    if current is None:
        return False
    tags = lambda_client.list_tags(Resource=current["FunctionArn"]).get("Tags", {})
    if is_ours(tags):
        return False
    if not adopt:
        raise NotOursError(
            f"Function {current['FunctionName']!r} exists and was not created by dask-lambda:"
            " deploy will not replace its code, environment or settings. Deploy under another"
            " name, or pass --adopt to let dask-lambda take it over (it is then tagged as"
            " dask-lambda's)."
        )
    return True


def current_configuration(lambda_client: Any, name: str) -> dict | None:
    """The function's configuration, or None if it does not exist."""
    try:
        return lambda_client.get_function(FunctionName=name)["Configuration"]
    except lambda_client.exceptions.ResourceNotFoundException:
        return None


class _code_location:
    """``Code`` for Create/UpdateFunctionCode: the zip inline, or staged in S3 for the call; or
    an image's URI. ``sha`` is the ``CodeSha256`` Lambda will report (None: no code)."""

    def __init__(self, code: bytes | None, s3_client: Any, bucket: str | None, prefix: str,
                 stage: bool = False, image_uri: str | None = None):  # fmt: skip
        self.code, self.s3, self.bucket, self.image_uri = code, s3_client, bucket, image_uri
        self.key = f"{prefix.strip('/')}/deploy/{uuid.uuid4().hex}.zip"  # see admin.clean
        self.staged = code is not None and bucket is not None and (
            stage or len(code) > DIRECT_UPLOAD_LIMIT
        )
        if image_uri is not None:
            self.sha = image_uri.rpartition("@sha256:")[2]
        else:
            self.sha = code_sha256(code) if code is not None else None

    def __enter__(self) -> dict[str, Any]:
        if self.image_uri is not None:
            return {"ImageUri": self.image_uri}
        if not self.staged:
            return {"ZipFile": self.code}
        self.s3.put_object(Bucket=self.bucket, Key=self.key, Body=self.code, Tagging=WRITE_TAGGING)
        return {"S3Bucket": self.bucket, "S3Key": self.key}

    def __exit__(self, *exc: object) -> None:
        if self.staged:
            self.s3.delete_object(Bucket=self.bucket, Key=self.key)


def tier_name(function_name: str, memory_mb: int) -> str:
    """The variant of ``function_name`` with ``memory_mb`` of memory (a memory tier): same code,
    role, settings and signing key, for tasks annotated ``resources={"memory": MB}``."""
    return f"{function_name}--{int(memory_mb)}mb"


def dependencies_prefix(prefix: str) -> str:
    """Where dependency archives live: ``<prefix>-dependencies``, outside the spill prefix."""
    return prefix.strip("/") + "-dependencies"


def upload_dependencies(
    s3: Any, bucket: str, prefix: str, archive: bytes, unpacked: int | None = None
) -> str:
    """Put a dependency archive (``--deps-on-s3``) in the bucket; return the function's
    :data:`~.function.contract.DEPENDENCIES` value.

    The key is the archive's SHA-256 under :func:`dependencies_prefix`, beside the spill prefix
    rather than in it: the function's role may read it but not write it, and it is not a spill
    object, so ``clean`` and the expiry rule leave it. An unchanged archive is uploaded once. The
    function checks its size before reading it, never unpacks more than ``unpacked`` bytes of
    it, and checks its digest before anything unpacked from it can be imported.
    """
    import hashlib

    sha = hashlib.sha256(archive).hexdigest()
    key = f"{dependencies_prefix(prefix)}/{sha}.zip"
    try:
        present = s3.head_object(Bucket=bucket, Key=key)["ContentLength"] == len(archive)
    except s3.exceptions.ClientError:
        present = False
    if not present:
        s3.upload_fileobj(__import__("io").BytesIO(archive), bucket, key)
    return dependencies_reference(bucket, key, sha, len(archive), unpacked)


def ephemeral_storage_for(unpacked_bytes: int) -> int:
    """MB of /tmp for a dependency archive's contents and 512 MB for tasks (the archive itself
    is streamed, never stored)."""
    needed = unpacked_bytes // 1_000_000 + 512
    return min(limits.MAX_EPHEMERAL_MB, max(limits.MIN_EPHEMERAL_MB, needed))


def _differs(current: dict, key: str, wanted: Any) -> bool:
    if key == "Environment":
        return (current.get("Environment") or {}).get("Variables", {}) != wanted["Variables"]
    if key == "EphemeralStorage":
        return (current.get("EphemeralStorage") or {}).get("Size", 512) != wanted["Size"]
    if key == "Layers":
        return [layer["Arn"] for layer in current.get("Layers") or []] != wanted
    if key == "SnapStart":
        return (current.get("SnapStart") or {}).get("ApplyOn", "None") != wanted["ApplyOn"]
    return current.get(key) != wanted


def ensure_function(
    client: Any,
    name: str,
    code: bytes,
    role_arn: str,
    memory: int,
    timeout: int,
    environment: dict[str, str] | None = None,
    ephemeral_storage: int | None = None,
    s3_client: Any = None,
    bucket: str | None = None,
) -> dict[str, Any]:
    """Create or update a dask-lambda function with the given code; return its configuration."""
    settings = FunctionSettings(memory=memory, timeout=timeout, environment=environment,
                                role=role_arn, ephemeral_storage=ephemeral_storage)  # fmt: skip
    return deploy(client, name, code, settings, s3_client=s3_client, bucket=bucket).configuration
