"""LambdaCluster as a Dask scheduler: every way of selecting it, errors, spill, batching."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import textwrap
import threading
import traceback

import dask
import dask.bag as db
import numpy as np
import pytest
import tasks
from conftest import spill_objects, unique
from dask.diagnostics import ProgressBar
from dask.utils_test import GetFunctionTestMixin

from dask_lambda import LambdaCluster, LambdaFunctionError, VersionMismatchError


class TestGetFunction(GetFunctionTestMixin):
    """dask's own conformance tests for foreign get functions."""

    @pytest.fixture(autouse=True)
    def _use_cluster(self, cluster):
        self.get = cluster.get


def test_every_way_of_choosing_the_scheduler(cluster):
    x = dask.delayed(tasks.add)(dask.delayed(tasks.inc)(1), 10)
    assert x.compute(scheduler=cluster) == 12
    assert x.compute(scheduler=cluster.get) == 12
    assert dask.compute(x, scheduler="lambda") == (12,)
    with dask.config.set(scheduler=cluster):
        assert x.compute() == 12
    with dask.config.set(scheduler="lambda"):
        assert x.compute() == 12


def test_lambda_scheduler_without_a_cluster_says_what_to_do():
    script = textwrap.dedent(
        """
        import dask, dask_lambda
        try:
            dask.delayed(sum)([1, 2]).compute(scheduler="lambda")
        except dask_lambda.NoActiveClusterError as e:
            print("refused:", e)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert "refused:" in out.stdout and "LambdaCluster" in out.stdout, out.stderr


def test_w1_bag_is_batched_into_few_invocations(cluster):
    bag = db.from_sequence(range(10_000), npartitions=1000).map(tasks.inc)
    assert bag.sum().compute(scheduler=cluster) == sum(range(1, 10_001))
    report = cluster.last_report
    assert report.tasks > 2000
    assert 1 <= report.invocations <= 50
    assert report.tasks_per_invocation > 40
    assert report.s3_objects_left == 0


def test_delayed_tree_reduction_matches_sync(cluster):
    leaves = [dask.delayed(tasks.inc)(i) for i in range(512)]
    while len(leaves) > 1:
        leaves = [
            dask.delayed(tasks.add)(a, b) for a, b in zip(leaves[::2], leaves[1::2], strict=True)
        ]
    (root,) = leaves
    assert root.compute(scheduler=cluster) == root.compute(scheduler="sync")


def test_diamonds_and_many_roots(cluster):
    a = dask.delayed(tasks.inc)(1)
    b, c = dask.delayed(tasks.double)(a), dask.delayed(tasks.inc)(a)
    diamond = dask.delayed(tasks.add)(b, c)
    roots = [dask.delayed(tasks.double)(i) for i in range(300)]
    combined = dask.delayed(tasks.total)(diamond, *roots)
    assert dask.compute(diamond, combined, scheduler=cluster) == dask.compute(
        diamond, combined, scheduler="sync"
    )


def test_exceptions_keep_type_and_remote_traceback(cluster):
    x = dask.delayed(tasks.fail)(3)
    with pytest.raises(ValueError, match="task failed on 3") as info:
        x.compute(scheduler=cluster)
    frames = "".join(traceback.format_tb(info.value.__traceback__))
    assert "in fail" in frames  # the file is <dynamic-code>: cloudpickle ships tasks by value
    assert any("raised in AWS Lambda" in note for note in info.value.__notes__)
    assert cluster.last_report.failed and cluster.last_report.s3_objects_left == 0

    with pytest.raises(tasks.CustomError) as info:
        dask.delayed(tasks.fail_custom)(42).compute(scheduler=cluster)
    assert info.value.code == 42


def test_failure_midway_leaves_nothing_in_s3(cluster):
    big = [dask.delayed(tasks.big_array)(1, seed=i) for i in range(4)]  # spread over runtimes
    broken = dask.delayed(tasks.fail)(dask.delayed(tasks.total)(*big))
    with pytest.raises(ValueError):
        broken.compute(scheduler=cluster)
    assert cluster.last_report.bytes_spilled > 0
    assert spill_objects(cluster) == []


def test_large_intermediates_stay_off_the_client(cluster):
    """Tens of MB flow between tasks; the client downloads only the small answer."""
    arrays = [dask.delayed(tasks.big_array)(8, seed=i) for i in range(4)]  # over 2 runtimes
    answer = dask.delayed(tasks.array_sum)(dask.delayed(tasks.total)(*arrays))
    expected = sum(tasks.big_array(8, seed=i) for i in range(4)).sum()
    assert answer.compute(scheduler=cluster) == pytest.approx(expected)
    report = cluster.last_report
    assert report.bytes_spilled >= 2 * 8 * 1024 * 1024
    assert report.bytes_to_client < 256 * 1024
    assert spill_objects(cluster) == []


def test_100mb_arrays_between_tasks(cluster):
    produced = [dask.delayed(tasks.big_array)(100, seed=i) for i in range(2)]  # 2 runtimes
    combined = dask.delayed(tasks.total)(*produced)
    assert dask.delayed(tasks.nbytes_of)(combined).compute(scheduler=cluster) == (
        100 * 1024 * 1024 // 8
    )
    assert cluster.last_report.bytes_spilled >= 100 * 1024 * 1024
    assert cluster.last_report.bytes_to_client < 64 * 1024


def test_large_results_are_downloaded(cluster):
    result = dask.delayed(tasks.big_array)(10).compute(scheduler=cluster)
    np.testing.assert_array_equal(result, tasks.big_array(10))


def test_large_graph_literals_and_arguments_spill(cluster):
    literal = np.arange(1_000_000, dtype="float64")  # 8 MB inside the graph
    x = dask.delayed(tasks.array_sum)(dask.delayed(literal, name="big-literal"))
    assert x.compute(scheduler=cluster) == literal.sum()
    # 7 MB in the task itself, incompressible: the request stays over Lambda's 6 MB compressed
    inline_argument = dask.delayed(tasks.nbytes_of)(os.urandom(7_000_000))
    assert inline_argument.compute(scheduler=cluster) == 7_000_000
    assert cluster.invoker.stats.spilled_requests >= 1
    assert spill_objects(cluster) == []


def test_progress_bar(cluster, capsys):
    bag = db.from_sequence(range(100), npartitions=10).map(tasks.inc)
    with ProgressBar():
        assert bag.sum().compute(scheduler=cluster) == 5050
    out = capsys.readouterr().out
    assert "100% Completed" in out


def test_callbacks_see_every_task(cluster):
    seen = []
    lock = threading.Lock()

    def posttask(key, result, dsk, state, worker_id):
        with lock:
            seen.append(key)

    from dask.callbacks import Callback

    bag = db.from_sequence(range(40), npartitions=8).map(tasks.inc).sum()
    with Callback(posttask=posttask):
        bag.compute(scheduler=cluster)
    assert len(seen) == cluster.last_report.tasks


def test_unpicklable_argument_is_a_clear_error(cluster):
    x = dask.delayed(tasks.noop)(threading.Lock())
    with pytest.raises(TypeError, match="picklable"):
        x.compute(scheduler=cluster)
    assert spill_objects(cluster) == []


def test_module_missing_in_lambda_is_a_clear_error(cluster, tmp_path, monkeypatch):
    (tmp_path / "only_on_client.py").write_text("def f(x):\n    return x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("only_on_client")
    with pytest.raises(ModuleNotFoundError) as info:
        dask.delayed(module.f)(1).compute(scheduler=cluster)
    notes = " ".join(info.value.__notes__)
    assert "register_pickle_by_value" in notes  # the cluster deployed it: no CLI to name
    assert "dask-lambda" not in notes.replace("dask-lambda-", "")


def test_version_mismatch_is_refused(local, deploy, monkeypatch):
    for variable, value in local.env().items():  # what `dask-lambda local` tells users to export
        monkeypatch.setenv(variable, value)
    bucket = "versions-test"
    local.client("s3").create_bucket(Bucket=bucket)
    from dask_lambda.deploy.signing import create_key
    from dask_lambda.function.contract import KEY_PARAMETER

    name = unique("old-versions")
    key = create_key(local.client("ssm"), name)
    deploy("old_versions.lambda_handler", code=_old_versions_zip(), FunctionName=name,
           Environment={"Variables": {KEY_PARAMETER: key}})  # fmt: skip
    with pytest.raises(VersionMismatchError) as info:
        LambdaCluster(function_name=name, bucket=bucket)
    message = str(info.value)
    assert "dask: function has 2020.1.0" in message and f"dask-lambda update {name}" in message


def _old_versions_zip() -> bytes:
    from conftest import with_runtime

    source = textwrap.dedent(
        """
        from dask_lambda.function import protocol

        def lambda_handler(event, context):
            versions = dict(protocol.versions(), dask="2020.1.0")
            body = {"versions": versions, "stats": {}}
            return protocol.envelope(protocol.encode_payload(body))
        """
    )
    return with_runtime({"old_versions.py": source})


@pytest.mark.slow
def test_cluster_lifecycle():
    with pytest.warns(ResourceWarning):
        cluster = LambdaCluster(max_concurrency=1)
        assert repr(cluster).startswith("<LambdaCluster")
        pid = cluster.local.pid
        del cluster
        import gc

        gc.collect()
    from conftest import gone, wait_until

    assert wait_until(lambda: gone(pid))

    with LambdaCluster(max_concurrency=1) as cluster:
        assert dask.delayed(tasks.inc)(1).compute(scheduler=cluster) == 2
    cluster.close()  # twice is fine
    with pytest.raises(RuntimeError, match="closed"):
        dask.delayed(tasks.inc)(1).compute(scheduler=cluster)


def test_config_and_environment_variables(monkeypatch):
    with dask.config.set({"lambda.max-concurrency": 3, "lambda.spill.inline-limit": 1234}):
        from dask_lambda.cluster import LambdaCluster as Cluster

        with Cluster(check_versions=False) as cluster:
            assert cluster.settings.max_concurrency == 3
            assert cluster.settings.inline_limit == 1234
    env = dict(os.environ, DASK_LAMBDA__BATCH__MAX_TASKS="17")
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import dask, dask_lambda.config; print(dask.config.get('lambda.batch.max-tasks'))",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert out.stdout.strip() == "17"


def test_crashing_runtime_is_retried_then_names_the_task(cluster):
    x = dask.delayed(tasks.crash)(1, dask_key_name="crashing-task")
    before = cluster.invoker.stats.infra_retries
    with pytest.raises(LambdaFunctionError) as info:
        x.compute(scheduler=cluster)
    error = info.value
    assert error.error_type == "Runtime.ExitError"
    assert error.attempts == cluster.infra_retries + 1
    assert "crashing-task" in str(error) and cluster.function_name in str(error)
    assert cluster.invoker.stats.infra_retries - before == cluster.infra_retries
    assert spill_objects(cluster) == []


def test_throttling_is_retried(cluster, monkeypatch):
    for variable, value in cluster.local.env().items():
        monkeypatch.setenv(variable, value)
    lam = cluster.local.client("lambda")
    lam.put_function_concurrency(FunctionName=cluster.function_name, ReservedConcurrentExecutions=1)
    try:
        with LambdaCluster(
            function_name=cluster.function_name, max_concurrency=4, max_tasks=1, infra_retries=12
        ) as throttled:
            roots = [dask.delayed(tasks.slow)(i, 0.05) for i in range(12)]
            assert dask.delayed(tasks.total)(*roots).compute(scheduler=throttled) == sum(range(12))
            assert throttled.last_report.throttles > 0
            assert throttled.last_report.infra_retries >= throttled.last_report.throttles
    finally:
        lam.delete_function_concurrency(FunctionName=cluster.function_name)
