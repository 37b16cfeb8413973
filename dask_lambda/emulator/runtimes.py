"""Runtime processes of the embedded local Lambda: spawning, reuse, limits and reaping.

A *runtime* is one ``python -m awslambdaric HANDLER`` process (started through ``_bootstrap.py``)
plus the Runtime API listener it polls. It runs one invocation at a time, like a Lambda execution
environment, and sees what one would: the standard library (``python -S``: none of this machine's
site-packages), its deployed code (the working directory, first on the path), its layers, and the
managed runtime's ``awslambdaric`` and boto3 (:func:`managed_runtime`, pinned and installed in a
folder of its own); its environment holds the
function's variables, Lambda's own and its execution role's temporary credentials. The
:class:`RuntimeManager` owns every runtime of the server:

- ``acquire(spec)`` hands out an idle runtime whose function revision matches ``spec`` (warm) or
  starts a new one (cold), after checking the account-wide and the function's reserved
  concurrency; over either limit it raises :class:`Throttled`. Runtimes of an older revision of
  the function are retired, so new code always runs in new runtimes.
- A monitor thread samples the resident memory of busy runtimes and kills any that exceed the
  function's ``MemorySize`` (Lambda's cgroup limit), and reaps runtimes idle for longer than
  ``idle_timeout``.
- Processes are started by one long-lived spawner thread, because ``PR_SET_PDEATHSIG`` (set by the
  bootstrap) fires when the *thread* that forked the child exits. Runtimes therefore die with the
  server, even when the server is killed.

An :class:`Invocation` travels from the front door to a runtime and back; whoever finishes it first
(the runtime's response, the timeout, or the exit watcher) decides its result."""

from __future__ import annotations

import collections
import concurrent.futures
import functools
import itertools
import os
import queue
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from . import sandbox
from .invocations import FunctionSpec, Invocation, MiB, Throttled, exit_message
from .runtime_api import RuntimeAPIServer
from .snapshots import Snapshot
from .thread_runtime import ThreadRuntime

__all__ = ["FunctionSpec", "Invocation", "MiB", "Runtime", "RuntimeManager", "Throttled"]

_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
_BOOTSTRAP = str(Path(__file__).with_name("_bootstrap.py"))
# Variables of the server's own environment that a runtime inherits; Lambda passes nothing else.
_INHERITED_ENV = ("PATH", "LANG", "LC_ALL", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
LOG_LINES_KEPT = 20_000
# What a runtime sees besides its code and layers, as on Lambda's managed python runtime: pinned
# to the versions the local Lambda was tested with, and installed in a folder of its own (never
# the client's site-packages, so the client's boto3 is the user's to choose).
MANAGED_RUNTIME_PINS = ("awslambdaric==4.2.2", "boto3==1.44.8", "botocore==1.44.8")


class ManagedRuntimeError(RuntimeError):
    """The managed-runtime stand-in could not be installed."""


def managed_runtime_folder() -> Path:
    """Where :func:`managed_runtime` keeps the stand-in for this interpreter and these pins."""
    import hashlib

    from ..deploy.build import cache_root

    key = " ".join((sys.implementation.cache_tag, *MANAGED_RUNTIME_PINS))
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return cache_root().parent / "managed-runtime" / digest


def managed_runtime(progress=lambda _message: None) -> Path:
    """The folder that stands in for Lambda's ``/var/runtime``: ``awslambdaric`` and the boto3
    the managed python runtime bundles (:data:`MANAGED_RUNTIME_PINS`), installed from their
    wheels with pip once per machine, interpreter and pin set, and compiled as AWS ships them.

    Raises
    ------
    ManagedRuntimeError
        pip could not install the pinned wheels (no access to the package index): the message
        says how to install them by hand.
    """
    target = managed_runtime_folder()
    if (target / "awslambdaric").is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{target.name}-", dir=target.parent))
    progress(f"Installing the local Lambda's managed runtime ({', '.join(MANAGED_RUNTIME_PINS)})")
    command = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--no-input",
        "--only-binary=:all:",
        "--target",
        str(staging),
        *MANAGED_RUNTIME_PINS,
    ]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        raise ManagedRuntimeError(
            "The local Lambda could not install its managed runtime "
            f"({' '.join(MANAGED_RUNTIME_PINS)}) with pip:\n{done.stderr.strip()[-2000:]}\n"
            "Give pip access to a package index (PIP_INDEX_URL) and retry, or install them by "
            f"hand: {' '.join(command[:3])} install --only-binary=:all: --target {target} "
            f"{' '.join(MANAGED_RUNTIME_PINS)}"
        )
    import compileall

    compileall.compile_dir(staging, quiet=2, workers=1)  # as AWS's /var/runtime ships compiled
    try:
        staging.rename(target)
    except OSError:  # another process made it first
        shutil.rmtree(staging, ignore_errors=True)
    return target


class _Spawner:
    """Starts every runtime process from one long-lived thread (see the module docstring)."""

    def __init__(self) -> None:
        self._requests: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, daemon=True, name="dask-lambda-spawner")
        self._thread.start()

    def _run(self) -> None:
        while (request := self._requests.get()) is not None:
            future, args, kwargs = request
            try:
                future.set_result(subprocess.Popen(*args, **kwargs))
            except BaseException as e:  # noqa: BLE001 - handed to the waiting thread
                future.set_exception(e)

    def popen(self, *args, **kwargs) -> subprocess.Popen:
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._requests.put((future, args, kwargs))
        return future.result()

    def close(self) -> None:
        self._requests.put(None)


def runtime_argv(manager: RuntimeManager, spec: FunctionSpec, arguments: list[str]) -> list[str]:
    """The command that starts ``_bootstrap.py`` with ``arguments``, in a sandbox where the
    manager has one."""
    # -S: no site-packages of this machine; the path is what Lambda's would be.
    if not manager.sandbox:
        return [sys.executable, "-S", "-u", _BOOTSTRAP, *arguments]
    if spec.image is not None:  # the image's entry point and command, in its root filesystem
        return sandbox.image_command(spec.image.argv, spec.image.rootfs, spec.image.working_dir,
                                     spec.ephemeral_mb, manager.mounts)  # fmt: skip
    return sandbox.command(
        [sandbox.interpreter(), "-S", "-u", sandbox.BOOTSTRAP, *arguments],
        spec.code_dir, spec.layer_dirs, manager.runtime_dir, _BOOTSTRAP,
        spec.ephemeral_mb, manager.mounts, snapshot=arguments[0] == "--snapshot",
    )  # fmt: skip


def runtime_environment(
    manager: RuntimeManager, spec: FunctionSpec, api_address: str, log_stream: str,
    tmp: str | None,
) -> dict[str, str]:  # fmt: skip
    """What a runtime's environment holds, as Lambda's would (paths as the runtime sees them)."""
    image = spec.image
    if manager.sandbox:
        code_dir, layers = sandbox.TASK_ROOT, sandbox.inside_paths(spec.layer_dirs)
        runtime_dir = sandbox.RUNTIME_DIR
    else:  # an image's folders, outside a sandbox, are where it was unpacked
        code_dir, layers = spec.code_dir, spec.layer_dirs
        runtime_dir = f"{image.rootfs}/var/runtime" if image else manager.runtime_dir
    env = {k: os.environ[k] for k in _INHERITED_ENV if k in os.environ}
    if image is not None:
        env.update(dict(image.environment))
    env.update(manager.service_env)
    env.update(spec.environment)
    env.update(spec.credentials)
    env.update(
        {
            "AWS_LAMBDA_RUNTIME_API": api_address,
            "AWS_LAMBDA_FUNCTION_NAME": spec.name,
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(spec.memory_mb),
            "AWS_LAMBDA_FUNCTION_VERSION": spec.version,
            "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{spec.name}",
            "AWS_LAMBDA_LOG_STREAM_NAME": log_stream,
            "AWS_LAMBDA_INITIALIZATION_TYPE": "snap-start" if spec.snapstart else "on-demand",
            "LAMBDA_TASK_ROOT": code_dir,
            "LAMBDA_RUNTIME_DIR": runtime_dir,
            "_HANDLER": spec.handler,
            "PYTHONPATH": os.pathsep.join([code_dir, *layers, runtime_dir]),
            "TMPDIR": tmp or "/tmp",
            "PYTHONUNBUFFERED": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
            "TZ": ":UTC",
        }
    )
    if image is not None and manager.sandbox:  # the image's bootstrap sets the path
        del env["PYTHONPATH"]
    if not manager.sandbox:  # in a sandbox, bwrap --die-with-parent ties it to the server
        env["_DASK_LAMBDA_PARENT_PID"] = str(os.getpid())
    return env


class Runtime:
    """One runtime process and its Runtime API listener."""

    _ids = itertools.count(1)

    def __init__(self, manager: RuntimeManager, spec: FunctionSpec):
        self.manager = manager
        self.spec = spec
        self.id = next(self._ids)
        self.created = time.monotonic()
        self.last_used = self.created
        self.initialized = False
        self.kill_reason: str | None = None
        self.current: Invocation | None = None
        self._next: Invocation | None = None
        self._closing = False
        self._exit_code: int | None = None
        self._cond = threading.Condition()
        self._log_lock = threading.Lock()
        self._partial = b""
        self.log_stream = f"{time.strftime('%Y/%m/%d')}/[{spec.version}]{uuid.uuid4().hex}"
        self.sandboxed = manager.sandbox
        self._inner: list = []  # the processes inside a sandbox (psutil), once found
        # Outside a sandbox, a folder of the server's stands in for the runtime's /tmp (deleted
        # when it exits); inside one, /tmp is the sandbox's own tmpfs.
        self.tmp = None if self.sandboxed else manager.tmp_dir(spec.name, self.id)
        self.api = RuntimeAPIServer(self)
        self.proc = self._start()
        os.set_blocking(self.proc.stdout.fileno(), False)  # see _read_logs
        for target, name in ((self._read_logs, "logs"), (self._watch_exit, "exit")):
            threading.Thread(target=target, daemon=True, name=f"runtime-{self.id}-{name}").start()

    restored = False  # started from a snapshot (RestoredRuntime), not by running init

    def _start(self):
        return self.manager.spawner.popen(
            runtime_argv(self.manager, self.spec, [self.spec.handler]),
            env=self._environment(),
            cwd=self.spec.code_dir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            close_fds=True,
        )

    def _environment(self) -> dict[str, str]:
        return runtime_environment(self.manager, self.spec, self.api.address, self.log_stream,
                                   self.tmp)  # fmt: skip

    # -- called by the Runtime API server -------------------------------------------------------
    def next_invocation(self) -> tuple[bytes, dict[str, str]] | None:
        with self._cond:
            if not self.initialized:
                self.initialized = True
                if self._next is not None:
                    self._next.init_duration_ms = (time.monotonic() - self.created) * 1000
                    self._next.restored = self.restored
            while self._next is None and not self._closing:
                self._cond.wait()
            if self._closing:
                return None
            inv, self._next = self._next, None
            self.current = inv
        inv.started = time.monotonic()
        inv.picked.set()
        deadline_ms = int((time.time() + inv.timeout_s) * 1000)
        headers = {
            "Content-Type": "application/json",
            "Lambda-Runtime-Aws-Request-Id": inv.request_id,
            "Lambda-Runtime-Deadline-Ms": str(deadline_ms),
            "Lambda-Runtime-Invoked-Function-Arn": inv.function_arn,
            "Lambda-Runtime-Trace-Id": f"Root=1-{int(time.time()):08x}-{uuid.uuid4().hex[:24]}",
        }
        return inv.payload, headers

    def post_result(self, request_id: str, body: bytes, error_type: str | None) -> None:
        inv = self.current
        if inv is not None and inv.request_id == request_id:
            inv.finish(body, error_type)

    def post_init_error(self, body: bytes, error_type: str | None) -> None:
        with self._cond:
            if self.initialized:  # past its init: not an init error (a forged one)
                return
            inv = self._next or self.current
        if inv is not None:
            inv.finish(body, "Unhandled")

    def restore_next(self) -> None:
        """``/runtime/restore/next``: a runtime of a SnapStart version goes on at once (restored
        before it asked or, without a sandbox, never snapshotted); any other is refused."""
        if not self.spec.snapstart:
            raise LookupError("not a SnapStart runtime")

    def owns_peer(self, peer_port: int, server_port: int) -> bool:
        """True if the loopback TCP connection from ``peer_port`` to ``server_port`` belongs to
        this runtime's processes (the process and its children)."""
        inodes = _socket_inodes(peer_port, server_port)
        if not inodes:
            return False
        try:
            import psutil

            root = psutil.Process(self.proc.pid)
            pids = [root.pid, *(child.pid for child in root.children(recursive=True))]
        except Exception:  # gone
            return False
        for pid in pids:
            try:
                for fd in os.listdir(f"/proc/{pid}/fd"):
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if target.startswith("socket:[") and target[8:-1] in inodes:
                        return True
            except OSError:
                continue
        return False

    # -- called by the front door ---------------------------------------------------------------
    def assign(self, inv: Invocation) -> None:
        with self._cond:
            self.current = None
            self._next = inv
            self._cond.notify_all()
            exit_code = self._exit_code  # it died before it was given the invocation
        if exit_code is not None:
            inv.fail("Runtime.ExitError", exit_message(exit_code, self.kill_reason, inv, self.spec))

    def kill(self, reason: str) -> None:
        """Kill the process; the exit watcher then fails any invocation it still holds."""
        if self.kill_reason is None:
            self.kill_reason = reason
        try:
            self.proc.send_signal(signal.SIGKILL)
        except ProcessLookupError:
            pass

    @property
    def alive(self) -> bool:
        # A killed process stays unreaped for a moment: it must not go back to the warm pool.
        return self.kill_reason is None and self.proc.returncode is None and not self._closing

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait(self, timeout: float | None = None) -> None:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass

    def rss(self) -> int:
        """Resident bytes of the runtime (in a sandbox: of every process inside, as Lambda's
        cgroup counts them)."""
        if not self.sandboxed:
            return _statm_rss(self.proc.pid)
        if not self._inner:
            try:
                import psutil

                self._inner = psutil.Process(self.proc.pid).children(recursive=True)
            except Exception:
                return 0
        return sum(_statm_rss(process.pid) for process in self._inner)

    # -- logs -----------------------------------------------------------------------------------
    # The pipe is non-blocking and read by two parties (this reader thread, and drain_logs()
    # after each invocation): whoever finds it empty moves on, so no one waits under the lock.
    def _read_logs(self) -> None:
        fd = self.proc.stdout.fileno()
        while True:
            try:
                select.select([fd], [], [])
            except (OSError, ValueError):
                return
            with self._log_lock:
                try:
                    data = os.read(fd, 65536)
                except BlockingIOError:
                    continue  # drain_logs() took the bytes select() saw
                except OSError:
                    data = b""
                if not data:
                    self._emit(self._partial, final=True)
                    return
                self._emit(data)

    def drain_logs(self) -> None:
        """Take in everything the process has written so far (it writes unbuffered); nothing
        once its exit watcher has closed the pipe."""
        with self._log_lock:
            try:
                fd = self.proc.stdout.fileno()
                while data := os.read(fd, 65536):
                    self._emit(data)
            except (OSError, ValueError):  # BlockingIOError: nothing more to read now
                pass

    def _emit(self, data: bytes, final: bool = False) -> None:
        data = self._partial + data
        lines = data.split(b"\n")
        self._partial = b"" if final else lines.pop()
        inv = self.current
        for raw in lines:
            if not raw and final:
                continue
            line = raw.decode("utf-8", "replace")
            if inv is not None:  # also after its response: drain_logs() runs then
                inv.log_lines.append(line)
            self.manager.record_log(self.spec.name, self.log_stream, line)

    # -- exit -----------------------------------------------------------------------------------
    def _watch_exit(self) -> None:
        code = self.proc.wait()
        if self.sandboxed and code > 128:  # bwrap passes a signal on as 128 + its number
            code = -(code - 128)
        with self._cond:
            self._closing = True
            self._exit_code = code
            self._cond.notify_all()
            inv = self._next or self.current
        if inv is not None and not inv.done.is_set():
            self.drain_logs()
            inv.fail("Runtime.ExitError", exit_message(code, self.kill_reason, inv, self.spec))
        self.manager.on_exit(self)
        self.api.close()
        if self.proc.stdout:
            self.proc.stdout.close()


class RestoredRuntime(Runtime):
    """A runtime of a SnapStart version, forked from the version's snapshot (snapshots.py)
    instead of running init; its ``rss`` counts what it holds of the snapshot's memory."""

    restored = True

    def _start(self):
        snapshot = self.manager.snapshot(self.spec)
        return snapshot.restore(self._environment(), max(1, self.spec.ephemeral_mb) * MiB)


def _statm_rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE_SIZE
    except (OSError, ValueError, IndexError):
        return 0


def _socket_inodes(local_port: int, remote_port: int) -> set[str]:
    """Inodes of the TCP sockets from ``local_port`` to ``remote_port`` (``/proc/net/tcp*``)."""
    found = set()
    wanted = (f"{local_port:04X}", f"{remote_port:04X}")
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    ports = (fields[1].rsplit(":", 1)[1], fields[2].rsplit(":", 1)[1])
                    if ports == wanted:
                        found.add(fields[9])
        except OSError:
            continue
    return found


class RuntimeManager:
    """Owns every runtime of the server; see the module docstring."""

    def __init__(
        self,
        service_env: dict[str, str],
        concurrency_limit: int = 1000,
        idle_timeout: float = 300.0,
        memory_check_interval: float = 0.02,
        runtime_mode: str = "process",
        tmp_root: str | Path | None = None,
        isolation: str | None = None,
        mounts: tuple[str, ...] | None = None,
    ):
        if runtime_mode not in ("process", "thread"):
            raise ValueError(f"runtime_mode must be 'process' or 'thread', not {runtime_mode!r}")
        self.runtime_class = Runtime if runtime_mode == "process" else ThreadRuntime
        from .. import config

        if isolation is None:  # DASK_LAMBDA__LOCAL__ISOLATION=none reads as None
            isolation = str(config.setting("local.isolation") or "none").lower()
        self.sandbox = runtime_mode == "process" and isolation != "none" and sandbox.available()
        # Why isolation is partial (None: sandboxed); the server says it once, at start.
        self.isolation_note: str | None = None
        if runtime_mode == "process" and not self.sandbox:
            if isolation == "sandbox":
                raise RuntimeError(
                    "lambda.local.isolation is 'sandbox' but bubblewrap cannot run here: install"
                    " it (apt-get install bubblewrap) or set lambda.local.isolation: auto"
                )
            self.isolation_note = ("bubblewrap cannot run here" if isolation != "none"
                                   else "lambda.local.isolation: none")  # fmt: skip
        self.mounts = tuple(mounts if mounts is not None else config.setting("local.mounts") or ())
        self.service_env = service_env
        self.runtime_dir = str(managed_runtime()) if runtime_mode == "process" else ""
        self._own_tmp = tmp_root is None
        self.tmp_root = Path(tmp_root or tempfile.mkdtemp(prefix="dask-lambda-tmp-"))
        self.concurrency_limit = concurrency_limit
        self.idle_timeout = idle_timeout
        self.memory_check_interval = memory_check_interval
        self.spawner = _Spawner()
        self._lock = threading.Lock()
        self._idle: dict[str, list[Runtime]] = collections.defaultdict(list)
        self._busy: set[Runtime] = set()
        self._all: set[Runtime] = set()
        self._snapshots: dict[str, Snapshot] = {}
        self._in_flight: collections.Counter[str] = collections.Counter()
        self._in_flight_total = 0
        self._logs: dict[str, collections.deque] = collections.defaultdict(
            lambda: collections.deque(maxlen=LOG_LINES_KEPT)
        )
        self._log_sequence = itertools.count()
        self._closed = threading.Event()
        self._monitor = threading.Thread(
            target=self._watch, daemon=True, name="dask-lambda-monitor"
        )
        self._monitor.start()

    def acquire(self, spec: FunctionSpec) -> tuple[Runtime, bool]:
        """Return ``(runtime, cold)`` for ``spec``, or raise :class:`Throttled`.

        Every successful ``acquire`` must be paired with one :meth:`release`.
        """
        with self._lock:
            if self._closed.is_set():
                raise Throttled("ServiceShuttingDown")
            if self._in_flight_total >= self.concurrency_limit:
                raise Throttled("ConcurrentInvocationLimitExceeded")
            reserved = spec.reserved_concurrency
            if reserved is not None and self._in_flight[spec.name] >= reserved:
                raise Throttled("ReservedFunctionConcurrentInvocationLimitExceeded")
            self._in_flight_total += 1
            self._in_flight[spec.name] += 1
            stale = [
                runtime
                for revision in [r for r in self._idle if r != spec.revision]
                if self._idle[revision] and self._idle[revision][0].spec.name == spec.name
                for runtime in self._idle.pop(revision)
            ]
            runtime = None
            idle = self._idle.get(spec.revision)
            while idle and runtime is None:
                candidate = idle.pop()
                runtime = candidate if candidate.alive else None
            if runtime is not None:
                self._busy.add(runtime)
        for old in stale:
            old.kill("retired")
        if runtime is not None:
            return runtime, False
        try:
            kind = RestoredRuntime if self._restorable(spec) else self.runtime_class
            runtime = kind(self, spec)
        except BaseException:
            self._count_out(spec.name)
            raise
        with self._lock:
            self._busy.add(runtime)
            self._all.add(runtime)
        return runtime, True

    def _restorable(self, spec: FunctionSpec) -> bool:
        """Whether ``spec``'s runtimes are restored from a snapshot: a SnapStart version, with
        process runtimes in a sandbox (the snapshot forks namespaces; without one, runtimes
        run init as usual)."""
        return spec.snapstart and self.sandbox and self.runtime_class is Runtime

    def snapshot(self, spec: FunctionSpec) -> Snapshot:
        """The snapshot of a SnapStart version (``spec``), made on first use: when the version
        is published (see the server), or again after it was stopped."""
        with self._lock:
            if self._closed.is_set():
                raise Throttled("ServiceShuttingDown")
            snapshot = self._snapshots.get(spec.revision)
            if snapshot is not None and (snapshot.alive or snapshot.state == "Failed"):
                return snapshot
            if not self._restorable(spec):
                raise ValueError(f"{spec.name}:{spec.version} has no snapshot here")
            argv = functools.partial(runtime_argv, self, spec)
            snapshot = Snapshot(self, spec, argv, runtime_environment(self, spec, "", "", None))
            self._snapshots[spec.revision] = snapshot
            return snapshot

    def snapshot_state(self, spec: FunctionSpec) -> tuple[str, str | None]:
        """``(State, StateReason)`` of a SnapStart version, as ``GetFunction`` reports it."""
        with self._lock:
            snapshot = self._snapshots.get(spec.revision)
        if snapshot is None:
            return "Active", None
        return snapshot.state, snapshot.error

    def drop_snapshots(self, name: str) -> None:
        """Stop the snapshots of function ``name`` (deleted), with what was restored from them."""
        with self._lock:
            gone = [key for key, snap in self._snapshots.items() if snap.spec.name == name]
            snapshots = [self._snapshots.pop(key) for key in gone]
        for snapshot in snapshots:
            snapshot.close()

    def tmp_dir(self, function_name: str, runtime_id: int) -> str:
        """A runtime's ``/tmp``: its own, as each Lambda execution environment has, and gone
        when it exits (so every cold start unpacks ``--deps-on-s3`` archives again, as on AWS)."""
        folder = self.tmp_root / function_name / f"environment-{runtime_id}"
        folder.mkdir(parents=True, exist_ok=True)
        return str(folder)

    def _count_out(self, function_name: str) -> None:
        with self._lock:
            self._in_flight_total -= 1
            self._in_flight[function_name] -= 1

    def release(self, runtime: Runtime) -> None:
        """Return a runtime after its invocation; it stays warm unless dead or closing."""
        runtime.last_used = time.monotonic()
        self._count_out(runtime.spec.name)
        with self._lock:
            self._busy.discard(runtime)
            if runtime.alive and not self._closed.is_set():
                self._idle[runtime.spec.revision].append(runtime)
                return
        runtime.kill("released")

    def on_exit(self, runtime: Runtime) -> None:
        with self._lock:
            self._busy.discard(runtime)
            self._all.discard(runtime)
            idle = self._idle.get(runtime.spec.revision)
            if idle and runtime in idle:
                idle.remove(runtime)
        if getattr(runtime, "tmp", None):  # thread runtimes share the server's
            shutil.rmtree(runtime.tmp, ignore_errors=True)

    def record_log(self, function_name: str, log_stream: str, line: str) -> None:
        entry = (int(time.time() * 1000), log_stream, line, next(self._log_sequence))
        self._logs[function_name].append(entry)

    def logs(self, function_name: str) -> list[tuple[int, str, str, int]]:
        """``(timestamp_ms, log_stream, message, sequence)`` lines of a function, oldest first."""
        return list(self._logs.get(function_name, ()))

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "runtimes": len(self._all),
                "busy": self._in_flight_total,
                "idle": sum(len(v) for v in self._idle.values()),
            }

    def by_function(self) -> dict[str, int]:
        """Runtimes (busy or idle) per function name."""
        with self._lock:
            return dict(collections.Counter(r.spec.name for r in self._all))

    def reap_function(self, name: str) -> dict[str, int]:
        """Stop the idle runtimes of function ``name`` and of its memory tiers (``name--*``):
        what a client closing its cluster asks for. Busy ones finish their invocation first
        and are reaped when idle."""
        stopped: list = []
        with self._lock:
            for runtimes in self._idle.values():
                for runtime in list(runtimes):
                    if runtime.spec.name == name or runtime.spec.name.startswith(f"{name}--"):
                        runtimes.remove(runtime)
                        stopped.append(runtime)
        for runtime in stopped:
            runtime.kill("idle")
        return {"stopped": len(stopped)}

    def streams(self) -> dict[str, int]:
        """``{log stream: process id}`` of every process runtime (a runtime's identity, as the
        handler's ``context.log_stream_name`` knows it, and as this machine sees it)."""
        with self._lock:
            return {r.log_stream: r.pid for r in self._all if r.pid is not None}

    def pids(self) -> list[int]:
        with self._lock:
            return [r.pid for r in self._all if r.pid is not None]

    def _watch(self) -> None:
        next_reap = time.monotonic() + 1.0
        while not self._closed.wait(self.memory_check_interval):
            with self._lock:
                busy = list(self._busy)
            for runtime in busy:
                inv = runtime.current
                if inv is None or inv.done.is_set():
                    continue
                rss = runtime.rss()
                inv.max_rss = max(inv.max_rss, rss)
                if rss > runtime.spec.memory_mb * MiB:
                    runtime.kill("memory")
            now = time.monotonic()
            if now >= next_reap:
                next_reap = now + 1.0
                self._reap(now)

    def _reap(self, now: float) -> None:
        expired: list[Runtime] = []
        with self._lock:
            for runtimes in self._idle.values():
                for runtime in list(runtimes):
                    if now - runtime.last_used > self.idle_timeout:
                        runtimes.remove(runtime)
                        expired.append(runtime)
        for runtime in expired:
            runtime.kill("idle")

    def close(self, timeout: float = 5.0) -> None:
        """Kill every runtime and wait for the processes to be gone."""
        self._closed.set()
        with self._lock:
            runtimes = list(self._all)
        for runtime in runtimes:
            runtime.kill("shutdown")
        with self._lock:
            snapshots, self._snapshots = list(self._snapshots.values()), {}
        for snapshot in snapshots:
            snapshot.close()
        deadline = time.monotonic() + timeout
        for runtime in runtimes:
            runtime.wait(max(0.0, deadline - time.monotonic()))
        self.spawner.close()
        if self._own_tmp:
            import shutil

            shutil.rmtree(self.tmp_root, ignore_errors=True)
