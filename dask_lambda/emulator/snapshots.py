"""SnapStart in the embedded local Lambda: a snapshot per published version, restored by fork.

On AWS, publishing a version of a function whose ``SnapStart`` is ``ApplyOn: PublishedVersions``
runs the function's init once and snapshots the execution environment (its memory and
``/tmp``); every new execution environment of that version is then restored from the snapshot
instead of running init again, and runs the ``snapshot_restore_py`` after-restore hooks.

Here a :class:`Snapshot` is one sandboxed runtime process that ran the version's init
(``_bootstrap.py --snapshot``: the handler's module imported, the before-snapshot hooks run) and
then waits. Each :class:`RestoredProcess` is forked from it on request: it starts with the
snapshot's memory (copy-on-write) and a private copy of its ``/tmp``, in a mount and PID
namespace of its own, with no capabilities, its own log pipe and its own Runtime API, and runs
awslambdaric with ``AWS_LAMBDA_INITIALIZATION_TYPE=snap-start`` (``/runtime/restore/next``,
then the after-restore hooks), as on AWS. What is not emulated: a snapshot's restore here costs
a fork and a copy of ``/tmp`` rather than AWS's lazy loading of snapshot chunks (so restore
times are not AWS's); the snapshot lives in the server process's memory and is made again on
demand after the server restarts; and restored environments share the snapshot's user namespace.
"""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import threading
import time
import uuid

SNAPSHOT_INIT_TIMEOUT_S = 600.0  # AWS's limit on a SnapStart version's init is 10 minutes


class SnapshotFailed(RuntimeError):
    """The version's init or its before-snapshot hooks failed: the version cannot run."""


class Snapshot:
    """The initialized runtime of one published version, from which restored runtimes fork."""

    def __init__(self, manager, spec, argv_for, environment: dict[str, str]):
        self.spec = spec
        self.manager = manager
        self.log_stream = f"{time.strftime('%Y/%m/%d')}/[{spec.version}]{uuid.uuid4().hex}"
        self.control, inside = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self.error: str | None = None
        argv = argv_for(["--snapshot", str(inside.fileno()), spec.handler])
        try:
            self.proc = manager.spawner.popen(
                argv,
                env={**environment, "AWS_LAMBDA_LOG_STREAM_NAME": self.log_stream},
                cwd=spec.code_dir,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                close_fds=True,
                pass_fds=(inside.fileno(),),
            )
        finally:
            inside.close()
        threading.Thread(target=self._keep_logs, daemon=True, name="snapshot-logs").start()
        threading.Thread(target=self._await_init, daemon=True, name="snapshot-init").start()

    def _await_init(self) -> None:
        ready, _, _ = select.select([self.control], [], [], SNAPSHOT_INIT_TIMEOUT_S)
        try:
            answer = json.loads(self.control.recv(65536) if ready else b"{}")
        except (OSError, ValueError):
            answer = {}
        if not answer.get("ready"):
            self.proc.kill()
            self.error = answer.get("error") or (
                "The snapshot's init did not finish: it exited or ran over "
                f"{SNAPSHOT_INIT_TIMEOUT_S:.0f} seconds."
            )
        self._ready.set()

    def _keep_logs(self) -> None:
        """The init's log lines, under the function's logs as on AWS."""
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.manager.record_log(self.spec.name, self.log_stream, line)

    @property
    def state(self) -> str:
        """Lambda's word for the version: ``Pending`` during init, then ``Active`` or ``Failed``."""
        if not self._ready.is_set():
            return "Pending"
        return "Failed" if self.error else "Active"

    def wait_ready(self, timeout: float = SNAPSHOT_INIT_TIMEOUT_S) -> None:
        """Return once init is done; raise :class:`SnapshotFailed` if it failed."""
        self._ready.wait(timeout)
        if self.error or not self._ready.is_set():
            raise SnapshotFailed(self.error or "The snapshot is not ready.")

    def restore(self, environment: dict[str, str], tmp_bytes: int) -> RestoredProcess:
        """Fork a restored execution environment with these variables (its Runtime API, log
        stream) and a ``/tmp`` of ``tmp_bytes``."""
        self.wait_ready()
        return RestoredProcess(self, environment, tmp_bytes)

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        """Stop the snapshot and, with its namespaces, every environment restored from it."""
        self.control.close()
        self.proc.kill()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass


class RestoredProcess:
    """A restored environment, with what :class:`~.runtimes.Runtime` uses of a ``Popen``:
    ``pid`` (its PID 1, as this machine sees it), ``stdout``, ``wait``, ``send_signal``,
    ``returncode``."""

    def __init__(self, snapshot: Snapshot, environment: dict[str, str], tmp_bytes: int):
        self._snapshot = snapshot
        log_read, log_write = os.pipe()
        self._reply, inside = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        request = {"environment": environment, "tmp_bytes": tmp_bytes,
                   "handler": snapshot.spec.handler}  # fmt: skip
        try:
            with snapshot._lock:
                socket.send_fds(snapshot.control, [json.dumps(request).encode()],
                                [log_write, inside.fileno()])  # fmt: skip
        finally:
            os.close(log_write)
            inside.close()
        self.stdout = os.fdopen(log_read, "rb", buffering=0)
        self.returncode: int | None = None
        self._pid: int | None = None
        self._started = threading.Event()
        self._exited = threading.Event()
        threading.Thread(target=self._follow, daemon=True, name="restored-exit").start()

    def _follow(self) -> None:
        while message := self._reply.recv(4096):
            answer = json.loads(message)
            if "init" in answer:
                self._pid = _host_pid(self._snapshot.proc.pid, answer["init"])
                self._started.set()
            elif "exit" in answer:
                self.returncode = answer["exit"]
        if self.returncode is None:  # its parent in the snapshot died with it
            self.returncode = -9
        self._reply.close()
        self._started.set()
        self._exited.set()

    @property
    def pid(self) -> int | None:
        self._started.wait(30)
        return self._pid

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if not self._exited.wait(timeout):
            raise subprocess.TimeoutExpired("restored runtime", timeout)
        return self.returncode

    def send_signal(self, signum: int) -> None:
        pid = self.pid
        if pid is None or self._exited.is_set():
            raise ProcessLookupError
        os.kill(pid, signum)

    def kill(self) -> None:
        self.send_signal(9)


def _host_pid(snapshot_pid: int, pid_in_snapshot: int) -> int | None:
    """This machine's PID of the process the snapshot's namespace numbers ``pid_in_snapshot``
    (its ``NSpid`` line lists one PID per namespace level, this machine's first)."""
    import psutil

    for _ in range(200):
        try:
            descendants = psutil.Process(snapshot_pid).children(recursive=True)
        except psutil.Error:
            return None
        for process in descendants:
            try:
                with open(f"/proc/{process.pid}/status") as f:
                    nspids = next(line.split()[1:] for line in f if line.startswith("NSpid:"))
            except (OSError, StopIteration):
                continue
            if len(nspids) >= 3 and int(nspids[-2]) == pid_in_snapshot:
                return process.pid
        time.sleep(0.01)
    return None
