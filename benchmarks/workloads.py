"""The benchmark workloads. Functions here are pickled by value for Lambda and Lithops."""

from __future__ import annotations

import time

import dask
import dask.array as da
import dask.bag as db


def inc(x):
    return x + 1


def add(x, y):
    return x + y


def noop(x):
    return x


def nap(x, seconds):
    time.sleep(seconds)
    return x


def total(*values):
    return sum(values)


def w1_bag():
    """W1: db.from_sequence(range(10_000), npartitions=1000).map(inc).sum()."""
    return db.from_sequence(range(10_000), npartitions=1000).map(inc).sum(), sum(range(1, 10_001))


def w2_tree(leaves: int = 4096):
    """W2: a delayed tree reduction over ``leaves`` leaves."""
    level = [dask.delayed(inc)(i) for i in range(leaves)]
    while len(level) > 1:
        level = [dask.delayed(add)(a, b) for a, b in zip(level[::2], level[1::2], strict=True)]
    return level[0], sum(range(1, leaves + 1))


def w4_large_arrays(chunks: int = 16, chunk_mb: int = 64):
    """W4: ~1 GB of intermediate arrays in ``chunk_mb`` MB chunks: x - x.mean(axis=0), summed.

    The column means need every chunk, and every chunk is needed again after them, so each
    chunk and each partial sum is an intermediate of ``chunk_mb`` MB that must travel between
    invocations (or workers) rather than stay inside one.
    """
    columns = chunk_mb * 1024 * 1024 // 8
    x = da.random.default_rng(0).random((chunks, columns), chunks=(1, columns))
    centred = x - x.mean(axis=0)
    return abs(centred).sum(), None, chunks * chunk_mb * 1024 * 1024


def w8_array(size: int = 10_000, chunk: int = 1_000):
    """W8: dask-examples' array notebook at ``size``²: ``y = x + x.T``, then
    ``y[::2, size // 2:].mean(axis=1)``, on a random array in ``chunk``² chunks (8 MB each)."""
    x = da.random.random((size, size), chunks=(chunk, chunk))
    y = x + x.T
    return y[::2, size // 2 :].mean(axis=1), None


def w5_sleepers(tasks: int, seconds: float) -> tuple[dict, str, int]:
    """W5: a raw graph of ``tasks`` independent tasks of ``seconds`` each, then one small sum.

    A plain task graph for the scheduler's get function: building the same thing with
    ``dask.delayed(total)(*10_000 delayed)`` costs dask ~3.5 s of expression optimisation on the
    client before any scheduler starts, which would hide what W5 measures.
    """
    graph = {("nap", i): (nap, 1, seconds) for i in range(tasks)}
    graph["total"] = (total, *graph)
    return graph, "total", tasks
