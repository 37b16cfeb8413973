"""The Lambda Runtime API, served to one runtime process.

Each runtime process of the embedded local Lambda gets a listener of its own on 127.0.0.1, so the
server always knows which process holds which invocation (and which process to kill when that
invocation times out or runs out of memory). The routes are the ones AWS documents, under
``/2018-06-01``:

``GET  /runtime/invocation/next``
    Blocks until the runtime's next invocation; answers the event with the headers
    ``Lambda-Runtime-Aws-Request-Id``, ``Lambda-Runtime-Deadline-Ms``,
    ``Lambda-Runtime-Invoked-Function-Arn`` and ``Lambda-Runtime-Trace-Id``.
``POST /runtime/invocation/{id}/response`` and ``POST /runtime/invocation/{id}/error``
    The handler's result or error; answered 202.
``POST /runtime/init/error``
    The handler could not be loaded; answered 202, after which the runtime exits. Only heard
    while the runtime initialises (before its first ``next``).
``GET /runtime/restore/next`` and ``POST /runtime/restore/error``
    SnapStart: a runtime of a SnapStart version asks to go on after its restore (answered 200 at
    once: it was restored before it asked), or reports that an after-restore hook failed (as an
    init error).

Each listener answers only its own runtime: a connection whose other end is not a socket of the
runtime's processes (:meth:`RuntimeEndpoint.owns_peer`, read from ``/proc``) is closed unread, so
a task in one runtime cannot post results or errors to another's Runtime API.

Sockets use ``TCP_NODELAY``: without it Nagle's algorithm and delayed ACKs add ~40-90 ms to every
warm invocation.
"""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Protocol

PREFIX = "/2018-06-01/runtime"


class RuntimeEndpoint(Protocol):
    """What the Runtime API needs from the runtime it serves."""

    def next_invocation(self) -> tuple[bytes, dict[str, str]] | None: ...

    def post_result(self, request_id: str, body: bytes, error_type: str | None) -> None: ...

    def post_init_error(self, body: bytes, error_type: str | None) -> None: ...

    def restore_next(self) -> None: ...

    def owns_peer(self, peer_port: int, server_port: int) -> bool: ...


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass

    def handle(self) -> None:
        if not self.server.runtime.owns_peer(self.client_address[1], self.server.server_port):
            self.close_connection = True  # another process: not this runtime's API
            return
        super().handle()

    def _reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body:
            self.wfile.write(body)

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def do_GET(self) -> None:
        if self.path == f"{PREFIX}/restore/next":
            try:
                self.server.runtime.restore_next()
            except LookupError:
                self._reply(404, b'{"errorMessage": "not a SnapStart runtime"}')
                return
            self._reply(200)
            return
        if self.path != f"{PREFIX}/invocation/next":
            self._reply(404, b'{"errorMessage": "unknown route"}')
            return
        nxt = self.server.runtime.next_invocation()
        if nxt is None:  # runtime is being shut down
            self.close_connection = True
            self._reply(410)
            return
        event, headers = nxt
        self._reply(200, event, headers)

    def do_POST(self) -> None:
        body = self._body()
        error_type = self.headers.get("Lambda-Runtime-Function-Error-Type")
        parts = self.path[len(PREFIX) :].strip("/").split("/")
        runtime = self.server.runtime
        if parts[:2] in (["init", "error"], ["restore", "error"]):
            runtime.post_init_error(body, error_type)
        elif len(parts) == 3 and parts[0] == "invocation" and parts[2] in ("response", "error"):
            is_error = parts[2] == "error"
            runtime.post_result(parts[1], body, (error_type or "Unhandled") if is_error else None)
        else:
            self._reply(404, b'{"errorMessage": "unknown route"}')
            return
        self._reply(202, b'{"status": "OK"}', {"Content-Type": "application/json"})


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, runtime: RuntimeEndpoint):
        self.runtime = runtime
        super().__init__(("127.0.0.1", 0), _Handler)


class RuntimeAPIServer:
    """A Runtime API listener for one runtime, served from a daemon thread."""

    def __init__(self, runtime: RuntimeEndpoint):
        self._server = _Server(runtime)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.5},
            daemon=True,
            name="dask-lambda-runtime-api",
        )
        self._thread.start()

    @property
    def address(self) -> str:
        """``host:port`` for ``AWS_LAMBDA_RUNTIME_API``."""
        host, port = self._server.server_address[:2]
        return f"{host}:{port}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
