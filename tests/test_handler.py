"""The Lambda-side handler: what it imports, and how it answers events that are not ours."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import dask_lambda.function
from dask_lambda.function import protocol

FUNCTION = Path(dask_lambda.function.__file__).parent


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

    boto3_path = _with_invoker(cluster, cluster.invoker.client, "boto3")
    events = cluster.invoker.client.meta.events
    events.register("before-send.lambda.Invoke", record)
    try:
        assert dask.delayed(tasks.inc)(1).compute(scheduler=boto3_path) == 2
    finally:
        events.unregister("before-send.lambda.Invoke", record)
    credentials = cluster.aws.session.get_credentials()
    secrets = [credentials.secret_key, credentials.access_key, cluster.invoker.signing_key.hex()]
    assert sent and not any(s.encode() in bytes(body) for s in secrets for body in sent)


def test_no_secret_on_the_wire_of_the_lean_invoker(cluster):
    """Everything the lean invoker writes to the socket, headers included (recorded by a TCP
    relay in front of the endpoint), holds neither the secret key nor the signing key."""
    import dask
    import tasks

    with _Relay(cluster.local.endpoint_url) as relay:
        client = cluster.aws.session.client("lambda", endpoint_url=relay.url)
        lean_path = _with_invoker(cluster, client, "lean")
        assert dask.delayed(tasks.inc)(1).compute(scheduler=lean_path) == 2
        wire = bytes(relay.sent)
    assert b"/invocations" in wire and b"AWS4-HMAC-SHA256" in wire
    credentials = cluster.aws.session.get_credentials()
    for secret in (credentials.secret_key, cluster.invoker.signing_key.hex()):
        assert secret.encode() not in wire


def _with_invoker(cluster, client, invoke_client: str):
    """A get function on the cluster's backend, invoking through ``client``."""
    import dataclasses

    from dask_lambda.remote.invoker import Invoker
    from dask_lambda.scheduling import compute as scheduler

    invoker = Invoker(
        cluster.function_name, lambda cfg: client, 2, cluster.backend.timeout,
        store=cluster.store, signing_key=cluster.invoker.signing_key,
        credentials=cluster.aws.session.get_credentials(), invoke_client=invoke_client,
    )  # fmt: skip
    backend = dataclasses.replace(cluster.backend, invoker=invoker)
    return lambda dsk, keys, **kwargs: scheduler.get(backend, dsk, keys, **kwargs)[0]


class _Relay:
    """A TCP relay to ``url`` that records what the client sends."""

    def __init__(self, url: str):
        import socket
        import urllib.parse

        target = urllib.parse.urlsplit(url)
        self.target = (target.hostname, target.port)
        self.sent = bytearray()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"

    def __enter__(self):
        import threading

        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.listener.close()

    def _accept(self):
        import socket
        import threading

        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, source, sink, record: bool):
        try:
            while data := source.recv(65536):
                if record:
                    self.sent += data
                sink.sendall(data)
        except OSError:
            pass
        finally:
            sink.close()


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
