"""The fixed cost of a compute (issue 26, item 1): a compute that stored nothing makes no S3
call to clean up, and one that stored something still leaves nothing behind."""

from __future__ import annotations

import dask
import numpy as np
import pytest
import tasks
from conftest import spill_objects


def _inc(x):
    return x + 1


class S3Calls:
    """Counts the S3 operations the cluster's own client makes (botocore's event hooks)."""

    def __init__(self, cluster):
        self.events = cluster.backend.store.client.meta.events
        self.names: list[str] = []

    def __enter__(self):
        self.events.register("before-call.s3", self._seen)
        return self

    def __exit__(self, *exc_info):
        self.events.unregister("before-call.s3", self._seen)

    def _seen(self, model, **_):
        self.names.append(model.name)


def test_a_compute_that_stored_nothing_makes_no_s3_call(cluster):
    dask.delayed(_inc)(0).compute(scheduler=cluster)  # warm
    with S3Calls(cluster) as calls:
        assert dask.delayed(_inc)(1).compute(scheduler=cluster) == 2
    assert calls.names == []
    assert cluster.last_report.s3_objects_left == 0


def test_a_compute_that_spilled_still_cleans_up(cluster):
    with S3Calls(cluster) as calls:  # 800 kB, above the inline limit: the function stores it
        assert dask.delayed(np.ones)(100_000).compute(scheduler=cluster).sum() == 100_000
    assert "ListObjectsV2" in calls.names
    assert cluster.last_report.bytes_spilled > 0 and spill_objects(cluster) == []


def test_a_failed_compute_deletes_what_its_failing_batch_stored(cluster):
    big = dask.delayed(np.ones)(100_000)  # a target: stored by the batch that also fails
    failing = dask.delayed(tasks.fail)(dask.delayed(len)(big))
    with pytest.raises(ValueError):
        dask.compute(big, failing, scheduler=cluster)
    assert cluster.last_report.failed and spill_objects(cluster) == []
