"""The OCI image format, as dask-lambda writes it: reproducible layers, a config and a manifest.

An image for Lambda is its base image's layers (AWS's ``public.ecr.aws/lambda/python:3.X``)
followed by dask-lambda's own, each a gzipped tar of files under ``/var/task``. A layer is
content-addressed twice over, as the OCI image spec asks: its *digest* (of the gzipped bytes, how
registries name it) and its *diff id* (of the tar, how the config lists it). Both are computed as
the layer is written, once, into a blob store on this machine (:func:`blob_store`), where the
base image's blobs are cached too.

Layers are reproducible: entries sorted, parent folders listed, owner root, one fixed timestamp,
modes 0755/0644 and a gzip header without a date. The same files give the same digest on any
machine, so a registry that holds a layer is never sent it again.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import os
import tarfile
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
MANIFESTS = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEXES = (OCI_INDEX, DOCKER_LIST)
# The same bytes under the OCI name: an OCI manifest lists the base's Docker layers so.
_AS_OCI = {DOCKER_LAYER: OCI_LAYER, DOCKER_CONFIG: OCI_CONFIG}
# Go's names for Lambda's architectures, as image platforms use them.
PLATFORMS = {"x86_64": "amd64", "arm64": "arm64"}
TASK_ROOT = "var/task"
_EPOCH = 1577836800  # 2020-01-01T00:00:00Z, every entry's mtime
_CREATED = "2020-01-01T00:00:00Z"


class ImageError(ValueError):
    """An image that cannot be built or is not what Lambda runs; the message says the fix."""


def blob_store() -> Path:
    """Where layers and base-image blobs are kept on this machine, by digest."""
    from .build import cache_root

    return cache_root().parent / "image-blobs"


def blob_path(digest: str) -> Path:
    algorithm, _, hexdigest = digest.partition(":")
    if algorithm != "sha256" or len(hexdigest) != 64:
        raise ImageError(f"Not a sha256 digest: {digest!r}")
    return blob_store() / hexdigest


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Layer:
    """One layer: its registry digest, its size, its tar's digest and what it holds."""

    digest: str
    size: int
    diff_id: str
    media_type: str = OCI_LAYER
    comment: str = ""

    @property
    def path(self) -> Path:
        return blob_path(self.digest)

    def descriptor(self) -> dict:
        return {"mediaType": _AS_OCI.get(self.media_type, self.media_type),
                "digest": self.digest, "size": self.size}  # fmt: skip


class _Hashing(io.RawIOBase):
    """A write-only stream that hashes and counts what passes to ``sink`` (None: nothing)."""

    def __init__(self, sink) -> None:
        self.sink, self.sha, self.size = sink, hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.sha.update(data)
        self.size += len(data)
        if self.sink is not None:
            self.sink.write(data)
        return len(data)


def _tar_info(name: str, size: int = 0, directory: bool = False, executable: bool = False):
    info = tarfile.TarInfo(name)
    info.mtime, info.uid, info.gid, info.uname, info.gname = _EPOCH, 0, 0, "", ""
    if directory:
        info.type, info.mode = tarfile.DIRTYPE, 0o755
    else:
        info.size, info.mode = size, 0o755 if executable else 0o644
    return info


def write_layer(
    entries: Iterable[tuple[Path | bytes, str]], root: str = TASK_ROOT, comment: str = "",
    compresslevel: int = 6, symlinks: dict[str, str] | None = None,
    executables: set[str] | frozenset[str] = frozenset(),
) -> Layer:  # fmt: skip
    """A layer of ``(file or its bytes, name)`` pairs under ``root`` (and ``symlinks``, name to
    target), written into the blob store. Files are executable as they are on disk; bytes are
    where their name is in ``executables``."""
    executables = {f"{root}/{name}".strip("/") for name in executables}
    files = {f"{root}/{name}".strip("/"): source for source, name in entries}
    links = {f"{root}/{name}".strip("/"): target for name, target in (symlinks or {}).items()}
    folders = {"/".join(name.split("/")[:depth]) for name in [*files, *links]
               for depth in range(1, name.count("/") + 1)}  # fmt: skip
    store = blob_store()
    store.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=store, prefix=".layer-", delete=False) as out:
        try:
            compressed = _Hashing(out)
            with gzip.GzipFile(fileobj=compressed, mode="wb", mtime=0,
                               compresslevel=compresslevel) as zipped:  # fmt: skip
                uncompressed = _Hashing(zipped)
                with tarfile.open(fileobj=uncompressed, mode="w|",
                                  format=tarfile.PAX_FORMAT) as tar:  # fmt: skip
                    for name in sorted([*folders, *files, *links]):
                        _add(tar, name, files.get(name), links.get(name), name in executables)
        except BaseException:  # a file that cannot be read, a full disk: no half layer is left
            Path(out.name).unlink(missing_ok=True)
            raise
    layer = Layer("sha256:" + compressed.sha.hexdigest(), compressed.size,
                  "sha256:" + uncompressed.sha.hexdigest(), comment=comment)  # fmt: skip
    os.replace(out.name, layer.path)
    return layer


def _add(tar: tarfile.TarFile, name: str, source: Path | bytes | None, link: str | None,
         executable: bool) -> None:  # fmt: skip
    """One entry of a layer: a symbolic link, a folder (neither source nor link), the bytes
    given, or a file of this machine (executable as it is on disk)."""
    if link is not None:
        info = _tar_info(name)
        info.type, info.linkname, info.mode = tarfile.SYMTYPE, link, 0o777
        tar.addfile(info)
    elif source is None:
        tar.addfile(_tar_info(name, directory=True))
    elif isinstance(source, bytes):
        tar.addfile(_tar_info(name, len(source), executable=executable), io.BytesIO(source))
    else:
        with open(source, "rb") as data:
            size = os.fstat(data.fileno()).st_size
            tar.addfile(_tar_info(name, size, executable=os.access(source, os.X_OK)), data)


def cached_layer(recipe: dict, make: Callable[[], Layer]) -> tuple[Layer, bool]:
    """The layer ``recipe`` names: the one built before (if its blob is still in the store), or
    else ``make()``'s, remembered under it; and whether it was built before.

    Layers are kept by what they are made of, not rebuilt to find out: bytecode is not
    byte-reproducible (marshal's output depends on reference counts), and an unchanged layer
    must keep its digest to be neither rebuilt nor pushed again.
    """
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()
    index = blob_store().parent / "image-layers" / f"{key[:32]}.json"
    if index.exists():
        layer = Layer(**json.loads(index.read_text()))
        if layer.path.exists():
            return layer, True
    layer = make()
    index.parent.mkdir(parents=True, exist_ok=True)
    index.write_text(json.dumps(dataclasses.asdict(layer)))
    return layer, False


@dataclass
class BaseImage:
    """A base image for one platform: where it came from, its manifest digest, config and layers."""

    reference: str
    digest: str
    config: dict
    layers: list[Layer]
    registry: str = ""  # where its blobs come from: host and repository
    repository: str = ""

    def entrypoint(self) -> list[str]:
        return list(self.config.get("config", {}).get("Entrypoint") or [])


@dataclass
class Image:
    """An image ready to push: its manifest and config (exact bytes) and its layers, base first."""

    manifest: bytes
    config: bytes
    layers: list[Layer]
    own: list[Layer] = field(default_factory=list)  # dask-lambda's layers, after the base's
    base: BaseImage | None = None

    @property
    def digest(self) -> str:
        """The manifest's digest: what Lambda runs (``repository@digest``)."""
        return sha256_digest(self.manifest)

    @property
    def config_digest(self) -> str:
        return sha256_digest(self.config)

    @property
    def size(self) -> int:
        """Bytes of its layers, compressed (what ECR reports as the image's size)."""
        return sum(layer.size for layer in self.layers)


def compose(base: BaseImage, own: list[Layer], command: list[str], architecture: str) -> Image:
    """The image ``base`` + ``own`` layers, running ``command`` with the base's entry point."""
    platform = PLATFORMS[architecture]
    found = base.config.get("architecture")
    if found and found != platform:
        raise ImageError(
            f"The base image {base.reference} is for {found}, and the function runs on"
            f" {architecture}: pick the base for {platform} (--architecture decides which)."
        )
    inner = dict(base.config.get("config") or {})
    inner.update({"Cmd": list(command), "WorkingDir": "/" + TASK_ROOT})
    history = list(base.config.get("history") or [])
    history += [{"created": _CREATED, "created_by": f"dask-lambda: {layer.comment}"}
                for layer in own]  # fmt: skip
    layers = [*base.layers, *own]
    config = {
        "architecture": platform,
        "os": base.config.get("os", "linux"),
        "created": _CREATED,
        "config": inner,
        "rootfs": {"type": "layers",
                   "diff_ids": [layer.diff_id for layer in layers]},
        "history": history,
    }  # fmt: skip
    config_bytes = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha256_digest(config_bytes),
                   "size": len(config_bytes)},
        "layers": [layer.descriptor() for layer in layers],
    }  # fmt: skip
    manifest_bytes = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    return Image(manifest_bytes, config_bytes, layers, own=own, base=base)


def layers_of(manifest: dict, config: dict) -> list[Layer]:
    """The layers a manifest lists, with their diff ids from its config."""
    diff_ids = (config.get("rootfs") or {}).get("diff_ids") or []
    descriptors = manifest.get("layers") or []
    if len(diff_ids) != len(descriptors):
        raise ImageError("The image's config and manifest list different numbers of layers")
    return [Layer(d["digest"], int(d["size"]), diff_id, d.get("mediaType", OCI_LAYER))
            for d, diff_id in zip(descriptors, diff_ids, strict=True)]  # fmt: skip


def pick_platform(index: dict, architecture: str) -> str:
    """The digest of ``architecture``'s manifest in an image index (a multi-platform image)."""
    platform = PLATFORMS[architecture]
    for entry in index.get("manifests") or []:
        wanted = entry.get("platform") or {}
        if wanted.get("os", "linux") == "linux" and wanted.get("architecture") == platform:
            return entry["digest"]
    found = sorted({(e.get("platform") or {}).get("architecture", "?")
                    for e in index.get("manifests") or []})  # fmt: skip
    raise ImageError(f"The base image has no linux/{platform} variant (it has {found})")
