"""Package sync: what a batch needs that the function lacks, found before the batch is sent.

A pickle names every module it needs: a function or class pickled by reference is a global
opcode (``STACK_GLOBAL`` after its module's name, ``GLOBAL`` in old protocols), and a function
cloudpickle pickles by value imports its modules with ``subimport(name)``.
:func:`referenced_modules` finds those names in the bytes (nested pickles, such as inline values,
included) without unpickling anything. :class:`PackageSync` maps each module to the distribution
that provides it on this client and compares it with what the function has (its ping's
``libraries``):

- ``packages="auto"`` (a function the cluster deployed): what is missing, and installed here, is
  added to the function at this client's version, once, with a line saying what was added; an
  import the pickle does not show (inside a function) fails in Lambda with
  ``ModuleNotFoundError``: :meth:`PackageSync.added_for` adds that package the same way, and
  the batch is sent again;
- otherwise a :class:`MissingPackagesWarning` names the packages and the fix
  (``cluster.add_packages`` or ``dask-lambda update NAME --include``), once per package, and the
  batch is sent: the function may have the module some other way (a layer).

A module ``pkg.sub`` whose distribution declares an extra ``sub`` needs that extra's
requirements too: ``dask.dataframe`` brings pandas and pyarrow.
"""

from __future__ import annotations

import functools
import importlib.metadata
import re
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from packaging.markers import default_environment
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from .deploy.compatibility import MANAGED, TOOLING, client_libraries

__all__ = ["MissingPackagesWarning", "PackageSync", "referenced_modules"]

_NAME = rb"[A-Za-z_][\w.]*"
# SHORT_BINUNICODE module [MEMOIZE] SHORT_BINUNICODE name [MEMOIZE] STACK_GLOBAL
_STACK_GLOBAL = re.compile(
    rb"\x8c([\x01-\xff])(" + _NAME + rb")\x94?\x8c([\x01-\xff])([\w.<>]+)\x94?\x93"
)
# GLOBAL module\nname\n (protocols 0 to 3)
_GLOBAL = re.compile(rb"c(" + _NAME + rb")\n[\w.<>]+\n")
# a call on one module name: cloudpickle's subimport when what precedes it is that function
_CALL_ON_NAME = re.compile(rb"\x8c([\x01-\xff])(" + _NAME + rb")\x94?\x85\x94?R")
_SUBIMPORT_BEFORE = re.compile(rb"(?:subimport\x94?\x93|h[\x00-\xff]|j[\x00-\xff]{4})\x94?$")
# Not packages to add: the pickle's own machinery, and dask-lambda (the function's handler).
_NOT_DISTRIBUTIONS = frozenset(
    {"__main__", "builtins", "__builtin__", "copyreg", "_codecs", "dask_lambda"}
)


_NO_MODULE = re.compile(r"No module named '([\w.]+)'")


class MissingPackagesWarning(UserWarning):
    """A batch references modules whose packages the function does not have."""


def referenced_modules(pickled: bytes) -> set[str]:
    """The modules ``pickled`` references by name: its globals and cloudpickle's imports."""
    found = {m.group(1).decode() for m in _GLOBAL.finditer(pickled)}
    for match in _STACK_GLOBAL.finditer(pickled):
        module, name = match.group(2), match.group(4)
        if match.group(1)[0] == len(module) and match.group(3)[0] == len(name):
            found.add(module.decode())
    for match in _CALL_ON_NAME.finditer(pickled):
        before = pickled[max(0, match.start() - 12) : match.start()]
        if match.group(1)[0] == len(match.group(2)) and _SUBIMPORT_BEFORE.search(before):
            found.add(match.group(2).decode())
    return found


@functools.cache
def _providers() -> Mapping[str, list[str]]:
    """``{top-level import name: [distribution]}`` of this client."""
    return importlib.metadata.packages_distributions()


def _extra_requirements(distribution: str, extra: str) -> list[str]:
    """The names of the requirements ``distribution[extra]`` adds, if it declares ``extra``."""
    try:
        metadata = importlib.metadata.metadata(distribution)
    except importlib.metadata.PackageNotFoundError:
        return []
    if extra not in (metadata.get_all("Provides-Extra") or []):
        return []
    names = []
    for text in metadata.get_all("Requires-Dist") or []:
        try:
            requirement = Requirement(text)
        except InvalidRequirement:
            continue
        marker, environment = requirement.marker, default_environment()
        if marker is None or marker.evaluate({**environment, "extra": ""}):
            continue  # not the extra's: the distribution's own requirement
        if marker.evaluate({**environment, "extra": extra}):
            names.append(requirement.name)
    return names


def client_version(distribution: str) -> str | None:
    """The version of ``distribution`` installed on this client, or None."""
    return client_libraries().get(canonicalize_name(distribution))


def needed_packages(modules: Iterable[str], present: Iterable[str]) -> dict[str, str]:
    """``{distribution: the module that needs it}`` of what ``modules`` need, this client has
    installed, and ``present`` (the function's distributions) lacks."""
    have = {canonicalize_name(name) for name in present} | MANAGED | TOOLING
    needed: dict[str, str] = {}

    def want(distribution: str, module: str) -> None:
        name = canonicalize_name(distribution)
        if name not in have and name not in needed and client_version(name) is not None:
            needed[name] = module

    for module in sorted(modules):
        top, _, rest = module.partition(".")
        if top in sys.stdlib_module_names or top in _NOT_DISTRIBUTIONS:
            continue
        providers = _providers().get(top)
        if not providers:  # the user's own code, or pickled by value: not a package to add
            continue
        distribution = providers[0]
        want(distribution, module)
        sub = rest.partition(".")[0]
        if sub:
            for requirement in _extra_requirements(distribution, sub):
                want(requirement, module)
    return needed


class PackageSync:
    """Checks each batch's modules against the function's packages (see the module docstring).

    Parameters
    ----------
    function_name
        The function, as named in messages.
    libraries
        ``libraries(stats)`` returns the function's ``{distribution: version}`` (asked once,
        when first needed), counting any invocation it makes in ``stats`` (the compute's).
    add
        Adds packages (requirement names) to the function, or None: warn instead.
    fix
        The fix to name for a list of requirement names, when there is no ``add``.
    announce
        Where the line saying what was added goes.
    """

    def __init__(
        self,
        function_name: str,
        libraries: Callable[[Any], Mapping[str, str]],
        add: Callable[[list[str]], Mapping[str, str]] | None = None,
        fix: Callable[[list[str]], str] = lambda names: "",
        announce: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
    ):
        self.function_name = function_name
        self._libraries = libraries
        self._present: set[str] | None = None
        self._add, self._fix, self._announce = add, fix, announce
        self._checked: set[str] = set()
        self._added: set[str] = set()
        self._lock = threading.Lock()

    def ensure(self, pickled: bytes, stats: Any = None) -> None:
        """Make sure the function has what ``pickled`` references (add it, or warn); a ping
        this needs is counted in ``stats`` (an ``InvokeStats``)."""
        modules = referenced_modules(pickled) - self._checked
        if not modules:
            return
        with self._lock:
            modules -= self._checked
            self._add_or_warn(modules, stats)
            self._checked |= modules

    def added_for(self, errors: Iterable[Mapping]) -> bool:
        """Add the packages of the modules tasks failed to import (their error entries), when
        this sync adds packages and this client has them; whether any was added (the batch is
        then worth sending again)."""
        if self._add is None:
            return False
        modules = set()
        for error in errors:
            found = _NO_MODULE.search(error.get("message") or "")
            if error.get("type") == "ModuleNotFoundError" and found:
                modules.add(found.group(1))
        if not modules:
            return False
        with self._lock:
            if self._add_or_warn(modules):
                return True
            # Added while this batch ran (another batch needed it first): send it again too.
            return bool(needed_packages(modules, self._present - self._added))

    def _add_or_warn(self, modules: set[str], stats: Any = None) -> bool:
        """Add (or warn of) what ``modules`` need that the function lacks; whether anything
        was needed. Called with the lock held."""
        if self._present is None:
            self._present = set(self._libraries(stats))
        needed = needed_packages(modules, self._present)
        if needed:
            self._act(needed)
        return bool(needed)

    def _act(self, needed: dict[str, str]) -> None:
        names = sorted(needed)
        shown = ", ".join(f"{name} {client_version(name)}" for name in names)
        why = ", ".join(sorted(set(needed.values())))
        if self._add is None:
            self._present |= set(names)  # said once
            warnings.warn(
                f"Lambda function {self.function_name!r} has no {shown}, which these tasks"
                f" reference ({why}): they will fail with ModuleNotFoundError unless it has"
                f" them some other way. {self._fix(names)}",
                MissingPackagesWarning,
                stacklevel=5,
            )
            return
        started = time.perf_counter()
        self._announce(
            f"dask-lambda: adding {shown} to Lambda function {self.function_name!r} at this"
            f" client's versions (these tasks need {why}) ..."
        )
        self._present = {canonicalize_name(name) for name in self._add(names)}
        self._added |= set(names)
        self._announce(
            f"dask-lambda: added in {time.perf_counter() - started:.1f} s"
            " (LambdaCluster(packages=[...]) deploys packages up front)"
        )
