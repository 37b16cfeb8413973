"""The lean invoke path answers exactly as boto3's ``invoke`` does, against the local Lambda.

Every test sends the same request through both transports (or the invoker with each) and
compares what came back: payloads, function errors, service errors, connection failures,
retries. Plus what the lean path resolves as boto3 does: endpoint, region, credentials (and
their refresh), and that it keeps connections alive.
"""

from __future__ import annotations

import datetime
import json
import re
import socket
import threading

import boto3
import pytest
from botocore.config import Config
from botocore.credentials import RefreshableCredentials

from dask_lambda.aws import Aws
from dask_lambda.exceptions import LambdaFunctionError
from dask_lambda.remote.invoker import Invoker
from dask_lambda.remote.transport import (
    Boto3Transport,
    ConnectionFailure,
    LeanTransport,
    ServiceError,
)

CLIENT_CONFIG = Config(retries={"total_max_attempts": 1}, read_timeout=30, connect_timeout=5)


def transports(local, session=None, read_timeout: float = 30.0, endpoint_url=None):
    session = session or boto3.session.Session(**_session_kwargs(local))
    client = session.client(
        "lambda", endpoint_url=endpoint_url or local.endpoint_url, config=CLIENT_CONFIG
    )
    lean = LeanTransport(client, session.get_credentials(), 4, 5, read_timeout)
    return {"boto3": Boto3Transport(client), "lean": lean}


def _session_kwargs(local) -> dict:
    return {
        "aws_access_key_id": local.credentials["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": local.credentials["AWS_SECRET_ACCESS_KEY"],
        "region_name": local.region,
    }


def outcome(transport, name: str, body: bytes):
    try:
        answer = transport.invoke(name, body)
    except ServiceError as e:
        return ("service error", e.code, e.message, e.status)
    except ConnectionFailure as e:
        return ("no answer", e.kind)
    payload = json.loads(answer.payload)
    if isinstance(payload, dict):  # what differs per call: the runtime, its clock, the id
        payload.pop("remaining_ms", None)
        payload.pop("pid", None)
        if "errorMessage" in payload:
            payload["errorMessage"] = re.sub(r"RequestId: \S+", "", payload["errorMessage"])
    return ("answer", payload, answer.function_error, bool(answer.request_id))


def test_same_answers_and_errors_as_boto3(local, deploy):
    echo, crash = deploy("behaviours.echo"), deploy("behaviours.crash")
    arn = local.client("lambda").get_function(FunctionName=echo)["Configuration"]["FunctionArn"]
    both = transports(local)
    cases = [
        (echo, b'{"x": 1}'),
        (arn, b'{"by": "arn"}'),  # an ARN in the path is encoded as botocore encodes it
        (crash, b"{}"),  # the function failed: a 200 with X-Amz-Function-Error
        ("no-such-function", b"{}"),  # 404 ResourceNotFoundException
        (echo, b"not json"),  # 400 InvalidRequestContentException
    ]
    for name, body in cases:
        seen = {kind: outcome(transport, name, body) for kind, transport in both.items()}
        assert seen["lean"] == seen["boto3"], (name, body)
    kinds = [outcome(both["lean"], n, b)[0] for n, b in cases]
    assert kinds == ["answer", "answer", "answer", "service error", "service error"]


def test_throttling_is_retried_and_counted_the_same(local, deploy):
    name = deploy("behaviours.echo")
    local.set_faults(name, throttle_rate=1.0)
    try:
        failures = {}
        for kind in ("boto3", "lean"):
            invoker = _invoker(local, name, kind, infra_retries=0, throttle_retries=2)
            with pytest.raises(LambdaFunctionError) as info:
                invoker.call({"op": "ping"}, task_keys=["k"])
            assert "Lower max_concurrency (now 2" in str(info.value)
            assert "put-function-concurrency" in str(info.value)
            failures[kind] = (info.value.error_type, info.value.attempts, invoker.stats.throttles,
                              invoker.stats.infra_retries)  # fmt: skip
    finally:
        local.set_faults(name)
    assert failures["lean"] == failures["boto3"] == ("TooManyRequestsException", 3, 3, 2)


def test_unreachable_endpoint_is_retried_then_named(local):
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there now
    errors = {}
    for kind in ("boto3", "lean"):
        invoker = _invoker(
            local, "f", kind, infra_retries=1, endpoint_url=f"http://127.0.0.1:{port}"
        )
        with pytest.raises(LambdaFunctionError) as info:
            invoker.call({"op": "ping"}, task_keys=["k"])
        errors[kind] = (info.value.error_type, info.value.attempts)
    assert errors["lean"] == errors["boto3"] == ("EndpointConnectionError", 2)


def test_read_timeout_is_a_connection_failure_for_both(local):
    """An endpoint that accepts and never answers: both transports give up after the read
    timeout with the same kind of failure, which the invoker retries."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    accepted = []
    stop = threading.Event()

    def accept():
        silent.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(silent.accept()[0])
            except TimeoutError:
                pass

    threading.Thread(target=accept, daemon=True).start()
    url = f"http://127.0.0.1:{silent.getsockname()[1]}"
    try:
        session = boto3.session.Session(**_session_kwargs(local))
        client = session.client("lambda", endpoint_url=url, config=Config(
            retries={"total_max_attempts": 1}, read_timeout=0.5, connect_timeout=5))  # fmt: skip
        lean = LeanTransport(client, session.get_credentials(), 2, 5, 0.5)
        kinds = {}
        for kind, transport in (("boto3", Boto3Transport(client)), ("lean", lean)):
            with pytest.raises(ConnectionFailure) as info:
                transport.invoke("f", b"{}")
            kinds[kind] = info.value.kind
    finally:
        stop.set()
        for conn in accepted:
            conn.close()
        silent.close()
    assert kinds == {"boto3": "ReadTimeoutError", "lean": "ReadTimeoutError"}


def test_connections_are_kept_alive(local, deploy):
    name = deploy("behaviours.echo")
    lean = transports(local)["lean"]
    lean.invoke(name, b"{}")
    (first,) = lean._idle
    for _ in range(5):
        lean.invoke(name, b"{}")
    assert lean._idle == [first]  # the same connection served every call


def test_endpoint_and_region_resolve_as_boto3_does(local, deploy, monkeypatch):
    """``AWS_ENDPOINT_URL_LAMBDA`` and ``AWS_REGION``, with nothing passed explicitly."""
    name = deploy("behaviours.echo")
    for variable in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL_LAMBDA", local.endpoint_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", local.credentials["AWS_ACCESS_KEY_ID"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", local.credentials["AWS_SECRET_ACCESS_KEY"])
    monkeypatch.setenv("AWS_REGION", local.region)
    aws = Aws()
    invoker = Invoker(name, lambda cfg: aws.client("lambda", cfg), 2, 10, store=None,
                      credentials=aws.session.get_credentials(), infra_retries=0)  # fmt: skip
    assert isinstance(invoker.transport, LeanTransport)
    assert invoker.transport.endpoint_url == local.endpoint_url
    assert outcome(invoker.transport, name, b'{"a": 1}')[0] == "answer"
    # Another region holds no such function, for either transport.
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    elsewhere = Aws()
    both = {
        "lean": LeanTransport(elsewhere.client("lambda", CLIENT_CONFIG),
                              elsewhere.session.get_credentials(), 2, 5, 10),
        "boto3": Boto3Transport(elsewhere.client("lambda", CLIENT_CONFIG)),
    }  # fmt: skip
    seen = {kind: outcome(transport, name, b"{}") for kind, transport in both.items()}
    assert seen["lean"] == seen["boto3"]
    assert seen["lean"][:2] == ("service error", "ResourceNotFoundException")


def test_credentials_are_refreshed_as_boto3_refreshes_them(local, deploy):
    """Expired credentials are refreshed before signing: the call is signed with the new ones
    (the local Lambda checks signatures, so stale ones would be refused)."""
    name = deploy("behaviours.echo")
    refreshed = []

    def refresh():
        refreshed.append(1)
        expiry = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)
        return {"access_key": local.credentials["AWS_ACCESS_KEY_ID"],
                "secret_key": local.credentials["AWS_SECRET_ACCESS_KEY"],
                "token": None, "expiry_time": expiry.isoformat()}  # fmt: skip

    expired = datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=1)
    credentials = RefreshableCredentials.create_from_metadata(
        {"access_key": "AKIDEXPIRED", "secret_key": "stale", "token": None,
         "expiry_time": expired.isoformat()}, refresh, "test",
    )  # fmt: skip
    client = boto3.session.Session(region_name=local.region).client(
        "lambda", endpoint_url=local.endpoint_url, config=CLIENT_CONFIG,
        aws_access_key_id="unused", aws_secret_access_key="unused",
    )  # fmt: skip
    lean = LeanTransport(client, credentials, 2, 5, 30)
    assert outcome(lean, name, b"{}")[0] == "answer"
    assert refreshed == [1]
    outcome(lean, name, b"{}")
    assert refreshed == [1]  # still valid: not refreshed again


def test_wrong_secret_is_refused_by_both(local, deploy):
    name = deploy("behaviours.echo")
    session = boto3.session.Session(
        aws_access_key_id=local.credentials["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key="not-the-secret", region_name=local.region,
    )  # fmt: skip
    seen = {kind: outcome(t, name, b"{}") for kind, t in transports(local, session).items()}
    assert seen["lean"] == seen["boto3"]
    assert seen["lean"][0:2] == ("service error", "InvalidSignatureException")
    assert seen["lean"][3] == 403


def test_invoke_needs_lambda_invoke_function_for_both(local, deploy):
    """IAM decides who may invoke, on the local Lambda as on AWS: a user granted S3 only is
    refused, through either invoker, and one granted ``lambda:InvokeFunction`` on the function
    is let through."""
    name = deploy("behaviours.echo")
    arn = local.client("lambda").get_function(FunctionName=name)["Configuration"]["FunctionArn"]
    iam = local.client("iam")
    seen = {}
    for grant, action in (("s3-only", "s3:GetObject"), ("invoker", "lambda:InvokeFunction")):
        user = f"{grant}-{name}"
        iam.create_user(UserName=user)
        policy = {"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": action, "Resource": arn if "lambda" in action else "*"}
        ]}  # fmt: skip
        iam.put_user_policy(UserName=user, PolicyName="p", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName=user)["AccessKey"]
        session = boto3.session.Session(
            aws_access_key_id=key["AccessKeyId"], aws_secret_access_key=key["SecretAccessKey"],
            region_name=local.region,
        )  # fmt: skip
        seen[grant] = {
            kind: outcome(t, name, b"{}") for kind, t in transports(local, session).items()
        }
    assert seen["s3-only"]["lean"] == seen["s3-only"]["boto3"]
    assert seen["s3-only"]["lean"][0:2] == ("service error", "AccessDeniedException")
    assert seen["invoker"]["lean"][0] == seen["invoker"]["boto3"][0] == "answer"


def test_a_proxy_sends_invocations_through_boto3(local, monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.invalid:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    invoker = _invoker(local, "f", "lean", endpoint_url="http://lambda.example.invalid")
    assert isinstance(invoker.transport, Boto3Transport)


def test_unknown_invoke_client_is_refused(local):
    with pytest.raises(ValueError, match="lambda.invoke-client is 'curl': use one of lean, boto3"):
        _invoker(local, "f", "curl")


def _invoker(local, name: str, kind: str, infra_retries: int = 3, endpoint_url=None,
             throttle_retries: int = 3) -> Invoker:  # fmt: skip
    session = boto3.session.Session(**_session_kwargs(local))
    url = endpoint_url or local.endpoint_url
    return Invoker(
        name, lambda cfg: session.client("lambda", endpoint_url=url, config=cfg), 2, 10,
        store=None, infra_retries=infra_retries, retry_backoff=0.01,
        credentials=session.get_credentials(), invoke_client=kind,
        throttle_retries=throttle_retries, throttle_backoff=0.01,
    )  # fmt: skip


class _ScriptedEndpoint:
    """A raw HTTP endpoint answering each request with the next of ``answers`` (bytes, or a
    callable that writes to the connection itself), over TLS with ``certificate`` if given;
    counts the connections it accepted."""

    def __init__(self, answers: list[bytes], certificate: tuple[str, str] | None = None):
        import ssl

        self.answers, self.connections = list(answers), 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.context = None
        if certificate is not None:
            self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.context.load_cert_chain(*certificate)
        scheme = "https" if certificate else "http"
        self.url = f"{scheme}://localhost:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn) -> None:
        try:
            if self.context is not None:
                conn = self.context.wrap_socket(conn, server_side=True)
            reader = conn.makefile("rb")
            while self.answers:
                head = b""
                while not head.endswith(b"\r\n\r\n"):
                    line = reader.readline()
                    if not line:
                        return
                    head += line
                length = int(re.search(rb"Content-Length: (\d+)", head)[1])
                reader.read(length)
                answer = self.answers.pop(0)
                if callable(answer):
                    answer(conn)
                else:
                    conn.sendall(answer)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.listener.close()


def _lean_to(url: str, local, read_timeout: float = 10) -> LeanTransport:
    session = boto3.session.Session(**_session_kwargs(local))
    client = session.client("lambda", endpoint_url=url, config=CLIENT_CONFIG)
    return LeanTransport(client, session.get_credentials(), 2, 5, read_timeout)


def _endless_chunks(conn) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"%x\r\n%s\r\n" % (1 << 20, b"x" * (1 << 20))
    for _ in range(1000):  # a GB, if anyone read it all
        conn.sendall(chunk)


def _trickle(conn) -> None:
    """A whole answer, one byte every 0.2 s (20 s for the body): each read is quick."""
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
    for _ in range(100):
        conn.sendall(b"x")
        threading.Event().wait(0.2)


@pytest.mark.parametrize(
    ("answer", "kind", "says"),
    [
        (_endless_chunks, "ConnectionClosedError", "ran past"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000000000\r\n\r\n", "ConnectionClosedError",
         "announced 1000000000000000 bytes"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: lots\r\n\r\n{}", "ConnectionClosedError",
         "not a number"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "ConnectionClosedError",
         "not a chunk size"),
        (_trickle, "ReadTimeoutError", "Read timeout"),
    ],
    ids=["endless-chunked", "huge-length", "length-not-a-number", "chunk-size-not-hex",
         "trickle"],
)  # fmt: skip
def test_lean_refuses_hostile_answers(local, answer, kind, says):
    """An endpoint that is not Lambda: an answer past Lambda's response limit, a malformed one,
    or one that never completes within the read timeout ends as a ConnectionFailure (which the
    invoker retries, then names), never a huge allocation or a bare ValueError."""
    endpoint = _ScriptedEndpoint([answer])
    try:
        with pytest.raises(ConnectionFailure) as info:
            _lean_to(endpoint.url, local, read_timeout=2).invoke("f", b"{}")
        assert info.value.kind == kind and says in str(info.value)
    finally:
        endpoint.close()


def test_lean_reads_interim_chunked_and_closing_answers(local):
    """What an HTTP/1.1 server may send besides Content-Length answers: 1xx first, a chunked
    body, ``Connection: close`` (then a new connection is used), a cut-off answer."""
    body = json.dumps({"ok": True}).encode()
    chunked = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Amz-Function-Error: Unhandled\r\n"
        b"x-amzn-RequestId: r-1\r\nConnection: close\r\n\r\n"
        + f"{len(body[:5]):x}\r\n".encode() + body[:5] + b"\r\n"
        + f"{len(body[5:]):x};ext=1\r\n".encode() + body[5:] + b"\r\n0\r\n\r\n"
    )  # fmt: skip
    plain = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    cut = b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"partial'
    endpoint = _ScriptedEndpoint([chunked, plain, cut])
    try:
        lean = _lean_to(endpoint.url, local)
        first = lean.invoke("f", b"{}")
        assert (first.payload, first.function_error, first.request_id) == (body, "Unhandled", "r-1")
        assert lean.invoke("f", b"{}").payload == body
        assert endpoint.connections == 2  # the first answer closed its connection
        with pytest.raises(ConnectionFailure) as info:
            lean.invoke("f", b"{}")
        assert info.value.kind == "ConnectionClosedError" and "100 bytes" in str(info.value)
    finally:
        endpoint.close()


def test_lean_verifies_tls_as_boto3_does(local, tmp_path, monkeypatch):
    """HTTPS (AWS's endpoints): a certificate no trusted authority signed is refused; trusted
    through ``AWS_CA_BUNDLE``, as boto3 trusts it, the answer comes back."""
    certificate = _self_signed(tmp_path)
    body = b'{"over": "tls"}'
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    endpoint = _ScriptedEndpoint([answer], certificate)
    try:
        monkeypatch.delenv("AWS_CA_BUNDLE", raising=False)
        with pytest.raises(ConnectionFailure, match="CERTIFICATE_VERIFY_FAILED"):
            _lean_to(endpoint.url, local).invoke("f", b"{}")
        monkeypatch.setenv("AWS_CA_BUNDLE", certificate[0])
        assert _lean_to(endpoint.url, local).invoke("f", b"{}").payload == body
    finally:
        endpoint.close()


def _self_signed(folder) -> tuple[str, str]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))  # fmt: skip
    return str(cert_path), str(key_path)
