"""Known bugs of dask itself that users of dask-lambda meet, reproduced without Lambda: when one
of these tests fails, dask has fixed the bug, and the workaround in docs/user-guide.rst ("Known
issues in dask") can go."""

from __future__ import annotations

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest


def _named_aggregation_merged(split_out=None):
    pdf = pd.DataFrame({"cust": np.arange(240) % 50, "amount": np.ones(240)})
    right = pd.DataFrame({"cust": np.arange(50), "region": np.arange(50) % 7})
    options = {} if split_out is None else {"split_out": split_out}
    per = dd.from_pandas(pdf, npartitions=16).groupby("cust").agg(
        total=("amount", "sum"), **options
    )
    return per.reset_index().merge(right, on="cust")


def test_dask_expr_loses_the_key_of_a_named_aggregation_merged_after_reset_index():
    # dask 2026.8.0: 16 or more partitions make the groupby's split_out automatic; lowering the
    # merge then asks the aggregation for a column it no longer has.
    with pytest.raises(KeyError, match="cust"):
        _named_aggregation_merged().compute(scheduler="sync")


def test_split_out_one_is_the_workaround():
    result = _named_aggregation_merged(split_out=1).compute(scheduler="sync")
    assert len(result) == 50 and result.total.sum() == 240
