"""What travels through the local Lambda's runtimes: a function's spec, one invocation, the
throttle signal, and Lambda's words for a runtime that exited."""

from __future__ import annotations

import json
import signal
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

MiB = 1024 * 1024


class Throttled(Exception):
    """Raised by :meth:`RuntimeManager.acquire` when a concurrency limit is reached."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class FunctionSpec:
    """What a runtime needs to run one revision of a function (from ``GetFunction``)."""

    name: str
    arn: str
    handler: str
    memory_mb: int
    timeout_s: float
    environment: dict[str, str]
    code_dir: str
    layer_dirs: tuple[str, ...]
    reserved_concurrency: int | None
    revision: str
    credentials: dict[str, str] = field(default_factory=dict)  # of the execution role
    ephemeral_mb: int = 512  # /tmp
    version: str = "$LATEST"
    snapstart: bool = False  # a published version restored from its snapshot (snapshots.py)
    image: Any = None  # an image function's ImageRun (images.py): its root filesystem and config


@dataclass
class Invocation:
    """One invocation on its way through a runtime."""

    payload: bytes
    function_arn: str
    timeout_s: float
    request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    picked: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    body: bytes = b""
    error_type: str | None = None
    started: float = 0.0
    ended: float = 0.0
    init_duration_ms: float | None = None
    restored: bool = False  # its runtime was restored from a snapshot: "Restore Duration"
    max_rss: int = 0
    log_lines: list[str] = field(default_factory=list)
    doomed: bool = False  # an injected fault decides the result, not the runtime's answer
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def finish(self, body: bytes, error_type: str | None, force: bool = False) -> bool:
        """Set the result if nobody has yet; return whether this call set it."""
        with self._lock:
            if self.done.is_set() or (self.doomed and not force):
                return False
            self.body, self.error_type = body, error_type
            self.ended = time.monotonic()
            self.done.set()
            self.picked.set()
            return True

    def fail(self, error_type: str, message: str) -> bool:
        """Finish with a Lambda service error (``{errorType, errorMessage}``)."""
        text = f"RequestId: {self.request_id} Error: {message}"
        body = json.dumps({"errorType": error_type, "errorMessage": text}).encode()
        return self.finish(body, "Unhandled", force=True)


def exit_message(code: int, kill_reason: str | None, inv: Invocation, spec: FunctionSpec) -> str:
    """Lambda's description of a runtime that exited during ``inv``."""
    if code < 0:
        how = f"signal: {signal.Signals(-code).name.removeprefix('SIG').lower()}"
        how = "signal: killed" if code == -signal.SIGKILL else how
    else:
        how = f"exit status {code}"
    message = f"Runtime exited with error: {how}"
    if kill_reason == "memory":
        used = max(inv.max_rss // MiB, spec.memory_mb + 1)
        message += (
            f" (Runtime.OutOfMemory: the function used {used} MB, more than its MemorySize"
            f" of {spec.memory_mb} MB)"
        )
    return message
