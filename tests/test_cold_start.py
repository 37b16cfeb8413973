"""Cold starts as shipped (issue 27): the local Lambda runs a package exactly as it was deployed,
read-only and with nothing compiled into it, so what a cold start compiles shows here as on AWS;
and what dask-lambda ships compiles nothing."""

from __future__ import annotations

import dask
import pytest
import tasks

from dask_lambda import LambdaCluster


@pytest.fixture(scope="module")
def default_cluster():
    with LambdaCluster() as running:
        yield running


def _assert_nothing_compiled(found: dict) -> None:
    assert len(found["imported"]) > 20, found["imported"]
    assert found["compiled"] == [], f"compiled on a cold start: {found['compiled'][:10]}"
    # The recording works: a module without bytecode is compiled, and seen.
    assert [p for p in found["control"] if p.endswith("control_module_without_bytecode.py")]
    assert not found["code_writable"]


def test_the_default_package_imports_from_read_only_code_without_compiling(default_cluster):
    found = dask.delayed(tasks.imports_without_compiling)().compute(scheduler=default_cluster)
    assert found["files"]["dask"].startswith("/var/task/")
    _assert_nothing_compiled(found)


def test_dependencies_mounted_from_s3_import_without_compiling(cluster):
    packages = ("pandas", "pyarrow", "dask", "numpy", "dask_lambda.function")
    found = dask.delayed(tasks.imports_without_compiling)(packages, limit=15).compute(
        scheduler=cluster
    )
    assert "/dask-lambda-deps/" in found["files"]["pandas"]
    _assert_nothing_compiled(found)


def test_a_package_shipped_without_bytecode_compiles_on_every_cold_start():
    """The local Lambda adds nothing to what was shipped: no bytecode compiled into the code
    after unpacking (which would hide what each cold start compiles on AWS)."""
    with dask.config.set({"lambda.bytecode": False}), LambdaCluster() as sources_only:
        for _ in range(2):  # each a new runtime, on the same unpacked code
            sources_only.local.reap(sources_only.function_name)
            found = dask.delayed(tasks.imports_without_compiling)(("dask",), limit=5).compute(
                scheduler=sources_only
            )
            assert sources_only.last_report.cold_starts == 1
            assert any(p.startswith("/var/task/dask/") for p in found["compiled"]), found


def test_thread_mode_writes_no_bytecode_into_the_shared_code(deploy, monkeypatch):
    """Thread-mode runtimes import the deployed code in the server's own process: it must not
    leave bytecode in the unpacked folder that process runtimes later share."""
    monkeypatch.delenv("PYTHONDONTWRITEBYTECODE", raising=False)  # the server's own doing
    import hashlib
    import json

    from conftest import unique, zip_files

    from dask_lambda.emulator import LocalLambda
    from dask_lambda.emulator.code_store import shared_root

    module = unique("fresh_handler").replace("-", "_")
    code = zip_files({f"{module}.py": "def handler(event, context):\n    return {'ok': 1}\n"})
    with LocalLambda(runtime_mode="thread") as server:
        name = deploy(f"{module}.handler", code, server=server)
        answer = server.client("lambda").invoke(FunctionName=name, Payload=b"{}")
        assert json.loads(answer["Payload"].read()) == {"ok": 1}
    folder = shared_root() / hashlib.sha256(code).hexdigest()
    assert (folder / f"{module}.py").exists()
    assert not list(folder.rglob("*.pyc")), list(folder.rglob("*.pyc"))
