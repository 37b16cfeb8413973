"""SnapStart on the local Lambda (issue 27), from a Python 3.12+ client as AWS requires.

A SnapStart function's deploy publishes a version whose init runs once, into a snapshot; every
new runtime of that version is restored from it (forked here) instead of running init: with the
snapshot's memory and ``/tmp``, yet its own ``/tmp``, processes and no capabilities, and with
what must be unique (random state, runtime id, connections) made anew by the after-restore hook.

``ci/test`` runs this file in a Python 3.12 environment of its own when its main one is older
(``tests/conftest.py`` leaves it out there).
"""

from __future__ import annotations

import json
import time

import dask
import pytest
from conftest import cli, unique, zip_files

from dask_lambda import LambdaCluster
from dask_lambda.deploy.functions import DeployError, publish
from dask_lambda.exceptions import LambdaFunctionError


@pytest.fixture(scope="module")
def snap_cluster():
    with LambdaCluster(snapstart=True, max_tasks=1, max_concurrency=3) as running:
        yield running


def _environment_facts(hold_seconds: float) -> dict:
    """What a task sees of its environment, holding it a while (so that calls at once each
    get an environment of their own)."""
    import os
    import random
    import stat
    import time
    import uuid

    first_random = random.random()
    mine = f"/tmp/mine-{uuid.uuid4().hex}"
    open(mine, "w").close()
    time.sleep(hold_seconds)
    with open("/proc/self/cmdline", "rb") as f:
        cmdline = f.read().split(b"\0")
    with open("/proc/1/cmdline", "rb") as f:
        init_cmdline = f.read().split(b"\0")
    with open("/proc/self/status") as f:
        cap_eff = next(line.split()[1] for line in f if line.startswith("CapEff"))
    try:
        os.mknod("/tmp/disk", stat.S_IFBLK | 0o600, os.makedev(8, 0))
        mknod = "made"
    except OSError as e:
        mknod = e.errno
    import sys

    return {
        "preloaded": [name for name in ("dask.array", "dask.bag") if name in sys.modules],
        "random": first_random,
        "pid": os.getpid(),
        "pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
        "init": [part.decode() for part in init_cmdline],
        "runtime": [part.decode() for part in cmdline],
        "initialization": os.environ.get("AWS_LAMBDA_INITIALIZATION_TYPE"),
        "version": os.environ.get("AWS_LAMBDA_FUNCTION_VERSION"),
        "tmp": sorted(name for name in os.listdir("/tmp") if name.startswith("mine-")),
        "mine": os.path.basename(mine),
        "cap_eff": cap_eff,
        "mknod": mknod,
    }


def test_a_snapstart_cluster_runs_its_published_version_restored_from_one_snapshot(snap_cluster):
    name = snap_cluster.function_name
    lam = snap_cluster._client("lambda")
    assert snap_cluster.backend.invoker.function_name == f"{name}:1"
    version = lam.get_function_configuration(FunctionName=f"{name}:1")
    assert version["SnapStart"] == {"ApplyOn": "PublishedVersions", "OptimizationStatus": "On"}
    assert version["State"] == "Active"
    assert lam.get_alias(FunctionName=name, Name="dask-lambda")["FunctionVersion"] == "1"
    latest = lam.get_function_configuration(FunctionName=name)
    assert latest["SnapStart"] == {"ApplyOn": "PublishedVersions", "OptimizationStatus": "Off"}

    seen = dask.compute(*[dask.delayed(_environment_facts)(1.0, dask_key_name=f"facts-{i}")
                          for i in range(3)], scheduler=snap_cluster)  # fmt: skip
    assert snap_cluster.last_report.cold_starts == 3
    records = snap_cluster.last_report.invocation_records
    assert [record.get("restored") for record in records] == [True] * 3, records
    for facts in seen:
        # Forked from the snapshot (its PID 1 is the snapshot's process), not a new interpreter
        assert "--snapshot" in facts["init"] and "--snapshot" in facts["runtime"], facts
        assert facts["pid"] == 2 and facts["pids"] == [1, 2], facts  # its own PID namespace
        assert facts["initialization"] == "snap-start" and facts["version"] == "1"
        # The snapshot imported dask's collections (a before-snapshot hook): restores do not.
        assert facts["preloaded"] == ["dask.array", "dask.bag"], facts
        assert facts["tmp"] == [facts["mine"]], facts  # its own /tmp, not its siblings'
        assert facts["cap_eff"] == "0000000000000000" and facts["mknod"] == 1, facts
    # The after-restore hook re-seeded each environment: one snapshot, three random streams.
    assert len({facts["random"] for facts in seen}) == 3
    logs = snap_cluster._client("logs").filter_log_events(logGroupName=f"/aws/lambda/{name}")
    lines = [event["message"] for event in logs["events"]]
    restored = [line for line in lines if line.startswith("REPORT") and "Restore Duration" in line]
    assert len(restored) >= 3 and not [line for line in lines if "Init Duration" in line]


def test_runtime_ids_are_unique_after_a_restore(snap_cluster):
    """The handler's runtime id is made at init: without the after-restore hook every restored
    environment would report the snapshot's."""
    snap_cluster.local.reap(snap_cluster.function_name)
    dask.compute(*[dask.delayed(time.sleep)(0.8, dask_key_name=f"hold-{i}") for i in range(2)],
                 scheduler=snap_cluster)  # fmt: skip
    records = snap_cluster.last_report.invocation_records
    cold = {record["runtime_id"] for record in records if record.get("cold_start")}
    assert len(cold) == 2, records


def _exit_now(code: int) -> None:
    import os

    os._exit(code)


def test_a_restored_runtime_that_dies_is_reported_and_the_next_one_is_restored(snap_cluster):
    with pytest.raises(LambdaFunctionError, match="exit status 3"):
        dask.delayed(_exit_now)(3).compute(scheduler=snap_cluster, retries=0)
    again = dask.delayed(_environment_facts)(0.0).compute(scheduler=snap_cluster)
    assert "--snapshot" in again["init"] and again["version"] == "1"


HOOKS = '''
import os
from snapshot_restore_py import register_after_restore, register_before_snapshot

INIT_PID = os.getpid()
with open("/tmp/init-ran", "a") as f:
    f.write("init\\n")


@register_before_snapshot
def before():
    with open("/tmp/init-ran", "a") as f:
        f.write("before-snapshot\\n")


@register_after_restore
def after():
    with open("/tmp/init-ran", "a") as f:
        f.write("after-restore\\n")


def handler(event, context):
    with open("/tmp/init-ran") as f:
        return {"log": f.read().split(), "init_pid": INIT_PID, "pid": os.getpid(),
                "version": context.function_version}
'''


def _create(local, role_arn, files: dict[str, str], handler: str, **config) -> str:
    name = unique("snap")
    local.client("lambda").create_function(
        FunctionName=name, Runtime="python3.12", Role=role_arn, Handler=handler,
        Code={"ZipFile": zip_files(files)}, Timeout=30, MemorySize=256,
        SnapStart={"ApplyOn": "PublishedVersions"}, **config,
    )  # fmt: skip
    return name


def test_init_and_before_snapshot_hooks_run_once_and_after_restore_hooks_in_each(local, role_arn):
    lam = local.client("lambda")
    name = _create(local, role_arn, {"hooks.py": HOOKS}, "hooks.handler")
    version = publish(lam, name)
    answers = []
    for _ in range(2):
        local.reap(name)  # the next call restores a new environment
        out = lam.invoke(FunctionName=name, Qualifier=version)
        assert out["ExecutedVersion"] == version and "FunctionError" not in out
        answers.append(json.loads(out["Payload"].read()))
    for answer in answers:
        # Init and the before-snapshot hook ran in the snapshot (their lines are in the copy
        # of its /tmp); this environment ran only its own after-restore hook.
        assert answer["log"] == ["init", "before-snapshot", "after-restore"], answer
        assert answer["version"] == version
    lam.delete_function(FunctionName=name)


def test_a_failing_init_fails_the_version_with_its_error(local, role_arn):
    lam = local.client("lambda")
    name = _create(local, role_arn, {"broken.py": "raise RuntimeError('init broke here')\n"},
                   "broken.handler")  # fmt: skip
    with pytest.raises(DeployError, match="init broke here"):
        publish(lam, name)
    failed = lam.get_function_configuration(FunctionName=name, Qualifier="1")
    assert failed["State"] == "Failed" and "init broke here" in failed["StateReason"]
    with pytest.raises(lam.exceptions.ResourceConflictException, match="Failed"):
        lam.invoke(FunctionName=f"{name}:1")
    assert lam.invoke(FunctionName=name)["FunctionError"] == "Unhandled"  # $LATEST: no snapshot
    lam.delete_function(FunctionName=name)


def test_cli_deploys_updates_and_shows_a_snapstart_function(local, aws_env, bucket, user_module):
    name = unique("cli-snap")
    deployed = cli("deploy", name, str(user_module), "--create-role", "--bucket", bucket,
                   "--snapstart")  # fmt: skip
    assert f"published version 1 (snapshot made), alias dask-lambda -> {name}:1" in deployed.output
    updated = cli("update", name, str(user_module), "--memory", "1024")
    assert f"alias dask-lambda -> {name}:2" in updated.output  # SnapStart stays on
    shown = cli("info", name)
    assert "SnapStart   version 2 (alias dask-lambda), Active, optimization On" in shown.output
    with LambdaCluster(function_name=name, bucket=bucket) as client:
        assert client.backend.invoker.function_name == f"{name}:2"
        assert dask.delayed(sum)([1, 2]).compute(scheduler=client) == 3
    cli("delete", name, "--delete-role", "--yes")
