"""W0: the fixed cost of a cluster and of a compute (issue 26, items 1 and 2).

*Start-up* runs each peer in fresh Python processes, one per sample, so imports count as a user
pays them: import the peer's package, create its cluster (dask-lambda: ``LambdaCluster()``, the
embedded local Lambda included; distributed: ``LocalCluster()`` + ``Client``), then one trivial
compute, the first result. The process's peak memory is reported beside it.

*Trivial compute* is ``delayed(inc)(1)`` computed again and again on a started peer: what a
small compute costs beyond its work (distributed's ``client.compute`` on
``LocalCluster(processes=False)``, the in-process cluster, as the issue names it).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time

import dask

from benchmarks.rows import timing
from benchmarks.workloads import inc

SAMPLES = 3
TRIVIAL_COMPUTES = 50

# Each script prints one JSON line: seconds to import, to a started cluster, to a first result.
_STARTUP = """
import json, resource, time, warnings
began = time.perf_counter()
import dask
{imports}
imported = time.perf_counter()
{start}
started = time.perf_counter()
assert {first} == 2
first = time.perf_counter()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print("STARTUP " + json.dumps({{"import": imported - began, "start": started - began,
                                "first": first - began, "peak_mib": peak}}), flush=True)
{close}
"""

STARTUP_PEERS = {
    "distributed LocalCluster() + Client": {
        "imports": "from distributed import Client, LocalCluster",
        "start": "warnings.simplefilter('ignore')\n"
        "cluster = LocalCluster(dashboard_address=None)\nclient = Client(cluster)",
        "first": "client.compute(dask.delayed(lambda x: x + 1)(1)).result()",
        "close": "client.close(); cluster.close()",
    },
    "dask-lambda LambdaCluster()": {
        "imports": "from dask_lambda import LambdaCluster",
        "start": "cluster = LambdaCluster()",
        "first": "dask.delayed(lambda x: x + 1)(1).compute(scheduler=cluster)",
        "close": "cluster.close()",
    },
}


def startup(peer: str, samples: int = SAMPLES) -> dict:
    """Median over ``samples`` fresh processes of import + start (the ratio's figure)."""
    script = _STARTUP.format(**STARTUP_PEERS[peer])
    runs = []
    for _ in range(samples):
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                             timeout=300, check=True).stdout  # fmt: skip
        [line] = [line for line in out.splitlines() if line.startswith("STARTUP ")]
        runs.append(json.loads(line.removeprefix("STARTUP ")))
    def median(key: str) -> float:
        return statistics.median(run[key] for run in runs)

    return timing([run["start"] for run in runs], import_seconds=median("import"),
                  first_result_seconds=median("first"), peak_mib=median("peak_mib"),
                  note=f"fresh processes, median of {samples}; import included")  # fmt: skip


def trivial_compute(peer_factory, computes: int = TRIVIAL_COMPUTES, client_compute=False) -> dict:
    """``delayed(inc)(1)`` on a started peer: ``computes`` times after one warm-up."""
    task = dask.delayed(inc)(1)
    began = time.perf_counter()
    with peer_factory() as scheduler:
        startup_seconds = time.perf_counter() - began
        if client_compute:  # distributed's own way: the scheduler is its Client's get
            client = scheduler.__self__

            def compute():
                return client.compute(task).result()
        else:

            def compute():
                return task.compute(scheduler=scheduler)

        assert compute() == 2
        times = []
        for _ in range(computes):
            began = time.perf_counter()
            assert compute() == 2
            times.append(time.perf_counter() - began)
    return timing(times, startup_seconds=startup_seconds, note=f"median of {computes}")
