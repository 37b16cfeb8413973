"""Thread runtimes of the local Lambda: the handler runs in a thread of the server.

For scale simulations only (``runtime_mode="thread"``); see :class:`ThreadRuntime`.
"""

from __future__ import annotations

import importlib
import itertools
import json
import os
import queue
import signal
import sys
import threading
import time
import uuid
from typing import TYPE_CHECKING

from .invocations import FunctionSpec, Invocation, exit_message

if TYPE_CHECKING:
    from .runtimes import RuntimeManager


class ThreadRuntime:
    """A simulated execution environment: the handler runs in a thread of the server.

    For scale simulations only (``runtime_mode="thread"``): a thousand of them fit on two cores,
    where a thousand runtime processes would not. The handler is imported in the server process
    (its own installed ``dask_lambda`` wins over the deployed one), the function's environment
    variables are set process-wide, killing abandons the thread's result instead of stopping it,
    and memory is not enforced.
    """

    _ids = itertools.count(1)
    _import_lock = threading.Lock()

    def __init__(self, manager: RuntimeManager, spec: FunctionSpec):
        self.manager = manager
        self.spec = spec
        self.id = next(self._ids)
        self.created = self.last_used = time.monotonic()
        self.initialized = False
        self.kill_reason: str | None = None
        self.current: Invocation | None = None
        self.pid: int | None = None
        self.log_stream = f"{time.strftime('%Y/%m/%d')}/[$LATEST]thread-{uuid.uuid4().hex}"
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._serve, daemon=True, name=f"thread-runtime-{self.id}").start()

    @property
    def alive(self) -> bool:
        return self.kill_reason is None

    def assign(self, inv: Invocation) -> None:
        self.current = inv
        self._queue.put(inv)

    def _load(self):
        module_name, _, function_name = self.spec.handler.rpartition(".")
        with self._import_lock:
            os.environ.update(self.spec.environment)
            for folder in reversed([self.spec.code_dir, *self.spec.layer_dirs]):
                if folder not in sys.path:
                    sys.path.append(folder)
            module = importlib.import_module(module_name)
        return getattr(module, function_name)

    def _serve(self) -> None:
        try:
            handler = self._load()
        except Exception as e:
            handler = e
        while (inv := self._queue.get()) is not None:
            inv.started = time.monotonic()
            if not self.initialized:
                self.initialized = True
                inv.init_duration_ms = (inv.started - self.created) * 1000
            inv.picked.set()
            if isinstance(handler, Exception):
                body = {"errorType": "Runtime.ImportModuleError", "errorMessage": str(handler)}
                inv.finish(json.dumps(body).encode(), "Unhandled")
                continue
            try:
                result = handler(json.loads(inv.payload), _Context(inv, self.spec))
                inv.finish(json.dumps(result).encode(), None)
            except Exception as e:
                body = {"errorType": type(e).__name__, "errorMessage": str(e), "stackTrace": []}
                inv.finish(json.dumps(body).encode(), "Unhandled")

    def kill(self, reason: str) -> None:
        if self.kill_reason is not None:
            return
        self.kill_reason = reason
        inv = self.current
        if inv is not None and not inv.done.is_set():
            inv.fail("Runtime.ExitError", exit_message(-signal.SIGKILL, reason, inv, self.spec))
        self._queue.put(None)
        self.manager.on_exit(self)

    def rss(self) -> int:
        return 0

    def drain_logs(self) -> None:
        pass

    def wait(self, timeout: float | None = None) -> None:
        pass


class _Context:
    """The part of awslambdaric's context object a thread runtime offers."""

    def __init__(self, inv: Invocation, spec: FunctionSpec):
        self.aws_request_id = inv.request_id
        self.function_name = spec.name
        self.invoked_function_arn = spec.arn
        self.memory_limit_in_mb = str(spec.memory_mb)
        self._deadline = inv.started + inv.timeout_s

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))
