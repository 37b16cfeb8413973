"""What SnapStart refuses, checked before any AWS call: an older Python, a /tmp over 512 MB,
dependencies that need more /tmp than SnapStart has."""

from __future__ import annotations

import pytest

from dask_lambda.deploy.build import BuildResult
from dask_lambda.deploy.functions import DeployError, FunctionSettings, check_snapstart
from dask_lambda.deploy.provision import _fit_snapstart_tmp


def test_snapstart_needs_python_3_12_and_names_the_fix():
    refused = r"python3\.12 or later.*python3\.11.*without --snapstart"
    with pytest.raises(DeployError, match=refused):
        check_snapstart("python3.11", FunctionSettings(snapstart=True))
    check_snapstart("python3.12", FunctionSettings(snapstart=True))
    check_snapstart("python3.13", FunctionSettings(snapstart=True, ephemeral_storage=512))
    check_snapstart("python3.11", FunctionSettings(snapstart=False, ephemeral_storage=4096))


def test_snapstart_refuses_a_tmp_over_512_mb():
    with pytest.raises(DeployError, match=r"at most 512 MB.*asks for 1024 MB"):
        check_snapstart("python3.12", FunctionSettings(snapstart=True, ephemeral_storage=1024))


def _built(archive_mb: int, unpacked_mb: int) -> BuildResult:
    return BuildResult(zip_bytes=b"", unpacked_size=0, files=0, dependencies_cached=True,
                       dependencies_zip=b"\0" * (archive_mb * 10**6),
                       dependencies_unpacked=unpacked_mb * 10**6)  # fmt: skip


def test_dependencies_on_s3_must_fit_snapstarts_tmp():
    # The archive streams into the unpacking, so only what it unpacks to counts.
    with pytest.raises(DeployError, match=r"unpack to 600 MB there"):
        _fit_snapstart_tmp(_built(200, 600), FunctionSettings(snapstart=True))
    settings = FunctionSettings(snapstart=True)
    _fit_snapstart_tmp(_built(300, 500), settings)
    assert settings.ephemeral_storage == 512
