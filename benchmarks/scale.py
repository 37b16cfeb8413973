"""W4's S3 floor, and W5/W6: how wide one client process can drive Lambda.

W5 measures the client, not the machine. First the invoker alone against an endpoint that
answers at once (:mod:`benchmarks.endpoint`, its own process): client CPU per invocation and
invocations per second, for the lean invoker and for boto3's ``invoke`` (before). Then dask-lambda
against the embedded local Lambda in *thread* runtime mode (handlers run in threads of the local
Lambda's own process, so thousands of concurrent environments fit on two cores): 10,000 tasks of
50 ms each at concurrency 100, 1000 and 3000, compared with the ideal bound
``tasks x task time / concurrency``. Each row says where the CPU went: the client's (its
scheduling loop separately, per task) and the simulated Lambda's, each as a share of the one core
a Python process can use, so the busier one is the bottleneck.

W6 is W5's simulation at the latency a laptop sees from AWS, injected by the local Lambda: 50 ms
on every invocation and 250 ms on every cold start; the ideal bound adds one latency.

Both are simulations of scheduling and batching at scale: no real Lambda, and tasks sleep.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.workloads import w5_sleepers

TASKS, TASK_SECONDS = 10_000, 0.05
AWS_LATENCY, AWS_COLD_START = 0.05, 0.25  # W6: seconds added to each invocation, cold start
CONCURRENCY = (100, 1000, 3000)
INVOKE_CLIENTS = {"lean": "lean invoker", "boto3": "boto3 invoke (before)"}


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


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def invoker_rate(invoke_client: str, calls: int = 6000, threads: int = 64) -> dict:
    """The invoker alone: ``calls`` invocations from ``threads`` threads against an endpoint
    that answers at once, in its own process."""
    import boto3

    from benchmarks.endpoint import ImmediateEndpoint
    from dask_lambda.remote.invoker import Invoker

    session = boto3.session.Session(aws_access_key_id="benchmark", region_name="us-east-1",
                                    aws_secret_access_key="benchmark")  # fmt: skip
    payload = {"op": "run", "spec": b"x" * 600}
    with ImmediateEndpoint() as url:
        invoker = Invoker(
            "benchmark", lambda cfg: session.client("lambda", endpoint_url=url, config=cfg),
            threads, 60, store=None, signing_key=b"k" * 32,
            credentials=session.get_credentials(), invoke_client=invoke_client,
        )  # fmt: skip
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda _: invoker.call(payload, task_keys=["t"]), range(500)))
            cpu, began = time.process_time(), time.perf_counter()
            list(pool.map(lambda _: invoker.call(payload, task_keys=["t"]), range(calls)))
            cpu, seconds = time.process_time() - cpu, time.perf_counter() - began
        invoker.close()
    return {"seconds": seconds, "client_cpu_ms_per_invocation": cpu / calls * 1000,
            "invocations_per_second": calls / seconds,
            "note": f"{calls} invocations from {threads} threads"}  # fmt: skip


def simulate(
    concurrency: int, invoke_client: str = "lean", latency: float = 0.0, cold_start: float = 0.0
) -> dict:
    """10,000 x 50 ms tasks at ``concurrency`` on the thread-mode local Lambda, with
    ``latency``/``cold_start`` seconds injected; the second (warm) run is measured."""
    import cloudpickle
    import dask

    from benchmarks import workloads
    from dask_lambda import LambdaCluster
    from dask_lambda.deploy.build import package_zip
    from dask_lambda.deploy.functions import ensure_function, ensure_role
    from dask_lambda.deploy.signing import create_key
    from dask_lambda.emulator import LocalLambda
    from dask_lambda.function.contract import function_environment

    cloudpickle.register_pickle_by_value(workloads)
    with LocalLambda(runtime_mode="thread", concurrency_limit=concurrency + 10) as local:
        _local_env(local)
        local.set_faults(invoke_latency_ms=latency * 1000, cold_start_ms=cold_start * 1000)
        local.client("s3").create_bucket(Bucket="simulation")
        role = ensure_role(local.client("iam"), "simulation")
        key = create_key(local.client("ssm"), "simulation")
        environment = function_environment(key_parameter=key, bucket="simulation")
        ensure_function(local.client("lambda"), "simulation", package_zip(), role, memory=1024,
                        timeout=300, environment=environment)  # fmt: skip
        with (
            dask.config.set({"lambda.invoke-client": invoke_client}),
            LambdaCluster(function_name="simulation", max_concurrency=concurrency) as cluster,
        ):
            graph, key, expected = w5_sleepers(TASKS, TASK_SECONDS)
            began = time.perf_counter()
            assert cluster.get(graph, key) == expected
            cold = time.perf_counter() - began
            client_cpu, server_cpu = time.process_time(), process_cpu_seconds(local.pid)
            began = time.perf_counter()
            assert cluster.get(graph, key) == expected
            seconds = time.perf_counter() - began
            client_cpu = time.process_time() - client_cpu
            server_cpu = process_cpu_seconds(local.pid) - server_cpu
            report = cluster.last_report
    ideal = TASKS * TASK_SECONDS / concurrency + latency
    return {
        "seconds": seconds,
        "cold_seconds": cold,
        "ideal_seconds": ideal,
        "efficiency": ideal / seconds,
        "invocations": report.invocations,
        "tasks": report.tasks,
        "tasks_per_invocation": report.tasks_per_invocation,
        "invocations_per_second": report.invocations / seconds,
        "client_cpu_ms_per_invocation": client_cpu / report.invocations * 1000,
        "scheduler_us_per_task": report.scheduler_cpu_seconds / report.tasks * 1e6,
        "dask_graph_us_per_task": report.dask_graph_cpu_seconds / report.tasks * 1e6,
        "lambda_cpu_ms_per_invocation": server_cpu / report.invocations * 1000,
        "client_busy": client_cpu / seconds,
        "lambda_busy": server_cpu / seconds,
        "note": f"first (cold) run {cold:.2f} s",
    }
