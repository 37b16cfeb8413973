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
        ({"dask_lambda": protocol.PROTOCOL_VERSION, "payload": "***"}, "not valid base64"),
        ({"dask_lambda": protocol.PROTOCOL_VERSION}, "neither 'payload' nor 'payload_ref'"),
    ],
)
def test_foreign_and_malformed_events_get_clear_errors(cluster, event, expected):
    response, body = _invoke_raw(cluster, event)
    assert response["FunctionError"] == "Unhandled"
    assert body["errorType"] == "ProtocolError"
    assert expected in body["errorMessage"]


def test_signed_but_malformed_payload(cluster):
    event = protocol.envelope(b"\xc1 not msgpack", cluster.invoker.signing_key)
    response, body = _invoke_raw(cluster, event)
    assert body["errorType"] == "ProtocolError" and "msgpack" in body["errorMessage"]


def _ping_bytes() -> bytes:
    return protocol.encode_payload({"op": "ping"})


@pytest.mark.parametrize(
    ("make_event", "expected"),
    [
        (lambda key: protocol.envelope(_ping_bytes()), "unsigned"),
        (
            lambda key: {
                **protocol.envelope(_ping_bytes(), key),
                "payload": protocol.envelope(b"\x80")["payload"],
            },
            "does not match",
        ),
        (lambda key: protocol.envelope(_ping_bytes(), b"another key"), "does not match"),
        (lambda key: protocol.envelope(_ping_bytes(), key, ttl=-5), "expired"),
    ],
    ids=["unsigned", "tampered", "wrong-key", "expired"],
)
def test_only_signed_events_run(cluster, make_event, expected):
    response, body = _invoke_raw(cluster, make_event(cluster.invoker.signing_key))
    assert response["FunctionError"] == "Unhandled"
    assert body["errorType"] == "SignatureError" and expected in body["errorMessage"]
    logs = cluster.local.client("logs").filter_log_events(
        logGroupName=f"/aws/lambda/{cluster.function_name}", filterPattern="refused"
    )
    assert any(expected in e["message"] for e in logs["events"])


def test_no_credentials_in_payloads(cluster):
    """The bytes sent (seen through botocore's public before-send event) hold no secret."""
    import dask
    import tasks

    sent = []

    def record(request, **kwargs):
        sent.append(request.body)

    events = cluster.invoker.client.meta.events
    events.register("before-send.lambda.Invoke", record)
    try:
        assert dask.delayed(tasks.inc)(1).compute(scheduler=cluster) == 2
    finally:
        events.unregister("before-send.lambda.Invoke", record)
    credentials = cluster.aws.session.get_credentials()
    secrets = [credentials.secret_key, credentials.access_key, cluster.invoker.signing_key.hex()]
    assert sent and not any(s.encode() in bytes(body) for s in secrets for body in sent)


def test_ping_reports_versions_and_stats(cluster):
    response = cluster.ping()
    assert response["versions"] == protocol.versions()
    assert {"cold_start", "peak_memory_mb", "duration"} <= set(response["stats"])


def test_unknown_operation(cluster):
    event = protocol.envelope(
        protocol.encode_payload({"op": "format-disk"}), cluster.invoker.signing_key
    )
    response, body = _invoke_raw(cluster, event)
    assert "Unknown dask-lambda operation" in body["errorMessage"]
