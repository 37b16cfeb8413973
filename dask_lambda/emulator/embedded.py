"""The client's handle on an embedded local Lambda running in a child process.

:class:`LocalLambda` starts ``python -m dask_lambda.emulator`` (see :mod:`.server`), waits until it
answers, and tells boto3 how to reach it. The server runs in its own process so that moto and the
runtimes never compete with the client for its GIL, and it dies with the client: it watches its
parent, and its runtimes are tied to it by ``PR_SET_PDEATHSIG``.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
import weakref
from typing import Any

from .. import NO_SCHEDULER_ENV
from .endpoint import DEFAULT_REGION, service_env


class LocalLambdaError(RuntimeError):
    """The embedded local Lambda could not be started."""


class LocalLambda:
    """An embedded AWS Lambda + S3 + IAM on 127.0.0.1, reached with plain boto3.

    Parameters
    ----------
    port
        Port on 127.0.0.1 (0 picks a free one).
    region
        The region that :meth:`env` and :meth:`client` use.
    concurrency_limit
        Concurrent executions allowed across all functions (Lambda's account limit).
    idle_timeout
        Seconds a warm runtime is kept before it is reaped.
    runtime_mode
        ``"process"`` (real ``awslambdaric`` runtime processes) or ``"thread"``: handlers run in
        threads of the server, to simulate hundreds of concurrent environments on a small
        machine (see :class:`~dask_lambda.emulator.thread_runtime.ThreadRuntime`).
    seed
        Seed of the fault injection (:meth:`set_faults`), for repeatable runs.
    startup_timeout
        Seconds to wait for the server to answer.

    Examples
    --------
    >>> with LocalLambda() as local:                                    # doctest: +SKIP
    ...     s3 = boto3.client("s3", **local.client_kwargs())
    ...     s3.create_bucket(Bucket="data")
    """

    def __init__(
        self,
        port: int = 0,
        region: str = DEFAULT_REGION,
        concurrency_limit: int = 1000,
        idle_timeout: float = 300.0,
        runtime_mode: str = "process",
        seed: int | None = None,
        startup_timeout: float = 60.0,
    ):
        self.port = port
        self.region = region
        self.concurrency_limit = concurrency_limit
        self.idle_timeout = idle_timeout
        self.startup_timeout = startup_timeout
        self.runtime_mode = runtime_mode
        self.seed = seed
        self.endpoint_url: str | None = None
        self.pid: int | None = None
        self.workdir: str | None = None
        self.credentials: dict[str, str] = {}
        self._proc: subprocess.Popen | None = None
        self._finalizer: weakref.finalize | None = None

    def start(self) -> LocalLambda:
        """Start the server process and wait until it answers."""
        if self._proc is not None:
            return self
        if self.runtime_mode == "process":  # installed here, once, where its progress is seen
            from .runtimes import managed_runtime

            managed_runtime(progress=lambda message: print(message, file=sys.stderr, flush=True))
        stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed by _stop
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "dask_lambda.emulator", "--port", str(self.port)),
                *("--concurrency-limit", str(self.concurrency_limit)),
                *("--idle-timeout", str(self.idle_timeout), "--parent-pid", str(os.getpid())),
                *("--runtime-mode", self.runtime_mode),
                *(["--seed", str(self.seed)] if self.seed is not None else []),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            env={**os.environ, NO_SCHEDULER_ENV: "1"},
        )
        self._finalizer = weakref.finalize(self, _stop, proc, stderr)
        line = _read_line(proc, self.startup_timeout)
        if not line:
            self._finalizer()
            stderr.seek(0)
            detail = stderr.read().decode(errors="replace")[-3000:]
            raise LocalLambdaError(
                "The embedded local Lambda did not start. Is the 'local' extra installed"
                f" (pip install 'dask-lambda[local]')?\n{detail}"
            )
        ready = json.loads(line)
        self._proc, self.endpoint_url, self.pid = proc, ready["endpoint_url"], ready["pid"]
        self.workdir = ready["workdir"]
        self.credentials = ready["credentials"]
        if ready.get("partial_isolation"):  # said here, once: the server's stderr is a file
            from .sandbox import warn_partial

            warn_partial(ready["partial_isolation"])
        return self

    def close(self) -> None:
        """Stop the server, its runtimes and remove its files. Safe to call twice."""
        if self._finalizer is not None:
            self._finalizer()
        self._proc = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def env(self) -> dict[str, str]:
        """Environment variables that point boto3 (in any process) at this server, with the
        local admin's credentials (the local Lambda enforces IAM)."""
        self._require_running()
        return {**service_env(self.endpoint_url, self.region, self.credentials),
                "DASK_LAMBDA__IMAGE__BASE": self.base_image}  # fmt: skip

    @property
    def base_image(self) -> str:
        """The stand-in for AWS's base image this server serves (``{python}``: X.Y), what
        ``lambda.image.base`` names for image functions deployed into it."""
        from .registry import standin_reference

        self._require_running()
        return standin_reference(self.endpoint_url)

    def registry_stats(self) -> dict:
        """The local registry's counters: blobs and manifests pushed and pulled."""
        return self._admin("registry")

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``boto3.client(service, **kwargs)``."""
        self._require_running()
        return {
            "endpoint_url": self.endpoint_url,
            "region_name": self.region,
            "aws_access_key_id": self.credentials["AWS_ACCESS_KEY_ID"],
            "aws_secret_access_key": self.credentials["AWS_SECRET_ACCESS_KEY"],
        }

    def client(self, service: str, **kwargs: Any):
        """A boto3 client for ``service`` on this server."""
        import boto3

        return boto3.client(service, **{**self.client_kwargs(), **kwargs})

    def set_faults(self, function: str = "*", **settings: float) -> dict:
        """Inject faults and latency into ``function`` (``"*"``: all); no settings clears them.

        Settings: ``throttle_rate``, ``crash_rate``, ``oom_rate``, ``timeout_rate``,
        ``s3_error_rate``, ``invoke_latency_ms``, ``cold_start_ms``
        (see :mod:`dask_lambda.emulator.faults`).
        """
        return self._admin("faults", {"function": function, **settings})

    def stats(self) -> dict:
        """Runtimes, invocations, cold starts, throttles, runtime pids and injected faults."""
        return self._admin("stats")

    def reap(self, function: str) -> int:
        """Stop the idle runtimes of ``function`` and its memory tiers, so that its next
        invocation is a cold start; return how many were stopped."""
        return self._admin("reap", {"function": function})["stopped"]

    def _admin(self, route: str, body: dict | None = None) -> dict:
        import urllib.error
        import urllib.request

        from .iam import Credentials, signed_headers

        self._require_running()
        data = None if body is None else json.dumps(body).encode()
        url = f"{self.endpoint_url}/_dask_lambda/{route}"
        admin = Credentials(self.credentials["AWS_ACCESS_KEY_ID"],
                            self.credentials["AWS_SECRET_ACCESS_KEY"])  # fmt: skip
        method = "GET" if data is None else "POST"
        headers = signed_headers(admin, "lambda", self.region, method, url, data or b"")
        request = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as e:
            raise ValueError(json.loads(e.read()).get("message", str(e))) from None

    def _require_running(self) -> None:
        if not self.running:
            raise LocalLambdaError("The local Lambda is not running: call start() first")

    def __enter__(self) -> LocalLambda:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = self.endpoint_url if self.running else "stopped"
        return f"<LocalLambda {state}>"


def _read_line(proc: subprocess.Popen, timeout: float) -> bytes:
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if selector.select(left) and (line := proc.stdout.readline()):
                return line
            if proc.poll() is not None:
                return b""
    return b""


def _stop(proc: subprocess.Popen, stderr) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stdout:
        proc.stdout.close()
    stderr.close()
