"""Preparing a graph for Lambda: everything decided once, before the first invocation.

:func:`prepare` turns what ``compute`` receives (an expression, a high-level graph or a dict)
into a :class:`PreparedGraph`: task-spec nodes (``convert_legacy_graph``), the annotations of
``dask.annotate`` (retries, memory), ``dask.order`` priorities, each annotated task's memory
tier, the persisted values it reads (checked to be this cluster's) and the values the client
already holds (literals, ``cache=``). And it refuses, before anything runs, the graphs that only
work inside one process (:func:`refuse_what_cannot_run_remotely`). Pure: no I/O.
"""

from __future__ import annotations

import collections
import functools
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
from dask._task_spec import DataNode, Task, TaskRef, convert_legacy_graph
from dask.core import flatten
from dask.order import order
from dask.utils import ensure_dict

from .. import config
from ..function.calls import load_persisted
from ..function.protocol import Inline, Stored
from ..persist import PersistedRef, persisted_ref


class Value(NamedTuple):
    """A value the client holds (a graph literal or a ``cache=`` entry), not yet serialized."""

    value: Any


Location = Inline | Stored | Value


@dataclass
class PreparedGraph:
    """A graph ready to run; see the module docstring.

    Attributes
    ----------
    dsk
        Every node, as task-spec (what dask's callbacks see).
    graph
        The nodes that run in Lambda: ``dsk`` but for what :attr:`location` already holds.
    keys
        The requested keys, flattened; ``requested`` as given (for ``nested_get``).
    location
        ``{key: Value | Inline | Stored}`` of what is known before anything runs.
    annotations
        ``{key: {name: value}}`` of ``dask.annotate``.
    tiers
        ``{key: memory tier}`` of tasks annotated with more memory than the function has.
    priority
        ``dask.order`` of :attr:`graph`.
    reads
        The persisted values the graph reads.
    dask_cpu_seconds
        CPU time of dask's own graph work (conversion, optimisation, ordering).
    """

    dsk: dict
    graph: dict
    keys: list
    requested: Any
    location: dict[Any, Location]
    annotations: dict
    tiers: dict
    priority: dict
    reads: list[PersistedRef] = field(default_factory=list)
    dask_cpu_seconds: float = 0.0


def prepare(
    dsk,
    keys,
    cache: Mapping | None = None,
    tier_for: Callable[[float], int | None] = lambda memory: None,
) -> PreparedGraph:
    """The :class:`PreparedGraph` of ``dsk`` towards ``keys``.

    ``tier_for(MB)`` is the memory tier a task annotated ``resources={"memory": MB}`` runs on
    (None: the function's own memory suffices; it raises when no tier fits).
    """
    started = time.thread_time()
    annotations = task_annotations(dsk)
    if not isinstance(dsk, Mapping):
        dsk = dsk.__dask_graph__()
    dsk = convert_legacy_graph(ensure_dict(dsk))
    dask_cpu = time.thread_time() - started
    reads = refuse_what_cannot_run_remotely(dsk)
    cache = dict(cache or {})
    location: dict[Any, Location] = {k: Value(v) for k, v in cache.items()}
    for key, node in dsk.items():
        if isinstance(node, DataNode) and key not in cache:
            location[key] = Value(node.value)
        elif (ref := persisted_ref(node)) is not None:  # data a persist left in the cloud
            location[key] = ref.location
    graph = {k: n for k, n in dsk.items() if k not in location}
    ordering = time.thread_time()
    priority = order(graph) if graph else {}
    dask_cpu += time.thread_time() - ordering
    return PreparedGraph(
        dsk=dsk,
        graph=graph,
        keys=list(flatten(keys)) if isinstance(keys, list) else [keys],
        requested=keys,
        location=location,
        annotations=annotations,
        tiers=memory_tiers(annotations, graph, tier_for),
        priority=priority,
        reads=reads,
        dask_cpu_seconds=dask_cpu,
    )


def memory_tiers(
    annotations: dict, graph: Mapping, tier_for: Callable[[float], int | None]
) -> dict:
    """``{key: memory tier}`` for tasks annotated ``resources={"memory": MB}`` beyond the
    function's own memory; ``tier_for`` raises ``ValueError`` when no tier fits."""
    tiers = {}
    for key, named in annotations.items():
        memory = (named.get("resources") or {}).get("memory")
        if memory is not None and key in graph:
            tier = tier_for(float(memory))
            if tier is not None:
                tiers[key] = tier
    return tiers


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


def refuse_what_cannot_run_remotely(dsk: Mapping) -> list[PersistedRef]:
    """Raise ``ValueError`` for a graph that only works inside one process, before anything runs;
    return the persisted values (:class:`~.persist.PersistedRef`) the graph reads.

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

    One walk over every task, its nested tasks and fused subgraphs does both (it is per task
    on the client: a bag's 1,000 partitions are 1,000 fused subgraphs).
    """
    check_paths = not config.setting("allow-local-paths")
    kinds: dict[int, str | None] = {}  # per distinct function (the graph keeps them alive)
    reads: dict[int, PersistedRef] = {}
    for key, node in dsk.items():
        # (task, the graph its references name, or the fused task and subgraph that scope it)
        stack: list = [(node, dsk, None)]
        while stack:
            task, graph, fused = stack.pop()
            if not isinstance(task, Task):
                continue
            func = task.func
            if func is load_persisted and (ref := persisted_ref(task)) is not None:
                reads.setdefault(id(ref), ref)
                continue
            kind = kinds.get(id(func), "?")
            if kind == "?":
                kind = kinds[id(func)] = _kind(func)
                if check_paths and (path := _client_path(func)) is not None:
                    _refuse_client_path(key, path)
            if kind is not None:
                if fused is not None:
                    graph = _subgraph_scope(*fused)
                _refuse_kind(key, kind, task, graph)
            for arg in (*task.args, *task.kwargs.values()) if task.kwargs else task.args:
                if check_paths:
                    value = arg.value if isinstance(arg, DataNode) else arg
                    if (
                        getattr(value, "fs", None) is not None
                        and (path := _client_path(value)) is not None
                    ):
                        _refuse_client_path(key, path)
                if isinstance(arg, Task):
                    stack.append((arg, graph, fused))
                elif isinstance(arg, dict):  # a fused subgraph: its inputs are the task's args
                    scope = (task, arg, graph if fused is None else _subgraph_scope(*fused))
                    stack.extend((n, None, scope) for n in arg.values() if isinstance(n, Task))
    return list(reads.values())


def _refuse_kind(key, kind: str, task: Task, graph: Mapping) -> None:
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
