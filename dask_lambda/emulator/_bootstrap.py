"""Entry point of one runtime process of the embedded local Lambda.

Run by path (``python .../_bootstrap.py HANDLER``), never imported: the deployed code, not this
package, must own the ``dask_lambda`` name inside the runtime. It ties the process's life to the
local Lambda server (``PR_SET_PDEATHSIG``), then hands over to AWS's own runtime interface client,
``awslambdaric``, exactly as ``python -m awslambdaric HANDLER`` would.
"""

import ctypes
import os
import runpy
import signal
import sys

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    expected_parent = int(os.environ.pop("_DASK_LAMBDA_PARENT_PID", "0"))
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if expected_parent and os.getppid() != expected_parent:
        os._exit(1)  # the server died before prctl took effect


if __name__ == "__main__":
    _die_with_parent()
    # Drop this file's folder from the path: the task root (PYTHONPATH) comes first, as on Lambda.
    sys.path[:] = [p for p in sys.path if p != os.path.dirname(os.path.abspath(__file__))]
    sys.argv = ["awslambdaric", *sys.argv[1:]]
    runpy.run_module("awslambdaric", run_name="__main__", alter_sys=True)
