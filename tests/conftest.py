"""Shared fixtures: one embedded local Lambda per test session, and helpers to deploy to it."""

from __future__ import annotations

import io
import json
import pickle
import sys
import time
import uuid
import zipfile
from pathlib import Path

import cloudpickle
import psutil
import pytest
import tasks
from click.testing import CliRunner

from dask_lambda.emulator import LocalLambda

# Tests and their helpers are not deployed into the function: pickle them by value.
cloudpickle.register_pickle_by_value(tasks)


UNIT = Path(__file__).parent / "unit"
# SnapStart needs python3.12+: ci/test runs this file in a Python 3.12 environment of its own.
collect_ignore = ["test_snapstart_restore.py"] if sys.version_info < (3, 12) else []
LAMBDA_FIXTURES = {"local", "cluster", "deploy", "role_arn", "aws_env", "bucket"}


# Seconds each file takes (``--durations=0``, two workers, 2 cores), heaviest first. The two
# xdist workers take whole files (``--dist loadfile``) in collection order: starting with the
# longest files keeps one worker from being left with a long file at the end.
FILE_SECONDS = {
    "test_dask_conformance.py": 180, "test_aws_fidelity.py": 170, "test_cli.py": 160,
    "test_scheduler.py": 150, "test_package_sync.py": 120, "test_adaptive_batches.py": 110,
    "test_soak.py": 90, "test_faults.py": 90, "test_data_plane.py": 85, "test_security.py": 80,
    "test_images.py": 75, "test_readme.py": 60, "test_local_lambda.py": 45, "test_joblib.py": 40,
    "test_persist.py": 35,
}  # fmt: skip


def pytest_collection_modifyitems(config, items):
    """Tiers: tests/unit needs no Lambda (a test there asking for one is refused); every other
    test is an integration test. Files run longest first (:data:`FILE_SECONDS`)."""
    items.sort(key=lambda item: -FILE_SECONDS.get(item.path.name, 0))  # stable: file order kept
    for item in items:
        if UNIT not in item.path.parents:
            item.add_marker(pytest.mark.integration)
        elif LAMBDA_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            raise pytest.UsageError(
                f"{item.nodeid} uses the local Lambda: it belongs in tests/, not tests/unit"
            )


def pytest_collection_finish(session):
    for module in {item.module for item in session.items if hasattr(item, "module")}:
        cloudpickle.register_pickle_by_value(module)


HANDLERS = Path(__file__).parent / "handlers"


def zip_files(files: dict[str, str | bytes]) -> bytes:
    """A deployment zip of ``{archive name: content}``."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def with_runtime(files: dict[str, str | bytes]) -> bytes:
    """A deployment zip of dask-lambda's runtime (dask, numpy, ... as installed here) plus
    ``files``: runtimes see nothing else."""
    from dask_lambda.deploy.build import BuildSpec, build

    buffer = io.BytesIO(build(BuildSpec(from_installed=True)).zip_bytes)
    buffer.seek(0, io.SEEK_END)
    with zipfile.ZipFile(buffer, "a", zipfile.ZIP_DEFLATED) as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def handler_zip(module: str = "behaviours") -> bytes:
    return zip_files({f"{module}.py": (HANDLERS / f"{module}.py").read_text()})


def evil_pickle(marker: str) -> bytes:
    """A pickle that, if ever unpickled, creates ``marker`` (an attack's proof)."""
    import pickle

    class Evil:
        def __reduce__(self):
            return exec, (f"open({marker!r}, 'w').write('pwned')",)

    return pickle.dumps(Evil(), protocol=4)


# Names a pickle may try to reach past an allowlist of vetted.double and wild.* (see
# test_security.py and tests/unit/test_function_safety.py).
DOTTED_ATTACKS = [
    ("numpy", "interp._implementation.__builtins__.get"),  # int... looked like a numpy scalar
    ("wild", "double.__builtins__.get"),  # a dotted path under an allowed module.*
    ("vetted", "double.__globals__.get"),  # a dotted path under an allowed function
    ("wild", "os"),  # a module that module.* imported, not its own
    ("wild", "_private"),
    ("wild", "Tool._run"),  # a dotted name ending in something the module defines
    ("builtins", "eval"),
]


def global_pickle(module: str, name: str, then: list[tuple[str, ...]]) -> bytes:
    """A protocol-4 pickle: STACK_GLOBAL(module, name), then call the result with each args."""

    def text(value: str) -> bytes:
        data = value.encode()
        return pickle.SHORT_BINUNICODE + bytes([len(data)]) + data

    out = pickle.PROTO + b"\x04" + text(module) + text(name) + pickle.STACK_GLOBAL
    for args in then:
        out += pickle.MARK + b"".join(text(a) for a in args) + pickle.TUPLE + pickle.REDUCE
    return out + pickle.STOP


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture(scope="session", autouse=True)
def shared_test_folders(tmp_path_factory):
    """The tests' own temporary folders, bound into every runtime's sandbox at their path (the
    local Lambda's EFS stand-in, lambda.local.mounts): fault-injection helpers keep markers
    there that every runtime and the test see. Nothing else of this machine is visible."""
    import os

    os.environ["DASK_LAMBDA__LOCAL__MOUNTS"] = json.dumps([str(tmp_path_factory.getbasetemp())])
    yield


@pytest.fixture(scope="session")
def local():
    with LocalLambda() as server:
        yield server


# What the handlers in tests/handlers do with boto3: the local Lambda enforces IAM, as AWS does.
TEST_ROLE_POLICY = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": ["s3:*", "ssm:*"], "Resource": "*"}],
}


def create_test_role(server, name: str = "dask-lambda-tests", policy=TEST_ROLE_POLICY) -> str:
    iam = server.client("iam")
    try:
        return iam.get_role(RoleName=name)["Role"]["Arn"]
    except iam.exceptions.NoSuchEntityException:
        pass
    arn = iam.create_role(RoleName=name, AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    if policy is not None:
        iam.put_role_policy(RoleName=name, PolicyName="tests", PolicyDocument=json.dumps(policy))
    return arn


@pytest.fixture(scope="session")
def role_arn(local):
    return create_test_role(local)


@pytest.fixture
def deploy(local, role_arn):
    """Create a function from a zip on the session's local Lambda; returns its name."""
    lam = local.client("lambda")

    def _deploy(handler: str, code: bytes | None = None, server=None, **config) -> str:
        client = (server or local).client("lambda") if server else lam
        name = config.pop("FunctionName", unique(handler.replace(".", "-")))
        client.create_function(
            FunctionName=name,
            Runtime="python3.11",
            Role=config.pop("Role", None)
            or (role_arn if server is None else create_test_role(server)),
            Handler=handler,
            Code={"ZipFile": code or handler_zip()},
            **{"Timeout": 10, "MemorySize": 512, **config},
        )
        return name

    return _deploy


@pytest.fixture(scope="session")
def cluster():
    from dask_lambda import LambdaCluster

    # What the tests' own tasks import (dataframes), deployed as a user would: packages=.
    with LambdaCluster(packages=["pandas", "pyarrow"]) as running:
        yield running


def spill_objects(cluster) -> list[str]:
    """Objects left under the cluster's prefix (every compute must delete its own), but for
    the running client's lease (dask_lambda.ownership)."""
    return [n for n in cluster.store.list(cluster.prefix + "/") if "/leases/" not in n]


@pytest.fixture(scope="session")
def build_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("build-cache"))


@pytest.fixture
def aws_env(local, monkeypatch, build_cache):
    """The environment `dask-lambda local` tells users to export."""
    for variable, value in local.env().items():
        monkeypatch.setenv(variable, value)
    monkeypatch.setenv("XDG_CACHE_HOME", build_cache)
    return local.env()


@pytest.fixture
def bucket(local):
    name = unique("spill")
    local.client("s3").create_bucket(Bucket=name)
    return name


def cli(*args: str, ok: bool = True):
    """Run the dask-lambda CLI in-process; by default assert that it succeeded."""
    from dask_lambda.cli import main

    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, result.output
    return result


@pytest.fixture
def user_module(tmp_path):
    folder = tmp_path / "user"
    folder.mkdir()
    (folder / "only_in_zip.py").write_text("def triple(x):\n    return 3 * x\n")
    return folder / "only_in_zip.py"
