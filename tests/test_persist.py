"""Data that stays in the cloud between computes (issue 13): ``persist`` keeps values in S3,
later computes read them in Lambda, and the objects go when the collections do."""

from __future__ import annotations

import gc

import dask
import dask.array as da
import dask.bag as db
import numpy as np
import pytest
from conftest import cli, spill_objects, unique

from dask_lambda import LambdaCluster


@pytest.fixture(scope="module")
def plain():
    with LambdaCluster() as cluster:
        yield cluster


def _objects(cluster) -> list[str]:
    return spill_objects(cluster)


def test_a_persisted_array_stays_remote_for_later_computes(plain):
    x = da.random.default_rng(0).random((4000, 4000), chunks=(1000, 1000))  # 128 MB
    size = x.nbytes
    y = x.persist(scheduler=plain)
    report = plain.last_report
    assert report.bytes_to_client < 0.01 * size  # nothing came back but references
    assert plain.persisted_bytes >= size and report.bytes_persisted_held >= size
    for later in ((y + 1).sum(), y.mean(axis=0), (y @ y.T)[0, :5]):
        expected = later.compute(scheduler="threads")  # downloads the persisted values
        got = later.compute(scheduler=plain)
        np.testing.assert_allclose(got, expected)
        assert plain.last_report.bytes_through_client <= 0.01 * size
    del y, later
    gc.collect()
    assert plain.persisted_bytes == 0 and _objects(plain) == []


def test_dask_persist_and_unpersist(plain):
    bag = db.from_sequence(range(1000), npartitions=10).map(lambda v: v * 2)
    (kept,) = dask.persist(bag, scheduler=plain)
    assert plain.persisted_bytes > 0
    held = plain.persisted_bytes
    by_name = bag.map(abs).persist(scheduler="lambda")  # the most recent running cluster
    assert plain.persisted_bytes > held  # held in the cloud, not downloaded
    assert by_name.sum().compute(scheduler=plain) == 999_000
    del by_name
    assert kept.sum().compute(scheduler=plain) == 999_000
    plain.unpersist(kept)
    assert plain.persisted_bytes == 0 and _objects(plain) == []
    with pytest.raises((RuntimeError, TypeError), match="was released"):
        kept.sum().compute(scheduler=plain)


def test_persisted_delayed_and_close_deletes_everything(local, aws_env, bucket):
    name = unique("persist")
    cli("deploy", name, "--create-role", "--bucket", bucket, "--include", "numpy",
        "--compatible-versions")  # fmt: skip
    with LambdaCluster(function_name=name) as cluster:
        big = dask.delayed(np.arange)(2_000_000)  # 16 MB: stored in S3
        small = dask.delayed(sum)([1, 2, 3])  # inline: held as a few bytes
        big_p, small_p = cluster.persist([big, small])
        total = dask.delayed(np.sum)(big_p) + small_p
        assert total.compute(scheduler=cluster) == 2_000_000 * 1_999_999 // 2 + 6
        assert len(_objects(cluster)) == 1
        prefix = cluster.prefix
    listed = local.client("s3").list_objects_v2(Bucket=bucket, Prefix=prefix + "/")
    assert listed.get("KeyCount", 0) == 0  # closed: released, though big_p is still alive
    with pytest.raises((RuntimeError, TypeError), match="was released"):
        big_p.compute(scheduler="sync")


def test_uploads_are_counted_spilled_requests_too(plain):
    import os

    payload = os.urandom(7_000_000)  # closed over by the task: a request over Lambda's 6 MB

    def length():
        return len(payload)

    assert dask.delayed(length)().compute(scheduler=plain) == 7_000_000
    report = plain.last_report
    assert report.bytes_from_client >= 7_000_000 and report.bytes_spilled >= 7_000_000
