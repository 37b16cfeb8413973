"""Faults, retries and bad input: right answers or clear errors, nothing left behind."""

from __future__ import annotations

import operator
import os
import threading

import dask
import pytest
import tasks
from conftest import gone, spill_objects, unique, wait_until

from dask_lambda import LambdaCluster, LambdaFunctionError


def test_user_exceptions_are_retried_only_when_asked(cluster, tmp_path):
    marker = str(tmp_path / "marker")
    x = dask.delayed(tasks.fail_first_time)(marker, 7)
    with pytest.raises(RuntimeError, match="first attempt fails"):
        x.compute(scheduler=cluster)
    assert cluster.last_report.infra_retries == 0
    os.remove(marker)
    assert x.compute(scheduler=cluster, retries=1) == 7
    assert cluster.last_report.task_retries == 1


def test_transient_s3_errors_are_retried():
    with LambdaCluster(inline_limit=0, infra_retries=12, retry_backoff=0.01) as cluster:
        cluster.local.set_faults(s3_error_rate=0.2)
        parts = [dask.delayed(tasks.chunk_of)(list(range(100)), i) for i in range(20)]
        total = dask.delayed(sum)([dask.delayed(sum)(p) for p in parts])
        assert total.compute(scheduler=cluster) == sum(sum(range(100)) * i for i in range(20))
        assert cluster.local.stats()["faults"]["injected"].get("s3_error", 0) > 0


def test_unpicklable_function_is_a_clear_error(cluster):
    lock = threading.Lock()
    with pytest.raises(TypeError, match="picklable"):
        dask.delayed(lock.acquire)().compute(scheduler=cluster)
    assert spill_objects(cluster) == []


def test_object_over_the_size_limit_is_a_clear_error():
    limit = {"lambda.spill.max-object-bytes": 1_000_000}
    with dask.config.set(limit), LambdaCluster(max_concurrency=1) as cluster:
        with pytest.raises(ValueError, match="lambda.spill.max-object-bytes") as info:
            dask.delayed(tasks.big_array)(2).compute(scheduler=cluster)
        assert "Split it into smaller chunks" in str(info.value)
        literal = dask.delayed(b"x" * 2_000_000, name="huge-literal")
        with pytest.raises(ValueError, match="graph literal"):
            dask.delayed(len)(literal).compute(scheduler=cluster)
        assert spill_objects(cluster) == []


@pytest.fixture
def own_function(local, aws_env):
    """A dask-lambda function on the session's local Lambda that a test may break."""
    from dask_lambda.deploy.build import BuildSpec, build
    from dask_lambda.deploy.functions import ensure_function, ensure_role, role_policy
    from dask_lambda.deploy.signing import create_key
    from dask_lambda.function.contract import function_environment

    def make(timeout: int = 30) -> tuple[str, str]:
        name, bucket = unique("breakable"), unique("bucket")
        local.client("s3").create_bucket(Bucket=bucket)
        key = create_key(local.client("ssm"), name)
        environment = function_environment(key_parameter=key, bucket=bucket)
        role = ensure_role(local.client("iam"), name, role_policy(bucket, "dask-lambda", name))
        code = build(BuildSpec(from_installed=True)).zip_bytes
        ensure_function(local.client("lambda"), name, code, role, memory=1024,
                        timeout=timeout, environment=environment)  # fmt: skip
        return name, bucket

    return make


def test_missing_bucket(own_function):
    name, _ = own_function()
    with pytest.raises(ValueError, match="'no-such-bucket' does not exist.*aws s3 mb"):
        LambdaCluster(function_name=name, bucket="no-such-bucket")


def test_missing_credentials(own_function, monkeypatch, tmp_path):
    name, _ = own_function()
    for variable in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                     "AWS_PROFILE"):  # fmt: skip
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(PermissionError, match="No AWS credentials"):
        LambdaCluster(function_name=name)


def test_missing_deleted_and_wrong_region_functions(local, own_function):
    with pytest.raises(ValueError, match="'never-deployed' does not exist.*dask-lambda deploy"):
        LambdaCluster(function_name="never-deployed")
    name, _ = own_function()
    with pytest.raises(ValueError, match="does not exist in eu-west-1"):
        LambdaCluster(function_name=name, region="eu-west-1")
    with LambdaCluster(function_name=name) as cluster:
        assert dask.delayed(tasks.inc)(1).compute(scheduler=cluster) == 2
        local.client("lambda").delete_function(FunctionName=name)
        with pytest.raises(LambdaFunctionError, match="deleted"):
            dask.delayed(tasks.inc)(2).compute(scheduler=cluster)


def test_function_timeout_shorter_than_a_task(own_function):
    name, _ = own_function(timeout=3)  # headroom for a cold start on a loaded machine
    cluster = LambdaCluster(function_name=name, infra_retries=1, retry_backoff=0.01)
    with cluster, pytest.raises(LambdaFunctionError) as info:
        dask.delayed(tasks.slow)(1, 10).compute(scheduler=cluster)
    message = str(info.value)
    error = info.value
    assert error.error_type == "Sandbox.Timedout" and error.attempts == 2, repr(error)
    assert f"dask-lambda update {name} --timeout" in message


def test_spilled_objects_are_encrypted(cluster, local):
    cluster.store.put("dask-lambda/encryption-check", b"secret")
    head = cluster.store.client.head_object(
        Bucket=cluster.bucket, Key="dask-lambda/encryption-check"
    )
    assert head["ServerSideEncryption"] == "AES256"
    cluster.store.delete(["dask-lambda/encryption-check"])

    from dask_lambda.function.storage import S3Store

    s3 = local.client("s3")
    bucket = unique("kms")
    s3.create_bucket(Bucket=bucket)
    S3Store(bucket, s3, kms_key_id="alias/spill").put("x", b"secret")
    head = s3.head_object(Bucket=bucket, Key="x")
    assert head["ServerSideEncryption"] == "aws:kms" and "spill" in head["SSEKMSKeyId"]


def test_local_lambda_binds_loopback_only(local):
    import psutil

    port = int(local.endpoint_url.rsplit(":", 1)[1])
    listening = [c for c in psutil.Process(local.pid).net_connections("tcp")
                 if c.status == psutil.CONN_LISTEN]  # fmt: skip
    assert listening and all(c.laddr.ip == "127.0.0.1" for c in listening)
    assert port in {c.laddr.port for c in listening}


def test_nothing_hangs_on_a_silent_endpoint(monkeypatch):
    """A function endpoint that accepts connections and never answers: a deadline, an error."""
    import socket

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    try:
        with dask.config.set({"lambda.api-timeout": 0.5}), pytest.raises(TimeoutError) as info:
            LambdaCluster(function_name="silent", endpoint_url=f"http://127.0.0.1:{port}",
                          region="us-east-1")  # fmt: skip
        assert "did not answer within 0.5 s (lambda.api-timeout)" in str(info.value)
    finally:
        server.close()


_ = operator  # keeps the import for readers of the soak test's arithmetic


@pytest.mark.slow
def test_keyboard_interrupt_cleans_up(tmp_path):
    """Ctrl-C in the middle of a compute: its S3 objects go, then every process of the cluster."""
    import json
    import signal
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(
        f"""
        import json, sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        import cloudpickle, dask, tasks
        cloudpickle.register_pickle_by_value(tasks)
        from dask_lambda import LambdaCluster
        cluster = LambdaCluster(inline_limit=0)
        print(json.dumps({{"pids": [cluster.local.pid]}}), flush=True)
        produced = [dask.delayed(tasks.chunk_of)(list(range(10)), i) for i in range(8)]
        slow = [dask.delayed(tasks.slow)(p, 3) for p in produced]
        try:
            print("computing", flush=True)
            dask.delayed(sum)([dask.delayed(len)(s) for s in slow]).compute(scheduler=cluster)
        except KeyboardInterrupt:
            left = [n for n in cluster.store.list(cluster.prefix + "/") if "/leases/" not in n]
            pids = cluster.local.stats()["pids"]
            print(json.dumps({{"interrupted": True, "left": left, "runtimes": pids}}), flush=True)
        cluster.close()
        """
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        server_pid = json.loads(child.stdout.readline())["pids"][0]
        assert child.stdout.readline().strip() == "computing"
        import time

        time.sleep(2.0)  # the first batch has written its results to S3; the slow ones run
        child.send_signal(signal.SIGINT)
        outcome = json.loads(child.stdout.readline())
        assert child.wait(60) == 0
    finally:
        child.kill()
        child.stdout.close()
    assert outcome["interrupted"] and outcome["left"] == []
    assert wait_until(lambda: gone(server_pid) and all(gone(p) for p in outcome["runtimes"]))


@pytest.mark.slow
def test_stragglers_are_speculatively_re_executed(tmp_path):
    # min-seconds well above a cold start on a loaded machine: only the 8 s straggler qualifies
    settings = {"lambda.speculation.min-seconds": 3.0, "lambda.speculation.multiplier": 2.0}
    with dask.config.set(settings), LambdaCluster(max_tasks=1, max_concurrency=3) as cluster:
        marker = str(tmp_path / "straggler")
        quick = [dask.delayed(tasks.slow)(i, 0.05) for i in range(6)]
        straggler = dask.delayed(tasks.slow_first_time)(marker, 100, 8)
        total = dask.delayed(tasks.total)(straggler, *quick)
        assert total.compute(scheduler=cluster, speculation=True) == 100 + sum(range(6))
        # The straggler's; a machine slow enough to make a cold start look like one may add more
        assert 1 <= cluster.last_report.speculations <= 7
        # the abandoned first copy ends later; what it wrote is removed then
        assert wait_until(lambda: spill_objects(cluster) == [], timeout=60)
