"""An endpoint that answers every Lambda ``Invoke`` at once, in a process of its own.

For measuring the client alone: whatever a client spends per invocation against it is the
client's own cost (signing, HTTP, encoding, bookkeeping), not the cost of a function running.
It speaks just enough HTTP/1.1 (keep-alive, ``Content-Length`` bodies) on asyncio to answer
tens of thousands of requests a second on one core, each with the same small, valid
dask-lambda response (an empty batch), after ``--latency-ms`` if given.

``python -m benchmarks.endpoint --port 0`` prints ``{"endpoint_url": ...}`` once it listens;
:class:`ImmediateEndpoint` starts and stops it from Python.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import sys


def canned_response() -> bytes:
    """The HTTP response to every request: an empty batch's dask-lambda response envelope."""
    from dask_lambda.function import protocol

    payload = {"results": [], "errors": [], "stats": {"cold_start": False, "duration": 0.0}}
    body = json.dumps(protocol.envelope(protocol.encode_payload(payload))).encode()
    head = (
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Amz-Executed-Version: $LATEST\r\n"
        f"x-amzn-RequestId: 00000000-0000-0000-0000-000000000000\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class _Answer(asyncio.Protocol):
    def __init__(self, response: bytes, latency: float):
        self.response, self.latency = response, latency
        self.buffer = b""

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            length = 0
            for line in self.buffer[:end].split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(self.buffer) < end + 4 + length:
                return
            self.buffer = self.buffer[end + 4 + length :]
            if self.latency:
                asyncio.get_running_loop().call_later(self.latency, self._answer)
            else:
                self._answer()

    def _answer(self) -> None:
        if not self.transport.is_closing():
            self.transport.write(self.response)


async def _serve(port: int, latency: float) -> None:
    response = canned_response()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: _Answer(response, latency), "127.0.0.1", port, backlog=4096
    )
    port = server.sockets[0].getsockname()[1]
    print(json.dumps({"endpoint_url": f"http://127.0.0.1:{port}"}), flush=True)
    async with server:
        await server.serve_forever()


class ImmediateEndpoint:
    """``with ImmediateEndpoint() as url:`` runs the endpoint in a child process."""

    def __init__(self, latency_ms: float = 0.0):
        self.latency_ms = latency_ms
        self._proc: subprocess.Popen | None = None

    def __enter__(self) -> str:
        self._proc = subprocess.Popen(
            [sys.executable, __file__, "--latency-ms", str(self.latency_ms)],
            stdout=subprocess.PIPE,
            text=True,
        )
        return json.loads(self._proc.stdout.readline())["endpoint_url"]

    @property
    def pid(self) -> int:
        return self._proc.pid

    def __exit__(self, *exc: object) -> None:
        self._proc.kill()
        self._proc.wait()
        self._proc.stdout.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    args = parser.parse_args(sys.argv[1:])
    asyncio.run(_serve(args.port, args.latency_ms / 1000))
