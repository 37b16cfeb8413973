"""The client's environment is the user's: dask-lambda pins no boto3 on it, and what it installs
(the test extra, s3fs with it) has no conflicts pip would complain about (issue 25, item 3)."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

from dask_lambda.emulator.runtimes import MANAGED_RUNTIME_PINS


def requirements(extra: str | None = None) -> list[Requirement]:
    """What pyproject.toml requires, or its ``extra`` adds (as written, not as installed)."""
    project = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())["project"]
    texts = project["dependencies"] if extra is None else project["optional-dependencies"][extra]
    return [Requirement(text) for text in texts]


def test_boto3_is_not_pinned_on_the_client():
    (boto3,) = [r for r in requirements() if r.name == "boto3"]
    assert not any(spec.operator in ("==", "<", "<=", "~=") for spec in boto3.specifier)
    for extra in ("local", "s3"):
        names = {r.name for r in requirements(extra)}
        assert not names & {"boto3", "botocore", "awslambdaric"}, extra


def test_the_managed_runtime_pins_its_own_boto3_and_awslambdaric():
    pinned = {Requirement(p).name: str(Requirement(p).specifier) for p in MANAGED_RUNTIME_PINS}
    assert set(pinned) >= {"awslambdaric", "boto3", "botocore"}
    assert all(spec.startswith("==") for spec in pinned.values())


def test_s3fs_installs_next_to_the_test_extra_without_conflicts():
    assert importlib.metadata.version("s3fs")  # in the test extra, through dask-lambda[s3]
    done = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
