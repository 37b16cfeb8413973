"""Run every workload on every peer in one run and print a table; ``python -m benchmarks.run``.

Each (workload, peer) is run once to warm up (imports, cold starts, process pools) and then
``--repeat`` times; the best time counts. The ratio column compares with the best peer of the
same workload measured in this run, so machine noise affects every row alike.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import time
from pathlib import Path

from benchmarks.peers import PEERS
from benchmarks.workloads import WORKLOADS


def measure(workload, peer_factory, repeat: int) -> dict:
    collection, expected = workload()
    with peer_factory() as scheduler:
        result = collection.compute(scheduler=scheduler)  # warm-up
        assert result == expected, (result, expected)
        times, report = [], None
        for _ in range(repeat):
            began = time.perf_counter()
            result = collection.compute(scheduler=scheduler)
            times.append(time.perf_counter() - began)
            assert result == expected
            report = getattr(scheduler, "last_report", None)
    row = {"seconds": min(times), "all_seconds": times}
    if report is not None:
        row.update(
            invocations=report.invocations,
            tasks=report.tasks,
            tasks_per_invocation=report.tasks_per_invocation,
            bytes_through_client=report.bytes_to_client + report.bytes_from_client,
        )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--peers", nargs="*", default=list(PEERS), help="subset of peers")
    parser.add_argument("--workloads", nargs="*", default=list(WORKLOADS), help="subset")
    parser.add_argument("--out", default="benchmarks/results", help="folder for the JSON results")
    args = parser.parse_args()

    results: dict = {}
    for workload_name in args.workloads:
        results[workload_name] = {}
        for peer_name in args.peers:
            try:
                results[workload_name][peer_name] = measure(
                    WORKLOADS[workload_name], PEERS[peer_name], args.repeat
                )
            except Exception as e:  # a peer that cannot run here is reported, not fatal
                results[workload_name][peer_name] = {"error": f"{type(e).__name__}: {e}"}
    print_table(results)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = out / f"results-{stamp}.json"
    path.write_text(json.dumps({"machine": machine(), "results": results}, indent=2))
    print(f"\nSaved {path}")


def machine() -> dict:
    import os

    return {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
    }


def print_table(results: dict) -> None:
    header = f"{'workload':<34}{'peer':<30}{'seconds':>9}{'ratio':>8}{'invokes':>9}"
    header += f"{'tasks/inv':>10}{'client MB':>11}"
    print(header)
    print("-" * len(header))
    for workload_name, rows in results.items():
        timed = [r["seconds"] for r in rows.values() if "seconds" in r]
        best = min(timed) if timed else None
        for peer_name, row in rows.items():
            if "error" in row:
                print(f"{workload_name:<34}{peer_name:<30}  skipped: {row['error'][:60]}")
                continue
            extra = ""
            if "invocations" in row:
                extra = (
                    f"{row['invocations']:>9}{row['tasks_per_invocation']:>10.0f}"
                    f"{row['bytes_through_client'] / 1e6:>11.2f}"
                )
            print(
                f"{workload_name:<34}{peer_name:<30}{row['seconds']:>9.3f}"
                f"{row['seconds'] / best:>7.2f}x{extra}"
            )


if __name__ == "__main__":
    main()
