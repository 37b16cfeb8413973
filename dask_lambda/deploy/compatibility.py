"""Whether a deployed function can run this client's tasks.

Two checks on a ping's answer. The versions that must match for pickles to be safe (Python,
dask, cloudpickle, the protocol: :func:`dask_lambda.function.protocol.version_mismatches`) are
refused on any difference. Every other library both sides have (numpy, pandas, pyarrow, ...) is
compared by :func:`library_differences`: a different major version (or minor, before 1.0) is
refused, since arrays and frames pickled by one may not load or behave the same in the other;
a different minor version is a warning. Each message carries the command that fixes it.
"""

from __future__ import annotations

import functools
import importlib.metadata
from dataclasses import dataclass, field

from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

# Provided by Lambda's managed runtime (and the local Lambda's copy of it): never the client's.
MANAGED = frozenset(
    {"boto3", "botocore", "s3transfer", "jmespath", "urllib3", "awslambdaric", "simplejson"}
)
TOOLING = frozenset({"pip", "setuptools", "wheel"})


@functools.cache
def client_libraries() -> dict[str, str]:
    """``{canonical name: version}`` of the distributions this client has installed."""
    found: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            found.setdefault(canonicalize_name(name), dist.version)
    return found


@dataclass
class LibraryDifferences:
    """Libraries at other versions in the function than in the client."""

    refused: list[str] = field(default_factory=list)
    warned: list[str] = field(default_factory=list)
    pins: list[str] = field(default_factory=list)  # name==client version, for the fix

    def fix(self, function_name: str) -> str:
        includes = " ".join(f"--include {pin}" for pin in self.pins)
        return (
            f"Redeploy the function with the client's versions: dask-lambda update"
            f" {function_name} {includes} (or install the function's versions here)"
        )


def library_differences(client: dict[str, str], function: dict[str, str]) -> LibraryDifferences:
    """Compare the libraries both sides have, except the managed runtime's and pip's own."""
    differences = LibraryDifferences()
    for name in sorted(set(client) & set(function) - MANAGED - TOOLING):
        ours, theirs = client[name], function[name]
        if ours == theirs:
            continue
        try:
            mine, deployed = Version(ours), Version(theirs)
        except InvalidVersion:
            continue
        line = f"{name}: function has {theirs}, client has {ours}"
        if _series(mine, 1) != _series(deployed, 1):
            differences.refused.append(line)
        elif _series(mine, 2) != _series(deployed, 2):
            differences.warned.append(line)
        else:
            continue
        differences.pins.append(f"{name}=={ours}")
    return differences


def _series(version: Version, depth: int) -> tuple[int, ...]:
    """The release numbers that make a series: ``depth`` of them, one more before 1.0."""
    release = (*version.release, 0, 0)
    extra = 1 if release[0] == 0 else 0
    return tuple(release[: depth + extra])
