"""Entry point of one runtime process of the embedded local Lambda.

Run by path (``python .../_bootstrap.py HANDLER``), never imported: the deployed code, not this
package, must own the ``dask_lambda`` name inside the runtime. It ties the process's life to the
local Lambda server (``PR_SET_PDEATHSIG``), then hands over to AWS's own runtime interface client,
``awslambdaric``, exactly as ``python -m awslambdaric HANDLER`` would.

``python .../_bootstrap.py --snapshot FD HANDLER`` is a SnapStart *snapshot* instead: it runs the
function's init once (imports the handler's module, then the ``snapshot_restore_py``
before-snapshot hooks, as awslambdaric does before Lambda takes the snapshot), says so on the
control socket ``FD``, and from then on forks one *restored* execution environment per request,
each in a mount and PID namespace of its own with a private copy of the snapshot's ``/tmp``,
no capabilities, its own log pipe and Runtime API. A restored environment starts awslambdaric
with ``AWS_LAMBDA_INITIALIZATION_TYPE=snap-start``: it finds the handler imported, asks
``/runtime/restore/next`` and runs the after-restore hooks, as on AWS.
"""

import ctypes
import json
import os
import runpy
import shutil
import signal
import socket
import sys

PR_SET_PDEATHSIG = 1
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = (
    1, 2, 4, 8, 32, 4096, 16384, 1 << 18,
)  # fmt: skip
# What bwrap covers read-only in the /proc it mounts; a restored environment's own /proc too.
_PROC_COVERS = ("/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus")
_libc = ctypes.CDLL(None, use_errno=True)


def _die_with_parent() -> None:
    expected_parent = int(os.environ.pop("_DASK_LAMBDA_PARENT_PID", "0"))
    try:
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if expected_parent and os.getppid() != expected_parent:
        os._exit(1)  # the server died before prctl took effect


def _run_awslambdaric(handler: str) -> None:
    sys.argv = ["awslambdaric", handler]
    runpy.run_module("awslambdaric", run_name="__main__", alter_sys=True)


# -- SnapStart ----------------------------------------------------------------------------------
def _mount(source, target: str, fstype, flags: int, data: str | None = None) -> None:
    encode = lambda value: value.encode() if value else None  # noqa: E731
    if _libc.mount(encode(source), target.encode(), encode(fstype), flags, encode(data)) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{os.strerror(errno)}: mount {target}")


def _drop_capabilities() -> None:
    """No capability left, none to regain through exec: what a function holds on AWS."""
    with open("/proc/sys/kernel/cap_last_cap") as f:
        last = int(f.read())
    for cap in range(last + 1):
        _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    data = (ctypes.c_uint32 * 6)()
    if _libc.capset(header, data) != 0:
        raise OSError(ctypes.get_errno(), "capset")
    _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)


def _take_snapshot(handler: str) -> str | None:
    """The init a snapshot holds; the error that stops it, or None."""
    import importlib
    import traceback

    try:
        importlib.import_module(handler.rsplit(".", 1)[0].replace("/", "."))
        from awslambdaric import lambda_runtime_hooks_runner

        lambda_runtime_hooks_runner.run_before_snapshot()  # pops each hook: they run once
    except BaseException:  # noqa: BLE001 - the version fails to publish, as on AWS
        return traceback.format_exc()
    return None


# Python re-seeds ``random`` in a forked child; a restore on AWS is no fork, and every
# environment restored from one snapshot starts with the snapshot's random state. Put it back,
# so that only the function's after-restore hooks make the environments' streams differ.
_snapshot_random_state = None


def _serve_snapshot(control_fd: int, handler: str) -> None:
    control = socket.socket(fileno=control_fd)
    failure = _take_snapshot(handler)
    sys.stdout.flush()
    control.send(json.dumps({"ready": failure is None, "error": failure}).encode())
    if failure is not None:
        os._exit(1)
    global _snapshot_random_state
    if "random" in sys.modules:
        _snapshot_random_state = sys.modules["random"].getstate()
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # restored environments are reaped at exit
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(control, 65536, 2)
        except OSError:
            os._exit(0)
        if not message:  # the server is gone or stopped the snapshot
            os._exit(0)
        if os.fork() == 0:
            control.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            try:
                _restore(json.loads(message), *fds)
            finally:
                os._exit(70)
        for fd in fds:
            os.close(fd)


def _restore(request: dict, log_fd: int, reply_fd: int) -> None:
    """One restored execution environment: namespaces of its own, then its PID 1."""
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    reply = socket.socket(fileno=reply_fd)
    os.unshare(os.CLONE_NEWNS | os.CLONE_NEWPID)
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    snapshot_tmp = os.open("/tmp", os.O_RDONLY | os.O_DIRECTORY)
    _mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, f"size={request['tmp_bytes']},mode=1777")
    shutil.copytree(f"/proc/self/fd/{snapshot_tmp}", "/tmp", symlinks=True, dirs_exist_ok=True)
    os.close(snapshot_tmp)
    init = os.fork()
    if init == 0:
        reply.close()
        _environment_init(request)
    reply.send(json.dumps({"init": init}).encode())
    _, status = os.waitpid(init, 0)
    reply.send(json.dumps({"exit": os.waitstatus_to_exitcode(status)}).encode())
    os._exit(0)


def _environment_init(request: dict) -> None:
    """PID 1 of a restored environment: its own /proc, no capabilities, the runtime as its
    child, reaping whatever the runtime leaves; exits as the runtime did (128 + a signal)."""
    _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    for path in _PROC_COVERS:
        if os.path.exists(path):
            _mount(path, path, None, MS_BIND | MS_REC)
            _mount(None, path, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_REC)
    _drop_capabilities()
    runtime = os.fork()
    if runtime == 0:
        os.environ.update(request["environment"])
        if _snapshot_random_state is not None:
            sys.modules["random"].setstate(_snapshot_random_state)
        _run_awslambdaric(request["handler"])
        os._exit(0)
    while True:
        pid, status = os.waitpid(-1, 0)
        if pid == runtime:
            code = os.waitstatus_to_exitcode(status)
            os._exit(128 - code if code < 0 else code)


if __name__ == "__main__":
    _die_with_parent()
    # Drop this file's folder from the path: the task root (PYTHONPATH) comes first, as on Lambda.
    sys.path[:] = [p for p in sys.path if p != os.path.dirname(os.path.abspath(__file__))]
    if sys.argv[1] == "--snapshot":
        _serve_snapshot(int(sys.argv[2]), sys.argv[3])
    else:
        _run_awslambdaric(sys.argv[1])
