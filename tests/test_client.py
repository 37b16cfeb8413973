"""distributed's everyday calls, through dask_lambda.Client (issue 25, item 5): dask-examples'
embarrassingly-parallel notebook with only its Client line changed, and each call as
distributed's behaves."""

from __future__ import annotations

import random
import threading
import time

import dask
import numpy as np
import pandas as pd
import pytest

from dask_lambda import Client, as_completed, wait


def costly_simulation(list_param):
    time.sleep(random.random() / 100)
    return sum(list_param)


def test_the_embarrassingly_parallel_notebook(cluster):
    with Client(cluster=cluster) as client:  # was: Client(threads_per_worker=4, n_workers=1)
        columns = ["param_a", "param_b", "param_c", "param_d"]
        input_params = pd.DataFrame(np.random.random(size=(50, 4)), columns=columns)
        expected = [sum(p) for p in input_params.values]

        lazy_results = [dask.delayed(costly_simulation)(p) for p in input_params.values[:10]]
        assert list(dask.compute(*lazy_results)) == pytest.approx(expected[:10])
        lazy_results = [dask.delayed(costly_simulation)(p) for p in input_params.values]
        futures = dask.persist(*lazy_results)  # the client is dask's default scheduler
        client.cluster.scale(10)
        results = dask.compute(*futures)
        assert list(results[:5]) == pytest.approx(expected[:5])

        futures = []
        for parameters in input_params.values:
            future = client.submit(costly_simulation, parameters)
            futures.append(future)
        results = client.gather(futures)
        assert results[:5] == pytest.approx(expected[:5])

        futures = client.map(costly_simulation, input_params.values)
        results = client.gather(futures)
        assert len(results) == 50 and results[0] == pytest.approx(expected[0])
        output = input_params.copy()
        output["result"] = pd.Series(results, index=output.index)
        assert output.result.tolist() == pytest.approx(expected)
    assert dask.config.get("scheduler", None) is not cluster  # given back on close


def _fail(x):
    raise ValueError(f"bad {x}")


def _slow(x, event_seconds=0.0):
    time.sleep(event_seconds)
    return x


def test_submit_map_gather_keys_and_purity(cluster):
    with Client(cluster=cluster, set_as_default=False) as client:
        assert client.gather(client.map(pow, [2, 3], [5, 2])) == [32, 9]  # several iterables
        same = client.submit(pow, 2, 10)
        assert client.submit(pow, 2, 10) is same  # pure: one future for the same call
        assert client.submit(pow, 2, 10, pure=False) is not same
        named = client.submit(pow, 3, 3, key="cube")
        assert named.key == "cube" and client.submit(pow, 3, 3, key="cube") is named
        keyed = client.map(abs, [-1, -2], key=["one", "two"])
        assert [f.key for f in keyed] == ["one", "two"]
        nested = {"a": [same, named], "b": (keyed[0], 7)}
        assert client.gather(nested) == {"a": [1024, 27], "b": (1, 7)}
        assert list(client.gather(iter([same, named]))) == [1024, 27]
        failed = client.submit(_fail, 1)
        assert client.gather([same, failed, named], errors="skip") == [1024, 27]
        with pytest.raises(ValueError, match="bad 1"):
            client.gather([same, failed])
        assert isinstance(failed.exception(), ValueError) and failed.done()
        with pytest.raises(TypeError, match="workers"):
            client.submit(abs, 1, workers=["w1"])


def test_as_completed_wait_cancel_and_callbacks(cluster):
    with Client(cluster=cluster, set_as_default=False) as client:
        futures = client.map(_slow, range(6))
        assert sorted(f.result() for f in as_completed(futures)) == list(range(6))
        pairs = list(as_completed(client.map(_slow, range(3), pure=False), with_results=True))
        assert sorted(result for _, result in pairs) == [0, 1, 2]
        failed = client.submit(_fail, 2)
        (pair,) = as_completed([failed], with_results=True, raise_errors=False)
        assert isinstance(pair[1], ValueError)

        seen, called = [], threading.Event()
        future = client.submit(_slow, 5, pure=False)
        future.add_done_callback(lambda f: (seen.append(f.result()), called.set()))
        done, not_done = wait([future, failed])
        assert not not_done and future in done
        assert called.wait(60) and seen == [5]
        slow = client.submit(_slow, 1, event_seconds=5, pure=False)
        with pytest.raises(TimeoutError):
            wait(slow, timeout=0.5)
        waiting = client.submit(_slow, slow, pure=False)  # runs once slow has finished
        client.cancel([waiting])
        assert waiting.cancelled()
        slow.result(timeout=120)
        assert waiting.cancelled()  # never ran
        first = wait(client.map(_slow, [0.0, 0.0], pure=False), return_when="FIRST_COMPLETED")
        assert first.done


def test_compute_and_persist_give_futures_and_collections(cluster):
    import dask.array as da

    with Client(cluster=cluster, set_as_default=False) as client:
        x = da.ones((100, 100), chunks=50)
        future = client.compute(x.sum())
        assert future.result(timeout=120) == 10_000
        assert client.compute([x.sum(), x.mean()], sync=True) == [10_000, 1.0]
        kept = client.persist(x * 2)
        assert kept.sum().compute(scheduler=cluster) == 20_000
