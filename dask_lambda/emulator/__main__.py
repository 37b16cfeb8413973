"""``python -m dask_lambda.emulator``: serve the embedded local Lambda until told to stop.

Prints one JSON line (``{"endpoint_url": ..., "pid": ..., "workdir": ..., "credentials": ...}``,
the last being the local admin's key) on stdout once it accepts requests.
Stops on SIGTERM or SIGINT, or when the process named by ``--parent-pid`` is gone, and then kills
its runtimes and removes its temporary folder.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading

from .server import LocalLambdaServer

THREAD_MODE_SWITCH_INTERVAL = 0.05  # seconds


def serve(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dask_lambda.emulator")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--concurrency-limit", type=int, default=1000)
    parser.add_argument("--idle-timeout", type=float, default=300.0)
    parser.add_argument("--parent-pid", type=int, default=0)
    parser.add_argument("--runtime-mode", choices=["process", "thread"], default="process")
    parser.add_argument("--seed", type=int, default=None, help="seed of fault injection")
    args = parser.parse_args(argv)

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    if args.parent_pid:
        threading.Thread(target=_watch_parent, args=(args.parent_pid, stop), daemon=True).start()

    if args.runtime_mode == "thread":
        # A thousand handler threads wait for one GIL here; each waiter wakes every switch
        # interval to ask for it. At the default 5 ms that storm of wake-ups cost more CPU than
        # the handlers (W5 at concurrency 1000: 4.7 s, 3.5 s at 50 ms).
        sys.setswitchinterval(THREAD_MODE_SWITCH_INTERVAL)
        # Handlers import from the shared unpacked code: write no bytecode into it (a package
        # runs as shipped, see code_store).
        sys.dont_write_bytecode = True
    server = LocalLambdaServer(
        port=args.port,
        concurrency_limit=args.concurrency_limit,
        idle_timeout=args.idle_timeout,
        runtime_mode=args.runtime_mode,
        seed=args.seed,
    ).start()
    try:
        ready = {
            "endpoint_url": server.endpoint_url,
            "pid": os.getpid(),
            "workdir": str(server.workdir),
            "credentials": server.admin.env(),
            "partial_isolation": server.runtimes.isolation_note,
        }
        print(json.dumps(ready), flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        server.close()


def _watch_parent(parent_pid: int, stop: threading.Event) -> None:
    while not stop.wait(0.25):
        if os.getppid() != parent_pid:
            stop.set()


if __name__ == "__main__":
    serve(sys.argv[1:])
