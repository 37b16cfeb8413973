"""Invocations in flight during one compute, and which of them are stragglers.

One entry per batch, two when a straggler got a speculative copy (:mod:`.attempts` decides when
a batch is a straggler). Ended invocations are read from a queue in the order they ended.
"""

from __future__ import annotations

import queue
import time
from concurrent.futures import Future
from typing import Any

from ..attempts import straggler_limit
from ..function.protocol import BatchSpec


class InFlight:
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
        limit = straggler_limit(self.durations, multiplier, min_seconds)
        if limit is None:
            return []
        now = time.monotonic()
        return [
            (self._spec[batch], batch)
            for future, batch in self._batch.items()
            if self._copies[batch] == 1 and now - self._started[future] > limit
        ]
