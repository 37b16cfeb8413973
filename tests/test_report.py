"""Compute reports: counts, billed duration, cost at configurable prices, the timeline PNG."""

from __future__ import annotations

import math

import dask
import dask.bag as db
import tasks


def test_report_counts_and_cost(cluster):
    bag = db.from_sequence(range(200), npartitions=20).map(tasks.inc)
    assert bag.sum().compute(scheduler=cluster) == sum(range(1, 201))
    report = cluster.last_report
    records = report.invocation_records
    assert report.invocations == len(records) > 0
    assert report.tasks_per_invocation == report.tasks / report.invocations
    assert all(r["stop"] >= r["start"] and r["runtime_id"] for r in records)
    billed = sum(math.ceil(r["duration"] * 1000) / 1000 for r in records)
    assert report.billed_gb_seconds == billed * report.memory_mb / 1024 > 0
    expected = report.invocations * 0.0000002 + report.billed_gb_seconds * 0.0000166667
    assert math.isclose(report.cost_usd, expected)
    with dask.config.set({"lambda.pricing.gb-second.x86_64": 1.0, "lambda.pricing.request": 0}):
        assert math.isclose(report.cost_usd, report.billed_gb_seconds)
    timings = report.task_timings()
    # batches of up to 64 tasks are timed task by task (aliases resolved on the client are not)
    assert len(timings) >= report.tasks - 40
    assert all(stop >= start for start, stop in timings)
    assert 0 < report.task_seconds < report.billed_gb_seconds * 1024 / report.memory_mb
    assert report.to_dict()["cost_usd"] == report.cost_usd
    assert report.local and "GB-s, ~$" in report.summary()  # a local Lambda bills nothing:
    assert "if run on AWS (an estimate" in report.summary()  # the cost is what AWS would bill
    # The scheduling thread's own CPU, dask's graph work part of it (benchmarks' W5 reads it)
    assert 0 < report.dask_graph_cpu_seconds <= report.scheduler_cpu_seconds < report.wall_time
    # and the pool threads' (pickling, encoding, decoding), counted in the client's CPU
    assert 0 < report.send_cpu_seconds < report.client_cpu_seconds
    assert report.client_cpu_seconds == report.scheduler_cpu_seconds + report.send_cpu_seconds
    assert "client CPU" in report.summary()


def test_a_large_batch_reports_a_sample_of_its_timings_and_all_of_its_task_time(cluster):
    from dask_lambda.function.protocol import TIMING_SAMPLE

    bag = db.from_sequence(range(2000), npartitions=1000).map(tasks.inc)
    with dask.config.set({"lambda.batch.max-tasks": 1000}):
        assert bag.sum().compute(scheduler=cluster) == sum(range(1, 2001))
    report = cluster.last_report
    large = [r for r in report.invocation_records if r["tasks"] > TIMING_SAMPLE]
    assert large, [r["tasks"] for r in report.invocation_records]
    assert all(0 < len(r["task_timings"]) <= TIMING_SAMPLE for r in large)
    assert all(r["task_seconds"] >= sum(t[1] - t[0] for t in r["task_timings"]) for r in large)
    assert len(report.task_timings()) < report.tasks


def test_timeline_pngs(cluster, tmp_path):
    dask.delayed(tasks.total)(*[dask.delayed(tasks.inc)(i) for i in range(10)]).compute(
        scheduler=cluster
    )
    for path in (
        cluster.last_report.plot_timeline(tmp_path / "compute.png"),
        cluster.plot_timeline(tmp_path / "cluster.png"),
    ):
        data = path.read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 10_000
