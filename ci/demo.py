"""The demo behind ``ci/demo``: real Dask workloads on the embedded local Lambda.

Starts a LambdaCluster with nothing configured (so it starts the embedded local Lambda and deploys
dask-lambda's handler into it), runs a dask.bag and a dask.array workload, checks each answer
against Dask's synchronous scheduler and prints what each compute took.
"""

from __future__ import annotations

import operator
import sys
import time
from pathlib import Path

import dask.array as da
import dask.bag as db
from dask.diagnostics import ProgressBar

from dask_lambda import LambdaCluster

OUTPUT = Path(__file__).resolve().parent.parent / "demo-output"


def describe(name: str, seconds: float, report) -> None:
    mb = 1024 * 1024
    print(
        f"  {name}: {seconds:.2f} s, {report.invocations} invocations for {report.tasks} tasks"
        f" ({report.tasks_per_invocation:.0f} per invocation), {report.cold_starts} cold starts,"
        f" {report.bytes_spilled / mb:.1f} MB spilled to S3,"
        f" {report.bytes_to_client / mb:.2f} MB downloaded by the client"
    )


def main() -> int:
    started = time.perf_counter()
    with LambdaCluster() as cluster:
        print(f"Started {cluster} in {time.perf_counter() - started:.1f} s")
        print(
            f"  endpoint {cluster.endpoint_url}, spill bucket s3://{cluster.bucket}/{cluster.prefix}"
        )

        bag = db.from_sequence(range(10_000), npartitions=1000).map(operator.add, 1).sum()
        began = time.perf_counter()
        total = bag.compute(scheduler=cluster)
        describe(
            "dask.bag  sum(x + 1 for x in range(10_000)), 1000 partitions",
            time.perf_counter() - began,
            cluster.last_report,
        )
        assert total == bag.compute(scheduler="sync") == 50_005_000
        print(f"    = {total}")

        x = da.random.default_rng(42).random((4000, 4000), chunks=(1000, 1000))
        y = (x @ x.T).mean(axis=0)
        began = time.perf_counter()
        print("  dask.array (x @ x.T).mean(axis=0), 4000x4000 in 16 chunks of 8 MB ...")
        with ProgressBar(dt=1.0):  # dask's own progress bar: the step takes tens of seconds
            means = y.compute(scheduler=cluster)
        describe(
            "dask.array (x @ x.T).mean(axis=0), 4000x4000 in 16 chunks of 8 MB",
            time.perf_counter() - began,
            cluster.last_report,
        )
        expected = y.compute(scheduler="sync")
        assert abs(means - expected).max() < 1e-6
        print(f"    = array of {means.shape[0]} means, first {means[0]:.4f}; matches sync")
        report = cluster.last_report
        print(f"  billed {report.billed_gb_seconds:.2f} GB-s, ~${report.cost_usd:.6f} on AWS")
        timeline = cluster.plot_timeline(OUTPUT / "timeline.png")
        print(f"  timeline of every invocation of this demo: {timeline.resolve()}")
        lease = cluster.backend.ledger.lease_name  # the running client's own: not a value
        leftover = [n for n in cluster.store.list(cluster.prefix + "/") if n != lease]
        print(f"  S3 objects left under the prefix: {len(leftover)}")
    print(f"Done in {time.perf_counter() - started:.1f} s; local Lambda shut down.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
