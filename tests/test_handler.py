"""The Lambda-side handler: what it imports, and how it answers events that are not ours."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from dask_lambda import protocol


def test_handler_imports_no_client_code():
    script = (
        "import sys, dask_lambda.handler\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('distributed', 'click',"
        " 'matplotlib', 'moto') or m.startswith(('dask_lambda.local', 'dask_lambda.cluster',"
        " 'dask_lambda.scheduler', 'dask_lambda.cli', 'dask_lambda.executor')))\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stderr


def _invoke_raw(cluster, event) -> tuple[dict, dict]:
    lam = cluster.invoker.client
    response = lam.invoke(FunctionName=cluster.function_name, Payload=json.dumps(event))
    return response, json.loads(response["Payload"].read())


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        ({"hello": "world"}, "expects an event with a 'dask_lambda' field"),
        ({"dask_lambda": 99, "payload": ""}, "protocol version 99"),
        ({"dask_lambda": 1, "payload": "***"}, "not valid base64"),
        ({"dask_lambda": 1, "payload": "AAAA"}, "msgpack"),
        ({"dask_lambda": 1}, "neither 'payload' nor 'payload_ref'"),
    ],
)
def test_foreign_and_malformed_events_get_clear_errors(cluster, event, expected):
    response, body = _invoke_raw(cluster, event)
    assert response["FunctionError"] == "Unhandled"
    assert body["errorType"] == "ProtocolError"
    assert expected in body["errorMessage"]


def test_ping_reports_versions_and_stats(cluster):
    response = cluster.ping()
    assert response["versions"] == protocol.versions()
    assert {"cold_start", "peak_memory_mb", "duration"} <= set(response["stats"])


def test_unknown_operation(cluster):
    event = protocol.envelope(protocol.encode_payload({"op": "format-disk"}))
    response, body = _invoke_raw(cluster, event)
    assert "Unknown dask-lambda operation" in body["errorMessage"]
