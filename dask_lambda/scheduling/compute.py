"""The get function: run a Dask graph on Lambda with data that stays remote.

``get(backend, dsk, keys)`` (the cluster's :class:`~.backend.Backend`) returns the values and the
compute's :class:`~.report.ComputeReport`. It follows ``dask.local.get_async`` where it can — the
graph arrives as an expression whose ``__dask_graph__()`` runs low-level optimisation,
``convert_legacy_graph`` turns it into task-spec nodes, ``dask.order`` sets priorities and dask's
callbacks (``ProgressBar``, profilers) see the usual ``start``/``pretask``/``posttask``/``finish``
calls — and departs from it where a serverless backend must: a task's result does not come back to
the client. Every invocation returns small results inline and leaves large ones in S3 (written by
the Lambda that made them); dependent batches receive references and fetch inside Lambda. The client
downloads only the requested results.

The loop (:class:`Compute`) only dispatches: the graph is prepared before it starts
(:mod:`.graph`), batches are chosen by :mod:`.planner`, what to do when an attempt fails is
:mod:`.attempts`' decision, and one batch travels through :mod:`.invocation`.

1. Literals (``DataNode``) and values given in ``cache=`` are finished before the first
   invocation; large ones are uploaded once and travel by reference.
2. While there are free concurrency slots, :meth:`GraphState.next_batch` picks a batch; a thread
   of the backend's pool invokes the function with it.
3. When an invocation returns, its outputs' locations are recorded, its tasks are finished, ready
   aliases are resolved on the client, and data nobody needs any more is dropped.
4. On the first task error the loop stops dispatching, waits for invocations still running (so
   nothing writes after the cleanup), deletes what the compute wrote and re-raises the error with
   its original type and remote traceback. What it wrote is deleted after success too, except
   what something holds (:mod:`.ownership`): a persist's values, persisted values it read.

Values move only through the data plane (:mod:`dask_lambda.function.values`: place, read, load),
by way of the compute's :class:`~.locations.Locations`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from concurrent.futures import wait
from typing import Any

from dask.callbacks import local_callbacks, unpack_callbacks
from dask.local import nested_get

from ..attempts import BatchPolicy, run_batch
from ..backend import Backend
from ..exceptions import raise_fatal, raise_task_error
from ..function.protocol import BatchResponse, BatchSpec
from ..function.storage import compute_folder
from ..ownership import Claim
from ..remote.invocation import pickle_spec, send_batch
from ..remote.invoker import InvokeStats
from ..report import ComputeReport
from .graph import prepare
from .inflight import InFlight
from .locations import Locations
from .planner import GraphState, Limits

SPECULATION_CHECK = 0.25  # seconds between looks for stragglers

__all__ = ["Compute", "get"]


def get(
    backend: Backend,
    dsk,
    keys,
    cache: Mapping | None = None,
    callbacks=None,
    retries: int | None = None,
    speculation: bool | None = None,
    persist: bool = False,
    **kwargs,
) -> tuple[Any, ComputeReport]:
    """Compute ``keys`` of ``dsk`` on the backend's function; return the values and the report.

    ``retries`` runs a task whose own code raised again, up to that many times (as
    ``distributed``'s ``compute(retries=...)``); the default is ``lambda.task-retries``.
    ``speculation`` starts a second copy of a batch that runs far longer than the others
    (``lambda.speculation``); the first copy to finish wins.
    """
    compute = Compute(backend, dsk, keys, cache, retries, speculation, persist)
    return compute.run(callbacks), compute.report


class Compute:
    """One compute of ``keys`` over graph ``dsk`` on ``backend``: :meth:`run` returns the values;
    :attr:`report` is filled as it goes, also when it fails."""

    def __init__(
        self,
        backend: Backend,
        dsk,
        keys,
        cache: Mapping | None = None,
        retries: int | None = None,
        speculation: bool | None = None,
        persist: bool = False,
    ):
        self._cpu_started = time.thread_time()  # planning and bookkeeping: the report's
        self._cpu_lock = threading.Lock()  # the pool threads add their CPU to the report
        prepared = prepare(dsk, keys, cache, backend.tier_for)
        settings = backend.settings
        self.backend = backend
        self.persist = persist
        self.dsk, self.graph, self.keys = prepared.dsk, prepared.graph, prepared.keys
        self.requested = prepared.requested
        self.ledger = backend.ledger
        self.id = self.ledger.new_id()
        self.folder = compute_folder(backend.prefix, self.id)  # all it writes, deleted at the end
        self.kept: Claim | None = None  # a persist's values, once it has them
        self.stats = InvokeStats()
        self.report = ComputeReport(
            compute_id=self.id,
            tasks=len(self.dsk),
            memory_mb=backend.memory_mb,
            architecture=backend.architecture,
            local=backend.local_endpoint,
            dask_graph_cpu_seconds=prepared.dask_cpu_seconds,
        )
        self.location = Locations(prepared.location, backend.store, backend.prefix, self.id,
                                  settings.inline_limit, settings.max_object_bytes,
                                  self.report)  # fmt: skip
        for ref in prepared.reads:  # this cluster's and not released, or refused now
            ref.check_owner(self.ledger)
        self.reading = self.ledger.claim(ref.location for ref in prepared.reads)  # while it runs
        self.state = GraphState(self.graph, self.keys, done=self.location,
                                priority=prepared.priority)  # fmt: skip
        task_retries = int(settings.task_retries if retries is None else retries)
        annotations = prepared.annotations
        self.policy = BatchPolicy(
            retries_of=lambda key: int(annotations.get(key, {}).get("retries", task_retries)),
            tier_of=prepared.tiers.get,
            next_tier=backend.next_tier if settings.escalate_memory else None,
        )
        self.speculation = bool(settings.speculation if speculation is None else speculation)
        self.limits = Limits(
            max_tasks=settings.max_tasks,
            max_bytes=settings.max_bytes,
            per_slot=settings.per_slot,
            target_seconds=settings.target_seconds,
            probe_tasks=settings.probe_tasks,
            # Values a batch makes, as dask.sizeof counts them: a quarter of the function's
            # memory leaves room for their pickled copies, inputs and the runtime itself.
            memory_bytes=backend.memory_mb * 2**20 / 4,
            input_bytes=self.location.inline_size,
            profile=backend.profile,
            group=prepared.tiers.get if prepared.tiers else None,
        )

    def run(self, callbacks=None) -> Any:
        """Run the compute with dask's ``callbacks``; return the requested values."""
        with local_callbacks(callbacks) as active:
            values = self._loop(active)
        return nested_get(self.requested, values)

    # -- the loop -------------------------------------------------------------------------------
    def _loop(self, callbacks: list) -> dict:
        started = time.perf_counter()
        _, _, pretask_cbs, posttask_cbs, _ = unpack_callbacks(callbacks)
        for cb in callbacks:
            if cb[0]:
                cb[0](self.dsk)
        for cb in callbacks:
            if cb[1]:
                cb[1](self.dsk, self.state.state)
        concurrency = self.backend.settings.max_concurrency
        flight = InFlight()
        failed = False
        try:
            self._resolve_aliases(posttask_cbs)
            while not self.state.complete:
                while len(flight) < concurrency:
                    free = concurrency - len(flight)
                    batch = self.state.next_batch(free, self.limits, free + flight.probes())
                    if batch is None:
                        break
                    for key in batch.keys:
                        for cb in pretask_cbs:
                            cb(key, self.dsk, self.state.state)
                    spec = self._spec(batch)
                    flight.launch(self.backend.pool.submit(self._attempt, spec), batch, spec)
                if not len(flight):
                    raise RuntimeError("dask-lambda scheduler stalled with tasks left to run")
                for future in flight.ended(SPECULATION_CHECK if self.speculation else None):
                    batch, response = flight.settle(future)
                    if batch is not None:
                        self._finished(batch, response, posttask_cbs)
                        self._resolve_aliases(posttask_cbs)
                if self.speculation:
                    self._speculate(flight)
            return self._persisted() if self.persist else self._results()
        except BaseException:
            failed = True
            wait(flight.futures())  # no invocation may write after the cleanup below
            raise
        finally:
            stragglers = flight.futures()  # copies of batches a faster twin finished
            if stragglers:
                self.backend.clean_after(stragglers, self.folder)
            self.report.scheduler_cpu_seconds = time.thread_time() - self._cpu_started
            self._cleanup(failed, started)
            for cb in callbacks:
                if cb[4]:
                    cb[4](self.dsk, self.state.state, failed)

    def _spec(self, batch) -> BatchSpec:
        """What the function receives for ``batch``: its nodes and where its inputs are."""
        nodes = [self.graph[k] for k in batch.keys]
        inputs = {k: self.location.ref(k) for k in batch.inputs}
        return BatchSpec(self.id, list(batch.keys), nodes, batch.outputs, inputs)

    def _speculate(self, flight: InFlight) -> None:
        """Start a second copy of batches running far longer than the finished ones."""
        settings = self.backend.settings
        for spec, batch in flight.stragglers(settings.speculation_multiplier,
                                              settings.speculation_min_seconds):  # fmt: skip
            if len(flight) >= settings.max_concurrency:
                return
            flight.launch(self.backend.pool.submit(self._attempt, spec), batch, spec)
            self.report.speculations += 1

    def _resolve_aliases(self, posttask_cbs: list) -> None:
        while aliases := self.state.pop_ready_aliases():
            for key in aliases:
                self.location.alias(key, self.graph[key].target)
            self.state.finish(aliases)
            for key in aliases:
                for cb in posttask_cbs:
                    cb(key, None, self.dsk, self.state.state, 0)

    def _finished(self, batch, response: BatchResponse, posttask_cbs: list) -> None:
        self.backend.profile.observe(batch.keys, response.timings)
        for key, result in zip(batch.outputs, response.results, strict=True):
            if result.status != "ok":  # errors were raised in _attempt
                raise RuntimeError(f"dask-lambda: result of {key!r} missing ({result.status})")
            self.location.record(key, result.location())
        self.report.bytes_inline += response.stats.get("inline_bytes", 0)
        self.report.bytes_spilled += response.stats.get("s3_bytes_written", 0)
        self.state.finish(batch.keys)
        for key in batch.keys:
            for cb in posttask_cbs:
                cb(key, None, self.dsk, self.state.state, 0)
        for key in (*batch.inputs, *batch.outputs):
            if key in self.location and self.state.releasable(key):
                self.location.drop(key)

    # -- one batch (runs in the backend's pool) -------------------------------------------------
    def _attempt(self, spec: BatchSpec) -> BatchResponse:
        """Run ``spec`` under the attempt policy; raise the first task error it still holds."""
        started = time.thread_time()
        try:
            response = run_batch(spec, self._send, self.policy, self.stats)
        finally:
            with self._cpu_lock:
                self.report.send_cpu_seconds += time.thread_time() - started
        name, ours = self.backend.function_name, self.backend.deployed_by_cluster
        if response.fatal is not None:
            raise_fatal(response.fatal, name, ours)
        if response.errors:
            error = response.errors[min(response.errors)]
            raise_task_error(error, spec.keys[error["index"]], name, ours)
        return response

    def _send(self, spec: BatchSpec, tier: int | None, split: bool, confirm_memory: bool):
        return send_batch(self.backend, pickle_spec(spec), spec.keys, self.folder, self.stats,
                          split=split, memory_tier=tier, confirm_memory=confirm_memory)  # fmt: skip

    # -- the end --------------------------------------------------------------------------------
    def _results(self) -> dict:
        return self.location.fetch(self.keys, self.backend.pool)

    def _persisted(self) -> dict:
        """Where the requested values are, left there: what a persist returns."""
        found = self.location.refs(self.keys)
        self.kept = self.ledger.claim(found.values(), lasting=True)
        return found

    def _may_have_written(self, failed: bool) -> bool:
        """Whether anything may be under the compute's folder: a value or request stored, or
        an attempt whose writes no response accounts for (a failure, a retry, a split, an
        escalation, a speculative copy)."""
        stats = self.stats
        return bool(
            failed or self.report.bytes_spilled or stats.spilled_requests or stats.infra_retries
            or stats.splits or stats.escalations or stats.task_retries or self.report.speculations
        )  # fmt: skip

    def _cleanup(self, failed: bool, started: float) -> None:
        if failed and self.kept is not None:
            self.kept.release("a failed persist")
            self.kept = None
        try:
            if self._may_have_written(failed):  # else no S3 round trip: there is nothing
                held = self.ledger.sweep(self.folder)  # all it wrote but what something holds
                left = len(self.backend.store.list(self.folder + "/")) - held
                self.report.s3_objects_left = left
        finally:
            self.reading.release("the end of the compute")
            self.report.count_invocations(self.stats)
            self.report.failed = failed
            self.report.wall_time = time.perf_counter() - started
            self.report.bytes_persisted_held = self.backend.persisted.nbytes
