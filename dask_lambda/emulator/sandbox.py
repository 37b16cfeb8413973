"""A sandbox per runtime process: what a Lambda execution environment sees, and nothing more.

On Linux with bubblewrap (``bwrap``, Debian's ``bubblewrap``: what Flatpak uses; no daemon, no
setuid needed as root or with user namespaces) every runtime of the local Lambda runs in a mount
and PID namespace of its own:

- read-only: the system's ``/usr`` (shared libraries; ``/bin``, ``/lib``, ``/lib64`` as links or
  binds), a few files of ``/etc`` (name resolution, certificates), the interpreter's own folder
  (at its path: the interpreter is linked to it), the managed-runtime stand-in at
  ``/var/runtime``, the function's code at ``/var/task`` and its layers under ``/opt``;
- writable: a private ``/tmp`` of the function's ephemeral-storage size, gone with the runtime;
  and the host folders named in ``lambda.local.mounts`` (an EFS stand-in, bound at their path);
- a fresh ``/proc`` of its own PID namespace: no process of the client, the server or another
  runtime is visible or signalable;
- the host's network, so it reaches the local endpoints (S3, SSM, Lambda) on 127.0.0.1;
- no capabilities, even when the server runs as root: no device nodes, mounts or raw sockets.

Nothing else of the client's filesystem — its home, working directory, ``/tmp`` — exists inside.
Where bubblewrap is missing or namespaces are not allowed (macOS, a container without user
namespaces), :func:`available` is False and the local Lambda says once, at start, that
isolation is partial: runtimes then see the machine's filesystem and processes.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

TASK_ROOT = "/var/task"
RUNTIME_DIR = "/var/runtime"
BOOTSTRAP = "/var/rapid/bootstrap.py"
_NETWORK_FILES = ("/etc/resolv.conf", "/etc/hosts")  # Lambda's, bound over an image's own
_ETC = ("resolv.conf", "hosts", "nsswitch.conf", "host.conf", "ssl", "ca-certificates",
        "localtime", "passwd", "group")  # fmt: skip


@functools.cache
def available() -> bool:
    """Whether ``bwrap`` runs here with a private PID namespace (probed once per process)."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return False
    probe = [bwrap, "--ro-bind", "/", "/", "--proc", "/proc", "--unshare-pid", "--die-with-parent",
             "true"]  # fmt: skip
    try:
        return subprocess.run(probe, capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def warn_partial(reason: str) -> None:
    warnings.warn(
        f"The local Lambda runs its runtimes without a sandbox ({reason}): tasks can see this"
        " machine's files and processes, which they could not on AWS. Install bubblewrap"
        " (apt-get install bubblewrap) on Linux for a private filesystem and PID namespace per"
        " runtime.",
        RuntimeWarning,
        stacklevel=4,
    )


def command(
    argv: list[str],
    code_dir: str,
    layer_dirs: tuple[str, ...],
    runtime_dir: str,
    bootstrap: str,
    tmp_mb: int,
    mounts: tuple[str, ...] = (),
    snapshot: bool = False,
) -> list[str]:
    """``bwrap ... argv`` for a runtime; ``argv`` names paths as seen inside (see
    :func:`inside_paths`). A SnapStart ``snapshot`` gets a user namespace of its own and the
    capabilities, in that namespace only, to give each environment it restores namespaces of
    its own (``_bootstrap.py`` drops them all before the runtime starts)."""
    # --cap-drop ALL: bwrap run by root keeps root's capabilities, with which a task could make
    # a device node for this machine's disk and mount it; on AWS a function holds none.
    privileges = (["--unshare-user", "--uid", "0", "--gid", "0", "--cap-add", "CAP_SYS_ADMIN",
                   "--cap-add", "CAP_SETPCAP"] if snapshot else ["--cap-drop", "ALL"])  # fmt: skip
    args = _namespaces(privileges)
    args += _system_binds()
    args += ["--ro-bind", runtime_dir, RUNTIME_DIR, "--ro-bind", bootstrap, BOOTSTRAP]
    args += ["--ro-bind", code_dir, TASK_ROOT]
    for index, layer in enumerate(layer_dirs):
        args += ["--ro-bind", layer, f"/opt/layer-{index}"]
    args += _writable(tmp_mb, mounts)
    return [*args, "--chdir", TASK_ROOT, "--", *argv]


def _namespaces(privileges: list[str]) -> list[str]:
    """bwrap and what every runtime gets of its own: PID, IPC and UTS namespaces, a ``/proc``
    and ``/dev``, its ``privileges``; gone with the server."""
    return [shutil.which("bwrap") or "bwrap", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
            "--hostname", "localhost", "--die-with-parent", *privileges, "--proc", "/proc",
            "--dev", "/dev"]  # fmt: skip


def _writable(tmp_mb: int, mounts: tuple[str, ...]) -> list[str]:
    """The only places a runtime writes: its own ``/tmp`` of ``tmp_mb``, and ``mounts``."""
    args = ["--size", str(max(1, tmp_mb) * 1024 * 1024), "--tmpfs", "/tmp"]
    for mount in mounts:
        if os.path.isdir(mount):
            args += ["--bind", mount, mount]
    return args


def image_command(
    argv: list[str], rootfs: str, working_dir: str, tmp_mb: int, mounts: tuple[str, ...] = ()
) -> list[str]:
    """``bwrap ... argv`` for a runtime of an image function: the image's root filesystem is
    the sandbox's root (each of its top-level entries bound read-only where it has them), and
    this machine's ``/usr``, ``/lib*``, ``/bin`` and ``/etc`` files only where it has not
    (the stand-in base image brings no operating system; AWS's brings Amazon Linux)."""
    args = _namespaces(["--cap-drop", "ALL"])
    root = Path(rootfs)
    present = set()
    for entry in sorted(root.iterdir()):
        if entry.name in ("proc", "dev", "tmp", "sys"):
            continue
        present.add(entry.name)
        if entry.is_symlink():
            args += ["--symlink", os.readlink(entry), f"/{entry.name}"]
        else:
            args += ["--ro-bind", str(entry), f"/{entry.name}"]
    binds = _system_binds()
    for index in range(0, len(binds), 3):
        option, source, target = binds[index : index + 3]
        top = target.strip("/").split("/")[0]
        if top not in present or target in _NETWORK_FILES:  # Lambda's own name resolution
            args += [option, source, target]
    args += _writable(tmp_mb, mounts)
    return [*args, "--chdir", working_dir, "--", *argv]


@functools.cache
def _system_binds() -> list[str]:
    """What every sandbox shares read-only with this machine (read once per server)."""
    args = ["--ro-bind", "/usr", "/usr"]
    for name in ("bin", "sbin", "lib", "lib32", "lib64"):
        path = Path("/") / name
        if path.is_symlink():
            args += ["--symlink", os.readlink(path), str(path)]
        elif path.is_dir():
            args += ["--ro-bind", str(path), str(path)]
    for name in _ETC:
        path = Path("/etc") / name
        if path.exists():
            args += ["--ro-bind", str(path), str(path)]
    return args + ["--ro-bind", sys.base_prefix, sys.base_prefix]


def inside_paths(layer_dirs: tuple[str, ...]) -> tuple[str, ...]:
    """Where the layers are inside the sandbox."""
    return tuple(f"/opt/layer-{index}" for index in range(len(layer_dirs)))


def interpreter() -> str:
    """The interpreter the sandbox runs: this one, by its real path (inside the bound prefix)."""
    return os.path.realpath(sys.executable)
