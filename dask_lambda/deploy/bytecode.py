"""Compiled bytecode shipped in every package: the zip and the dependency archive.

A function's ``.py`` files without matching ``.pyc`` are compiled on import, on every cold start
(Lambda's ``/var/task`` is read-only, and an archive unpacked into ``/tmp`` starts with none):
for dask, dask.bag and numpy, 0.86 s of CPU against 0.36 s with bytecode. So every ``.py`` that
ships (but test suites') ships with an *unchecked hash-based* pyc (PEP 552), valid whatever the
unpacked files' timestamps and never checked against its source, so the function imports without
compiling or even reading its sources. The bytecode pip wrote at install time is reused where it
is up to date (re-headed); the rest is compiled here. Only for this interpreter's minor version:
the magic number is per minor version, and a mismatched pyc would only be ignored.
"""

from __future__ import annotations

import importlib.util
import marshal
import sys
from pathlib import Path

_UNCHECKED_HASH = (0b01).to_bytes(4, "little")  # hash-based, source not checked


def matches_runtime(python_version: str) -> bool:
    """Whether bytecode from this interpreter loads in a ``pythonX.Y`` runtime."""
    return python_version == f"{sys.version_info.major}.{sys.version_info.minor}"


def unchecked_pyc(source: Path) -> bytes | None:
    """The installed bytecode of ``source`` as an unchecked hash-based pyc, or ``None`` when
    there is none or it is stale."""
    cached = Path(importlib.util.cache_from_source(str(source)))
    try:
        data = cached.read_bytes()
        stat = source.stat()
        source_bytes = source.read_bytes()
    except OSError:
        return None
    if len(data) < 16 or data[:4] != importlib.util.MAGIC_NUMBER:
        return None
    flags = int.from_bytes(data[4:8], "little")
    source_hash = importlib.util.source_hash(source_bytes)
    if flags & 0b01:
        if data[8:16] != source_hash:
            return None
    elif (
        int.from_bytes(data[8:12], "little") != int(stat.st_mtime) & 0xFFFFFFFF
        or int.from_bytes(data[12:16], "little") != stat.st_size & 0xFFFFFFFF
    ):
        return None
    return importlib.util.MAGIC_NUMBER + _UNCHECKED_HASH + source_hash + data[16:]


def compiled_pyc(source: Path) -> bytes | None:
    """``source`` compiled here, as an unchecked hash-based pyc (``None`` if it does not compile:
    a template or a file for another Python, which its package does not import either)."""
    try:
        source_bytes = source.read_bytes()
        code = compile(source_bytes, str(source), "exec", dont_inherit=True)
    except (OSError, SyntaxError, ValueError):
        return None
    # The code's file name is the client's path; the importer sets the runtime's at load.
    source_hash = importlib.util.source_hash(source_bytes)
    return importlib.util.MAGIC_NUMBER + _UNCHECKED_HASH + source_hash + marshal.dumps(code)


def bytecode_entries(entries: list[tuple[Path, str]]) -> list[tuple[bytes, str]]:
    """``(pyc bytes, archive name)`` for the ``.py`` files among ``(file, archive name)``, but
    not for test suites (most of the files, rarely imported: unpacking them costs every cold
    start)."""
    tag = sys.implementation.cache_tag
    found = []
    for source, name in entries:
        if not name.endswith(".py") or "/tests/" in name:
            continue
        pyc = unchecked_pyc(source) or compiled_pyc(source)
        if pyc is not None:
            folder, _, stem = name[:-3].rpartition("/")
            prefix = f"{folder}/" if folder else ""
            found.append((pyc, f"{prefix}__pycache__/{stem}.{tag}.pyc"))
    return found
