"""Building a function's deployment package: dask-lambda, its dependencies and the user's code.

The zip holds, at its root:

1. the dependencies: dask-lambda's runtime needs (``dask``, ``numpy``, ``cloudpickle``,
   ``msgpack``) and whatever ``--include``, ``--requirements`` or ``LambdaCluster(packages=)``
   add, at the client's versions (a runtime need without a wheel for Lambda's Linux at the
   newest version that has one). For AWS they are installed with ``pip install --target --platform
   manylinux_2_X_<arch> --only-binary=:all: --python-version X.Y`` so compiled wheels match
   Lambda's Linux (glibc 2.26 up to python3.11) and CPU; for the embedded local Lambda, which runs
   on this machine, they are copied from the installed distributions (``from_installed``, the
   ``Requires-Dist`` closure found by :mod:`.distributions`), which needs no download;
2. dask_lambda's Lambda-side code (:mod:`dask_lambda.function`, nothing of the client);
3. the user's files and folders (``PATHS``), each under its own name, so modules deployed this way
   are importable inside the function and tasks can refer to them by import. What must never
   ship is left out (:data:`DEFAULT_EXCLUDES`): dotfiles and dot-folders (``.env``, ``.aws/``,
   ``.git/``), credential and key files (``credentials``, ``id_rsa``, ``*.pem``), virtualenvs
   (any folder with a ``pyvenv.cfg``) and ``__pycache__``; ``exclude`` patterns add more, and
   :class:`UserFiles` says what was packed and what was left out.

Every ``.py`` but test suites' ships with its bytecode (:mod:`.bytecode`), so a cold start on a
read-only ``/var/task`` compiles nothing, when the runtime's Python is the client's.

Lambda's 250 MB unzipped limit counts code and layers together (bytecode included; when only the
bytecode takes it over, the dependencies go without theirs, or to S3 where that is allowed).
Past it (or with ``deps_on_s3``) the dependencies become an archive of their own
(:attr:`BuildResult.dependencies_zip`, with their bytecode) that deploy uploads to the bucket
and the function unpacks into ``/tmp`` on a cold start (:mod:`dask_lambda.function.dependencies`).

pip's installs and the dependency zips are cached by a hash of what they hold
(``~/.cache/dask-lambda/builds``); zips are reproducible (sorted entries, fixed timestamps), so
the same inputs give the same ``CodeSha256`` and an unchanged function is never re-uploaded.
Lambda's limits are checked before any AWS call; a zip over 50 MB goes through S3.
"""

from __future__ import annotations

import fnmatch
import hashlib
import importlib.metadata
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import dask_lambda

from .. import limits
from ..function.protocol import versions
from . import bytecode as bytecode_module
from . import distributions

UNZIPPED_LIMIT = limits.UNZIPPED_PACKAGE_BYTES
DIRECT_UPLOAD_LIMIT = limits.DIRECT_UPLOAD_BYTES
# What every deployed function gets: the handler's needs and dask.array's. At the client's
# versions; one of them with no wheel for the runtime (numpy >= 2.3 for python3.11's glibc 2.26)
# at the newest version that has one, said in the build's output.
RUNTIME_DEPENDENCIES = ("dask", "numpy", "cloudpickle", "msgpack")
# From the client's installed distributions (for the local Lambda): the handler's needs and
# dask.array's, which every dask-lambda function can run without asking.
LOCAL_RUNTIME_DEPENDENCIES = ("dask[array]", "cloudpickle", "msgpack")
_RUNTIME_NAMES = frozenset(RUNTIME_DEPENDENCIES)  # canonical names already
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


def _bytecode_setting() -> bool:
    from .. import config  # dask.config: not at import (the local Lambda's server imports this)

    return bool(config.setting("bytecode"))


def _ship_tests_setting() -> bool:
    from .. import config

    return bool(config.setting("ship-tests"))


def is_tests_file(name: str) -> bool:
    """True for a file inside a package's ``tests`` or ``test`` folder (``pandas/tests/...``,
    ``pyarrow/tests/...``), which no import of the package itself needs."""
    folders = name.split("/")[1:-1]
    return "tests" in folders or "test" in folders


@dataclass
class BuildSpec:
    """What goes into a deployment zip.

    ``from_installed`` takes the dependencies (``packages`` and the runtime's own) from this
    client's installed distributions instead of pip: right for the embedded local Lambda, which
    runs on this machine, and fast (no download). ``deps_on_s3`` puts the dependencies in a
    separate archive (:attr:`BuildResult.dependencies_zip`) that the function unpacks into
    ``/tmp`` on a cold start; ``None`` does so only when the package would exceed Lambda's 250 MB
    and ``split_allowed`` (a bucket to hold the archive) is set.
    """

    paths: list[Path] = field(default_factory=list)
    requirements: Path | None = None
    include: list[str] = field(default_factory=list)
    python_version: str = field(default_factory=lambda: versions()["python"])
    architecture: str = "x86_64"
    with_dependencies: bool = True
    exclude: list[str] = field(default_factory=list)
    from_installed: bool = False
    deps_on_s3: bool | None = False
    split_allowed: bool = False
    # Where the client's version of a package has no runtime wheel, take the newest that has one.
    compatible_versions: bool = False
    # An unchecked-hash .pyc beside every .py (when the runtime's Python is the client's).
    bytecode: bool = field(default_factory=_bytecode_setting)
    # Packages' tests folders in a dependency archive for S3 (``lambda.ship-tests``).
    ship_tests: bool = field(default_factory=_ship_tests_setting)

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
    # With deps_on_s3: the dependencies' own archive, unpacked by the function on a cold start.
    dependencies_zip: bytes | None = None
    dependencies_unpacked: int = 0
    pinned: list[str] = field(default_factory=list)

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


def _check_spec(spec: BuildSpec) -> None:
    if spec.architecture not in ARCHITECTURES:
        raise BuildError(
            f"Unknown architecture {spec.architecture!r}: use {' or '.join(ARCHITECTURES)}"
        )
    for path in spec.paths:
        if not path.exists():
            raise BuildError(f"{path} does not exist: PATHS are files or folders to deploy")


def build(spec: BuildSpec, progress: Callable[[str], None] = lambda _: None) -> BuildResult:
    """Build the deployment zip for ``spec``; raises :class:`BuildError` with the fix."""
    groups = entry_groups(spec, progress)
    entries, user = [*groups.package, *groups.user], groups.user_files
    own_size = sum(source.stat().st_size for source, _ in entries)
    deps, pins, recipe, cached = groups.dependencies, groups.pins, groups.recipe, groups.cached
    deps_size = sum(source.stat().st_size for source, _ in deps)
    bytecode = groups.bytecode
    if spec.bytecode and not bytecode:
        progress(f"no bytecode: python{spec.python_version} is not this client's Python, so each"
                 " cold start compiles what it imports (deploy from a client of that version)")
    own = entries + (bytecode_module.bytecode_entries(entries) if bytecode else [])
    own_unpacked = sum(_entry_size(entry) for entry in own)
    split = spec.deps_on_s3 or (
        spec.deps_on_s3 is None and spec.split_allowed and own_size + deps_size > UNZIPPED_LIMIT
    )
    deps_zip = b""
    if not split and deps:
        deps_zip = _dependencies_zip(deps, recipe, progress, bytecode=bytecode)
        unpacked = own_unpacked + unpacked_size(deps_zip)
        if unpacked > UNZIPPED_LIMIT and bytecode:
            if spec.deps_on_s3 is None and spec.split_allowed:
                split = True  # the bytecode takes it over 250 MB: /tmp has the room
            else:
                progress(f"dependencies without bytecode: with it the package would be"
                         f" {unpacked / 1e6:.0f} MB unzipped, over Lambda's 250 MB")  # fmt: skip
                deps_zip = _dependencies_zip(deps, recipe, progress, bytecode=False)
    if split and spec.with_dependencies:
        if own_size > UNZIPPED_LIMIT:
            raise BuildError(
                f"Your files alone are {own_size / 1e6:.0f} MB unzipped, over Lambda's 250 MB:"
                " leave out what the tasks do not need (--exclude)."
            )
        progress(f"dependencies ({deps_size / 1e6:.1f} MB) go to S3, unpacked on cold starts")
        if not spec.ship_tests:
            tests = [entry for entry in deps if is_tests_file(entry[1])]
            if tests:
                deps = [entry for entry in deps if not is_tests_file(entry[1])]
                progress(f"leaving out {len(tests)} files of packages' tests folders"
                         f" ({sum(_entry_size(entry) for entry in tests) / 1e6:.1f} MB;"
                         " lambda.ship-tests: true keeps them)")  # fmt: skip
        recipe = {**recipe, "tests": spec.ship_tests}
        deps_zip = _dependencies_zip(deps, recipe, progress, bytecode=bytecode, streamed=True)
        return BuildResult(
            zip_entries(own), own_unpacked, len(entries), cached, user,
            dependencies_zip=deps_zip, dependencies_unpacked=unpacked_size(deps_zip),
            pinned=pins,
        )  # fmt: skip
    unpacked = own_unpacked + (unpacked_size(deps_zip) if deps_zip else 0)
    if unpacked > UNZIPPED_LIMIT:
        raise BuildError(
            f"The package would be {unpacked / 1e6:.0f} MB unzipped, over Lambda's 250 MB limit"
            " (layers count toward the same limit). Put the dependencies in S3, unpacked into"
            " /tmp on a cold start: --deps-on-s3 with --bucket (LambdaCluster does so by"
            " itself); or drop what the tasks do not need from --include/--requirements."
        )
    progress(f"zipping {len(entries) + len(deps)} files ({unpacked / 1e6:.1f} MB"
             + (", bytecode included" if bytecode else "") + ")")  # fmt: skip
    return BuildResult(
        zip_entries(own, base=deps_zip), unpacked, len(entries) + len(deps), cached, user,
        pinned=pins,
    )  # fmt: skip


@dataclass
class EntryGroups:
    """What a package holds, in the three parts an image makes layers of: ``(file or its
    bytes, name)`` pairs, and whether bytecode goes beside them (see :func:`entry_groups`)."""

    dependencies: list[tuple[Path | bytes, str]]
    package: list[tuple[Path | bytes, str]]
    user: list[tuple[Path | bytes, str]]
    user_files: UserFiles
    recipe: dict  # what identifies the dependencies (the same recipe: the same files)
    pins: list[str]
    bytecode: bool
    cached: bool  # the dependencies came from the build cache

    @property
    def unpacked(self) -> int:
        return sum(_entry_size(entry) for entry in [*self.dependencies, *self.package, *self.user])


def entry_groups(spec: BuildSpec, progress: Callable[[str], None] = lambda _: None) -> EntryGroups:
    """The dependencies, dask-lambda's own code and the user's files of ``spec``, apart: a zip
    joins them (:func:`build`), a container image makes each a layer (:mod:`.images`)."""
    _check_spec(spec)
    user_files = UserFiles()
    user: list = []
    for path in spec.paths:
        user += _user_entries(path, [*DEFAULT_EXCLUDES, *spec.exclude], user_files)
    deps, pins, recipe, cached = [], [], {}, True
    if spec.with_dependencies:
        deps, pins, recipe, cached = _dependency_entries(spec, progress)
    bytecode = spec.bytecode and bytecode_module.matches_runtime(spec.python_version)
    return EntryGroups(deps, list(package_files()), user, user_files, recipe, pins, bytecode,
                       cached)  # fmt: skip


def _entry_size(entry: tuple[Path | bytes, str]) -> int:
    source = entry[0]
    return len(source) if isinstance(source, bytes) else source.stat().st_size


def unpacked_size(archive: bytes) -> int:
    """Bytes ``archive`` unpacks to, from its central directory."""
    with zipfile.ZipFile(io.BytesIO(archive)) as opened:
        return sum(info.file_size for info in opened.infolist())


def _dependency_entries(
    spec: BuildSpec, progress: Callable[[str], None]
) -> tuple[list[tuple[Path, str]], list[str], dict, bool]:
    """``(files, pins, recipe, cached)``: the dependencies' ``(file, archive name)`` pairs, their
    ``name==version``, what identifies them, and whether pip had nothing to install."""
    if spec.from_installed:
        dists = _installed(spec)
        pins = distributions.pinned(dists)
        entries = [entry for dist in dists for entry in distributions.distribution_files(dist)]
        return entries, pins, {"installed": pins, "python": spec.python_version}, True
    site, cached = _dependencies(spec, progress)
    return list(_walk(site, "")), _pins_of(site), {"site": str(site)}, cached


def _dependencies_zip(
    entries: list[tuple[Path, str]], recipe: dict, progress: Callable[[str], None],
    bytecode: bool, streamed: bool = False,
) -> bytes:  # fmt: skip
    """The dependencies' zip, cached by what they are (the same recipe gives the same bytes).
    ``streamed``: the archive in S3 that every cold start streams and unpacks, so fast deflate
    (13% larger, a third the time to unpack) and the largest entries first."""
    compresslevel = 1 if streamed else 6
    recipe = {**recipe, "bytecode": bytecode, "compresslevel": compresslevel,
              "largest_first": streamed}  # fmt: skip
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:20]
    archive = cache_root() / f"{digest}.zip"
    if archive.exists():
        progress(f"dependencies from cache {archive}")
        return archive.read_bytes()
    progress(f"packing {len(entries)} dependency files" + (" and bytecode" if bytecode else ""))
    pycs = bytecode_module.bytecode_entries(entries) if bytecode else []
    data = zip_entries([*entries, *pycs], compresslevel=compresslevel, largest_first=streamed)
    archive.parent.mkdir(parents=True, exist_ok=True)
    staging = archive.with_suffix(f".{os.getpid()}.partial")
    staging.write_bytes(data)
    staging.rename(archive)
    return data


def _installed(spec: BuildSpec) -> list:
    try:
        return distributions.closure([*LOCAL_RUNTIME_DEPENDENCIES, *spec.include])
    except distributions.MissingDistribution as e:
        raise BuildError(str(e)) from None


def _pins_of(site: Path) -> list[str]:
    """``name==version`` of what pip installed into ``site``."""
    pins = []
    for meta in sorted(site.glob("*.dist-info/METADATA")):
        fields = dict(
            line.split(": ", 1) for line in meta.read_text().splitlines()[:10] if ": " in line
        )
        if "Name" in fields and "Version" in fields:
            pins.append(f"{fields['Name'].lower()}=={fields['Version']}")
    return pins


def _dependencies(spec: BuildSpec, progress: Callable[[str], None]) -> tuple[Path, bool]:
    requirements = spec.requirements.read_text() if spec.requirements else ""
    recipe = {
        "pinned": spec.pinned(),
        "compatible_versions": spec.compatible_versions,
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
    substituted: dict[str, str] = {}
    while True:
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode == 0:
            break
        missing = _no_wheel_for(result.stderr)
        runtime_dependency = missing is not None and canonical(missing[0]) in _RUNTIME_NAMES
        if (spec.compatible_versions or runtime_dependency) and missing and missing[2]:
            name, wanted, newest = missing
            if canonical(name) not in substituted:
                substituted[canonical(name)] = newest
                progress(f"{name} {wanted} has no wheel for {target_name}: using {newest}")
                command = [
                    arg for arg in command if canonical(arg.split("==")[0]) != canonical(name)
                ]
                command.append(f"{name}=={newest}")
                continue
        shutil.rmtree(staging, ignore_errors=True)
        errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR")]
        hint = ""
        if missing and missing[2]:
            name, wanted, newest = missing
            hint = (
                f"\nThe newest {name} with a wheel for {target_name} is {newest}:"
                f" --compatible-versions deploys it (dask-lambda info then shows the"
                f" difference), or pin {name}=={newest} in your requirements."
            )
        raise BuildError(
            f"pip found no wheels for {target_name} of everything the package needs:\n  "
            + "\n  ".join(errors[-4:] or result.stderr.splitlines()[-4:])
            + hint
            + "\nOnly prebuilt wheels for Lambda's Linux can be packaged. Pin a version that"
            " publishes such wheels in --requirements, deploy from a Python 3.12+ client (its"
            " runtime has a newer glibc), or provide the package through a layer (--layers)."
        )
    (staging / ".complete").touch()
    if target.exists():
        shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target, False


_NO_VERSION = re.compile(
    r"Could not find a version that satisfies the requirement ([A-Za-z0-9_.\-]+)"
    r"(?:\[[^\]]*\])?==(\S+) \(from versions: ([^)]*)\)"
)


def _no_wheel_for(pip_stderr: str) -> tuple[str, str, str | None] | None:
    """``(name, wanted version, newest version pip can install for the target or None)`` when
    pip failed because a pinned version has no wheel for it."""
    match = _NO_VERSION.search(pip_stderr)
    if not match:
        return None
    name, wanted, available = match.groups()
    found = [v.strip() for v in available.split(",") if v.strip() and v.strip() != "none"]
    return name, wanted, found[-1] if found else None


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


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


def zip_entries(
    entries: list[tuple[Path | bytes, str]], base: bytes = b"", compresslevel: int = 6,
    largest_first: bool = False,
) -> bytes:  # fmt: skip
    """A reproducible zip (sorted names, fixed timestamps) of ``(file or its bytes, archive
    name)`` pairs, appended to the zip ``base`` if given (its entries come first and win).
    ``largest_first`` orders the entries by size, largest first (names break ties): a
    dependency archive, unpacked on several threads as it streams in, then keeps every
    thread busy to the end instead of leaving the last large library to one."""
    buffer = io.BytesIO(base)
    seen = set()
    if base:
        buffer.seek(0, io.SEEK_END)
        with zipfile.ZipFile(io.BytesIO(base)) as existing:
            seen.update(existing.namelist())
    with zipfile.ZipFile(buffer, "a" if base else "w") as archive:
        order = (lambda item: (-_entry_size(item), item[1])) if largest_first else (
            lambda item: item[1])  # fmt: skip
        for source, name in sorted(entries, key=order):
            if name in seen:
                continue
            seen.add(name)
            info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
            in_memory = isinstance(source, bytes)
            executable = not in_memory and os.access(source, os.X_OK)
            info.external_attr = (0o755 if executable else 0o644) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            data = source if in_memory else source.read_bytes()
            archive.writestr(info, data, compresslevel=compresslevel)
    return buffer.getvalue()
