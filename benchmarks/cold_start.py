"""W9: what a cold start costs (issue 27): time to the first task result on a fresh runtime.

For the default package (dask, numpy: the task imports dask.bag and dask.array) and for
``packages=["pandas", "pyarrow"]`` (dependencies in S3, mounted into ``/tmp``; the task imports
dask.dataframe), each shipped with its bytecode and with sources only (what the zip held before
issue 27; the S3 archive already had pip's bytecode where pip had written it). The local
Lambda runs a package as shipped (read-only, nothing compiled into it), so a package without
bytecode compiles what it imports on every cold start here as on AWS.

With SnapStart (Python 3.12+ only, as on AWS), the cluster publishes a version whose snapshot ran
the handler's imports and the dependency mount once; a cold start is then a restore from that
snapshot (forked here: see docs/local-lambda.rst for what that does not reproduce of AWS's
restore), and the task's own imports. Under an older Python these rows report why they did not
run: run ``.venv-py3.12/bin/python -m benchmarks.run --workloads W9`` for them.

Each sample stops the function's idle runtimes first (``LocalLambda.reap``), so the compute's
one invocation starts a new runtime: process, Python, the handler's imports, the dependency
mount, then the task's imports. The median of ``samples`` counts.
"""

from __future__ import annotations

import statistics
import time

import dask

from benchmarks.rows import timing

SAMPLES = 3

PACKAGES = {
    "default package": ([], ("dask.bag", "dask.array")),
    "pandas + pyarrow (dependencies in S3)": (["pandas", "pyarrow"], ("dask.dataframe",)),
}


def import_modules(names):
    """The task: import ``names`` (what a workload's first task would)."""
    import importlib

    for name in names:
        importlib.import_module(name)
    return len(names)


def sample_cold_starts(cluster, task, expected, samples: int, snapstart: bool = False):
    """``(seconds, dependency mounts)`` of ``samples`` computes of ``task``, each on a fresh
    runtime of the cluster's function (after the deploy's own first start)."""
    assert task.compute(scheduler=cluster) == expected
    times, mounts = [], []
    for _ in range(samples):
        cluster.local.reap(cluster.function_name)
        began = time.perf_counter()
        assert task.compute(scheduler=cluster) == expected
        times.append(time.perf_counter() - began)
        assert cluster.last_report.cold_starts == 1
        restored = [r for r in cluster.last_report.invocation_records if r.get("restored")]
        assert bool(restored) == snapstart, cluster.last_report.invocation_records
        mounts += cluster.last_report.dependency_mounts
    return times, mounts


def cold_start(package: str, bytecode: bool, snapstart: bool = False,
               samples: int = SAMPLES) -> dict:  # fmt: skip
    """Median seconds to a first result on a fresh runtime, with the mount's own steps."""
    import sys

    import cloudpickle

    if snapstart and sys.version_info < (3, 12):
        raise RuntimeError(
            "SnapStart needs Python 3.12+: run .venv-py3.12/bin/python -m benchmarks.run"
            " --workloads W9 (ci/test makes .venv-py3.12)"
        )

    from dask_lambda import LambdaCluster

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the task is defined here
    packages, modules = PACKAGES[package]
    task = dask.delayed(import_modules)(modules)
    with (
        dask.config.set({"lambda.bytecode": bytecode}),
        LambdaCluster(packages=packages, snapstart=snapstart) as cluster,
    ):
        times, mounts = sample_cold_starts(cluster, task, len(modules), samples, snapstart)
        build = cluster.build_report
    row = timing(times, zip_mb=build["zip_mb"], unpacked_mb=build["unpacked_mb"])
    if mounts:
        for step in ("seconds", "download_seconds", "extract_seconds"):
            row[f"mount_{step}"] = statistics.median(m.get(step, 0.0) for m in mounts)
    row["note"] = ("with bytecode" if bytecode else "sources only") + (
        ", SnapStart restore" if snapstart else ""
    ) + (
        f"; zip {build['zip_mb']} MB, {build['unpacked_mb']} MB unpacked"
    )
    return row


PEERS = {
    **{
        f"{package}, {'bytecode' if bytecode else 'sources only'}": (package, bytecode)
        for package in PACKAGES
        for bytecode in (False, True)
    },
    **{f"{package}, bytecode, SnapStart": (package, True, True) for package in PACKAGES},
}
