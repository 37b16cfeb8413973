"""Run Dask's own test suites twice, plain and routed through the lambda scheduler; print a table.

Usage: ``ci/conformance [--fast] [--suite NAME ...] [-- PYTEST ARGS]``. Each suite runs in its own
pytest process (``-p dask_lambda_conformance``, see the plugin's docstring). The run fails (exit
1) when a routed suite has a failure that ``known_failures.txt`` does not list, or made no Lambda
invocation at all (then nothing was really routed).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dask

HERE = Path(__file__).parent
DASK = Path(dask.__file__).parent
SUITES = {
    "bag": ["bag/tests/test_bag.py", "bag/tests/test_text.py", "bag/tests/test_random.py"],
    "delayed": ["tests/test_delayed.py"],
    "local": ["tests/test_local.py"],
    "array-reductions": ["array/tests/test_reductions.py"],
    "array-linalg": ["array/tests/test_linalg.py"],
    "array-core": ["array/tests/test_array_core.py"],
    "dataframe-groupby": ["dataframe/tests/test_groupby.py"],
    "dataframe-shuffle": ["dataframe/tests/test_shuffle.py"],
    "dataframe-merge": ["dataframe/tests/test_multi.py"],
}
FAST = {  # what ci/test runs on every change
    "bag": ["bag/tests/test_bag.py"],
    "delayed": ["tests/test_delayed.py"],
    "local": ["tests/test_local.py::TestGetAsync"],
}
COLUMNS = ("passed", "failed", "errors", "skipped", "xfailed", "xpassed")


def run_suite(paths: list[str], mode: str, extra: list[str]) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json") as report:
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
            "DASK_LAMBDA_CONFORMANCE": mode,
            "DASK_LAMBDA_CONFORMANCE_REPORT": report.name,
        }
        command = [
            sys.executable, "-m", "pytest", "-p", "dask_lambda_conformance", "-q",
            "-p", "no:cacheprovider", "--timeout=300", "-o", "addopts=", "--rootdir", str(DASK),
            *[str(DASK / p) for p in paths], *extra,
        ]  # fmt: skip
        started = time.monotonic()
        process = subprocess.run(command, env=env, cwd=DASK.parent, capture_output=True, text=True)
        elapsed = time.monotonic() - started
        try:
            result = json.loads(Path(report.name).read_text() or "{}")
        except ValueError:
            result = {}
    result["seconds"] = elapsed
    result["output"] = process.stdout[-6000:] + process.stderr[-3000:]
    result["exit"] = process.returncode
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="the slice ci/test runs")
    parser.add_argument("--suite", action="append", help="run only these suites")
    parser.add_argument("--routed-only", action="store_true", help="skip the baseline runs")
    parser.add_argument("pytest_args", nargs="*")
    args = parser.parse_args()
    suites = FAST if args.fast else SUITES
    if args.suite:
        suites = {name: paths for name, paths in suites.items() if name in args.suite}
    rows, problems = [], []
    for name, paths in suites.items():
        modes = ("routed",) if args.routed_only else ("baseline", "routed")
        results = {mode: run_suite(paths, mode, args.pytest_args) for mode in modes}
        routed = results["routed"]
        rows.append((name, results))
        if routed.get("failed") or routed.get("errors"):
            problems.append(f"{name}: routed failures not in known_failures.txt\n"
                            + routed["output"])  # fmt: skip
        if not routed.get("invocations"):
            problems.append(f"{name}: the routed run made no Lambda invocation\n"
                            + routed["output"])  # fmt: skip
        _print_row(name, results)
    for problem in problems:
        print("\n" + problem, file=sys.stderr)
    return 1 if problems else 0


def _print_row(name: str, results: dict) -> None:
    if not hasattr(_print_row, "header"):
        _print_row.header = True
        print(f"{'suite':<18} {'mode':<9} " + " ".join(f"{c:>8}" for c in COLUMNS)
              + f" {'computes':>9} {'invokes':>8} {'seconds':>8}")  # fmt: skip
    for mode, result in results.items():
        counts = " ".join(f"{result.get(c, 0):>8}" for c in COLUMNS)
        routed = f" {result.get('computes', '-'):>9} {result.get('invocations', '-'):>8}"
        print(f"{name:<18} {mode:<9} {counts}{routed} {result['seconds']:>8.1f}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
