"""W4's S3 floor and W5, the scale simulation toward AWS.

W5 runs dask-lambda against the embedded local Lambda in *thread* runtime mode (handlers run in
threads of the local Lambda, so a thousand concurrent execution environments fit on two cores),
with 50 ms injected on every invocation and 250 ms on every cold start, roughly what AWS adds.
10,000 tasks of 50 ms each at concurrency 100 and 1000 are compared with the ideal bound
``tasks x task time / concurrency + latency``. It is a simulation of scheduling and batching at
scale: no real Lambda, and the tasks sleep rather than compute.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor

from benchmarks.workloads import w5_sleepers

TASKS, TASK_SECONDS, LATENCY, COLD_START = 10_000, 0.05, 0.05, 0.25


def _local_env(local) -> None:
    os.environ.update(local.env())


def raw_s3_throughput(objects: int = 16, size_mb: int = 64) -> dict:
    """Put then get ``objects`` x ``size_mb`` MB with boto3's transfer manager, 2 at a time."""
    from dask_lambda.emulator import LocalLambda
    from dask_lambda.function.storage import S3Store

    data = os.urandom(size_mb * 1024 * 1024)
    with LocalLambda() as local:
        s3 = local.client("s3")
        s3.create_bucket(Bucket="throughput")
        store = S3Store("throughput", s3)
        began = time.perf_counter()
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda i: store.put(f"o{i}", data), range(objects)))
            list(pool.map(lambda i: store.get(f"o{i}", len(data)), range(objects)))
        seconds = time.perf_counter() - began
    moved = 2 * objects * len(data)
    return {"seconds": seconds, "throughput_mb_s": moved / seconds / 1e6,
            "note": f"{objects} x {size_mb} MB put and got"}  # fmt: skip


def simulate(concurrency: int) -> dict:
    import cloudpickle

    from benchmarks import workloads
    from dask_lambda import LambdaCluster
    from dask_lambda.build import package_zip
    from dask_lambda.deploy import ensure_function, ensure_role
    from dask_lambda.emulator import LocalLambda
    from dask_lambda.function.contract import function_environment
    from dask_lambda.signing import create_key

    cloudpickle.register_pickle_by_value(workloads)
    with LocalLambda(runtime_mode="thread", concurrency_limit=concurrency + 10) as local:
        _local_env(local)
        local.set_faults(invoke_latency_ms=LATENCY * 1000, cold_start_ms=COLD_START * 1000)
        local.client("s3").create_bucket(Bucket="simulation")
        role = ensure_role(local.client("iam"), "simulation")
        key = create_key(local.client("ssm"), "simulation")
        environment = function_environment(key_parameter=key, bucket="simulation")
        ensure_function(local.client("lambda"), "simulation", package_zip(), role, memory=1024,
                        timeout=300, environment=environment)  # fmt: skip
        with LambdaCluster(function_name="simulation", max_concurrency=concurrency) as cluster:
            graph, key, expected = w5_sleepers(TASKS, TASK_SECONDS)
            began = time.perf_counter()
            assert cluster.get(graph, key) == expected
            cold = time.perf_counter() - began
            began = time.perf_counter()
            assert cluster.get(graph, key) == expected
            seconds = time.perf_counter() - began
            report = cluster.last_report
        stats = local.stats()
    ideal = TASKS * TASK_SECONDS / concurrency + LATENCY
    return {
        "seconds": seconds,
        "cold_seconds": cold,
        "ideal_seconds": ideal,
        "efficiency": ideal / seconds,
        "invocations": report.invocations,
        "tasks": report.tasks,
        "tasks_per_invocation": report.tasks_per_invocation,
        "cold_starts_first_run": stats["cold_starts"],
        "note": f"first (cold) run {cold:.2f} s",
    }
