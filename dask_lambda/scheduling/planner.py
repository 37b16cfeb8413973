"""Which tasks run together: the graph's progress and the choice of each invocation's batch.

Pure bookkeeping, no I/O. :class:`GraphState` holds, for a graph already converted to task-spec
nodes, the dependencies and dependents of every key, ``dask.order`` priorities, and which keys are
waiting, ready, running or finished. Its state dict has the fields dask's callbacks read
(``ready``, ``waiting``, ``running``, ``finished``), so ``dask.diagnostics.ProgressBar`` works.

:meth:`GraphState.next_batch` picks one invocation's work:

1. *Roots*: ready keys in priority order (``dask.order`` keeps siblings together), as many as
   ``ceil(ready / free_slots)`` so a wave of ready tasks is spread over every free runtime,
   capped by ``max_tasks``, by the bytes of inline inputs (``max_bytes``) and by time:
   :class:`TaskProfile` learns each kind of task's run time and value size (dask's
   ``key_split``) from the finished ones, and a batch stops at ``target_seconds`` of predicted
   work or ``memory_bytes`` of predicted values. Of a kind not yet
   timed, a batch takes at most ``probe_tasks``, so the first batches measure and progress
   shows from the start.
2. *Fusion*: every dependent whose inputs are all inside the batch or already finished joins it,
   repeatedly, so chains and whole sub-trees run in one invocation instead of a round trip
   through S3 per level (Wukong's clustering), while the values it makes are predicted to fit
   ``memory_bytes``. When the ready work leaves slots idle, a task's fan-out is not fused (only
   its first branch is): the other branches become ready when the batch returns and run in
   parallel instead of one after another in this invocation.
3. *Outputs*: only keys that something outside the batch needs (a dependent elsewhere or a
   requested result) are returned; everything else stays inside the invocation.

Aliases never cost an invocation: one finishes on the client as soon as its target has (its data
is the target's), or runs inside the batch of its target when fused.
"""

from __future__ import annotations

import collections
import functools
import heapq
import math
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from dask._task_spec import Alias, GraphNode
from dask.order import order
from dask.utils import key_split


@dataclass(eq=False)  # compared and hashed by identity: each batch is one piece of work
class Batch:
    """One invocation's work, as graph keys: ``keys`` in execution order, ``outputs`` and
    ``inputs``."""

    keys: list
    outputs: list
    inputs: list
    probe: bool = False  # holds tasks of a kind not yet timed: expected back soon


_kind = functools.lru_cache(maxsize=200_000)(key_split)  # asked per key when planning and learning


class TaskProfile:
    """What each kind of task (``key_split`` of its key) costs, learned as batches return: mean
    run time and mean size of its value (``dask.sizeof``, measured in Lambda). A cluster keeps
    one across its computes (thread-safe), so a repeated workload is not probed again."""

    def __init__(self) -> None:
        self._seconds: dict[str, float] = {}
        self._bytes: dict[str, float] = {}
        self._count: dict[str, int] = {}
        self._lock = threading.Lock()

    def observe(self, keys: list, timings: list | None) -> None:
        """Record the ``[start, stop, nbytes]`` of a batch's tasks (``None``: not run, or not
        among the tasks its response times: at most 64 a batch, evenly spread, see
        :data:`~dask_lambda.function.protocol.TIMING_SAMPLE`)."""
        if timings:
            with self._lock:
                self._observe(keys, timings)

    def _observe(self, keys: list, timings: list) -> None:
        for key, span in zip(keys, timings, strict=False):
            if span:
                kind = _kind(key)
                self._seconds[kind] = self._seconds.get(kind, 0.0) + (span[1] - span[0])
                self._bytes[kind] = self._bytes.get(kind, 0.0) + (span[2] if len(span) > 2 else 0)
                self._count[kind] = self._count.get(kind, 0) + 1

    def predict(self, key) -> tuple[float, float] | None:
        """``(seconds, bytes)`` a task like ``key`` takes, or None before one has finished."""
        kind = _kind(key)
        count = self._count.get(kind)
        return (self._seconds[kind] / count, self._bytes[kind] / count) if count else None


def _no_inline_bytes(key) -> int:
    return 0


@dataclass(frozen=True)
class Limits:
    """What bounds one batch, fixed for a compute (see the module docstring).

    ``max_tasks``, ``max_bytes`` (of inline inputs, as ``input_bytes(key)`` counts them) and
    ``per_slot`` always apply; with a ``profile`` (what tasks were learned to cost), so do the
    predicted run time (``target_seconds``), the tasks of kinds not yet timed (``probe_tasks``,
    0: no cap) and the predicted bytes of the values a batch makes (``memory_bytes``). With
    ``group``, a batch holds only tasks of one group (e.g. one memory tier).
    """

    max_tasks: int = 1000
    max_bytes: float = math.inf
    per_slot: int = 1
    target_seconds: float = math.inf
    probe_tasks: int = 0
    memory_bytes: float = math.inf
    input_bytes: Callable[[object], int] = _no_inline_bytes
    profile: TaskProfile | None = None
    group: Callable[[object], object] | None = None


class _Tally:
    """Predicted time and memory of a batch as it is filled."""

    def __init__(self, limits: Limits):
        self.profile, self.limits = limits.profile, limits
        self.seconds = self.nbytes = 0.0
        self.untimed = 0

    def take(self, key, force: bool = False, fusing: bool = False) -> bool:
        """Count ``key`` in if it fits (always with ``force``); fused tasks are held to the
        memory limit only (splitting a chain adds round trips, not parallelism)."""
        if self.profile is None:
            return True
        predicted = self.profile.predict(key)
        limits = self.limits
        if predicted is None:
            if not (force or fusing) and limits.probe_tasks and self.untimed >= limits.probe_tasks:
                return False
            self.untimed += 1
            return True
        seconds, nbytes = predicted
        if not force and (
            self.nbytes + nbytes > limits.memory_bytes
            or (not fusing and self.seconds + seconds > limits.target_seconds)
        ):
            return False
        self.seconds += seconds
        self.nbytes += nbytes
        return True


class GraphState:
    """Progress of one compute over ``dsk`` towards ``keys``; see the module docstring."""

    def __init__(
        self,
        dsk: dict[object, GraphNode],
        keys: Iterable,
        done: Iterable = (),
        priority: dict | None = None,
    ):
        self.dsk = dsk
        self.targets = set(keys)
        self.done_initially = set(done)
        self.dependencies = {k: node.dependencies for k, node in dsk.items()}  # frozensets
        self.dependents: dict = {k: set() for k in dsk}
        for key, deps in self.dependencies.items():
            for dep in deps:
                self.dependents.setdefault(dep, set()).add(key)
        # dask.order's priorities (computed here unless the caller did)
        self.priority = priority if priority is not None else (order(dsk) if dsk else {})
        self.state = {
            "ready": [],  # heap of (priority, key)
            "waiting": {},  # key -> number of unfinished dependencies
            "running": set(),
            "finished": set(self.done_initially),
            "cache": {},
        }
        self._ready_aliases: list = []  # kept off the heap: the client finishes them itself
        self._missing = {
            dep
            for deps in self.dependencies.values()
            for dep in deps
            if dep not in dsk and dep not in self.done_initially
        }
        if self._missing:
            key = sorted(self._missing, key=str)[0]
            needing = sorted((k for k, deps in self.dependencies.items() if key in deps), key=str)
            raise ValueError(  # dask.local's wording, so code that matches on it still works
                f"Missing dependency {key} for dependents {set(needing[:5])}: the graph depends"
                f" on keys it does not define ({len(self._missing)} in all)"
            )
        for key, deps in self.dependencies.items():
            if key in self.done_initially:
                continue
            pending = len(deps - self.done_initially) if self.done_initially else len(deps)
            if pending:
                self.state["waiting"][key] = pending
            else:
                self._make_ready(key)

    # -- queries --------------------------------------------------------------------------------
    @property
    def complete(self) -> bool:
        state = self.state
        return not (state["ready"] or state["waiting"] or state["running"] or self._ready_aliases)

    def is_alias(self, key) -> bool:
        return isinstance(self.dsk.get(key), Alias)

    # -- transitions ----------------------------------------------------------------------------
    def pop_ready_aliases(self) -> list:
        """Ready aliases, finished here on the client; the caller copies their target's data."""
        aliases, self._ready_aliases = self._ready_aliases, []
        return aliases

    def _make_ready(self, key) -> None:
        if self.is_alias(key):
            self._ready_aliases.append(key)
        else:
            heapq.heappush(self.state["ready"], (self.priority[key], key))

    def finish(self, keys: Iterable) -> None:
        """Mark ``keys`` finished and move dependents whose inputs are all done to ready."""
        state = self.state
        for key in keys:
            state["running"].discard(key)
            state["finished"].add(key)
            for dependent in self.dependents.get(key, ()):
                count = state["waiting"].get(dependent)
                if count is None:
                    continue
                if count == 1:
                    del state["waiting"][dependent]
                    self._make_ready(dependent)
                else:
                    state["waiting"][dependent] = count - 1

    def releasable(self, key) -> bool:
        """True when no unfinished task needs ``key`` and it is not a requested result."""
        return key not in self.targets and all(
            d in self.state["finished"] for d in self.dependents.get(key, ())
        )

    # -- planning -------------------------------------------------------------------------------
    def next_batch(
        self, free_slots: int, limits: Limits = Limits(), slots: int | None = None
    ) -> Batch | None:
        """Take the next batch off the ready queue (see the module docstring), or None.

        ``limits`` bounds it. ``slots`` (default ``free_slots``) is what ready work is spread
        over: the free slots and those about to free up (running probes), so the first probe
        to return does not take everything left into one batch that would run it serially.
        """
        ready = self.state["ready"]
        if not ready or free_slots <= 0:
            return None
        max_tasks, per_slot, group = limits.max_tasks, limits.per_slot, limits.group
        size = min(max_tasks, max(1, math.ceil(len(ready) / ((slots or free_slots) * per_slot))))
        # Slots this wave of ready work leaves idle: then fan-outs are not fused, so their
        # branches run in parallel (in later batches) instead of one after another here.
        spare_slots = free_slots * per_slot - math.ceil(len(ready) / size)
        tally = _Tally(limits)
        members: set = set()
        inputs: set = set()
        used_bytes = 0
        roots = []
        others = []  # ready tasks of another group than this batch's, put back after
        kind = group(ready[0][1]) if group is not None else None
        fusable = (lambda key: group(key) == kind) if group is not None else None
        fan_out = spare_slots <= 0
        # Per waiting task, how many of its inputs are members: it joins when that is all of
        # the inputs it still waits for (counted per edge, never rescanning a wide task's inputs).
        in_batch: collections.Counter = collections.Counter()
        while ready and len(roots) < size and len(members) < max_tasks:
            _, key = ready[0]
            if group is not None and group(key) != kind:
                others.append(heapq.heappop(ready))
                continue
            new_inputs = self.dependencies[key] - inputs
            extra = sum(limits.input_bytes(dep) for dep in new_inputs)
            if roots and used_bytes + extra > limits.max_bytes:
                break
            if not tally.take(key, force=not roots):
                break
            heapq.heappop(ready)
            used_bytes += extra
            inputs |= new_inputs
            roots.append(key)
            members.add(key)
            # Fused as each root joins: the batch fills with whole sub-graphs in priority order
            # (a reduction's subtree), not with roots whose dependents no longer fit.
            self._fuse(members, key, max_tasks, tally, fan_out, in_batch, fusable)
        for entry in others:
            heapq.heappush(ready, entry)
        tasks = sorted(members, key=self.priority.__getitem__)
        inputs = {dep for key in tasks for dep in self.dependencies[key]} - members
        outputs = [
            key
            for key in tasks
            if key in self.targets or any(d not in members for d in self.dependents.get(key, ()))
        ]
        self.state["running"].update(members)
        return Batch(keys=tasks, outputs=outputs, inputs=sorted(inputs, key=str),
                     probe=tally.untimed > 0)  # fmt: skip

    def _fuse(self, members: set, root, limit: int, tally: _Tally, fan_out: bool,
              in_batch: collections.Counter,
              allowed: Callable[[object], bool] | None = None) -> None:  # fmt: skip
        """Add every waiting dependent of ``root`` (transitively) whose inputs are all in
        ``members`` or finished, within ``limit`` tasks and the predicted memory; with
        ``fan_out`` False, one branch per task. ``in_batch`` counts, per waiting task, its
        inputs that are members (``root``, a new member, included here), kept up to date."""
        waiting = self.state["waiting"]
        in_batch.update(self.dependents.get(root, ()))
        stack = [root]
        while stack and len(members) < limit:
            key = stack.pop()
            fusable = [
                d for d in self.dependents.get(key, ())
                if d not in members and waiting.get(d) == in_batch[d]
                and (allowed is None or allowed(d))
            ]  # fmt: skip
            if not fan_out and len(fusable) > 1:
                fusable = [min(fusable, key=self.priority.__getitem__)]
            for dependent in fusable:
                if not tally.take(dependent, fusing=True):
                    return
                del waiting[dependent]
                members.add(dependent)
                in_batch.update(self.dependents.get(dependent, ()))
                stack.append(dependent)
                if len(members) >= limit:
                    return
