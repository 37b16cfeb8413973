"""The fix an error names fits where the function came from (no Lambda)."""

from __future__ import annotations

import pytest

from dask_lambda.exceptions import deployment_hint


def missing(module: str) -> ModuleNotFoundError:
    return ModuleNotFoundError(f"No module named {module!r}", name=module)


def test_a_missing_package_of_a_cluster_deployed_function_names_add_packages():
    hint = deployment_hint(missing("tblib"), "dask-lambda-0123", deployed_by_cluster=True)
    assert "cluster.add_packages(['tblib'])" in hint and "dask-lambda update" not in hint


def test_a_missing_package_of_a_named_function_names_the_cli():
    hint = deployment_hint(missing("tblib"), "my-etl", deployed_by_cluster=False)
    assert "dask-lambda update my-etl --include tblib" in hint and "LambdaCluster" not in hint


def test_unknown_origin_names_both():
    hint = deployment_hint(missing("tblib"), "f")
    assert "dask-lambda update f --include tblib" in hint and "add_packages(['tblib'])" in hint


@pytest.mark.parametrize(("by_cluster", "cli"), [(True, False), (False, True)])
def test_own_code_and_grants_follow_the_origin(by_cluster, cli):
    own = deployment_hint(missing("my_private_module"), "f", by_cluster)
    assert "register_pickle_by_value" in own
    assert ("dask-lambda update f PATHS" in own) == cli
    denied = deployment_hint(PermissionError("AccessDenied: s3://data"), "f", by_cluster)
    assert ("--s3-read" in denied) == cli and ("s3_read=" in denied) == (not cli)
