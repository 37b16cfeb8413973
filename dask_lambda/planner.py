"""Which tasks run together: the graph's progress and the choice of each invocation's batch.

Pure bookkeeping, no I/O. :class:`GraphState` holds, for a graph already converted to task-spec
nodes, the dependencies and dependents of every key, ``dask.order`` priorities, and which keys are
waiting, ready, running or finished. Its state dict has the fields dask's callbacks read
(``ready``, ``waiting``, ``running``, ``finished``), so ``dask.diagnostics.ProgressBar`` works.

:meth:`GraphState.next_batch` picks one invocation's work:

1. *Roots*: ready keys in priority order (``dask.order`` keeps siblings together), as many as
   ``ceil(ready / free_slots)`` so a wave of ready tasks is spread over every free runtime,
   capped by ``max_tasks`` and by the bytes of inline inputs (``max_bytes``).
2. *Fusion*: every dependent whose inputs are all inside the batch or already finished joins it,
   repeatedly, so chains and whole sub-trees run in one invocation instead of a round trip
   through S3 per level (Wukong's clustering).
3. *Outputs*: only keys that something outside the batch needs (a dependent elsewhere or a
   requested result) are returned; everything else stays inside the invocation.

Aliases never cost an invocation: one finishes on the client as soon as its target has (its data
is the target's), or runs inside the batch of its target when fused.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from dask._task_spec import Alias, GraphNode
from dask.order import order


@dataclass(eq=False)  # compared and hashed by identity: each batch is one piece of work
class Batch:
    """One invocation's work, as graph keys: ``keys`` in execution order, ``outputs`` and
    ``inputs``."""

    keys: list
    outputs: list
    inputs: list


class GraphState:
    """Progress of one compute over ``dsk`` towards ``keys``; see the module docstring."""

    def __init__(self, dsk: dict[object, GraphNode], keys: Iterable, done: Iterable = ()):
        self.dsk = dsk
        self.targets = set(keys)
        self.done_initially = set(done)
        self.dependencies = {k: set(node.dependencies) for k, node in dsk.items()}
        self.dependents: dict = {k: set() for k in dsk}
        for key, deps in self.dependencies.items():
            for dep in deps:
                self.dependents.setdefault(dep, set()).add(key)
        self.priority = order(dsk) if dsk else {}
        self.state = {
            "ready": [],  # heap of (priority, key)
            "waiting": {},  # key -> number of unfinished dependencies
            "running": set(),
            "finished": set(self.done_initially),
            "cache": {},
        }
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
            pending = len(deps - self.done_initially)
            if pending:
                self.state["waiting"][key] = pending
            else:
                heapq.heappush(self.state["ready"], (self.priority[key], key))

    # -- queries --------------------------------------------------------------------------------
    @property
    def complete(self) -> bool:
        return not self.state["ready"] and not self.state["waiting"] and not self.state["running"]

    def is_alias(self, key) -> bool:
        return isinstance(self.dsk.get(key), Alias)

    # -- transitions ----------------------------------------------------------------------------
    def pop_ready_aliases(self) -> list:
        """Ready aliases, finished here on the client; the caller copies their target's data."""
        aliases = [k for _, k in self.state["ready"] if self.is_alias(k)]
        if aliases:
            self.state["ready"] = [(p, k) for p, k in self.state["ready"] if not self.is_alias(k)]
            heapq.heapify(self.state["ready"])
        return aliases

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
                    heapq.heappush(state["ready"], (self.priority[dependent], dependent))
                else:
                    state["waiting"][dependent] = count - 1

    def releasable(self, key) -> bool:
        """True when no unfinished task needs ``key`` and it is not a requested result."""
        return key not in self.targets and all(
            d in self.state["finished"] for d in self.dependents.get(key, ())
        )

    # -- planning -------------------------------------------------------------------------------
    def next_batch(
        self,
        free_slots: int,
        max_tasks: int,
        max_bytes: int,
        input_bytes: Callable[[object], int],
        per_slot: int = 1,
    ) -> Batch | None:
        """Take the next batch off the ready queue (see the module docstring), or None."""
        ready = self.state["ready"]
        if not ready or free_slots <= 0:
            return None
        size = min(max_tasks, max(1, math.ceil(len(ready) / (free_slots * per_slot))))
        members: set = set()
        inputs: set = set()
        used_bytes = 0
        roots = []
        while ready and len(roots) < size:
            _, key = ready[0]
            new_inputs = self.dependencies[key] - inputs
            extra = sum(input_bytes(dep) for dep in new_inputs)
            if roots and used_bytes + extra > max_bytes:
                break
            heapq.heappop(ready)
            used_bytes += extra
            inputs |= new_inputs
            roots.append(key)
            members.add(key)
        self._fuse(members, roots, limit=2 * max_tasks)
        tasks = sorted(members, key=self.priority.__getitem__)
        inputs = {dep for key in tasks for dep in self.dependencies[key]} - members
        outputs = [
            key
            for key in tasks
            if key in self.targets or any(d not in members for d in self.dependents.get(key, ()))
        ]
        self.state["running"].update(members)
        return Batch(keys=tasks, outputs=outputs, inputs=sorted(inputs, key=str))

    def _fuse(self, members: set, frontier: list, limit: int) -> None:
        state = self.state
        finished = state["finished"]
        stack = list(frontier)
        while stack and len(members) < limit:
            key = stack.pop()
            for dependent in self.dependents.get(key, ()):
                if dependent in members or dependent not in state["waiting"]:
                    continue
                if all(d in members or d in finished for d in self.dependencies[dependent]):
                    del state["waiting"][dependent]
                    members.add(dependent)
                    stack.append(dependent)
                    if len(members) >= limit:
                        break
