"""Building a function's deployment zip: dask-lambda, its dependencies and the user's code.

The zip holds, at its root:

1. the runtime dependencies at the client's own versions (``dask``, ``cloudpickle``, ``msgpack``,
   ``tblib`` and whatever ``--include`` and ``--requirements`` add), installed with
   ``pip install --target --platform manylinux2014_<arch> --only-binary=:all:
   --python-version X.Y``, so compiled wheels match Lambda's Linux and CPU;
2. dask_lambda's Lambda-side code (:mod:`dask_lambda.function`, nothing of the client);
3. the user's files and folders (``PATHS``), each under its own name, so modules deployed this way
   are importable inside the function and tasks can refer to them by import. What must never
   ship is left out (:data:`DEFAULT_EXCLUDES`): dotfiles and dot-folders (``.env``, ``.aws/``,
   ``.git/``), credential and key files (``credentials``, ``id_rsa``, ``*.pem``), virtualenvs
   (any folder with a ``pyvenv.cfg``) and ``__pycache__``; ``exclude`` patterns add more, and
   :class:`UserFiles` says what was packed and what was left out.

The pip step is cached by a hash of what it installs (``~/.cache/dask-lambda/builds``); the zip is
reproducible (sorted entries, fixed timestamps), so the same inputs give the same ``CodeSha256``
and an unchanged function is never re-uploaded. Lambda's limits are checked before any AWS call:
an unzipped size over 250 MB is an error that suggests layers; a zip over 50 MB must go through S3.
"""

from __future__ import annotations

import fnmatch
import hashlib
import importlib.metadata
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import dask_lambda

from .function.protocol import versions

UNZIPPED_LIMIT = 262_144_000  # 250 MB, function and layers
DIRECT_UPLOAD_LIMIT = 52_428_800  # 50 MB zip in the CreateFunction request
RUNTIME_DEPENDENCIES = ("dask", "cloudpickle", "msgpack", "tblib")
ARCHITECTURES = {"x86_64": "x86_64", "arm64": "aarch64"}
_ZIP_TIME = (2020, 1, 1, 0, 0, 0)
_SKIPPED_DIRS = {"__pycache__", ".git", ".venv", "bin"}
PACKAGE_ROOT = Path(dask_lambda.__file__).parent
DEFAULT_EXCLUDES = (
    ".*", "__pycache__", "*.pyc", "credentials", "credentials.*", "id_rsa*", "id_dsa*",
    "id_ecdsa*", "id_ed25519*", "*.pem", "*.key", "*.p12", "*.pfx", "*.keystore", "*.kdbx",
)  # fmt: skip


def package_files() -> list[tuple[Path, str]]:
    """``(file, archive name)`` for what runs inside Lambda: :mod:`dask_lambda.function` and the
    package's ``__init__`` (lazy: it imports nothing of the client). The client, CLI and emulator
    are not shipped."""
    function = PACKAGE_ROOT / "function"
    return [(PACKAGE_ROOT / "__init__.py", "dask_lambda/__init__.py")] + [
        (path, f"dask_lambda/function/{path.relative_to(function).as_posix()}")
        for path in sorted(function.rglob("*.py"))
        if "__pycache__" not in path.parts
    ]


def package_zip() -> bytes:
    """A reproducible zip of dask_lambda's code alone (dependencies come from the runtime)."""
    return zip_entries(package_files())


class BuildError(ValueError):
    """The package cannot be built or would not fit in Lambda; the message says what to do."""


@dataclass
class BuildSpec:
    """What goes into a deployment zip."""

    paths: list[Path] = field(default_factory=list)
    requirements: Path | None = None
    include: list[str] = field(default_factory=list)
    python_version: str = field(default_factory=lambda: versions()["python"])
    architecture: str = "x86_64"
    with_dependencies: bool = True
    exclude: list[str] = field(default_factory=list)

    def pinned(self) -> list[str]:
        """Requirement specifiers: runtime dependencies and ``include`` at the client's versions."""
        specs = []
        for name in dict.fromkeys([*RUNTIME_DEPENDENCIES, *self.include]):
            try:
                specs.append(f"{name}=={importlib.metadata.version(name)}")
            except importlib.metadata.PackageNotFoundError:
                raise BuildError(
                    f"{name!r} is not installed on this client, so its version is unknown:"
                    " install it, or list it in a requirements file instead of --include"
                )
        return specs


@dataclass
class UserFiles:
    """What of the user's PATHS went into the zip, and what was left out (and why)."""

    packed: list[tuple[str, int]] = field(default_factory=list)  # (archive name, bytes)
    excluded: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)

    def summary(self, largest: int = 3) -> str:
        total = sum(size for _, size in self.packed)
        lines = [f"Your files: {len(self.packed)} packed ({total / 1e6:.2f} MB)"]
        if self.packed:
            top = sorted(self.packed, key=lambda item: -item[1])[:largest]
            lines[0] += "; largest: " + ", ".join(f"{n} ({s / 1e3:.1f} kB)" for n, s in top)
        if self.excluded:
            shown = ", ".join(f"{path} ({why})" for path, why in self.excluded[:10])
            more = f" and {len(self.excluded) - 10} more" if len(self.excluded) > 10 else ""
            lines.append(f"Left out {len(self.excluded)}: {shown}{more} (--exclude adds more)")
        return "\n".join(lines)


@dataclass
class BuildResult:
    zip_bytes: bytes
    unpacked_size: int
    files: int
    dependencies_cached: bool
    user_files: UserFiles = field(default_factory=UserFiles)

    @property
    def size(self) -> int:
        return len(self.zip_bytes)


def runtime_glibc(python_version: str) -> int:
    """glibc minor version of Lambda's runtime: Amazon Linux 2 up to python3.11, then AL2023."""
    major, minor = (int(part) for part in python_version.split(".")[:2])
    return 26 if (major, minor) <= (3, 11) else 34


def wheel_platforms(python_version: str, architecture: str) -> list[str]:
    """Every wheel platform tag that runs on the Lambda runtime (pip expands none of them)."""
    machine = ARCHITECTURES[architecture]
    tags = [f"manylinux_2_{m}_{machine}" for m in range(runtime_glibc(python_version), 16, -1)]
    tags.append(f"manylinux2014_{machine}")
    if machine == "x86_64":
        tags += ["manylinux2010_x86_64", "manylinux1_x86_64"]
    return tags


def code_sha256(data: bytes) -> str:
    """Lambda's ``CodeSha256`` of a zip: its base64 SHA-256."""
    import base64

    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "dask-lambda" / "builds"


def build(spec: BuildSpec, progress: Callable[[str], None] = lambda _: None) -> BuildResult:
    """Build the deployment zip for ``spec``; raises :class:`BuildError` with the fix."""
    if spec.architecture not in ARCHITECTURES:
        raise BuildError(
            f"Unknown architecture {spec.architecture!r}: use {' or '.join(ARCHITECTURES)}"
        )
    for path in spec.paths:
        if not path.exists():
            raise BuildError(f"{path} does not exist: PATHS are files or folders to deploy")
    entries: list[tuple[Path, str]] = []
    cached = True
    if spec.with_dependencies:
        site, cached = _dependencies(spec, progress)
        entries += _walk(site, "")
    entries += list(package_files())
    user = UserFiles()
    for path in spec.paths:
        entries += _user_entries(path, [*DEFAULT_EXCLUDES, *spec.exclude], user)
    unpacked = sum(source.stat().st_size for source, _ in entries)
    if unpacked > UNZIPPED_LIMIT:
        raise BuildError(
            f"The package would be {unpacked / 1e6:.0f} MB unzipped, over Lambda's 250 MB limit."
            " Move large dependencies into a Lambda layer (--layers ARN) or drop what the tasks"
            " do not need from --include/--requirements."
        )
    progress(f"zipping {len(entries)} files ({unpacked / 1e6:.1f} MB)")
    return BuildResult(zip_entries(entries), unpacked, len(entries), cached, user)


def _dependencies(spec: BuildSpec, progress: Callable[[str], None]) -> tuple[Path, bool]:
    requirements = spec.requirements.read_text() if spec.requirements else ""
    recipe = {
        "pinned": spec.pinned(),
        "requirements": requirements,
        "python": spec.python_version,
        "platforms": wheel_platforms(spec.python_version, spec.architecture),
    }
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:20]
    target = cache_root() / digest
    if (target / ".complete").exists():
        progress(f"dependencies from cache {target}")
        return target, True
    glibc = f"glibc 2.{runtime_glibc(spec.python_version)}"
    target_name = f"python{spec.python_version} on {spec.architecture} ({glibc})"
    progress(f"installing {', '.join(recipe['pinned'])} for {target_name}")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{digest}-", dir=target.parent))
    command = [
        sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
        "--target", str(staging), "--implementation", "cp",
        "--python-version", spec.python_version, "--only-binary=:all:", "--upgrade",
        *[f"--platform={tag}" for tag in recipe["platforms"]], *recipe["pinned"],
    ]  # fmt: skip
    if spec.requirements:
        command += ["--requirement", str(spec.requirements)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR")]
        raise BuildError(
            f"pip found no wheels for {target_name} of everything the package needs:\n  "
            + "\n  ".join(errors[-4:] or result.stderr.splitlines()[-4:])
            + "\nOnly prebuilt wheels for Lambda's Linux can be packaged. Pin a version that"
            " publishes such wheels in --requirements, deploy from a Python 3.12+ client (its"
            " runtime has a newer glibc), or provide the package through a layer (--layers)."
        )
    (staging / ".complete").touch()
    if target.exists():
        shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target, False


def _walk(root: Path, prefix: str) -> Iterable[tuple[Path, str]]:
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if d not in _SKIPPED_DIRS)
        for name in sorted(files):
            if name == ".complete" or name.endswith(".pyc"):
                continue
            path = Path(directory, name)
            relative = path.relative_to(root).as_posix()
            yield path, f"{prefix}/{relative}" if prefix else relative


def _excluded_by(relative: str, patterns: list[str]) -> str | None:
    """The pattern that leaves ``relative`` (a POSIX path) out: matched by name or by path."""
    name = relative.rsplit("/", 1)[-1]
    return next(
        (p for p in patterns if fnmatch.fnmatch(name, p) or fnmatch.fnmatch(relative, p)), None
    )


def _user_entries(path: Path, patterns: list[str], user: UserFiles) -> list[tuple[Path, str]]:
    """``(file, archive name)`` of one of the user's PATHS, without what must not ship."""
    if not path.is_dir():
        reason = _excluded_by(path.name, patterns)
        if reason:
            user.excluded.append((str(path), f"matches {reason!r}"))
            return []
        user.packed.append((path.name, path.stat().st_size))
        return [(path, path.name)]
    prefix = path.name
    entries = []
    for directory, subdirs, files in os.walk(path):
        here = Path(directory)
        kept = []
        for name in sorted(subdirs):
            relative = (here / name).relative_to(path).as_posix()
            if (here / name / "pyvenv.cfg").exists():
                user.excluded.append((relative + "/", "virtualenv"))
            elif reason := _excluded_by(relative, patterns):
                user.excluded.append((relative + "/", f"matches {reason!r}"))
            else:
                kept.append(name)
        subdirs[:] = kept
        for name in sorted(files):
            relative = (here / name).relative_to(path).as_posix()
            if reason := _excluded_by(relative, patterns):
                user.excluded.append((relative, f"matches {reason!r}"))
                continue
            archive_name = f"{prefix}/{relative}" if prefix else relative
            user.packed.append((archive_name, (here / name).stat().st_size))
            entries.append((here / name, archive_name))
    return entries


def zip_entries(entries: list[tuple[Path, str]]) -> bytes:
    """A reproducible zip (sorted names, fixed timestamps) of ``(file, archive name)`` pairs."""
    buffer = io.BytesIO()
    seen = set()
    with zipfile.ZipFile(buffer, "w") as archive:
        for source, name in sorted(entries, key=lambda item: item[1]):
            if name in seen:
                continue
            seen.add(name)
            info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
            info.external_attr = (0o755 if os.access(source, os.X_OK) else 0o644) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, source.read_bytes(), compresslevel=6)
    return buffer.getvalue()
