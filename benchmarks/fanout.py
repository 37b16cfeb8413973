"""Fan-out, measured before it is built: does letting Lambda invoke Lambda beat the lean client?

The design under test: for a wide wave of ready batches, the client sends one invocation per
``group`` batches to a *fan-out* function, which invokes the task function once per batch with
its own role (threads, boto3) and returns their responses together; results still go to S3.

Both ways deliver the same 1000 dask-lambda batches (10 tasks of 50 ms each, W5's shape at
concurrency 1000) to the same thread-mode local Lambda, and the wall time until every response
is back on the client is compared:

- direct: 1000 threads of the client each invoke once with the lean invoker (what the
  scheduler does);
- fan-out: ``1000 / group`` threads each invoke the fan-out function with ``group`` events.

The fan-out handler (:data:`HANDLER`) is benchmark code, deployed in its own zip: it is a
prototype to measure, not a product feature.
"""

from __future__ import annotations

import io
import json
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor

BATCHES, TASKS_PER_BATCH, TASK_SECONDS = 1000, 10, 0.05

HANDLER = """
import json
from concurrent.futures import ThreadPoolExecutor

import boto3
from botocore.config import Config

_client = None


def handler(event, context):
    global _client
    if _client is None:
        _client = boto3.client("lambda", config=Config(
            max_pool_connections=200, retries={"total_max_attempts": 1}, read_timeout=900))
    def one(body):
        response = _client.invoke(FunctionName=event["target"], Payload=body)
        return response["Payload"].read().decode()
    with ThreadPoolExecutor(len(event["events"])) as pool:
        return list(pool.map(one, event["events"]))
"""


def _zip(files: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
    return buffer.getvalue()


def compare(groups: tuple[int, ...] = (10, 50)) -> dict:
    """Wall seconds to deliver the batches directly and through fan-out of each group size."""
    import cloudpickle

    from benchmarks import scale, workloads
    from dask_lambda import LambdaCluster
    from dask_lambda.deploy.build import package_zip
    from dask_lambda.deploy.functions import ensure_function, ensure_role
    from dask_lambda.deploy.signing import create_key
    from dask_lambda.emulator import LocalLambda
    from dask_lambda.function import protocol
    from dask_lambda.function.contract import function_environment
    from dask_lambda.remote.transport import LeanTransport

    cloudpickle.register_pickle_by_value(workloads)
    concurrency = BATCHES + BATCHES // min(groups) + 10
    with LocalLambda(runtime_mode="thread", concurrency_limit=concurrency) as local:
        scale._local_env(local)
        local.client("s3").create_bucket(Bucket="simulation")
        policy = {"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": ["s3:*", "ssm:*", "lambda:InvokeFunction"],
             "Resource": "*"}]}  # fmt: skip
        role = ensure_role(local.client("iam"), "simulation", policy)
        key = create_key(local.client("ssm"), "simulation")
        environment = function_environment(key_parameter=key, bucket="simulation")
        lam = local.client("lambda")
        ensure_function(lam, "simulation", package_zip(), role, memory=1024, timeout=300,
                        environment=environment)  # fmt: skip
        code = {"ZipFile": _zip({"fanout.py": HANDLER})}
        lam.create_function(FunctionName="fanout", Runtime="python3.11", Role=role,
                            Handler="fanout.handler", Code=code, Timeout=300,
                            MemorySize=1024)  # fmt: skip
        with LambdaCluster(function_name="simulation", max_concurrency=BATCHES) as cluster:
            invoker, signing_key = cluster.invoker, cluster.invoker.signing_key
            requests = [_batch_request(i)
                        for i in range(BATCHES)]  # fmt: skip

            def direct() -> None:
                with ThreadPoolExecutor(BATCHES) as pool:
                    list(pool.map(lambda r: invoker.call(r, task_keys=["t"]), requests))

            events = [json.dumps(protocol.envelope(protocol.encode_payload(r), signing_key,
                                                   1200)) for r in requests]  # fmt: skip

            fanner = LeanTransport(invoker.client, cluster.aws.session.get_credentials(),
                                   BATCHES, 10, 900)  # fmt: skip

            def fan_out(group: int) -> None:
                def send(start: int) -> None:
                    group_events = events[start : start + group]
                    body = json.dumps({"target": "simulation", "events": group_events})
                    answer = fanner.invoke("fanout", body.encode())
                    if answer.function_error:
                        raise RuntimeError(answer.payload[:500])
                    for response in json.loads(answer.payload):
                        protocol.open_envelope(response)

                with ThreadPoolExecutor(BATCHES // group) as pool:
                    list(pool.map(send, range(0, BATCHES, group)))

            results = {}
            for name, run in [("direct", direct)] + [
                (f"fan-out x{g}", lambda g=g: fan_out(g)) for g in groups
            ]:
                run()  # warm: every runtime this way needs exists
                client = time.process_time()
                simulated = scale.process_cpu_seconds(local.pid)
                began = time.perf_counter()
                run()
                results[name] = {
                    "seconds": time.perf_counter() - began,
                    "client_cpu_seconds": time.process_time() - client,
                    "local_lambda_cpu_seconds": scale.process_cpu_seconds(local.pid) - simulated,
                }
    return {"ways": results, "ideal_seconds": TASKS_PER_BATCH * TASK_SECONDS}


def _batch_request(index: int) -> dict:
    """The ``run`` request of batch ``index``: W5's tasks, ten of them."""
    from dask._task_spec import Task

    from benchmarks.workloads import nap
    from dask_lambda.function import protocol
    from dask_lambda.remote.invocation import RESPONSE_BUDGET, pickle_spec

    keys = [("nap", index, j) for j in range(TASKS_PER_BATCH)]
    tasks = [Task(key, nap, 1, TASK_SECONDS) for key in keys]
    spec = protocol.BatchSpec(f"fanout{index}", keys, tasks, keys, {})
    return protocol.run_request(pickle_spec(spec), bucket="simulation",
                                prefix="dask-lambda/fanout", inline_limit=65536,
                                response_limit=RESPONSE_BUDGET)  # fmt: skip


if __name__ == "__main__":
    print(json.dumps(compare(), indent=2))
