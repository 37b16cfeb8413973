"""Every workload on every peer, in one run: ``benchmarks/run`` (or ``python -m benchmarks.run``).

W0  the fixed costs: each peer's start-up in fresh processes (import, cluster, first result, peak
    memory), and a trivial compute on a started peer (see benchmarks/fixed_cost.py).
W1  bag map+sum over 1000 partitions; W2 delayed tree reduction over 4096 leaves — on dask's sync,
    threads and processes schedulers, distributed LocalCluster(2), Lithops' localhost backend
    (its concurrent.futures executor as the Dask scheduler) and dask-lambda.
W3  10,000 no-op calls: LambdaExecutor.map vs Lithops' own map and a ProcessPoolExecutor(2).
W4  ~1 GB of intermediate arrays in 64 MB chunks: bytes through the client vs bytes produced, and
    dask-lambda's spill throughput vs raw boto3 put/get on the same S3 endpoint.
W5  how wide one client drives Lambda: the invoker alone against an endpoint that answers at once,
    then 10,000 x 50 ms tasks at concurrency 100/1000/3000 on the thread-mode local Lambda, with
    the lean invoker and with boto3's invoke (before); W6 the same at AWS's latency (see
    benchmarks/scale.py).
W7  a TPC-H-like join and groupby over ~200 MB of parquet: local disk for dask's threads and
    distributed LocalCluster(2), the local Lambda's S3 for dask-lambda (benchmarks/tpch.py).
W8  dask-examples' array notebook at 10,000^2 (y = x + x.T; y[::2, 5000:].mean(axis=1)).
W9  a cold start: time to the first result on a fresh runtime, for the default package and for
    pandas + pyarrow, with bytecode and sources only (benchmarks/cold_start.py).
W10 container images against zips: cold starts for the default package and pandas + pyarrow +
    scikit-learn as zip (+ dependencies in S3) and image; W10-build: building and pushing the
    image, cold, cached and after one changed file, beside the zip's (benchmarks/images.py).

Each (workload, peer) runs in a process of its own (so no peer inherits another's threads or
processes): its start-up is timed, then a first compute (fresh: cold runtimes, nothing learned,
reported apart) and ``--repeat`` more; their median counts (min and max beside it), and the
ratio compares it with the fastest peer of the same workload in this run. A peer that cannot
run here, or does not finish within ``--budget`` seconds, is reported as skipped with the reason.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from tqdm import tqdm

from benchmarks import calls, cold_start, fixed_cost, images, scale, tpch, workloads
from benchmarks.peers import GRAPH_PEERS, dask_lambda_local, dask_named, distributed_local
from benchmarks.rows import timing

W4_PEERS = {
    "dask sync": lambda: dask_named("sync"),
    "dask threads": lambda: dask_named("threads"),
    "distributed LocalCluster(2)": distributed_local,
    # Chunks of 64 MB: batches are sized by the chunk sizes the planner learns (no max_tasks).
    "dask-lambda (local Lambda)": lambda: dask_lambda_local(memory=4096),
}


# W0's trivial compute: distributed in-process (the issue's reference), and dask's threads.
TRIVIAL_PEERS = {
    "dask threads": (lambda: dask_named("threads"), False),
    "distributed LocalCluster(processes=False), client.compute": (
        lambda: distributed_local(processes=False),
        True,
    ),
    "dask-lambda (local Lambda)": (dask_lambda_local, False),
}
# W7: each peer reads the data where it would (see benchmarks/tpch.py).
DATA_PEERS = {
    "dask threads": (lambda: dask_named("threads"), tpch.local_prepare),
    "distributed LocalCluster(2)": (distributed_local, tpch.local_prepare),
    "dask-lambda (local Lambda)": (tpch.lambda_factory, tpch.lambda_prepare),
}
W8_PEERS = {
    "dask threads": lambda: dask_named("threads"),
    "distributed LocalCluster(2)": distributed_local,
    "dask-lambda (local Lambda)": lambda: dask_lambda_local(memory=1024),
}


WORKLOADS = ["W0", "W1", "W2", "W3", "W4", "W5", "W6", "W7", "W8", "W9", "W10"]


def measure_graph(build, peer_factory, repeat: int, **compute_kwargs) -> dict:
    """A peer's start-up, its first compute (fresh: nothing learned, cold runtimes), and the
    median with min and max of ``repeat`` computes after it."""
    collection, expected, *_ = build()
    return measure(lambda scheduler: (collection, expected), peer_factory, repeat,
                   **compute_kwargs)  # fmt: skip


def measure(prepare, peer_factory, repeat: int, **compute_kwargs) -> dict:
    """:func:`measure_graph` for a collection that needs the started peer:
    ``prepare(scheduler) -> (collection, expected or None)`` runs after the start-up's timing
    (W7 uploads its data to the local Lambda's S3 there)."""
    began = time.perf_counter()
    with peer_factory() as scheduler:
        startup = time.perf_counter() - began
        collection, expected = prepare(scheduler)
        began = time.perf_counter()
        first = collection.compute(scheduler=scheduler, **compute_kwargs)  # fresh, and warm-up
        first_seconds = time.perf_counter() - began
        if expected is not None:
            assert same(first, expected), (first, expected)
        times, cpu, report = [], [], None
        for _ in range(repeat):
            began, cpu_began = time.perf_counter(), _process_cpu()
            result = collection.compute(scheduler=scheduler, **compute_kwargs)
            times.append(time.perf_counter() - began)
            cpu.append(_process_cpu() - cpu_began)
            assert same(result, first)
            report = getattr(scheduler, "last_report", None)
    row: dict = timing(times, startup_seconds=startup, first_seconds=first_seconds)
    # This process's CPU per compute: the client, and for LocalCluster its scheduler too
    # (its workers are other processes, as dask-lambda's runtimes are).
    row["process_cpu_seconds"] = statistics.median(cpu)
    if report is not None:
        # Every spilled object is written once and read at least once, in row["seconds"].
        if report.bytes_spilled:
            row["throughput_mb_s"] = 2 * report.bytes_spilled / row["seconds"] / 1e6
        row.update(
            invocations=report.invocations,
            tasks=report.tasks,
            tasks_per_invocation=report.tasks_per_invocation,
            bytes_through_client=report.bytes_through_client,
            bytes_spilled=report.bytes_spilled,
            cold_starts=report.cold_starts,
            cost_usd=report.cost_usd,
            client_cpu_us_per_task=report.client_cpu_seconds / report.tasks * 1e6,
            dask_graph_us_per_task=report.dask_graph_cpu_seconds / report.tasks * 1e6,
            # the wire (issue 26's target: 120 bytes a task for W1's batches)
            request_bytes_per_task=sum(r["request_bytes"] for r in report.invocation_records)
            / report.tasks,
            response_bytes_per_task=sum(r["response_bytes"] for r in report.invocation_records)
            / report.tasks,
        )
    return row


def same(a, b) -> bool:
    """Equal results: numbers, numpy arrays (to float rounding: schedulers sum in different
    orders) and pandas objects."""
    import numpy as np

    if hasattr(a, "sort_index") and hasattr(a, "index"):  # pandas: order of groups may differ
        a, b = a.sort_index(), b.sort_index()
        return a.index.equals(b.index) and np.allclose(a.to_numpy(), b.to_numpy())
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.shape(a) == np.shape(b) and np.allclose(a, b)
    return a == b


def _process_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def plan(selected: list[str], repeat: int) -> list[tuple[str, str, object]]:
    jobs: list[tuple[str, str, object]] = []
    if "W0" in selected:
        jobs += [("W0-start", peer, lambda p=peer: fixed_cost.startup(p))
                 for peer in fixed_cost.STARTUP_PEERS]  # fmt: skip
        jobs += [("W0-trivial", peer, lambda f=factory, c=client:
                  fixed_cost.trivial_compute(f, client_compute=c))
                 for peer, (factory, client) in TRIVIAL_PEERS.items()]  # fmt: skip
    for name, build in (("W1", workloads.w1_bag), ("W2", workloads.w2_tree)):
        if name in selected:
            for peer, factory in GRAPH_PEERS.items():
                # Lithops starts a job per submit; Dask's chunksize puts 100 tasks in each.
                extra = {"chunksize": 100} if peer.startswith("Lithops") else {}
                jobs.append((name, peer, lambda b=build, f=factory, e=extra: {
                    **measure_graph(b, f, repeat, **e), **({"note": "chunksize=100"} if e else {})
                }))  # fmt: skip
    if "W3" in selected:
        jobs += [("W3", peer, fn) for peer, fn in calls.PEERS.items()]
    if "W4" in selected:
        jobs += [("W4", peer, lambda f=factory: measure_graph(workloads.w4_large_arrays, f, 1))
                 for peer, factory in W4_PEERS.items()]  # fmt: skip
        jobs.append(("W4", "raw boto3 put+get (same S3)", scale.raw_s3_throughput))
    if "W7" in selected:
        jobs += [("W7", peer, lambda f=factory, p=prepare: {
                     **measure(p, f, repeat), "note": f"{tpch.data_megabytes():.0f} MB of parquet"})
                 for peer, (factory, prepare) in DATA_PEERS.items()]  # fmt: skip
    if "W8" in selected:
        jobs += [("W8", peer, lambda f=factory: measure_graph(workloads.w8_array, f, repeat))
                 for peer, factory in W8_PEERS.items()]  # fmt: skip
    if "W9" in selected:
        jobs += [("W9", peer, lambda a=args: cold_start.cold_start(*a))
                 for peer, args in cold_start.PEERS.items()]  # fmt: skip
    if "W10" in selected:
        jobs += [("W10", peer, lambda f=fn, a=args: f(*a)) for peer, (fn, args) in
                 images.PEERS.items()]  # fmt: skip
        jobs += [("W10-build", peer, lambda f=fn, a=args: f(*a)) for peer, (fn, args) in
                 images.BUILD_PEERS.items()]  # fmt: skip
    clients = scale.INVOKE_CLIENTS
    if {"W5", "W5-invoker"} & set(selected):
        jobs += [
            ("W5-invoker", f"{label}, immediate endpoint", lambda k=kind: scale.invoker_rate(k))
            for kind, label in clients.items()
        ]
    for workload, latency, cold in (("W5", 0.0, 0.0),
                                    ("W6", scale.AWS_LATENCY, scale.AWS_COLD_START)):  # fmt: skip
        if workload in selected:
            jobs += [
                (workload, f"concurrency {c}, {label}",
                 lambda c=c, k=kind, lat=latency, cs=cold: scale.simulate(c, k, lat, cs))
                for c in scale.CONCURRENCY for kind, label in clients.items()
            ]  # fmt: skip
    return jobs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workloads", nargs="*", default=WORKLOADS)
    parser.add_argument("--out", default="benchmarks/results", help="folder for the JSON results")
    parser.add_argument("--budget", type=float, default=600, help="seconds per workload and peer")
    parser.add_argument("--job", help=argparse.SUPPRESS)  # "W1::peer": run one, print JSON
    args = parser.parse_args()

    jobs = plan(args.workloads, args.repeat)
    if args.job:
        run = {f"{w}::{p}": fn for w, p, fn in jobs}[args.job]
        try:
            row = run()
        except Exception as e:  # a peer that cannot run here is reported, not fatal
            row = {"error": f"{type(e).__name__}: {e}"}
        print("RESULT " + json.dumps(row, default=str), flush=True)
        return

    results: dict = {}
    with tqdm(jobs, unit="run", desc="benchmarks") as progress:
        for workload, peer, _ in progress:
            progress.set_postfix_str(f"{workload} {peer}"[:50])
            results.setdefault(workload, {})[peer] = run_isolated(workload, peer, args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = out / f"results-{stamp}.json"
    path.write_text(json.dumps({"machine": machine(), "results": results}, indent=2, default=str))
    print_tables(results)
    print(f"\nSaved {path}")


def run_isolated(workload: str, peer: str, args) -> dict:
    """Run one (workload, peer) in a child process, killed with its children past the budget."""
    # The workload that plans the job: W0 for W0-start, W5 for W5-invoker.
    command = [sys.executable, "-m", "benchmarks.run", "--job", f"{workload}::{peer}",
               "--workloads", workload.split("-")[0], "--repeat", str(args.repeat)]  # fmt: skip
    root = str(Path(__file__).resolve().parent.parent)  # Lithops' workers import benchmarks.*
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
    }
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             text=True, start_new_session=True, env=env)  # fmt: skip
    try:
        out, _ = child.communicate(timeout=args.budget)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        child.communicate()
        return {"error": f"did not finish within the {args.budget:.0f} s budget"}
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
        _kill_detached_runners()
    for line in out.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    return {"error": f"exited with status {child.returncode} and no result"}


def _kill_detached_runners() -> None:
    """Lithops' localhost runner leaves its own session, so a budget's killpg misses it: left
    running, it would load the machine for every later row (and anything else run after)."""
    import psutil

    for process in psutil.process_iter(["cmdline"]):
        if any("localhost-runner" in part for part in process.info["cmdline"] or ()):
            with contextlib.suppress(psutil.Error):
                process.kill()


def machine() -> dict:
    return {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
    }


def print_tables(results: dict) -> None:
    for workload, rows in results.items():
        timed = [r["seconds"] for r in rows.values() if "seconds" in r]
        best = min(timed) if timed else None
        print(f"\n{workload}")
        print(f"  {'peer':<44}{'seconds':>9}{'ratio':>8}  details")
        for peer, row in rows.items():
            if "error" in row:
                print(f"  {peer:<44}  skipped: {row['error'][:90]}")
                continue
            details = describe(row)
            seconds = f"{row['seconds']:.4f}" if row["seconds"] < 0.1 else f"{row['seconds']:.3f}"
            print(f"  {peer:<44}{seconds:>9}{row['seconds'] / best:>7.2f}x  {details}")


def describe(row: dict) -> str:
    parts = []
    if "min_seconds" in row:
        parts.append(f"{row['min_seconds']:.3f}-{row['max_seconds']:.3f} s")
    if "startup_seconds" in row:
        parts.append(f"start-up {row['startup_seconds']:.2f} s")
    if "import_seconds" in row:
        parts.append(
            f"import {row['import_seconds']:.2f} s, first result at"
            f" {row['first_result_seconds']:.2f} s, peak {row['peak_mib']:.0f} MiB"
        )
    if "first_seconds" in row:
        parts.append(f"first (fresh) {row['first_seconds']:.2f} s")
    if "process_cpu_seconds" in row:
        parts.append(f"process CPU {row['process_cpu_seconds']:.2f} s/compute")
    if "mount_seconds" in row:
        parts.append(
            f"mount {row['mount_seconds']:.2f} s (last byte at"
            f" {row['mount_download_seconds']:.2f}, unpack done"
            f" {row['mount_extract_seconds']:.2f} later)"
        )
    if "invocations" in row:
        parts.append(
            f"{row['invocations']} invocations, {row['tasks_per_invocation']:.0f} tasks/inv"
        )
    if "bytes_spilled" in row:
        parts.append(
            f"client {row['bytes_through_client'] / 1e6:.1f} MB,"
            f" spilled {row['bytes_spilled'] / 1e6:.0f} MB"
        )
    for key, label in (("throughput_mb_s", "MB/s through S3"), ("ideal_seconds", "s ideal"),
                       ("efficiency", "of ideal"), ("calls_per_second", "calls/s"),
                       ("invocations_per_second", "inv/s"),
                       ("client_cpu_ms_per_invocation", "ms client CPU/inv"),
                       ("lambda_cpu_ms_per_invocation", "ms local Lambda CPU/inv"),
                       ("scheduler_us_per_task", "µs scheduler/task"),
                       ("client_cpu_us_per_task", "µs client CPU/task"),
                       ("dask_graph_us_per_task", "µs of it dask's graph work"),
                       ("request_bytes_per_task", "request B/task"),
                       ("response_bytes_per_task", "response B/task"),
                       ("client_busy", "client busy"),
                       ("lambda_busy", "local Lambda busy")):  # fmt: skip
        if key in row:
            value = row[key]
            share = key in ("efficiency", "client_busy", "lambda_busy")
            parts.append(
                f"{value:.0%} {label}" if share else f"{value:.{2 if 'cpu' in key else 1}f} {label}"
            )
    if "note" in row:
        parts.append(row["note"])
    return "; ".join(parts)


if __name__ == "__main__":
    main()
