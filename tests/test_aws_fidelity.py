"""What fails on AWS fails on the local Lambda: isolated runtimes, IAM enforced, deploys that keep
what is there (issue 11)."""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import re

import boto3
import dask
import dask.array as da
import pytest
from conftest import cli, create_test_role, unique, zip_files

from dask_lambda import LambdaCluster, LambdaFunctionError, VersionMismatchError
from dask_lambda.emulator.runtimes import MANAGED_RUNTIME_PINS
from dask_lambda.exceptions import VersionWarning
from dask_lambda.function import contract

TBLIB = importlib.metadata.version("tblib")

PROBE = """
import os, sys

def handler(event, context):
    found = {}
    for name in ("numpy", "dask", "pytest", "boto3", "awslambdaric"):
        try:
            __import__(name)
            found[name] = True
        except ModuleNotFoundError:
            found[name] = False
    return {"found": found, "cwd": os.getcwd(), "root": os.environ["LAMBDA_TASK_ROOT"],
            "site": [p for p in sys.path if "site-packages" in p],
            "token": bool(os.environ.get("AWS_SESSION_TOKEN")),
            "boto3": __import__("boto3").__version__}
"""


def test_runtime_sees_only_its_package_and_the_managed_boto3(local, deploy):
    name = deploy("probe.handler", code=zip_files({"probe.py": PROBE}))
    response = local.client("lambda").invoke(FunctionName=name, Payload=b"{}")
    seen = json.loads(response["Payload"].read())
    assert seen["found"] == {"numpy": False, "dask": False, "pytest": False, "boto3": True,
                             "awslambdaric": True}  # fmt: skip
    assert seen["cwd"] == seen["root"] and seen["site"] == []
    # The managed runtime's pinned boto3, whatever boto3 the client has installed.
    assert f"boto3=={seen['boto3']}" in MANAGED_RUNTIME_PINS
    assert seen["token"]  # the execution role's temporary credentials, as Lambda gives them


def test_unknown_credentials_are_refused(local):
    s3 = boto3.client("s3", endpoint_url=local.endpoint_url, region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing")  # fmt: skip
    with pytest.raises(s3.exceptions.ClientError, match="InvalidAccessKeyId"):
        s3.list_buckets()


READER = """
import boto3

def handler(event, context):
    try:
        body = boto3.client("s3").get_object(Bucket=event["bucket"], Key="k")["Body"].read()
        return {"read": body.decode()}
    except Exception as e:
        return {"error": str(e)}
"""


def test_a_role_reads_only_what_its_policy_grants(local, deploy):
    s3 = local.client("s3")
    granted, other = unique("granted"), unique("other")
    for bucket in (granted, other):
        s3.create_bucket(Bucket=bucket)
        s3.put_object(Bucket=bucket, Key="k", Body=b"data")
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:GetObject",
              "Resource": f"arn:aws:s3:::{granted}/*"}]}  # fmt: skip
    role = create_test_role(local, unique("reader"), policy)
    name = deploy("reader.handler", code=zip_files({"reader.py": READER}), Role=role)

    def read(bucket):
        payload = json.dumps({"bucket": bucket}).encode()
        answer = local.client("lambda").invoke(FunctionName=name, Payload=payload)
        return json.loads(answer["Payload"].read())

    assert read(granted) == {"read": "data"}
    assert "AccessDenied" in read(other)["error"]


def _tblib_version():
    import tblib  # installed on this client, not deployed with the session's cluster

    return tblib.__version__


def test_task_importing_an_undeployed_package_names_the_fix(cluster):
    with pytest.raises(ModuleNotFoundError) as info:
        dask.delayed(_tblib_version)().compute(scheduler=cluster)
    notes = " ".join(info.value.__notes__)
    # The cluster deployed this function itself: the fix is its argument, not the CLI.
    assert "cluster.add_packages(['tblib'])" in notes and "dask-lambda update" not in notes
    from dask_lambda import LambdaExecutor, LambdaPool

    with LambdaExecutor(cluster=cluster) as ex, pytest.raises(ModuleNotFoundError) as info:
        ex.submit(_tblib_version).result(timeout=60)
    assert "add_packages(['tblib'])" in " ".join(info.value.__notes__)
    with LambdaPool(cluster=cluster) as pool, pytest.raises(ModuleNotFoundError) as info:
        pool.apply(_tblib_version)
    assert "add_packages(['tblib'])" in " ".join(info.value.__notes__)


@pytest.mark.slow
def test_packages_deploys_what_the_tasks_import():
    with LambdaCluster(packages=["tblib"]) as cluster:
        assert cluster.build_report["packages"].count(f"tblib=={TBLIB}") == 1
        assert dask.delayed(_tblib_version)().compute(scheduler=cluster) == TBLIB


def test_include_with_deps_on_s3_runs_and_a_tampered_archive_is_refused(local, aws_env, bucket):
    """The AWS build (pip, manylinux wheels) through the CLI, dependencies in S3; then someone
    who can write to the bucket replaces the archive: new environments refuse to unpack it."""
    name = unique("deps")
    result = cli("deploy", name, "--create-role", "--bucket", bucket, "--include", "tblib",
                 "--deps-on-s3")  # fmt: skip
    assert "unpacked into /tmp on each cold start" in result.output
    with LambdaCluster(function_name=name, check_versions=False) as cluster:
        assert dask.delayed(_tblib_version)().compute(scheduler=cluster) == TBLIB
        # the compute's one cold start (its ping for the function's libraries, then its batch)
        [mounted] = cluster.last_report.dependency_mounts
    assert mounted["unpacked"] and mounted["download_seconds"] >= 0
    assert mounted["extract_seconds"] >= 0
    assert "Dependencies from S3" in cli("info", name).output
    lam = local.client("lambda")
    variables = lam.get_function_configuration(FunctionName=name)["Environment"]["Variables"]
    reference = json.loads(variables[contract.DEPENDENCIES])
    attacker = zip_files({"tblib/__init__.py": "__version__ = 'owned'\n"})
    local.client("s3").put_object(Bucket=reference["bucket"], Key=reference["key"], Body=attacker)
    cli("update", name, "--memory", "1024")  # new execution environments: cold starts
    with pytest.raises(LambdaFunctionError, match="not the dependency archive") as refused:
        LambdaCluster(function_name=name, check_versions=False).ping()
    assert "it was not downloaded" in str(refused.value)  # its size gave it away first
    # The same size: it streams in and is unpacked aside, then its digest refuses it unused.
    same_size = _padded_zip({"tblib/__init__.py": "__version__ = 'owned'\n"}, reference["size"])
    local.client("s3").put_object(Bucket=reference["bucket"], Key=reference["key"], Body=same_size)
    cli("update", name, "--memory", "1280")
    with pytest.raises(LambdaFunctionError, match="size or SHA-256 differ") as refused:
        LambdaCluster(function_name=name, check_versions=False).ping()
    assert "deleted unused" in str(refused.value)


def _padded_zip(files: dict[str, str], size: int) -> bytes:
    """A zip of ``files`` and a stored padding member, exactly ``size`` bytes long."""
    import io
    import zipfile

    def build(padding: int) -> bytes:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for name, content in files.items():
                archive.writestr(name, content)
            archive.writestr("pad.bin", b"\0" * padding, compress_type=zipfile.ZIP_STORED)
        return buffer.getvalue()

    padded = build(size - len(build(0)))
    assert len(padded) == size
    return padded


def _module_file(name: str) -> str:
    return importlib.import_module(name).__file__


def test_an_archive_without_tests_folders_says_how_to_keep_them():
    """lambda.ship-tests: false leaves packages' tests folders out of the archive in S3."""
    with (
        dask.config.set({"lambda.ship-tests": False}),
        LambdaCluster(packages=["pandas", "pyarrow"]) as trimmed,
    ):
        # pandas' own testing helpers are part of the package; its tests folder is not shipped.
        assert "/dask-lambda-deps/" in dask.delayed(_module_file)("pandas._testing").compute(
            scheduler=trimmed)  # fmt: skip
        with pytest.raises(ModuleNotFoundError) as info:
            dask.delayed(_module_file)("pandas.tests").compute(scheduler=trimmed)
        assert "lambda.ship-tests: true" in " ".join(info.value.__notes__)


def test_packages_tests_folders_ship_by_default(cluster):
    assert "/dask-lambda-deps/" in dask.delayed(_module_file)("pandas.tests").compute(
        scheduler=cluster)  # fmt: skip


def test_a_package_over_250_mb_runs_with_its_dependencies_from_s3(cluster):
    """pandas + pyarrow at the client's versions are over Lambda's 250 MB unzipped: the cluster
    puts the dependencies in its bucket, sizes /tmp for them, and the runtime imports them from
    where it unpacked them, not from the client's site-packages."""
    report = cluster.build_report
    assert report["unpacked_mb"] > 250 and report["dependencies_on_s3"]
    assert report["zip_mb"] < 50
    configuration = cluster.local.client("lambda").get_function_configuration(
        FunctionName=cluster.function_name
    )
    assert contract.DEPENDENCIES in configuration["Environment"]["Variables"]
    assert configuration["EphemeralStorage"]["Size"] > 512
    cluster.local.reap(cluster.function_name)  # the compute's runtime: a cold start
    where = dask.delayed(_module_file)("pyarrow").compute(scheduler=cluster)
    assert "/dask-lambda-deps/" in where and "site-packages" not in where
    [mounted] = cluster.last_report.dependency_mounts
    assert mounted["bytes"] > 50e6 and mounted["seconds"] > 0
    assert "dependencies mounted on 1 cold starts" in cluster.last_report.summary()


def _parquet_env(monkeypatch, cluster) -> None:
    """pyarrow on the client reads the local endpoint and admin keys from the environment, as
    it reads AWS's; inside the function, the runtime's environment names the role's keys."""
    for variable, value in cluster.local.env().items():
        monkeypatch.setenv(variable, value)


def _write_parquet(cluster, bucket: str) -> object:
    import pandas as pd
    import pyarrow.fs

    cluster.local.client("s3").create_bucket(Bucket=bucket)
    frame = pd.DataFrame({"x": range(20), "y": [i % 3 for i in range(20)]})
    filesystem, _ = pyarrow.fs.FileSystem.from_uri(f"s3://{bucket}/in")
    for part in range(2):
        path = f"{bucket}/in/part.{part}.parquet"
        frame.iloc[part * 10 : (part + 1) * 10].to_parquet(path, filesystem=filesystem)
    return frame


def test_read_parquet_from_a_data_bucket_needs_a_grant(cluster, monkeypatch):
    import dask.dataframe as dd

    _parquet_env(monkeypatch, cluster)
    bucket = unique("data")
    _write_parquet(cluster, bucket)
    frame = dd.read_parquet(f"s3://{bucket}/in", filesystem="arrow")  # metadata: the client's
    with pytest.raises(OSError, match="ACCESS_DENIED") as info:
        frame.x.sum().compute(scheduler=cluster)
    assert "LambdaCluster(s3_read=[...]" in " ".join(info.value.__notes__)  # deployed by it


@pytest.mark.slow
def test_read_and_to_parquet_with_grants(monkeypatch):
    import dask.dataframe as dd

    bucket = unique("data")
    with LambdaCluster(packages=["pandas", "pyarrow"], s3_read=[f"s3://{bucket}/in"],
                       s3_write=[f"s3://{bucket}/out"]) as cluster:  # fmt: skip
        _parquet_env(monkeypatch, cluster)
        frame = _write_parquet(cluster, bucket)
        read = dd.read_parquet(f"s3://{bucket}/in", filesystem="arrow")
        assert read.x.sum().compute(scheduler=cluster) == frame.x.sum()
        doubled = read.assign(x=read.x * 2)
        doubled.to_parquet(
            f"s3://{bucket}/out", filesystem="arrow", compute_kwargs={"scheduler": cluster}
        )
        back = dd.read_parquet(f"s3://{bucket}/out", filesystem="arrow").compute(scheduler=cluster)
        assert sorted(back.x) == sorted(frame.x * 2)
        with pytest.raises(OSError, match="ACCESS_DENIED") as info:  # in/ is read-only
            doubled.to_parquet(f"s3://{bucket}/in/again", filesystem="arrow",
                               compute_kwargs={"scheduler": cluster})  # fmt: skip
        assert "s3_write=[...]" in " ".join(info.value.__notes__)


def test_update_timeout_keeps_the_code(aws_env, bucket, user_module):
    name = unique("keeps")
    cli("deploy", name, "--create-role", "--bucket", bucket, "--no-dependencies",
        str(user_module))  # fmt: skip
    lam = boto3.client("lambda")
    before = lam.get_function_configuration(FunctionName=name)
    cli("update", name, "--timeout", "600")
    after = lam.get_function_configuration(FunctionName=name)
    assert after["Timeout"] == 600 and after["CodeSha256"] == before["CodeSha256"]
    assert after["Environment"] == before["Environment"]


def test_print_policy_shows_data_grants(aws_env):
    result = cli(
        "deploy",
        "f",
        "--bucket",
        "spill-bucket",
        "--print-policy",
        "--s3-read",
        "s3://data-bucket/in",
        "--s3-write",
        "s3://data-bucket/out*",
    )
    policy = json.loads(result.output)
    resources = [s["Resource"] for s in policy["Statement"]]
    assert "arn:aws:s3:::data-bucket/in/*" in resources
    assert "arn:aws:s3:::data-bucket/out${*}/*" in resources  # a literal *, not a wildcard


def test_library_versions_compared_by_series():
    from dask_lambda.deploy.compatibility import library_differences

    client = {"numpy": "2.4.6", "pandas": "3.1.1", "pyarrow": "26.0.1", "boto3": "1.44.5",
              "zarr": "0.9.1", "six": "1.17.0"}  # fmt: skip
    function = {"numpy": "2.2.6", "pandas": "2.3.0", "pyarrow": "26.0.0", "boto3": "1.34.0",
                "zarr": "0.8.0", "only-there": "1.0"}  # fmt: skip
    found = library_differences(client, function)
    assert found.refused == ["pandas: function has 2.3.0, client has 3.1.1",
                             "zarr: function has 0.8.0, client has 0.9.1"]  # fmt: skip
    assert found.warned == ["numpy: function has 2.2.6, client has 2.4.6"]  # patch: silent
    assert "--include numpy==2.4.6 --include pandas==3.1.1" in found.fix("f")  # boto3: managed


@pytest.mark.slow
def test_compatible_versions_deploy_and_library_differences(local, aws_env, bucket, tmp_path):
    """The client's numpy and pyarrow have no wheel for Lambda's python3.11 (glibc 2.26). numpy,
    which every function gets, is deployed at the newest version that has one, said in the
    build's output; an --include without one is refused with the newest that has one, and
    --compatible-versions deploys it. info and the cluster show the difference (minor: a
    warning; tblib's major: a refusal with the fix), and the function computes a dask.array."""
    numpy_here = importlib.metadata.version("numpy")
    name = unique("compat")
    refused = cli("deploy", name, "--create-role", "--bucket", bucket, "--include", "pyarrow",
                  ok=False)  # fmt: skip
    newest = r"The newest pyarrow with a wheel for python3.11 on x86_64 \(glibc 2.26\) is \S+:"
    assert refused.exit_code == 1 and re.search(newest + " --compatible-versions", refused.output)
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("tblib==2.0.0\n")
    deployed = cli("deploy", name, "--create-role", "--bucket", bucket, "-r", str(requirements))
    found = re.search(rf"numpy {re.escape(numpy_here)} has no wheel for python3.11 on x86_64"
                      r" \(glibc 2.26\): using (2\.2\.\d+)", deployed.output)  # fmt: skip
    assert found, deployed.output
    info = cli("info", name, ok=False)
    assert f"Differs     numpy: function has {found[1]}, client has {numpy_here}" in info.output
    assert f"tblib: function has 2.0.0, client has {TBLIB}" in info.output
    assert info.exit_code == 1 and f"--include tblib=={TBLIB}" in info.output
    with pytest.raises(VersionMismatchError, match="tblib: function has 2.0.0.*--include"):
        LambdaCluster(function_name=name)
    requirements.write_text(f"tblib=={TBLIB}\n")
    cli("update", name, "-r", str(requirements), "--compatible-versions")
    with pytest.warns(VersionWarning, match=f"numpy: function has {found[1]}"):
        cluster = LambdaCluster(function_name=name)
    with cluster:
        task = dask.delayed(lambda: __import__("numpy").__version__)()
        assert task.compute(scheduler=cluster) == found[1]
        assert da.ones((64, 64), chunks=32).sum().compute(scheduler=cluster) == 64 * 64
