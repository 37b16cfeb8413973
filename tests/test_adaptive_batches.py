"""Batches that adapt (issue 12): a runtime failure splits a batch so every task keeps its own
retry budget; out-of-memory and timeouts are not retried blindly and failed invocations are
billed; batches are sized by learned run times (progress in steps) and fan-outs run in
parallel; ``dask.annotate(retries=N)`` is honoured."""

from __future__ import annotations

import os

import dask
import dask.bag as db
import pytest
import tasks
from conftest import cli, spill_objects, unique

from dask_lambda import LambdaCluster, LambdaFunctionError


@pytest.fixture(scope="module")
def small():
    """A function with 256 MB (and a 1024 MB memory tier), with no dependencies to unpack on
    cold starts, and a timeout with headroom for a machine many times slower than this one."""
    with LambdaCluster(memory=256, timeout=120, infra_retries=3, memory_tiers=[1024]) as running:
        yield running


def test_a_crash_once_per_element_bag_converges(small, tmp_path):
    """200 elements in 20 partitions, every tenth crashing its runtime the first time it runs:
    each attempt of a whole batch would die on the next element not yet seen. Split batches
    isolate each crash, so the compute gives the right answer."""
    bag = db.from_sequence(range(200), npartitions=20).map(tasks.crash_first_time, str(tmp_path))
    assert bag.sum().compute(scheduler=small) == sum(range(200))
    report = small.last_report
    assert len(os.listdir(tmp_path)) == 20  # every multiple of ten crashed once
    assert report.splits > 0 and report.infra_retries >= 20
    assert spill_objects(small) == []


def test_out_of_memory_is_not_retried_blindly_and_names_the_task(small):
    hog = dask.delayed(tasks.allocate, pure=False)(600, dask_key_name="hog-1")
    with pytest.raises(LambdaFunctionError) as info:
        hog.compute(scheduler=small)
    message = str(info.value)
    assert "hog-1" in message and "ran out of memory twice" in message
    assert "--memory" in message
    report = small.last_report
    assert report.invocations == 2  # one confirmation, not infra_retries=3 more
    assert report.billed_gb_seconds > 0  # failed invocations are billed
    assert report.failed and spill_objects(small) == []


def test_timeout_is_not_retried_blindly_and_names_the_task():
    """A task that sleeps ten times the function's timeout times out however fast the machine
    is; both attempts are billed their full timeout."""
    with LambdaCluster(memory=256, timeout=3, infra_retries=3) as short:
        stuck = dask.delayed(tasks.slow)(1, 30, dask_key_name="stuck-1")
        with pytest.raises(LambdaFunctionError) as info:
            stuck.compute(scheduler=short)
        message = str(info.value)
        assert "stuck-1" in message and "timed out twice" in message and "--timeout" in message
        assert message.count("--timeout") == 1  # the advice, said once
        report = short.last_report
        assert report.invocations == 2
        assert report.billed_gb_seconds >= 2 * 3 * 256 / 1024 * 0.9  # two 3 s timeouts billed


def test_annotated_retries_are_honoured_per_task(cluster, tmp_path):
    marker = str(tmp_path / "marker")
    with dask.annotate(retries=1):
        flaky = dask.delayed(tasks.fail_first_time)(marker, 7)
    plain = dask.delayed(tasks.fail_first_time)(str(tmp_path / "other"), 8)
    assert flaky.compute(scheduler=cluster) == 7
    assert cluster.last_report.task_retries == 1
    with pytest.raises(RuntimeError, match="first attempt fails"):
        plain.compute(scheduler=cluster)  # not annotated: lambda.task-retries (0)


def test_progress_of_many_short_tasks_comes_in_steps(cluster):
    """256 tasks of 50 ms on two slots went out as two batches of 128 (a progress bar at 0% for
    6 s, then 49%, then 100%). With run times learned per kind of task, batches aim at
    lambda.batch.target-seconds of work: progress advances each time one returns."""
    from dask.diagnostics import Callback

    seen: list[int] = []

    class Progress(Callback):
        def _posttask(self, key, result, dsk, state, worker_id):
            seen.append(len(state["finished"]))

    parts = [dask.delayed(tasks.slow)(i, 0.05) for i in range(256)]
    with Progress():
        assert sum(dask.compute(*parts, scheduler=cluster)) == sum(range(256))
    report = cluster.last_report
    sizes = [record["tasks"] for record in report.invocation_records]
    assert len(sizes) >= 8 and max(sizes) <= 256 // 8, sizes  # each step at most 1/8 of the work
    assert len(seen) == 256 and seen == sorted(seen)


def _overlapping(records: list[dict]) -> int:
    """Most invocations in flight at once, from their client-side start and stop times."""
    events = sorted([(r["start"], 1) for r in records] + [(r["stop"], -1) for r in records])
    most = running = 0
    for _, change in events:
        running += change
        most = max(most, running)
    return most


def test_a_fan_out_from_one_task_runs_in_parallel(cluster):
    """xarray's to_zarr graph: one task (the store's metadata) that 38 chunk writes depend on.
    Fusing every write into the invocation of that one task ran them one after another."""
    metadata = dask.delayed(tasks.slow)(0, 0.01)
    writes = [dask.delayed(tasks.slow)(metadata, 0.2, dask_key_name=f"write-{i}")
              for i in range(38)]  # fmt: skip
    assert dask.compute(*writes, scheduler=cluster) == (0,) * 38
    records = cluster.last_report.invocation_records
    assert len(records) > 2 and _overlapping(records) == 2  # both slots busy


def test_annotated_memory_runs_on_a_memory_tier(small):
    """``dask.annotate(resources={"memory": MB})``: those tasks go to the smallest tier with that
    much memory, batched apart from the others; the rest stay on the function itself."""
    with dask.annotate(resources={"memory": 700}):
        hogs = [dask.delayed(tasks.allocate, pure=False)(600) for _ in range(3)]
        where = dask.delayed(tasks.memory_size)(hogs[0])
    plain = dask.delayed(tasks.memory_size)(1)
    results = dask.compute(*hogs, where, plain, scheduler=small)
    assert results == (600 * 2**20,) * 3 + (1024, 256)


def test_a_task_asking_for_more_than_any_tier_is_refused_before_it_runs(small):
    with dask.annotate(resources={"memory": 20_000}):
        huge = dask.delayed(tasks.memory_size)(1)
    before = small.last_report
    with pytest.raises(ValueError, match="memory_tiers=.20000") as info:
        huge.compute(scheduler=small)
    assert "--memory-tiers 20000" in str(info.value)
    assert small.last_report is before  # refused before any compute began


def test_out_of_memory_escalates_to_the_next_tier_when_asked():
    with (
        dask.config.set({"lambda.escalate-memory": True}),
        LambdaCluster(memory=256, memory_tiers=[1024], infra_retries=3) as cluster,
    ):
        hog = dask.delayed(tasks.allocate, pure=False)(600)
        assert hog.compute(scheduler=cluster) == 600 * 2**20
        report = cluster.last_report
        assert report.escalations == 1 and report.invocations == 2


def test_cli_deploys_and_deletes_memory_tiers(local, aws_env, bucket):
    name = unique("tiers")
    result = cli("deploy", name, "--create-role", "--bucket", bucket, "--memory", "512",
                 "--memory-tiers", "1024,2048")  # fmt: skip
    assert f"memory tier {name}--1024mb" in result.output
    lam = local.client("lambda")
    assert lam.get_function_configuration(FunctionName=f"{name}--2048mb")["MemorySize"] == 2048
    with LambdaCluster(function_name=name, memory_tiers=[2048]) as cluster:
        with dask.annotate(resources={"memory": 1500}):
            where = dask.delayed(tasks.memory_size)(1)
        assert where.compute(scheduler=cluster) == 2048
    with pytest.raises(ValueError, match="no 4096 MB memory tier"):
        LambdaCluster(function_name=name, memory_tiers=[4096])
    deleted = cli("delete", name, "--yes").output
    assert f"memory tier {name}--1024mb" in deleted and f"memory tier {name}--2048mb" in deleted


@pytest.mark.slow
def test_big_chunks_fit_the_function_without_max_tasks():
    """W4's shape, scaled to a 512 MB function: 16 chunks of 15 MiB, each needed again after
    the column means. The first batches (8 chunks each, nothing learned yet) run out of memory
    and are split; then the learned chunk size keeps batches within memory, and the compute
    finishes without lambda.batch.max-tasks set by hand (it failed before)."""
    import dask.array as da
    import numpy as np

    with LambdaCluster(memory=512) as cluster:
        # 15 MiB, not 16: a lone mean_combine of 16 MiB chunks peaked at 517 MB in 2 of 4 runs
        columns = 15 * 2**20 // 8
        x = da.random.default_rng(0).random((16, columns), chunks=(1, columns))
        # Combines of 2 partials: one of all 16 (sums and counts, 30 MiB each) needs 480 MiB
        # of inputs alone, over 512 MB with the runtime (547 MB in one run), whatever batching;
        # one of 4 peaked at 524 MB in one clean-clone run (inputs pickled and unpickled, the
        # concatenation), so a lone combine is kept well inside the function's memory.
        total = abs(x - x.mean(axis=0, split_every=2)).sum(split_every=4)
        np.testing.assert_allclose(total.compute(scheduler=cluster),
                                   total.compute(scheduler="threads"))  # fmt: skip
        assert cluster.last_report.bytes_to_client < 2**20
        assert spill_objects(cluster) == []
