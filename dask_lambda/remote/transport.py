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
pool of keep-alive connections, skipping botocore's per-call pipeline (docs/benchmarks.rst,
"Scale").
Everything around the call
is still boto3's: the endpoint (``endpoint_url``, ``AWS_ENDPOINT_URL_LAMBDA``, the region's) and
region are read from a boto3 client, and credentials are the boto3 session's, refreshed as boto3
refreshes them. Proxies are not handled on the lean path: with one configured, the invoker uses
boto3.
"""

from __future__ import annotations

import json
import os
import select
import socket
import ssl
import threading
import time
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

    A request is one ``sendall`` and its answer is read by :func:`_read_response`, a plain
    HTTP/1.1 reader: ``http.client`` parses response headers with the ``email`` package, a
    third of the cost of a call here (0.37 ms against 0.25 ms, sign and send, 64 threads).

    The answer is not trusted: it must arrive whole within ``read_timeout`` of the request (one
    deadline for the call, not per read, so an answer trickling in cannot stretch it), its body
    may not exceed :data:`MAX_BODY` (Lambda's response limit and room for an error), and an
    answer that is not well-formed HTTP/1.1 (a length that is not a number, a chunk size that is
    not hex) is a :class:`ConnectionFailure`, retried by the invoker like any lost answer.

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
        self._address = (parts.hostname, parts.port or (443 if self._https else 80))
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        default_port = parts.port is None or parts.port == (443 if self._https else 80)
        self._host_header = host if default_port else f"{host}:{parts.port}"  # as signed
        self._base_path = parts.path.rstrip("/")
        self._context = _tls_context(client) if self._https else None
        self.max_connections = max_connections
        self.connect_timeout, self.read_timeout = connect_timeout, read_timeout
        self._idle: list[_Connection] = []
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
        request = self._signed_request(path, body)
        conn = self._connection()
        try:
            conn.reader.deadline = time.monotonic() + self.read_timeout
            conn.sock.settimeout(self.read_timeout)
            conn.sock.sendall(request)
            status, headers, data, keep_alive = _read_response(conn.reader)
        except TimeoutError as e:
            conn.close()
            raise ConnectionFailure("ReadTimeoutError", f"Read timeout on endpoint URL:"
                                    f" {self.endpoint_url!r}: {e}") from None  # fmt: skip
        except (OSError, _BadResponse) as e:
            conn.close()
            raise ConnectionFailure(
                "ConnectionClosedError" if isinstance(e, _BadResponse)
                else "EndpointConnectionError",
                f"Could not reach the endpoint URL {self.endpoint_url!r}: {type(e).__name__}: {e}",
            ) from None  # fmt: skip
        if keep_alive:
            self._release(conn)
        else:
            conn.close()
        request_id = headers.get("x-amzn-requestid")
        if status >= 300:
            raise _service_error(status, headers, data, request_id)
        return InvokeAnswer(data, headers.get("x-amz-function-error"), request_id)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def _signed_request(self, path: str, body: bytes) -> bytes:
        """The request's bytes: headers signed by botocore's ``SigV4Auth``, then the body."""
        credentials = self.credentials.get_frozen_credentials()  # refreshed when due
        headers = {"Host": self._host_header, "User-Agent": self._user_agent}
        request = self._request(method="POST", url=self.endpoint_url + path, data=body,
                                headers=headers)  # fmt: skip
        self._signer(credentials, "lambda", self.region).add_auth(request)
        lines = [f"POST {path} HTTP/1.1"]
        lines += [f"{name}: {value.decode() if isinstance(value, bytes) else value}"
                  for name, value in request.headers.items()
                  if name.lower() != "content-length"]  # fmt: skip
        lines.append(f"Content-Length: {len(body)}\r\n\r\n")
        return "\r\n".join(lines).encode("latin-1") + body

    def _connection(self) -> _Connection:
        while True:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                return self._connect()
            if not conn.dropped():
                return conn
            conn.close()

    def _connect(self) -> _Connection:
        sock = None
        try:
            sock = socket.create_connection(self._address, timeout=self.connect_timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            if self._context is not None:
                sock = self._context.wrap_socket(sock, server_hostname=self._address[0])
        except OSError as e:
            if sock is not None:
                sock.close()
            raise ConnectionFailure(
                "EndpointConnectionError",
                f"Could not connect to the endpoint URL {self.endpoint_url!r}: {e}",
            ) from None
        sock.settimeout(self.read_timeout)
        return _Connection(sock)

    def _release(self, conn: _Connection) -> None:
        with self._lock:
            if len(self._idle) < self.max_connections:
                self._idle.append(conn)
                return
        conn.close()


class _Connection:
    """A keep-alive connection: its socket and a buffered reader over it."""

    __slots__ = ("sock", "reader")

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.reader = _Reader(sock)

    def dropped(self) -> bool:
        """Whether the server closed it while idle (readable means EOF or stray bytes)."""
        if self.reader.buffer:
            return True
        try:
            readable, _, _ = select.select([self.sock], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(readable)

    def close(self) -> None:
        self.sock.close()


class _BadResponse(Exception):
    """The connection closed before a whole answer, or the answer is not HTTP/1.x."""


MAX_LINE = 65536
MAX_HEADERS = 100
# Lambda answers a synchronous invoke with at most 6 MB of payload; anything larger is not
# Lambda's answer (an error document is a few KB).
MAX_BODY = 6 * 1024 * 1024 + 256 * 1024


class _Reader:
    """Buffered reads from a socket, all before one deadline (``time.monotonic()``)."""

    __slots__ = ("sock", "buffer", "deadline")

    def __init__(self, sock: socket.socket):
        self.sock, self.buffer, self.deadline = sock, bytearray(), None

    def _fill(self) -> bool:
        """Read what arrived (False at end of stream); ``TimeoutError`` past the deadline."""
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the answer did not arrive whole before the read timeout")
            self.sock.settimeout(left)
        data = self.sock.recv(262144)
        self.buffer += data
        return bool(data)

    def readline(self, limit: int) -> bytes:
        """A line with its newline (at most ``limit`` bytes; shorter at end of stream)."""
        start = 0
        while True:
            end = self.buffer.find(b"\n", start, limit)
            if end >= 0:
                return self._take(end + 1)
            if len(self.buffer) >= limit:
                return self._take(limit)
            start = len(self.buffer)
            if not self._fill():
                return self._take(len(self.buffer))

    def read(self, size: int) -> bytes:
        """``size`` bytes (fewer at end of stream)."""
        while len(self.buffer) < size and self._fill():
            pass
        return self._take(min(size, len(self.buffer)))

    def _take(self, size: int) -> bytes:
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data


def _read_response(reader) -> tuple[int, dict[str, str], bytes, bool]:
    """``(status, headers, body, keep_alive)`` of one HTTP/1.1 answer (headers lower-cased).

    Bodies come with ``Content-Length``, chunked, or (HTTP/1.0 style) until the connection
    closes; 1xx interim answers are skipped.
    """
    while True:
        line = reader.readline(MAX_LINE + 1)
        if not line:
            raise _BadResponse("the connection closed before an answer")
        version, _, rest = line.partition(b" ")
        if not version.startswith(b"HTTP/1.") or not rest[:3].isdigit():
            raise _BadResponse(f"not an HTTP/1.x status line: {line[:80]!r}")
        status = int(rest[:3])
        headers: dict[str, str] = {}
        for _ in range(MAX_HEADERS + 1):
            line = reader.readline(MAX_LINE + 1)
            if line in (b"\r\n", b"\n"):
                break
            if not line or len(line) > MAX_LINE:
                raise _BadResponse("the answer's headers were cut off or too long")
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        else:
            raise _BadResponse(f"more than {MAX_HEADERS} headers in the answer")
        if status >= 200:
            break
    keep_alive = version == b"HTTP/1.1" and headers.get("connection", "").lower() != "close"
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return status, headers, _read_chunked(reader), keep_alive
    if "content-length" in headers:
        text = headers["content-length"]
        if not text.isdigit():
            raise _BadResponse(f"the answer's Content-Length is not a number: {text[:40]!r}")
        length = int(text)
        if length > MAX_BODY:
            raise _BadResponse(f"the answer announced {length} bytes, over {MAX_BODY}")
        body = reader.read(length)
        if len(body) != length:
            raise _BadResponse(f"the answer ended after {len(body)} of {length} bytes")
        return status, headers, body, keep_alive
    body = reader.read(MAX_BODY + 1)  # until the connection closes
    if len(body) > MAX_BODY:
        raise _BadResponse(f"the answer ran past {MAX_BODY} bytes")
    return status, headers, body, False


def _read_chunked(reader) -> bytes:
    parts, total = [], 0
    while True:
        size_line = reader.readline(MAX_LINE + 1)
        if not size_line:
            raise _BadResponse("the chunked answer was cut off")
        try:
            size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
        except ValueError:
            raise _BadResponse(f"not a chunk size: {size_line[:40]!r}") from None
        total += size
        if size < 0 or total > MAX_BODY:
            raise _BadResponse(f"the chunked answer ran past {MAX_BODY} bytes")
        if size == 0:
            while reader.readline(MAX_LINE + 1) not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return b"".join(parts)
        chunk = reader.read(size + 2)  # the chunk and its CRLF
        if len(chunk) != size + 2:
            raise _BadResponse("the chunked answer was cut off")
        parts.append(chunk[:size])


def _quote(function_name: str) -> str:
    """The function name in the request path, encoded as botocore's serializer encodes it."""
    return urllib.parse.quote(function_name, safe="-._~")


def _tls_context(client) -> ssl.SSLContext:
    """Certificates verified as boto3 verifies them: ``AWS_CA_BUNDLE``, else botocore's
    bundle."""
    from botocore.httpsession import get_cert_path

    bundle = os.environ.get("AWS_CA_BUNDLE") or get_cert_path(True)
    return ssl.create_default_context(cafile=bundle)


def _service_error(
    status: int, headers: dict[str, str], data: bytes, request_id: str | None
) -> ServiceError:
    """The error code and message, parsed as botocore parses a REST-JSON error."""
    try:
        body = json.loads(data) if data else {}
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    message = body.get("message", body.get("Message", ""))
    code = headers.get("x-amzn-errortype")
    if code is None:
        code = body.get("code", body.get("Code")) or body.get("__type") or str(status)
    code = code.split(":")[0].rsplit("#", 1)[-1]
    return ServiceError(code, message, status, request_id)
