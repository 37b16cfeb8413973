"""The benchmark workloads, as Dask collections. Functions here are pickled by value for Lambda."""

from __future__ import annotations

import dask
import dask.bag as db


def inc(x):
    return x + 1


def add(x, y):
    return x + y


def w1_bag():
    """W1: db.from_sequence(range(10_000), npartitions=1000).map(inc).sum()."""
    return db.from_sequence(range(10_000), npartitions=1000).map(inc).sum(), sum(range(1, 10_001))


def w2_tree(leaves: int = 4096):
    """W2: a delayed tree reduction over ``leaves`` leaves."""
    level = [dask.delayed(inc)(i) for i in range(leaves)]
    while len(level) > 1:
        level = [dask.delayed(add)(a, b) for a, b in zip(level[::2], level[1::2], strict=True)]
    return level[0], sum(range(1, leaves + 1))


WORKLOADS = {"W1 bag map+sum (1000 partitions)": w1_bag, "W2 delayed tree (4096 leaves)": w2_tree}
