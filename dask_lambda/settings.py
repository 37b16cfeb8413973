"""The client's settings, read once: :class:`Settings`, from arguments and dask.config.

Every setting of ``lambda.yaml`` that the client acts on is a field of :class:`Settings`, typed
and named after its key (``batch.max-tasks`` is ``max_tasks``). :meth:`Settings.from_config`
reads them all in one loop, each overridable by an argument that is not None (dask's
``override_with``), converts each to its field's type, and checks the values a wrong type or
range would make fail later, against ``lambda-schema.yaml`` (every key's type, range and
meaning); the error names the key, the argument or environment variable, and what is valid.
A cluster builds one and passes it down: no other module reads dask.config for these. What a
user may change between two computes of one cluster, as dask's own options (``with
dask.config.set({"lambda.allow-local-paths": True})``), is read per compute where it applies,
and is not a field here.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from . import config


def _key(name: str) -> Any:
    return field(metadata={"key": name})


@dataclass(frozen=True)
class Settings:
    """A cluster's settings (each documented in ``lambda.yaml`` under its key)."""

    # Which function, where.
    function_name: str | None = _key("function-name")
    bucket: str | None = _key("bucket")
    region: str | None = _key("region")
    endpoint_url: str | None = _key("endpoint-url")
    # The function the cluster deploys itself.
    memory: int = _key("memory")
    timeout: int = _key("timeout")
    packages: tuple[str, ...] | str = _key("packages")  # or "auto"
    s3_read: tuple[str, ...] = _key("s3-read")
    s3_write: tuple[str, ...] = _key("s3-write")
    memory_tiers: tuple[int, ...] = _key("memory-tiers")
    snapstart: bool = _key("snapstart")
    image: bool = _key("image.enabled")
    # Scheduling.
    max_concurrency: int | None = _key("max-concurrency")  # None only before from_config
    max_tasks: int = _key("batch.max-tasks")
    max_bytes: int = _key("batch.max-bytes")
    per_slot: int = _key("batch.per-slot")
    target_seconds: float = _key("batch.target-seconds")
    probe_tasks: int = _key("batch.probe-tasks")
    inline_limit: int = _key("spill.inline-limit")
    max_object_bytes: int = _key("spill.max-object-bytes")
    kms_key_id: str | None = _key("spill.kms-key-id")
    # Attempts.
    task_retries: int = _key("task-retries")
    escalate_memory: bool = _key("escalate-memory")
    speculation: bool = _key("speculation.enabled")
    speculation_multiplier: float = _key("speculation.multiplier")
    speculation_min_seconds: float = _key("speculation.min-seconds")
    infra_retries: int = _key("infra-retries")
    retry_backoff: float = _key("retry-backoff")
    throttle_retries: int = _key("throttle-retries")
    throttle_backoff: float = _key("throttle-backoff")
    invoke_client: str = _key("invoke-client")
    # What the cluster holds.
    lease_refresh: float = _key("lease.refresh")
    lease_ttl: float = _key("lease.ttl")
    # The embedded local Lambda.
    local_concurrency_limit: int = _key("local.concurrency-limit")
    local_idle_timeout: float = _key("local.idle-timeout")

    @classmethod
    def from_config(cls, local: bool | None = None, **overrides: Any) -> Settings:
        """The settings of dask.config, with ``overrides`` (not None) taking precedence.

        Every ``lambda.*`` value is checked against the schema first (:func:`check_config`),
        and every override as it is taken. ``max-concurrency`` null becomes 100 against AWS
        and the number of cores (at least 2) on a local Lambda (``local``; by default, when no
        function is named or the endpoint is this machine's)."""
        unknown = set(overrides) - {spec.name for spec in fields(cls)}
        if unknown:
            raise TypeError(f"Unknown settings: {', '.join(sorted(unknown))}")
        values, keys = {}, set()
        for spec in fields(cls):
            key = spec.metadata["key"]
            keys.add(key)
            given = overrides.get(spec.name)
            value = config.setting(key) if given is None else given
            values[spec.name] = checked(
                key, value, spec.name if given is not None else None,
                cluster_argument=spec.name if spec.name in overrides else None,
            )  # fmt: skip
        check_config(skip=keys)  # the settings the client does not hold, read where they apply
        if values["max_concurrency"] is None:
            if local is None:
                local = is_local_lambda(values["function_name"], values["endpoint_url"])
            values["max_concurrency"] = max(2, os.cpu_count() or 2) if local else 100
        return cls(**values)

    @property
    def on_local_lambda(self) -> bool:
        """Whether the function runs on a local Lambda: none named (the embedded one), or a
        loopback endpoint (``dask-lambda local``'s exports)."""
        return is_local_lambda(self.function_name, self.endpoint_url)


def is_local_lambda(function_name: str | None, endpoint_url: str | None) -> bool:
    """See :attr:`Settings.on_local_lambda`."""
    from .aws import is_loopback, lambda_endpoint

    return function_name is None or is_loopback(lambda_endpoint(endpoint_url))


INVOKE_CLIENTS = ("lean", "boto3")
_SCHEMA_FILE = Path(__file__).with_name("lambda-schema.yaml")
_TYPES: dict[str, tuple[type, ...]] = {"int": (int,), "float": (int, float), "bool": (bool,),
                                       "str": (str,)}  # fmt: skip
_WORDS = {"int": "a whole number", "float": "a number", "bool": "true or false",
          "str": "a string", "list[str]": "a list of strings",
          "list[int]": "a list of whole numbers"}  # fmt: skip


@functools.cache
def schema() -> dict:
    """``{dotted key: rule}`` of every ``lambda.*`` setting (``lambda-schema.yaml``)."""
    rules: dict[str, dict] = {}

    def walk(node: dict, prefix: str) -> None:
        for name, value in node.items():
            if isinstance(value, dict) and "type" not in value:
                walk(value, f"{prefix}{name}.")
            else:
                rules[f"{prefix}{name}"] = value

    walk(yaml.safe_load(_SCHEMA_FILE.read_text()), "")
    return rules


def environment_variable(key: str) -> str:
    """The variable that sets ``lambda.<key>``: ``batch.max-tasks`` is
    ``DASK_LAMBDA__BATCH__MAX_TASKS``."""
    return "DASK_LAMBDA__" + key.upper().replace("-", "_").replace(".", "__")


def checked(
    key: str, value: Any, argument: str | None = None, cluster_argument: str | None = None
) -> Any:
    """``value`` of ``lambda.<key>`` converted to its schema type (a string from the environment
    becomes a number or a bool), or ``ValueError`` naming where it was set (``argument``: given
    as that argument) and what is valid (``cluster_argument``: a LambdaCluster argument sets
    it too)."""
    rule = schema()[key]
    try:
        return _convert(rule, value)
    except (TypeError, ValueError, KeyError):
        pass
    given = f" (the argument {argument}=)" if argument else ""
    ways = [f"LambdaCluster({cluster_argument}=...)"] if cluster_argument else []
    ways += [f"dask.config.set({{'lambda.{key}': ...}})", environment_variable(key)]
    raise ValueError(
        f"lambda.{key} is {value!r}{given}: it must be {_valid(rule)} ({rule['description']})."
        f" It is set by {', '.join(ways[:-1])} or {ways[-1]}."
    ) from None


def check_config(skip: Iterable[str] = ()) -> None:
    """Check every ``lambda.*`` value of dask.config against the schema (``ValueError``), but
    for the keys in ``skip``."""
    skip = set(skip)
    for key in schema():
        if key in skip:
            continue
        try:
            value = config.setting(key)
        except KeyError:
            continue
        checked(key, value)


def _convert(rule: dict, value: Any) -> Any:
    kind = rule["type"]
    if value is None:
        if rule.get("nullable"):
            return None
        raise TypeError(kind)
    if isinstance(value, str) and value in rule.get("also", ()):
        return value
    if kind.startswith("list["):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple, set)):
            raise TypeError(kind)
        item = {"type": kind[5:-1], "min": rule.get("min"), "max": rule.get("max")}
        items = [_convert(item, v) for v in value]
        return tuple(sorted(set(items))) if kind == "list[int]" else tuple(items)
    if isinstance(value, str) and kind in ("int", "float", "bool"):
        value = yaml.safe_load(value)  # as dask reads an environment variable
    if not isinstance(value, _TYPES[kind]) or (kind != "bool" and isinstance(value, bool)):
        raise TypeError(kind)
    if kind == "float":
        value = float(value)
    if rule.get("min") is not None and value < rule["min"]:
        raise ValueError(kind)
    if rule.get("max") is not None and value > rule["max"]:
        raise ValueError(kind)
    if rule.get("choices") is not None and value not in rule["choices"]:
        raise ValueError(kind)
    return value


def _valid(rule: dict) -> str:
    words = _WORDS[rule["type"]]
    if rule.get("choices"):
        words = "one of " + ", ".join(map(str, rule["choices"]))
    low, high = rule.get("min"), rule.get("max")
    if low is not None and high is not None:
        words += f" from {low} to {high}"
    elif low is not None:
        words += f" of at least {low}"
    elif high is not None:
        words += f" of at most {high}"
    also = "".join(f", or {word!r}" for word in rule.get("also", ()))
    return words + also + (", or null" if rule.get("nullable") else "")


REFERENCE_START = ".. configuration reference: generated from lambda-schema.yaml"
REFERENCE_END = ".. end of the configuration reference"


def reference() -> str:
    """The configuration reference (reStructuredText) of every ``lambda.*`` key: meaning, valid
    values, default and environment variable, from the schema and ``lambda.yaml``;
    ``docs/configuration.rst`` holds it between :data:`REFERENCE_START` and
    :data:`REFERENCE_END`."""
    defaults = yaml.safe_load(config.DEFAULTS_FILE.read_text())["lambda"]
    entries = [REFERENCE_START, ""]
    for key, rule in schema().items():
        value: Any = defaults
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        default = "null" if value is None else yaml.safe_dump(value, default_flow_style=True)
        default = default.strip().removesuffix("...").strip()
        entries += [
            f"``lambda.{key}`` (``{environment_variable(key)}``)",
            f"    {rule['description']}. {_valid(rule).capitalize()}; default ``{default}``.",
            "",
        ]
    return "\n".join([*entries, REFERENCE_END]) + "\n"


def write_reference(path: Path | None = None) -> None:
    """Rewrite the reference in ``docs/configuration.rst`` (:func:`reference`)."""
    path = path or Path(__file__).parents[1] / "docs" / "configuration.rst"
    text = path.read_text()
    if REFERENCE_START in text:
        before = text[: text.index(REFERENCE_START)]
        after = text[text.index(REFERENCE_END) + len(REFERENCE_END) :].lstrip("\n")
    else:
        before, after = text.rstrip("\n") + "\n\nReference\n---------\n\n", ""
    path.write_text(before + reference() + ("\n" + after if after else ""))


if __name__ == "__main__":
    write_reference()
