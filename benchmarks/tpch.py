"""W7: a TPC-H-like join and groupby over ~200 MB of parquet (issue 26, item 6).

Two tables in the shape of TPC-H's ``lineitem`` and ``orders`` (generated here with numpy, once,
into ``benchmarks/.data``), and a query in the shape of TPC-H's Q3: the line items shipped after
a date joined with the orders placed before it, revenue summed per order priority and ship mode.
The join is on a column, not the index, so every scheduler shuffles both tables.

dask's own schedulers and distributed read the files from local disk; dask-lambda reads the same
files from a bucket of the embedded local Lambda's S3 (uploaded after its start, not timed),
through pyarrow inside its functions, as it would read a data lake on AWS.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parent / ".data"
BUCKET = "tpch-data"
LINEITEM_ROWS = 8_000_000
ORDERS_ROWS = 2_000_000
LINEITEM_FILES, ORDERS_FILES = 16, 4
DAYS = 2_400  # order and ship dates: days from 1992-01-01
CUTOFF = "1995-03-15"  # as a string: pyarrow turns a date scalar in a pushed-down filter into int
PRIORITIES = np.array(["1-URGENT", "2-HIGH", "3-MEDIUM", "4-NOT SPECIFIED", "5-LOW"])
SHIP_MODES = np.array(["AIR", "FOB", "MAIL", "RAIL", "REG AIR", "SHIP", "TRUCK"])


def generate(folder: Path = DATA) -> Path:
    """Write the two tables as parquet under ``folder/tpch`` once; later calls reuse them."""
    import pandas as pd

    root = folder / f"tpch-{LINEITEM_ROWS}"
    if (root / "done").exists():
        return root
    rng = np.random.default_rng(26)
    start = np.datetime64("1992-01-01")
    order_dates = start + rng.integers(0, DAYS, ORDERS_ROWS).astype("timedelta64[D]")
    orders = pd.DataFrame({
        "o_orderkey": np.arange(ORDERS_ROWS, dtype="int64"),
        "o_custkey": rng.integers(0, ORDERS_ROWS // 10, ORDERS_ROWS),
        "o_orderdate": order_dates,
        "o_orderpriority": pd.Categorical.from_codes(rng.integers(0, 5, ORDERS_ROWS), PRIORITIES),
        "o_totalprice": rng.uniform(900, 500_000, ORDERS_ROWS).round(2),
    })  # fmt: skip
    orderkeys = rng.integers(0, ORDERS_ROWS, LINEITEM_ROWS)
    lineitem = pd.DataFrame({
        "l_orderkey": orderkeys,
        "l_partkey": rng.integers(0, 200_000, LINEITEM_ROWS),
        "l_quantity": rng.integers(1, 51, LINEITEM_ROWS).astype("float64"),
        "l_extendedprice": rng.uniform(900, 105_000, LINEITEM_ROWS).round(2),
        "l_discount": rng.integers(0, 11, LINEITEM_ROWS) / 100,
        "l_tax": rng.integers(0, 9, LINEITEM_ROWS) / 100,
        "l_shipdate": order_dates[orderkeys] + rng.integers(1, 122, LINEITEM_ROWS).astype(
            "timedelta64[D]"
        ),
        "l_shipmode": pd.Categorical.from_codes(rng.integers(0, 7, LINEITEM_ROWS), SHIP_MODES),
    })  # fmt: skip
    for name, frame, files in (("orders", orders, ORDERS_FILES),
                               ("lineitem", lineitem, LINEITEM_FILES)):  # fmt: skip
        (root / name).mkdir(parents=True, exist_ok=True)
        for part, rows in enumerate(np.array_split(np.arange(len(frame)), files)):
            frame.iloc[rows].to_parquet(root / name / f"part.{part}.parquet", index=False)
    (root / "done").write_text("")
    return root


def query(root: str, **read_kwargs):
    """TPC-H Q3's shape: revenue of late-shipped line items of early orders, per priority and
    ship mode, largest first."""
    import dask.dataframe as dd
    import pandas as pd

    orders = dd.read_parquet(f"{root}/orders", **read_kwargs)
    lineitem = dd.read_parquet(f"{root}/lineitem", **read_kwargs)
    cutoff = pd.Timestamp(CUTOFF)
    orders = orders[orders.o_orderdate < cutoff]
    lineitem = lineitem[lineitem.l_shipdate > cutoff]
    joined = lineitem.merge(orders, left_on="l_orderkey", right_on="o_orderkey")
    joined = joined.assign(revenue=joined.l_extendedprice * (1 - joined.l_discount))
    grouped = joined.groupby(["o_orderpriority", "l_shipmode"], observed=True).revenue.sum()
    return grouped.round(2)


def local_prepare(scheduler) -> tuple:
    """The query over the files on local disk (dask's schedulers, distributed)."""
    return query(str(generate())), None


def lambda_factory():
    """A ``LambdaCluster`` that may read the data bucket, with pandas and pyarrow deployed."""
    from benchmarks.peers import dask_lambda_local

    return dask_lambda_local(packages=["pandas", "pyarrow"], s3_read=[f"s3://{BUCKET}/"],
                             memory=2048)  # fmt: skip


def lambda_prepare(cluster) -> tuple:
    """Upload the files to the local Lambda's S3 and point pyarrow on the client at it (the
    client reads the parquet footers; the functions read the rest)."""
    root = generate()
    os.environ.update(cluster.local.env())
    s3 = cluster.local.client("s3")
    with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
        s3.create_bucket(Bucket=BUCKET)
    for path in sorted(root.rglob("*.parquet")):
        s3.upload_file(str(path), BUCKET, str(path.relative_to(root)))
    return query(f"s3://{BUCKET}", filesystem="arrow"), None


def data_megabytes() -> float:
    root = generate()
    return sum(path.stat().st_size for path in root.rglob("*.parquet")) / 1e6
