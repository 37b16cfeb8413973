"""What the scheduler and the executor run on: a :class:`Backend` (with its settings).

:class:`~dask_lambda.cluster.LambdaCluster` owns the function, the bucket and their lifecycle;
when it starts it builds one :class:`Backend` — the function's name, memory, architecture and
timeout, the invoker, the spill store, the invocation pool, the scheduling settings and the spill
prefix — and hands that, not itself, to :mod:`.compute` and :mod:`.executor`. So imports flow
one way (cluster → scheduler → backend) and nothing below the cluster can reach back into it.

A backend's fields never change once it is built (a frozen dataclass); some of them are shared
state with their own locks, living as long as the cluster: the invocation pool, the
:class:`~.planner.TaskProfile` learned across computes, the persisted collections' bookkeeping,
the ledger, and the late cleanups of speculative copies.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from . import limits
from .function.values import Store
from .ownership import Ledger
from .packages import PackageSync
from .persist import Persisted
from .remote.invoker import Invoker
from .scheduling.planner import TaskProfile
from .settings import Settings


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
    # The cluster deployed the function itself (its fixes are LambdaCluster arguments, not CLI).
    deployed_by_cluster: bool = False
    # Checks each batch's modules against the function's packages (adds or warns), or None.
    packages: PackageSync | None = field(default=None, compare=False)

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
                f" {int(memory_mb)} (up to {limits.MAX_MEMORY_MB} MB)."
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
