"""The embedded local Lambda behaves like AWS Lambda, seen through plain boto3 clients."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
from concurrent.futures import ThreadPoolExecutor

import botocore.exceptions
import pytest
from botocore.config import Config
from conftest import gone, handler_zip, unique, wait_until, zip_files

from dask_lambda.emulator import LocalLambda


def invoke(local, name, event=None, **kwargs):
    client = local.client(
        "lambda", config=Config(read_timeout=120, retries={"total_max_attempts": 1})
    )
    response = client.invoke(FunctionName=name, Payload=json.dumps(event or {}), **kwargs)
    payload = response["Payload"].read()
    return response, json.loads(payload) if payload else None


def test_invoke_runs_deployed_code_and_reuses_warm_runtimes(local, deploy):
    name = deploy("behaviours.echo", MemorySize=256)
    first, body = invoke(local, name, {"x": 1}, LogType="Tail")
    assert first["StatusCode"] == 200 and "FunctionError" not in first
    assert first["ExecutedVersion"] == "$LATEST"
    assert body["event"] == {"x": 1}
    assert body["memory"] == "256" and body["function"] == name
    assert 0 < body["remaining_ms"] <= 10_000
    assert "Init Duration" in base64.b64decode(first["LogResult"]).decode()  # a cold start

    second, again = invoke(local, name, {"x": 2}, LogType="Tail")
    assert again["runtime"] == body["runtime"]  # the warm runtime was reused
    assert "Init Duration" not in base64.b64decode(second["LogResult"]).decode()


def test_new_code_and_configuration_get_new_runtimes(local, deploy):
    name = deploy("behaviours.echo")
    _, before = invoke(local, name, {"env": ["COLOUR"]})
    assert before["env"] == {"COLOUR": None}
    before_pid = host_pid(local, before)

    lam = local.client("lambda")
    lam.update_function_configuration(
        FunctionName=name, Environment={"Variables": {"COLOUR": "red"}}
    )
    _, configured = invoke(local, name, {"env": ["COLOUR"]})
    assert configured["env"] == {"COLOUR": "red"}
    assert configured["runtime"] != before["runtime"]
    assert wait_until(lambda: gone(before_pid))  # the old revision's runtime is retired

    new_code = zip_files({"behaviours.py": "def echo(event, context):\n    return 'version 2'\n"})
    lam.update_function_code(FunctionName=name, ZipFile=new_code)
    _, updated = invoke(local, name)
    assert updated == "version 2"


def test_idle_runtimes_are_reaped():
    with LocalLambda(idle_timeout=0.5) as server:
        lam = server.client("lambda")
        role = server.client("iam").create_role(RoleName="r", AssumeRolePolicyDocument="{}")
        lam.create_function(
            FunctionName="echo",
            Runtime="python3.11",
            Role=role["Role"]["Arn"],
            Handler="behaviours.echo",
            Code={"ZipFile": handler_zip()},
        )
        _, body = invoke(server, "echo")
        pid = host_pid(server, body)
        assert wait_until(lambda: gone(pid), timeout=10)
        _, later = invoke(server, "echo")
        assert later["runtime"] != body["runtime"]


def test_request_over_6mb_is_rejected_with_413(local, deploy):
    name = deploy("behaviours.echo")
    with pytest.raises(botocore.exceptions.ClientError) as info:
        invoke(local, name, {"data": "x" * 6_300_000})
    error = info.value.response
    assert error["Error"]["Code"] == "RequestEntityTooLargeException"
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 413
    assert "6291456" in error["Error"]["Message"]


def test_async_request_over_1mb_is_rejected(local, deploy):
    name = deploy("behaviours.echo")
    with pytest.raises(botocore.exceptions.ClientError) as info:
        invoke(local, name, {"data": "x" * 1_100_000}, InvocationType="Event")
    assert info.value.response["Error"]["Code"] == "RequestEntityTooLargeException"
    assert "1048576" in info.value.response["Error"]["Message"]


def test_response_over_6mb_is_a_function_error(local, deploy):
    name = deploy("behaviours.big_response")
    response, body = invoke(local, name, {"size": 6_400_000})
    assert response["FunctionError"] == "Unhandled"
    assert body["errorType"] == "Function.ResponseSizeTooLarge"


def test_timeout_kills_the_runtime(local, deploy):
    name = deploy("behaviours.sleep", Timeout=3)  # the warm-up call has room on a slow machine
    _, warm = invoke(local, name, {"seconds": 0})
    warm_pid = host_pid(local, warm)
    response, body = invoke(local, name, {"seconds": 30})
    assert response["FunctionError"] == "Unhandled"
    assert body["errorType"] == "Sandbox.Timedout"
    assert "Task timed out after 3.00 seconds" in body["errorMessage"]
    assert wait_until(lambda: gone(warm_pid))
    _, after = invoke(local, name, {"seconds": 0})  # the function still works, in a new runtime
    assert after["runtime"] != warm["runtime"]


def test_memory_limit_is_enforced(local, deploy):
    name = deploy("behaviours.allocate", MemorySize=128)
    response, body = invoke(local, name, {"mb": 400}, LogType="Tail")
    assert response["FunctionError"] == "Unhandled"
    assert body["errorType"] == "Runtime.ExitError"
    assert "signal: killed" in body["errorMessage"]
    assert "MemorySize of 128 MB" in body["errorMessage"]
    _, fine = invoke(local, name, {"mb": 16})
    assert fine == {"allocated_mb": 16}


def test_runtime_dying_mid_invoke_is_an_exit_error(local, deploy):
    name = deploy("behaviours.crash")
    response, body = invoke(local, name, LogType="Tail")
    assert response["FunctionError"] == "Unhandled"
    assert body["errorType"] == "Runtime.ExitError"
    assert "exit status 3" in body["errorMessage"]
    assert "about to crash" in base64.b64decode(response["LogResult"]).decode()


def test_a_runtime_that_dies_before_its_invocation_arrives_fails_it(local, deploy):
    """The runtime exits during init while the invoke is still held back (an injected cold
    start delay): the invocation, given to it afterwards, fails at once instead of waiting."""
    code = zip_files({"dies.py": "import os\nos._exit(3)\n"})
    name = deploy("dies.handler", code=code)
    local.set_faults(name, cold_start_ms=3000)
    try:
        response, body = invoke(local, name)
    finally:
        local.set_faults(name)
    assert response["FunctionError"] == "Unhandled"
    assert body["errorType"] == "Runtime.ExitError"
    assert "exit status 3" in body["errorMessage"]


def test_handler_exception_is_unhandled_function_error(local, deploy):
    name = deploy("behaviours.fail")
    response, body = invoke(local, name, {"x": 7})
    assert response["StatusCode"] == 200
    assert response["FunctionError"] == "Unhandled"
    assert body["errorType"] == "ValueError"
    assert body["errorMessage"] == "bad value 7"
    assert any("behaviours.py" in line for line in body["stackTrace"])


def test_import_error_is_reported(local, deploy):
    name = deploy("missing_module.handler")
    response, body = invoke(local, name)
    assert response["FunctionError"] == "Unhandled"
    assert body["errorType"] == "Runtime.ImportModuleError"
    assert "missing_module" in body["errorMessage"]


def test_reserved_concurrency_throttles_with_429(local, deploy):
    name = deploy("behaviours.sleep")
    lam = local.client("lambda")
    lam.put_function_concurrency(FunctionName=name, ReservedConcurrentExecutions=1)
    started = threading.Event()

    def slow():
        started.set()
        return invoke(local, name, {"seconds": 2})

    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(slow)
        started.wait()
        assert wait_until(lambda: _server_stats(local)["busy"] >= 1)
        with pytest.raises(lam.exceptions.TooManyRequestsException) as info:
            invoke(local, name, {"seconds": 0})
        assert info.value.response["Reason"] == "ReservedFunctionConcurrentInvocationLimitExceeded"
        assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 429
        assert running.result()[0]["StatusCode"] == 200

    lam.put_function_concurrency(FunctionName=name, ReservedConcurrentExecutions=0)
    with pytest.raises(lam.exceptions.TooManyRequestsException):
        invoke(local, name, {"seconds": 0})
    lam.delete_function_concurrency(FunctionName=name)
    assert invoke(local, name, {"seconds": 0})[0]["StatusCode"] == 200


def host_pid(server, body: dict) -> int:
    """The process (as this machine sees it) of the runtime that answered ``body``: inside its
    sandbox a runtime has a PID namespace of its own, so its os.getpid() names nothing here."""
    return server.stats()["streams"][body["runtime"]]


def _server_stats(local) -> dict:
    return local.stats()  # signed with the admin's key: the only caller it answers


def test_account_concurrency_limit_throttles_with_429():
    with LocalLambda(concurrency_limit=1) as server:
        role = server.client("iam").create_role(RoleName="r", AssumeRolePolicyDocument="{}")
        lam = server.client("lambda")
        lam.create_function(
            FunctionName="sleep",
            Runtime="python3.11",
            Role=role["Role"]["Arn"],
            Handler="behaviours.sleep",
            Code={"ZipFile": handler_zip()},
            Timeout=10,
        )
        with ThreadPoolExecutor(1) as pool:
            running = pool.submit(invoke, server, "sleep", {"seconds": 2})
            assert wait_until(lambda: _server_stats(server)["busy"] >= 1)
            with pytest.raises(lam.exceptions.TooManyRequestsException) as info:
                invoke(server, "sleep", {"seconds": 0})
            assert info.value.response["Reason"] == "ConcurrentInvocationLimitExceeded"
            assert running.result()[0]["StatusCode"] == 200


def test_event_invocation_runs_in_background_and_dry_run_checks(local, deploy):
    s3 = local.client("s3")
    bucket = unique("events")
    s3.create_bucket(Bucket=bucket)
    name = deploy("behaviours.s3_roundtrip")
    response, _ = invoke(
        local, name, {"bucket": bucket, "key": "marker", "body": "ran"}, InvocationType="Event"
    )
    assert response["StatusCode"] == 202
    assert wait_until(lambda: s3.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 1)

    response, _ = invoke(local, name, InvocationType="DryRun")
    assert response["StatusCode"] == 204


def test_log_tail_is_the_last_4kb(local, deploy):
    name = deploy("behaviours.chatty")
    response, _ = invoke(local, name, {"lines": 500}, LogType="Tail")
    tail = base64.b64decode(response["LogResult"])
    assert 3000 < len(tail) <= 4096
    text = tail.decode()
    assert "line 00499" in text and "line 00000" not in text
    assert text.rstrip().splitlines()[-1].startswith("REPORT RequestId:")


def test_function_environment_reaches_local_s3_with_plain_boto3(local, deploy):
    bucket = unique("inside")
    local.client("s3").create_bucket(Bucket=bucket)
    name = deploy("behaviours.s3_roundtrip", Environment={"Variables": {"MY_SETTING": "on"}})
    _, body = invoke(local, name, {"bucket": bucket, "key": "k", "body": "from inside"})
    assert body == "from inside"
    assert local.client("s3").get_object(Bucket=bucket, Key="k")["Body"].read() == b"from inside"

    name = deploy(
        "behaviours.echo", Environment={"Variables": {"MY_SETTING": "on"}}, MemorySize=384
    )
    wanted = ["MY_SETTING", "AWS_LAMBDA_FUNCTION_NAME", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE"]
    _, body = invoke(local, name, {"env": wanted})
    assert body["env"] == {
        "MY_SETTING": "on",
        "AWS_LAMBDA_FUNCTION_NAME": name,
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "384",
    }


def test_layers_are_on_the_path(local, deploy):
    lam = local.client("lambda")
    layer = lam.publish_layer_version(
        LayerName=unique("layer"),
        Content={"ZipFile": zip_files({"python/layered.py": "VALUE = 'from the layer'\n"})},
        CompatibleRuntimes=["python3.11"],
    )
    name = deploy("behaviours.use_layer", Layers=[layer["LayerVersionArn"]])
    assert invoke(local, name)[1] == "from the layer"


def test_code_from_s3_is_deployed(local, role_arn):
    s3, lam = local.client("s3"), local.client("lambda")
    bucket = unique("code")
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="fn.zip", Body=handler_zip())
    name = unique("from-s3")
    lam.create_function(
        FunctionName=name,
        Runtime="python3.11",
        Role=role_arn,
        Handler="behaviours.echo",
        Code={"S3Bucket": bucket, "S3Key": "fn.zip"},
    )
    assert invoke(local, name, {"a": 1})[1]["event"] == {"a": 1}


def test_control_plane_is_moto(local, deploy):
    lam = local.client("lambda")
    name = deploy("behaviours.echo", Tags={"createdBy": "tests"})
    arn = lam.get_function(FunctionName=name)["Configuration"]["FunctionArn"]
    lam.tag_resource(Resource=arn, Tags={"extra": "yes"})
    assert lam.list_tags(Resource=arn)["Tags"] == {"createdBy": "tests", "extra": "yes"}
    assert name in [f["FunctionName"] for f in lam.list_functions()["Functions"]]
    assert invoke(local, arn)[1]["event"] == {}  # invoke by ARN
    lam.delete_function(FunctionName=name)
    with pytest.raises(lam.exceptions.ResourceNotFoundException):
        invoke(local, name)


def test_bad_requests(local, deploy, role_arn):
    lam = local.client("lambda")
    with pytest.raises(lam.exceptions.InvalidParameterValueException, match="unzip"):
        lam.create_function(
            FunctionName=unique("bad"),
            Runtime="python3.11",
            Role=role_arn,
            Handler="x.y",
            Code={"ZipFile": b"not a zip"},
        )
    name = deploy("behaviours.echo")
    with pytest.raises(lam.exceptions.InvalidRequestContentException):
        lam.invoke(FunctionName=name, Payload=b"{not json")


def test_close_leaves_nothing_behind():
    server = LocalLambda().start()
    role = server.client("iam").create_role(RoleName="r", AssumeRolePolicyDocument="{}")
    server.client("lambda").create_function(
        FunctionName="echo",
        Runtime="python3.11",
        Role=role["Role"]["Arn"],
        Handler="behaviours.echo",
        Code={"ZipFile": handler_zip()},
    )
    runtime_pid = host_pid(server, invoke(server, "echo")[1])
    server_pid, workdir, port = (
        server.pid,
        server.workdir,
        int(server.endpoint_url.rsplit(":", 1)[1]),
    )
    server.close()
    server.close()  # safe twice
    assert gone(server_pid) and wait_until(lambda: gone(runtime_pid))
    assert not os.path.exists(workdir)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_killed_owner_takes_the_server_and_runtimes_with_it():
    script = textwrap.dedent(
        f"""
        import json, sys, time
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from conftest import handler_zip
        from dask_lambda.emulator import LocalLambda
        server = LocalLambda().start()
        role = server.client("iam").create_role(RoleName="r", AssumeRolePolicyDocument="{{}}")
        lam = server.client("lambda")
        lam.create_function(FunctionName="echo", Runtime="python3.11", Role=role["Role"]["Arn"],
                            Handler="behaviours.echo", Code={{"ZipFile": handler_zip()}})
        body = json.loads(lam.invoke(FunctionName="echo")["Payload"].read())
        pid = server.stats()["streams"][body["runtime"]]
        print(json.dumps([server.pid, pid, server.workdir]), flush=True)
        time.sleep(600)
        """
    )
    owner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    server_pid, runtime_pid, workdir = json.loads(owner.stdout.readline())
    owner.send_signal(signal.SIGKILL)
    owner.wait()
    owner.stdout.close()
    assert wait_until(lambda: gone(server_pid) and gone(runtime_pid), timeout=20)
    assert wait_until(lambda: not os.path.exists(workdir), timeout=5)


def test_cli_local_runs_in_the_foreground_and_prints_exports():
    process = subprocess.Popen(
        [sys.executable, "-m", "dask_lambda.cli", "local", "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        first = process.stdout.readline()
        assert first.startswith("Embedded local Lambda listening on http://127.0.0.1:")
        exports = {}
        while len(exports) < 9:
            line = process.stdout.readline()
            if line.startswith("export "):
                name, _, value = line[len("export ") :].strip().partition("=")
                exports[name] = value
        import boto3

        lam = boto3.client(
            "lambda",
            endpoint_url=exports["AWS_ENDPOINT_URL_LAMBDA"],
            region_name=exports["AWS_REGION"],
            aws_access_key_id=exports["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=exports["AWS_SECRET_ACCESS_KEY"],
        )
        assert lam.list_functions()["Functions"] == []
        host = exports["AWS_ENDPOINT_URL"].split("://")[1]  # its stand-in base image, for --image
        base = exports["DASK_LAMBDA__IMAGE__BASE"].strip("'")  # shell-quoted
        assert base == f"{host}/public.ecr.aws/lambda/python:{{python}}"
        process.send_signal(signal.SIGINT)
        assert process.wait(30) == 0
    finally:
        process.kill()
        process.stdout.close()
        process.stderr.close()


def test_the_server_process_starts_without_importing_dask(local):
    """The local Lambda's own process registers no scheduler, so it never imports dask (a third
    of its import time); a client's ``import dask_lambda`` still registers ``"lambda"``."""
    with open(f"/proc/{local.pid}/environ", "rb") as environ:
        assert b"DASK_LAMBDA_NO_SCHEDULER=1" in environ.read().split(b"\0")
    check = "import sys, dask_lambda.emulator.server; print('dask' in sys.modules)"
    env = {**os.environ, "DASK_LAMBDA_NO_SCHEDULER": "1"}
    server = subprocess.run([sys.executable, "-c", check], env=env, capture_output=True,
                            text=True, check=True)  # fmt: skip
    assert server.stdout.strip() == "False"
    client = "import dask_lambda, dask.base; print('lambda' in dask.base.named_schedulers)"
    env.pop("DASK_LAMBDA_NO_SCHEDULER")
    registered = subprocess.run([sys.executable, "-c", client], env=env, capture_output=True,
                                text=True, check=True)  # fmt: skip
    assert registered.stdout.strip() == "True"


def test_ssm_and_ec2_work_though_ssm_is_loaded_without_ec2(local):
    """moto's SSM is imported with EC2 deferred (server._import_ssm_without_ec2): SSM's paths
    that reach into EC2 still find it, and EC2's own API is the real one."""
    ssm, ec2 = local.client("ssm"), local.client("ec2")
    name = "/dask-lambda-tests/" + unique("param")
    ssm.put_parameter(Name=name, Value="v", Type="String")
    assert ssm.get_parameter(Name=name)["Parameter"]["Value"] == "v"
    command = ssm.send_command(  # Run Command targets are resolved through EC2's model
        DocumentName="AWS-RunShellScript", Parameters={"commands": ["true"]},
        Targets=[{"Key": "tag:Name", "Values": ["no-such-instance"]}],
    )["Command"]  # fmt: skip
    assert command["CommandId"] and command["TargetCount"] == 0
    assert ec2.describe_instances()["Reservations"] == []
    assert ec2.describe_regions()["Regions"]
    ssm.delete_parameter(Name=name)


def test_a_json_service_refuses_a_bad_signature_in_its_own_error_format(local):
    """moto answers authorization errors in XML for every service; a JSON-protocol service
    (SSM, DynamoDB) answers as AWS does, so boto3 reads the code."""
    import boto3

    kwargs = {**local.client_kwargs(), "aws_secret_access_key": "not-the-secret"}
    for service, call in (("ssm", lambda c: c.get_parameter(Name="/any")),
                          ("dynamodb", lambda c: c.list_tables())):  # fmt: skip
        with pytest.raises(botocore.exceptions.ClientError) as info:
            call(boto3.client(service, **kwargs))
        assert info.value.response["Error"]["Code"] == "InvalidSignatureException", service
