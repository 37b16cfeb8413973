"""pytest plugin: run Dask's own test suites with every compute routed through one LambdaCluster.

Enabled with ``-p dask_lambda_conformance`` (``ci/conformance`` does it). With
``DASK_LAMBDA_CONFORMANCE=routed`` it starts one :class:`~dask_lambda.LambdaCluster` on the
embedded local Lambda for the session and routes every way Dask picks a scheduler to it:
``dask.config`` ``scheduler=``, the entries of ``dask.base.named_schedulers`` (so
``scheduler="sync"`` in ``assert_eq`` goes through Lambda too), ``dask.get``,
``dask.local.get_sync`` and ``dask.threaded.get``. Tests listed in ``known_failures.txt``
(beside this file: one pattern and a reason per line, ``*`` the only wildcard) are marked as
expected failures. In either mode it writes the outcome counts, and in routed mode the computes
and invocations it made, as JSON to ``DASK_LAMBDA_CONFORMANCE_REPORT``.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from pathlib import Path

import pytest

KNOWN_FAILURES = Path(__file__).with_name("known_failures.txt")
# What Dask's test modules import besides dask itself: their functions are pickled by reference,
# so the function imports the test module, and with it these (deployed like any user's packages).
TEST_PACKAGES = ("pytest", "pandas", "pyarrow", "scipy", "pytest-mock")
_outcomes: Counter = Counter()
_routed: dict = {}


def known_failures() -> list[tuple[str, str]]:
    """``(node id pattern, reason)`` pairs from ``known_failures.txt``."""
    entries = []
    for line in KNOWN_FAILURES.read_text().splitlines():
        pattern, _, reason = line.partition("  # ")
        if pattern.strip() and not line.lstrip().startswith("#"):
            entries.append((pattern.strip(), reason.strip() or "no reason given"))
    return entries


def _compile(pattern: str) -> re.Pattern:
    """A node-id pattern: ``*`` matches anything, every other character only itself."""
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")))


def _route(cluster) -> None:
    import dask
    import dask.base
    import dask.local
    import dask.threaded

    calls = _routed.setdefault("computes", [0])

    def get(dsk, keys, **kwargs):
        calls[0] += 1
        return cluster.get(dsk, keys, **kwargs)

    for name in list(dask.base.named_schedulers):
        if name != "lambda":
            dask.base.named_schedulers[name] = get
    dask.get = dask.local.get_sync = dask.threaded.get = get
    # Dask's tests write and read their own tmpdir; the local Lambda that runs them shares this
    # machine's filesystem, as a function mounting shared storage would (lambda.allow-local-paths).
    dask.config.set({"scheduler": get, "lambda.allow-local-paths": True})


def pytest_configure(config):
    if os.environ.get("DASK_LAMBDA_CONFORMANCE") == "routed":
        import json
        import tempfile

        from dask_lambda import LambdaCluster

        # Dask's tests write and read temporary files and their working directory: shared with
        # the runtimes (lambda.local.mounts, the local Lambda's EFS stand-in), as a function
        # that mounts shared storage at the same path would see them.
        os.environ["DASK_LAMBDA__LOCAL__MOUNTS"] = json.dumps([tempfile.gettempdir(), os.getcwd()])
        cluster = LambdaCluster(packages=_installed(TEST_PACKAGES))
        _routed["cluster"] = cluster
        _route(cluster)


def _installed(names) -> list[str]:
    from importlib.metadata import PackageNotFoundError, distribution

    found = []
    for name in names:
        try:
            distribution(name)
        except PackageNotFoundError:
            continue
        found.append(name)
    return found


def pytest_collection_modifyitems(config, items):
    if "cluster" not in _routed:
        return
    patterns = [(_compile(pattern), reason) for pattern, reason in known_failures()]
    for item in items:
        for pattern, reason in patterns:
            if pattern.fullmatch(item.nodeid.split("dask/", 1)[-1]):
                item.add_marker(pytest.mark.xfail(reason=f"dask-lambda: {reason}", strict=False))
                break


def pytest_runtest_logreport(report):
    if hasattr(report, "wasxfail"):
        outcome = "xpassed" if report.passed else "xfailed"
    elif report.failed:
        outcome = "failed" if report.when == "call" else "errors"
    elif report.skipped:
        outcome = "skipped"
    elif report.when == "call":
        outcome = "passed"
    else:
        return
    _outcomes[outcome] += 1


def pytest_sessionfinish(session, exitstatus):
    result = dict(_outcomes)
    cluster = _routed.get("cluster")
    if cluster is not None:
        result["computes"] = _routed["computes"][0]
        result["invocations"] = cluster.invoker.stats.invocations
        cluster.close()
    path = os.environ.get("DASK_LAMBDA_CONFORMANCE_REPORT")
    if path:
        Path(path).write_text(json.dumps(result))
