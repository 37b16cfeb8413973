"""dask.bag, dask.array and dask.dataframe on LambdaCluster, compared with the sync scheduler."""

from __future__ import annotations

import dask
import dask.array as da
import dask.bag as db
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest
import tasks
from conftest import spill_objects


def same(collection, cluster):
    """Compute on Lambda and with the sync scheduler; return both."""
    return collection.compute(scheduler=cluster), collection.compute(scheduler="sync")


def is_even(x):
    return x % 2 == 0


def modulo_7(x):
    return x % 7


@pytest.fixture(scope="module")
def words():
    return db.from_sequence(
        ["apple", "banana", "cherry", "apple", "date", "banana", "apple"] * 20, npartitions=7
    )


def test_bag_map_filter(cluster):
    bag = db.from_sequence(range(1000), npartitions=20).map(tasks.inc).filter(is_even)
    on_lambda, expected = same(bag, cluster)
    assert on_lambda == expected


def test_bag_foldby_groupby(cluster):
    bag = db.from_sequence(range(500), npartitions=10)
    folded = bag.foldby(modulo_7, tasks.add, 0, tasks.add, 0)
    on_lambda, expected = same(folded, cluster)
    assert sorted(on_lambda) == sorted(expected)
    grouped = bag.groupby(modulo_7, shuffle="tasks")
    on_lambda, expected = same(grouped, cluster)
    assert sorted((k, sorted(v)) for k, v in on_lambda) == sorted(
        (k, sorted(v)) for k, v in expected
    )


def test_bag_frequencies_distinct(cluster, words):
    on_lambda, expected = same(words.frequencies(), cluster)
    assert dict(on_lambda) == dict(expected)
    on_lambda, expected = same(words.distinct(), cluster)
    assert sorted(on_lambda) == sorted(expected)


def test_bag_text_files_in_and_out_with_shared_storage(cluster, tmp_path):
    """A function that mounts the client's storage at the same path (EFS; here, the local
    Lambda sharing this machine's disk) reads and writes it with lambda.allow-local-paths."""
    dask.config.set({"lambda.allow-local-paths": True})
    try:
        _text_files_in_and_out(cluster, tmp_path)
    finally:
        dask.config.set({"lambda.allow-local-paths": False})


def _text_files_in_and_out(cluster, tmp_path):
    source = tmp_path / "in"
    source.mkdir()
    for i in range(4):
        (source / f"part-{i}.txt").write_text("".join(f"line {i}-{j}\n" for j in range(50)))
    lines = db.read_text(str(source / "*.txt")).map(str.strip).map(str.upper)
    out = tmp_path / "out"
    lines.to_textfiles(str(out / "*.txt"), compute=True, scheduler=cluster)
    written = sorted(
        line for path in sorted(out.iterdir()) for line in path.read_text().splitlines()
    )
    assert written == sorted(f"LINE {i}-{j}" for i in range(4) for j in range(50))


def test_array_sum_and_matmul(cluster):
    x = da.random.default_rng(0).random((1200, 1200), chunks=300)
    on_lambda, expected = same(x.sum(), cluster)
    assert on_lambda == pytest.approx(expected)
    on_lambda, expected = same(x @ x.T, cluster)
    np.testing.assert_allclose(on_lambda, expected)
    assert spill_objects(cluster) == []


def test_array_tsqr_and_svd(cluster):
    x = da.random.default_rng(1).random((4000, 30), chunks=(500, 30))
    q, r = da.linalg.tsqr(x)
    q_l, r_l = dask.compute(q, r, scheduler=cluster)
    np.testing.assert_allclose(q_l @ r_l, x.compute(scheduler="sync"), atol=1e-8)
    u, s, v = da.linalg.svd(x)
    s_lambda = s.compute(scheduler=cluster)
    np.testing.assert_allclose(s_lambda, np.linalg.svd(x.compute(), compute_uv=False))


def test_dataframe_groupby_aggregate(cluster):
    rng = np.random.default_rng(2)
    pdf = pd.DataFrame(
        {"key": rng.integers(0, 20, 5000), "a": rng.random(5000), "b": rng.integers(0, 100, 5000)}
    )
    ddf = dd.from_pandas(pdf, npartitions=8)
    result = ddf.groupby("key").agg({"a": "mean", "b": ["sum", "max"]})
    on_lambda, expected = same(result, cluster)
    pd.testing.assert_frame_equal(on_lambda.sort_index(), expected.sort_index())
    assert (ddf.a + ddf.b).sum().compute(scheduler=cluster) == pytest.approx((pdf.a + pdf.b).sum())
