"""Fault and latency injection for the embedded local Lambda.

Set per function name (or ``"*"`` for every function) through ``LocalLambda.set_faults`` or
``POST /_dask_lambda/faults``. Each invocation draws at most one fault, in this order:

``throttle_rate``
    429 ``TooManyRequestsException`` before the function runs.
``crash_rate``
    The runtime process is killed while the handler runs (``Runtime.ExitError``); whatever the
    handler already wrote stays written, as on Lambda.
``oom_rate``
    The runtime is killed as if it exceeded its memory (``Runtime.ExitError``, out of memory).
``timeout_rate``
    The invocation ends as timed out (``Sandbox.Timedout``) and the runtime is killed. It is
    reported at once, without waiting out the function's timeout, so soak tests stay fast.

and independently of those:

``s3_error_rate``
    An S3 request answers 500 ``InternalError`` (boto3 retries these, as it does on AWS).
``invoke_latency_ms``, ``cold_start_ms``
    Added to every invocation, and to every cold start.

Counts of what was injected are kept by kind and reported by ``/_dask_lambda/stats``.
"""

from __future__ import annotations

import random
import threading
from collections import Counter
from dataclasses import asdict, dataclass, fields

KINDS = ("throttle", "crash", "oom", "timeout")


@dataclass
class FaultConfig:
    throttle_rate: float = 0.0
    crash_rate: float = 0.0
    oom_rate: float = 0.0
    timeout_rate: float = 0.0
    s3_error_rate: float = 0.0
    invoke_latency_ms: float = 0.0
    cold_start_ms: float = 0.0

    @classmethod
    def from_dict(cls, values: dict) -> FaultConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"Unknown fault settings {sorted(unknown)}; known: {sorted(known)}")
        config = cls(**{k: float(v) for k, v in values.items()})
        rates = [config.throttle_rate, config.crash_rate, config.oom_rate, config.timeout_rate]
        if any(not 0 <= r <= 1 for r in [*rates, config.s3_error_rate]) or sum(rates) > 1:
            raise ValueError("Fault rates must be between 0 and 1 and add up to at most 1")
        return config


class FaultInjector:
    """Draws faults for invocations and S3 requests; thread-safe."""

    def __init__(self, seed: int | None = None):
        self._configs: dict[str, FaultConfig] = {}
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self.injected: Counter[str] = Counter()

    def configure(self, function: str, values: dict) -> None:
        config = FaultConfig.from_dict(values)
        with self._lock:
            if config == FaultConfig():
                self._configs.pop(function, None)
            else:
                self._configs[function] = config

    def config_for(self, function: str) -> FaultConfig:
        with self._lock:
            return self._configs.get(function) or self._configs.get("*") or FaultConfig()

    def draw(self, function: str) -> str | None:
        """The fault this invocation gets, if any."""
        config = self.config_for(function)
        with self._lock:
            roll = self._random.random()
        edge = 0.0
        for kind in KINDS:
            edge += getattr(config, f"{kind}_rate")
            if roll < edge:
                self.count(kind)
                return kind
        return None

    def s3_error(self) -> bool:
        rate = self.config_for("*").s3_error_rate
        with self._lock:
            hit = rate > 0 and self._random.random() < rate
        if hit:
            self.count("s3_error")
        return hit

    def count(self, kind: str) -> None:
        with self._lock:
            self.injected[kind] += 1

    def describe(self) -> dict:
        with self._lock:
            return {
                "settings": {name: asdict(config) for name, config in self._configs.items()},
                "injected": dict(self.injected),
            }
