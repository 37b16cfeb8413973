"""Image functions' root filesystems: pulled from the local registry and unpacked, once per layer.

When ``CreateFunction`` or ``UpdateFunctionCode`` names an image (``PackageType=Image``), the
front door pulls it by digest from the local registry (:mod:`.registry`) before moto records the
function, as Lambda optimizes an image before the function becomes ``Active``: its manifest and
config are checked against their digests, each layer is unpacked into a folder of its own (once
per layer digest: an image that changed one layer unpacks only that one), and the layers are
stacked into the image's root filesystem as hard links, applying whiteouts (``.wh.NAME``
deletes ``NAME`` of the lower layers, ``.wh..wh..opq`` empties a folder of them) as a container
runtime does. Nothing outside it is written, deleted or linked to: an entry (or whiteout) whose
path leaves its folder, or passes through a link that does, is refused, as is a hard link to a
file outside it (tar's ``tar`` filter, also applied, strips set-id bits but checks no link
targets); a lower layer's link in an upper layer's way is replaced, never followed; symbolic
links may point anywhere, as they resolve inside the sandbox. An image over Lambda's 10 GB
unpacked, or with a layer that is not a whole (gzipped) tar, is refused as the caller's error.

Layers and root filesystems live in a per-machine cache named by digest (content addressing
makes sharing between local Lambdas safe), and a runtime of the function starts in a sandbox
whose root is that folder (:func:`.sandbox.image_command`): what the image holds is what the
task sees.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tarfile
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path

from .. import limits
from ..deploy import oci
from ..deploy.registry import Registry

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
        from .registry import RegistryUnavailable

        try:
            registry = Registry(self._registry_url())
        except RegistryUnavailable as e:
            raise InvalidImage(str(e)) from e
        try:
            folder = self._unpacked(registry, repository, reference)
        finally:
            registry.close()
        digest = "sha256:" + folder.name
        config = json.loads((folder / "config.json").read_text()).get("config") or {}
        environment = tuple(tuple(item.split("=", 1)) for item in config.get("Env") or []
                            if "=" in item)  # fmt: skip
        return ImageRun(
            digest, str(folder / "rootfs"), tuple(config.get("Entrypoint") or ()),
            tuple(config.get("Cmd") or ()), environment,
            config.get("WorkingDir") or "/var/task",
        )  # fmt: skip

    def _unpacked(self, registry: Registry, repository: str, reference: str) -> Path:
        """The folder of the image ``repository@reference``: its config and root filesystem."""
        try:
            manifest_bytes, media_type, digest = registry.manifest(repository, reference)
        except oci.ImageError as e:
            raise InvalidImage(f"Source image {repository}@{reference} is not found: {e}") from e
        if media_type not in oci.MANIFESTS:
            raise InvalidImage(f"The image {repository}@{reference} is a {media_type}: Lambda"
                               " runs one platform's image manifest, not an index")  # fmt: skip
        folder = self.root / digest.removeprefix("sha256:")
        with self._lock_of(digest):
            if not (folder / "config.json").exists():
                self._unpack(registry, repository, json.loads(manifest_bytes), folder)
        return folder

    def _lock_of(self, digest: str) -> threading.Lock:
        """One lock per image or layer: what two functions share is unpacked once."""
        with self._lock:
            return self._locks.setdefault(digest, threading.Lock())

    def _unpack(self, registry: Registry, repository: str, manifest: dict, folder: Path) -> None:
        """The image's root filesystem: its layers (each unpacked once, by digest) laid over
        one another in order, as hard links, whiteouts applied."""
        config_bytes = registry.blob(repository, manifest["config"]["digest"])
        layers = oci.layers_of(manifest, json.loads(config_bytes))
        with _staged(folder) as staging:
            rootfs = staging / "rootfs"
            rootfs.mkdir()
            total = 0
            for layer in layers:
                layer_dir, size = self._layer(registry, repository, layer)
                total += size
                _check_size(total)
                _overlay(layer_dir, rootfs)
            (staging / "config.json").write_bytes(config_bytes)

    def _layer(self, registry: Registry, repository: str, layer: oci.Layer) -> tuple[Path, int]:
        """One layer unpacked into a folder of its own (its whiteouts kept as the empty files
        they are in the tar), once per digest; and the bytes it unpacks to."""
        folder = self.root / "layers" / layer.digest.removeprefix("sha256:")
        with self._lock_of(layer.digest):
            if (folder / "size").exists():
                return folder / "files", int((folder / "size").read_text())
            with _staged(folder) as staging:
                (staging / "files").mkdir()
                size = 0
                blob = registry.pull_blob(repository, layer.digest, staging / "blob")
                try:
                    with tarfile.open(blob, mode="r:*") as tar:
                        for member in tar:
                            size += member.size
                            _check_size(size)
                            _extract(tar, member, staging / "files")
                except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
                    # As Lambda, a layer that is not a whole (gzipped) tar is the image's fault.
                    raise InvalidImage(f"The image's layer {layer.digest} cannot be unpacked:"
                                       f" {e}") from e  # fmt: skip
                blob.unlink()
                (staging / "size").write_text(str(size))
            return folder / "files", size


@contextlib.contextmanager
def _staged(folder: Path):
    """A fresh folder beside ``folder`` to fill: renamed to it when the block succeeds (unless
    another local Lambda made it first), deleted when it fails."""
    staging = folder.with_name(f"{folder.name}.{threading.get_ident()}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    try:
        staging.rename(folder)
    except OSError:  # made by another local Lambda first
        shutil.rmtree(staging, ignore_errors=True)


def _extract(tar: tarfile.TarFile, member: tarfile.TarInfo, root: Path) -> None:
    """One entry of a layer into its folder: nothing outside it written or linked to."""
    target = _inside(root, member.name)
    if member.islnk():  # a hard link names an archive path: it must be one of this layer's files
        _inside(root, member.linkname)
    if target.is_symlink() or (target.exists() and not target.is_dir()) or (
        target.is_dir() and not member.isdir()
    ):  # fmt: skip
        _remove(target)  # a later entry replaces an earlier one of the same name
    try:
        tar.extract(member, root, filter="tar")
    except tarfile.FilterError as e:
        raise InvalidImage(f"The image has an entry Lambda would not unpack: {e}") from e


def _overlay(layer: Path, rootfs: Path) -> None:
    """Lay an unpacked layer over ``rootfs``, as a container runtime stacks layers: files and
    links are hard-linked or copied in (replacing what lower layers put there), ``.wh.NAME``
    deletes ``NAME`` of the lower layers and ``.wh..wh..opq`` empties its folder of them.
    Nothing outside ``rootfs`` is touched: a lower layer's link on the way is checked."""
    for here, folders, files in os.walk(layer):
        relative = Path(here).relative_to(layer)
        target_dir = rootfs if relative == Path(".") else _inside(rootfs, str(relative))
        if target_dir.is_symlink() or (target_dir.exists() and not target_dir.is_dir()):
            _remove(target_dir)  # this layer's folder replaces a lower layer's link or file
        target_dir.mkdir(exist_ok=True)
        if _OPAQUE in files:  # before this layer's own entries of the folder go in
            for child in list(target_dir.iterdir()):
                _remove(child)
        links = [name for name in folders if (Path(here) / name).is_symlink()]
        for name in [*files, *links]:
            source = Path(here) / name
            if name == _OPAQUE:
                continue
            if name.startswith(_WHITEOUT):
                _remove(_inside(rootfs, str(relative / name[len(_WHITEOUT):])))
                continue
            target = _inside(rootfs, str(relative / name))
            if target.is_symlink() or target.exists():
                _remove(target)
            if source.is_symlink():
                os.symlink(os.readlink(source), target)
            else:
                os.link(source, target)


def _check_size(unpacked: int) -> None:
    if unpacked > limits.IMAGE_UNPACKED_BYTES:
        raise InvalidImage(
            "Image size must be smaller than 10 GB uncompressed"
            f" ({limits.IMAGE_UNPACKED_BYTES} bytes)"
        )


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
