"""Container images for Lambda: built without a daemon, pushed to ECR, described for ``info``.

``dask-lambda deploy --image`` (and ``LambdaCluster(image=True)``) deploys a function as an
image instead of a zip, for stacks over the zip's 250 MB (an image holds up to 10 GB, cached by
Lambda across cold starts):

1. **base**: AWS's base image for the function's Python (``lambda.image.base``, default
   ``public.ecr.aws/lambda/python:3.X``), resolved to the digest of its variant for the
   function's architecture; its config and blobs are pulled once into the blob store
   (:func:`~.oci.blob_store`) and kept by digest (an offline build uses the last resolved one);
2. **layers**: three, in ``/var/task``: the dependencies (wheels for Lambda's platform, with
   bytecode; cached by what they hold, so an unchanged set is never rebuilt), dask-lambda's
   function code, and the user's files (:mod:`.oci`);
3. **image**: the base's layers and entry point, dask-lambda's handler as its command;
4. **push**: into an ECR repository dask-lambda created and tagged ``createdBy: dask-lambda``
   (a foreign one is refused, as deploy refuses foreign functions), authenticated through
   ``ecr.get_authorization_token``; a layer the repository holds, the base's included after
   the first push, is not sent again (:mod:`.registry`).

The function then runs ``repository@sha256:...``: Lambda pins the digest, so a later push cannot
change what a deployed function runs.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import urllib3

from .. import limits
from ..function.contract import HANDLER
from . import oci
from .build import BuildSpec, cache_root, entry_groups
from .build import bytecode_module as _bytecode
from .functions import NotOursError
from .registry import Registry, RegistryError, split_reference

CREATED_BY = {"Key": "createdBy", "Value": "dask-lambda"}
IMAGE_TAG = "latest"
_REPOSITORY_CHARS = re.compile(r"[^a-z0-9._-]+")


def base_reference(python_version: str) -> str:
    """The base image to build on: ``lambda.image.base``, or AWS's for ``python_version``."""
    from .. import config

    configured = config.setting("image.base")
    return str(configured or "public.ecr.aws/lambda/python:{python}").format(python=python_version)


def repository_name(function_name: str) -> str:
    """The ECR repository of a function's images (its memory tiers share it)."""
    return "dask-lambda-" + _REPOSITORY_CHARS.sub("-", function_name.lower()).strip("-")


# -- the base image -------------------------------------------------------------------------------
def resolve_base(
    reference: str, architecture: str, progress: Callable[[str], None]
) -> oci.BaseImage:
    """The base image ``reference`` for ``architecture``: its manifest digest, config and layers
    (their blobs are pulled only when a registry lacks them, by :func:`push`)."""
    host, repository, tag = split_reference(reference)
    remembered = (
        cache_root().parent
        / "image-base"
        / (hashlib.sha256(f"{reference} {architecture}".encode()).hexdigest()[:24] + ".json")
    )
    registry = Registry(host)
    try:
        data, media_type, digest = registry.manifest(repository, tag)
        if media_type in oci.INDEXES:
            digest = oci.pick_platform(json.loads(data), architecture)
            data, media_type, digest = registry.manifest(repository, digest)
        oci.blob_path(digest).parent.mkdir(parents=True, exist_ok=True)
        oci.blob_path(digest).write_bytes(data)
        remembered.parent.mkdir(parents=True, exist_ok=True)
        remembered.write_text(json.dumps({"digest": digest}))
    except (RegistryError, urllib3.exceptions.HTTPError) as e:
        if not remembered.exists():
            raise oci.ImageError(
                f"Could not read the base image {reference} ({e}). Check the network, or set"
                " lambda.image.base to a base image you can reach."
            ) from e
        digest = json.loads(remembered.read_text())["digest"]
        data = oci.blob_path(digest).read_bytes()
        progress(f"base image {reference} unreachable ({e}); using {digest[:19]} from the cache")
    manifest = json.loads(data)
    if manifest.get("mediaType", oci.OCI_MANIFEST) not in oci.MANIFESTS:
        raise oci.ImageError(f"{reference} is a {manifest.get('mediaType')}, not an image")
    config_digest = manifest["config"]["digest"]
    config_path = oci.blob_path(config_digest)
    if not config_path.exists():
        registry.pull_blob(repository, config_digest, config_path)
    config = json.loads(config_path.read_bytes())
    return oci.BaseImage(reference, digest, config, oci.layers_of(manifest, config),
                         registry=host, repository=repository)  # fmt: skip


# -- building -------------------------------------------------------------------------------------
@dataclass
class BuiltImage:
    """An image built for a function, and what building it took."""

    image: oci.Image
    unpacked: int  # bytes dask-lambda's layers unpack to
    files: int
    dependencies_cached: bool
    pinned: list[str] = field(default_factory=list)
    user_files: Any = None


def build_image(spec: BuildSpec, progress: Callable[[str], None] = lambda _: None) -> BuiltImage:
    """Build the image for ``spec`` (see the module docstring); nothing is pushed yet."""
    base = resolve_base(base_reference(spec.python_version), spec.architecture, progress)
    progress(f"base image {base.reference} ({base.digest[:19]}, {len(base.layers)} layers)")
    groups = entry_groups(spec, progress)
    if groups.unpacked > limits.IMAGE_UNPACKED_BYTES:
        raise oci.ImageError(
            f"The image's own layers would unpack to {groups.unpacked / 1e9:.1f} GB, over the"
            " 10 GB Lambda runs: drop what the tasks do not need from --include/--requirements."
        )
    dependencies, cached = _layer(groups.dependencies, groups.recipe, "dependencies", progress,
                                  bytecode=groups.bytecode)  # fmt: skip
    package, _ = _layer(groups.package, None, "dask-lambda's function code", progress,
                        bytecode=groups.bytecode)  # fmt: skip
    layers = [dependencies] if dependencies else []
    layers.append(package)
    if groups.user:
        layers.append(_layer(groups.user, None, "your files", progress,
                             bytecode=groups.bytecode)[0])  # fmt: skip
    image = oci.compose(base, layers, [HANDLER], spec.architecture)
    files = len(groups.dependencies) + len(groups.package) + len(groups.user)
    progress(f"image {image.digest[:19]}: {groups.unpacked / 1e6:.1f} MB in /var/task over the"
             f" base, {image.size / 1e6:.1f} MB compressed in all")  # fmt: skip
    return BuiltImage(image, groups.unpacked, files, cached, groups.pins, groups.user_files)


def _layer(
    entries: list, recipe: dict | None, comment: str, progress: Callable[[str], None],
    bytecode: bool,
) -> tuple[oci.Layer | None, bool]:  # fmt: skip
    """The layer of ``entries`` and their bytecode, and whether it came from the cache: kept by
    the dependencies' ``recipe`` (what pip installed, or which installed distributions), or
    else by the names and contents of ``entries`` (see :func:`~.oci.cached_layer`)."""
    if not entries:
        return None, True
    if recipe is None:
        sources = hashlib.sha256()
        for source, name in sorted(entries, key=lambda entry: entry[1]):
            data = source if isinstance(source, bytes) else source.read_bytes()
            sources.update(f"{name}\0{len(data)}\0".encode())
            sources.update(data)
        recipe = {"sources": sources.hexdigest()}
    recipe = {**recipe, "bytecode": bytecode, "python": sys.implementation.cache_tag, "layer": 1}

    def make() -> oci.Layer:
        progress(f"{comment}: packing {len(entries)} files into a layer"
                 + (" with their bytecode" if bytecode else ""))  # fmt: skip
        pycs = _bytecode.bytecode_entries(entries) if bytecode else []
        return oci.write_layer([*entries, *pycs], comment=comment)

    layer, cached = oci.cached_layer(recipe, make)
    if cached:
        progress(f"{comment}: layer from cache ({layer.digest[:19]})")
    return layer, cached


# -- ECR ------------------------------------------------------------------------------------------
class ForeignRepositoryError(NotOursError):
    """An ECR repository exists under the name and dask-lambda did not create it."""


def ensure_repository(ecr: Any, name: str, adopt: bool = False, create: bool = True) -> dict | None:
    """The repository ``name``, created and tagged as dask-lambda's if missing (unless not
    ``create``: None); a repository dask-lambda did not create is refused
    (:class:`ForeignRepositoryError`) unless ``adopt``."""
    repository, ours = _repository(ecr, name)
    if repository is None:
        if not create:
            return None
        return ecr.create_repository(repositoryName=name, tags=[CREATED_BY])["repository"]
    if not ours:
        if not adopt:
            raise ForeignRepositoryError(
                f"ECR repository {name!r} exists and was not created by dask-lambda: deploy will"
                " not push into it. Delete or rename it, deploy the function under another name,"
                " or pass --adopt to let dask-lambda take it over (it is then tagged as"
                " dask-lambda's)."
            )
        ecr.tag_resource(resourceArn=repository["repositoryArn"], tags=[CREATED_BY])
    return repository


def ecr_registry(ecr: Any) -> Registry:
    """The account's registry, authenticated with a token of ``ecr.get_authorization_token``."""
    data = ecr.get_authorization_token()["authorizationData"][0]
    return Registry(data["proxyEndpoint"], "Basic " + data["authorizationToken"])


@dataclass
class Pushed:
    """What :func:`push` sent: the image's URI (by digest) and the blobs sent and skipped."""

    image_uri: str
    digest: str
    sent: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    bytes_sent: int = 0


PUSH_THREADS = 4  # layers sent at once, as docker pushes (ECR's throughput is per connection)


def push(image: oci.Image, registry: Registry, repository: dict,
         progress: Callable[[str], None] = lambda _: None) -> Pushed:  # fmt: skip
    """Push ``image`` into ``repository``: each blob it lacks (up to :data:`PUSH_THREADS` at
    once), then the manifest (tagged ``latest``); base layers are pulled into the blob store
    first where they are not there."""
    name = repository["repositoryName"]
    pushed = Pushed(f"{repository['repositoryUri']}@{image.digest}", image.digest)
    missing = []
    for layer in image.layers:
        if registry.has_blob(name, layer.digest):
            pushed.skipped.append(layer.digest)
        else:
            missing.append(layer)

    base = image.base
    source = Registry(base.registry) if base is not None and base.registry else None

    def send(layer: oci.Layer) -> None:
        if not layer.path.exists():
            if source is None:
                raise oci.ImageError(f"Layer {layer.digest} is neither here nor in {name}")
            progress(f"pulling base layer {layer.digest[:19]} ({layer.size / 1e6:.1f} MB)")
            source.pull_blob(base.repository, layer.digest, layer.path)
        progress(f"pushing layer {layer.digest[:19]} ({layer.size / 1e6:.1f} MB)")
        registry.push_blob(name, layer.digest, layer.path, check=False)

    try:
        if missing:
            with ThreadPoolExecutor(min(PUSH_THREADS, len(missing)),
                                    thread_name_prefix="dask-lambda-push") as pool:  # fmt: skip
                list(pool.map(send, missing))
    finally:
        if source is not None:
            source.close()
    pushed.sent = [layer.digest for layer in missing]
    pushed.bytes_sent = sum(layer.size for layer in missing)
    if registry.push_blob(name, image.config_digest, image.config):
        pushed.bytes_sent += len(image.config)
    registry.put_manifest(name, IMAGE_TAG, image.manifest, oci.OCI_MANIFEST)
    progress(f"pushed {len(pushed.sent)} layers ({pushed.bytes_sent / 1e6:.1f} MB),"
             f" {len(pushed.skipped)} already in {name}")  # fmt: skip
    return pushed


def repository_of(image_uri: str) -> str:
    """The repository name of ``host/name@digest`` or ``host/name:tag``."""
    return split_reference(image_uri)[1]


def describe(ecr: Any, image_uri: str) -> dict:
    """``info``'s view of an image: digest, compressed size and layers (from its manifest)."""
    _, repository, digest = split_reference(image_uri)
    selector = {"imageDigest": digest} if digest.startswith("sha256:") else {"imageTag": digest}
    found = ecr.batch_get_image(repositoryName=repository, imageIds=[selector],
                                acceptedMediaTypes=[*oci.MANIFESTS])["images"]  # fmt: skip
    if not found:
        return {"uri": image_uri, "missing": True}
    manifest = json.loads(found[0]["imageManifest"])
    layers = [{"digest": layer["digest"], "size": int(layer["size"])}
              for layer in manifest.get("layers", [])]  # fmt: skip
    return {
        "uri": image_uri,
        "repository": repository,
        "digest": found[0]["imageId"]["imageDigest"],
        "size": sum(layer["size"] for layer in layers),
        "layers": layers,
    }


def delete_repository(ecr: Any, name: str) -> bool:
    """Delete dask-lambda's repository ``name`` and its images; False if it is gone or foreign."""
    repository, ours = _repository(ecr, name)
    if repository is None or not ours:
        return False
    ecr.delete_repository(repositoryName=name, force=True)
    return True


def _repository(ecr: Any, name: str) -> tuple[dict | None, bool]:
    """The repository ``name`` (None if there is none) and whether dask-lambda created it."""
    try:
        repository = ecr.describe_repositories(repositoryNames=[name])["repositories"][0]
    except ecr.exceptions.RepositoryNotFoundException:
        return None, False
    tags = ecr.list_tags_for_resource(resourceArn=repository["repositoryArn"]).get("tags", [])
    return repository, CREATED_BY in tags
