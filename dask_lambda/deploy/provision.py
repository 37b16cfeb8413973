"""Provisioning a function: the one path from a package to a running function and its tiers.

``dask-lambda deploy``/``update`` (:mod:`.cli`) and a :class:`~.cluster.LambdaCluster` that
deploys its own function both call :func:`provision`, which runs every step in one order:

1. **build** the deployment zip (:mod:`.build`), unless a built one or none (keep the code) is
   given;
2. **dependencies**: an archive too large for Lambda goes to the bucket, and the function's
   ``/tmp`` is sized for it;
3. **role**: with ``create_role``, the least-privilege role of :func:`~.deploy.role_policy`;
4. **signing key**: every function gets its own, once (:mod:`.signing`);
5. **function**: created, or updated where it differs (:func:`~.deploy.deploy`);
6. **expiry**: the bucket's rule for what crashed clients leave (``expire_days``);
7. **memory tiers**: a variant per tier with the function's code, role and environment;
8. **SnapStart**: a function with it gets a version published (and snapshotted) for each
   change, and its ``dask-lambda`` alias moved there (:func:`~.deploy.functions.publish`).

With ``image`` the package is a container image instead (:mod:`.images`): built in step 1,
pushed into the function's ECR repository before step 5, and deployed by digest; the function
and its tiers run that one image, and no dependency archive goes to S3.

It raises :class:`~.deploy.DeployError` (or :class:`~.build.BuildError`) naming the fix, before
anything touches AWS where it can, and tells ``progress`` what it did, a line per step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..function import contract
from . import images
from .build import BuildResult, BuildSpec, build
from .functions import (
    IMAGE_SNAPSTART_REFUSED,
    SNAPSTART_TMP_LIMIT_MB,
    DeployError,
    DeployResult,
    FunctionSettings,
    check_location,
    check_ownership,
    current_configuration,
    deploy,
    ensure_expiry,
    ensure_role,
    ephemeral_storage_for,
    role_policy,
    snapstart_on,
    tier_name,
    upload_dependencies,
)
from .signing import create_key


@dataclass
class Request:
    """What to provision.

    Attributes
    ----------
    name
        The function's name.
    settings
        Its configuration (memory, timeout, ...); ``environment`` holds the variables to set
        beyond dask-lambda's own.
    build, built
        What to build, or the package already built; neither: keep the current code.
    bucket, prefix
        The spill bucket and the function's prefix (``None``: no bucket).
    allow
        The allowlist of functions (``--allow``).
    create_role, role_name, s3_read, s3_write
        Create (or update) role ``role_name`` allowing the bucket's prefix and these locations.
    current_env
        The environment of the function as it is (an update keeps what it does not change).
    memory_tiers
        MB of each memory tier to create alongside.
    adopt
        Take over a function or role dask-lambda did not create.
    tags
        Extra tags of the function.
    expire_days
        Days after which the bucket expires what crashed clients left (None: no rule).
    stage_code
        Upload the zip to the bucket and create the function from there, whatever its size.
    image, built_image
        Deploy a container image (built from ``build``, or ``built_image`` already built)
        instead of a zip.
    """

    name: str
    settings: FunctionSettings
    build: BuildSpec | None = None
    built: BuildResult | None = None
    bucket: str | None = None
    prefix: str = "dask-lambda"
    allow: list[str] = field(default_factory=list)
    create_role: bool = False
    role_name: str | None = None
    s3_read: list[str] = field(default_factory=list)
    s3_write: list[str] = field(default_factory=list)
    current_env: dict[str, str] | None = None
    memory_tiers: list[int] = field(default_factory=list)
    adopt: bool = False
    tags: dict[str, str] | None = None
    expire_days: int | None = None
    stage_code: bool = False
    image: bool = False
    built_image: images.BuiltImage | None = None


@dataclass
class Provisioned:
    """What :func:`provision` did: the function's outcome, its package, role and tiers."""

    outcome: DeployResult
    built: BuildResult | None
    tiers: dict[int, DeployResult]
    image: images.BuiltImage | None = None
    pushed: images.Pushed | None = None

    @property
    def configuration(self) -> dict[str, Any]:
        return self.outcome.configuration


def provision(
    client: Callable[[str], Any],
    request: Request,
    progress: Callable[[str], None] = lambda line: None,
) -> Provisioned:
    """Provision ``request`` (see the module docstring); ``client(service)`` makes boto3
    clients."""
    settings = dataclasses.replace(request.settings)
    settings.validate()  # before anything touches AWS
    bucket, prefix = request.bucket, request.prefix
    if settings.role and request.create_role:
        raise DeployError("Pass either --role or --create-role, not both")
    if request.create_role and not bucket:
        raise DeployError("--create-role needs --bucket: the role may use only that")
    if bucket:
        bucket, prefix = check_location(bucket, prefix)
    lam = client("lambda")
    s3 = client("s3") if bucket else None
    current = current_configuration(lam, request.name)
    check_ownership(lam, current, request.adopt)

    environment = {**(request.current_env or {}), **(settings.environment or {})}
    environment.update(
        contract.function_environment(bucket=bucket, prefix=prefix, allowed=request.allow)
    )
    needs_key = contract.KEY_PARAMETER not in (request.current_env or {})
    built = request.built
    image = request.built_image
    if request.image or image is not None:
        if settings.layers:
            raise DeployError(
                "Lambda layers cannot be added to a container image function: put what they"
                " hold in the image (--include, -r or PATHS), or deploy a zip (without --image)."
            )
        if request.build is not None and request.build.deps_on_s3:
            raise DeployError(
                "--deps-on-s3 keeps dependencies out of a zip; an image holds them itself (up to"
                " 10 GB): pass one of --image and --deps-on-s3, not both."
            )
        # A foreign repository is refused before anything is built.
        images.ensure_repository(client("ecr"), images.repository_name(request.name),
                                 adopt=request.adopt, create=False)  # fmt: skip
        if snapstart_on(settings, current):
            raise DeployError(IMAGE_SNAPSTART_REFUSED)
        if image is None and request.build is not None:
            image = images.build_image(request.build, lambda step: progress(f"  build: {step}"))
    elif built is None and request.build is not None:
        built = _build(request.build, progress)
    if built is not None or image is not None:  # a new package brings its own dependencies
        environment.pop(contract.DEPENDENCIES, None)
    if built is not None:
        if built.dependencies_zip and snapstart_on(settings, current):
            _fit_snapstart_tmp(built, settings)
        if built.dependencies_zip:
            if s3 is None:
                raise DeployError("--deps-on-s3 needs --bucket: the archive lives there")
            environment[contract.DEPENDENCIES] = upload_dependencies(
                s3, bucket, prefix, built.dependencies_zip, built.dependencies_unpacked
            )
            progress(
                f"Dependencies: {len(built.dependencies_zip) / 1e6:.1f} MB archive in"
                f" s3://{bucket}, {built.dependencies_unpacked / 1e6:.0f} MB unpacked into /tmp"
                " on each cold start"
            )
            if settings.ephemeral_storage is None:
                settings.ephemeral_storage = ephemeral_storage_for(built.dependencies_unpacked)
    if request.create_role:
        policy = role_policy(bucket, prefix, request.name, request.s3_read, request.s3_write)
        role_name = request.role_name or f"dask-lambda-{request.name}"
        settings.role = ensure_role(client("iam"), role_name, policy, adopt=request.adopt)
        progress(f"Role: {settings.role}")
    if needs_key:  # every function gets its own signing key
        environment[contract.KEY_PARAMETER] = create_key(client("ssm"), request.name)
    unchanged = request.current_env is not None and environment == request.current_env
    settings.environment = None if built is None and image is None and unchanged else environment
    code = built.zip_bytes if built is not None else None
    pushed = _push(client, request, image, progress) if image is not None else None
    image_uri = pushed.image_uri if pushed else None
    outcome = deploy(lam, request.name, code, settings, s3_client=s3, bucket=bucket,
                     prefix=prefix, adopt=request.adopt, tags=request.tags,
                     stage_code=request.stage_code, image_uri=image_uri)  # fmt: skip
    if s3 is not None and request.expire_days is not None:
        ensure_expiry(s3, bucket, prefix, request.expire_days)
    base = outcome.configuration
    tiers = {}
    for memory in request.memory_tiers:
        variant = dataclasses.replace(
            settings, memory=memory, role=base["Role"],
            environment=(base.get("Environment") or {}).get("Variables"),
        )  # fmt: skip
        tiers[memory] = deploy(lam, tier_name(request.name, memory), code, variant, s3_client=s3,
                               bucket=bucket, prefix=prefix, adopt=request.adopt,
                               stage_code=request.stage_code, image_uri=image_uri)  # fmt: skip
    return Provisioned(outcome, built, tiers, image, pushed)


def _push(client: Callable[[str], Any], request: Request, image: images.BuiltImage,
          progress: Callable[[str], None]) -> images.Pushed:  # fmt: skip
    """Push the image into the function's repository (created, or refused if foreign)."""
    ecr = client("ecr")
    repository = images.ensure_repository(ecr, images.repository_name(request.name),
                                          adopt=request.adopt)  # fmt: skip
    registry = images.ecr_registry(ecr)
    try:
        pushed = images.push(image.image, registry, repository,
                             lambda step: progress(f"  push: {step}"))  # fmt: skip
    finally:
        registry.close()
    progress(f"Image: {pushed.image_uri} ({image.image.size / 1e6:.1f} MB compressed,"
             f" {len(pushed.sent)} of {len(image.image.layers)} layers sent)")  # fmt: skip
    return pushed


def _fit_snapstart_tmp(built: BuildResult, settings: FunctionSettings) -> None:
    """A SnapStart function unpacks its dependency archive into its snapshot's ``/tmp``, which
    SnapStart caps at 512 MB: size it so, or refuse with the fix."""
    peak_mb = built.dependencies_unpacked / 1e6  # the archive is streamed, never stored
    if peak_mb > SNAPSTART_TMP_LIMIT_MB:
        raise DeployError(
            f"With SnapStart, /tmp is at most {SNAPSTART_TMP_LIMIT_MB} MB, and these dependencies"
            f" unpack to {peak_mb:.0f} MB there: deploy fewer packages (the zip holds up to"
            " 250 MB unpacked), or deploy without --snapstart."
        )
    settings.ephemeral_storage = settings.ephemeral_storage or SNAPSTART_TMP_LIMIT_MB


def _build(spec: BuildSpec, progress: Callable[[str], None]) -> BuildResult:
    built = build(spec, progress=lambda step: progress(f"  build: {step}"))
    progress(
        f"Package: {built.size / 1e6:.1f} MB zipped, {built.unpacked_size / 1e6:.1f} MB"
        f" unzipped, {built.files} files"
    )
    if spec.paths:
        progress(built.user_files.summary())
    return built
