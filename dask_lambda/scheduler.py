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

The loop (:class:`Compute`):

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

Values move only through the data plane (:mod:`.function.values`: place, read, load).
"""

from __future__ import annotations

import collections
import functools
import queue
import statistics
import time
from collections.abc import Mapping
from concurrent.futures import Future, wait
from typing import Any, NamedTuple

import numpy as np
from dask._task_spec import DataNode, Task, TaskRef, convert_legacy_graph
from dask.callbacks import local_callbacks, unpack_callbacks
from dask.core import flatten
from dask.local import nested_get
from dask.order import order
from dask.utils import ensure_dict

from .backend import Backend
from .batch import BatchResponse, fetch_value, invoke, pickle_spec
from .exceptions import LambdaFunctionError, raise_fatal, raise_task_error
from .function import values
from .function.protocol import BatchSpec, Inline, Result, Stored
from .function.storage import object_name
from .invoker import InvokeStats, SplitBatch, failure_kind
from .ownership import Claim
from .persist import persisted_ref, persisted_refs
from .planner import GraphState, Limits
from .report import ComputeReport

SPECULATION_CHECK = 0.25  # seconds between looks for stragglers


class Value(NamedTuple):
    """A value the client holds (a graph literal or a ``cache=`` entry), not yet serialized."""

    value: Any


Location = Inline | Stored | Value


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


def task_annotations(collection) -> dict:
    """``{key: {name: value}}`` from ``dask.annotate(...)``: an expression's
    ``__dask_annotations__()`` or a high-level graph's layers; a callable annotation is called
    with the key, as distributed does."""
    by_name: dict = {}
    if hasattr(collection, "__dask_annotations__"):
        by_name = collection.__dask_annotations__() or {}
    found: dict = {}
    for name, per_key in by_name.items():
        for key, value in per_key.items():
            found.setdefault(key, {})[name] = value
    for layer in getattr(collection, "layers", {}).values():
        for key in layer.get_output_keys() if getattr(layer, "annotations", None) else ():
            found.setdefault(key, {}).update(layer.annotations)
    return {
        key: {name: value(key) if callable(value) else value for name, value in values.items()}
        for key, values in found.items()
    }


_STORE_FUNCTIONS = {("dask.array.core", "load_store_chunk"), ("dask.array.core", "store_chunk")}


def _kind(func: Any) -> str | None:
    """``"disk-shuffle"``, ``"store"`` or None: what a task's function may do only locally."""
    while isinstance(func, functools.partial):
        func = func.func
    module = getattr(func, "__module__", None) or ""
    kind = type(func)
    if module.startswith("partd") or (
        kind.__module__ == "dask.dataframe.shuffle" and kind.__name__ == "maybe_buffered_partd"
    ):
        return "disk-shuffle"
    if (module, getattr(func, "__name__", None)) in _STORE_FUNCTIONS:
        return "store"
    return None


def _stores_into_client_memory(task: Task, dsk: Mapping) -> bool:
    """``da.store(x, target)`` whose target is a numpy array (or memmap) of this process."""
    target = task.args[1] if len(task.args) > 1 else None
    for _ in range(3):  # a reference to a bound argument that is itself a reference
        if isinstance(target, TaskRef):
            target = dsk.get(target.key)
    if isinstance(target, DataNode):
        target = target.value
    return isinstance(target, np.ndarray)


def _subgraph_scope(task: Task, inner: dict, graph: Mapping) -> Mapping:
    """What names mean inside a fused subgraph, ``_execute_subgraph(inner, out, inkeys, *args)``:
    its own nodes, its input keys bound to the task's arguments, then the outer graph."""
    args = task.args
    bound = {}
    if len(args) >= 3 and args[0] is inner and isinstance(args[2], tuple):
        bound = dict(zip(args[2], args[3:], strict=False))
    return collections.ChainMap(inner, bound, graph)


_CLIENT_PROTOCOLS = {"file", "local", "memory"}


def _client_path(value: Any) -> str | None:
    """The path, if ``value`` (an fsspec ``OpenFile``, or a dask IO function holding ``fs``)
    reads or writes this machine's filesystem or this process's memory filesystem."""
    fs = getattr(value, "fs", None)
    if fs is None or not type(fs).__module__.startswith("fsspec"):
        return None
    protocol = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    if not _CLIENT_PROTOCOLS.intersection(protocol):
        return None
    return str(getattr(value, "path", None) or "a local path")


def _refuse_client_path(key, path: str) -> None:
    raise ValueError(
        f"Task {key!r} reads or writes {path!r} on this machine's filesystem, which tasks"
        " running in Lambda cannot see: on AWS its writes would vanish into each invocation's"
        " own /tmp and its reads find nothing. Use an s3:// URL instead (deploy s3fs with the"
        " function: LambdaCluster(packages=['s3fs']) or dask-lambda deploy --include s3fs), or,"
        " for a function that mounts the same storage at the same path (EFS), set"
        " lambda.allow-local-paths: true."
    )


def refuse_what_cannot_run_remotely(dsk: Mapping) -> None:
    """Raise ``ValueError`` for a graph that only works inside one process, before anything runs.

    - A shuffle through a ``partd`` folder on local disk writes every partition to one process's
      ``/tmp`` and reads it back in later tasks; on Lambda every execution environment has its own
      ``/tmp``, so it would silently lose data. Graphs built while a cluster runs use the
      task-based shuffle (see :class:`~.cluster.LambdaCluster`).
    - ``da.store`` into a numpy array or memmap of this process: each task would write into its
      own copy in Lambda and the target would silently stay as it was.
    - Reading or writing this machine's files (fsspec local paths, which dask makes absolute
      when the collection is built: ``to_textfiles('data/*.json')``, ``read_csv``,
      ``to_parquet``, ...): in Lambda the paths name the function's own filesystem. Refused
      unless ``lambda.allow-local-paths`` (a function that mounts shared storage there).
    """
    from . import config

    check_paths = not config.setting("allow-local-paths")
    kinds: dict[int, str | None] = {}  # per distinct function (the graph keeps them alive)
    for key, node in dsk.items():
        stack = [(node, dsk)]
        while stack:  # the node, its nested tasks, and fused subgraphs (dicts of nodes)
            task, graph = stack.pop()
            if not isinstance(task, Task):
                continue
            kind = kinds.get(id(task.func), "?")
            if kind == "?":
                kind = kinds[id(task.func)] = _kind(task.func)
                if check_paths and (path := _client_path(task.func)) is not None:
                    _refuse_client_path(key, path)
            if kind == "disk-shuffle":
                raise ValueError(
                    f"Task {key!r} belongs to a shuffle through local disk (partd), which cannot"
                    " work on Lambda: every invocation has its own /tmp, so the data would be"
                    " lost. Build the collection with the task-based shuffle: pass"
                    " shuffle='tasks' (bag.groupby, DataFrame.shuffle/set_index/groupby) or set"
                    " dask.config.set({'dataframe.shuffle.method': 'tasks'}) before building it."
                    " A running LambdaCluster makes 'tasks' the default."
                )
            if kind == "store" and _stores_into_client_memory(task, graph):
                raise ValueError(
                    f"Task {key!r} stores into a numpy array (or memmap) of this process, which"
                    " tasks running in Lambda cannot write to: the target would silently stay as"
                    " it was. Store into remote storage (e.g. zarr on S3) instead, or compute and"
                    " assign here: target[...] = x.compute()."
                )
            for arg in task.args:
                if check_paths:
                    value = arg.value if isinstance(arg, DataNode) else arg
                    if (path := _client_path(value)) is not None:
                        _refuse_client_path(key, path)
                if isinstance(arg, Task):
                    stack.append((arg, graph))
                elif isinstance(arg, dict):  # a fused subgraph: its inputs are the task's args
                    stack.extend((n, _subgraph_scope(task, arg, graph)) for n in arg.values()
                                 if isinstance(n, Task))  # fmt: skip


class _InFlight:
    """Invocations in flight: one per batch, two when a straggler got a speculative copy.

    The first copy of a batch to succeed settles it; a copy that fails while its twin still runs
    is ignored, so speculation never turns a success into a failure.
    """

    def __init__(self) -> None:
        self._batch: dict[Future, Any] = {}
        # Futures that ended, in the order they ended: waiting on this queue costs the same with
        # ten invocations in flight or three thousand (concurrent.futures.wait re-registers on
        # every future each time it is called).
        self._ended: queue.SimpleQueue[Future] = queue.SimpleQueue()
        self._probes = 0
        self._spec: dict[Any, BatchSpec] = {}
        self._started: dict[Future, float] = {}
        self._copies: dict[Any, int] = {}  # copies ever launched, per batch
        self._live: dict[Any, int] = {}  # copies still in flight, per batch
        self._settled: set = set()  # the batches themselves, so no id can be reused
        self.durations: list[float] = []

    def __len__(self) -> int:
        return len(self._batch)

    def futures(self) -> list[Future]:
        return list(self._batch)

    def probes(self) -> int:
        """Invocations in flight that measure kinds of tasks not yet timed."""
        return self._probes

    def launch(self, future: Future, batch, spec: BatchSpec) -> None:
        self._batch[future] = batch
        self._probes += bool(batch.probe)
        future.add_done_callback(self._ended.put)
        self._spec[batch] = spec
        self._started[future] = time.monotonic()
        self._copies[batch] = self._copies.get(batch, 0) + 1
        self._live[batch] = self._live.get(batch, 0) + 1

    def settle(self, future: Future) -> tuple[Any, dict | None]:
        """``(batch, response)`` if ``future`` settles its batch, else ``(None, None)``."""
        batch = self._batch.pop(future)
        self._probes -= bool(batch.probe)
        started = self._started.pop(future)
        self._live[batch] -= 1
        if batch in self._settled:
            return None, None
        twin_running = self._live[batch] > 0
        try:
            response = future.result()
        except BaseException:
            if twin_running:
                return None, None
            raise
        self._settled.add(batch)
        self.durations.append(time.monotonic() - started)
        return batch, response

    def ended(self, timeout: float | None) -> list[Future]:
        """Invocations that ended: at least one unless ``timeout`` seconds pass first."""
        try:
            ended = [self._ended.get(timeout=timeout)]
        except queue.Empty:
            return []
        while True:
            try:
                ended.append(self._ended.get_nowait())
            except queue.Empty:
                return ended

    def stragglers(self, multiplier: float, min_seconds: float) -> list[tuple[BatchSpec, Any]]:
        """Batches with one copy, running longer than ``multiplier`` x the median duration."""
        if len(self.durations) < 3:
            return []
        limit = max(min_seconds, multiplier * statistics.median(self.durations))
        now = time.monotonic()
        return [
            (self._spec[batch], batch)
            for future, batch in self._batch.items()
            if self._copies[batch] == 1 and now - self._started[future] > limit
        ]


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
        self.persist = persist
        self.annotations = task_annotations(dsk)
        if not isinstance(dsk, Mapping):
            dsk = dsk.__dask_graph__()
        dsk = convert_legacy_graph(ensure_dict(dsk))
        dask_cpu = time.thread_time() - self._cpu_started  # dask's own graph work, and order's
        refuse_what_cannot_run_remotely(dsk)
        settings = backend.settings
        self.backend = backend
        self.dsk = dsk
        self.requested = keys
        self.keys = list(flatten(keys)) if isinstance(keys, list) else [keys]
        self.task_retries = int(settings.task_retries if retries is None else retries)
        self.escalate_memory = settings.escalate_memory
        self.speculation = bool(settings.speculation if speculation is None else speculation)
        self.ledger = backend.ledger
        self.id = self.ledger.new_id()
        self.prefix = backend.prefix
        self.kept: Claim | None = None  # a persist's values, once it has them
        self.stats = InvokeStats()
        self.report = ComputeReport(
            compute_id=self.id,
            tasks=len(dsk),
            memory_mb=backend.memory_mb,
            architecture=backend.architecture,
            local=backend.local_endpoint,
        )
        cache = dict(cache or {})
        reads = persisted_refs(dsk)  # this cluster's, not released: refused before anything runs
        for ref in reads:
            ref.check_owner(self.ledger)
        self.reading = self.ledger.claim(ref.location for ref in reads)  # held while it runs
        self.location: dict[Any, Location] = {k: Value(v) for k, v in cache.items()}
        for key, node in dsk.items():
            if isinstance(node, DataNode) and key not in cache:
                self.location[key] = Value(node.value)
            elif (ref := persisted_ref(node)) is not None:  # data a persist left in the cloud
                self.location[key] = ref.location
        graph = {k: n for k, n in dsk.items() if k not in self.location}
        ordering = time.thread_time()
        priority = order(graph) if graph else {}
        dask_cpu += time.thread_time() - ordering
        self.state = GraphState(graph, self.keys, done=self.location, priority=priority)
        self.graph = graph
        self.tier = self._memory_tiers(self.annotations, graph)
        self.profile = backend.profile
        self.limits = Limits(
            target_seconds=settings.target_seconds,
            probe_tasks=settings.probe_tasks,
            # Values a batch makes, as dask.sizeof counts them: a quarter of the function's
            # memory leaves room for their pickled copies, inputs and the runtime itself.
            memory_bytes=backend.memory_mb * 2**20 / 4,
        )
        self.report.dask_graph_cpu_seconds = dask_cpu

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
        settings = self.backend.settings
        flight = _InFlight()
        failed = False
        try:
            self._resolve_aliases(posttask_cbs)
            while not self.state.complete:
                while len(flight) < settings.max_concurrency:
                    batch = self.state.next_batch(
                        settings.max_concurrency - len(flight),
                        settings.max_tasks,
                        settings.max_bytes,
                        self._input_size,
                        settings.per_slot,
                        self.profile,
                        self.limits,
                        self.tier.get if self.tier else None,
                        settings.max_concurrency - len(flight) + flight.probes(),
                    )
                    if batch is None:
                        break
                    for key in batch.keys:
                        for cb in pretask_cbs:
                            cb(key, self.dsk, self.state.state)
                    spec = BatchSpec(
                        self.id,
                        list(batch.keys),
                        [self.graph[k] for k in batch.keys],
                        batch.outputs,
                        {k: self._input_ref(k) for k in batch.inputs},
                    )
                    flight.launch(self.backend.pool.submit(self._invoke, spec), batch, spec)
                if not len(flight):
                    raise RuntimeError("dask-lambda scheduler stalled with tasks left to run")
                interval = SPECULATION_CHECK if self.speculation else None
                for future in flight.ended(interval):
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
                self.backend.clean_after(stragglers, f"{self.prefix.rstrip('/')}/{self.id}")
            self.report.scheduler_cpu_seconds = time.thread_time() - self._cpu_started
            self._cleanup(failed, started)
            for cb in callbacks:
                if cb[4]:
                    cb[4](self.dsk, self.state.state, failed)

    def _speculate(self, flight: _InFlight) -> None:
        """Start a second copy of batches running far longer than the finished ones."""
        settings = self.backend.settings
        for spec, batch in flight.stragglers(settings.speculation_multiplier,
                                              settings.speculation_min_seconds):  # fmt: skip
            if len(flight) >= settings.max_concurrency:
                return
            flight.launch(self.backend.pool.submit(self._invoke, spec), batch, spec)
            self.report.speculations += 1

    def _resolve_aliases(self, posttask_cbs: list) -> None:
        while aliases := self.state.pop_ready_aliases():
            for key in aliases:
                self.location[key] = self.location[self.graph[key].target]
            self.state.finish(aliases)
            for key in aliases:
                for cb in posttask_cbs:
                    cb(key, None, self.dsk, self.state.state, 0)

    def _finished(self, batch, response: BatchResponse, posttask_cbs: list) -> None:
        self.profile.observe(batch.keys, response.timings)
        for key, result in zip(batch.outputs, response.results, strict=True):
            if result.status != "ok":  # errors were raised in _invoke
                raise RuntimeError(f"dask-lambda: result of {key!r} missing ({result.status})")
            self.location[key] = result.location()
        self.report.bytes_inline += response.stats.get("inline_bytes", 0)
        self.report.bytes_spilled += response.stats.get("s3_bytes_written", 0)
        self.state.finish(batch.keys)
        for key in batch.keys:
            for cb in posttask_cbs:
                cb(key, None, self.dsk, self.state.state, 0)
        for key in (*batch.inputs, *batch.outputs):
            if key in self.location and self.state.releasable(key):
                del self.location[key]

    # -- one invocation (runs in the backend's pool) --------------------------------------------
    def _invoke(self, spec: BatchSpec) -> BatchResponse:
        attempts: collections.Counter = collections.Counter()  # per task whose code raised
        while True:
            response = self._run(spec)
            if response.fatal is not None:
                raise_fatal(response.fatal, self.backend.function_name)
            if not response.errors:
                return response
            failed = [spec.keys[index] for index in response.errors]
            attempts.update(failed)
            if any(attempts[key] > self._retries_of(key) for key in failed):
                break
            self.stats.add(task_retries=1)
        error = response.errors[min(response.errors)]
        raise_task_error(error, spec.keys[error["index"]], self.backend.function_name)

    def _memory_tiers(self, annotations: dict, graph: Mapping) -> dict:
        """``{key: memory tier}`` for tasks annotated ``resources={"memory": MB}`` beyond the
        function's own memory; ``ValueError`` before anything runs when no tier fits."""
        tiers = {}
        for key, named in annotations.items():
            memory = (named.get("resources") or {}).get("memory")
            if memory is not None and key in graph:
                tier = self.backend.tier_for(float(memory))
                if tier is not None:
                    tiers[key] = tier
        return tiers

    def _retries_of(self, key) -> int:
        """How often a task whose own code raised runs again: ``dask.annotate(retries=N)``, else
        the compute's ``retries``."""
        return int(self.annotations.get(key, {}).get("retries", self.task_retries))

    def _run(self, spec: BatchSpec) -> BatchResponse:
        """Run ``spec`` once on its memory tier; a runtime failure of several tasks re-runs them
        in halves; with ``lambda.escalate-memory``, a task that runs out of memory runs once
        more on the next larger tier."""
        tier = self.tier.get(spec.keys[0])
        larger = self.backend.next_tier(tier) if self.escalate_memory else None
        while True:
            try:
                return invoke(self.backend, pickle_spec(spec), spec.keys,
                              f"{self.prefix}/{self.id}", self.stats, split=len(spec.keys) > 1,
                              memory_tier=tier, confirm_memory=larger is None)  # fmt: skip
            except SplitBatch:
                self.stats.add(infra_retries=1, splits=1)
                return self._run_halves(spec)
            except LambdaFunctionError as e:
                if larger is None or failure_kind(e) != "memory":
                    raise
                self.stats.add(infra_retries=1, escalations=1)
                tier, larger = larger, None

    def _run_halves(self, spec: BatchSpec) -> BatchResponse:
        """Run the first half of ``spec``'s tasks, then the second with what it needs of the
        first; one response for ``spec`` (indices and outputs as if it had run whole)."""
        half = len(spec.keys) // 2
        parts = ((spec.keys[:half], spec.tasks[:half]), (spec.keys[half:], spec.tasks[half:]))
        wanted = set(spec.outputs)
        later_needs = {dep for task in spec.tasks[half:] for dep in task.dependencies}
        locations: dict = dict(spec.inputs)
        results: dict = {}
        errors: dict[int, dict] = {}
        timings: list = [None] * len(spec.keys)
        stats: collections.Counter = collections.Counter()
        for offset, (keys, nodes) in zip((0, half), parts, strict=True):
            needs = {dep for task in nodes for dep in task.dependencies} - set(keys)
            if any(key not in locations for key in needs):  # an input failed in the first half
                break
            outputs = [k for k in keys if k in wanted or (offset == 0 and k in later_needs)]
            part = BatchSpec(spec.compute_id, keys, nodes, outputs,
                             {k: locations[k] for k in needs})  # fmt: skip
            response = self._run(part)
            if response.fatal is not None:
                return response
            for key, result in zip(outputs, response.results, strict=True):
                results[key] = result
                if result.status == "ok":
                    locations[key] = result.location()
            for index, error in response.errors.items():
                errors[index + offset] = {**error, "index": index + offset}
            for index, span in enumerate(response.timings or ()):
                timings[index + offset] = span
            stats.update({k: v for k, v in response.stats.items()
                          if k in ("inline_bytes", "s3_bytes_written")})  # fmt: skip
        skipped = Result("skipped", None, None, 0, None)
        outcome = [results.get(k, skipped) for k in spec.outputs]
        return BatchResponse(outcome, errors, dict(stats), timings=timings)

    # -- data -----------------------------------------------------------------------------------
    def _input_size(self, key) -> int:
        where = self.location.get(key)
        return len(where.data) if isinstance(where, Inline) else 0

    def _input_ref(self, key) -> Inline | Stored:
        where = self.location[key]
        if isinstance(where, Value):
            where = self._serialize_value(key, where.value)
        return where

    def _serialize_value(self, key, value) -> Inline | Stored:
        try:
            data = values.dumps(value)
        except Exception as e:
            raise TypeError(f"Could not serialize the graph literal {key!r}: {e}") from e
        self.report.bytes_from_client += len(data)
        settings = self.backend.settings
        where = values.place(data, object_name(self.prefix, self.id, key), self.backend.store,
                             settings.inline_limit, settings.max_object_bytes,
                             f"The graph literal {key!r}")  # fmt: skip
        if isinstance(where, Stored):
            self.report.bytes_spilled += len(data)
        self.location[key] = where
        return where

    def _results(self) -> dict:
        wanted = {k: self.location[k] for k in dict.fromkeys(self.keys)}
        remote = [w for w in wanted.values() if not isinstance(w, Value)]
        store = self.backend.store
        fetched = dict(zip(remote, self.backend.pool.map(
            lambda where: fetch_value(store, where), remote), strict=True))  # fmt: skip
        values = {}
        for key, where in wanted.items():
            if isinstance(where, Value):
                values[key] = where.value
            else:
                values[key], downloaded = fetched[where]
                self.report.bytes_to_client += downloaded
        return values

    def _persisted(self) -> dict:
        """Where the requested values are, left there: what a persist returns."""
        found = {}
        for key in dict.fromkeys(self.keys):
            where = self.location[key]
            if isinstance(where, Value):
                where = self._serialize_value(key, where.value)
            found[key] = where
        self.kept = self.ledger.claim(found.values(), lasting=True)
        return found

    def _cleanup(self, failed: bool, started: float) -> None:
        compute_prefix = f"{self.prefix.rstrip('/')}/{self.id}"
        if failed and self.kept is not None:
            self.kept.release("a failed persist")
            self.kept = None
        try:
            held = self.ledger.sweep(compute_prefix)  # all it wrote but what something holds
            self.report.s3_objects_left = (
                len(self.backend.store.list(compute_prefix + "/")) - held
            )
        finally:
            self.reading.release("the end of the compute")
            stats = self.stats
            self.report.invocations = stats.invocations
            self.report.infra_retries = stats.infra_retries
            self.report.splits = stats.splits
            self.report.escalations = stats.escalations
            self.report.task_retries = stats.task_retries
            self.report.throttles = stats.throttles
            self.report.cold_starts = stats.cold_starts
            self.report.bytes_to_client += stats.response_bytes
            self.report.bytes_from_client += stats.request_bytes
            self.report.bytes_spilled += stats.spilled_request_bytes
            self.report.invocation_records = list(stats.records)
            self.report.failed = failed
            self.report.wall_time = time.perf_counter() - started
            self.report.bytes_persisted_held = self.backend.persisted.nbytes
