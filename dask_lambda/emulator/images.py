"""Image functions' root filesystems: pulled from the local registry and unpacked, once per image.

When ``CreateFunction`` or ``UpdateFunctionCode`` names an image (``PackageType=Image``), the
front door pulls it by digest from the local registry (:mod:`.registry`) before moto records the
function, as Lambda optimizes an image before the function becomes ``Active``: its manifest and
config are checked against their digests, and its layers are unpacked in order into one root
filesystem, applying whiteouts (``.wh.NAME`` deletes ``NAME``, ``.wh..wh..opq`` empties a
folder) as a container runtime does. Nothing outside it is written, deleted or linked to: an
entry (or whiteout) whose path leaves it, or passes through a link that does, is refused, as is
a hard link to a file outside it (tar's ``tar`` filter, also applied, strips set-id bits but
checks no link targets); symbolic links may point anywhere, as they resolve inside the sandbox.
An image over Lambda's 10 GB unpacked is refused.

Root filesystems live in a per-machine cache named by the image's manifest digest (content
addressing makes sharing between local Lambdas safe), and a runtime of the function starts in
a sandbox whose root is that folder (:func:`.sandbox.image_command`): what the image holds is
what the task sees.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import threading
from dataclasses import dataclass
from pathlib import Path

from ..deploy import oci
from ..deploy.registry import Registry

IMAGE_UNPACKED_LIMIT = 10 * 1024**3
_WHITEOUT = ".wh."
_OPAQUE = ".wh..wh..opq"


class InvalidImage(ValueError):
    """The image cannot run: not in the registry, malformed, or over Lambda's limits."""


@dataclass(frozen=True)
class ImageRun:
    """How a runtime of an image function starts: its root filesystem and its config's
    entry point, command, environment and working folder."""

    digest: str
    rootfs: str
    entrypoint: tuple[str, ...]
    command: tuple[str, ...]
    environment: tuple[tuple[str, str], ...]
    working_dir: str = "/var/task"

    @property
    def argv(self) -> list[str]:
        return [*self.entrypoint, *self.command]


def shared_root() -> Path:
    from ..deploy.build import cache_root

    return cache_root().parent / "local-images"


def parse_image_uri(uri: str) -> tuple[str, str]:
    """``(repository, digest or tag)`` of ``host/repository@sha256:...`` or ``...:tag``."""
    from ..deploy.registry import split_reference

    _, repository, reference = split_reference(uri)
    return repository, reference


class ImageStore:
    """Unpacked images by manifest digest, pulled through ``registry_url()`` when missing."""

    def __init__(self, registry_url, root: Path | None = None):
        self._registry_url = registry_url
        self.root = Path(root) if root is not None else shared_root()
        self._lock = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}

    def pull(self, repository: str, reference: str) -> ImageRun:
        """The image ``repository@reference`` unpacked (pulled now if it is not yet)."""
        registry = Registry(self._registry_url())
        try:
            manifest_bytes, media_type, digest = registry.manifest(repository, reference)
        except oci.ImageError as e:
            raise InvalidImage(f"Source image {repository}@{reference} is not found: {e}") from e
        if media_type not in oci.MANIFESTS:
            raise InvalidImage(f"The image {repository}@{reference} is a {media_type}: Lambda"
                               " runs one platform's image manifest, not an index")  # fmt: skip
        with self._lock:
            lock = self._locks.setdefault(digest, threading.Lock())
        with lock:
            folder = self.root / digest.removeprefix("sha256:")
            if not (folder / "config.json").exists():
                self._unpack(registry, repository, json.loads(manifest_bytes), folder)
            config = json.loads((folder / "config.json").read_text()).get("config") or {}
        environment = tuple(tuple(item.split("=", 1)) for item in config.get("Env") or []
                            if "=" in item)  # fmt: skip
        return ImageRun(
            digest, str(folder / "rootfs"), tuple(config.get("Entrypoint") or ()),
            tuple(config.get("Cmd") or ()), environment,
            config.get("WorkingDir") or "/var/task",
        )  # fmt: skip

    def _unpack(self, registry: Registry, repository: str, manifest: dict, folder: Path) -> None:
        config_bytes = registry.blob(repository, manifest["config"]["digest"])
        config = json.loads(config_bytes)
        layers = oci.layers_of(manifest, config)
        staging = folder.with_name(f"{folder.name}.{threading.get_ident()}.partial")
        shutil.rmtree(staging, ignore_errors=True)
        rootfs = staging / "rootfs"
        rootfs.mkdir(parents=True)
        total = 0
        try:
            for layer in layers:
                blob = staging / "layer"
                registry.pull_blob(repository, layer.digest, blob)
                with tarfile.open(blob, mode="r:*") as tar:
                    written: set[str] = set()  # this layer's: its whiteouts hide lower layers'
                    for member in tar:
                        total += member.size
                        if total > IMAGE_UNPACKED_LIMIT:
                            raise InvalidImage(
                                "Image size must be smaller than 10 GB uncompressed"
                                f" ({IMAGE_UNPACKED_LIMIT} bytes)"
                            )
                        _apply(tar, member, rootfs, written)
                blob.unlink()
            (staging / "config.json").write_bytes(config_bytes)
            try:
                staging.rename(folder)
            except OSError:  # another local Lambda unpacked it first
                shutil.rmtree(staging, ignore_errors=True)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise


def _apply(
    tar: tarfile.TarFile, member: tarfile.TarInfo, rootfs: Path, written: set[str] | None = None
) -> None:
    """One layer entry onto ``rootfs``: a whiteout deletes what lower layers put there (not
    what this layer ``written`` already), anything else is extracted."""
    written = set() if written is None else written
    folder, _, name = member.name.rstrip("/").rpartition("/")
    if name.startswith(_WHITEOUT):
        parent = _inside(rootfs, folder)
        if name == _OPAQUE:
            for child in parent.iterdir() if parent.is_dir() else ():
                if not any(path == str(child) or path.startswith(f"{child}/") for path in written):
                    _remove(child)
        else:
            _remove(_inside(rootfs, f"{folder}/{name[len(_WHITEOUT):]}"))
        return
    target = _inside(rootfs, member.name)
    if member.islnk():  # a hard link names an archive path: it must be one of this image's files
        _inside(rootfs, member.linkname)
    written.add(str(target))
    if target.is_symlink() or (target.exists() and not target.is_dir()) or (
        target.is_dir() and not member.isdir()
    ):  # fmt: skip
        _remove(target)  # a later layer replaces what an earlier one put there
    try:
        tar.extract(member, rootfs, filter="tar")
    except tarfile.FilterError as e:
        raise InvalidImage(f"The image has an entry Lambda would not unpack: {e}") from e


def _inside(rootfs: Path, name: str) -> Path:
    path = Path(os.path.normpath(rootfs / name.lstrip("/")))
    if path != rootfs and rootfs not in path.parents:
        raise InvalidImage(f"The image has an entry outside its root filesystem: {name!r}")
    parent = path.parent.resolve()
    if parent != rootfs.resolve() and rootfs.resolve() not in parent.parents:
        raise InvalidImage(f"The image has an entry through a link out of its root: {name!r}")
    return path


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)
