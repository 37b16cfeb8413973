"""Embedded local Lambda: start-up, cold and warm invoke round trips, invokes per second.

Run: ``.venv/bin/python benchmarks/bench_local_lambda.py``. Every figure is measured in this run;
the ratio column compares each one with the floor of a boto3 round trip to the same server
(``GetFunction``, answered by moto without running code), measured alongside.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import subprocess
import sys
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor

from botocore.config import Config

from dask_lambda.emulator import LocalLambda

HANDLER = "def handler(event, context):\n    return event\n"


def _zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("noop.py", HANDLER)
    return buffer.getvalue()


def _client(local: LocalLambda):
    config = Config(read_timeout=120, retries={"total_max_attempts": 1}, max_pool_connections=4)
    return local.client("lambda", config=config)


def _deploy(local: LocalLambda, role: str, name: str) -> None:
    _client(local).create_function(
        FunctionName=name,
        Runtime="python3.11",
        Role=role,
        Handler="noop.handler",
        Code={"ZipFile": _zip()},
        MemorySize=256,
        Timeout=30,
    )


def _median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def _throughput(local: LocalLambda, name: str, clients: int, seconds: float) -> float:
    counts = [0] * clients
    stop = time.monotonic() + seconds

    def loop(i: int) -> None:
        lam = _client(local)
        while time.monotonic() < stop:
            lam.invoke(FunctionName=name, Payload=b"{}")["Payload"].read()
            counts[i] += 1

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(clients)]
    start = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(counts) / (time.monotonic() - start)


def handler_import_ms(samples: int = 5) -> float:
    """Cold-start import cost of the Lambda-side handler, in a fresh interpreter each time."""
    code = (
        "import time; t = time.perf_counter(); import dask_lambda.function.handler;"
        " print(time.perf_counter() - t)"
    )
    times = [
        float(
            subprocess.run(
                [sys.executable, "-c", code], capture_output=True, text=True, check=True
            ).stdout
        )
        for _ in range(samples)
    ]
    return _median_ms(times)


def run(warm_samples: int = 300, seconds: float = 3.0) -> dict[str, float]:
    starts = []
    for _ in range(3):
        began = time.perf_counter()
        LocalLambda().start().close()
        starts.append(time.perf_counter() - began)

    results: dict[str, float] = {
        "startup_s": statistics.median(starts),
        "handler_import_ms": handler_import_ms(),
    }
    with LocalLambda() as local:
        role = local.client("iam").create_role(RoleName="bench", AssumeRolePolicyDocument="{}")
        role_arn = role["Role"]["Arn"]
        lam = _client(local)
        cold = []
        for i in range(5):
            _deploy(local, role_arn, f"cold-{i}")
            began = time.perf_counter()
            lam.invoke(FunctionName=f"cold-{i}", Payload=b"{}")["Payload"].read()
            cold.append(time.perf_counter() - began)
        _deploy(local, role_arn, "warm")
        lam.invoke(FunctionName="warm", Payload=b"{}")
        warm, floor = [], []
        for _ in range(warm_samples):
            began = time.perf_counter()
            lam.invoke(FunctionName="warm", Payload=b'{"x": 1}')["Payload"].read()
            warm.append(time.perf_counter() - began)
            began = time.perf_counter()
            lam.get_function_configuration(FunctionName="warm")
            floor.append(time.perf_counter() - began)
        results.update(
            cold_invoke_ms=_median_ms(cold),
            warm_invoke_ms=_median_ms(warm),
            boto3_floor_ms=_median_ms(floor),
        )
        _deploy(local, role_arn, "pair")
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda _: _client(local).invoke(FunctionName="pair"), range(2)))
        results["invokes_per_s_1_client"] = _throughput(local, "warm", 1, seconds)
        results["invokes_per_s_2_clients"] = _throughput(local, "pair", 2, seconds)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    results = run(args.samples, args.seconds)
    floor = results["boto3_floor_ms"]
    print(f"{'measure':<28}{'value':>12}  {'vs boto3 floor':>14}")
    for key, value in results.items():
        ratio = f"{value / floor:>13.1f}x" if key.endswith("invoke_ms") else ""
        print(f"{key:<28}{value:>12.2f}  {ratio:>14}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
