"""The dask-lambda CLI against the embedded local Lambda: deploy, compute, update, list, delete,
info, logs, clean, and the errors users meet."""

from __future__ import annotations

import importlib
import json
import os
import sys

import dask
import pytest
import tasks
from conftest import cli, unique, zip_files

from dask_lambda import LambdaCluster
from dask_lambda.cli import main
from dask_lambda.emulator import LocalLambda

TAG = sys.implementation.cache_tag

COMMANDS = ["local", "deploy", "update", "list", "delete", "info", "logs", "clean"]


def test_deploy_and_compute_with_code_that_only_the_zip_has(local, aws_env, bucket, user_module):
    name = unique("deployed")
    result = cli("deploy", name, str(user_module), "--create-role", "--bucket", bucket,
                 "--memory", "1024")  # fmt: skip
    assert "Created arn:aws:lambda" in result.output
    lam = local.client("lambda")
    config = lam.get_function_configuration(FunctionName=name)
    assert config["MemorySize"] == 1024 and config["State"] == "Active"
    tags = lam.list_tags(Resource=config["FunctionArn"])["Tags"]
    assert tags["createdBy"] == "dask-lambda" and tags["dask:version"] == dask.__version__

    role = config["Role"].rsplit("/", 1)[-1]
    policy = local.client("iam").get_role_policy(RoleName=role, PolicyName="dask-lambda")
    statements = policy["PolicyDocument"]["Statement"]
    assert statements[0]["Resource"] == f"arn:aws:s3:::{bucket}/dask-lambda/{name}/*"  # its own

    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("only_in_zip")  # not on this side: it exists only in the zip
    with LambdaCluster(function_name=name) as cluster:
        assert cluster.bucket == bucket
        x = dask.delayed(tasks.call_by_name)("only_in_zip", "triple", 14)
        assert x.compute(scheduler=cluster) == 42
        dask_file = dask.delayed(tasks.module_file)("dask").compute(scheduler=cluster)
        assert "site-packages" not in dask_file  # not the client's: the deployed zip's
        assert dask_file.startswith("/var/task/")  # the code as Lambda mounts it, read-only


def test_update_changes_only_what_changed(local, aws_env, bucket, user_module):
    name = unique("updated")
    cli("deploy", name, str(user_module), "--create-role", "--bucket", bucket)
    unchanged = cli("update", name, str(user_module))
    assert f"{name} is up to date" in unchanged.output

    configured = cli("update", name, str(user_module), "--memory", "1536", "--env", "MODE=fast")
    assert "Updated" in configured.output and "code" not in configured.output.split("Updated")[1]
    config = local.client("lambda").get_function_configuration(FunctionName=name)
    assert config["MemorySize"] == 1536
    assert config["Environment"]["Variables"]["MODE"] == "fast"

    user_module.write_text("def triple(x):\n    return 'new ' * x\n")
    recoded = cli("update", name, str(user_module))
    assert "Updated" in recoded.output and "code" in recoded.output
    with LambdaCluster(function_name=name) as cluster:
        x = dask.delayed(tasks.call_by_name)("only_in_zip", "triple", 2)
        assert x.compute(scheduler=cluster) == "new new "


def test_list_shows_only_dask_lambda_functions(local, aws_env, bucket, deploy):
    ours = unique("listed")
    cli("deploy", ours, "--create-role", "--bucket", bucket, "--no-dependencies")
    foreign = deploy("behaviours.echo")
    listing = cli("list").output
    assert ours in listing and foreign not in listing
    assert "2026.8.0" in listing or dask.__version__ in listing


def test_delete_refuses_foreign_functions(local, aws_env, bucket, deploy):
    foreign = deploy("behaviours.echo")
    refused = cli("delete", foreign, "--yes", ok=False)
    assert refused.exit_code == 1 and "not created by dask-lambda" in refused.output
    local.client("lambda").get_function(FunctionName=foreign)  # still there

    ours = unique("deleted")
    cli("deploy", ours, "--create-role", "--bucket", bucket, "--no-dependencies")
    deleted = cli("delete", ours, "--delete-role", "--yes")
    assert (
        f"Deleted function {ours}" in deleted.output
        and f"role dask-lambda-{ours}" in deleted.output
    )
    with pytest.raises(local.client("lambda").exceptions.ResourceNotFoundException):
        local.client("lambda").get_function(FunctionName=ours)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--memory", "100"], "memory must be between 128 and 10240"),
        (["--memory", "20000"], "memory must be between 128 and 10240"),
        (["--timeout", "0"], "timeout must be between 1 and 900"),
        (["--timeout", "901"], "timeout must be between 1 and 900"),
        (["--ephemeral-storage", "100"], "ephemeral storage must be between 512 and 10240"),
        (["--env", "NOEQUALS"], "is not KEY=VALUE"),
        (["--role", "arn:x", "--create-role", "--bucket", "b"], "either --role or --create-role"),
        (["--create-role"], "--create-role needs --bucket"),
    ],
)
def test_validation_errors_come_before_any_aws_call(monkeypatch, options, message):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    result = cli("deploy", "any-name", "--no-dependencies", *options, ok=False)
    assert result.exit_code != 0
    assert message in result.output
    assert "Connect" not in result.output


def test_new_function_needs_a_role(aws_env):
    result = cli("deploy", unique("no-role"), "--no-dependencies", ok=False)
    assert "--role ARN or --create-role" in result.output


def test_size_limits(local, aws_env, bucket, tmp_path):
    huge = tmp_path / "huge"
    huge.mkdir()
    with open(huge / "sparse.bin", "wb") as f:
        f.truncate(270_000_000)
    result = cli("deploy", unique("huge"), str(huge), "--no-dependencies", "--create-role",
                 "--bucket", bucket, ok=False)  # fmt: skip
    assert "over Lambda's 250 MB limit" in result.output and "layer" in result.output

    big = tmp_path / "big"
    big.mkdir()
    (big / "random.bin").write_bytes(os.urandom(53_000_000))
    name = unique("big")
    role = local.client("iam").create_role(RoleName=unique("r"), AssumeRolePolicyDocument="{}")
    result = cli("deploy", name, str(big), "--no-dependencies", "--role", role["Role"]["Arn"],
                 ok=False)  # fmt: skip
    assert "over the 50 MB" in result.output and "--bucket" in result.output
    # With its dependencies (the runtime sees only the package) and a role that may read its
    # signing key (IAM is enforced).
    cli("deploy", name, str(big), "--create-role", "--bucket", bucket)
    with LambdaCluster(function_name=name, check_versions=False) as cluster:
        assert dask.delayed(os.path.getsize)("big/random.bin").compute(scheduler=cluster) == (
            53_000_000
        )
    staged = local.client("s3").list_objects_v2(Bucket=bucket, Prefix="dask-lambda/deploy/")
    assert staged.get("KeyCount", 0) == 0  # the staged zip is removed


def test_print_policy(aws_env):
    result = cli("deploy", "fn", "--print-policy", "--bucket", "my-bucket", "--prefix", "p")
    policy = json.loads(result.output)
    resources = json.dumps(policy)
    assert "arn:aws:s3:::my-bucket/p/*" in resources and "/aws/lambda/fn" in resources
    assert "s3:*" not in resources and '"*"' not in resources


def test_info_and_logs(local, aws_env, bucket, user_module):
    name = unique("logged")
    cli("deploy", name, str(user_module), "--create-role", "--bucket", bucket)
    info = cli("info", name).output
    assert "Compatible  yes" in info and dask.__version__ in info
    with LambdaCluster(function_name=name) as cluster:
        x = dask.delayed(tasks.call_by_name)("only_in_zip", "triple", 5)
        assert x.compute(scheduler=cluster) == 15
    logs = cli("logs", name, "--since", "5m").output
    assert "calling only_in_zip.triple(5,)" in logs and "REPORT RequestId" in logs
    filtered = cli("logs", name, "--since", "5m", "--filter", "calling").output
    assert "calling only_in_zip" in filtered and "REPORT" not in filtered


def test_info_reports_incompatible_function(local, aws_env, deploy):
    from test_scheduler import _old_versions_zip

    name = deploy("old_versions.lambda_handler", code=_old_versions_zip())
    result = cli("info", name, ok=False)
    assert result.exit_code == 1 and "Compatible  NO" in result.output
    assert f"dask-lambda update {name}" in result.output


def test_clean_removes_leftovers_and_tagged_resources(monkeypatch, tmp_path):
    with LocalLambda() as server:
        for variable, value in server.env().items():
            monkeypatch.setenv(variable, value)
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
        s3 = server.client("s3")
        s3.create_bucket(Bucket="spill")
        from dask_lambda.function.storage import S3Store

        for i in range(3):  # what a killed client leaves: tagged, named by compute id and digest
            S3Store("spill", s3).put(f"dask-lambda/{'c' * 16}/{i:032x}", b"x")
        s3.put_object(Bucket="spill", Key="unrelated/keep", Body=b"x")
        s3.put_object(Bucket="spill", Key="dask-lambda/user-data.csv", Body=b"x")
        cli("deploy", "mine", "--create-role", "--bucket", "spill", "--no-dependencies")
        server.client("lambda").create_function(
            FunctionName="theirs", Runtime="python3.11", Handler="x.y",
            Role=server.client("iam").create_role(RoleName="theirs", AssumeRolePolicyDocument="{}")[
                "Role"]["Arn"], Code={"ZipFile": zip_files({"x.py": ""})},
        )  # fmt: skip
        fresh = cli("clean", "--bucket", "spill", "--yes")
        assert "Nothing to clean" in fresh.output  # objects younger than --older-than stay
        result = cli("clean", "--bucket", "spill", "--older-than", "0s", "--functions",
                     "--roles", "--yes")  # fmt: skip
        assert "Deleted 3 objects dask-lambda wrote" in result.output
        assert "Deleted function mine" in result.output and "Deleted role dask-lambda-mine" in (
            result.output
        )
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket="spill")["Contents"]]
        assert keys == ["dask-lambda/user-data.csv", "unrelated/keep"]
        names = [f["FunctionName"] for f in server.client("lambda").list_functions()["Functions"]]
        assert names == ["theirs"]


@pytest.mark.parametrize("command", COMMANDS)
def test_help_reads_well(command):
    result = cli(command, "--help")
    assert result.output.startswith(f"Usage: main {command}") or "Usage:" in result.output
    first_line = main.commands[command].help.splitlines()[0]
    assert first_line.split(":")[0] in " ".join(result.output.split())


def test_package_without_a_lambda_wheel_is_explained(aws_env, tmp_path):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("numpy==2.4.6\n")  # no wheel for glibc 2.26 (python3.11 runtime)
    result = cli("deploy", unique("nowheel"), "-r", str(requirements), "--create-role",
                 "--bucket", "bkt", ok=False)  # fmt: skip
    assert result.exit_code == 1
    assert "found no wheels for python3.11 on x86_64 (glibc 2.26)" in result.output
    assert "numpy" in result.output and "Python 3.12+" in result.output


def test_architecture_layers_and_storage(local, aws_env, bucket):
    lam = local.client("lambda")
    layer = lam.publish_layer_version(
        LayerName=unique("layer"), Content={"ZipFile": zip_files({"python/helper.py": "X = 1\n"})}
    )["LayerVersionArn"]
    name = unique("arm")
    cli("deploy", name, "--no-dependencies", "--architecture", "arm64", "--layers", layer,
        "--ephemeral-storage", "2048", "--create-role", "--bucket", bucket)  # fmt: skip
    config = lam.get_function_configuration(FunctionName=name)
    assert config["Architectures"] == ["arm64"]
    assert [entry["Arn"] for entry in config["Layers"]] == [layer]
    assert config["EphemeralStorage"]["Size"] == 2048


def test_builds_target_the_architecture_and_are_cached(aws_env):
    import io
    import zipfile

    from dask_lambda.deploy.build import BuildSpec, build

    first = build(BuildSpec(architecture="arm64"))
    names = zipfile.ZipFile(io.BytesIO(first.zip_bytes)).namelist()
    compiled = [n for n in names if ".cpython-" in n and n.endswith(".so")]  # not vendored libs
    assert compiled and all("aarch64" in n for n in compiled)
    assert "numpy/__init__.py" in names  # every function gets dask.array's numpy
    assert "dask_lambda/function/handler.py" in names and "dask/__init__.py" in names
    ours = {n for n in names if n.startswith("dask_lambda/")}
    package_init = {"dask_lambda/__init__.py", f"dask_lambda/__pycache__/__init__.{TAG}.pyc"}
    assert ours and all(
        n.startswith("dask_lambda/function/") or n in package_init for n in ours
    ), ours  # the client, CLI and emulator are not shipped (the package's bytecode is)
    again = build(BuildSpec(architecture="arm64"))
    assert again.dependencies_cached and again.zip_bytes == first.zip_bytes  # reproducible


def test_deploy_sets_an_expiry_rule_on_the_spill_prefix(local, aws_env, bucket):
    s3 = local.client("s3")
    other = {"ID": "keep-me", "Filter": {"Prefix": "logs/"}, "Status": "Enabled",
             "Expiration": {"Days": 30}}  # fmt: skip
    s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": [other]})
    name = unique("expiring")
    cli("deploy", name, "--no-dependencies", "--create-role", "--bucket", bucket,
        "--expire-days", "2")  # fmt: skip
    rules = {r["ID"]: r for r in s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]}
    rule = rules[f"dask-lambda-expire-dask-lambda/{name}"]
    assert rule["Expiration"]["Days"] == 2
    assert rule["Filter"]["And"]["Prefix"] == f"dask-lambda/{name}/"
    assert "keep-me" in rules


@pytest.mark.slow
def test_allowlist_restricts_what_runs(local, aws_env, bucket, tmp_path, monkeypatch):
    from dask_lambda import LambdaExecutor

    folder = tmp_path / "allowed"
    folder.mkdir()
    (folder / "vetted.py").write_text(
        "def double(x):\n    return 2 * x\n\ndef other(x):\n    return x\n"
    )
    monkeypatch.syspath_prepend(str(folder))  # importable here too: pickled by reference
    vetted = importlib.import_module("vetted")
    name = unique("locked")
    # numpy for the arrays below comes with every function (at the newest version with a wheel
    # for Python 3.11's runtime, glibc 2.26, where the client's has none).
    cli("deploy", name, str(folder / "vetted.py"), "--allow", "vetted.double", "--create-role",
        "--bucket", bucket)  # fmt: skip
    with LambdaCluster(function_name=name) as cluster, LambdaExecutor(cluster=cluster) as ex:
        assert ex.submit(vetted.double, 21).result(timeout=60) == 42
        import numpy as np

        doubled = ex.submit(vetted.double, np.arange(3.0)).result(timeout=60)  # data passes
        np.testing.assert_array_equal(doubled, [0.0, 2.0, 4.0])
        with pytest.raises(Exception, match="vetted.other is not allowed"):
            ex.submit(vetted.other, 1).result(timeout=60)
        with pytest.raises(Exception, match="not allowed by this function's allowlist"):
            ex.submit(lambda x: x, 1).result(timeout=60)  # pickled by value: never allowed


def test_logs_follow(local, aws_env, bucket, user_module):
    import subprocess
    import sys
    import time

    name = unique("followed")
    cli("deploy", name, str(user_module), "--create-role", "--bucket", bucket)
    follower = subprocess.Popen(
        [sys.executable, "-m", "dask_lambda.cli", "logs", name, "--since", "1m", "--follow"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        time.sleep(1)  # following, with nothing logged yet
        with LambdaCluster(function_name=name) as cluster:
            x = dask.delayed(tasks.call_by_name)("only_in_zip", "triple", 3)
            assert x.compute(scheduler=cluster) == 9
        import queue
        import threading

        lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in follower.stdout],
                         daemon=True).start()  # fmt: skip
        seen, deadline = "", time.monotonic() + 120
        while "only_in_zip.triple(3,)" not in seen and time.monotonic() < deadline:
            try:
                seen += lines.get(timeout=1)
            except queue.Empty:
                pass
        assert "only_in_zip.triple(3,)" in seen
    finally:
        follower.kill()
        follower.stdout.close()
