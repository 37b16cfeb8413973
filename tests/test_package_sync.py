"""packages="auto": a cluster with nothing configured runs dask.dataframe, dask.array and
dask.bag as they are, and a public notebook's cells need no hand-added packages (issue 25,
item 1). The function gets what the batches' pickles reference, once, at the client's versions."""

from __future__ import annotations

import json

import dask
import dask.array as da
import dask.bag as db
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest
from conftest import unique

from dask_lambda import LambdaCluster
from dask_lambda.packages import MissingPackagesWarning

pytestmark = pytest.mark.slow


def test_nothing_configured_runs_dataframe_array_and_bag(capsys):
    pdf = pd.DataFrame({"k": np.arange(200) % 7, "v": np.arange(200.0)})
    with LambdaCluster() as cluster:
        assert cluster.sync_packages and cluster.packages == []
        got = dd.from_pandas(pdf, npartitions=4).groupby("k").v.mean().compute(scheduler=cluster)
        pd.testing.assert_series_equal(got.sort_index(), pdf.groupby("k").v.mean())
        said = capsys.readouterr().err
        assert "adding" in said and "pandas" in said and "pyarrow" in said, said
        assert {"pandas", "pyarrow"} <= set(cluster.packages)
        assert any(pin.startswith("pandas==") for pin in cluster.build_report["packages"])

        assert da.ones((100, 100), chunks=25).sum().compute(scheduler=cluster) == 10_000
        bag = db.from_sequence(range(100), npartitions=5).map(lambda x: x * 2).sum()
        assert bag.compute(scheduler=cluster) == 9900
        again = dd.from_pandas(pdf, npartitions=4).v.sum().compute(scheduler=cluster)
        assert again == pdf.v.sum()
        assert "adding" not in capsys.readouterr().err  # added once


def _flatten(record):
    return {
        "age": record["age"],
        "occupation": record["occupation"],
        "name": " ".join(record["name"]),
        "city": record["address"]["city"],
    }


def test_the_bag_notebook_runs_with_packages_auto(capsys, monkeypatch):
    """dask-examples' bag.ipynb, cell by cell, with its Client line replaced and its data in
    S3 rather than on a local disk a Lambda function does not have."""
    pytest.importorskip("mimesis")
    data = unique("notebook")
    with LambdaCluster(s3_write=[f"s3://{data}"]) as cluster, dask.config.set(scheduler=cluster):
        cluster.s3.create_bucket(Bucket=data)
        for name, value in cluster.local.env().items():  # s3fs here reaches the local S3
            monkeypatch.setenv(name, value)

        b = dask.datasets.make_people()  # Make records of people
        b.map(json.dumps).to_textfiles(f"s3://{data}/data/*.json")
        b = db.read_text(f"s3://{data}/data/*.json").map(json.loads)
        assert len(b.take(2)) == 2
        assert all(r["age"] > 30 for r in b.filter(lambda record: record["age"] > 30).take(2))
        assert len(b.map(lambda record: record["occupation"]).take(2)) == 2
        assert b.count().compute() == 10_000
        result = (
            b.filter(lambda record: record["age"] > 30)
            .map(lambda record: record["occupation"])
            .frequencies(sort=True)
            .topk(10, key=1)
        )
        expected = result.compute(scheduler="sync")
        assert [n for _, n in result.compute()] == [n for _, n in expected]
        written = (
            b.filter(lambda record: record["age"] > 30)
            .map(json.dumps)
            .to_textfiles(f"s3://{data}/data/processed.*.json")
        )
        assert len(written) == 10
        df = b.map(_flatten).to_dataframe()
        top = df[df.age > 30].occupation.value_counts().nlargest(10).compute()
        assert list(top.values) == list(
            df[df.age > 30].occupation.value_counts().nlargest(10).compute(scheduler="sync").values
        )
        said = capsys.readouterr().err
        for package in ("mimesis", "s3fs", "pandas"):
            assert package in said, said
        assert said.count("dask-lambda: adding") <= 3  # once per new need, not per cell


def test_a_list_of_packages_warns_and_add_packages_adds_without_a_new_cluster():
    pdf = pd.DataFrame({"v": np.arange(10.0)})
    with LambdaCluster(packages=["tblib"]) as cluster:
        frame = dd.from_pandas(pdf, npartitions=2)
        fix = r"add_packages\(\['pandas', 'pyarrow'\]\)"
        with pytest.warns(MissingPackagesWarning, match=fix), pytest.raises(ModuleNotFoundError):
            frame.v.sum().compute(scheduler=cluster)
        libraries = cluster.add_packages(["pandas", "pyarrow"])
        assert libraries["pandas"] == pd.__version__
        assert frame.v.sum().compute(scheduler=cluster) == 45.0
        assert cluster.packages == ["tblib", "pandas", "pyarrow"]
