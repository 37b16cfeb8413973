"""Sending one Lambda ``Invoke`` request: through boto3, or on the lean path.

The invoker (:mod:`.invoker`) decides what to retry; a transport only sends a request and says
what came back, in one shape for both:

- :class:`InvokeAnswer` when Lambda answered 2xx (``function_error`` set when the function
  failed outside user code);
- :class:`ServiceError` when Lambda answered with an error (throttling, not found, 5xx), with
  the error code and message botocore would have parsed;
- :class:`ConnectionFailure` when no answer came (refused, reset, read timeout).

:class:`Boto3Transport` is the client's ``invoke``. :class:`LeanTransport` is the hot path for
wide computes: it signs with botocore's own :class:`~botocore.auth.SigV4Auth` and sends over a
pool of keep-alive ``http.client`` connections, skipping botocore's per-call pipeline (about
1 ms of client CPU per call, against 0.35 ms; see README "Scale"). Everything around the call
is still boto3's: the endpoint (``endpoint_url``, ``AWS_ENDPOINT_URL_LAMBDA``, the region's) and
region are read from a boto3 client, and credentials are the boto3 session's, refreshed as boto3
refreshes them. Proxies are not handled on the lean path: with one configured, the invoker uses
boto3.
"""

from __future__ import annotations

import http.client
import json
import os
import select
import socket
import ssl
import threading
import urllib.parse
import urllib.request
from typing import NamedTuple

import botocore.exceptions

# What boto3 raises when no answer came: retried by the invoker like a lean ConnectionFailure.
BOTO3_CONNECTION_ERRORS = (
    botocore.exceptions.ConnectionError,
    botocore.exceptions.ReadTimeoutError,
    botocore.exceptions.ResponseStreamingError,
)


class InvokeAnswer(NamedTuple):
    """A 2xx answer to ``Invoke``."""

    payload: bytes
    function_error: str | None
    request_id: str | None


class ServiceError(Exception):
    """Lambda answered ``Invoke`` with an error status."""

    def __init__(self, code: str, message: str, status: int, request_id: str | None = None):
        super().__init__(f"{code}: {message}")
        self.code, self.message, self.status, self.request_id = code, message, status, request_id


class ConnectionFailure(Exception):
    """No answer came: the connection was refused, reset or closed, or the read timed out."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


class Boto3Transport:
    """``Invoke`` through a boto3 Lambda client."""

    name = "boto3"

    def __init__(self, client):
        self.client = client

    def invoke(self, function_name: str, body: bytes) -> InvokeAnswer:
        try:
            response = self.client.invoke(FunctionName=function_name, Payload=body)
            payload = response["Payload"].read()
        except botocore.exceptions.ClientError as e:
            error, metadata = e.response.get("Error", {}), e.response.get("ResponseMetadata", {})
            raise ServiceError(
                error.get("Code", ""),
                error.get("Message", str(e)),
                metadata.get("HTTPStatusCode", 0),
                metadata.get("RequestId"),
            ) from None
        except BOTO3_CONNECTION_ERRORS as e:
            raise ConnectionFailure(type(e).__name__, str(e)) from None
        request_id = response.get("ResponseMetadata", {}).get("RequestId")
        return InvokeAnswer(payload, response.get("FunctionError"), request_id)

    def close(self) -> None:
        pass


class LeanTransport:
    """``Invoke`` signed by botocore's SigV4 signer, over pooled keep-alive connections.

    Parameters
    ----------
    client
        A boto3 Lambda client: its resolved endpoint and region are used.
    credentials
        The boto3 session's credentials (``session.get_credentials()``); refreshable ones are
        refreshed before they expire, as boto3 does.
    max_connections
        Idle connections kept for reuse (one per concurrent invocation is enough).
    connect_timeout, read_timeout
        Seconds to connect, and to wait for the answer (above the function's timeout).
    """

    name = "lean"

    def __init__(
        self,
        client,
        credentials,
        max_connections: int,
        connect_timeout: float,
        read_timeout: float,
    ):
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest

        self._signer, self._request = SigV4Auth, AWSRequest
        self.endpoint_url = client.meta.endpoint_url
        self.region = client.meta.region_name
        self.credentials = credentials
        parts = urllib.parse.urlsplit(self.endpoint_url)
        self._https = parts.scheme == "https"
        self._host, self._port = parts.hostname, parts.port
        self._base_path = parts.path.rstrip("/")
        self._context = _tls_context(client) if self._https else None
        self.max_connections = max_connections
        self.connect_timeout, self.read_timeout = connect_timeout, read_timeout
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self._user_agent = f"dask-lambda Botocore/{botocore.__version__}"

    @staticmethod
    def usable(client) -> bool:
        """Whether the lean path can reach ``client``'s endpoint (no proxy in the way)."""
        proxies = client.meta.config.proxies or urllib.request.getproxies()
        if not proxies:
            return True
        host = urllib.parse.urlsplit(client.meta.endpoint_url).hostname or ""
        return bool(urllib.request.proxy_bypass(host))

    def invoke(self, function_name: str, body: bytes) -> InvokeAnswer:
        path = f"{self._base_path}/2015-03-31/functions/{_quote(function_name)}/invocations"
        headers = self._sign(path, body)
        conn = self._connection()
        try:
            conn.request("POST", path, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
        except TimeoutError as e:
            conn.close()
            raise ConnectionFailure("ReadTimeoutError", f"Read timeout on endpoint URL:"
                                    f" {self.endpoint_url!r}: {e}") from None  # fmt: skip
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            raise ConnectionFailure(
                "ConnectionClosedError" if isinstance(e, http.client.HTTPException)
                else "EndpointConnectionError",
                f"Could not reach the endpoint URL {self.endpoint_url!r}: {type(e).__name__}: {e}",
            ) from None  # fmt: skip
        if response.will_close:
            conn.close()
        else:
            self._release(conn)
        request_id = response.getheader("x-amzn-RequestId")
        if response.status >= 300:
            raise _service_error(response, data, request_id)
        return InvokeAnswer(data, response.getheader("X-Amz-Function-Error"), request_id)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def _sign(self, path: str, body: bytes) -> dict[str, str]:
        credentials = self.credentials.get_frozen_credentials()  # refreshed when due
        request = self._request(method="POST", url=self.endpoint_url + path, data=body,
                                headers={"User-Agent": self._user_agent})  # fmt: skip
        self._signer(credentials, "lambda", self.region).add_auth(request)
        return dict(request.headers.items())

    def _connection(self) -> http.client.HTTPConnection:
        while True:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                return self._connect()
            if not _dropped(conn):
                return conn
            conn.close()

    def _connect(self) -> http.client.HTTPConnection:
        if self._https:
            conn = http.client.HTTPSConnection(
                self._host, self._port, timeout=self.connect_timeout, context=self._context
            )
        else:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=self.connect_timeout)
        try:
            conn.connect()
        except OSError as e:
            conn.close()
            raise ConnectionFailure(
                "EndpointConnectionError",
                f"Could not connect to the endpoint URL {self.endpoint_url!r}: {e}",
            ) from None
        conn.sock.settimeout(self.read_timeout)
        conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        return conn

    def _release(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if len(self._idle) < self.max_connections:
                self._idle.append(conn)
                return
        conn.close()


def _quote(function_name: str) -> str:
    """The function name in the request path, encoded as botocore's serializer encodes it."""
    return urllib.parse.quote(function_name, safe="-._~")


def _dropped(conn: http.client.HTTPConnection) -> bool:
    """An idle keep-alive connection the server closed (readable means EOF or stray bytes)."""
    if conn.sock is None:
        return True
    try:
        readable, _, _ = select.select([conn.sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


def _tls_context(client) -> ssl.SSLContext:
    """Certificates verified as boto3 verifies them: ``AWS_CA_BUNDLE``, else botocore's
    bundle."""
    from botocore.httpsession import get_cert_path

    bundle = os.environ.get("AWS_CA_BUNDLE") or get_cert_path(True)
    return ssl.create_default_context(cafile=bundle)


def _service_error(response, data: bytes, request_id: str | None) -> ServiceError:
    """The error code and message, parsed as botocore parses a REST-JSON error."""
    try:
        body = json.loads(data) if data else {}
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    message = body.get("message", body.get("Message", ""))
    code = response.getheader("x-amzn-ErrorType")
    if code is None:
        code = body.get("code", body.get("Code")) or body.get("__type") or str(response.status)
    code = code.split(":")[0].rsplit("#", 1)[-1]
    return ServiceError(code, message, response.status, request_id)
