"""The soak: ten thousand tasks while a tenth of invocations fail (its own file, so the suite's
two workers start it first, beside the next heaviest file)."""

from __future__ import annotations

import os

import dask.bag as db
import pytest
import tasks
from conftest import gone, spill_objects, wait_until

from dask_lambda import LambdaCluster

SOAK_TASKS = int(os.environ.get("DASK_LAMBDA_SOAK_TASKS", "10000"))


@pytest.mark.slow
def test_soak_with_ten_percent_faults():
    """>= 10,000 tasks while 10% of invocations crash, run out of memory, time out or are
    throttled, and 2% of S3 requests fail: exactly the right answer, nothing left behind."""
    partitions = SOAK_TASKS // 2
    # Batches of 25 tasks: ~480 invocations and ~45 injected invocation failures (batches of
    # 10 made 2.5x the invocations and took 1.8x as long).
    # A 30 s function timeout bounds how long a lost answer is waited for (timeout + 60 s)
    # before it is retried, as a lost answer on AWS would be.
    settings = {"max_tasks": 25, "infra_retries": 12, "retry_backoff": 0.01, "inline_limit": 0,
                "timeout": 30}  # fmt: skip
    with LambdaCluster(**settings) as cluster:
        cluster.local.set_faults(
            crash_rate=0.04, oom_rate=0.02, timeout_rate=0.02, throttle_rate=0.02,
            s3_error_rate=0.02,
        )  # fmt: skip
        bag = db.from_sequence(range(SOAK_TASKS * 5), npartitions=partitions).map(tasks.inc)
        assert bag.sum().compute(scheduler=cluster) == sum(range(1, SOAK_TASKS * 5 + 1))
        report = cluster.last_report
        stats = cluster.local.stats()
        injected = stats["faults"]["injected"]
        print(f"\nsoak: {report.summary()}\n  injected: {injected}")
        assert report.tasks >= SOAK_TASKS
        assert sum(v for k, v in injected.items() if k != "s3_error") > 0
        assert report.infra_retries >= sum(injected.get(k, 0) for k in ("crash", "oom", "timeout"))
        assert report.s3_objects_left == 0 and spill_objects(cluster) == []
        pids = stats["pids"] + [cluster.local.pid]
    assert wait_until(lambda: all(gone(pid) for pid in pids))
