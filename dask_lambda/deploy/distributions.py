"""Installed Python distributions: what a package needs, and the files that make it up.

A function for the embedded local Lambda (same platform as the client) is built from the files of
the distributions installed here, so it runs exactly the versions the client has without a
download.
:func:`closure` follows ``Requires-Dist`` (markers evaluated for this interpreter, extras as
asked), :func:`distribution_files` lists a distribution's files by their path in site-packages.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Iterable
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name


class MissingDistribution(LookupError):
    """A package to deploy is not installed in this environment."""


def closure(requirements: Iterable[str]) -> list[importlib.metadata.Distribution]:
    """The installed distributions ``requirements`` need, themselves included, sorted by name.

    ``requirements`` are names with optional extras (``"dask[array]"``); versions are whatever is
    installed. Raises :class:`MissingDistribution` naming a top-level requirement that is not
    installed; a dependency that is missing is skipped (pip would have installed it if needed).
    """
    found: dict[str, importlib.metadata.Distribution] = {}
    pending = [(_parse(text), True) for text in requirements]
    extras_done: set[tuple[str, str]] = set()
    while pending:
        requirement, top_level = pending.pop()
        name = canonicalize_name(requirement.name)
        try:
            dist = found.get(name) or importlib.metadata.distribution(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            if top_level:
                raise MissingDistribution(
                    f"{requirement.name!r} is not installed on this client, so it cannot be"
                    f" deployed from here: pip install {requirement.name}"
                ) from None
            continue
        new = name not in found
        found[name] = dist
        extras = [e for e in requirement.extras if (name, e) not in extras_done]
        extras_done.update((name, e) for e in extras)
        if not new and not extras:
            continue
        for text in dist.requires or []:
            dependency = _parse(text)
            if _applies(dependency, extras if not new else ["", *extras]):
                pending.append((dependency, False))
    return sorted(found.values(), key=lambda d: canonicalize_name(d.metadata["Name"]))


def _parse(text: str) -> Requirement:
    try:
        return Requirement(text)
    except InvalidRequirement as e:
        raise ValueError(f"{text!r} is not a package name or requirement ({e})") from None


def _applies(requirement: Requirement, extras: list[str]) -> bool:
    if requirement.marker is None:
        return "" in extras
    environment = default_environment()
    return any(requirement.marker.evaluate({**environment, "extra": extra}) for extra in extras)


def distribution_files(dist: importlib.metadata.Distribution) -> list[tuple[Path, str]]:
    """``(file, path in site-packages)`` of an installed distribution, without bytecode and
    without what it installed outside site-packages (scripts, data files)."""
    root = Path(dist.locate_file("")).resolve()
    entries = []
    for file in dist.files or []:
        relative = file.as_posix()
        if relative.startswith("..") or "__pycache__" in file.parts or relative.endswith(".pyc"):
            continue
        path = root / file
        if path.is_file():
            entries.append((path, relative))
    return entries


def pinned(dists: Iterable[importlib.metadata.Distribution]) -> list[str]:
    """``name==version`` of each distribution."""
    return [f"{canonicalize_name(d.metadata['Name'])}=={d.version}" for d in dists]
