"""Deployed code of the embedded local Lambda: function and layer zips, unpacked once.

Zips are recorded as they pass through ``CreateFunction``, ``UpdateFunctionCode`` and
``PublishLayerVersion`` and unpacked into folders named by their content hash, so runtimes run the
code exactly as it was deployed, and two functions with the same zip share one folder. Lambda's
packaging limits are checked here, before moto sees the request.

The folders live in a per-machine cache (:func:`shared_root`): a zip holding dask and numpy is
unpacked once per machine, not on every start of a local Lambda. Content addressing makes sharing
safe: a folder's name is the SHA-256 of the zip it came from. A folder holds the zip as it was
shipped and nothing more: no bytecode is compiled into it (runtimes see it read-only, as
``/var/task`` is on AWS, and write none), so a package shipped without its bytecode pays for
compiling on every cold start here too.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import threading
import zipfile
from pathlib import Path

from .. import limits
from ..deploy.build import code_sha256

ZIP_UNPACKED_LIMIT = limits.UNZIPPED_PACKAGE_BYTES


class InvalidCode(ValueError):
    """The uploaded code is not something Lambda would accept."""


def shared_root() -> Path:
    from ..deploy.build import cache_root

    # Not "local-code": its folders had bytecode compiled into them after unpacking.
    return cache_root().parent / "local-code-as-shipped"


class CodeStore:
    """Content-addressed folders of unpacked zips under ``root``."""

    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root is not None else shared_root()
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._by_sha: dict[str, Path] = {}
        self._layers: dict[str, Path] = {}

    def add(self, data: bytes) -> str:
        """Unpack a function or layer zip; return its ``CodeSha256``."""
        sha = code_sha256(data)
        with self._lock:
            if sha in self._by_sha:
                return sha
        try:
            archive = zipfile.ZipFile(io.BytesIO(data))
        except zipfile.BadZipFile:
            raise InvalidCode(
                "Could not unzip uploaded file. Please check your file, then try to upload again."
            )
        with archive:
            size = sum(info.file_size for info in archive.infolist())
            if size > ZIP_UNPACKED_LIMIT:
                raise InvalidCode(f"Unzipped size must be smaller than {ZIP_UNPACKED_LIMIT} bytes")
            target = self.root / hashlib.sha256(data).hexdigest()
            if not target.exists():
                partial = target.with_suffix(f".{threading.get_ident()}.partial")
                archive.extractall(partial)
                try:
                    partial.rename(target)
                except OSError:  # another local Lambda unpacked the same zip first
                    shutil.rmtree(partial, ignore_errors=True)
        with self._lock:
            self._by_sha[sha] = target
        return sha

    def code_dir(self, sha: str) -> Path | None:
        with self._lock:
            return self._by_sha.get(sha)

    def add_layer(self, layer_version_arn: str, sha: str) -> None:
        with self._lock:
            self._layers[layer_version_arn] = self._by_sha[sha]

    def layer_dirs(self, layer_arns: list[str]) -> tuple[str, ...]:
        """The folders of a function's layers, last layer first (later layers win, as on Lambda)."""
        dirs = []
        with self._lock:
            for arn in reversed(layer_arns):
                folder = self._layers.get(arn)
                if folder is not None:
                    dirs.append(str(folder / "python"))
                    dirs.append(str(folder))
        return tuple(dirs)
