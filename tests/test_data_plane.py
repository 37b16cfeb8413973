"""One owner for data in the cloud (issue 22): every hole found in persist, futures, scatter and
``clean`` tried for real through the local Lambda, and random lifetimes checked against Python.

Which test guards which check of the data plane:

- the allowlist on every unpickling path (:func:`dask_lambda.function.values.loads`):
  ``test_a_persisted_value_unpickles_through_the_allowlist`` (inline and stored persisted values
  named inside a signed batch), ``test_allowlist_restricts_what_runs`` (test_cli: batches) and
  ``test_allowlisted_function_cannot_be_escaped_through_dotted_names`` (test_security);
- the size and digest check on every read (:func:`~dask_lambda.function.values.read`):
  ``test_a_swapped_persisted_value_is_refused_on_every_read_path`` (inside a task, as a batch
  input, on the client), and test_security's swapped intermediate / final result / input tests;
- the owner count (:class:`dask_lambda.ownership.Ledger`): the queued-call, persist-twice,
  speculation and ``clean`` tests below, and the property-based test.
"""

from __future__ import annotations

import gc
import json
import operator
import os
import time

import cloudpickle
import dask
import pytest
import tasks
from conftest import cli, evil_pickle, spill_objects, unique, wait_until
from dask._task_spec import Task
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from dask_lambda import LambdaCluster, LambdaExecutor
from dask_lambda.exceptions import DataReleasedError, ForeignDataError
from dask_lambda.function.calls import PersistedValue, load_persisted
from dask_lambda.function.protocol import (
    BatchSpec,
    Inline,
    IntegrityError,
    MissingDataError,
    Stored,
)
from dask_lambda.function.storage import S3Store
from dask_lambda.persist import persisted_refs

SPECULATION = {"lambda.speculation.min-seconds": 3.0, "lambda.speculation.multiplier": 2.0}


@pytest.fixture(scope="module")
def first():
    """Every value through S3 (inline_limit=0), one task per invocation, speculation ready."""
    with dask.config.set(SPECULATION):
        cluster = LambdaCluster(inline_limit=0, max_tasks=1, max_concurrency=3)
    with cluster:
        yield cluster


@pytest.fixture(scope="module")
def second():
    with LambdaCluster() as cluster:
        yield cluster




def _run_payload(cluster: LambdaCluster, spec: BatchSpec) -> dict:
    return {"op": "run", "spec": cloudpickle.dumps(spec), "inline_limit": 65536,
            "response_limit": 4_000_000,
            "store": {"bucket": cluster.bucket, "prefix": cluster.prefix}}  # fmt: skip


def _reading(location) -> BatchSpec:
    """A signed batch whose one task reads a persisted value named inside it."""
    task = Task("out", load_persisted, PersistedValue("persisted", location))
    return BatchSpec("0" * 16, ["out"], [task], ["out"], {})


def _location(collection):
    (ref,) = persisted_refs(dict(collection.__dask_graph__()))
    return ref.location


def _swap(store: S3Store, name: str, data: bytes) -> None:
    """What whoever can write the bucket (no key, no invoke) may do: same name, same size."""
    size = store.client.head_object(Bucket=store.bucket, Key=name)["ContentLength"]
    store.client.put_object(Bucket=store.bucket, Key=name, Body=data + b"\0" * (size - len(data)))


def _exists(store: S3Store, name: str) -> bool:
    return name in store.list(name.rsplit("/", 1)[0] + "/")


# -- 1. code execution past the allowlist ---------------------------------------------------------
def test_a_persisted_value_unpickles_through_the_allowlist(
    local, aws_env, bucket, tmp_path, monkeypatch
):
    folder = tmp_path / "allowed"
    folder.mkdir()
    (folder / "vetted.py").write_text("def double(x):\n    return 2 * x\n")
    monkeypatch.syspath_prepend(str(folder))
    name = unique("locked")
    cli("deploy", name, str(folder / "vetted.py"), "--allow", "vetted.double", "--create-role",
        "--bucket", bucket)  # fmt: skip
    marker = tmp_path / "pwned"
    attack = evil_pickle(str(marker))
    with LambdaCluster(function_name=name) as locked:
        stored = locked.store.put(f"{locked.prefix}/{'0' * 16}/{'a' * 32}", attack)
        for location in (Inline(attack), stored):
            response = locked.invoker.call(_run_payload(locked, _reading(location)))  # signed
            (error,) = response["errors"]
            assert error["type"] == "UnpicklingError" and "not allowed" in error["message"]
        allowed = Inline(cloudpickle.dumps([1, 2, 3]))  # data still passes
        response = locked.invoker.call(_run_payload(locked, _reading(allowed)))
        assert response["errors"] == [] and response["results"][0][0] == "ok"
        locked.store.delete([stored.name])
    assert not marker.exists()


# -- 8. a persisted value is checked on every read path -------------------------------------------
def test_a_swapped_persisted_value_is_refused_on_every_read_path(first, tmp_path):
    marker = str(tmp_path / "pwned")
    kept = dask.delayed(tasks.chunk_of)(list(range(1000)), 3).persist(scheduler=first)
    where = _location(kept)
    assert isinstance(where, Stored)
    _swap(first.store, where.name, evil_pickle(marker))
    with pytest.raises(IntegrityError, match="not the one dask-lambda wrote"):
        dask.delayed(len)(kept).compute(scheduler=first)  # a batch input
    with pytest.raises(IntegrityError, match="not the one dask-lambda wrote"):
        kept.compute(scheduler="sync")  # load_persisted on the client
    response = first.invoker.call(_run_payload(first, _reading(where)))  # fused into a task
    (error,) = response["errors"]
    assert error["type"] == "IntegrityError" and where.name in error["message"]
    lying = Stored(where.name, where.nbytes + 1, where.sha256)  # refused before it is read
    (error,) = first.invoker.call(_run_payload(first, _reading(lying)))["errors"]
    assert error["type"] == "IntegrityError" and "It was not read" in error["message"]
    assert not os.path.exists(marker)


# -- 2. a future is held while a call that reads it is queued -------------------------------------
def _queued_behind_a_slow_call(ex: LambdaExecutor):
    """A stored future, and a call reading it queued (with an unrelated one) behind a slow
    call that takes the executor's only slot."""
    arg = ex.submit(tasks.big_array, 1)  # 1 MB: stored
    assert arg.exception(timeout=120) is None
    blocker = ex.submit(tasks.slow, 0, 3)
    dependent = ex.submit(tasks.nbytes_of, arg)
    unrelated = ex.submit(tasks.inc, 1)
    return arg, blocker, dependent, unrelated


def test_a_queued_call_holds_the_futures_it_reads(second):
    with LambdaExecutor(cluster=second, max_workers=1) as ex:
        arg, blocker, dependent, unrelated = _queued_behind_a_slow_call(ex)
        name = arg.location.name
        del arg
        gc.collect()
        assert not blocker.done() and _exists(second.store, name)  # the queued call holds it
        assert dependent.result(timeout=120) == 128 * 1024
        assert unrelated.result(timeout=120) == 2
    assert wait_until(lambda: not _exists(second.store, name))  # then nothing holds it
    assert spill_objects(second) == []


def test_shutdown_waits_for_calls_still_waiting_for_their_arguments(second):
    ex = LambdaExecutor(cluster=second)
    running = ex.submit(tasks.slow, bytes(100_000), 2)  # stored when it ends
    waiting = ex.submit(len, running)  # queued only once `running` has finished
    ex.shutdown(wait=True)
    assert waiting.done() and waiting.result() == 100_000
    del running, waiting
    gc.collect()
    assert spill_objects(second) == []


def test_a_missing_input_fails_only_the_calls_that_need_it(first, second):
    stats = second.invoker.stats
    with LambdaExecutor(cluster=second, max_workers=1) as ex:
        arg = ex.submit(tasks.big_array, 1)  # 1 MB: stored
        assert arg.exception(timeout=120) is None
        second.store.delete([arg.location.name])  # removed behind the client's back
        before = stats.invocations
        blocker = ex.submit(tasks.slow, 0, 1)
        dependent = ex.submit(tasks.nbytes_of, arg)
        unrelated = ex.submit(tasks.inc, 1)
        with pytest.raises(MissingDataError, match="is gone"):
            dependent.result(timeout=120)
        assert unrelated.result(timeout=120) == 2
        blocker.result(timeout=120)
        assert stats.invocations - before <= 2  # one batch, not retried as a transient failure
    kept = dask.delayed(tasks.chunk_of)(list(range(100)), 2).persist(scheduler=first)
    first.store.delete([_location(kept).name])
    with pytest.raises(MissingDataError, match="is gone"):
        dask.delayed(len)(kept).compute(scheduler=first)
    assert first.last_report.infra_retries == 0 and first.last_report.invocations == 1


# -- 3. keys are unique: futures of two executors never mix ---------------------------------------
def test_futures_and_scatters_of_two_executors_never_mix(first, second):
    with LambdaExecutor(cluster=first) as a, LambdaExecutor(cluster=first) as b:
        fa, fb = a.submit(tasks.noop, 1), b.submit(tasks.noop, 2)
        assert fa.key != fb.key
        assert b.submit(operator.sub, fa, fb).result(timeout=60) == -1
        assert a.submit(operator.sub, fb, fa).result(timeout=60) == 1
        sa, sb = a.scatter(10), b.scatter(20)
        assert sa.key != sb.key
        assert b.submit(operator.sub, sa, sb).result(timeout=60) == -10
        other = LambdaExecutor(cluster=second)  # another cluster's objects: refused
        with pytest.raises(ForeignDataError, match=repr(first.function_name)):
            other.submit(tasks.inc, fa)
        other.shutdown()


# -- 4. and 5. persists share ownership, speculation never deletes what a persist kept ------------
def test_persist_with_speculation_keeps_its_data(first, tmp_path):
    marker = str(tmp_path / "straggler")
    quick = [dask.delayed(tasks.chunk_of)(list(range(100)), i) for i in range(6)]
    straggler = dask.delayed(tasks.slow_first_time)(marker, [7] * 100, 8)
    kept = first.persist([straggler, *quick], speculation=True)
    assert first.last_report.speculations == 1
    first.backend.join_cleanups()  # the abandoned copy ended and was cleaned up after
    assert all(_exists(first.store, _location(k).name) for k in kept)
    assert dask.compute(*kept, scheduler=first) == ([7] * 100, *([v * i for v in range(100)]
                                                                 for i in range(6)))  # fmt: skip
    del kept
    gc.collect()
    assert first.persisted_bytes == 0 and spill_objects(first) == []


def test_persisting_twice_shares_the_data(first):
    x = dask.delayed(tasks.chunk_of)(list(range(1000)), 3).persist(scheduler=first)
    held = first.persisted_bytes
    y = x.persist(scheduler=first)  # a notebook re-running `x = x.persist()`
    assert first.persisted_bytes == held  # one object, two holders
    del x
    gc.collect()
    assert y.compute(scheduler=first) == [3 * v for v in range(1000)]
    x = y
    x = x.persist(scheduler=first)
    del y
    gc.collect()
    assert dask.delayed(sum)(x).compute(scheduler=first) == 3 * sum(range(1000))
    first.unpersist(x)
    with pytest.raises(DataReleasedError, match="released by unpersist"):
        x.compute(scheduler=first)
    assert first.persisted_bytes == 0 and spill_objects(first) == []


# -- 6. held data survives `clean`, a dead client's does not --------------------------------------
def test_clean_spares_what_a_running_client_holds(first, monkeypatch):
    for variable, value in first.local.env().items():
        monkeypatch.setenv(variable, value)
    store = first.store
    dead = "deadbeef"  # a client killed an hour ago: its lease stopped being refreshed
    lease = {"token": dead, "owner": "cluster 'gone'", "host": "elsewhere", "pid": 1,
             "refreshed": time.time() - 3600, "ttl": 600}  # fmt: skip
    dead_lease = store.put(f"{first.prefix}/leases/{dead}.json", json.dumps(lease).encode()).name
    orphans = [store.put(f"{first.prefix}/{dead}00000000/{i:032x}", b"x").name for i in range(3)]
    kept = dask.delayed(tasks.chunk_of)(list(range(1000)), 3).persist(scheduler=first)
    with LambdaExecutor(cluster=first) as ex:
        scattered = ex.scatter(bytes(10_000))  # (a list would scatter each element)
        held = {_location(kept).name, scattered.location.name}
        tags = store.client.get_object_tagging(Bucket=first.bucket, Key=_location(kept).name)
        assert tags["TagSet"] == [{"Key": "createdBy", "Value": "dask-lambda"}]  # not scratch
        result = cli("clean", "--bucket", first.bucket, "--older-than", "0s", "--yes")
        assert "spared: 2 objects held by a running client" in result.output
        assert f"pid {os.getpid()}" in result.output
        assert all(name in result.output for name in [*orphans, dead_lease])
        assert not any(name in result.output for name in held)
        assert ex.submit(len, scattered).result(timeout=60) == 10_000
    assert kept.compute(scheduler=first) == [3 * v for v in range(1000)]
    left = store.list(first.prefix + "/")
    assert not set(orphans + [dead_lease]) & set(left)
    assert _location(kept).name in left and first.backend.ledger.lease_name in left


def test_the_expiry_rule_matches_only_scratch_objects(local, aws_env, bucket, user_module):
    name = unique("expiring")
    cli("deploy", name, str(user_module), "--create-role", "--bucket", bucket,
        "--no-dependencies")  # fmt: skip
    (rule,) = local.client("s3").get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    assert rule["Filter"]["And"]["Prefix"] == f"dask-lambda/{name}/"
    assert rule["Filter"]["And"]["Tags"] == [
        {"Key": "createdBy", "Value": "dask-lambda"},
        {"Key": "dask-lambda-lifetime", "Value": "scratch"},
    ]
    written = S3Store(bucket, local.client("s3")).put(f"dask-lambda/{name}/{'1' * 16}/x", b"x")
    tags = local.client("s3").get_object_tagging(Bucket=bucket, Key=written.name)["TagSet"]
    assert {"Key": "dask-lambda-lifetime", "Value": "scratch"} in tags


# -- 7. functions sharing a bucket cannot touch each other's objects ------------------------------
def _read_object(bucket: str, key: str) -> str:
    import boto3

    try:
        boto3.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
        return "read"
    except Exception as e:
        return e.response["Error"]["Code"]


def _delete_object(bucket: str, key: str) -> str:
    import boto3

    try:
        boto3.client("s3").delete_object(Bucket=bucket, Key=key)
        return "deleted"
    except Exception as e:
        return e.response["Error"]["Code"]


def test_functions_sharing_a_bucket_cannot_touch_each_others_objects(local, aws_env, bucket):
    owner, other = unique("owner"), unique("other")
    for name in (owner, other):
        cli("deploy", name, "--create-role", "--bucket", bucket)
    with LambdaCluster(function_name=owner) as a, LambdaCluster(function_name=other) as b:
        assert (a.prefix, b.prefix) == (f"dask-lambda/{owner}", f"dask-lambda/{other}")
        with LambdaExecutor(cluster=a) as ex_a, LambdaExecutor(cluster=b) as ex_b:
            secret = ex_a.scatter(bytes(1_000_000))
            name = secret.location.name
            assert ex_a.submit(_read_object, bucket, name).result(timeout=60) == "read"
            assert ex_b.submit(_read_object, bucket, name).result(timeout=60) == "AccessDenied"
            assert ex_b.submit(_delete_object, bucket, name).result(timeout=60) == "AccessDenied"
            assert ex_a.submit(len, secret).result(timeout=60) == 1_000_000


# -- 9. errors that name the cause ----------------------------------------------------------------
def test_data_of_another_cluster_is_refused_before_anything_runs(first, second):
    kept = dask.delayed(tasks.chunk_of)(list(range(100)), 2).persist(scheduler=first)
    before = second.invoker.stats.invocations
    with pytest.raises(ForeignDataError, match=f"belongs to cluster {first.function_name!r}"):
        dask.delayed(len)(kept).compute(scheduler=second)
    with pytest.raises(ForeignDataError):
        kept.persist(scheduler=second)
    assert second.invoker.stats.invocations == before
    assert dask.delayed(len)(kept).compute(scheduler=first) == 100


# -- random lifetimes over two executors and two clusters -----------------------------------------
OPS = st.lists(
    st.tuples(
        st.sampled_from(["make", "persist", "compute", "scatter", "submit", "result", "del",
                         "unpersist", "shutdown"]),  # fmt: skip
        st.integers(0, 7),  # which handle
        st.integers(0, 2),  # which executor (0 and 1 on `first`, 2 on `second`) or cluster
        st.integers(1, 4),  # a size / seed
    ),
    min_size=4,
    max_size=12,
)


class _Handle:
    """A value the test holds: a delayed (maybe persisted on a cluster) or a future."""

    def __init__(self, value, expected: list, cluster=None, future=False):
        self.value, self.expected, self.cluster, self.future = value, expected, cluster, future
        self.released = False


@settings(max_examples=20, deadline=None, phases=[Phase.generate],
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(ops=OPS)  # fmt: skip
@pytest.mark.slow
def test_random_lifetimes_give_pythons_answers_and_leave_nothing(first, second, ops):
    clusters = [first, first, second]
    executors = [LambdaExecutor(cluster=first), LambdaExecutor(cluster=first),
                 LambdaExecutor(cluster=second)]  # fmt: skip
    handles: list[_Handle] = []
    try:
        for op, which, where, size in ops:
            cluster, ex = clusters[where], executors[where]
            handle = handles[which % len(handles)] if handles else None
            if op == "make" or handle is None:
                values = range(size * 4000)  # 16-64 KB pickled once computed: inline or stored
                handles.append(_Handle(dask.delayed(tasks.chunk_of)(values, size),
                                       [v * size for v in values]))  # fmt: skip
            elif op == "scatter":
                values = range(size * 5000)  # one value (a list would scatter each element)
                handles.append(_Handle(ex.scatter(values), values, cluster, future=True))
            elif op == "del":
                handles.remove(handle)
                del handle
                gc.collect()
            elif handle.future:
                _future_op(op, handle, ex, cluster, size, handles)
            else:
                _collection_op(op, handle, cluster, handles)
    finally:
        for ex in executors:
            ex.shutdown()
    handles = handle = None
    gc.collect()
    assert wait_until(lambda: spill_objects(first) == [] and spill_objects(second) == [])
    assert first.persisted_bytes == 0 and second.persisted_bytes == 0


def _future_op(op, handle, ex, cluster, size, handles) -> None:
    shut = ex._shutdown
    if op in ("submit", "compute", "persist") and not shut:
        if handle.cluster is not cluster:
            with pytest.raises(ForeignDataError):
                ex.submit(tasks.chunk_of, handle.value, size)
        else:
            future = ex.submit(tasks.chunk_of, handle.value, size)
            handles.append(_Handle(future, [v * size for v in handle.expected], cluster, True))
    elif op == "result":
        assert handle.value.result(timeout=120) == handle.expected
    elif op == "shutdown":
        ex.shutdown()
        assert handle.value.result(timeout=120) == handle.expected  # results outlive it


def _collection_op(op, handle, cluster, handles) -> None:
    foreign = handle.cluster is not None and handle.cluster is not cluster
    if op == "persist":
        if handle.released:
            with pytest.raises(DataReleasedError, match="released by unpersist"):
                handle.value.persist(scheduler=cluster)
        elif foreign:
            with pytest.raises(ForeignDataError):
                handle.value.persist(scheduler=cluster)
        else:
            handles.append(_Handle(handle.value.persist(scheduler=cluster), handle.expected,
                                   cluster))  # fmt: skip
    elif op in ("compute", "result", "submit"):
        total = dask.delayed(sum)(handle.value)
        if handle.released:
            with pytest.raises(DataReleasedError, match="released by unpersist"):
                total.compute(scheduler=cluster)
        elif foreign:
            with pytest.raises(ForeignDataError):
                total.compute(scheduler=cluster)
        else:
            assert total.compute(scheduler=cluster) == sum(handle.expected)
            assert handle.value.compute(scheduler="threads") == handle.expected
    elif op == "unpersist" and handle.cluster is not None:
        handle.cluster.unpersist(handle.value)
        handle.released = True


# -- closing a cluster deletes everything it held, and says so -----------------------------------
def test_closing_deletes_everything_and_says_so(local, aws_env, bucket):
    name = unique("closing")
    cli("deploy", name, "--create-role", "--bucket", bucket)
    with LambdaCluster(function_name=name, inline_limit=0) as cluster:
        kept = dask.delayed(tasks.chunk_of)(list(range(1000)), 2).persist(scheduler=cluster)
        ex = LambdaExecutor(cluster=cluster)
        future = ex.submit(tasks.inc, 1)
        scattered = ex.scatter(bytes(1000))
        assert future.exception(timeout=120) is None and len(spill_objects(cluster)) == 3
        ex.shutdown()
        assert len(spill_objects(cluster)) == 3  # results outlive their executor
        prefix = cluster.prefix
    listed = local.client("s3").list_objects_v2(Bucket=bucket, Prefix=prefix + "/")
    assert listed["KeyCount"] == 0  # the values, and the lease
    closing = f"released by closing cluster {name!r}"
    with pytest.raises(DataReleasedError, match=closing):
        kept.compute(scheduler="sync")
    for held in (future, scattered):
        with pytest.raises(DataReleasedError, match=closing):
            held.result()


def test_every_public_name_resolves():
    import dask_lambda

    assert all(getattr(dask_lambda, name) is not None for name in dask_lambda.__all__)
    assert dask_lambda.MissingDataError is MissingDataError
    assert dask_lambda.DataReleasedError is DataReleasedError


def test_a_live_clients_lease_is_refreshed_and_goes_with_it(second):
    """What `clean` relies on: a running ledger keeps its lease fresh; closing removes it."""
    from dask_lambda.ownership import Ledger, read_leases

    ledger = Ledger(second.store, f"{second.prefix}/lease-test", "cluster 'lease-test'",
                    lease_ttl=30, lease_refresh=0.1).start()  # fmt: skip

    def refreshed() -> float:
        return read_leases(second.store, [ledger.lease_name])[ledger.lease_name]["refreshed"]

    first_seen = refreshed()
    assert read_leases(second.store, [ledger.lease_name])[ledger.lease_name]["live"]
    assert wait_until(lambda: refreshed() > first_seen)
    ledger.close("the test's end")
    assert second.store.list(f"{second.prefix}/lease-test/") == []


@pytest.mark.parametrize("size", [1000, 17 * 2**20])  # one GET, and the transfer manager's path
def test_an_object_of_another_size_is_refused_before_it_is_read(local, bucket, size):
    """The size check happens on the object's metadata, before its body is downloaded: for big
    objects (multipart downloads, 16 MB and more) too. After a download the digest would catch
    the difference, but the bytes would already have crossed the wire."""
    from dask_lambda.function.protocol import IntegrityError

    store = S3Store(bucket, local.client("s3"))
    written = store.put("dask-lambda/f/0123456789abcdef/x", b"\1" * size)
    grown = b"\1" * size + b"\0" * 7  # what someone else wrote in its place
    local.client("s3").put_object(Bucket=bucket, Key=written.name, Body=grown)
    with pytest.raises(IntegrityError, match="It was not read"):
        store.get(written.name, expected=written)
    assert store.get(written.name, size=len(grown)) == grown  # unchecked reads still work
