"""What the scheduler and the executor run on: a frozen :class:`Backend` and its :class:`Settings`.

:class:`~dask_lambda.cluster.LambdaCluster` owns the function, the bucket and their lifecycle;
when it starts it builds one :class:`Backend` — the function's name, memory, architecture and
timeout, the invoker, the spill store, the invocation pool, the scheduling settings and the spill
prefix — and hands that, not itself, to :mod:`.scheduler` and :mod:`.executor`. So imports flow
one way (cluster → scheduler → backend) and nothing below the cluster can reach back into it.

:func:`settings_from_config` reads every scheduling setting from ``lambda.yaml`` / dask.config
in one loop, each overridable by an argument (dask's ``override_with``).
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, fields
from typing import Any

from . import config
from .function.values import Store
from .invoker import Invoker
from .ownership import Ledger
from .persist import Persisted
from .planner import TaskProfile


@dataclass(frozen=True)
class Settings:
    """Scheduling settings of a cluster (each documented in ``lambda.yaml``)."""

    max_concurrency: int
    max_tasks: int
    max_bytes: int
    per_slot: int
    target_seconds: float
    probe_tasks: int
    inline_limit: int
    max_object_bytes: int
    kms_key_id: str | None
    task_retries: int
    escalate_memory: bool
    speculation: bool
    speculation_multiplier: float
    speculation_min_seconds: float


# Settings field -> its lambda.yaml key.
SETTING_KEYS = {
    "max_concurrency": "max-concurrency",
    "max_tasks": "batch.max-tasks",
    "max_bytes": "batch.max-bytes",
    "per_slot": "batch.per-slot",
    "target_seconds": "batch.target-seconds",
    "probe_tasks": "batch.probe-tasks",
    "inline_limit": "spill.inline-limit",
    "max_object_bytes": "spill.max-object-bytes",
    "kms_key_id": "spill.kms-key-id",
    "task_retries": "task-retries",
    "escalate_memory": "escalate-memory",
    "speculation": "speculation.enabled",
    "speculation_multiplier": "speculation.multiplier",
    "speculation_min_seconds": "speculation.min-seconds",
}
_CONVERT = {"int": int, "float": float, "bool": bool}


def settings_from_config(**overrides: Any) -> Settings:
    """:class:`Settings` from dask.config, with ``overrides`` (not None) taking precedence."""
    values = {}
    for spec in fields(Settings):
        value = config.setting(SETTING_KEYS[spec.name], override_with=overrides.get(spec.name))
        convert = _CONVERT.get(str(spec.type))
        values[spec.name] = convert(value) if convert is not None and value is not None else value
    if values["max_concurrency"] < 1:
        raise ValueError(f"max_concurrency must be at least 1, got {values['max_concurrency']}")
    return Settings(**values)


@dataclass(frozen=True)
class Backend:
    """A running function and everything needed to send it batches.

    Attributes
    ----------
    function_name, memory_mb, architecture, timeout
        The function as Lambda describes it.
    invoker, store, pool
        Sends batches (:class:`~.invoker.Invoker`), holds spilled data (a
        :class:`~.function.values.Store`), runs invocations.
    ledger
        Who holds each stored object (:mod:`.ownership`): the only deleter of stored values.
    tiers
        ``{memory MB: invoker}`` of the function's memory tiers (:func:`~.deploy.tier_name`).
    settings, prefix
        Scheduling settings; the S3 prefix every compute writes under.
    """

    function_name: str
    memory_mb: int
    architecture: str
    timeout: int
    invoker: Invoker
    store: Store
    pool: ThreadPoolExecutor
    settings: Settings
    prefix: str
    ledger: Ledger
    late_cleanups: list[threading.Thread] = field(default_factory=list, compare=False)
    tiers: dict[int, Invoker] = field(default_factory=dict, compare=False)
    # What kinds of tasks were learned to cost, across this cluster's computes.
    profile: TaskProfile = field(default_factory=TaskProfile, compare=False)
    # What the cluster's persisted collections hold in S3.
    persisted: Persisted = field(default_factory=Persisted, compare=False)
    # The function runs on a local Lambda (costs in reports are what AWS would bill).
    local_endpoint: bool = False

    def invoker_for(self, memory_mb: int | None) -> Invoker:
        """The invoker of the memory tier ``memory_mb`` (None: the function itself)."""
        return self.tiers[memory_mb] if memory_mb else self.invoker

    def tier_for(self, memory_mb: float) -> int | None:
        """The smallest memory tier with at least ``memory_mb`` (None: the function has
        enough); ``ValueError`` naming the fix when none has."""
        if memory_mb <= self.memory_mb:
            return None
        fitting = [tier for tier in sorted(self.tiers) if tier >= memory_mb]
        if not fitting:
            raise ValueError(
                f"A task asks for {memory_mb:g} MB of memory (dask.annotate(resources="
                f"{{'memory': ...}})), but function {self.function_name!r} has"
                f" {self.memory_mb} MB and memory tiers {sorted(self.tiers) or 'none'}. Add"
                f" one: LambdaCluster(memory_tiers=[{int(memory_mb)}]) for the function it"
                f" deploys, or dask-lambda deploy {self.function_name} --memory-tiers"
                f" {int(memory_mb)} (up to 10240 MB)."
            )
        return fitting[0]

    def next_tier(self, memory_mb: int | None) -> int | None:
        """The next larger memory tier than ``memory_mb`` (None: the function), if any."""
        current = memory_mb or self.memory_mb
        larger = [tier for tier in sorted(self.tiers) if tier > current]
        return larger[0] if larger else None

    def clean_after(self, futures: list[Future], prefix: str) -> None:
        """Once ``futures`` (invocations nobody waits for) end, delete again what they wrote
        under ``prefix`` — only what nothing holds (:meth:`.Ledger.sweep`)."""

        def clean() -> None:
            wait(futures, timeout=self.timeout + 120)
            self.ledger.sweep(prefix)

        thread = threading.Thread(target=clean, daemon=True, name="dask-lambda-late-cleanup")
        thread.start()
        self.late_cleanups.append(thread)

    def join_cleanups(self) -> None:
        """Wait for every :meth:`clean_after` to finish."""
        for thread in self.late_cleanups:
            thread.join()
