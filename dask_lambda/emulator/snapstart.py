"""SnapStart's control plane in the embedded local Lambda: which functions apply it, what AWS
refuses, and what the API reports of it.

moto accepts ``SnapStart`` on ``CreateFunction`` and ``UpdateFunctionConfiguration`` but drops
it (every function reports ``ApplyOn: None``). The front door keeps it here instead: it checks a
setting as AWS does (python3.12 or later, a zip package, ``/tmp`` of at most 512 MB), records
which published versions were published with it (their snapshot is made at once, see
:mod:`.snapshots`), and rewrites the function configurations moto answers so that ``SnapStart``
(``ApplyOn``, ``OptimizationStatus``) and a SnapStart version's ``State`` (``Pending`` while its
snapshot's init runs, then ``Active`` or ``Failed`` with the reason) read as on AWS.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable

from .invoke import Response, error_response

APPLY_ON = ("PublishedVersions", "None")
SNAPSTART_TMP_LIMIT_MB = 512
_PYTHON = re.compile(r"^python3\.(\d+)$")


def refusal(config: dict) -> Response | None:
    """AWS's answer to a function configuration (``Runtime``, ``PackageType``,
    ``EphemeralStorage``, ``SnapStart`` merged) that SnapStart cannot apply to, or None."""
    apply_on = (config.get("SnapStart") or {}).get("ApplyOn", "None")
    if apply_on not in APPLY_ON:
        return _invalid(f"SnapStart ApplyOn must be one of {', '.join(APPLY_ON)}, "
                        f"not {apply_on!r}.")  # fmt: skip
    if apply_on == "None":
        return None
    runtime = str(config.get("Runtime") or "")
    version = _PYTHON.match(runtime)
    if config.get("PackageType") == "Image":
        return _invalid("SnapStart is not supported for functions of PackageType Image.")
    if version is None or int(version[1]) < 12:
        return _invalid(f"SnapStart is not supported for runtime {runtime or 'unknown'}: "
                        "use python3.12 or later.")  # fmt: skip
    tmp_mb = int((config.get("EphemeralStorage") or {}).get("Size") or 512)
    if tmp_mb > SNAPSTART_TMP_LIMIT_MB:
        return _invalid(f"SnapStart supports EphemeralStorage of up to {SNAPSTART_TMP_LIMIT_MB} "
                        f"MB, not {tmp_mb} MB.")  # fmt: skip
    return None


def _invalid(message: str) -> Response:
    return error_response(400, "InvalidParameterValueException", message)


class SnapStartTable:
    """The SnapStart setting of each function and the versions published with it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._apply_on: dict[tuple[str, str], str] = {}
        self._versions: set[tuple[str, str, str]] = set()

    def set(self, region: str, name: str, apply_on: str) -> None:
        with self._lock:
            self._apply_on[(region, name)] = apply_on

    def applies(self, region: str, name: str) -> bool:
        with self._lock:
            return self._apply_on.get((region, name)) == "PublishedVersions"

    def published(self, region: str, name: str, version: str) -> None:
        with self._lock:
            self._versions.add((region, name, version))

    def is_snapshotted(self, region: str, name: str, version: str) -> bool:
        with self._lock:
            return (region, name, version) in self._versions

    def forget(self, region: str, name: str, version: str | None = None) -> None:
        """A function deleted (every version) or one version of it."""
        with self._lock:
            if version is None:
                self._apply_on.pop((region, name), None)
                self._versions = {v for v in self._versions if v[:2] != (region, name)}
            else:
                self._versions.discard((region, name, version))

    def rewrite(self, region: str, body: bytes, state_of: Callable[[str, str], tuple]) -> bytes:
        """``body`` (a Lambda API answer) with every function configuration's ``SnapStart``, and
        a SnapStart version's ``State``, as AWS reports them. ``state_of(name, version)`` gives
        ``(State, StateReason)`` of a version's snapshot."""
        try:
            answer = json.loads(body)
        except ValueError:
            return body
        changed = False
        for config in _configurations(answer):
            name, version = config["FunctionName"], str(config.get("Version") or "$LATEST")
            snapshotted = version != "$LATEST" and self.is_snapshotted(region, name, version)
            apply_on = "PublishedVersions" if snapshotted or (
                version == "$LATEST" and self.applies(region, name)) else "None"  # fmt: skip
            status = "On" if snapshotted else "Off"
            config["SnapStart"] = {"ApplyOn": apply_on, "OptimizationStatus": status}
            if snapshotted:
                state, reason = state_of(name, version)
                config["State"] = state
                if reason:
                    config["StateReason"] = reason[-1000:]
                    config["StateReasonCode"] = "FunctionError"
            changed = True
        return json.dumps(answer).encode() if changed else body


def _configurations(answer: object):
    """The function configurations in a Lambda API answer (one, or a list of them)."""
    if isinstance(answer, dict):
        if "FunctionName" in answer and "Runtime" in answer:
            yield answer
        for value in answer.values():
            if isinstance(value, dict | list):
                yield from _configurations(value)
    elif isinstance(answer, list):
        for item in answer:
            yield from _configurations(item)
